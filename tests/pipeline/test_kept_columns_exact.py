"""Kept columns as a user meets them through process-catalog (issue 34, class 10): a kept
``objid`` keeps its name when the run's id column is ``id`` (and a kept ``id`` beside integer
ids), carried as an input column (no id UCD); decimal columns stay exact - decimal in Parquet,
float64 in FITS up to 15 digits (each value reads back exactly at its scale), exact text beyond
- with nulls, across several partitions, FITS = Parquet; ``--select`` compares them as numbers."""

from __future__ import annotations

import json
import re
from decimal import Decimal

import fitsio
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from conftest import assert_fits_equals_parquet, make_stamps, parquet_table

N = 12


def _catalog(d, id_text: bool):
    rng = np.random.default_rng(2)
    ra = np.r_[rng.uniform(150, 150.2, N // 2), rng.uniform(210, 210.2, N // 2)]  # two sky patches
    dec = np.r_[rng.uniform(2, 2.2, N // 2), rng.uniform(-1, -0.8, N // 2)]
    d12 = [None if i == 3 else Decimal(f"{rng.uniform(-1e5, 1e5):.6f}") for i in range(N)]
    d30 = [None if i == 5 else Decimal(f"123456789012345678{i:02d}.123456789{i % 10}") for i in range(N)]
    ids = [f"g{i}" for i in range(N)]
    objids = (np.arange(N, dtype=np.int64) * 7 + 2**62).tolist()
    t = pa.table(
        {
            "id": ids if id_text else objids,
            "ra": ra,
            "dec": dec,
            ("objid" if id_text else "ID"): objids if id_text else ids,
            "d12": pa.array(d12, pa.decimal128(12, 6)),
            "d30": pa.array(d30, pa.decimal128(30, 10)),
        }
    )
    pq.write_table(t, d / "cat.parquet")
    make_stamps(d / "stamps", ids if id_text else objids, seed=1, size=64)
    return t


@pytest.mark.parametrize("id_text", [True, False], ids=["text-id+kept-objid", "int-id+kept-ID"])
def test_kept_names_rename_only_on_a_real_collision_and_decimals_stay_exact(id_text, cheap_cli, tmp_path, capsys):
    t = _catalog(tmp_path, id_text)
    out = tmp_path / "out"
    id_args = ["--id-column", "id"] if id_text else []
    rc, stdout, err = cheap_cli(
        tmp_path / "cat.parquet", "--images", tmp_path / "stamps", "-o", out, "--keep-columns", "*",
        "--partition-rows", "4", *id_args, capsys=capsys,
    )  # fmt: skip
    assert rc == 0, err
    assert "Traceback" not in stdout + err
    got, fits, hdr = assert_fits_equals_parquet(out)  # decimals included (conftest)
    run_id, kept = ("id", "objid") if id_text else ("objid", "ID")
    # nothing collided with this run's names: every kept column keeps its name (in_domain is an output column)
    assert {kept, "d12", "d30"} <= set(got.columns) and not any(
        c.startswith("in_") for c in set(got.columns) - {"in_domain"}
    )
    assert got[kept].tolist() == t.column(kept).to_pylist()
    assert got[run_id].tolist() == t.column("id").to_pylist()
    assert json.loads((out / "summary.json").read_text())["id_column"] == run_id
    ttype = [hdr[f"TTYPE{i}"] for i in range(1, hdr["TFIELDS"] + 1)]
    assert hdr.get(f"TUCD{ttype.index(run_id) + 1}") == "meta.id;meta.main"
    assert f"TUCD{ttype.index(kept) + 1}" not in hdr  # carried: not a second main id
    assert hdr[f"TCOMM{ttype.index(kept) + 1}"] == f"input column {kept!r}"
    # decimals: exact decimal types in Parquet, every partition the same type
    out_t = parquet_table(out).sort_by("input_row")
    assert out_t.schema.field("d12").type == pa.decimal128(12, 6) and out_t.schema.field("d30").type == pa.decimal128(
        30, 10
    )
    assert out_t.column("d12").to_pylist() == t.column("d12").to_pylist()
    assert out_t.column("d30").to_pylist() == t.column("d30").to_pylist()
    assert fits["d12"].dtype.kind == "f" and fits["d30"].dtype.kind in "SU"
    vot = (
        pq.read_schema(next((out / "parquet").rglob("Npix=*.parquet")))
        .metadata[b"IVOA.VOTable-Parquet.content"]
        .decode()
    )
    assert re.search(r'<FIELD name="d12" datatype="double"', vot)
    assert not re.search(rf'<FIELD name="{kept}"[^>]*ucd="meta.id;meta.main"', vot)


def test_select_compares_decimal_columns_as_numbers(cheap_cli, tmp_path, capsys):
    t = _catalog(tmp_path, True)
    out = tmp_path / "out"
    rc, _, err = cheap_cli(
        tmp_path / "cat.parquet", "--images", tmp_path / "stamps", "-o", out, "--id-column", "id",
        "--keep-columns", "d12", "--select", "d12 > 0", capsys=capsys,
    )  # fmt: skip
    assert rc == 0 and "Traceback" not in err, err
    got, _, _ = assert_fits_equals_parquet(out)
    d12 = t.column("d12").to_pylist()
    assert got["status"].tolist() == ["ok" if v is not None and v > 0 else "not_selected" for v in d12]
    assert fitsio.read(str(out / "mergers.fits"), ext="MERGERS", columns=["d12"]).dtype[0].kind == "f"
