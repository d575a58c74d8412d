"""Is the macro-F1 threshold a lever?  Held-out macro F1 of threshold rules, on validation only.

The shipped rule picks the threshold that maximises macro F1 on the validation split
(:func:`mergerscan.training.evaluate.choose_threshold`); with 1,428 objects that argmax is noisy.
This compares it with two steadier rules by repeated stratified split-halves of the validation
split (pick on one half, score on the other, both ways): *bagged* (the median of the argmax over
25 bootstrap resamples) and *smoothed* (the argmax of the macro-F1 curve after a 9-point running
mean).  The test split is not read.  Engines' view logits come from eval_ensembles' cache.

    .venv/bin/python benchmarks/eval_threshold_rules.py runs/A/model-cal.onnx runs/B/model-cal.onnx \
        --cache .cache/mergerscan
Writes benchmarks/results/threshold_rules.json.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from _common import cpu_model, need, result_path, shared_data, write_result
from eval_ensembles import VIEW_COUNTS, view_logits


def macro_f1_curve(y: np.ndarray, s: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(thresholds, macro F1 when predicting merger for score >= threshold), every distinct cut."""
    order = np.argsort(-s, kind="stable")
    ys, ss = y[order], s[order]
    tp, fp = np.cumsum(ys), np.cumsum(1 - ys)
    fn, tn = ys.sum() - tp, (len(ys) - ys.sum()) - fp
    f1 = (2 * tp / np.maximum(2 * tp + fp + fn, 1) + 2 * tn / np.maximum(2 * tn + fn + fp, 1)) / 2
    return ss, f1


def argmax_rule(y, s, rng):
    ss, f1 = macro_f1_curve(y, s)
    return ss[int(np.argmax(f1))]


def bagged_rule(y, s, rng, resamples: int = 25):
    picks = [argmax_rule(y[i], s[i], rng) for i in (rng.integers(0, len(y), len(y)) for _ in range(resamples))]
    return float(np.median(picks))


def smoothed_rule(y, s, rng, width: int = 9):
    ss, f1 = macro_f1_curve(y, s)
    return ss[int(np.argmax(np.convolve(f1, np.ones(width) / width, mode="same")))]


RULES = {"argmax (shipped)": argmax_rule, "bagged": bagged_rule, "smoothed": smoothed_rule}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("engines", nargs="+", help="engine files ('default' = the packaged one)")
    ap.add_argument("--splits", type=int, default=40, help="random split-halves per engine and view count")
    ap.add_argument("--cache", default=".cache/mergerscan")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default=str(result_path("threshold_rules.json")))
    a = ap.parse_args()
    from mergerscan.engines import default_engine_path
    from mergerscan.training.calibrate import mean_of_views
    from mergerscan.training.data import build_labelled_set
    from mergerscan.training.evaluate import per_class

    data = build_labelled_set(str(need(shared_data("sdss-gz-mergers", "catalog.csv"))), cache=a.cache)
    y = data.table["label"].to_numpy()[data.indices("val")].astype(int)
    rng = np.random.default_rng(0)
    held_out = {k: [] for k in RULES}
    for e in a.engines:
        path = default_engine_path() if e == "default" else Path(e)
        z = view_logits(path, data, Path(a.cache) if a.cache else None, a.threads)["val"]
        for views in VIEW_COUNTS:
            s = mean_of_views(z, views)
            for _ in range(a.splits):
                half = np.zeros(len(y), bool)
                for c in (0, 1):  # stratified: each half keeps the class balance
                    idx = np.flatnonzero(y == c)
                    half[rng.choice(idx, len(idx) // 2, replace=False)] = True
                for pick, score in ((half, ~half), (~half, half)):
                    for name, rule in RULES.items():
                        t = rule(y[pick], s[pick], rng)
                        held_out[name].append(per_class(y[score], s[score], t)["macro"]["f1"])
    base = np.array(held_out["argmax (shipped)"])
    rows = {}
    for name, v in held_out.items():
        d = np.array(v) - base
        # the halves overlap across repeats, so this standard error is a lower bound
        rows[name] = {
            "mean_held_out_macro_f1": round(float(np.mean(v)), 5),
            "gain_vs_shipped": round(float(d.mean()), 5),
            "gain_se_lower_bound": round(float(d.std() / np.sqrt(len(d))), 5),
        }
        print(name, rows[name], flush=True)
    write_result(
        a.out,
        {
            "machine": cpu_model(),
            "engines": a.engines,
            "view_counts": list(VIEW_COUNTS),
            "split_halves_per_engine_and_view_count": 2 * a.splits,
            "held_out_halves": len(base),
            "validation_objects": len(y),
            "rules": rows,
        },
    )


if __name__ == "__main__":
    main()
