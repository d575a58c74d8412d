"""Print docs/results.md table rows from training run directories (runs/*/metrics.json).

.venv/bin/python benchmarks/collect_results.py runs/effl0-e2-128 runs/densenet121-e1-64 ...
"""

import json
import sys
from pathlib import Path

print(
    "| arch | exp | px | P merger | R merger | F1 merger | macro F1 | ROC-AUC | PR-AUC | P @ 2 % | ECE | "
    "threshold (val) | train wall | INT8 Δ macro F1 |"
)
print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
for d in sys.argv[1:]:
    m = json.loads((Path(d) / "metrics.json").read_text())
    c, t = m["card"], m["test"]
    dq = m.get("int8_delta_macro_f1")
    print(
        f"| {c['arch']} | {c['experiment'].upper()} | {c['input_size']} | {t['merger']['precision']:.3f} | "
        f"{t['merger']['recall']:.3f} | {t['merger']['f1']:.3f} | **{t['macro']['f1']:.3f}** | "
        f"**{t['roc_auc']:.3f}** | {t['pr_auc']:.3f} | {t['precision_at_2pct']:.3f} | {t['ece']:.3f} | "
        f"{t['threshold']:.3f} | {c['train_seconds'] / 60:.0f} min | {'' if dq is None else f'{dq:+.4f}'} |"
    )
