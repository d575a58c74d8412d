"""Test-time augmentation for an engine file: mean logit over 1, 2, 4 or 8 dihedral views
(identity, flips, 90-degree rotations; ``mergerscan.engines.base.dihedral_views``, the code the
engines run) of each stamp, temperature and threshold refitted on the validation split for each
count, then evaluated once on the object-disjoint test split.

    .venv/bin/python benchmarks/eval_tta.py runs/effl0-e2-160/model.onnx [--write ENGINE_OUT]
Writes benchmarks/results/tta-<engine name>.json.  ``--write``: a copy of the engine whose card
carries, per view count, the validation-fitted temperature and threshold and the test metrics
("by_views"), and as default ("views") the count with the best validation macro F1.  Needs
../shared/data.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
GZ = HERE.parent.parent / "shared" / "data" / "sdss-gz-mergers"


def main():
    from mergerscan.cutouts.preprocess import prepare_batch
    from mergerscan.engines import load_engine
    from mergerscan.engines.base import VIEWS, dihedral_views
    from mergerscan.training import evaluate as ev
    from mergerscan.training.data import build_labelled_set

    ap = argparse.ArgumentParser()
    ap.add_argument("engine")
    ap.add_argument("--out")
    ap.add_argument("--write", metavar="ENGINE_OUT")
    ap.add_argument("--threads", type=int, default=2)
    a = ap.parse_args()
    eng = load_engine(a.engine, threads=a.threads, views=1)
    ds = build_labelled_set(GZ / "catalog.csv")
    t = ds.table
    res = {"engine": eng.info.name, "data_hash": ds.data_hash}
    z = {}
    for split in ("val", "test"):
        idx = np.flatnonzero(t["split"].to_numpy() == split)
        out = []
        for i in range(0, len(idx), 32):
            x = prepare_batch(ds.stamps[idx[i:i + 32]], eng.spec)
            out.append(eng.logits(dihedral_views(x, 8)).reshape(8, len(x)))
        z[split] = (t["label"].to_numpy()[idx], np.concatenate(out, axis=1))    # (8, n) in VIEWS[8] order
    order = VIEWS[8]
    for n, views in VIEWS.items():
        sel = [order.index(v) for v in views]
        yv, zv = z["val"][0], z["val"][1][sel].mean(0)
        yt, zt = z["test"][0], z["test"][1][sel].mean(0)
        temp = ev.fit_temperature(yv, zv)
        pv, pt = ev._sigmoid(zv / temp), ev._sigmoid(zt / temp)
        thr = ev.choose_threshold(yv, pv)
        mv, mt = ev.summarize(yv, pv, thr), ev.summarize(yt, pt, thr)
        res[f"views_{n}"] = {"temperature": float(temp), "threshold": round(float(thr), 4),
                             "val_macro_f1": mv["macro"]["f1"], "test": mt}
        print(f"{n} view(s): val macro F1 {mv['macro']['f1']:.4f} | test macro F1 {mt['macro']['f1']:.4f} "
              f"F1(merger) {mt['merger']['f1']:.4f} ROC-AUC {mt['roc_auc']:.4f} P@2% {mt['precision_at_2pct']:.3f}")
    out = Path(a.out or HERE / "results" / f"tta-{eng.info.name}.json")
    out.write_text(json.dumps(res, indent=1, default=float))
    if a.write:
        from mergerscan.training.export import update_metadata
        best = max(VIEWS, key=lambda n: (round(res[f"views_{n}"]["val_macro_f1"], 4), -n))
        by = {}
        for n in VIEWS:
            r, m = res[f"views_{n}"], res[f"views_{n}"]["test"]
            by[str(n)] = {"temperature": r["temperature"], "threshold": r["threshold"],
                          "val_macro_f1": round(r["val_macro_f1"], 4),
                          "test": {"macro_f1": round(m["macro"]["f1"], 4), "merger_f1": round(m["merger"]["f1"], 4),
                                   "roc_auc": round(m["roc_auc"], 4), "pr_auc": round(m["pr_auc"], 4),
                                   "precision_at_2pct": round(m["precision_at_2pct"], 4)}}
        b, m = by[str(best)], res[f"views_{best}"]["test"]
        metrics = {"roc_auc": m["roc_auc"], "pr_auc": m["pr_auc"], "precision_at_2pct": m["precision_at_2pct"],
                   "ece": m["ece"], "threshold": b["threshold"], "macro_f1": m["macro"]["f1"],
                   "merger_f1": m["merger"]["f1"], "merger_precision": m["merger"]["precision"],
                   "merger_recall": m["merger"]["recall"], "views": best}
        update_metadata(a.engine, a.write, card_updates={
            "metrics_test": metrics, "views": best, "by_views": by, "threshold": b["threshold"], "temperature": b["temperature"],
            "views_rule": "test-time views: mean logit over the dihedral views; count = best validation macro F1"})
        print(f"wrote {a.write}: default {best} view(s)")


if __name__ == "__main__":
    main()
