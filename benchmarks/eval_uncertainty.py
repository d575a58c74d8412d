"""The per-row interval ``p_merger_lo``/``p_merger_hi`` (issue 39.2): its window chosen on
validation, its usefulness measured once on the test split.

The interval (:mod:`mergerscan.engines.uncertainty`) is the 95 % Wilson interval on the merger
fraction of the validation galaxies scored within ``h`` in logit of a row's p_merger (at least
``m`` of them).  ``(h, m)`` is chosen on validation only: the validation split is halved
(stratified, seed 0); the curve of one half windows the other half's rows; the window's merger
fraction ((k + 1/2) / (n + 1)) is scored by its log-loss on the held-out half's labels, both
ways round; the smallest mean log-loss among windows at most 1 wide in logit wins (wider ones are
measured too, but no longer hold galaxies scored alike).

Then, with the card's validation curve (all of validation) and the chosen window, on the test
split (1 view, the card's temperature and threshold; a row is an *error* when
``p_merger >= threshold`` disagrees with its label):

* errors by interval class: wholly above the threshold (``lo >= thr``), wholly below
  (``hi < thr``), straddling it;
* error rate by interval width, bins fixed on validation (the reliability-style curve);
* AUROC of the width and of the margin |logit(p) - logit(thr)| for telling errors from correct rows;
* the interval against the test merger fraction in p_merger bins fixed on validation.

Previous finding (kept in the results): the spread over 8 views was not informative (AUROC 0.52).

    nice -n 10 .venv/bin/python benchmarks/eval_uncertainty.py --cache .cache/mergerscan
Writes benchmarks/results/uncertainty.json and benchmarks/results/uncertainty.png.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from _common import cpu_model, result_path, write_result
from head_levers import cached_features

GRID_H = (0.25, 0.5, 1.0, 2.0)
GRID_M = (25, 50, 100, 200)
MAX_H = 1.0


def auroc(score: np.ndarray, err: np.ndarray) -> float:
    """P(score of an error > score of a correct row), ties half (Mann-Whitney)."""
    from scipy.stats import rankdata

    r = rankdata(score)
    n1, n0 = int(err.sum()), int((~err).sum())
    return float((r[err].sum() - n1 * (n1 + 1) / 2) / (n1 * n0)) if n1 and n0 else float("nan")


def heldout_logloss(y, p, window, seed: int = 0) -> float:
    from mergerscan.engines.operating import Curve
    from mergerscan.engines.uncertainty import window_counts

    rng = np.random.default_rng(seed)
    half = np.zeros(len(y), bool)
    for c in (0, 1):
        idx = rng.permutation(np.flatnonzero(y == c))
        half[idx[: len(idx) // 2]] = True
    losses = []
    for a in (half, ~half):
        k, n = window_counts(Curve.from_scores(y[a], p[a]), p[~a].astype(np.float64), window)
        q = (k + 0.5) / (n + 1)
        yb = y[~a]
        losses.append(-np.mean(yb * np.log(q) + (1 - yb) * np.log1p(-q)))
    return float(np.mean(losses))


def choose_window(y, p) -> tuple[dict, list]:
    from mergerscan.engines.uncertainty import Window

    rows = [
        {"half_width": h, "min_rows": m, "heldout_logloss": round(heldout_logloss(y, p, Window(h, m)), 5)}
        for h in GRID_H
        for m in GRID_M
    ]
    # a window wider than 1 in logit (a factor e in odds either side) no longer holds galaxies
    # "scored alike" (at p = 0.5, h = 2 spans p 0.12-0.88): measured, not eligible
    best = min((r for r in rows if r["half_width"] <= MAX_H), key=lambda r: r["heldout_logloss"])
    return best, rows


def by_class(lo, hi, err, thr) -> dict:
    out = {}
    for name, m in (("above", lo >= thr), ("straddles", (lo < thr) & (hi >= thr)), ("below", hi < thr)):
        out[name] = {"n": int(m.sum()), "errors": int(err[m].sum()), "error_rate": _rate(err[m])}
    return out


def _rate(e) -> float | None:
    return round(float(e.mean()), 4) if len(e) else None


def binned(x, err, edges) -> list[dict]:
    k = np.clip(np.searchsorted(edges, x, side="right") - 1, 0, len(edges) - 2)
    return [
        {
            "range": [round(float(edges[b]), 4), round(float(edges[b + 1]), 4)],
            "n": int((k == b).sum()),
            "errors": int(err[k == b].sum()),
            "error_rate": _rate(err[k == b]),
        }
        for b in range(len(edges) - 1)
    ]


def reliability(p, lo, hi, y, edges) -> list[dict]:
    from mergerscan.engines.uncertainty import wilson

    k = np.clip(np.searchsorted(edges, p, side="right") - 1, 0, len(edges) - 2)
    rows = []
    for b in range(len(edges) - 1):
        m = k == b
        if not m.any():
            continue
        f_lo, f_hi = wilson(y[m].sum(), m.sum())
        rows.append(
            {
                "p_range": [round(float(edges[b]), 4), round(float(edges[b + 1]), 4)],
                "n": int(m.sum()),
                "merger_fraction": round(float(y[m].mean()), 4),
                "merger_fraction_ci95": [round(float(f_lo), 4), round(float(f_hi), 4)],
                "mean_p": round(float(p[m].mean()), 4),
                "mean_lo": round(float(lo[m].mean()), 4),
                "mean_hi": round(float(hi[m].mean()), 4),
            }
        )
    return rows


def split_figures(y, p, lo, hi, thr, width_edges, p_edges) -> dict:
    zt = np.log(thr / (1 - thr))
    err = (p >= thr) != y.astype(bool)
    width = hi - lo
    margin = np.abs(np.log(p / (1 - p)) - zt)
    return {
        "n": len(y),
        "errors": int(err.sum()),
        "by_class": by_class(lo, hi, err, thr),
        "error_rate_by_width": binned(width, err, width_edges),
        "auroc_error_vs_width": round(auroc(width, err), 4),
        "auroc_error_vs_small_margin": round(auroc(-margin, err), 4),
        "p_inside_interval": round(float(np.mean((lo <= p) & (p <= hi))), 4),
        "mean_width": round(float(width.mean()), 4),
        "reliability": reliability(p, lo, hi, y, p_edges),
    }


def plot(res: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(1, 2, figsize=(11, 3.8))
    for s, c in (("val", "#4a78a8"), ("test", "#d1495b")):
        rows = res[s]["error_rate_by_width"]  # one point per validation-fixed bin, evenly spaced
        x = list(range(len(rows)))
        ax[0].plot(x, [r["error_rate"] for r in rows], "o-", color=c, label=f"{s} ({res[s]['errors']} errors)")
        for xi, r in zip(x, rows):
            ax[0].annotate(str(r["n"]), (xi, r["error_rate"]), fontsize=7, xytext=(2, 4), textcoords="offset points")
    ax[0].set_xticks(x, [f"{r['range'][0]:.3g}-{r['range'][1]:.3g}" for r in rows], fontsize=7)
    ax[0].set(xlabel="interval width p_merger_hi - p_merger_lo (bins fixed on validation)", ylabel="error rate")
    ax[0].legend(frameon=False)
    rel = res["test"]["reliability"]
    x = np.array([r["mean_p"] for r in rel])
    ax[1].fill_between(x, [r["mean_lo"] for r in rel], [r["mean_hi"] for r in rel], alpha=0.3, label="mean interval")
    f = np.array([r["merger_fraction"] for r in rel])
    e = np.array([r["merger_fraction_ci95"] for r in rel]).T
    ax[1].errorbar(x, f, yerr=np.clip([f - e[0], e[1] - f], 0, None), fmt="o", color="#d1495b", label="test fraction")
    ax[1].plot([0, 1], [0, 1], ":", color="grey")
    ax[1].set(xlabel="p_merger (bins fixed on validation)", ylabel="merger fraction (test)")
    ax[1].legend(frameon=False)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def trust_score_validation(ls, f, p_all, thr: float, k: int = 20) -> dict:
    """A genuinely new signal, measured on validation only: the share of a row's k nearest
    training galaxies (the engine's own 64-d embedding, engines.representation) whose label
    disagrees with the row's flag.  Is it informative beyond the margin?  (2-fold logistic on
    validation of margin + disagreement against margin alone.)"""
    import onnx
    from onnx import numpy_helper
    from scipy.optimize import minimize
    from scipy.spatial import cKDTree

    from mergerscan.engines import default_engine_path
    from mergerscan.engines.representation import read_block

    m = onnx.load(str(default_engine_path()))
    rep = read_block({i.name: numpy_helper.to_array(i) for i in m.graph.initializer})
    assert rep is not None
    e, _ = rep.apply(f["backbone_pool"])
    y, split = ls.table["label"].to_numpy().astype(int), ls.table["split"].to_numpy()
    tr, va = split == "train", split == "val"
    _, idx = cKDTree(e[tr]).query(e[va], k=k)
    frac = y[tr][idx].mean(1)
    p = p_all[va].astype(np.float64)
    flag = p >= thr
    err = flag != (y[va] == 1)
    disagree = np.where(flag, 1 - frac, frac)
    margin = np.abs(np.log(p / (1 - p)) - np.log(thr / (1 - thr)))
    x = np.c_[margin, disagree, np.ones(len(p))]
    fold, both = np.arange(len(p)) % 2, np.zeros(len(p))
    for j in (0, 1):
        a = fold != j
        w = minimize(lambda w, a=a: np.mean(np.logaddexp(0, x[a] @ w) - err[a] * (x[a] @ w)), np.zeros(3)).x
        both[~a] = x[~a] @ w
    low = margin < np.quantile(margin, 0.2)
    return {
        "k": k,
        "auroc_error_vs_disagreement": round(auroc(disagree, err), 4),
        "auroc_error_vs_small_margin": round(auroc(-margin, err), 4),
        "auroc_error_vs_margin_plus_disagreement_2fold": round(auroc(both, err), 4),
        "lowest_fifth_of_margin": {
            "n": int(low.sum()),
            "errors": int(err[low].sum()),
            "auroc_disagreement": round(auroc(disagree[low], err[low]), 4),
            "auroc_small_margin": round(auroc(-margin[low], err[low]), 4),
        },
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--cache", default=".cache/mergerscan")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default=str(result_path("uncertainty.json")))
    a = ap.parse_args()
    from mergerscan.engines import default_engine_path, read_engine_info
    from mergerscan.engines.base import sigmoid
    from mergerscan.engines.operating import card_curve
    from mergerscan.engines.uncertainty import HALF_WIDTH, MIN_ROWS, Window, score_interval, wilson, window_counts

    ls, f = cached_features(Path(a.cache), a.threads)
    info = read_engine_info(default_engine_path())
    assert info.views == 1, "the cached logits are one view"
    y_all, split = ls.table["label"].to_numpy().astype(int), ls.table["split"].to_numpy()
    p_all = sigmoid(f["logit"][:, 0].astype(np.float64) / info.temperature).astype(np.float32)
    y = {s: y_all[split == s] for s in ("val", "test")}
    p = {s: p_all[split == s] for s in ("val", "test")}
    curve = card_curve(info.card, info.views)
    assert curve is not None
    # p_merger recomputed from the cached logit may differ from the engine's in the last float32 bit
    agree = int(max(abs(int((p["val"] >= t).sum()) - int(n)) for t, n in zip(curve.thresholds, curve.tp + curve.fp)))
    best, grid = choose_window(y["val"], p["val"])
    print("window chosen on validation:", best, flush=True)
    window = Window(HALF_WIDTH, MIN_ROWS)  # the shipped constants (set from `best`)
    thr = info.threshold
    lo, hi = {}, {}
    for s in ("val", "test"):
        lo[s], hi[s] = score_interval(p[s], curve, window)
    width_v = hi["val"] - lo["val"]
    width_edges = np.r_[0, np.quantile(width_v, [0.5, 0.7, 0.8, 0.9, 0.95]), 1.0]
    p_edges = np.r_[0, np.quantile(p["val"], np.linspace(0.1, 0.9, 9)), 1.0]
    res = {
        "machine": {"cpu": cpu_model(), "note": "2-core AMD EPYC, shared with other jobs"},
        "engine": info.name,
        "views": info.views,
        "threshold": thr,
        "temperature": info.temperature,
        "val_curve_max_count_difference": agree,
        "window_grid": grid,
        "window_chosen": best,
        "window_shipped": {"half_width": window.half_width, "min_rows": window.min_rows},
        "width_edges": [round(float(v), 4) for v in width_edges],
        "p_edges": [round(float(v), 4) for v in p_edges],
    }
    for s in ("val", "test"):
        res[s] = split_figures(y[s], p[s].astype(np.float64), lo[s], hi[s], thr, width_edges, p_edges)
        r_lo, r_hi = wilson(*window_counts(curve, p[s].astype(np.float64), window))
        res[s]["raw_interval_excludes_p"] = round(float(np.mean((p[s] < r_lo) | (p[s] > r_hi))), 4)
        print(s, {k: v for k, v in res[s].items() if not isinstance(v, list)}, flush=True)
    res["trust_score_validation"] = trust_score_validation(ls, f, p_all, thr)
    print("trust score (validation):", res["trust_score_validation"], flush=True)
    write_result(a.out, res)
    plot(res, Path(a.out).with_suffix(".png"))


if __name__ == "__main__":
    main()
