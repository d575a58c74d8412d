"""process-catalog writes p_merger_lo / p_merger_hi (engines.uncertainty, from the validation curve
in the engine card) into Parquet and FITS: in [0, 1], lo <= p_merger <= hi, NaN where p_merger is
NaN (the status says why) or where the card has no curve (the header says so); STILTS reads them."""

from __future__ import annotations

import fitsio
import numpy as np
import pyarrow.parquet as pq
import pytest

from conftest import (
    assert_fits_equals_parquet,
    engine_with_validation_curve,
    make_stamps,
    need_stilts,
    read_out,
    run_cli,
    stilts_tpipe,
    two_patch_catalog,
    write_fits_catalog,
)
from mergerscan.engines import read_engine_info
from mergerscan.engines.uncertainty import interval_for_engine

N = 60
MISSING = 4  # stamps removed: status no_image, p_merger NaN


@pytest.fixture(scope="module")
def field(tmp_path_factory, cheap_engine):
    """The cheap engine with and without a validation curve in its card, and N stamps (a few missing)."""
    d = tmp_path_factory.mktemp("uncertainty")
    engine_with_validation_curve(cheap_engine, d, seed=7)
    df = two_patch_catalog(N, seed=8, width=0.3, id_step=1)
    make_stamps(d / "stamps", df["objID"].tolist(), seed=9)
    for i in df["objID"].tolist()[:MISSING]:
        (d / "stamps" / f"{i}.jpg").unlink()
    write_fits_catalog(d / "cat.fits", df)
    return d


def _run(client, d, out, engine, capsys):
    argv = (d / "cat.fits", "--images", d / "stamps", "-o", out, "--partition-rows", "25")
    rc, _, err = run_cli(client, *argv, capsys=capsys, engine=d / engine)
    assert rc == 0, err


def test_interval_columns_in_parquet_and_fits(field, dask_client, tmp_path, capsys):
    out = tmp_path / "out"
    _run(dask_client, field, out, "engine.onnx", capsys)
    got = read_out(out)
    p, lo, hi = (got[c].to_numpy(np.float64) for c in ("p_merger", "p_merger_lo", "p_merger_hi"))
    scored = np.isfinite(p)
    assert (got["status"][~scored] == "no_image").all() and (~scored).sum() == MISSING
    assert np.isnan(lo[~scored]).all() and np.isnan(hi[~scored]).all()
    assert ((lo[scored] >= 0) & (lo[scored] <= p[scored]) & (p[scored] <= hi[scored]) & (hi[scored] <= 1)).all()
    assert (hi[scored] - lo[scored] > 0).all()
    # the one place these numbers come from, on the engine's own card
    want_lo, want_hi = interval_for_engine(got["p_merger"].to_numpy(), read_engine_info(field / "engine.onnx").card, 1)
    np.testing.assert_array_equal(got["p_merger_lo"].to_numpy(), want_lo)
    np.testing.assert_array_equal(got["p_merger_hi"].to_numpy(), want_hi)
    assert_fits_equals_parquet(out)  # FITS carries the same values (NaN where null)
    h = fitsio.read_header(str(out / "mergers.fits"), ext="MERGERS")
    ttype = [h[f"TTYPE{i}"] for i in range(1, h["TFIELDS"] + 1)]
    k = ttype.index("p_merger_lo") + 1
    assert h[f"TUCD{k}"] == "stat.probability;stat.min" and "Wilson" in h["PINTVL"]
    meta = pq.read_schema(next((out / "parquet").rglob("Npix=*.parquet"))).metadata
    assert b"Wilson" in meta[b"mergerscan.p_merger_interval"]
    from mergerscan.report import build_report

    html = build_report(out).read_text()  # the report's figure of the interval
    assert 'id="uncertainty"' in html and (out / "report" / "uncertainty.png").stat().st_size > 1000


def test_no_curve_in_the_card_gives_nan_and_says_so(field, dask_client, tmp_path, capsys):
    out = tmp_path / "plain"
    _run(dask_client, field, out, "plain.onnx", capsys)
    got = read_out(out)
    assert np.isfinite(got["p_merger"]).sum() == N - MISSING
    assert got["p_merger_lo"].isna().all() and got["p_merger_hi"].isna().all()
    assert "no validation curve" in fitsio.read_header(str(out / "mergers.fits"), ext="MERGERS")["PINTVL"]
    from mergerscan.report import build_report

    html = build_report(out).read_text()  # nothing to draw: no section, no warning
    assert 'id="uncertainty"' not in html and "uncertainty figure" not in html


def test_stilts_reads_the_interval_columns(field, dask_client, tmp_path, capsys):
    need_stilts("the FITS columns are checked with fitsio above")
    out = tmp_path / "out"
    _run(dask_client, field, out, "engine.onnx", capsys)
    expr = 'cmd=select "!NULL_p_merger && p_merger_lo <= p_merger && p_merger <= p_merger_hi"'
    count = stilts_tpipe(out / "mergers.fits", expr, "omode=count")
    assert count.split()[-1] == str(N - MISSING), count  # 'columns: C   rows: R'
    meta = stilts_tpipe(out / "mergers.fits", "cmd=keepcols 'p_merger_lo p_merger_hi'", "cmd=meta")
    assert "stat.probability;stat.min" in meta and "stat.probability;stat.max" in meta
