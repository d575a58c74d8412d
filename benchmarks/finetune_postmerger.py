"""Issue 38's worked example: post-mergers (Darg stage 3) against interacting pairs (stages 1-2)
among the shared mergers, learning curves at 50 / 100 / all training labels, fine-tuned from the
shipped engine (``mergerscan finetune --from default``) against E2 from ImageNet (``mergerscan
train``, EfficientNet-Lite0 at the default engine's 224 px), same schedule, same split.

The split is the shipped engine's own (the study's seed-0 object-disjoint split of the whole shared
catalog, restricted to the 2,420 staged mergers): the test objects were in the engine's test split,
so neither start has seen them.  The 50 / 100 subsets are drawn from the training part, stratified
(``--train-labels``).  Runs go one at a time, each resumable (a killed run continues from its last
epoch when the script is run again); ROC-AUC and PR-AUC on the test part with stratified-bootstrap
95 % intervals go to ``benchmarks/results/finetune-postmerger.json``.

    nohup nice -n 15 python benchmarks/finetune_postmerger.py --work runs/postmerger > runs/postmerger.log 2>&1 &
    python benchmarks/finetune_postmerger.py --work runs/postmerger --summarize   # the table, from what finished
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

from _common import REPO, RESULTS, need, shared_data
from mergerscan.atomic import atomic_write_json, atomic_write_text
from mergerscan.training import evaluate as ev
from mergerscan.training.data import read_labelled_catalog, with_splits

SIZES = (50, 100, None)  # training labels (None: all)
STARTS = ("engine", "imagenet")
SCHEDULE = ["--epochs-top", "1", "--epochs", "2", "--unfreeze-blocks", "2", "--batch-size", "32", "--threads", "2"]


def write_labels(shared: Path, path: Path) -> Path:
    """The staged mergers with post_merger (stage 3) and the shipped engine's own split."""
    cat = shared / "catalog.csv"
    full = pd.read_csv(cat)
    full["split"] = with_splits(read_labelled_catalog(cat), seed=0)["split"].to_numpy()
    m = full[full["darg_stage"].isin([1, 2, 3])].copy()
    m["post_merger"] = (m["darg_stage"] == 3).astype(int)
    m["image"] = [str((shared / p).resolve()) for p in m["image"]]
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, m.to_csv(index=False))
    return path


def command(start: str, labels: Path, out: Path, n: int | None, cache: Path) -> list[str]:
    common = ["--catalog", str(labels), "--label-column", "post_merger", "--split-column", "split"]
    common += SCHEDULE + ["--cache", str(cache), "--out", str(out)] + (["--train-labels", str(n)] if n else [])
    if start == "engine":
        return ["finetune", "--from", "default", *common]
    return ["train", "--arch", "efficientnet_lite0", "--experiment", "e2", "--size", "224", *common]


def run_one(argv: list[str], out: Path) -> float | None:
    """Run (or resume) one training; its wall seconds this invocation, None if already finished."""
    if (out / "metrics.json").is_file():
        return None
    if (out / "checkpoint.pt").is_file():
        argv = [argv[0], "--resume", str(out), "--threads", "2", "--cache", argv[argv.index("--cache") + 1]]
    t0 = time.time()
    print(f"[{time.strftime('%H:%M:%S')}] mergerscan {' '.join(argv)}", flush=True)
    subprocess.run([sys.executable, "-m", "mergerscan.cli", *argv], check=True)
    return time.time() - t0


def bootstrap(y: np.ndarray, p: np.ndarray, n_boot: int = 2000, seed: int = 0) -> dict:
    """ROC-AUC and PR-AUC with stratified-bootstrap 95 % intervals (classes resampled apart)."""
    rng = np.random.default_rng(seed)
    pos, neg = np.flatnonzero(y == 1), np.flatnonzero(y == 0)
    out = {"roc_auc": [ev.roc_auc(y, p)], "pr_auc": [ev.average_precision(y, p)]}
    boots: dict[str, list[float]] = {"roc_auc": [], "pr_auc": []}
    for _ in range(n_boot):
        i = np.concatenate([rng.choice(pos, len(pos)), rng.choice(neg, len(neg))])
        boots["roc_auc"].append(ev.roc_auc(y[i], p[i]))
        boots["pr_auc"].append(ev.average_precision(y[i], p[i]))
    return {k: [round(out[k][0], 4), *np.round(np.percentile(boots[k], [2.5, 97.5]), 4).tolist()] for k in boots}


