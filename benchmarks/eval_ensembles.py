"""Would an ensemble of engines (each with its own test-time views) beat the default at a CPU budget?

For each engine, the logits of every validation and test stamp under each of the 8 dihedral views
are computed once (cached beside the decoded stamps).  A candidate is one engine at V views or two
engines at (V1, V2) views: its logit is the mean over engines of (mean view logit / that engine's
validation temperature at that count), then the one calibrate -> threshold -> summarise sequence
(:func:`mergerscan.training.evaluate.calibrate_and_summarize`) on validation, test once.  Cost =
conv/matmul FLOPs per object (graph FLOPs per image x views, summed over engines) relative to the
first engine at its card's views.  Within each budget the candidate with the best **validation**
macro F1 is chosen (a rule fixed before looking at test); test figures of every candidate are
written, the chosen ones are printed.

    .venv/bin/python benchmarks/eval_ensembles.py default runs/A/model.onnx runs/B/model.onnx \
        --budgets 1 0.25 --cache .cache/mergerscan
Writes benchmarks/results/ensembles.json.
"""

from __future__ import annotations

import argparse
import hashlib
import itertools
from pathlib import Path

import numpy as np

from _common import cpu_model, labelled_set, result_path, write_result
from mergerscan.bench.engine import onnx_flops

VIEW_COUNTS = (1, 2, 4, 8)


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()[:16]


def view_logits(path: Path, data, cache: Path | None, threads: int) -> dict[str, np.ndarray]:
    """{'val': (8, n_val), 'test': (8, n_test)} logits in the order of VIEWS[8] (cached)."""
    from mergerscan.engines import load_engine
    from mergerscan.training.calibrate import all_view_logits

    key = cache / f"view-logits-{_sha(path)}-{data.data_hash}.npz" if cache else None
    if key is not None and key.is_file():
        with np.load(key) as z:
            return {k: z[k] for k in ("val", "test")}
    eng = load_engine(path, threads=threads, views=1)
    out = {s: all_view_logits(eng, data.stamps[data.indices(s)], views=8) for s in ("val", "test")}
    if key is not None:
        key.parent.mkdir(parents=True, exist_ok=True)
        np.savez(key, **out)
    return out


def _scaled(z: np.ndarray, y_val: np.ndarray, views: int) -> np.ndarray:
    """Mean logit over the ``views``-view set (val then test), divided by its validation temperature."""
    from mergerscan.training.calibrate import mean_of_views
    from mergerscan.training.evaluate import fit_temperature

    m = mean_of_views(z, views)
    return m / fit_temperature(y_val, m[: len(y_val)])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument(
        "engines", nargs="+", help="engine files ('default' = the packaged one); the first is the reference"
    )
    ap.add_argument("--budgets", type=float, nargs="+", default=[1.0, 0.25], help="cost budgets (reference = 1)")
    ap.add_argument("--cache", default=".cache/mergerscan")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default=str(result_path("ensembles.json")))
    a = ap.parse_args()
    from mergerscan.engines import default_engine_path, read_engine_info
    from mergerscan.training.evaluate import calibrate_and_summarize, log_loss

    data = labelled_set(a.cache)
    y = data.table["label"].to_numpy()
    y_val, y_test = y[data.indices("val")], y[data.indices("test")]
    n_val = len(y_val)
    paths = [default_engine_path() if e == "default" else Path(e) for e in a.engines]
    names, flops, logits = [], [], []
    for p in paths:
        info = read_engine_info(p)
        names.append(info.card.name or p.stem)
        flops.append(onnx_flops(str(p), info.spec.input_size))
        z = view_logits(p, data, Path(a.cache) if a.cache else None, a.threads)
        logits.append(np.concatenate([z["val"], z["test"]], axis=1))  # val first, then test
        print(f"{names[-1]}: {flops[-1] / 1e9:.3f} GFLOP per view", flush=True)
    # two runs of one recipe share a card name: tell them apart by where they came from
    twice = {n for n in names if names.count(n) > 1}
    names = [
        f"{n} [{'default' if e == 'default' else p.parent.name}]" if n in twice else n
        for n, e, p in zip(names, a.engines, paths)
    ]
    ref_cost = flops[0] * read_engine_info(paths[0]).views

    # each engine at each view count, scaled once (the pairs reuse them)
    scaled = {(i, v): _scaled(z, y_val, v) for i, z in enumerate(logits) for v in VIEW_COUNTS}
    rows = []
    members = [(i,) for i in range(len(paths))] + list(itertools.combinations(range(len(paths)), 2))
    for group in members:
        for views in itertools.product(VIEW_COUNTS, repeat=len(group)):
            z = np.mean([scaled[i, v] for i, v in zip(group, views)], axis=0)
            cal = calibrate_and_summarize(y_val, z[:n_val], y_test, z[n_val:])
            t = cal.test
            rows.append(
                {
                    "members": [f"{names[i]} x{v}" for i, v in zip(group, views)],
                    "cost": round(sum(flops[i] * v for i, v in zip(group, views)) / ref_cost, 3),
                    "val_macro_f1": round(cal.val["macro"]["f1"], 4),
                    # threshold-free validation measures: how near-ties between single engines were broken
                    "val_roc_auc": round(cal.val["roc_auc"], 4),
                    "val_pr_auc": round(cal.val["pr_auc"], 4),
                    "val_log_loss": round(log_loss(y_val, cal.p_val), 4),
                    "test_macro_f1": round(t["macro"]["f1"], 4),
                    "test_merger_f1": round(t["merger"]["f1"], 4),
                    "test_roc_auc": round(t["roc_auc"], 4),
                    "test_pr_auc": round(t["pr_auc"], 4),
                    "test_precision_at_2pct": round(t["precision_at_2pct"], 4),
                    "test_recall": round(t["merger"]["recall"], 4),
                    "test_false_positives": int(t["confusion"]["fp"]),
                    "threshold": round(float(cal.threshold), 4),
                }
            )
    chosen = {}
    for b in a.budgets:
        within = [r for r in rows if r["cost"] <= b + 1e-9]
        if within:
            best = max(within, key=lambda r: (r["val_macro_f1"], -r["cost"]))
            chosen[str(b)] = best
            print(f"budget {b}: {best}")
    write_result(
        a.out,
        {
            "machine": {"cpu": cpu_model()},
            "engines": [
                {"name": n, "file": str(p), "gflop_per_view": round(f / 1e9, 4)} for n, p, f in zip(names, paths, flops)
            ],
            "reference_cost_gflop": round(ref_cost / 1e9, 4),
            "rule": "within a budget, the best validation macro F1 (ties: cheaper); test evaluated for every row",
            "chosen": chosen,
            "rows": sorted(rows, key=lambda r: r["cost"]),
        },
    )


if __name__ == "__main__":
    main()
