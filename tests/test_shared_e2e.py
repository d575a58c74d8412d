"""process-catalog end to end on the real shared SDSS data (skipped where ../shared is absent):
the 9,520 labelled stamps via --images, the 6 real fields via --frames, STILTS on the output."""

from __future__ import annotations

import json
import re

import fitsio
import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest

from conftest import need_stilts, run_arguments, stilts_tpipe
from mergerscan.catalogs.hats import output_files
from mergerscan.catalogs.read import read_table
from mergerscan.pipeline.run import run
from mergerscan.training import evaluate as ev

M2843 = dict(id="M2843", objid=588018055654998067, ra=229.52556, dec=42.745853)


@pytest.fixture(scope="module")
def gz_fits(gz_dir, tmp_path_factory):
    """The shared catalog as a FITS table (SDSS objids where known, else 9e18 + row)."""
    cat = read_table(gz_dir / "catalog.csv")
    objid = cat["objid"].to_numpy(np.int64).copy()
    unknown = objid < 0
    objid[unknown] = 9_000_000_000_000_000_000 + np.flatnonzero(unknown)
    df = pd.DataFrame(
        {
            "objID": objid,
            "ra": cat["ra"].to_numpy(float),
            "dec": cat["dec"].to_numpy(float),
            "is_merger": cat["is_merger"].to_numpy(np.int16),
            "path": cat["image"].astype(str),
            "redshift": cat["redshift"].to_numpy(np.float32),
        }
    )
    path = tmp_path_factory.mktemp("gz") / "gz.fits"
    fitsio.write(str(path), df.to_records(index=False), clobber=True)
    return path, df


@pytest.mark.slow
@pytest.mark.shared
def test_images_all_shared_objects(gz_fits, gz_dir, dask_client, tmp_path):
    path, df = gz_fits
    out = tmp_path / "out"
    # one view, the card's calibrated 1-view operating point (the default's own): this test is about
    # every shared object scored at survey scale; 4 views cost 4x
    kept = ["is_merger", "path", "redshift"]
    s = run(
        run_arguments(path, out, images=gz_dir, keep_columns=kept, partition_rows=2000, views=1), client=dask_client
    )
    from mergerscan.engines import default_engine_path, read_engine_info

    one_view = read_engine_info(default_engine_path()).with_views(1)
    assert s["threshold"] == pytest.approx(one_view.threshold)  # the card's 1-view calibration was used
    got = pq.read_table([str(f) for f in output_files(out / "parquet")]).to_pandas().sort_values("input_row")
    assert len(got) == len(df) == s["rows"] == 9520
    assert got["objid"].tolist() == df["objID"].tolist()
    assert (got["status"] == "ok").all()
    assert "in_is_merger" in got  # the input label clashes with the output column and is renamed
    m = ev.summarize(got["in_is_merger"].to_numpy(), got["p_merger"].to_numpy(), s["threshold"])
    (tmp_path / "metrics.json").write_text(json.dumps(m, default=float))
    print(
        f"\nall 9,520 shared objects (train+val+test), threshold {s['threshold']:.4f}:\n{ev.table1(m)}\n"
        f"ROC-AUC {m['roc_auc']:.4f}"
    )
    assert m["roc_auc"] > 0.97 and m["macro"]["f1"] > 0.9


@pytest.fixture(scope="module")
def frames_catalog(frames_dir, tmp_path_factory):
    """Objects detected in the r-band frames of the 6 fields, plus M2843 and 3 off-footprint rows."""
    from mergerscan.cutouts.detect import detect_sources

    rows = []
    for f in sorted(frames_dir.glob("frame-r-*.fits.bz2")):
        det = detect_sources(f, nsigma=8, min_area=60)
        rows.append(det[:40])
    det = np.concatenate(rows)
    ra = np.r_[M2843["ra"], det[:, 0], 10.0, 100.0, 300.0]
    dec = np.r_[M2843["dec"], det[:, 1], -30.0, 80.0, 5.0]
    objid = np.r_[M2843["objid"], 1237000000000000000 + np.arange(len(det) + 3)].astype(np.int64)
    path = tmp_path_factory.mktemp("frames") / "fields.fits"
    fitsio.write(str(path), pd.DataFrame({"objid": objid, "ra": ra, "dec": dec}).to_records(index=False), clobber=True)
    return path, len(objid)


@pytest.mark.shared
def test_frames_end_to_end_m2843_is_a_merger(frames_catalog, frames_dir, dask_client, tmp_path):
    path, n = frames_catalog
    out = tmp_path / "out"
    # the card's 1-view operating point: frames -> score -> report is what is tested
    s = run(run_arguments(path, out, frames=frames_dir, partition_rows=60, views=1, report=True), client=dask_client)
    got = pq.read_table([str(f) for f in output_files(out / "parquet")]).to_pandas().set_index("objid")
    assert len(got) == n == s["rows"]
    m = got.loc[M2843["objid"]]
    assert m["status"] == "ok" and m["p_merger"] >= s["threshold"] and m["is_merger"]
    assert (got["status"] == "outside_footprint").sum() == 3
    assert got["status"].isin(["ok", "edge", "outside_footprint"]).all()
    assert s["partitions"] > 1
    # the run report is written at the end (issue: pictures astronomers look at)
    assert (out / "report" / "index.html").is_file() and "report_error" not in s


@pytest.mark.shared
def test_stilts_reads_pipeline_fits(frames_catalog, frames_dir, dask_client, tmp_path):
    """TOPCAT's twin on the real output: row count, exact int64 objids (via CSV), units."""
    need_stilts("Debian 'stilts'; make test installs it when run as root")
    path, n = frames_catalog
    out = tmp_path / "out"
    # the FITS table is under test, not the model: the cheap operating point
    run(run_arguments(path, out, frames=frames_dir, views=1), client=dask_client)
    fits = out / "mergers.fits"
    csv = stilts_tpipe(fits, "ofmt=csv", "cmd=keepcols 'objid p_merger status'").strip().splitlines()
    assert csv[0].split(",") == ["objid", "p_merger", "status"] and len(csv) - 1 == n
    ids = sorted(int(line.split(",")[0]) for line in csv[1:])
    want = sorted(fitsio.read(str(path))["objid"].tolist())
    assert ids == want and M2843["objid"] in ids
    meta = stilts_tpipe(fits, "omode=meta")
    cols = {
        m.group(1): (m.group(2), m.group(4)) for m in re.finditer(r"^\s*\d+: (\w+)\((\w+)\)(/(\S+))?", meta, re.M)
    }  # "2: ra(Double)/deg - ..."
    assert cols["ra"] == ("Double", "deg") and cols["dec"] == ("Double", "deg")
    assert cols["objid"][0] == "Long" and cols["p_merger"][0] == "Float" and f"Rows:    {n}" in meta
