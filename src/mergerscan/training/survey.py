"""What a survey user needs to know about an engine: precision and recall at survey prevalence.

A test split has ~25 % mergers; a survey has 1-5 %.  Precision at prevalence ``pi`` follows from
the class-conditional rates at the threshold: ``P = pi*TPR / (pi*TPR + (1-pi)*FPR)``, so its
uncertainty is that of TPR (from the test mergers) and of FPR (from the test non-mergers; a few
false positives move P a lot).  The 95 % intervals come from a stratified bootstrap: mergers and
non-mergers are resampled separately, keeping each class's size, as the rates are per class.
A class with no errors at all (0 false positives, or every merger found) would resample to the
same rate every time and give a zero-width interval; its draws come from the Jeffreys posterior
Beta(k + 1/2, n - k + 1/2) instead, so "0 of 1,064" still says how large the rate could be.

``survey_evaluation`` also gives the threshold that reaches a precision target (default 0.9 at
2 %), chosen on **validation** (the lowest threshold whose validation precision reaches it, so
the most recall) and evaluated once on test, with the recall it leaves.
"""

from __future__ import annotations

import numpy as np

from ..engines.operating import Curve, OperatingPointError, choose, curve_card_updates, purity_at
from .evaluate import reliability

PREVALENCES = (0.01, 0.02, 0.05)
N_BOOT = 2000


def precision_at(tpr, fpr, prevalence: float):
    """Precision at ``prevalence`` from recall and false-positive rate (arrays allowed); 0 where
    nothing is flagged (:func:`mergerscan.engines.operating.purity_at`)."""
    return purity_at(tpr, fpr, prevalence)


def at_threshold(y, p, threshold: float, prevalences=PREVALENCES, n_boot: int = N_BOOT, seed: int = 0) -> dict:
    """Recall, false-positive rate and precision at each prevalence, with stratified-bootstrap
    95 % intervals, at ``threshold``."""
    y = np.asarray(y).astype(bool)
    p = np.asarray(p, float)
    if y.all() or not y.any():
        raise ValueError("survey evaluation needs both classes")
    pos, neg = p[y], p[~y]  # both non-empty (checked above)
    tpr, fpr = float((pos >= threshold).mean()), float((neg >= threshold).mean())
    rng = np.random.default_rng(seed)
    # a resample's rate = (count of resampled scores >= threshold) / n: binomial in the class's rate
    k_pos = _resampled_rate(rng, len(pos), tpr, n_boot)
    k_neg = _resampled_rate(rng, len(neg), fpr, n_boot)
    ci = lambda a: [round(float(v), 4) for v in np.quantile(a, [0.025, 0.975])]
    out = {
        "threshold": float(threshold),
        "recall": round(tpr, 4),
        "recall_ci95": ci(k_pos),
        "false_positive_rate": round(fpr, 5),
        "false_positive_rate_ci95": [round(float(v), 5) for v in np.quantile(k_neg, [0.025, 0.975])],
        "n_mergers": len(pos),
        "n_non_mergers": len(neg),
        "false_positives": int((neg >= threshold).sum()),
        "n_boot": n_boot,
    }
    for pi in prevalences:
        out[f"precision_at_{_pct(pi)}"] = round(float(precision_at(tpr, fpr, pi)), 4)
        out[f"precision_at_{_pct(pi)}_ci95"] = ci(precision_at(k_pos, k_neg, pi))
    return out


def _resampled_rate(rng, n: int, rate: float, n_boot: int) -> np.ndarray:
    """Bootstrap draws of a class's rate: binomial at the observed rate, or, where that rate is 0
    or 1 (the binomial would never move), the Jeffreys posterior of the observed count."""
    if rate in (0.0, 1.0):
        k = rate * n
        return rng.beta(k + 0.5, n - k + 0.5, n_boot)
    return rng.binomial(n, rate, n_boot) / n


def _pct(pi: float) -> str:
    return f"{pi * 100:g}pct"


def threshold_for_precision(y, p, target: float = 0.9, prevalence: float = 0.02) -> float | None:
    """The lowest threshold at which precision at ``prevalence`` reaches ``target`` on (y, p)
    (validation), i.e. the most recall that target leaves; None if no threshold reaches it with at
    least one false positive measured.  The rule of ``process-catalog --purity``
    (:func:`mergerscan.engines.operating.choose`)."""
    try:
        return choose(Curve.from_scores(y, p), 0.5, purity=target, prevalence=prevalence).threshold
    except OperatingPointError:
        return None


def val_curve(y_val, p_val, data_hash: str, split_seed: int, views: int = 1) -> dict:
    """The card entry ``val_curve`` for validation labels and p_merger at ``views`` views."""
    return curve_card_updates({views: Curve.from_scores(y_val, p_val)}, curve_source(data_hash, split_seed))


def curve_source(data_hash: str, split_seed: int) -> str:
    return (
        f"validation split of the labelled catalog (object-disjoint groups, split seed {split_seed}, "
        f"70/15/15; data hash {data_hash}); p_merger as the engine gives it"
    )


def survey_evaluation(
    y_val, p_val, y_test, p_test, threshold: float, target: float = 0.9, target_prevalence: float = 0.02
) -> dict:
    """The engine at its own threshold and at the validation threshold for ``target`` precision,
    both on test; plus the test reliability curve."""
    t9 = threshold_for_precision(y_val, p_val, target, target_prevalence)
    return {
        "at_engine_threshold": at_threshold(y_test, p_test, threshold),
        f"for_precision_{target:g}_at_{_pct(target_prevalence)}": {
            "threshold_from_val": t9,
            "test": at_threshold(y_test, p_test, t9) if t9 is not None else None,
        },
        "reliability_test": reliability(y_test, p_test),
        "method": "precision from TPR/FPR at each prevalence; 95% intervals: stratified bootstrap "
        f"({N_BOOT} resamples of each class; a class with no errors: Jeffreys posterior draws); "
        "the precision-target threshold is chosen on validation",
    }


def worst_failures(ids, labels, p, images, threshold: float, k: int = 12) -> dict:
    """The ``k`` most confident false positives (non-mergers with the highest p) and false
    negatives (mergers with the lowest p) at ``threshold``: id, label, p and image path."""
    labels, p = np.asarray(labels).astype(bool), np.asarray(p, float)
    row = lambda i: {
        "id": str(ids[i]),
        "is_merger": int(labels[i]),
        "p_merger": round(float(p[i]), 4),
        "image": str(images[i]),
    }
    fp = [i for i in np.argsort(-p, kind="stable") if not labels[i] and p[i] >= threshold][:k]
    fn = [i for i in np.argsort(p, kind="stable") if labels[i] and p[i] < threshold][:k]
    return {
        "threshold": float(threshold),
        "false_positives": [row(i) for i in fp],
        "false_negatives": [row(i) for i in fn],
    }


def report_entries(test_table, y_val, p_val, p_test, threshold: float) -> dict:
    """metrics.json's ``survey`` and ``failures`` (the training report shows both): ``test_table``
    holds the test rows' id, label and image path, in the order of ``p_test``."""
    y_test = test_table["label"].to_numpy()
    return {
        "survey": survey_evaluation(y_val, p_val, y_test, p_test, threshold),
        "failures": worst_failures(
            test_table["id"].to_numpy(), y_test, p_test, test_table["image"].to_numpy(), threshold
        ),
    }
