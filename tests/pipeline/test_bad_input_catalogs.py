"""Messy catalogs and hostile output directories through the process-catalog CLI (issue 11, classes
1, 2, 3, 6, 7, 9).  Every case is run as a user meets it: ``process-catalog`` with real files, a
real Dask scheduler, stamps the tests make and conftest's cheap engine (what is checked here does
not depend on the model).

Cases (one line each):
 1. kept ``P_MERGER`` (float) is renamed ``in_P_MERGER``; FITS ``p_merger`` = Parquet ``p_merger``
 2. kept integer ``STATUS`` is renamed ``in_STATUS``; the FITS write does not crash
 3. kept ``RA``/``DEC`` (text, coordinates come from ra_deg/dec_deg) become ``in_RA``/``in_DEC``
 4. kept ``IS_MERGER``, ``Input_Row``, ``_HEALPIX_29`` get the ``in_`` prefix
 5. kept ``ID`` beside an integer id (output ``objid``) keeps its name: only this run's output names collide
 6. kept ``status`` and ``in_status`` together: ``in_in_status`` and ``in_status``, no clash (the rule itself)
 7. the id/ra/dec columns themselves under ``--keep-columns '*'`` are not duplicated
 8. ``--overwrite`` on a directory of user files: refused in one line, nothing deleted
 9. ``--overwrite`` with the input catalog inside OUT/parquet (a run's output as input): refused, nothing deleted
10. ``--overwrite`` on a run whose OUT also holds the input catalog and a user file: both kept
11. ``--overwrite`` where OUT/report is a symlink to a user directory: the link goes, the files stay
12. no ``--overwrite``, OUT non-empty and not a run: refused in one line
13. blank and null text ids (Parquet): flagged ``no_id``, ids come out exactly as they went in
14. CSV integer id column with one blank: int64 exact (no float64), the blank row flagged ``no_id``
15. a text id longer than 255 characters: ``no_image`` for that row, not ``File name too long``
16. a ``--path-column`` value longer than 255 characters: ``no_image`` for that row
17. uint64 ids >= 2^63 (Parquet): exact in Parquet and FITS
18. uint64 ids >= 2^63 (FITS input, TZERO): exact
19. CSV text ids with leading zeros (``0001``): stay text, exactly
20. a floating-point id column: one-line error naming the column, nothing written
21. Parquet int64 id column with a null: the other ids exact (not float64), the null flagged ``no_id``
22. CSV ids mixing integers and names: text, exactly
23. CSV whitespace-only id: flagged ``no_id``
24. a ``touch``ed identical catalog resumes (not refused as different)
25. a Parquet dataset directory rewritten in place (same file names): refused as a different catalog
26. a catalog file rewritten in place with the same size: refused as a different catalog
27. a non-ASCII kept column name (``Δz``): legal FITS name, original in TCOMMn, values equal
28. a kept column name longer than 68 characters: shortened, unique FITS name, values equal
29. a FITS vector column with ``--keep-columns '*'``: carried as JSON text in Parquet and FITS
30. a Parquet list column: carried as JSON text in Parquet and FITS
31. kept ``g-r`` and ``g_r``: FITS ``g_r`` and ``g_r_2``
32. a column named like an internal column (``_input_row``): one-line error at start
33. more columns than a FITS table holds (``'*'`` on 1000 columns): one-line error at start
34. a kept uint64 column with values >= 2^63: exact in FITS (no overflow crash at the end)
35. ``-o`` pointing at a file: one line, exit 2
36. ``-o`` below a file: one line, exit 2
37. ``-o`` a read-only directory (run as an unprivileged user): one line, exit 2
38. ^C (SIGINT to the process group) mid-run: one line, exit 130, no traceback; the re-run resumes
39. credentials in ``--cutout-service`` (user:pass@, token=, api_key=) appear nowhere stored or printed
40. ``redact_url`` on URL forms (userinfo, secret-named params, no credentials, non-URLs)
41. kept ``Z`` and ``z`` (case-only twins): the second is ``in_z`` in Parquet and FITS, both exact
42. a kept nullable int column and a nullable bool column: FITS equals Parquet (TNULL, False)
43. a header naming two columns alike (CSV, Parquet, FITS): one-line error naming both, nothing written
44. a CSV written with ", " (columns " ra", " objid"): found by their names, ids exact, " mag" kept as "mag"
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import fitsio
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from conftest import assert_fits_equals_parquet, cli_process, make_stamps, parquet_table, write_fits_catalog
from mergerscan.catalogs.schema import output_names
from mergerscan.cutouts.sources import redact_url
from mergerscan.pipeline.faults import environment

BIG = 588018055654998067
U63 = 2**63 + 12345


# ---------------------------------------------------------------- helpers
@pytest.fixture(scope="module")
def field(tmp_path_factory, cheap_engine):
    """12 positions and their stamps, named 1..12 (the ids of most catalogs below), and the cheap
    engine as d / "engine.onnx" for the runs in a subprocess."""
    d = tmp_path_factory.mktemp("bad")
    shutil.copy(cheap_engine, d / "engine.onnx")
    make_stamps(d / "stamps", range(1, 13), seed=3, size=64)
    return d


def positions(n=12, seed=0):
    rng = np.random.default_rng(seed)
    return rng.uniform(150, 150.2, n), rng.uniform(2, 2.2, n)


def one_line(err: str, *needles):
    lines = [line for line in err.strip().splitlines() if line.strip()]
    assert len(lines) == 1, err
    assert "Traceback" not in err
    for n in needles:
        assert n in lines[0], lines[0]
    return lines[0]


def _keep_all(cheap_cli, catalog: Path, field: Path, out: Path, capsys, *options):
    """process-catalog CATALOG on the field's stamps into OUT with ``options``, every input column kept."""
    return cheap_cli(catalog, "--images", field / "stamps", "-o", out, *options, "--keep-columns", "*", capsys=capsys)


