"""Operating points: the threshold a user's target (purity or completeness at a survey's merger
prevalence) asks for, read off the validation curve stored in the engine card.

The one place that turns a target into a threshold (``process-catalog --purity/--completeness``,
the report, ``mergerscan calibrate`` and training's survey evaluation all call it).

The card's ``val_curve`` holds, per calibrated view count, every distinct validation p_merger
(descending, float32 as the engines give it) with the numbers of validation mergers (``tp``) and
non-mergers (``fp``) scored at or above it, and ``n_pos``/``n_neg``.  Expected purity at prevalence
``pi`` is ``pi*TPR / (pi*TPR + (1-pi)*FPR)``.  Its interval propagates exact (Clopper-Pearson)
binomial intervals on TPR and FPR, each at level sqrt(0.95): the two classes are independent
samples and purity rises with TPR and falls with FPR, so the corners cover the true purity with
probability >= 95 %.  Exact intervals rather than a bootstrap: at a purity of 0.9 at 2 % the list
rests on a handful of validation false positives (or one), where a bootstrap's percentiles
collapse (0 false positives resample to 0); the counts in the card are all they need.  The
interval is conditional on the threshold: a threshold chosen to reach a target on these same rows
makes the point estimate optimistic (the test split measures it).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from ..argument_error import ArgumentError, literal
from .card import EngineCard

CURVE_KEY = "val_curve"
DEFAULT_PREVALENCE = 0.02  # mergers are ~1-3 % of a survey's galaxies
LEVEL = 0.95
_EACH = math.sqrt(LEVEL)  # per-rate level: TPR and FPR intervals jointly cover with >= LEVEL


class OperatingPointError(ArgumentError):
    """A target the validation curve cannot give (one line, a template naming the target)."""


def purity_at(tpr, fpr, prevalence: float):
    """Expected purity (precision) at ``prevalence`` from TPR and FPR (arrays allowed); 0 where
    nothing is flagged."""
    tpr, fpr = np.asarray(tpr, float), np.asarray(fpr, float)
    den = prevalence * tpr + (1 - prevalence) * fpr
    return np.divide(prevalence * tpr, den, out=np.zeros_like(den), where=den > 0)


def _binom_tail(k: int, n: int, p: float, upper: bool) -> float:
    """P(X >= k) (upper) or P(X <= k) for X ~ Binomial(n, p)."""
    if p <= 0.0:
        return 1.0 if (not upper or k <= 0) else 0.0
    if p >= 1.0:
        return 1.0 if (upper or k >= n) else 0.0
    lp, lq = math.log(p), math.log1p(-p)
    ks = range(k, n + 1) if upper else range(0, k + 1)
    logs = [math.lgamma(n + 1) - math.lgamma(i + 1) - math.lgamma(n - i + 1) + i * lp + (n - i) * lq for i in ks]
    m = max(logs)
    return min(1.0, math.exp(m) * sum(math.exp(v - m) for v in logs))


def clopper_pearson(k: int, n: int, level: float = LEVEL) -> tuple[float, float]:
    """Exact binomial interval for a rate of ``k`` in ``n`` at ``level``."""
    if n <= 0:
        return 0.0, 1.0
    a = (1 - level) / 2

    def solve(f, goal: float) -> float:  # f rises with p on (0, 1): the root of f(p) = goal
        lo, hi = 0.0, 1.0
        for _ in range(60):
            mid = (lo + hi) / 2
            lo, hi = (mid, hi) if f(mid) < goal else (lo, mid)
        return (lo + hi) / 2

    # lower: P(X >= k | p) = a; upper: P(X <= k | p) = a, i.e. P(X > k | p) = 1 - a
    low = 0.0 if k == 0 else solve(lambda p: _binom_tail(k, n, p, upper=True), a)
    high = 1.0 if k == n else solve(lambda p: 1 - _binom_tail(k, n, p, upper=False), 1 - a)
    return low, high


@dataclass(frozen=True)
class Curve:
    """One view count's validation curve: rows with p_merger >= ``thresholds[i]`` hold ``tp[i]``
    of ``n_pos`` mergers and ``fp[i]`` of ``n_neg`` non-mergers (thresholds descending)."""

    thresholds: np.ndarray
    tp: np.ndarray
    fp: np.ndarray
    n_pos: int
    n_neg: int

    @classmethod
    def from_scores(cls, y, p) -> Curve:
        """The curve of labels ``y`` (0/1) and p_merger ``p`` (float32, as the engines give it)."""
        y, p = np.asarray(y).astype(bool), np.asarray(p, np.float32)
        if y.all() or not y.any():
            raise ValueError("a validation curve needs both classes")
        order = np.argsort(-p, kind="stable")
        ps, ys = p[order], y[order]
        last = np.r_[np.flatnonzero(np.diff(ps)), len(ps) - 1]  # the last row of each distinct score
        tp = np.cumsum(ys)[last]
        return cls(ps[last], tp, (last + 1) - tp, int(y.sum()), int((~y).sum()))

    def to_card(self) -> dict:
        # float32 values as their shortest repr: read back, they compare equal to the engines' p_merger
        return {
            "n_pos": self.n_pos,
            "n_neg": self.n_neg,
            "threshold": [float(np.format_float_scientific(t, unique=True)) for t in self.thresholds],
            "tp": [int(v) for v in self.tp],
            "fp": [int(v) for v in self.fp],
        }

    @classmethod
    def from_card(cls, d: dict) -> Curve:
        t = np.asarray(d["threshold"], np.float32)
        tp, fp = np.asarray(d["tp"], np.int64), np.asarray(d["fp"], np.int64)
        if not (len(t) == len(tp) == len(fp)) or np.any(np.diff(t) >= 0):
            raise ValueError("the card's validation curve is malformed")
        return cls(t, tp, fp, int(d["n_pos"]), int(d["n_neg"]))

    def counts_at(self, threshold: float) -> tuple[int, int]:
        """(tp, fp): validation rows with p_merger >= ``threshold``."""
        k = int(np.sum(self.thresholds >= np.float32(threshold)))  # descending: the first k points
        return (int(self.tp[k - 1]), int(self.fp[k - 1])) if k else (0, 0)


def curve_card_updates(curves: dict[int, Curve], source: str) -> dict:
    """``card_updates`` for :func:`mergerscan.engines.engine_file.write_metadata`: the curves of
    every calibrated view count, and where they come from (``source``: split, seed, data hash)."""
    return {CURVE_KEY: {"source": source, "by_views": {str(n): c.to_card() for n, c in sorted(curves.items())}}}


def card_curve(card: EngineCard, views: int) -> Curve | None:
    """The card's validation curve for ``views`` views (None: the card has none)."""
    counts = card.val_curve.by_views.get(views) if card.val_curve else None
    return Curve.from_card(counts.to_dict()) if counts is not None else None


