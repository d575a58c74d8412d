"""Test-time augmentation for an engine file: a thin caller of ``mergerscan calibrate`` (the
package's :mod:`mergerscan.training.calibrate`, which makes the shipped engine's card).

Mean logit over 1, 2, 4 or 8 dihedral views of each stamp, temperature and threshold refitted on
the validation split for each count, then evaluated once on the object-disjoint test split.

    .venv/bin/python benchmarks/eval_tta.py runs/effl0-e2-160/model.onnx [--write ENGINE_OUT]
Writes benchmarks/results/tta-<engine name>.json.  ``--write``: the calibrated copy of the engine
(card: "by_views" per count, default "views" = best validation macro F1); the same as
``mergerscan calibrate ENGINE --data $MERGERSCAN_SHARED/data/sdss-gz-mergers -o ENGINE_OUT``.
Needs the shared data.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from _common import need, result_path, shared_data, write_result


def main():
    from mergerscan.training.calibrate import calibrate_engine

    ap = argparse.ArgumentParser()
    ap.add_argument("engine")
    ap.add_argument("--out")
    ap.add_argument("--write", metavar="ENGINE_OUT")
    ap.add_argument("--threads", type=int, default=2)
    a = ap.parse_args()
    catalog = need(shared_data("sdss-gz-mergers", "catalog.csv"))
    with tempfile.TemporaryDirectory() as tmp:
        res = calibrate_engine(a.engine, catalog, a.write or Path(tmp) / "calibrated.onnx", threads=a.threads)
    for n in (1, 2, 4, 8):
        r, mt = res[f"views_{n}"], res[f"views_{n}"]["test"]
        print(
            f"{n} view(s): val macro F1 {r['val_macro_f1']:.4f} | test macro F1 {mt['macro']['f1']:.4f} "
            f"F1(merger) {mt['merger']['f1']:.4f} ROC-AUC {mt['roc_auc']:.4f} P@2% {mt['precision_at_2pct']:.3f}"
        )
    write_result(a.out or result_path(f"tta-{res['engine']}.json"), res)
    if a.write:
        print(f"wrote {a.write}: default {res['default_views']} view(s)")


if __name__ == "__main__":
    main()