def read_parquet(out: Path) -> pd.DataFrame:
    return parquet_table(out).to_pandas().sort_values("input_row").reset_index(drop=True)


# ---------------------------------------------------------------- 1: collisions with output columns
def test_kept_columns_colliding_with_output_columns_are_prefixed(field, cheap_cli, tmp_path, capsys):
    ra, dec = positions()
    n = len(ra)
    df = pd.DataFrame(
        {
            "objid": np.arange(1, n + 1, dtype=np.int64),
            "ra_deg": ra,
            "dec_deg": dec,
            "P_MERGER": np.linspace(5, 6, n),
            "STATUS": np.arange(n, dtype=np.int32) * 3,
            "RA": [f"10:00:0{i % 10}" for i in range(n)],
            "DEC": [f"+02:00:{i:02d}" for i in range(n)],
            "IS_MERGER": np.arange(n) % 2 == 0,
            "Input_Row": np.arange(n)[::-1].copy(),
            "_HEALPIX_29": np.full(n, 7),
            "ID": np.arange(n) + 100,
            "Z": np.full(n, 0.1),
            "z": np.full(n, 0.2),
        }
    )
    path = tmp_path / "cat.parquet"
    df.to_parquet(path)
    out = tmp_path / "out"
    rc, _, err = _keep_all(cheap_cli, path, field, out, capsys, "--ra-column", "ra_deg", "--dec-column", "dec_deg")
    assert rc == 0, err
    got, fits, hdr = assert_fits_equals_parquet(out)
    assert (got["status"] == "ok").all() and got["p_merger"].between(0, 1).all()
    for name in ("P_MERGER", "STATUS", "RA", "DEC", "IS_MERGER", "Input_Row", "_HEALPIX_29"):
        assert got[f"in_{name}"].tolist() == df[name].tolist(), name
    assert got["ID"].tolist() == df["ID"].tolist() and "in_ID" not in got  # this run's id column is objid
    assert got["Z"].tolist() == [0.1] * n and got["in_z"].tolist() == [0.2] * n  # case-only twins
    assert {"Z", "in_z"} <= set(fits.dtype.names)
    # the id/ra/dec columns are output columns of their own, never carried twice
    assert not {"in_objid", "in_ra_deg", "ra_deg", "objid_2"} & set(got.columns)
    assert fits["p_merger"].dtype.str[1:] == "f4" and np.isfinite(fits["p_merger"]).all()
    comments = [hdr.get(f"TCOMM{i}") for i in range(1, hdr["TFIELDS"] + 1)]
    assert "input column 'STATUS'" in comments


def test_prefix_repeats_until_nothing_collides():
    assert output_names(["status", "in_status", "mag"]) == {
        "status": "in_in_status",
        "in_status": "in_status",
        "mag": "mag",
    }
    assert output_names(["Ra", "in_RA"]) == {"Ra": "in_in_Ra", "in_RA": "in_RA"}
    assert output_names(["ID", "OBJID", "_HealPix_29"]) == {
        "ID": "in_ID",
        "OBJID": "in_OBJID",
        "_HealPix_29": "in__HealPix_29",
    }


