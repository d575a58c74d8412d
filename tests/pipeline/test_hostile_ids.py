"""Ids and stamp paths that cannot name a file (issue 34, class 4), through process-catalog with
``--images``: a NUL byte, 5,000 characters, '.', '..', path separators, an absolute path, a
``--path-column`` value with a NUL, and (at the source: no catalog format we read can carry one)
a lone surrogate.  Each is that row's status (``no_image``, the reason in the summary, printed
escaped on one line); every other row is scored, the run exits 0, FITS equals Parquet, and no id
reads a file outside the images directory.  A bad_coords example prints plain numbers."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from conftest import assert_fits_equals_parquet, make_stamps
from mergerscan.cutouts.preprocess import PreprocessSpec
from mergerscan.cutouts.stamps import StampSource

HOSTILE = {
    2: "bad\x00id",
    4: "G" * 5000,
    5: "..",
    6: ".",
    7: "../secret",
    8: "sub/1",
    9: "",  # blank: no_id, never looked up
}


@pytest.fixture()
def catalog(tmp_path):
    """12 rows; ids 1..12 except the hostile ones; stamps for 1..12 in stamps/, a stamp named
    like each escaping id outside it (secret.jpg beside stamps/, stamps/sub/1.jpg)."""
    n = 12
    rng = np.random.default_rng(4)
    ids = [HOSTILE.get(i, str(i + 1)) for i in range(n)]
    make_stamps(tmp_path / "stamps", [str(i + 1) for i in range(n)], seed=5, size=64)
    make_stamps(tmp_path, ["secret"], seed=6, size=64)  # ../secret would find it
    make_stamps(tmp_path / "stamps" / "sub", ["1"], seed=7, size=64)  # sub/1 would find it
    make_stamps(tmp_path / "stamps", ["_"], seed=8, size=64)
    (tmp_path / "stamps" / "....jpg").symlink_to(tmp_path / "secret.jpg")  # '..' + '.jpg' stays inside
    df = pd.DataFrame(
        {
            "id": ids,
            "ra": rng.uniform(150, 150.2, n),
            "dec": rng.uniform(2, 2.2, n),
            "file": [""] * n,
        }
    )
    df.loc[10, "file"] = "x\x00.jpg"  # a --path-column value with a NUL
    df.loc[11, "ra"] = 400.0  # bad_coords: its example prints plain numbers
    df.to_parquet(tmp_path / "cat.parquet")
    return tmp_path, df


def test_ids_that_cannot_name_a_file_are_row_statuses(catalog, cheap_cli, capsys):
    d, df = catalog
    out = d / "out"
    rc, stdout, err = cheap_cli(
        d / "cat.parquet", "--images", d / "stamps", "-o", out, "--path-column", "file", capsys=capsys
    )
    assert rc == 0, err
    assert "Traceback" not in stdout + err and "\x00" not in stdout + err
    got, _, _ = assert_fits_equals_parquet(out)
    assert got["id"].tolist() == df["id"].tolist()  # every id exactly as it went in, NUL and all
    want = ["ok"] * 12
    for i in (2, 4, 5, 6, 7, 8, 10):
        want[i] = "no_image"
    want[9], want[11] = "no_id", "bad_coords"
    assert got["status"].tolist() == want
    assert got.loc[[i for i, s in enumerate(want) if s == "ok"], "p_merger"].notna().all()
    s = json.loads((out / "summary.json").read_text())
    example = {f["status"]: f["example"] for f in s["failures"]}
    assert example["no_image"].isprintable()  # one line; an id with a NUL is shown escaped (below)
    assert "np.float64" not in example["bad_coords"] and "ra=400.0," in example["bad_coords"], example
    assert s["scored"] == want.count("ok") and s["rows"] == 12
    # the re-run the summary advises (no_image is retried) ends the same way, not in a failure
    rc, stdout, err = cheap_cli(
        d / "cat.parquet", "--images", d / "stamps", "-o", out, "--path-column", "file", capsys=capsys
    )
    assert rc == 0 and "Traceback" not in stdout + err, err
    assert assert_fits_equals_parquet(out)[0]["status"].tolist() == want


def test_every_path_error_is_a_row_status_at_the_source(tmp_path):
    """StampSource.fetch on ids and paths no file can have, each with a real directory: NUL (in
    the id and the path), a lone surrogate (the filesystem cannot encode it), 5,000 characters,
    a separator, '..': all no_image with an example, the good row ok."""
    make_stamps(tmp_path / "s", ["1"], seed=1, size=64)
    make_stamps(tmp_path, ["outside"], seed=2, size=64)
    src = StampSource(tmp_path / "s", PreprocessSpec(), threads=1)
    rows = pd.DataFrame(
        {
            "id": ["1", "a\x00b", "\ud800x", "G" * 5000, "../outside", "..", "1"],
            "path": [None, None, None, None, None, None, "p\x00.jpg"],
        },
        dtype=object,  # pandas' default str dtype cannot hold a lone surrogate
    )
    _, status = src.fetch(rows)
    assert status.tolist() == ["ok"] + ["no_image"] * 6
    assert set(src.examples) == {"no_image"} and src.examples["no_image"].isprintable()
    assert "a\\x00b" in src.examples["no_image"] and "ValueError" in src.examples["no_image"]
