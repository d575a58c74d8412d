"""Paths are paths (issue 34, classes 3, 8 and 10): file names that a FITS library reads as syntax,
a TNULL that a real id uses, and a disk that fills during the final write, all through
``process-catalog`` as a user meets them.

Cases (one line each):
 1. input catalog (FITS), ``--images`` directory (JPEG and FITS stamps) and ``-o`` whose names hold
    one of: space, ``[ ]``, ``( )``, ``$``, ``!``, ``#``, ``~`` (leading and inside), ``é``, ``星``,
    given relative to the working directory (so the character really leads): complete outputs
    (mergers.fits with every row, summary.json, the Parquet rows)
 2. ``--frames`` with a directory, a catalog and ``-o`` named with all those characters at once
 3. an int64 id column holding -2^63 and 2^63-1 and one blank id (Parquet): the FITS TNULL is a
    value no row uses; STILTS shows the real ids exactly and only the blank one as null; FITS = Parquet
 4. a nullable int16 kept column using every int16 value: written one size wider, nulls still null
 5. a full disk during the final write (OUT on a 1 MiB tmpfs in a private mount namespace):
    one line naming the file, exit 1, no traceback
"""

from __future__ import annotations

import csv
import io
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from astropy.io import fits
from PIL import Image

from conftest import assert_fits_equals_parquet, make_stamps, parquet_table
from mergerscan.demo import make_demo_field

N = 12
AWKWARD = ["sp ace", "[v2]", "(1)", "$HOME", "!bang", "#hash", "~tilde", "in~side", "é", "星"]


def _positions(n=N, seed=0):
    rng = np.random.default_rng(seed)
    return rng.uniform(150, 150.2, n), rng.uniform(2, 2.2, n)


def _fits_bytes(*hdus) -> bytes:
    buf = io.BytesIO()  # astropy gets a file object: the test's own writes are path-safe too
    fits.HDUList([fits.PrimaryHDU(), *hdus]).writeto(buf)
    return buf.getvalue()


def _catalog(path: Path, n=N):
    ra, dec = _positions(n)
    rec = np.zeros(n, dtype=[("objid", "i8"), ("ra", "f8"), ("dec", "f8"), ("mag", "f4")])
    rec["objid"], rec["ra"], rec["dec"], rec["mag"] = np.arange(1, n + 1), ra, dec, np.linspace(14, 18, n)
    path.write_bytes(_fits_bytes(fits.BinTableHDU(rec)))
    return path


def _stamps(directory: Path, n=N):
    """JPEG stamps; every third one replaced by a FITS cube (3, H, W) of the same pixels."""
    make_stamps(directory, range(1, n + 1), seed=4, size=64)
    for i in range(1, n + 1, 3):
        rgb = np.asarray(Image.open(directory / f"{i}.jpg"))
        (directory / f"{i}.fits").write_bytes(_fits_bytes(fits.ImageHDU(np.moveaxis(rgb, -1, 0).copy())))
        (directory / f"{i}.jpg").unlink()


def _read_fits_table(path: Path) -> fits.FITS_rec:
    with open(path, "rb") as f, fits.open(f) as hl:
        return hl["MERGERS"].data.copy()


def _complete(out: Path, n=N):
    assert (out / "summary.json").is_file(), sorted(p.name for p in out.iterdir())
    summary = json.loads((out / "summary.json").read_text())
    assert summary["rows"] == n
    data = _read_fits_table(out / "mergers.fits")
    assert sorted(data["input_row"].tolist()) == list(range(n))
    assert sorted(parquet_table(out).column("input_row").to_pylist()) == list(range(n))
    assert_fits_equals_parquet(out)
    return data


@pytest.mark.parametrize("name", AWKWARD)
def test_awkward_names_for_input_images_and_output(cheap_cli, tmp_path, capsys, monkeypatch, name):
    monkeypatch.chdir(tmp_path)
    Path(f"{name}dir").mkdir()
    cat = _catalog(Path(f"{name}dir") / f"cat {name}.fits")
    _stamps(Path(f"{name}dir") / f"stamps{name}")
    rc, _, err = cheap_cli(
        cat, "--images", f"{name}dir/stamps{name}", "-o", name, "--keep-columns", "mag", capsys=capsys
    )
    assert rc == 0, err
    data = _complete(tmp_path / name)
    assert set(np.char.strip(data["status"].astype(str))) == {"ok"}  # JPEG and FITS stamps found


def test_awkward_names_for_frames(cheap_cli, tmp_path, capsys):
    weird = "fr [v2] (1) $HOME !x #y ~z é星"
    field = make_demo_field(tmp_path / weird / f"~{weird}", n_fields=1, galaxies_per_field=4, mergers_per_field=2)
    out = tmp_path / weird / f"out {weird}"
    rc, _, err = cheap_cli(field["catalog"], "--frames", Path(field["catalog"]).parent, "-o", out, capsys=capsys)
    assert rc in (0, 3), err  # 3: some rows outside every frame, by design of the demo field
    data = _complete(out, n=len(_read_demo(Path(field["catalog"]))))
    assert "ok" in set(np.char.strip(data["status"].astype(str)))


def _read_demo(path: Path):
    with open(path, "rb") as f, fits.open(f) as hl:
        return hl[1].data.copy()


