"""Per-row uncertainty: how sure a p_merger is, and how much validation evidence backs it.

For a row scored ``p``, the validation galaxies the engine scored like it are a window on the
card's validation curve (:mod:`.operating`, the run's view count): those within ``HALF_WIDTH`` in
logit of ``p``, widened to the ``MIN_ROWS`` validation rows nearest ``p`` in score where fewer
fall that close.  ``p_merger_lo`` / ``p_merger_hi`` are the 95 % Wilson interval on the merger
fraction of that window, widened where needed to contain ``p`` itself (a calibrated score and the
local fraction agree up to that interval's noise; the column never contradicts the score it
qualifies).  So the interval is narrow where many validation galaxies scored like the row and
agree (the confident ends of the curve), wide where few did or their labels are mixed (the
middle).  It is at the engine's calibration prevalence (validation's, ~25 % mergers), as
``p_merger`` is.  The window parameters were chosen on validation only
(``benchmarks/eval_uncertainty.py``: held-out log-loss of the window's merger fraction, the
validation split halved).

The one place these numbers are computed: ``process-catalog``'s output table and the library's
scoring both call :func:`score_interval` on the engine's curve (``EngineInfo.curve``, built once
per loaded engine); :func:`interval_for_engine` does the same from a card.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .card import EngineCard
from .operating import Curve, card_curve

Z95 = 1.959963984540054
HALF_WIDTH = 1.0  # logit units either side of the row's score (chosen on validation)
MIN_ROWS = 50  # validation rows a window holds at least


@dataclass(frozen=True)
class Window:
    """How a row's window on the validation curve is drawn."""

    half_width: float = HALF_WIDTH
    min_rows: int = MIN_ROWS


def wilson(k, n, z: float = Z95) -> tuple[np.ndarray, np.ndarray]:
    """Wilson score interval of ``k`` successes in ``n`` trials (arrays; ``k`` may be fractional)."""
    k, n = np.asarray(k, np.float64), np.asarray(n, np.float64)
    f = np.divide(k, n, out=np.zeros_like(k), where=n > 0)
    den = 1 + z * z / n
    mid = (f + z * z / (2 * n)) / den
    half = z * np.sqrt(f * (1 - f) / n + z * z / (4 * n * n)) / den
    # exact ends where every (or no) row is a merger: rounding would leave 1 - 1e-16
    return np.where(k <= 0, 0.0, np.clip(mid - half, 0.0, 1.0)), np.where(k >= n, 1.0, np.clip(mid + half, 0.0, 1.0))


def _logit(p: np.ndarray) -> np.ndarray:
    q = np.clip(np.asarray(p, np.float64), 1e-12, 1 - 1e-12)
    return np.log(q) - np.log1p(-q)


def _rows_at_or_above(curve: Curve, p: np.ndarray, strict: bool) -> np.ndarray:
    """Validation rows scored >= ``p`` (or > ``p`` when ``strict``), per element of ``p``."""
    rows = curve.tp + curve.fp  # cumulative, thresholds descending
    neg = -curve.thresholds.astype(np.float64)
    k = np.searchsorted(neg, -p, side="left" if strict else "right")  # how many thresholds pass
    return np.where(k > 0, rows[np.maximum(k - 1, 0)], 0)


def window_counts(curve: Curve, p, window: Window = Window()) -> tuple[np.ndarray, np.ndarray]:
    """(mergers, rows) of validation in each finite ``p``'s window; ``mergers`` may be fractional
    where the window cuts a group of tied scores (their labels shared out evenly)."""
    p = np.asarray(p, np.float64)
    n = int(curve.tp[-1] + curve.fp[-1])
    z = _logit(p)
    hi_p, lo_p = 1 / (1 + np.exp(-(z + window.half_width))), 1 / (1 + np.exp(-(z - window.half_width)))
    top = _rows_at_or_above(curve, hi_p, strict=True).astype(np.float64)
    bottom = _rows_at_or_above(curve, lo_p, strict=False).astype(np.float64)
    m = min(window.min_rows, n)
    centre = (_rows_at_or_above(curve, p, strict=True) + _rows_at_or_above(curve, p, strict=False)) / 2
    short = bottom - top < m
    start = np.clip(centre - m / 2, 0, n - m)
    top, bottom = np.where(short, start, top), np.where(short, start + m, bottom)
    knots = np.r_[0, curve.tp + curve.fp].astype(np.float64)
    mergers_above = lambda r: np.interp(r, knots, np.r_[0, curve.tp].astype(np.float64))
    return mergers_above(bottom) - mergers_above(top), bottom - top


def score_interval(p, curve: Curve | None, window: Window = Window()) -> tuple[np.ndarray, np.ndarray]:
    """(lo, hi) float32 per row: the 95 % interval of the module docstring; NaN where ``p`` is NaN
    or there is no curve."""
    p = np.asarray(p, np.float32)
    lo, hi = np.full(p.shape, np.nan, np.float32), np.full(p.shape, np.nan, np.float32)
    ok = np.isfinite(p)
    if curve is None or not ok.any():
        return lo, hi
    k, n = window_counts(curve, p[ok].astype(np.float64), window)
    w_lo, w_hi = wilson(k, n)
    lo[ok] = np.minimum(w_lo.astype(np.float32), p[ok])
    hi[ok] = np.maximum(w_hi.astype(np.float32), p[ok])
    return lo, hi


def interval_for_engine(p, card: EngineCard, views: int) -> tuple[np.ndarray, np.ndarray]:
    """:func:`score_interval` on the card's validation curve for ``views`` views (all NaN where
    the card has none)."""
    return score_interval(p, card_curve(card, views))


def describe(card: EngineCard, views: int) -> str:
    """One line for a run's summary / FITS header: where the interval comes from, or why it is NaN."""
    c = card_curve(card, views)
    if c is None:
        return f"p_merger_lo/hi: NaN, the engine card has no validation curve for {views} view(s)"
    return (
        f"p_merger_lo/hi: 95 % Wilson interval on the merger fraction of the validation galaxies scored within "
        f"{HALF_WIDTH:g} in logit (at least {MIN_ROWS} of {c.n_pos + c.n_neg}), {views} view(s), at validation "
        "prevalence"
    )


CLASSES = ("below", "straddles", "above")  # the interval wholly below the threshold, across it, wholly above


def interval_class(lo, hi, threshold: float) -> np.ndarray:
    """Index into :data:`CLASSES` per row (-1 where the interval is NaN)."""
    lo, hi = np.asarray(lo, np.float64), np.asarray(hi, np.float64)
    c = np.where(lo >= threshold, 2, np.where(hi < threshold, 0, 1))
    return np.where(np.isfinite(lo) & np.isfinite(hi), c, -1)


def validation_errors_by_class(curve: Curve, threshold: float, window: Window = Window()) -> dict[str, list[int]]:
    """{class: [errors, rows]} of the curve's own validation rows at ``threshold`` (in-sample: each
    row is in its own window; the test split measures it out of sample)."""
    rows = np.diff(np.r_[0, curve.tp + curve.fp])
    pos = np.diff(np.r_[0, curve.tp])
    lo, hi = score_interval(curve.thresholds, curve, window)
    flagged = curve.thresholds.astype(np.float64) >= np.float32(threshold)
    errors = np.where(flagged, rows - pos, pos)  # flagged non-mergers, or missed mergers
    c = interval_class(lo, hi, threshold)
    return {name: [int(errors[c == i].sum()), int(rows[c == i].sum())] for i, name in enumerate(CLASSES)}