@dataclass(frozen=True)
class OperatingPoint:
    """The threshold a run flags with, why, and what it means at the stated prevalence."""

    threshold: float
    rule: str  # "default" (the card's macro-F1 threshold), "purity" or "completeness"
    target: float | None
    prevalence: float
    views: int
    tp: int = 0  # validation counts at the threshold (n_pos = n_neg = 0: the card has no curve)
    fp: int = 0
    n_pos: int = 0
    n_neg: int = 0

    @property
    def has_curve(self) -> bool:
        return self.n_pos > 0 and self.n_neg > 0

    def _rates(self) -> tuple[float, float]:
        return self.tp / self.n_pos, self.fp / self.n_neg

    @property
    def purity(self) -> float | None:
        return float(purity_at(*self._rates(), self.prevalence)) if self.has_curve else None

    @property
    def completeness(self) -> float | None:
        return self._rates()[0] if self.has_curve else None

    def purity_interval(self) -> tuple[float, float] | None:
        if not self.has_curve:
            return None
        t_lo, t_hi = clopper_pearson(self.tp, self.n_pos, _EACH)
        f_lo, f_hi = clopper_pearson(self.fp, self.n_neg, _EACH)
        return float(purity_at(t_lo, f_hi, self.prevalence)), float(purity_at(t_hi, f_lo, self.prevalence))

    def completeness_interval(self) -> tuple[float, float] | None:
        return clopper_pearson(self.tp, self.n_pos, LEVEL) if self.has_curve else None

    def describe_rule(self) -> str:
        return describe_rule(self.rule, self.target, self.prevalence)

    def to_dict(self) -> dict:
        """summary.json's ``operating_point`` (and the report's)."""
        r4 = lambda v: None if v is None else round(float(v), 4)
        pi, ci = self.purity_interval(), self.completeness_interval()
        return {
            "rule": self.rule,
            "target": self.target,
            "prevalence": self.prevalence,
            "threshold": self.threshold,
            "views": self.views,
            "expected_purity": r4(self.purity),
            "expected_purity_ci95": [r4(v) for v in pi] if pi else None,
            "expected_completeness": r4(self.completeness),
            "expected_completeness_ci95": [r4(v) for v in ci] if ci else None,
            "validation": None
            if not self.has_curve
            else {"tp": self.tp, "fp": self.fp, "n_pos": self.n_pos, "n_neg": self.n_neg},
            "method": "expected values from the engine card's validation curve; 95 % intervals: exact "
            "binomial (Clopper-Pearson) on TPR and FPR at sqrt(0.95) each, propagated",
        }

    def header_meta(self) -> dict:
        """Run metadata (FITS keywords, Parquet provenance) stating the operating point."""
        pi, ci = self.purity_interval() or (None, None), self.completeness_interval() or (None, None)
        r4 = lambda v: None if v is None else round(float(v), 4)
        return {
            "operating_rule": self.describe_rule(),
            "operating_target": self.target,
            "prevalence": self.prevalence,
            "expected_purity": r4(self.purity),
            "expected_purity_lo": r4(pi[0]),
            "expected_purity_hi": r4(pi[1]),
            "expected_completeness": r4(self.completeness),
            "expected_completeness_lo": r4(ci[0]),
            "expected_completeness_hi": r4(ci[1]),
        }

    def summary_line(self) -> str:
        return operating_line(self.to_dict())


