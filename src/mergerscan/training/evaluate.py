"""Metrics in the study's Table 1 layout, plus ROC/PR-AUC, prevalence-corrected precision and
calibration.  Pure numpy: each function takes labels (0/1) and probabilities."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..engines.base import sigmoid

SURVEY_PREVALENCE = 0.02  # mergers are ~1-3 % of galaxies in a survey


def confusion(y, p, threshold):
    y = np.asarray(y).astype(bool)
    yhat = np.asarray(p) >= threshold
    tp = int(np.sum(y & yhat))
    fp = int(np.sum(~y & yhat))
    fn = int(np.sum(y & ~yhat))
    tn = int(np.sum(~y & ~yhat))
    return {"tp": tp, "fp": fp, "fn": fn, "tn": tn}


def _prf(tp, fp, fn):
    p = tp / (tp + fp) if tp + fp else 0.0
    r = tp / (tp + fn) if tp + fn else 0.0
    f = 2 * p * r / (p + r) if p + r else 0.0
    return p, r, f


def per_class(y, p, threshold):
    c = confusion(y, p, threshold)
    pm, rm, fm = _prf(c["tp"], c["fp"], c["fn"])
    pn, rn, fn_ = _prf(c["tn"], c["fn"], c["fp"])
    n1 = c["tp"] + c["fn"]
    n0 = c["tn"] + c["fp"]
    return {
        "merger": {"precision": pm, "recall": rm, "f1": fm, "support": n1},
        "non_interacting": {"precision": pn, "recall": rn, "f1": fn_, "support": n0},
        "macro": {"precision": (pm + pn) / 2, "recall": (rm + rn) / 2, "f1": (fm + fn_) / 2},
        "confusion": c,
    }


def roc_curve(y, p):
    y = np.asarray(y).astype(bool)
    order = np.argsort(-np.asarray(p), kind="mergesort")
    ps, ys = np.asarray(p)[order], y[order]
    distinct = np.r_[np.flatnonzero(np.diff(ps)), len(ps) - 1]
    tps = np.cumsum(ys)[distinct]
    fps = (distinct + 1) - tps
    tpr = np.r_[0, tps] / max(1, y.sum())
    fpr = np.r_[0, fps] / max(1, (~y).sum())
    return fpr, tpr, np.r_[np.inf, ps[distinct]]


def roc_auc(y, p):
    fpr, tpr, _ = roc_curve(y, p)
    return float(np.trapezoid(tpr, fpr))


def pr_curve(y, p):
    y = np.asarray(y).astype(bool)
    fpr, tpr, thr = roc_curve(y, p)
    tp = tpr * y.sum()
    fp = fpr * (~y).sum()
    prec = np.where(tp + fp > 0, tp / np.maximum(tp + fp, 1e-12), 1.0)
    return tpr, prec, thr


def average_precision(y, p):
    """PR-AUC as average precision (step interpolation, as scikit-learn)."""
    rec, prec, _ = pr_curve(y, p)
    return float(np.sum(np.diff(rec) * prec[1:]))


def precision_at_prevalence(y, p, threshold, prevalence=SURVEY_PREVALENCE):
    """Precision the classifier would have in a survey where a fraction ``prevalence`` are mergers,
    from its recall (TPR) and false-positive rate at ``threshold``."""
    c = confusion(y, p, threshold)
    tpr = c["tp"] / max(1, c["tp"] + c["fn"])
    fpr = c["fp"] / max(1, c["fp"] + c["tn"])
    den = tpr * prevalence + fpr * (1 - prevalence)
    return float(tpr * prevalence / den) if den else 0.0


def reliability(y, p, bins=10):
    y = np.asarray(y, float)
    p = np.asarray(p, float)
    edges = np.linspace(0, 1, bins + 1)
    idx = np.clip(np.digitize(p, edges[1:-1]), 0, bins - 1)
    conf, acc, count = [], [], []
    for b in range(bins):
        m = idx == b
        count.append(int(m.sum()))
        conf.append(float(p[m].mean()) if m.any() else float("nan"))
        acc.append(float(y[m].mean()) if m.any() else float("nan"))
    count = np.array(count)
    ece = float(np.nansum(count / max(1, len(p)) * np.abs(np.array(conf) - np.array(acc))))
    return {"edges": edges.tolist(), "confidence": conf, "accuracy": acc, "count": count.tolist(), "ece": ece}


def log_loss(y, p) -> float:
    """Mean binary negative log-likelihood of labels ``y`` under probabilities ``p``."""
    y, p = np.asarray(y, float), np.asarray(p, float)
    return float(-np.mean(y * np.log(p + 1e-12) + (1 - y) * np.log(1 - p + 1e-12)))


def fit_temperature(y, logits) -> float:
    """Temperature T minimising the binary NLL of sigmoid(logit / T) (fitted on validation)."""
    z = np.asarray(logits, float)

    def nll(t):
        return log_loss(y, sigmoid(z / t))

    ts = np.exp(np.linspace(math.log(0.05), math.log(20), 400))
    best = ts[int(np.argmin([nll(t) for t in ts]))]
    lo, hi = best / 1.02, best * 1.02  # refine
    for _ in range(40):
        m1, m2 = lo + (hi - lo) / 3, hi - (hi - lo) / 3
        lo, hi = (lo, m2) if nll(m1) < nll(m2) else (m1, hi)
    return float((lo + hi) / 2)


def choose_threshold(y, p) -> float:
    """Threshold maximising macro F1 (the study's headline) on the data given (validation)."""
    cands = np.unique(np.round(np.asarray(p, float), 4))
    if len(cands) > 1000:
        cands = np.quantile(p, np.linspace(0, 1, 1001))
    scores = [per_class(y, p, t)["macro"]["f1"] for t in cands]
    return float(cands[int(np.argmax(scores))])


@dataclass
class Calibration:
    """The temperature and threshold fitted on validation, and both splits summarised with them."""

    temperature: float
    threshold: float
    val: dict
    test: dict
    p_val: np.ndarray
    p_test: np.ndarray


def calibrate_and_summarize(y_val, z_val, y_test, z_test) -> Calibration:
    """The one calibrate -> threshold -> summarise sequence (training and ``mergerscan calibrate``):
    temperature fitted on validation logits, the macro-F1 threshold chosen on the calibrated
    validation probabilities, then validation and test summarised at that threshold."""
    t = fit_temperature(y_val, z_val)
    pv, pt = sigmoid(np.asarray(z_val, float) / t), sigmoid(np.asarray(z_test, float) / t)
    thr = choose_threshold(y_val, pv)
    return Calibration(t, thr, summarize(y_val, pv, thr), summarize(y_test, pt, thr), pv, pt)


def summarize(y, p, threshold) -> dict:
    out = per_class(y, p, threshold)
    out.update(
        {
            "threshold": float(threshold),
            "n": len(y),
            "roc_auc": roc_auc(y, p),
            "pr_auc": average_precision(y, p),
            "precision_at_2pct": precision_at_prevalence(y, p, threshold),
            "reliability": reliability(y, p),
        }
    )
    out["ece"] = out["reliability"]["ece"]
    return out


def table1(m: dict) -> str:
    """The study's Table 1 layout: per-class precision / recall / F1 (+ support)."""
    rows = ["| class | precision | recall | F1 | support |", "|---|---|---|---|---|"]
    for k in ("merger", "non_interacting"):
        r = m[k]
        rows.append(f"| {k} | {r['precision']:.3f} | {r['recall']:.3f} | {r['f1']:.3f} | {r['support']} |")
    mm = m["macro"]
    rows.append(f"| macro avg | {mm['precision']:.3f} | {mm['recall']:.3f} | {mm['f1']:.3f} | {m['n']} |")
    return "\n".join(rows)


def _save(plt, fig, path: Path) -> str:
    """Write a figure as a PNG and close it: its file name."""
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path.name


def plot_all(y, p, metrics: dict, out_dir, title: str = "") -> list[str]:
    """ROC, PR, reliability and confusion-matrix PNGs; returns their file names."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    files = []
    fig, ax = plt.subplots(figsize=(4.2, 4))
    fpr, tpr, _ = roc_curve(y, p)
    ax.plot(fpr, tpr, lw=1.5, label=f"AUC = {metrics['roc_auc']:.3f}")
    ax.plot([0, 1], [0, 1], "k:", lw=0.8)
    ax.set(xlabel="false-positive rate", ylabel="true-positive rate", title=f"ROC {title}")
    ax.legend(loc="lower right")
    files.append(_save(plt, fig, out_dir / "roc.png"))
    fig, ax = plt.subplots(figsize=(4.2, 4))
    rec, prec, _ = pr_curve(y, p)
    ax.plot(rec, prec, lw=1.5, label=f"AP = {metrics['pr_auc']:.3f}")
    ax.axhline(np.mean(y), color="k", ls=":", lw=0.8, label="test prevalence")
    ax.set(xlabel="recall (mergers)", ylabel="precision (mergers)", ylim=(0, 1.02), title=f"PR {title}")
    ax.legend(loc="lower left")
    files.append(_save(plt, fig, out_dir / "pr.png"))
    fig, ax = plt.subplots(figsize=(4.2, 4))
    rel = metrics["reliability"]
    ax.plot([0, 1], [0, 1], "k:", lw=0.8)
    ax.plot(rel["confidence"], rel["accuracy"], "o-", label=f"ECE = {rel['ece']:.3f}")
    ax.set(xlabel="predicted p_merger", ylabel="observed merger fraction", title=f"Reliability {title}")
    ax.legend(loc="upper left")
    files.append(_save(plt, fig, out_dir / "reliability.png"))
    c = metrics["confusion"]
    mat = np.array([[c["tn"], c["fp"]], [c["fn"], c["tp"]]])
    fig, ax = plt.subplots(figsize=(3.6, 3.3))
    ax.imshow(mat, cmap="Blues")
    for (i, j), v in np.ndenumerate(mat):
        ax.text(j, i, str(v), ha="center", va="center", color="k" if v < mat.max() / 2 else "w")
    ax.set_xticks([0, 1], ["non-int.", "merger"])
    ax.set_yticks([0, 1], ["non-int.", "merger"])
    ax.set(xlabel="predicted", ylabel="true", title=f"threshold {metrics['threshold']:.3f}")
    files.append(_save(plt, fig, out_dir / "confusion.png"))
    return files