def test_nullable_kept_columns_fits_equals_parquet(field, cheap_cli, tmp_path, capsys):
    ra, dec = positions()
    n = len(ra)
    t = pa.table(
        {
            "objid": pa.array(range(1, n + 1), pa.int64()),
            "ra": ra,
            "dec": dec,
            "nchild": pa.array([None if i % 4 == 0 else 2**62 + i for i in range(n)], pa.int64()),
            "flag": pa.array([None if i % 3 == 0 else i % 2 == 0 for i in range(n)], pa.bool_()),
            "name": pa.array([None if i == 5 else f"g{i}" for i in range(n)], pa.string()),
        }
    )
    pq.write_table(t, tmp_path / "cat.parquet")
    out = tmp_path / "out"
    rc, _, err = cheap_cli(
        tmp_path / "cat.parquet",
        "--images",
        field / "stamps",
        "-o",
        out,
        "--keep-columns",
        "nchild,flag,name",
        capsys=capsys,
    )
    assert rc == 0, err
    assert_fits_equals_parquet(out)
    got = parquet_table(out).sort_by("input_row")
    assert got.column("nchild").to_pylist() == t.column("nchild").to_pylist()
    assert got.column("flag").to_pylist() == t.column("flag").to_pylist()


# ---------------------------------------------------------------- 2: --overwrite never deletes user files
def _small_fits(path: Path, n=12):
    ra, dec = positions(n)
    write_fits_catalog(path, pd.DataFrame({"objid": np.arange(1, n + 1, dtype=np.int64), "ra": ra, "dec": dec}))
    return path


def _tree(d: Path) -> dict:
    return {str(p.relative_to(d)): p.read_bytes() for p in sorted(d.rglob("*")) if p.is_file()}


def test_overwrite_refuses_a_directory_of_user_files(field, cheap_cli, tmp_path, capsys):
    cat = _small_fits(tmp_path / "cat.fits")
    home = tmp_path / "home"
    (home / "parquet").mkdir(parents=True)  # even entries named like ours are not touched
    (home / "thesis.tex").write_text("years of work")
    (home / "parquet" / "mine.parquet").write_bytes(b"PAR1")
    (home / "summary.json").write_text('{"mine": 1}')
    before = _tree(home)
    for extra in (["--overwrite"], []):
        rc, _, err = cheap_cli(cat, "--images", field / "stamps", "-o", home, *extra, capsys=capsys)
        assert rc == 2
        one_line(err, "not a mergerscan run", str(home))
        assert _tree(home) == before


def test_overwrite_never_deletes_the_input(field, cheap_cli, tmp_path, capsys):
    cat = _small_fits(tmp_path / "cat.fits")
    out = tmp_path / "out"
    rc, _, err = cheap_cli(cat, "--images", field / "stamps", "-o", out, capsys=capsys)
    assert rc == 0, err
    # the run's own Parquet output as the input of a new run in the same OUT, with --overwrite
    before = _tree(out)
    rc, _, err = cheap_cli(out / "parquet", "--images", field / "stamps", "-o", out, "--overwrite", capsys=capsys)
    assert rc == 2
    one_line(err, "--overwrite would delete", "parquet")
    assert _tree(out) == before
    # the catalog and a user file beside the run's outputs: --overwrite replaces the run, keeps both
    shutil.copy(cat, out / "cat.fits")
    (out / "notes.txt").write_text("mine")
    rc, _, err = cheap_cli(
        out / "cat.fits", "--images", field / "stamps", "-o", out, "--overwrite", "--partition-rows", "5", capsys=capsys
    )
    assert rc == 0, err
    assert (out / "cat.fits").read_bytes() == cat.read_bytes() and (out / "notes.txt").read_text() == "mine"
    assert len(read_parquet(out)) == 12


def test_overwrite_unlinks_a_symlinked_output_entry_not_its_target(field, cheap_cli, tmp_path, capsys):
    cat = _small_fits(tmp_path / "cat.fits")
    out = tmp_path / "out"
    assert cheap_cli(cat, "--images", field / "stamps", "-o", out, capsys=capsys)[0] == 0
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "keep.txt").write_text("x")
    shutil.rmtree(out / "report", ignore_errors=True)
    (out / "report").symlink_to(mine, target_is_directory=True)
    rc, _, err = cheap_cli(
        cat, "--images", field / "stamps", "-o", out, "--overwrite", "--partition-rows", "7", capsys=capsys
    )
    assert rc == 0, err
    assert (mine / "keep.txt").read_text() == "x" and not (out / "report").is_symlink()


# ---------------------------------------------------------------- 3: ids of every kind
def test_blank_and_null_text_ids_are_flagged_and_exact(field, cheap_cli, tmp_path, capsys):
    ra, dec = positions()
    ids = [str(i) for i in range(1, 13)]
    ids[2], ids[5], ids[7] = "", None, "  "
    pq.write_table(pa.table({"name": pa.array(ids, pa.string()), "ra": ra, "dec": dec}), tmp_path / "c.parquet")
    out = tmp_path / "out"
    rc, _, err = cheap_cli(
        tmp_path / "c.parquet", "--images", field / "stamps", "-o", out, "--id-column", "name", capsys=capsys
    )
    assert rc == 0, err
    got, _, _ = assert_fits_equals_parquet(out)
    assert parquet_table(out).sort_by("input_row").column("id").to_pylist() == ids
    assert got["status"].tolist() == ["no_id" if i in (2, 5, 7) else "ok" for i in range(12)]