def describe_rule(rule: str, target: float | None, prevalence: float) -> str:
    if rule == "default" or target is None:
        return "engine default (validation macro F1)"
    return f"{rule} >= {target:g} at prevalence {prevalence:g} (validation curve)"


def operating_line(d: dict) -> str:
    """One line stating an operating point from its :meth:`OperatingPoint.to_dict` (the summary's
    ``operating_point``): process-catalog's summary and the report."""
    rule = f"threshold {d['threshold']:.4g}: {describe_rule(d['rule'], d.get('target'), d['prevalence'])}"
    v = d.get("validation")
    if not v:
        return f"{rule}; the engine card has no validation curve (no expected purity)"
    (p_lo, p_hi), (c_lo, c_hi) = d["expected_purity_ci95"], d["expected_completeness_ci95"]
    return (
        f"{rule}; at prevalence {d['prevalence']:g} expected purity {d['expected_purity']:.3f} "
        f"[{p_lo:.3f}, {p_hi:.3f}], completeness {d['expected_completeness']:.3f} [{c_lo:.3f}, {c_hi:.3f}] "
        f"(95 %; validation: {v['fp']} false positive(s) of {v['n_neg']} non-mergers, {v['tp']} of {v['n_pos']} mergers)"
    )


def choose(
    curve: Curve | None,
    default_threshold: float,
    views: int = 1,
    purity: float | None = None,
    completeness: float | None = None,
    prevalence: float = DEFAULT_PREVALENCE,
) -> OperatingPoint:
    """The operating point for a target on ``curve``.  ``purity``: the lowest threshold whose
    expected purity at ``prevalence`` reaches it (the most complete such list); ``completeness``:
    the highest threshold whose validation completeness reaches it (the purest such list); neither:
    ``default_threshold``.  Raises :class:`OperatingPointError` for what the curve cannot give."""
    check_target(purity, completeness, prevalence)
    if purity is None and completeness is None:
        if curve is None:
            return OperatingPoint(float(default_threshold), "default", None, prevalence, views)
        return _point(curve, float(default_threshold), "default", None, prevalence, views)
    if curve is None:
        target = "purity" if purity is not None else "completeness"
        raise OperatingPointError(
            f"{{{target}}}: the engine card has no validation curve "
            f"for {views} view(s) (write one with `mergerscan operating-curve CATALOG --engine ENGINE`)",
            target,
        )
    tpr, fpr = curve.tp / curve.n_pos, curve.fp / curve.n_neg
    if completeness is not None:
        ok = np.flatnonzero(tpr >= completeness - 1e-12)  # tpr rises as the threshold falls
        return _point(curve, float(curve.thresholds[ok[0]]), "completeness", completeness, prevalence, views)
    assert purity is not None
    pur = purity_at(tpr, fpr, prevalence)
    # a purity resting on no validation false positive at all is not measured: such points
    # (all at the top of the curve) cannot stand for a target
    ok = np.flatnonzero((pur >= purity - 1e-12) & (curve.fp > 0))
    if len(ok) == 0:
        measured = pur[curve.fp > 0]
        best = float(measured.max()) if len(measured) else 0.0
        raise OperatingPointError(
            f"{{purity}} {purity:g} at prevalence {prevalence:g}: the validation curve ({views} view(s), "
            f"{curve.n_neg} non-mergers) does not reach it with at least one false positive measured; "
            f"the highest it measures is {best:.3f}",
            "purity",
        )
    return _point(curve, float(curve.thresholds[ok[-1]]), "purity", purity, prevalence, views)


