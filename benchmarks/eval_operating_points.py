"""Operating points of the packaged engine, chosen on validation, measured once on test (issue 39.1).

For each target (purity at 2 % and 1 % prevalence, completeness), the threshold is what
``process-catalog --purity/--completeness`` takes (:func:`mergerscan.engines.operating.for_engine`
on the card's validation curve), with the expected purity/completeness and their 95 % intervals
it states; the test split (never used to choose) is then scored at that threshold with
:func:`mergerscan.training.survey.at_threshold` (precision at 2 % as the project measures it,
stratified-bootstrap intervals).  p_merger from eval_ensembles' cached view logits (the card's
temperature, its default view count).

    .venv/bin/python benchmarks/eval_operating_points.py --cache .cache/mergerscan
Writes benchmarks/results/operating_points.json.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from _common import cpu_model, need, result_path, shared_data, write_result
from eval_ensembles import view_logits

TARGETS = [
    {"purity": 0.9, "prevalence": 0.02},
    {"purity": 0.8, "prevalence": 0.02},
    {"purity": 0.95, "prevalence": 0.02},
    {"purity": 0.9, "prevalence": 0.01},
    {"completeness": 0.8},
    {"completeness": 0.9},
    {},  # the card's default threshold, stated at 2 %
]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--cache", default=".cache/mergerscan")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default=str(result_path("operating_points.json")))
    a = ap.parse_args()
    from mergerscan.engines import default_engine_path, operating, read_engine_info
    from mergerscan.engines.base import sigmoid
    from mergerscan.training import survey
    from mergerscan.training.calibrate import mean_of_views
    from mergerscan.training.data import build_labelled_set

    catalog = need(shared_data("sdss-gz-mergers", "catalog.csv"))
    data = build_labelled_set(str(catalog), cache=a.cache)
    path = Path(default_engine_path())
    info = read_engine_info(path)
    z = view_logits(path, data, Path(a.cache) if a.cache else None, a.threads)["test"].astype(np.float64)
    p = sigmoid(mean_of_views(z, info.views) / info.temperature).astype(np.float32)
    y = data.table["label"].to_numpy()[data.indices("test")]
    rows = []
    for t in TARGETS:
        try:
            op = operating.for_engine(info, t.get("purity"), t.get("completeness"), t.get("prevalence", 0.02))
        except operating.OperatingPointError as exc:
            rows.append({"target": t, "refused": str(exc)})
            continue
        m = survey.at_threshold(y, p, np.float32(op.threshold), prevalences=(op.prevalence,))
        key = f"precision_at_{op.prevalence * 100:g}pct"
        rows.append({"target": t, "stated": op.to_dict(), "test": m})
        print(
            f"{op.describe_rule()}: threshold {op.threshold:.4f} (val fp {op.fp}/{op.n_neg}, tp {op.tp}/{op.n_pos}); "
            f"expected purity {op.purity:.3f} {op.to_dict()['expected_purity_ci95']}, test {m[key]:.3f} "
            f"{m[key + '_ci95']}; completeness {op.completeness:.3f} {op.to_dict()['expected_completeness_ci95']}, "
            f"test recall {m['recall']:.3f}, test fp {m['false_positives']}",
            flush=True,
        )
    write_result(
        a.out,
        {
            "machine": {"cpu": cpu_model()},
            "engine": info.name,
            "views": info.views,
            "n_test": len(y),
            "curve_source": info.card.val_curve.source if info.card.val_curve else None,
            "rows": rows,
        },
    )


if __name__ == "__main__":
    main()
