"""Catalog edges: column resolution, validation, readers, Parquet/VOParquet/_metadata and FITS writers."""

from __future__ import annotations

import csv
import gzip
import io
import shutil
import subprocess
import xml.etree.ElementTree as ET

import fitsio
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq
import pytest

from mergerscan.catalogs.fits_write import write_fits_table
from mergerscan.catalogs.read import CatalogError, CatalogReader
from mergerscan.catalogs.validate import check_numeric, coord_status, flag_duplicates, require_rows, resolve_columns
from mergerscan.catalogs.write import to_arrow, write_metadata, write_partition

BIG = 588018055654998067  # a real SDSS objid
NEAR62 = 2**62 + 12345  # not representable in float64
VOT = "{http://www.ivoa.net/xml/VOTable/v1.3}"
META = {
    "engine_name": "vgg16-e1",
    "engine_sha256": "ab" * 32,
    "threshold": 0.62,
    "mergerscan_version": "0.1.0",
    "source": "stamps",
    "model_card": '{"x": 1}',
    "command": "process-catalog dr7.fits -o OUT " + "--keep-columns " + ",".join(f"c{i}" for i in range(30)),
}


# ---------------------------------------------------------------- column resolution and validation
def test_aliases_case_insensitive_and_explicit_overrides():
    assert resolve_columns(["objID", "RAdeg", "DEdeg", "r"], path="a.fits") == {
        "id": "objID",
        "ra": "RAdeg",
        "dec": "DEdeg",
    }
    assert resolve_columns(["OBJID", "RA", "DEC"]) == {"id": "OBJID", "ra": "RA", "dec": "DEC"}
    assert resolve_columns(["source_id", "raj2000", "dej2000"])["dec"] == "dej2000"
    cols = ["objid", "ra", "dec", "specobjid", "ra_x", "DEC_X"]
    assert resolve_columns(cols, id_column="SPECOBJID", ra_column="ra_x", dec_column="dec_x") == {
        "id": "specobjid",
        "ra": "ra_x",
        "dec": "DEC_X",
    }


def test_missing_columns_are_one_line_errors():
    with pytest.raises(CatalogError) as e:
        resolve_columns(["objid", "dec", "mag"], path="/data/dr7.fits")
    msg = str(e.value)
    assert "dr7.fits" in msg and "ra" in msg and "mag" in msg and "\n" not in msg
    with pytest.raises(CatalogError, match=r"dr7\.fits.*'alpha'"):
        resolve_columns(["objid", "ra", "dec"], ra_column="alpha", path="dr7.fits")


def test_check_numeric():
    df = pd.DataFrame({"ra": [1.0, 2.0, 3.0], "DEdeg": ["1.5", "x", "2"]})
    with pytest.raises(CatalogError) as e:
        check_numeric(df, ["ra", "DEdeg"], "cat.csv", row_offset=100)
    assert "cat.csv" in str(e.value) and "DEdeg" in str(e.value) and "row 101" in str(e.value)
    ok = pd.DataFrame({"ra": np.array([1, 2], np.int32), "dec": ["1.5", ""]})
    check_numeric(ok, ["ra", "dec"], "cat.csv")
    assert ok["ra"].dtype == np.float64 and ok["dec"].iloc[0] == 1.5 and np.isnan(ok["dec"].iloc[1])


def test_empty_catalog():
    with pytest.raises(CatalogError, match=r"empty\.fits.*no rows"):
        require_rows(0, "empty.fits")


def test_coord_status_and_duplicates():
    ra = np.array([10.0, 10.0, -1.0, 360.0, 0.0, np.inf, 359.99])
    dec = np.array([np.nan, 95.0, 0.0, 0.0, -90.0, 0.0, 90.0])
    assert coord_status(ra, dec).tolist() == [False, False, False, False, True, False, True]
    ids = np.array([BIG, 5, BIG, 7, 5, BIG], np.int64)
    assert flag_duplicates(ids).tolist() == [False, False, True, False, True, True]
    assert flag_duplicates(np.array(["a", None, None, "a"], object)).tolist() == [False, False, False, True]