def test_csv_integer_ids_with_a_blank_stay_exact(field, cheap_cli, tmp_path, capsys):
    ra, dec = positions()
    ids = [BIG + i for i in range(12)]
    (tmp_path / "stamps").mkdir()
    for i, o in enumerate(ids):
        (tmp_path / "stamps" / f"{o}.jpg").symlink_to(field / "stamps" / f"{i + 1}.jpg")
    rows = ["objid,ra,dec"] + [
        f"{'' if i == 4 else o},{float(r)!r},{float(d)!r}" for i, (o, r, d) in enumerate(zip(ids, ra, dec))
    ]
    (tmp_path / "c.csv").write_text("\n".join(rows) + "\n")
    out = tmp_path / "out"
    rc, _, err = cheap_cli(tmp_path / "c.csv", "--images", tmp_path / "stamps", "-o", out, capsys=capsys)
    assert rc == 0, err
    got, _fits, _ = assert_fits_equals_parquet(out)
    objid = parquet_table(out).sort_by("input_row").column("objid")
    assert objid.type == pa.int64() and objid.to_pylist() == [None if i == 4 else o for i, o in enumerate(ids)]
    assert got["status"].tolist() == ["no_id" if i == 4 else "ok" for i in range(12)]


def test_ids_and_paths_longer_than_255_characters_are_row_statuses(field, cheap_cli, tmp_path, capsys):
    ra, dec = positions()
    ids = [str(i) for i in range(1, 13)]
    ids[3] = "G" * 300
    paths = [""] * 12
    paths[6] = "sub/" + "p" * 300 + ".jpg"
    pd.DataFrame({"id": ids, "ra": ra, "dec": dec, "file": paths}).to_parquet(tmp_path / "c.parquet")
    out = tmp_path / "out"
    rc, _, err = cheap_cli(
        tmp_path / "c.parquet", "--images", field / "stamps", "-o", out, "--path-column", "file", capsys=capsys
    )
    assert rc == 0, err
    got, _, _ = assert_fits_equals_parquet(out)
    assert got["id"].tolist() == ids
    assert got["status"].tolist() == ["no_image" if i in (3, 6) else "ok" for i in range(12)]


@pytest.mark.parametrize("fmt", ["parquet", "fits"])
def test_uint64_ids_at_and_above_2_63_stay_exact(field, cheap_cli, tmp_path, capsys, fmt):
    ra, dec = positions()
    ids = np.array([U63 + i for i in range(11)] + [2**64 - 1], np.uint64)
    (tmp_path / "stamps").mkdir()
    for i, o in enumerate(ids):
        (tmp_path / "stamps" / f"{o}.jpg").symlink_to(field / "stamps" / f"{i + 1}.jpg")
    df = pd.DataFrame({"objid": ids, "ra": ra, "dec": dec, "big": ids})
    path = tmp_path / f"c.{fmt}"
    df.to_parquet(path) if fmt == "parquet" else write_fits_catalog(path, df)
    out = tmp_path / "out"
    rc, _, err = cheap_cli(path, "--images", tmp_path / "stamps", "-o", out, "--keep-columns", "big", capsys=capsys)
    assert rc == 0, err
    got, fits, _ = assert_fits_equals_parquet(out)
    assert [int(v) for v in got["objid"]] == [int(v) for v in ids] == [int(v) for v in fits["objid"]]
    assert [int(v) for v in got["big"]] == [int(v) for v in ids]
    assert (got["status"] == "ok").all()


def test_csv_text_ids_leading_zeros_mixed_and_blank(field, cheap_cli, tmp_path, capsys):
    ra, dec = positions()
    ids = ["0001", "0002", "3", "M4", "5", "   ", "0", "-8", "9.0", "1e3", "11", "012"]
    stamps = tmp_path / "stamps"
    stamps.mkdir()
    for i, o in enumerate(ids):
        if o.strip():
            (stamps / f"{o}.jpg").symlink_to(field / "stamps" / f"{i + 1}.jpg")
    lines = ["id,ra,dec"] + [f"{o},{float(r)!r},{float(d)!r}" for o, r, d in zip(ids, ra, dec)]
    (tmp_path / "c.csv").write_text("\n".join(lines) + "\n")
    out = tmp_path / "out"
    rc, _, err = cheap_cli(tmp_path / "c.csv", "--images", stamps, "-o", out, capsys=capsys)
    assert rc == 0, err
    got, _, _ = assert_fits_equals_parquet(out)
    assert got["id"].tolist() == ids  # text, exactly as written
    assert got["status"].tolist() == ["no_id" if i == 5 else "ok" for i in range(12)]


