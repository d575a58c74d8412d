"""process-catalog --purity / --completeness [--prevalence]: the threshold of is_merger read off the
validation curve in the engine card (engines/operating.py), stated in the summary, the FITS header
and the Parquet metadata; targets the curve cannot give are refused in one line with nothing written."""

from __future__ import annotations

import json

import fitsio
import numpy as np
import pyarrow.parquet as pq
import pytest

from conftest import engine_with_validation_curve, make_stamps, read_out, run_cli, two_patch_catalog, write_fits_catalog
from mergerscan.engines.engine_file import read_card

N = 80


@pytest.fixture(scope="module")
def field(tmp_path_factory, cheap_engine):
    """The cheap engine with a validation curve in its card (a labelled set of 1,300 made-up
    scores: mergers ~Beta(5, 2), non-mergers ~Beta(2, 5)), and N stamps to score."""
    d = tmp_path_factory.mktemp("operating")
    y, p = engine_with_validation_curve(cheap_engine, d, seed=3)
    df = two_patch_catalog(N, seed=5, width=0.3, id_step=1)
    make_stamps(d / "stamps", df["objID"].tolist(), seed=4)
    write_fits_catalog(d / "cat.fits", df)
    return d, y, p


def brute_force(y, p, prevalence, purity=None, completeness=None):
    """The threshold a target asks for, by trying every validation score (independent of the module)."""
    best = None
    for t in sorted(set(p.tolist()), reverse=True):
        tpr, fpr = (p[y] >= t).mean(), (p[~y] >= t).mean()
        if completeness is not None and tpr >= completeness:
            return t
        if (
            purity is not None
            and (p[~y] >= t).any()
            and prevalence * tpr / (prevalence * tpr + (1 - prevalence) * fpr) >= purity
        ):
            best = t  # keep going down: the lowest threshold that reaches it
    return best


def _run(client, d, out, *opts, capsys, engine="engine.onnx"):
    """process-catalog on the field with an engine of the field's folder (default: the one with a curve)."""
    argv = (d / "cat.fits", "--images", d / "stamps", "-o", out, "--partition-rows", "30", *opts)
    return run_cli(client, *argv, capsys=capsys, engine=d / engine)


def _header(out):
    return fitsio.read_header(str(out / "mergers.fits"), ext="MERGERS")