# ---------------------------------------------------------------- readers
@pytest.fixture()
def table():
    n = 1000
    rng = np.random.default_rng(1)
    return pd.DataFrame(
        {
            "objID": NEAR62 + np.arange(n, dtype=np.int64) * 3,
            "RAdeg": rng.uniform(0, 360, n),
            "DEdeg": rng.uniform(-90, 90, n),
            "mag_r": rng.uniform(14, 18, n).astype(np.float32),
        }
    ).assign(objID=lambda d: d.objID.where(d.index != 7, BIG))


def _check_ranges(path, table):
    r = CatalogReader(path, chunk_rows=300)
    try:
        assert r.nrows == len(table) and r.columns == list(table.columns)
        part = r.read_rows(250, 620, ["objID", "DEdeg"])
        assert part["objID"].dtype == np.int64
        assert part["objID"].tolist() == table["objID"][250:620].tolist()
        np.testing.assert_array_equal(part["DEdeg"], table["DEdeg"][250:620])
        chunks = list(r.iter_chunks(["objID"]))
        assert [s for s, _ in chunks] == [0, 300, 600, 900]
        assert pd.concat([c for _, c in chunks])["objID"].tolist() == table["objID"].tolist()
    finally:
        r.close()


def test_read_fits_parquet_csv_row_ranges(tmp_path, table):
    fitsio.write(str(tmp_path / "c.fits"), table.to_records(index=False))
    pq.write_table(pa.Table.from_pandas(table), tmp_path / "c.parquet", row_group_size=128)
    assert pq.ParquetFile(tmp_path / "c.parquet").metadata.num_row_groups == 8
    table.to_csv(tmp_path / "c.csv", index=False, float_format="%.17g")
    table.to_csv(tmp_path / "c.tsv.gz", index=False, sep="\t", float_format="%.17g")  # pandas gzips by suffix
    for name in ("c.fits", "c.fit.gz", "c.fts.gz"):
        if name != "c.fits":
            (tmp_path / name).write_bytes(gzip.compress((tmp_path / "c.fits").read_bytes()))
    for name in ("c.fits", "c.fit.gz", "c.fts.gz", "c.parquet", "c.csv", "c.tsv.gz"):
        _check_ranges(tmp_path / name, table)
    assert CatalogReader(tmp_path / "c.fits").read_rows(7, 8)["objID"].iloc[0] == BIG


def test_truncated_fits_names_file(tmp_path, table):
    fitsio.write(str(tmp_path / "c.fits"), table.to_records(index=False))
    (tmp_path / "trunc.fits").write_bytes((tmp_path / "c.fits").read_bytes()[:9000])
    with pytest.raises(CatalogError, match=r"trunc\.fits") as e:
        CatalogReader(tmp_path / "trunc.fits")
    assert "\n" not in str(e.value)


# ---------------------------------------------------------------- writers
def partition(n=50, start=0, seed=0, note_width=5):
    rng = np.random.default_rng(seed)
    p = rng.uniform(0, 1, n).astype(np.float32)
    status = np.where(np.arange(n) % 10 == 3, "no_image", "ok").astype(object)
    p[status != "ok"] = np.nan
    return pd.DataFrame(
        {
            "objid": np.r_[np.int64(BIG), NEAR62 + np.arange(start + 1, start + n, dtype=np.int64)],
            "ra": rng.uniform(0, 360, n),
            "dec": rng.uniform(-90, 90, n),
            "p_merger": p,
            "is_merger": np.nan_to_num(p, nan=-1) >= 0.62,
            "status": status,
            "input_row": np.arange(start, start + n, dtype=np.int64),
            "healpix29": rng.integers(0, 2**60, n, dtype=np.int64),
            "note": pd.array(["x" * (1 + i % note_width) if i % 7 else None for i in range(n)], dtype="string"),
            "nobs": pd.array([i if i % 5 else None for i in range(n)], dtype="Int64"),
            "mag_r": rng.uniform(14, 18, n).astype(np.float32),
        }
    )