def test_float_id_column_is_a_one_line_error(field, cheap_cli, tmp_path, capsys):
    ra, dec = positions()
    pd.DataFrame({"objid": np.arange(12) + 0.5, "ra": ra, "dec": dec}).to_parquet(tmp_path / "f.parquet")
    out = tmp_path / "out"
    rc, _, err = cheap_cli(tmp_path / "f.parquet", "--images", field / "stamps", "-o", out, capsys=capsys)
    assert rc == 2
    one_line(err, "f.parquet", "'objid'", "double")
    assert not out.exists()


def test_parquet_integer_id_with_a_null(field, cheap_cli, tmp_path, capsys):
    ra, dec = positions()
    ids = [None if i == 9 else 2**62 + i for i in range(12)]
    stamps = tmp_path / "stamps"
    stamps.mkdir()
    for i, o in enumerate(ids):
        if o is not None:
            (stamps / f"{o}.jpg").symlink_to(field / "stamps" / f"{i + 1}.jpg")
    pq.write_table(pa.table({"objid": pa.array(ids, pa.int64()), "ra": ra, "dec": dec}), tmp_path / "c.parquet")
    out = tmp_path / "out"
    rc, _, err = cheap_cli(tmp_path / "c.parquet", "--images", stamps, "-o", out, capsys=capsys)
    assert rc == 0, err
    got, _, _ = assert_fits_equals_parquet(out)
    assert parquet_table(out).sort_by("input_row").column("objid").to_pylist() == ids
    assert got["status"].tolist() == ["no_id" if i == 9 else "ok" for i in range(12)]


# ---------------------------------------------------------------- 6: run identity follows content
def test_touched_identical_catalog_resumes(field, cheap_cli, tmp_path, capsys):
    cat = _small_fits(tmp_path / "cat.fits")
    out = tmp_path / "out"
    assert cheap_cli(cat, "--images", field / "stamps", "-o", out, capsys=capsys)[0] == 0
    markers = {p: p.stat().st_mtime_ns for p in (out / "_work" / "scored").glob("*.json")}
    os.utime(cat, ns=(time.time_ns() + 10**10, time.time_ns() + 10**10))
    rc, _, err = cheap_cli(cat, "--images", field / "stamps", "-o", out, capsys=capsys)
    assert rc == 0, err
    assert {p: p.stat().st_mtime_ns for p in (out / "_work" / "scored").glob("*.json")} == markers


def test_dataset_directory_rewritten_in_place_is_a_different_catalog(field, cheap_cli, tmp_path, capsys):
    ra, dec = positions()
    ds = tmp_path / "ds"
    ds.mkdir()
    for part in range(2):
        sl = slice(part * 6, part * 6 + 6)
        pq.write_table(
            pa.table({"objid": np.arange(1, 13)[sl], "ra": ra[sl], "dec": dec[sl], "mag": np.full(6, 17.0)}),
            ds / f"part-{part}.parquet",
        )
    out = tmp_path / "out"
    args = (ds, "--images", field / "stamps", "-o", out, "--keep-columns", "mag")
    assert cheap_cli(*args, capsys=capsys)[0] == 0
    mtime = os.stat(ds).st_mtime_ns
    pq.write_table(
        pa.table({"objid": np.arange(7, 13), "ra": ra[6:], "dec": dec[6:], "mag": np.full(6, 18.0)}),
        ds / "part-1.parquet",
    )
    os.utime(ds, ns=(mtime, mtime))  # the directory looks untouched
    rc, _, err = cheap_cli(*args, capsys=capsys)
    assert rc == 2
    one_line(err, "different catalog")
    rc, _, err = cheap_cli(*args, "--overwrite", capsys=capsys)
    assert rc == 0, err
    assert read_parquet(out)["mag"].tolist() == [17.0] * 6 + [18.0] * 6


def test_file_rewritten_in_place_with_the_same_size_is_a_different_catalog(field, cheap_cli, tmp_path, capsys):
    ra, dec = positions()
    path = tmp_path / "c.csv"
    body = lambda m: (
        "objid,ra,dec,mag\n"
        + "".join(f"{i + 1},{float(r)!r},{float(d)!r},{m}\n" for i, (r, d) in enumerate(zip(ra, dec)))
    )
    path.write_text(body("17.0"))
    st = os.stat(path)
    out = tmp_path / "out"
    args = (path, "--images", field / "stamps", "-o", out, "--keep-columns", "mag")
    assert cheap_cli(*args, capsys=capsys)[0] == 0
    path.write_text(body("18.0"))
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))  # same size, same mtime
    rc, _, err = cheap_cli(*args, capsys=capsys)
    assert rc == 2
    one_line(err, "different catalog")


