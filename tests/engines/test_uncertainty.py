"""engines.uncertainty: the per-row interval read off the card's validation curve, on synthetic
curves whose truth is known."""

from __future__ import annotations

import numpy as np
import pytest

from mergerscan.engines.card import EngineCard
from mergerscan.engines.operating import Curve, curve_card_updates
from mergerscan.engines.uncertainty import (
    Window,
    describe,
    interval_for_engine,
    score_interval,
    wilson,
    window_counts,
)


def calibrated(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """n validation rows whose labels are drawn at their own score (a perfectly calibrated engine)."""
    rng = np.random.default_rng(seed)
    p = np.r_[rng.beta(0.6, 3, n - n // 4), rng.beta(4, 0.7, n // 4)].astype(np.float32)
    return (rng.random(n) < p).astype(int), p


def test_interval_holds_the_score_lies_in_0_1_and_is_nan_where_unscored():
    y, p = calibrated(1400, 0)
    curve = Curve.from_scores(y, p)
    q = np.r_[np.linspace(0, 1, 201), np.nan, 1e-7, 1 - 1e-7, p[:50]].astype(np.float32)
    lo, hi = score_interval(q, curve)
    assert lo.dtype == hi.dtype == np.float32
    ok = np.isfinite(q)
    assert np.isnan(lo[~ok]).all() and np.isnan(hi[~ok]).all()
    assert np.isfinite(lo[ok]).all() and np.isfinite(hi[ok]).all()
    assert ((lo[ok] >= 0) & (lo[ok] <= q[ok]) & (q[ok] <= hi[ok]) & (hi[ok] <= 1)).all()
    no_curve = score_interval(q, None)
    assert np.isnan(no_curve[0]).all() and np.isnan(no_curve[1]).all()


def test_the_card_is_read_at_the_runs_view_count():
    y, p = calibrated(600, 1)
    card = EngineCard.from_dict(curve_card_updates({1: Curve.from_scores(y, p)}, "test"))
    q = np.float32([0.1, 0.5, 0.9])
    lo, hi = interval_for_engine(q, card, 1)
    np.testing.assert_array_equal(np.c_[lo, hi], np.c_[score_interval(q, Curve.from_scores(y, p))])
    assert np.isnan(interval_for_engine(q, card, 4)[0]).all()  # no curve at 4 views: NaN, and said so
    assert "no validation curve for 4 view(s)" in describe(card, 4) and "Wilson" in describe(card, 1)


def test_a_loaded_engine_builds_its_curve_once():
    """The partition task reads the interval off ``EngineInfo.curve``: the card's curve at the
    engine's views, built on first use and the same object on every partition after."""
    from mergerscan.engines import default_engine_path
    from mergerscan.engines.base import read_engine_info
    from mergerscan.engines.operating import card_curve

    info = read_engine_info(default_engine_path())  # the packaged engine: its card has a curve
    curve = info.curve
    assert curve is not None and info.curve is curve
    want = card_curve(info.card, info.views)
    assert [getattr(curve, f) for f in ("n_pos", "n_neg")] == [want.n_pos, want.n_neg]
    q = np.float32([0.05, 0.3, 0.5, 0.95, np.nan])
    np.testing.assert_array_equal(score_interval(q, curve), interval_for_engine(q, info.card, info.views))


def test_window_counts_match_brute_force():
    """Where the window does not cut a group of tied scores, its counts are those of the rows in it."""
    y, p = calibrated(900, 2)
    curve = Curve.from_scores(y, p)
    w = Window(0.5, 40)
    q = np.float64([0.02, 0.2, 0.5, 0.8, 0.97])
    k, n = window_counts(curve, q, w)
    z = np.log(p / (1 - p)).astype(np.float64)
    for qi, ki, ni in zip(q, k, n):
        zq = np.log(qi / (1 - qi))
        inside = np.abs(z - zq) <= 0.5 + 1e-6
        if inside.sum() >= 40:
            assert ni == inside.sum() and ki == y[inside].sum()
        else:  # the 40 rows nearest in rank
            assert ni == 40 and 0 <= ki <= 40


def test_coverage_of_the_true_merger_fraction_is_near_nominal_and_grows_with_the_level():
    """On calibrated synthetic curves the window's interval (before it is widened to hold the
    score) covers the true merger probability at a query score about as often as its level says;
    a higher level never covers less."""
    cover = {1.0: [], 1.96: []}
    for seed in range(30):
        y, p = calibrated(1400, 10 + seed)
        curve = Curve.from_scores(y, p)
        q = np.float64([0.05, 0.15, 0.3, 0.5, 0.7, 0.85, 0.95])
        k, n = window_counts(curve, q, Window(0.25, 50))
        for z, hits in cover.items():
            lo, hi = wilson(k, n, z)
            hits.extend((lo <= q) & (q <= hi))
    c68, c95 = np.mean(cover[1.0]), np.mean(cover[1.96])
    assert c68 <= c95
    assert 0.85 <= c95 <= 1.0, c95  # the window blurs the score a little: near, not exactly, 95 %
    assert 0.5 <= c68 <= 0.85, c68


def test_width_is_larger_where_validation_evidence_is_sparse():
    """Two regions with the same merger fraction (one half): thousands of validation rows near
    p = 0.5, thirty near p = 0.3; the sparse region's interval is much wider."""
    rng = np.random.default_rng(5)
    dense = 1 / (1 + np.exp(-rng.normal(0, 0.1, 3000)))
    sparse = 1 / (1 + np.exp(-(np.log(0.3 / 0.7) + rng.normal(0, 0.05, 30))))
    p = np.r_[dense, sparse, rng.uniform(0.001, 0.01, 500)].astype(np.float32)
    y = np.r_[rng.random(3030) < 0.5, np.zeros(500, bool)].astype(int)
    lo, hi = score_interval(np.float32([0.5, 0.3]), Curve.from_scores(y, p))
    w = hi - lo
    assert w[1] > 3 * w[0], w
    assert w[0] < 0.06  # ~3000 rows: +-0.02


def test_wilson_interval():
    lo, hi = wilson(np.float64([0, 5, 10]), np.float64([10, 10, 10]))
    assert lo[0] == 0 and hi[2] == 1 and lo[1] < 0.5 < hi[1]
    assert hi[0] == pytest.approx(1.96**2 / (10 + 1.96**2), rel=1e-3)
    # nominal coverage on binomial draws
    rng = np.random.default_rng(0)
    k = rng.binomial(60, 0.3, 4000)
    lo, hi = wilson(k, np.full(4000, 60.0))
    assert 0.93 <= np.mean((lo <= 0.3) & (hi >= 0.3)) <= 0.97
