"""HATS out and in, with the real hats, hats-import and lsdb libraries (no mocks).

The output of a real process-catalog run is opened with ``lsdb.open_catalog`` and ``hats.read_hats``
and crossmatched with a catalog that hats-import builds in the test; a HATS catalog made by
hats-import is scored as input (rows in = rows out, its pixels are the plan).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest

from conftest import make_stamps, run_arguments, two_patch_catalog, write_fits_catalog
from mergerscan.catalogs.hats import output_files
from mergerscan.pipeline.run import run

hats = pytest.importorskip("hats", reason="needs the hats package (pip install -e '.[dev]')")
lsdb = pytest.importorskip("lsdb", reason="needs the lsdb package (pip install -e '.[dev]')")
hats_import = pytest.importorskip("hats_import", reason="needs hats-import (pip install -e '.[dev]')")

N = 80
DOCS = Path(__file__).resolve().parents[2] / "docs" / "output.md"


def hats_import_csv(df: pd.DataFrame, tmp: Path, name: str, client, ra="ra", dec="dec", threshold=1000) -> Path:
    """A HATS catalog of ``df`` built by hats-import (its own pipeline, on the test's Dask cluster)."""
    from hats_import.catalog.arguments import ImportArguments
    from hats_import.pipeline import pipeline_with_client

    csv = tmp / f"{name}.csv"
    df.to_csv(csv, index=False)
    args = ImportArguments(
        output_artifact_name=name,
        input_file_list=[str(csv)],
        file_reader="csv",
        ra_column=ra,
        dec_column=dec,
        output_path=str(tmp),
        pixel_threshold=threshold,
        highest_healpix_order=8,
        progress_bar=False,
        tmp_dir=str(tmp / f"{name}-tmp"),
        resume=False,
    )
    pipeline_with_client(args, client)
    return tmp / name


@pytest.fixture(scope="module")
def field(tmp_path_factory):
    d = tmp_path_factory.mktemp("hatsfield")
    df = two_patch_catalog(N, seed=5, width=0.3, id_step=3)
    df.loc[2, "DEdeg"] = np.nan  # no position: beside the HATS dataset, still in the output
    make_stamps(d / "stamps", df["objID"].tolist(), seed=3)
    write_fits_catalog(d / "cat.fits", df)
    return d, df


def _arguments(catalog, out, d, engine, **more):
    """A run of the field's stamps: 15-row partitions, mag_r kept, one view."""
    return run_arguments(
        catalog, out, images=d / "stamps", partition_rows=15, keep_columns=["mag_r"], views=1, engine=engine, **more
    )


@pytest.fixture(scope="module")
def scored(field, dask_client, cheap_engine):
    d, _df = field
    out = d / "out"
    summary = run(_arguments(d / "cat.fits", out, d, cheap_engine), client=dask_client)
    return out, summary


def test_output_is_a_valid_hats_catalog(field, scored):
    _d, df = field
    out, _summary = scored
    root = out / "parquet"
    from hats.io.validation import is_valid_catalog

    assert is_valid_catalog(root, strict=True)
    cat = hats.read_hats(root)
    assert cat.catalog_info.total_rows == N - 1  # the row without a position is beside it
    assert cat.catalog_info.healpix_column == "_healpix_29"
    plan = json.loads((out / "_work" / "plan.json").read_text())["partitions"]
    on_sky = {(p["order"], p["pixel"]) for p in plan if p["order"] >= 0}
    assert {(p.order, p.pixel) for p in cat.get_healpix_pixels()} == on_sky
    assert any(p["nsub"] > 1 for p in plan)  # a dense pixel's pieces were joined into its one file
    # VOParquet units and UCDs survive in the dataset's _common_metadata (what TOPCAT/STILTS read)
    vo = pq.read_schema(root / "dataset" / "_common_metadata").metadata[b"IVOA.VOTable-Parquet.content"].decode()
    assert 'name="ra"' in vo and 'unit="deg"' in vo and 'ucd="stat.probability;src.morph"' in vo
    # every input row is in the output once: HATS dataset + bad_coords, and the FITS table
    files = output_files(root)
    got = pq.read_table([str(f) for f in files]).to_pandas()
    assert sorted(got["objid"]) == sorted(df["objID"]) and got["input_row"].is_unique
    assert got.loc[got["input_row"] == 2, "status"].item() == "bad_coords"
    assert (out / "mergers.fits").is_file()


def test_lsdb_opens_output_and_crossmatches_with_a_hats_import_catalog(field, scored, dask_client, tmp_path):
    """The docs' LSDB example (docs/output.md), run for real."""
    _d, df = field
    out, _ = scored
    # "Galaxy Zoo" table: every third object of the input, positions off by 0.3", plus one far away
    rng = np.random.default_rng(0)
    gz = df.iloc[::3].dropna().reset_index(drop=True)
    gz = pd.DataFrame(
        {
            "gz_id": np.arange(len(gz)),
            "objid_gz": gz["objID"],
            "ra": gz["RAdeg"] + 0.3 / 3600 / np.cos(np.radians(gz["DEdeg"])),
            "dec": gz["DEdeg"],
            "p_mg": rng.uniform(0, 1, len(gz)),
        }
    )
    gz.loc[len(gz)] = [999, -1, 20.0, 20.0, 0.5]
    gz_dir = hats_import_csv(gz, tmp_path, "gz", dask_client)

    # the example exactly as docs/output.md shows it, on these two catalogs
    example = DOCS.read_text().split("## With LSDB", 1)[1].split("```python\n", 1)[1].split("```", 1)[0]
    assert 'lsdb.open_catalog("dr7-mergers/parquet")' in example
    readme = (DOCS.parents[1] / "README.md").read_text().split("```python\n", 1)[1].split("```", 1)[0]
    assert [ln.split("#")[0].strip() for ln in readme.splitlines()] == [
        ln.split("#")[0].strip() for ln in example.splitlines() if ln.strip()
    ]  # README shows the same code
    env: dict = {}
    exec(
        example.replace('"dr7-mergers/parquet"', repr(str(out / "parquet"))).replace('"gz1-hats"', repr(str(gz_dir))),
        env,
    )
    mergers, matched, candidates = env["mergers"], env["matched"], env["candidates"]
    assert len(matched) == len(gz) - 1  # all but the one far away
    assert (matched["objid"].to_numpy() == matched["objid_gz"].to_numpy()).all()
    assert matched["_dist_arcsec"].between(0.25, 0.35).all()
    ref = pq.read_table(out / "parquet" / "dataset").to_pandas()
    want = ref[(ref["status"] == "ok") & (ref["p_merger"] >= 0.5)]
    assert sorted(candidates["objid"]) == sorted(want["objid"])
    assert len(mergers.compute()) == N - 1


def test_hats_catalog_as_input_rows_in_equal_rows_out(field, dask_client, cheap_engine, tmp_path):
    d, df = field
    good = df.dropna().reset_index(drop=True)
    src = hats_import_csv(
        good.rename(columns={"RAdeg": "ra_deg", "DEdeg": "dec_deg"}),
        tmp_path,
        "input",
        dask_client,
        ra="ra_deg",
        dec="dec_deg",
        threshold=20,
    )
    pixels = hats.read_hats(src).get_healpix_pixels()
    assert len(pixels) > 1
    out = tmp_path / "out"
    s = run(_arguments(src, out, d, cheap_engine, select="MAG_R < 16.5"), client=dask_client)
    plan = json.loads((out / "_work" / "plan.json").read_text())
    assert plan["chunks"] == [] and not (out / "_work" / "split").exists()  # no histogram, no split
    assert {(p["order"], p["pixel"]) for p in plan["partitions"]} == {(p.order, p.pixel) for p in pixels}
    got = pq.read_table([str(f) for f in output_files(out / "parquet")]).to_pandas()
    assert s["rows"] == len(got) == len(good)
    assert sorted(got["objid"]) == sorted(good["objID"]) and got["input_row"].is_unique
    assert np.allclose(got.set_index("objid").loc[good["objID"], "mag_r"], good["mag_r"])
    bright = got["mag_r"] < 16.5  # --select, evaluated per pixel
    assert 0 < bright.sum() < len(got)
    assert (got.loc[bright, "status"] == "ok").all() and (got.loc[~bright, "status"] == "not_selected").all()
    assert s["scored"] + s["flagged"] + s["not_selected"] == s["rows"]
    assert hats.read_hats(out / "parquet").catalog_info.total_rows == len(good)