# ---------------------------------------------------------------- 7: FITS names and types decided at start
def test_kept_column_names_fits_cannot_hold(field, cheap_cli, tmp_path, capsys):
    ra, dec = positions()
    n = len(ra)
    long_name = "flux_" + "x" * 80
    t = pa.table(
        {
            "objid": pa.array(range(1, n + 1), pa.int64()),
            "ra": ra,
            "dec": dec,
            "Δz": np.linspace(0, 1, n),
            long_name: np.arange(n, dtype=np.float32),
            long_name + "_b": np.arange(n, dtype=np.int16),
            "g-r": np.full(n, 0.5),
            "g_r": np.full(n, 0.7),
            "mags": pa.array([[float(i), 2.0 * i] for i in range(n)], pa.list_(pa.float64())),
            "note": ["naïve"] * n,
        }
    )
    pq.write_table(t, tmp_path / "c.parquet")
    out = tmp_path / "out"
    rc, _, err = _keep_all(cheap_cli, tmp_path / "c.parquet", field, out, capsys)
    assert rc == 0, err
    got, fits, hdr = assert_fits_equals_parquet(out)
    names = fits.dtype.names
    assert all(len(c) <= 68 and c.isascii() for c in names)
    assert "_z" in names and "g_r" in names and "g_r_2" in names
    assert len({c.lower() for c in names}) == len(names)
    assert got["Δz"].tolist() == np.linspace(0, 1, n).tolist()
    assert json.loads(got["mags"][3]) == [3.0, 6.0]
    comments = " ".join(str(hdr.get(f"TCOMM{i}")) for i in range(1, hdr["TFIELDS"] + 1))
    assert "\\u0394z" in comments and long_name in comments


def test_fits_vector_columns_with_keep_all(field, cheap_cli, tmp_path, capsys):
    ra, dec = positions()
    n = len(ra)
    rec = np.zeros(
        n,
        dtype=[
            ("objid", "i8"),
            ("ra", "f8"),
            ("dec", "f8"),
            ("flux", "f4", (5,)),
            ("flags", "i4", (2,)),
            ("tag", "S4"),
        ],
    )
    rec["objid"] = np.arange(1, n + 1)
    rec["ra"], rec["dec"] = ra, dec
    rec["flux"] = np.arange(n * 5).reshape(n, 5)
    rec["flags"] = 1
    rec["tag"] = b"ab"
    fitsio.write(str(tmp_path / "v.fits"), rec, clobber=True)
    out = tmp_path / "out"
    rc, _, err = _keep_all(cheap_cli, tmp_path / "v.fits", field, out, capsys)
    assert rc == 0, err
    got, _, _ = assert_fits_equals_parquet(out)
    assert [json.loads(v) for v in got["flux"]] == rec["flux"].tolist()
    assert got["tag"].tolist() == ["ab"] * n


def test_internal_column_name_and_too_many_columns_are_refused_at_start(field, cheap_cli, tmp_path, capsys):
    ra, dec = positions()
    pd.DataFrame({"objid": np.arange(1, 13), "ra": ra, "dec": dec, "_input_row": 0}).to_parquet(tmp_path / "i.parquet")
    rc, _, err = _keep_all(cheap_cli, tmp_path / "i.parquet", field, tmp_path / "o1", capsys)
    assert rc == 2
    one_line(err, "i.parquet", "'_input_row'")
    wide = pd.DataFrame({f"c{i}": np.zeros(12, np.float32) for i in range(1000)})
    pd.concat([pd.DataFrame({"objid": np.arange(1, 13), "ra": ra, "dec": dec}), wide], axis=1).to_parquet(
        tmp_path / "w.parquet"
    )
    rc, _, err = _keep_all(cheap_cli, tmp_path / "w.parquet", field, tmp_path / "o2", capsys)
    assert rc == 2
    one_line(err, "w.parquet", "999")
    assert not (tmp_path / "o1").exists() and not (tmp_path / "o2").exists()


# ---------------------------------------------------------------- 9: -o, ^C, credentials
def _cli(*argv, timeout=180, **kw):
    return cli_process(*argv, timeout=timeout, **kw)  # fails on a printed traceback


def test_output_is_a_file_or_below_a_file(field, cheap_cli, tmp_path, capsys):
    cat = _small_fits(tmp_path / "cat.fits")
    f = tmp_path / "file.txt"
    f.write_text("x")
    for o in (f, f / "sub"):
        rc, _, err = cheap_cli(cat, "--images", field / "stamps", "-o", o, capsys=capsys)
        assert rc == 2
        one_line(err, str(f))
    assert f.read_text() == "x"