def _point(curve: Curve, threshold: float, rule: str, target, prevalence: float, views: int) -> OperatingPoint:
    tp, fp = curve.counts_at(threshold)
    return OperatingPoint(threshold, rule, target, prevalence, views, tp, fp, curve.n_pos, curve.n_neg)


def check_target(purity: float | None, completeness: float | None, prevalence: float) -> None:
    """One-line refusals of targets no curve can give (before any engine is read)."""
    if purity is not None and completeness is not None:
        raise OperatingPointError("give {purity} or {completeness}, not both", "purity")
    if purity is not None and not 0 < purity < 1:
        raise OperatingPointError(f"{{purity}} {purity:g}: a fraction between 0 and 1 (exclusive)", "purity")
    if completeness is not None and not 0 < completeness <= 1:
        raise OperatingPointError(f"{{completeness}} {completeness:g}: a fraction in (0, 1]", "completeness")
    if not 0 < prevalence < 1:
        raise OperatingPointError(
            f"{{prevalence}} {prevalence:g}: a fraction between 0 and 1 (exclusive)", "prevalence"
        )


def for_engine(
    info, purity: float | None = None, completeness: float | None = None, prevalence: float = DEFAULT_PREVALENCE
) -> OperatingPoint:
    """The operating point of an engine (:class:`~mergerscan.engines.base.EngineInfo`, at its views)."""
    try:
        curve = card_curve(info.card, info.views)
    except (KeyError, TypeError, ValueError) as exc:
        raise OperatingPointError(
            f"engine {literal(info.name)}: its card's validation curve is unreadable ({literal(exc)})", "engine"
        ) from None
    return choose(curve, info.threshold, info.views, purity, completeness, prevalence)
