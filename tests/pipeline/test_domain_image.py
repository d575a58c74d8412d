"""The image half of --domain through process-catalog (a real subprocess with real Dask worker
processes, which import this module by the name the backend registry carries): a backend whose
``score()`` gives a ``domain_score`` and whose card carries ``domain.image.threshold``.  Rows
beyond it keep their status and p_merger but are not in_domain, so never is_merger; FITS =
Parquet; --domain catalog (or off) leaves them flagged as mergers."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from PIL import Image
from test_toy_plugins import ToyEngine, ToyOptions, run_cli

from mergerscan.engines.base import EngineOutput
from mergerscan.engines.engine_file import write_metadata
from mergerscan.engines.registry import register_backend

IMAGE_THRESHOLD = 0.0  # domain_score = mean red minus mean blue / 255: reddish stamps are outside


@register_backend("toy-domain", options=ToyOptions, help="p_merger: mean green level; domain_score: red minus blue")
class ToyDomainEngine(ToyEngine):
    """test_toy_plugins' engine (its loading and options), scoring what this test needs."""

    backend = "toy-domain"

    def score(self, stamps: np.ndarray, *, features: bool = False) -> EngineOutput:
        x = np.asarray(stamps, np.float64) / 255.0
        return EngineOutput(
            x[..., 1].mean(axis=(1, 2)).astype(np.float32),
            (x[..., 0].mean(axis=(1, 2)) - x[..., 2].mean(axis=(1, 2))).astype(np.float32),
        )


def _stamp(rng, green: float, tint: float) -> np.ndarray:
    """Noisy sky with a blob; mean green ~ ``green``, red - blue ~ 2 * ``tint``."""
    yy, xx = np.mgrid[:256, :256] - 128
    img = rng.normal(0, 6, (256, 256, 3)) + np.array([green + tint, green, green - tint])
    img += np.exp(-np.hypot(xx, yy) / 10)[..., None] * 60
    return np.clip(img, 0, 255).astype(np.uint8)


@pytest.fixture(scope="module")
def field(tmp_path_factory, cheap_engine):
    d = tmp_path_factory.mktemp("domain-image")
    card = {"threshold": 0.5, "domain": {"image": {"score": "toy red-blue", "threshold": IMAGE_THRESHOLD}}}
    write_metadata(cheap_engine, d / "engine.onnx", card_updates=card)
    n, rng = 40, np.random.default_rng(4)
    ids = 5_000_000 + np.arange(n)
    green = np.where(np.arange(n) % 2, 200.0, 40.0)  # p ~ 0.78 or ~ 0.16
    tint = np.where(np.arange(n) % 4 < 2, 30.0, -30.0)  # reddish (outside) or bluish
    (d / "stamps").mkdir()
    for i, g, t in zip(ids, green, tint):
        Image.fromarray(_stamp(rng, g, t)).save(d / "stamps" / f"{i}.png")
    pd.DataFrame({"objid": ids, "ra": 150 + rng.uniform(0, 0.4, n), "dec": 2 + rng.uniform(0, 0.4, n)}).to_csv(
        d / "cat.csv", index=False
    )
    return d, n


def _run(d, out, *extra):
    from conftest import read_out  # not at the top: the workers import this module without tests/ on the path

    r = run_cli(
        [
            "cat.csv", "-o", str(out), "--images", "stamps", "--engine", "engine.onnx",
            "--backend", f"toy-domain@{__name__}", "--workers", "1", "--partition-rows", "15",
            "--no-progress", "--no-report", *extra,
        ],
        d,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr[-3000:]
    return read_out(out), json.loads((out / "summary.json").read_text()), r.stdout


def test_rows_beyond_the_image_threshold_keep_p_merger_but_are_never_mergers(field):
    d, n = field
    got, s, printed = _run(d, d / "out")
    assert (got["status"] == "ok").all() and got["p_merger"].notna().all() and got["domain_score"].notna().all()
    beyond = got["domain_score"].to_numpy() > IMAGE_THRESHOLD
    assert 0 < beyond.sum() < n
    assert (got["in_domain"].to_numpy() == ~beyond).all()
    high = got["p_merger"].to_numpy() >= 0.5
    assert (high & beyond).any() and (high & ~beyond).any()  # both kinds are there to tell apart
    assert (got["is_merger"].to_numpy() == (high & ~beyond)).all()
    assert s["mergers"] == (high & ~beyond).sum() and s["beyond_image_threshold"] == beyond.sum()
    assert s["out_of_domain"] == 0 and s["scored"] == n and s["domain"]["image_threshold"] == IMAGE_THRESHOLD
    assert "domain_score > 0 (image check; scored, never is_merger)" in s["domain_rules"]
    assert f"{beyond.sum()} scored but never is_merger" in printed
    from conftest import assert_fits_equals_parquet

    _, _, hdr = assert_fits_equals_parquet(d / "out")
    assert hdr["DOMAIN"] == "on" and hdr["DOMTHR"] == IMAGE_THRESHOLD


@pytest.mark.parametrize("mode", ["catalog", "off"])
def test_without_the_image_half_the_score_is_kept_but_not_applied(field, mode):
    d, _ = field
    got, s, _ = _run(d, d / f"out-{mode}", "--domain", mode)
    assert got["domain_score"].notna().all() and got["in_domain"].all()
    assert (got["is_merger"] == (got["p_merger"] >= 0.5)).all()
    assert s["domain"]["image_threshold"] is None and not s.get("beyond_image_threshold")


def test_the_report_shows_the_split_and_keeps_out_of_domain_rows_out_of_the_top_gallery(field):
    from mergerscan.report import build_report

    d, _ = field
    out = d / "out-report"
    got, s, _ = _run(d, out)
    html = build_report(out, top_n=8, borderline_n=4).read_text()
    doc = json.loads((out / "report" / "report.json").read_text())
    inside = dict(zip(got["objid"].astype(str), got["in_domain"]))
    assert doc["top"] and all(inside[str(r["id"])] for r in doc["top"])  # mergers drawn from in-domain rows only
    outside = doc["outside_domain"]
    assert len(outside) == 4 and not any(inside[str(r["id"])] for r in outside)
    scores = [r["domain_score"] for r in outside]
    assert scores == sorted(scores, reverse=True) and scores[0] == got["domain_score"].max()
    assert doc["beyond_image_threshold"] == s["beyond_image_threshold"]
    assert 'id="domain"' in html and "Training domain" in html and "farthest outside the domain" in html
    assert "never is_merger" in html and "training domain" in html  # the split table and the provenance row