def test_output_read_only_directory(field, tmp_path):
    """A directory nobody may write in: chmod 0555 for a normal user; root writes anywhere, so as
    root the directory is made immutable (chattr +i) instead."""
    cat = _small_fits(tmp_path / "cat.fits")
    ro = tmp_path / "ro"
    ro.mkdir()
    if os.geteuid() == 0:
        if shutil.which("chattr") is None or subprocess.run(["chattr", "+i", str(ro)]).returncode != 0:
            pytest.skip("running as root and chattr +i is unavailable: no directory is read-only for root")
        undo = ["chattr", "-i", str(ro)]
    else:
        os.chmod(ro, 0o555)
        undo = ["chmod", "755", str(ro)]
    try:
        r = _cli(cat, "--images", field / "stamps", "-o", ro / "out", "--no-progress")
    finally:
        subprocess.run(undo, check=True)
    assert r.returncode == 2, r.stderr
    one_line(r.stderr, str(ro / "out"), "cannot write")
    assert not (ro / "out").exists()


def test_ctrl_c_is_one_line_and_the_rerun_resumes(field, tmp_path):
    cat = _small_fits(tmp_path / "cat.fits")
    out = tmp_path / "out"
    argv = [
        sys.executable,
        "-m",
        "mergerscan.pipeline.cli",
        str(cat),
        "--images",
        str(field / "stamps"),
        "-o",
        str(out),
        "--views",
        "1",
        "--no-progress",
        "--no-report",
        "--partition-rows",
        "3",
        "--workers",
        "1",
        "--threads-per-worker",
        "1",
        "--engine",
        str(field / "engine.onnx"),
    ]
    # one partition at a time, each >= 2 s: after the first is done, the others are still to come
    slow = dict(os.environ, **environment("sleep", "score:-1:2"))
    # SIGINT at its default in the child: a suite launched in the background (`make test &`, nohup)
    # hands SIGINT down ignored, and Python then never raises KeyboardInterrupt (the run completes)
    p = subprocess.Popen(
        argv,
        env=slow,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    deadline = time.time() + 120
    scored = out / "_work" / "scored"
    # scoring has begun (a first partition is done) and the others, >= 2 s each, are still running
    while time.time() < deadline and p.poll() is None and not any(scored.glob("*.json")):
        time.sleep(0.02)
    os.killpg(p.pid, signal.SIGINT)  # what ^C in a terminal does: the whole group
    _, err = p.communicate(timeout=120)
    assert p.returncode == 130, err
    one_line(err, "interrupted")
    assert not (out / "mergers.fits").exists()
    r = _cli(*argv[3:])
    assert r.returncode == 0, r.stderr
    assert len(read_parquet(out)) == 12


class _Stamp(BaseHTTPRequestHandler):
    body = b""

    def log_message(self, *args):
        pass

    def do_GET(self):
        self.send_response(200)
        self.send_header("Content-Type", "image/jpeg")
        self.send_header("Content-Length", str(len(self.body)))
        self.end_headers()
        self.wfile.write(self.body)


def test_credentials_in_the_cutout_service_url_are_redacted(field, tmp_path):
    make_stamps(tmp_path / "s160", [1], size=160)  # the service's stamp size
    _Stamp.body = (tmp_path / "s160" / "1.jpg").read_bytes()
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Stamp)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    try:
        cat = _small_fits(tmp_path / "cat.fits")
        url = (
            f"http://alice:hunter2pass@127.0.0.1:{httpd.server_address[1]}/cut"
            "?token=tok3nvalue&api_key=k3yvalue&band=gri"
        )
        out = tmp_path / "out"
        r = _cli(
            cat, "--cutout-service", url, "-o", out, "--views", "1", "--no-progress", "--engine", field / "engine.onnx"
        )
        assert r.returncode == 0, r.stderr
        summary = json.loads((out / "summary.json").read_text())
        assert summary["scored"] == 12
        assert "band=gri" in summary["source"]["location"] and "127.0.0.1" in summary["source"]["location"]
        texts = {"stdout": r.stdout, "stderr": r.stderr}
        texts.update(
            {
                str(p): p.read_text(errors="replace")
                for p in out.rglob("*")
                if p.is_file() and p.suffix in (".json", ".html", ".txt", ".log")
            }
        )
        texts["fits header"] = str(fitsio.read_header(str(out / "mergers.fits"), 1))
        texts.update({str(p): str(pq.read_metadata(p).metadata) for p in (out / "parquet").rglob("*.parquet")})
        for where, text in texts.items():
            for secret in ("hunter2pass", "tok3nvalue", "k3yvalue", "alice"):
                assert secret not in text, (secret, where)
        # a later run with another password is the same run (credentials are not identity)
        r2 = _cli(
            cat,
            "--cutout-service",
            url.replace("hunter2pass", "newpass"),
            "-o",
            out,
            "--views",
            "1",
            "--no-progress",
            "--no-report",
            "--engine",
            field / "engine.onnx",
        )
        assert r2.returncode == 0, r2.stderr
    finally:
        httpd.shutdown()