@pytest.mark.parametrize(
    "opts,target",
    [
        (("--purity", "0.9", "--prevalence", "0.25"), {"purity": 0.9}),
        (("--completeness", "0.8"), {"completeness": 0.8}),
    ],
)
def test_target_sets_is_merger_and_is_stated(field, dask_client, tmp_path, capsys, opts, target):
    d, y, p = field
    prevalence = 0.25 if "--prevalence" in opts else 0.02
    want = brute_force(y, p, prevalence, **target)
    rc, out_text, err = _run(dask_client, d, tmp_path / "default", capsys=capsys)
    assert rc == 0, err
    rc, out_text, err = _run(dask_client, d, tmp_path / "op", *opts, capsys=capsys)
    assert rc == 0, err
    base, got = read_out(tmp_path / "default"), read_out(tmp_path / "op")
    np.testing.assert_array_equal(got["p_merger"], base["p_merger"])  # the scores do not move
    assert (base["is_merger"] == (base["p_merger"] >= 0.5)).all()  # the card's own threshold by default
    assert (got["is_merger"] == (got["p_merger"] >= np.float32(want))).all()
    assert got["is_merger"].sum() != base["is_merger"].sum()  # the target changed the list
    s = json.loads((tmp_path / "op" / "summary.json").read_text())
    op = s["operating_point"]
    assert s["threshold"] == op["threshold"] and np.float32(op["threshold"]) == np.float32(want)
    assert s["mergers"] == int(got["is_merger"].sum())
    ((kind, value),) = target.items()
    assert op["rule"] == kind and op["target"] == value and op["prevalence"] == prevalence
    tpr, fpr = (p[y] >= want).mean(), (p[~y] >= want).mean()
    assert op["expected_completeness"] == pytest.approx(tpr, abs=1e-4)
    assert op["expected_purity"] == pytest.approx(
        prevalence * tpr / (prevalence * tpr + (1 - prevalence) * fpr), abs=1e-4
    )
    lo, hi = op["expected_purity_ci95"]
    assert lo < op["expected_purity"] < hi
    lo, hi = op["expected_completeness_ci95"]
    assert lo < op["expected_completeness"] <= hi
    if kind == "purity":
        assert op["expected_purity"] >= value
    h = _header(tmp_path / "op")
    assert h["THRESH"] == pytest.approx(op["threshold"]) and h["OPTARGET"] == value and h["OPPREVAL"] == prevalence
    assert kind in h["OPRULE"] and h["EXPPUR"] == op["expected_purity"]
    assert [h["EXPPURLO"], h["EXPPURHI"]] == op["expected_purity_ci95"]
    assert [h["EXPCOMLO"], h["EXPCOMHI"]] == op["expected_completeness_ci95"]
    assert "expected purity" in out_text and f"{kind} >= {value:g}" in out_text
    meta = pq.read_metadata(next((tmp_path / "op" / "parquet").rglob("Npix=*.parquet"))).metadata
    assert float(meta[b"mergerscan.threshold"]) == pytest.approx(op["threshold"])
    assert b"val_curve" not in meta[b"mergerscan.model_card"]  # the curve stays in the engine file
    from mergerscan.report import build_report

    html = build_report(tmp_path / "op").read_text()  # the report states the same operating point
    assert f"{kind} &gt;= {value:g}" in html and f"{op['expected_purity']:.3f}" in html
    # the default run states its expected purity too (the card's threshold on the same curve)
    d0 = json.loads((tmp_path / "default" / "summary.json").read_text())["operating_point"]
    assert d0["rule"] == "default" and d0["threshold"] == 0.5 and d0["expected_purity"] is not None
    assert _header(tmp_path / "default")["OPRULE"].startswith("engine default")


@pytest.mark.parametrize(
    "opts,words",
    [
        (("--purity", "0.9999"), ["--purity 0.9999", "does not reach it", "highest it measures"]),
        (("--purity", "1.5"), ["--purity 1.5"]),
        (("--completeness", "0"), ["--completeness 0"]),
        (("--purity", "0.9", "--completeness", "0.8"), ["not both"]),
        (("--purity", "0.5", "--prevalence", "0"), ["--prevalence 0"]),
    ],
)
def test_unreachable_targets_are_refused_in_one_line(field, dask_client, tmp_path, capsys, opts, words):
    d, _, _ = field
    rc, _, err = _run(dask_client, d, tmp_path / "out", *opts, capsys=capsys)
    assert rc == 2
    assert err.count("\n") == 1 and err.startswith("process-catalog: error:"), err
    assert all(w in err for w in words), err
    assert not (tmp_path / "out").exists()  # nothing written


def test_an_engine_without_a_curve_refuses_a_target(field, dask_client, tmp_path, capsys):
    d, _, _ = field
    assert "val_curve" not in read_card(d / "plain.onnx")
    rc, _, err = _run(dask_client, d, tmp_path / "out", "--purity", "0.9", capsys=capsys, engine="plain.onnx")
    assert rc == 2 and err.count("\n") == 1 and "no validation curve" in err
    assert not (tmp_path / "out").exists()


def test_resuming_with_another_target_is_refused(field, dask_client, tmp_path, capsys):
    d, _, _ = field
    rc, _, err = _run(dask_client, d, tmp_path / "out", "--completeness", "0.8", capsys=capsys)
    assert rc == 0, err
    rc, _, err = _run(dask_client, d, tmp_path / "out", "--completeness", "0.6", capsys=capsys)
    assert rc == 2 and "operating_point" in err, err