def test_write_partition_deterministic_with_voparquet(tmp_path):
    df = partition()
    a, b = tmp_path / "a" / "p.parquet", tmp_path / "b" / "p.parquet"
    write_partition(df, a, META)
    write_partition(df.copy(), b, META)
    assert a.read_bytes() == b.read_bytes()
    assert sorted(p.name for p in a.parent.iterdir()) == ["p.parquet"]  # no temporary left behind
    kv = pq.read_metadata(a).metadata
    assert kv[b"IVOA.VOTable-Parquet.version"] == b"1.0"
    assert kv[b"mergerscan.engine_sha256"] == META["engine_sha256"].encode()
    assert kv[b"mergerscan.threshold"] == b"0.62"
    root = ET.fromstring(kv[b"IVOA.VOTable-Parquet.content"])
    fields = {f.get("name"): f for f in root.iter(f"{VOT}FIELD")}
    assert list(fields) == list(df.columns)
    assert fields["ra"].get("unit") == "deg" and fields["dec"].get("ucd") == "pos.eq.dec;meta.main"
    assert fields["objid"].get("datatype") == "long" and fields["status"].get("arraysize") == "*"
    assert fields["p_merger"].get("datatype") == "float" and fields["is_merger"].get("datatype") == "boolean"
    assert root.find(f".//{VOT}DATA") is None
    back = pq.read_table(a)
    assert back.column("objid").to_pylist()[0] == BIG
    assert back.schema.field("nobs").type == pa.int64() and back.column("nobs").null_count == 10
    assert back.schema.field("note").type == pa.string()
    from astropy.io import votable  # an independent VOTable parser

    t = votable.parse(io.BytesIO(kv[b"IVOA.VOTable-Parquet.content"]), verify="exception").get_first_table()
    assert str(t.get_field_by_id_or_name("ra").unit) == "deg" and t.get_field_by_id_or_name("objid").datatype == "long"


def test_schema_keeps_partitions_uniform(tmp_path):
    df = partition().assign(note=None)  # all-null object column -> string
    assert to_arrow(df).schema.field("note").type == pa.string()
    schema = to_arrow(partition()).schema
    write_partition(partition().assign(nobs=np.nan), tmp_path / "p.parquet", META, schema=schema)
    assert pq.read_schema(tmp_path / "p.parquet").field("nobs").type == pa.int64()


@pytest.fixture()
def dataset(tmp_path):
    out = tmp_path / "parquet"
    files = []
    for k, (name, n) in enumerate(
        [("Norder=3/Dir=0/Npix=17", 40), ("Norder=5/Dir=0/Npix=300-0", 25), ("Norder=-1/invalid", 7)]
    ):
        f = out / f"{name}.parquet"
        write_partition(partition(n, start=1000 * k, seed=k, note_width=3 + 9 * k), f, META)
        files.append(f)
    return out, files


def test_write_metadata_gives_all_rows(dataset):
    out, files = dataset
    write_metadata(out, files)
    assert (out / "_common_metadata").is_file()
    md = pq.read_metadata(out / "_metadata")
    assert md.num_rows == 72 and {md.row_group(i).column(0).file_path for i in range(md.num_row_groups)} == {
        "Norder=3/Dir=0/Npix=17.parquet",
        "Norder=5/Dir=0/Npix=300-0.parquet",
        "Norder=-1/invalid.parquet",
    }
    assert pq.read_table(out).num_rows == 72
    t = ds.parquet_dataset(str(out / "_metadata")).to_table()
    assert sorted(t.column("input_row").to_pylist()) == sorted(
        pd.concat([pq.read_table(f).to_pandas() for f in files])["input_row"].tolist()
    )
    write_partition(partition(5).assign(mag_r=1), out / "odd.parquet", META)  # int64, not float32
    with pytest.raises(ValueError, match=r"odd\.parquet.*schema differs.*mag_r"):
        write_metadata(out, [*files, out / "odd.parquet"])


