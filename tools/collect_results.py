"""Print docs/results.md table rows from training run directories (runs/*/metrics.json), then each
run's exact command and hardware (from its card).

.venv/bin/python tools/collect_results.py runs/effl0-e2-128 runs/densenet121-e1-64 ...
Epochs: those run in the last phase / its cap (early stopping: validation loss not improved for
``--patience`` epochs), and the epoch whose weights were kept (best validation ROC-AUC).
"""

import json
import sys
from pathlib import Path


def epochs(run: Path, card: dict) -> str:
    hist = run / "history.json"
    if not hist.is_file():
        return "–"
    rec = [h for h in json.loads(hist.read_text()) if "epoch" in h]
    if not rec:
        return "–"
    last = [h for h in rec if h["phase"] == rec[-1]["phase"]]
    best = max(last, key=lambda h: h["val_roc_auc"])["epoch"]
    cfg = run / "train_config.json"
    if cfg.is_file():
        cap = json.loads(cfg.read_text()).get("epochs")
    else:  # a copy in docs/results: the cap is in the card's command
        words = card.get("command", "").split()
        cap = words[words.index("--epochs") + 1] if "--epochs" in words else None
    top = len(rec) - len(last)
    return f"{f'{top} top + ' if top else ''}{len(last)}/{cap or '?'} (best {best})"


def main(dirs: list[str]) -> None:
    print(
        "| arch | exp | px | epochs | P merger | R merger | F1 merger | macro F1 | ROC-AUC | PR-AUC | P @ 2 % | "
        "ECE | threshold (val) | train wall |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    cards = []
    for d in dirs:
        m = json.loads((Path(d) / "metrics.json").read_text())
        c, t = m["card"], m["test"]
        cards.append((d, c))
        print(
            f"| {c['arch']} | {c['experiment'].upper()} | {c['input_size']} | {epochs(Path(d), c)} | "
            f"{t['merger']['precision']:.3f} | {t['merger']['recall']:.3f} | {t['merger']['f1']:.3f} | "
            f"**{t['macro']['f1']:.3f}** | **{t['roc_auc']:.3f}** | {t['pr_auc']:.3f} | "
            f"{t['precision_at_2pct']:.3f} | {t['ece']:.3f} | {t['threshold']:.3f} | {c['train_seconds'] / 60:.0f} min |"
        )
    for d, c in cards:
        print(f"\n{d}: {c.get('hardware', '?')}\n    {c.get('command', '?')}")


if __name__ == "__main__":
    main(sys.argv[1:])