def test_redact_url_forms():
    assert redact_url("https://u:p@host:8/x?a=1") == "https://REDACTED@host:8/x?a=1"
    assert (
        redact_url("https://host/x?ra=1&token=abc&X-Amz-Signature=s&sig=q")
        == "https://host/x?ra=1&token=REDACTED&X-Amz-Signature=REDACTED&sig=REDACTED"
    )
    assert (
        redact_url("https://skyserver.sdss.org/dr17/ImgCutout/getjpeg")
        == "https://skyserver.sdss.org/dr17/ImgCutout/getjpeg"
    )
    assert redact_url("/data/stamps") == "/data/stamps"


# ---------------------------------------------------------------- 43: a column name twice in the header
@pytest.mark.parametrize("fmt", ["csv", "parquet", "fits"])
def test_a_column_name_twice_is_a_one_line_error(field, cheap_cli, tmp_path, capsys, fmt):
    """Readers would take one of the two silently (pandas renames the second 'ra.1'), so ra could
    come from the wrong column: refused before anything is written.  Blank CSV headers may repeat."""
    ra, dec = positions()
    path = tmp_path / f"dup.{fmt}"
    if fmt == "csv":
        body = "".join(f"{i},{r},{d},{r / 15},\n" for i, r, d in zip(range(1, 13), ra, dec))
        path.write_text(",".join(["objid", "ra", "dec", "ra", ""]) + "\n" + body)
    elif fmt == "parquet":
        arrays = [pa.array(np.arange(1, 13)), pa.array(ra), pa.array(dec), pa.array(ra / 15)]
        pq.write_table(pa.Table.from_arrays(arrays, names=["objid", "ra", "dec", "ra"]), path)
    else:  # numpy cannot name two fields alike: write 'rb' and rename it in the header bytes
        a = np.zeros(12, dtype=[("objid", "i8"), ("ra", "f8"), ("dec", "f8"), ("rb", "f8")])
        a["objid"], a["ra"], a["dec"], a["rb"] = np.arange(1, 13), ra, dec, ra / 15
        fitsio.write(str(path), a)
        raw = path.read_bytes()
        assert raw.count(b"'rb      '") == 1
        path.write_bytes(raw.replace(b"'rb      '", b"'ra      '"))
    out = tmp_path / "out"
    rc, _, err = cheap_cli(path, "--images", field / "stamps", "-o", out, capsys=capsys)
    assert rc == 2
    one_line(err, f"dup.{fmt}", "'ra'", "columns 2 and 4")
    assert not out.exists()


def test_blank_csv_header_names_may_repeat(field, cheap_cli, tmp_path, capsys):
    ra, dec = positions()
    body = "".join(f"{i},{r},{d},x,y\n" for i, r, d in zip(range(1, 13), ra, dec))
    (tmp_path / "blank.csv").write_text("objid,ra,dec,,\n" + body)
    rc, _, err = cheap_cli(tmp_path / "blank.csv", "--images", field / "stamps", "-o", tmp_path / "out", capsys=capsys)
    assert rc == 0, err
    assert read_parquet(tmp_path / "out")["objid"].tolist() == list(range(1, 13))


# ---------------------------------------------------------------- 44: a CSV written with ", "
def test_csv_with_blanks_after_the_commas(field, cheap_cli, tmp_path, capsys):
    ra, dec = positions()
    rows = "".join(f"{r}, {i}, {d}, {i * 0.5}\n" for i, r, d in zip(range(1, 13), ra, dec))
    (tmp_path / "spaced.csv").write_text("ra, objid, dec, mag\n" + rows)
    out = tmp_path / "out"
    rc, _, err = cheap_cli(
        tmp_path / "spaced.csv", "--images", field / "stamps", "-o", out, "--keep-columns", "mag", capsys=capsys
    )
    assert rc == 0, err
    got = read_parquet(out)
    assert got["objid"].tolist() == list(range(1, 13)) and got["objid"].dtype == np.int64
    assert got["mag"].tolist() == [i * 0.5 for i in range(1, 13)]  # the blank is padding, not part of the name
    assert (got["status"] == "ok").all()
    assert_fits_equals_parquet(out)