def summarize(work: Path) -> dict:
    rows = []
    for start in STARTS:
        for n in SIZES:
            out = work / f"{start}-{n or 'all'}"
            if not (out / "metrics.json").is_file():
                continue
            m = json.loads((out / "metrics.json").read_text())
            s = np.load(out / "test_scores.npz", allow_pickle=False)
            wall = json.loads((out / "wall.json").read_text()) if (out / "wall.json").is_file() else {}
            rows.append(
                {
                    "start": start,
                    "train_labels": m["card"]["n_train"],
                    "train_post_mergers": next(
                        h["train_mergers"]
                        for h in json.loads((out / "history.json").read_text())
                        if "train_mergers" in h
                    ),
                    "n_test": len(s["y"]),
                    "test_post_mergers": int(s["y"].sum()),
                    **bootstrap(s["y"], s["p"]),
                    "train_seconds": m["card"]["train_seconds"],
                    "wall_seconds": wall.get("seconds"),
                    "command": "mergerscan " + " ".join(wall.get("argv", [])),
                }
            )
    res = {
        "question": "post-merger (Darg stage 3) vs interacting pair (stages 1-2), shared SDSS mergers",
        "split": "the shipped engine's seed-0 object-disjoint split of the whole catalog, restricted to stages 1-3",
        "intervals": "stratified bootstrap, 2000 resamples of the test part, 95 % percentile interval",
        "cpu": "2-core AMD EPYC (AVX-512, avx512_bf16), shared with about 7 other jobs: wall times are upper bounds",
        "runs": rows,
    }
    atomic_write_json(RESULTS / "finetune-postmerger.json", res, indent=1)
    if rows:
        plot(rows, RESULTS / "finetune-postmerger.png")
    return res


def plot(rows: list[dict], path: Path) -> None:
    """Learning curves: test ROC-AUC and PR-AUC against training labels, one line a start."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from mergerscan.atomic import atomic_path

    fig, axes = plt.subplots(1, 2, figsize=(9, 3.6))
    for ax, key in zip(axes, ("roc_auc", "pr_auc")):
        for start, colour in zip(STARTS, ("C0", "C1")):
            rs = sorted((r for r in rows if r["start"] == start), key=lambda r: r["train_labels"])
            if not rs:
                continue
            x = [r["train_labels"] for r in rs]
            v = np.array([r[key] for r in rs])
            ax.errorbar(
                x,
                v[:, 0],
                yerr=[v[:, 0] - v[:, 1], v[:, 2] - v[:, 0]],
                marker="o",
                capsize=3,
                color=colour,
                label="from the shipped engine" if start == "engine" else "from ImageNet",
            )
        ax.set(xscale="log", xlabel="training labels", ylabel=f"test {key.replace('_', '-').upper()}")
        ticks = sorted({r["train_labels"] for r in rows})
        ax.set_xticks(ticks, [str(t) for t in ticks])
        ax.minorticks_off()
        ax.grid(alpha=0.3)
    axes[1].axhline(rows[0]["test_post_mergers"] / rows[0]["n_test"], color="grey", ls="--", lw=1, label="chance")
    axes[0].axhline(0.5, color="grey", ls="--", lw=1)
    axes[1].legend(fontsize=8)
    fig.suptitle("Post-mergers (Darg stage 3) against pairs (stages 1-2), test split, 95 % bootstrap", fontsize=10)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--work", default=str(REPO / "runs" / "postmerger"))
    ap.add_argument("--summarize", action="store_true", help="only write the results from the finished runs")
    a = ap.parse_args(argv)
    work = Path(a.work).resolve()
    labels = work / "labels.csv"
    if not a.summarize:
        if not labels.is_file():
            write_labels(need(shared_data("sdss-gz-mergers")), labels)
        for n in SIZES:
            for start in STARTS:
                out = work / f"{start}-{n or 'all'}"
                argv_ = command(start, labels, out, n, work / "cache")
                seconds = run_one(argv_, out)
                if seconds is not None:
                    prev = json.loads((out / "wall.json").read_text()) if (out / "wall.json").is_file() else {}
                    total = prev.get("seconds", 0) + seconds
                    atomic_write_json(out / "wall.json", {"seconds": round(total, 1), "argv": argv_}, indent=1)
    print(markdown(summarize(work)["runs"]))
    return 0


def markdown(runs: list[dict]) -> str:
    """The docs/results.md table: one row a run, value [95 % interval]."""
    head = "| start | training labels (post-mergers) | test ROC-AUC [95 %] | test PR-AUC [95 %] | train s | wall s |\n"
    head += "|---|---|---|---|---|---|\n"
    fmt = lambda v: f"{v[0]:.3f} [{v[1]:.3f}, {v[2]:.3f}]"
    return head + "\n".join(
        f"| {'shipped engine' if r['start'] == 'engine' else 'ImageNet'} | {r['train_labels']} ({r['train_post_mergers']}) "
        f"| {fmt(r['roc_auc'])} | {fmt(r['pr_auc'])} | {r['train_seconds']:.0f} | {r['wall_seconds'] or 0:.0f} |"
        for r in runs
    )


if __name__ == "__main__":
    sys.exit(main())