def test_write_fits_table_layout(dataset, tmp_path):
    _, files = dataset
    fits = write_fits_table(files, tmp_path / "mergers.fits", META, batch_rows=16)
    h = fitsio.read_header(str(fits), 1)
    cols = {h[f"TTYPE{i}"]: i for i in range(1, h["TFIELDS"] + 1)}
    assert h[f"TFORM{cols['objid']}"] == "K" and f"TZERO{cols['objid']}" not in h
    assert h[f"TFORM{cols['is_merger']}"] == "L" and h[f"TFORM{cols['p_merger']}"] == "E"
    assert h[f"TUNIT{cols['ra']}"] == "deg" and h[f"TUCD{cols['dec']}"] == "pos.eq.dec;meta.main"
    assert h[f"TFORM{cols['note']}"] == "12A"  # widest value over all partitions (the 2nd)
    assert h[f"TNULL{cols['nobs']}"] == -(2**63) and f"TNULL{cols['objid']}" not in h
    assert h["NROWS"] == 72 and h["ENGSHA"] == META["engine_sha256"] and h["THRESH"] == 0.62
    data = fitsio.read(str(fits))
    expect = pd.concat([pq.read_table(f).to_pandas() for f in files], ignore_index=True)
    assert data["objid"].tolist() == expect["objid"].tolist()
    np.testing.assert_array_equal(np.isnan(data["p_merger"]), expect["status"] != "ok")
    assert [s.strip() for s in data["status"]] == expect["status"].tolist()
    assert [s.strip() for s in data["note"]] == expect["note"].fillna("").tolist()
    assert not list(tmp_path.glob(".*.tmp"))


# ---------------------------------------------------------------- real STILTS on the FITS output
def test_stilts_reads_fits_exactly(dataset, tmp_path):
    if shutil.which("stilts") is None:
        pytest.skip("stilts (TOPCAT's command-line twin) is not on PATH: apt-get install stilts")
    _, files = dataset
    fits = write_fits_table(files, tmp_path / "mergers.fits", META)
    expect = pd.concat([pq.read_table(f).to_pandas() for f in files], ignore_index=True)

    def stilts(*args):
        r = subprocess.run(["stilts", "tpipe", f"in={fits}", *args], capture_output=True, text=True, timeout=120)
        assert r.returncode == 0, r.stderr
        return r.stdout

    rows = list(csv.DictReader(io.StringIO(stilts("omode=out", "ofmt=csv"))))
    assert len(rows) == len(expect)
    assert [r["objid"] for r in rows] == [str(v) for v in expect["objid"]]  # exact 64-bit ids, as text
    assert rows[0]["objid"] == str(BIG) and rows[1]["objid"] == str(NEAR62 + 1)
    nobs = pa.concat_arrays([pq.read_table(f).column("nobs").combine_chunks() for f in files]).to_pylist()
    assert [r["nobs"] for r in rows] == ["" if v is None else str(v) for v in nobs]  # TNULL -> blank
    assert [r["is_merger"] for r in rows] == [str(v).lower() for v in expect["is_merger"]]
    table = [
        [c.strip() for c in line.strip("|").split("|")]
        for line in stilts("cmd=meta").splitlines()
        if line.startswith("|")
    ]
    meta = {r[table[0].index("Name")]: dict(zip(table[0], r)) for r in table[1:]}
    assert meta["ra"]["Units"] == meta["dec"]["Units"] == "deg"
    assert meta["ra"]["UCD"] == "pos.eq.ra;meta.main" and meta["p_merger"]["UCD"] == "stat.probability;src.morph"
    assert meta["objid"]["Class"] == "Long" and meta["is_merger"]["Class"] == "Boolean"
    assert meta["p_merger"]["Description"].startswith("calibrated probability")
    params = stilts("omode=meta")
    assert META["engine_sha256"] in params and META["command"] in params  # long string (CONTINUE) intact


