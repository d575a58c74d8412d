"""Is a per-row uncertainty informative beyond p_merger?  (issue 39.2, measured on the test split)

The default engine at its card's view count (1) and threshold.  A row is an *error* when
``p_merger >= threshold`` disagrees with its label.  Candidates, all fitted on validation only:

* ``margin``: |logit / T - logit(threshold)|, free at one view.  A calibrated interval from the
  validation reliability (the observed merger fraction of p_merger's validation bin, with its
  binomial interval) is a monotone function of the same number, so it ranks rows the same way.
* ``view_spread``: the standard deviation of the logit over the 8 dihedral views (/ T): costs 8
  views, i.e. 8x the CPU of the default; measured here from cached view logits to say whether it
  would be worth an engine output.

Reported: the test error rate in margin deciles (the reliability-style curve), the AUROC of each
candidate for telling errors from correct rows, and, within margin bins, the error rate of the
high- and low-spread halves (does the spread add anything p_merger does not say?).

    .venv/bin/python benchmarks/eval_uncertainty.py --cache .cache/mergerscan
Writes benchmarks/results/uncertainty.json.
"""

from __future__ import annotations

import argparse
import itertools
from pathlib import Path

import numpy as np

from _common import cpu_model, need, result_path, shared_data, write_result
from eval_ensembles import view_logits


def auroc(score: np.ndarray, err: np.ndarray) -> float:
    """P(score of an error > score of a correct row), ties half (Mann-Whitney)."""
    from scipy.stats import rankdata

    r = rankdata(score)
    n1, n0 = int(err.sum()), int((~err).sum())
    return float((r[err].sum() - n1 * (n1 + 1) / 2) / (n1 * n0)) if n1 and n0 else float("nan")


def binned(x: np.ndarray, err: np.ndarray, edges: np.ndarray) -> list[dict]:
    k = np.clip(np.searchsorted(edges, x, side="right") - 1, 0, len(edges) - 2)
    rows = []
    for b in range(len(edges) - 1):
        m = k == b
        rows.append(
            {
                "range": [round(float(edges[b]), 3), round(float(edges[b + 1]), 3)],
                "n": int(m.sum()),
                "errors": int(err[m].sum()),
                "error_rate": round(float(err[m].mean()), 4) if m.any() else None,
            }
        )
    return rows


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--cache", default=".cache/mergerscan")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default=str(result_path("uncertainty.json")))
    a = ap.parse_args()
    from mergerscan.engines import default_engine_path, read_engine_info
    from mergerscan.training.data import build_labelled_set

    catalog = need(shared_data("sdss-gz-mergers", "catalog.csv"))
    data = build_labelled_set(str(catalog), cache=a.cache)
    path = Path(default_engine_path())
    info = read_engine_info(path)
    assert info.views == 1, "this measurement is for a one-view default"
    z = view_logits(path, data, Path(a.cache) if a.cache else None, a.threads)
    T, thr = info.temperature, info.threshold
    y = {s: data.table["label"].to_numpy()[data.indices(s)].astype(bool) for s in ("val", "test")}
    zt = np.log(thr / (1 - thr))
    res = {"machine": {"cpu": cpu_model()}, "engine": info.name, "threshold": thr, "temperature": T}
    for s in ("val", "test"):
        z1 = z[s][0].astype(np.float64) / T  # view 0 is the identity: the default's own logit
        err = (z1 >= zt) != y[s]
        margin = np.abs(z1 - zt)
        spread = z[s].astype(np.float64).std(0) / T
        # margin deciles fixed on validation, applied to test
        if s == "val":
            edges = np.r_[0, np.quantile(margin, np.linspace(0.1, 0.9, 9)), np.inf]
            s_edges = np.r_[edges[:3], edges[5], np.inf]  # deciles 1, 2, 3-5, 6-10: the errors are low
        within = []
        for lo, hi in itertools.pairwise(s_edges):
            m = (margin >= lo) & (margin < hi)
            med = np.median(spread[m])
            within.append(
                {
                    "margin": [round(float(lo), 3), round(float(hi), 3)],
                    "n": int(m.sum()),
                    "error_rate_low_spread": round(float(err[m & (spread <= med)].mean()), 4),
                    "error_rate_high_spread": round(float(err[m & (spread > med)].mean()), 4),
                }
            )
        res[s] = {
            "n": len(err),
            "errors": int(err.sum()),
            "auroc_error_vs_small_margin": round(auroc(-margin, err), 4),
            "auroc_error_vs_view_spread": round(auroc(spread, err), 4),
            "auroc_error_vs_spread_over_margin": round(auroc(spread / np.maximum(margin, 1e-6), err), 4),
            "error_rate_by_margin_decile": binned(margin, err, edges),
            "error_rate_by_spread_within_margin_bins": within,
            "corr_spread_margin": round(float(np.corrcoef(spread, margin)[0, 1]), 4),
        }
        print(s, {k: v for k, v in res[s].items() if not isinstance(v, list)})
    write_result(a.out, res)


if __name__ == "__main__":
    main()