# ---------------------------------------------------------------- TNULL never a real value
def _stilts_csv(fits_path: Path) -> list[dict]:
    r = subprocess.run(
        ["stilts", "tpipe", f"in={fits_path}#MERGERS", "omode=out", "ofmt=csv"],
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert r.returncode == 0, r.stderr
    return list(csv.DictReader(io.StringIO(r.stdout)))


def test_tnull_is_a_value_the_column_does_not_use(cheap_cli, tmp_path, capsys):
    if shutil.which("stilts") is None:
        pytest.skip("stilts (TOPCAT's command-line twin) is not on PATH: apt-get install stilts")
    ra, dec = _positions()
    lo, hi = -(2**63), 2**63 - 1
    ids = [lo, hi, None, *range(4, N + 1)]  # the type's minimum and maximum are real ids
    full16 = np.arange(-(2**15), 2**15, dtype=np.int16)  # every int16 value, and nulls below
    t = pa.table(
        {
            "objid": pa.array(ids, pa.int64()),
            "ra": ra,
            "dec": dec,
            "n16": pa.array([None if i % 5 == 0 else int(full16[i]) for i in range(N)], pa.int16()),
        }
    )
    pq.write_table(t, tmp_path / "cat.parquet")
    # a second catalog fills every int16 value; the nullable column must widen
    n2 = len(full16) + 1
    ra2, dec2 = _positions(n2, seed=1)
    t2 = pa.table(
        {
            "objid": pa.array(range(1, n2 + 1), pa.int64()),
            "ra": ra2,
            "dec": dec2,
            "n16": pa.array([*full16.tolist(), None], pa.int16()),
        }
    )
    pq.write_table(t2, tmp_path / "full16.parquet")
    stamps = tmp_path / "stamps"
    make_stamps(stamps, [i for i in ids if i is not None], seed=2, size=64)

    out = tmp_path / "out"
    rc, _, err = cheap_cli(
        tmp_path / "cat.parquet", "--images", stamps, "-o", out, "--keep-columns", "n16", capsys=capsys
    )
    assert rc == 0, err
    _, _, hdr = assert_fits_equals_parquet(out)
    k = [hdr[f"TTYPE{i}"] for i in range(1, hdr["TFIELDS"] + 1)].index("objid") + 1
    assert hdr[f"TNULL{k}"] not in (lo, hi)
    got = parquet_table(out).sort_by("input_row")
    assert got.column("objid").to_pylist() == ids
    rows = sorted(_stilts_csv(out / "mergers.fits"), key=lambda r: int(r["input_row"]))
    assert [r["objid"] for r in rows] == ["" if v is None else str(v) for v in ids]  # only the blank is null
    assert [r["n16"] for r in rows] == ["" if v is None else str(v) for v in t.column("n16").to_pylist()]

    out2 = tmp_path / "out2"
    rc, _, err = cheap_cli(
        tmp_path / "full16.parquet", "--images", stamps, "-o", out2, "--keep-columns", "n16", capsys=capsys
    )
    assert rc in (0, 3), err  # most rows have no stamp (no_image): fine, the column is the subject
    _, _, hdr = assert_fits_equals_parquet(out2)
    k = [hdr[f"TTYPE{i}"] for i in range(1, hdr["TFIELDS"] + 1)].index("n16") + 1
    assert hdr[f"TFORM{k}"] == "J" and hdr[f"TNULL{k}"] == -(2**31)
    rows = sorted(_stilts_csv(out2 / "mergers.fits"), key=lambda r: int(r["input_row"]))
    assert [r["n16"] for r in rows] == [*map(str, full16.tolist()), ""]


# ---------------------------------------------------------------- a full disk names the file
def _can_mount_tmpfs() -> bool:
    if shutil.which("unshare") is None:
        return False
    r = subprocess.run(
        ["unshare", "-rm", "sh", "-c", "d=$(mktemp -d) && mount -t tmpfs -o size=1m tmpfs $d"],
        capture_output=True,
        timeout=30,
    )
    return r.returncode == 0


def test_full_disk_during_the_final_write_names_the_file(cheap_engine, tmp_path):
    if not _can_mount_tmpfs():
        pytest.skip("needs unshare -rm with tmpfs mounts (a private mount namespace for a small disk)")
    ra, dec = _positions()
    # one long text value: the FITS table is 12 rows x 400 kB (its column's width), the Parquet tiny
    df = pd.DataFrame({"objid": np.arange(1, N + 1), "ra": ra, "dec": dec, "note": ["x" * 400_000] + [""] * (N - 1)})
    pq.write_table(pa.Table.from_pandas(df, preserve_index=False), tmp_path / "cat.parquet")
    make_stamps(tmp_path / "stamps", range(1, N + 1), seed=6, size=64)
    small = tmp_path / "small"
    small.mkdir()
    cmd = [
        sys.executable, "-m", "mergerscan.pipeline.cli", str(tmp_path / "cat.parquet"),
        "--images", str(tmp_path / "stamps"), "-o", str(small / "out"), "--keep-columns", "note",
        "--engine", str(cheap_engine), "--views", "1", "--no-progress", "--no-report",
        "--workers", "1", "--threads-per-worker", "1",
    ]  # fmt: skip
    script = f"mount -t tmpfs -o size=1m tmpfs '{small}' && exec \"$@\""
    r = subprocess.run(["unshare", "-rm", "sh", "-c", script, "sh", *cmd], capture_output=True, text=True, timeout=600)
    lines = [ln for ln in r.stderr.splitlines() if ln.strip() and "process-catalog" in ln]
    assert r.returncode == 1 and "Traceback" not in r.stderr, r.stderr[-3000:]
    assert len(lines) == 1 and "No space left on device" in lines[0], r.stderr[-3000:]
    assert str(small / "out" / "mergers.fits") in lines[0], lines[0]