def test_find_column_exact_first_then_the_one_case_insensitive_match():
    from mergerscan.catalogs.columns import AmbiguousColumn, find_column, require_column

    cols = ["objID", "RA", "Z", "z", "Mag", "MAG_R", "mag_R"]
    assert find_column(cols, "objid") == "objID" and find_column(cols, "ra") == "RA"
    assert find_column(cols, "z") == "z" and find_column(cols, "Z") == "Z"  # exact spelling wins
    assert find_column(cols, "mag") == "Mag" and find_column(cols, "nosuch") is None
    with pytest.raises(AmbiguousColumn) as e:  # never silently one of them
        find_column(cols, "mag_r")
    assert e.value.matches == ["MAG_R", "mag_R"]
    assert require_column(cols, "MAG", "cat.fits", "keep_columns") == "Mag"
    for name, needle in (
        ("nosuch", "which is not a column (columns: objID, RA"),
        ("mag_r", "ambiguous (MAG_R, mag_R)"),
    ):
        with pytest.raises(CatalogError) as e:
            require_column(cols, name, "cat.fits", "keep_columns")
        msg = e.value.render({"keep_columns": "--keep-columns"})  # as process-catalog words it
        assert msg.startswith(f"cat.fits: --keep-columns names {name!r}") and needle in msg and "\n" not in msg
        assert e.value.argument == "keep_columns" and str(e.value).startswith(f"cat.fits: keep_columns names {name!r}")
    with pytest.raises(CatalogError, match="ra column is ambiguous"):
        resolve_columns(["objid", "Ra", "rA", "dec"])


def test_status_type_is_the_status_table():
    """catalogs.schema.Status: one member per documented status, each the plain string written to
    Parquet/FITS (a member compares, hashes, formats and serialises as that string)."""
    import json

    from mergerscan.catalogs.schema import SCORED, STATUS, TRANSIENT, Status

    assert list(STATUS) == list(Status) and all(type(k) is Status for k in STATUS)
    assert [s.value for s in Status] == [str(s) for s in Status] == [f"{s}" for s in Status]
    assert Status.NO_IMAGE == "no_image" and hash(Status.NO_IMAGE) == hash("no_image") and "ok" in SCORED
    assert json.dumps({Status.OK: Status.FETCH_FAILED}) == '{"ok": "fetch_failed"}'
    assert set(TRANSIENT) <= set(Status) and not set(TRANSIENT) & set(SCORED)
    table = pa.table({"status": np.array([Status.OK, "edge", Status.OUT_OF_MEMORY], dtype=object)})
    assert table.column("status").type == pa.string() and table.column("status").to_pylist() == [
        "ok",
        "edge",
        "out_of_memory",
    ]


def test_docs_output_tables_are_rendered_from_the_schema(tmp_path, capsys):
    """docs/output.md's columns and status tables are exactly what the schema renders
    (regenerate with ``python -m mergerscan.catalogs.schema docs/output.md``)."""
    from pathlib import Path

    from mergerscan.catalogs.schema import OUTPUT_COLUMNS, STATUS, main, render_docs

    docs = Path(__file__).resolve().parents[2] / "docs" / "output.md"
    text = docs.read_text(encoding="utf-8")
    assert render_docs(text) == text, "docs/output.md is out of date: run python -m mergerscan.catalogs.schema"
    for name, col in OUTPUT_COLUMNS.items():
        assert f"| `{name}` | {col.type} |" in text
    for status, meaning in STATUS.items():
        assert f"| `{status}` | {meaning} |" in text
    stale = tmp_path / "output.md"
    stale.write_text(text.replace("| `ok` | scored |", "| `ok` | an edit by hand |"), encoding="utf-8")
    assert main(["--check", str(stale)]) == 1 and "out of date" in capsys.readouterr().out
    assert main([str(stale)]) == 0 and stale.read_text(encoding="utf-8") == text
    stale.write_text("# no markers\n", encoding="utf-8")
    with pytest.raises(SystemExit) as e:
        main([str(stale)])
    assert e.value.code == 2 and "<!-- begin columns table" in capsys.readouterr().err
