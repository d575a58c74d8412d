"""Command lines: ``process-catalog`` and ``mergerscan <verb>``."""

from __future__ import annotations

import argparse
import sys


def _train_parser(sub):
    p = sub.add_parser("train", help="train a model (E1 scratch / E2 transfer) and export an engine")
    p.add_argument("--catalog", required=True, help="labelled catalog (CSV/FITS/Parquet) with is_merger and image")
    p.add_argument("--out", required=True, help="run directory (model.onnx, metrics.json, plots)")
    p.add_argument("--arch", default="efficientnet_lite0")
    p.add_argument("--experiment", default="e2", choices=["e1", "e2"])
    p.add_argument("--size", dest="input_size", type=int, default=128, help="model input size (px)")
    p.add_argument("--epochs", type=int, default=8, help="E1 epochs, or E2 fine-tune epochs")
    p.add_argument("--epochs-top", type=int, default=2, help="E2 phase-1 epochs (frozen base, Adam)")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--lr", type=float, default=0.02, help="E1 SGD learning rate")
    p.add_argument("--lr-top", type=float, default=1e-3)
    p.add_argument("--lr-finetune", type=float, default=5e-3)
    p.add_argument("--unfreeze-blocks", type=int, default=4)
    p.add_argument("--weights", help="ImageNet weights file for --experiment e2")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--limit-per-class", type=int, help="use a small subset (smoke tests)")
    p.add_argument("--cache", default=".cache/mergerscan", help="decoded-image cache directory")
    p.add_argument("--int8", action="store_true", help="also export a static INT8 model and measure it")
    p.add_argument("--name")
    return p


def _report_parser(sub):
    p = sub.add_parser("report", help="HTML report of a process-catalog run (summary.json) or a training run (metrics.json)")
    p.add_argument("run", help="run directory: process-catalog OUT or a training --out")
    p.add_argument("--top-n", type=int, default=24, help="mergers in the top gallery")
    p.add_argument("--borderline-n", type=int, default=12, help="objects near the threshold in the borderline gallery")
    return p


def _report(ap, a):
    from pathlib import Path

    from .run_layout import RunLayout
    d = Path(a.run)
    if RunLayout(d).summary.is_file():
        from .report import build_report
        path = build_report(d, top_n=a.top_n, borderline_n=a.borderline_n)
    elif (d / "metrics.json").is_file():
        from .report import build_training_report
        path = build_training_report(d)
    else:
        ap.exit(2, f"mergerscan report: error: {d} has neither summary.json (process-catalog run) "
                   "nor metrics.json (training run)\n")
    print(path)


def _samp_parser(sub):
    p = sub.add_parser("samp", help="send a run's FITS table to TOPCAT (or any SAMP client) over SAMP")
    p.add_argument("run", help="process-catalog OUT directory (sends OUT/mergers.fits) or a FITS file")
    p.add_argument("--name", help="table name shown in TOPCAT (default: '<OUT> mergers')")
    return p


def _samp(ap, a):
    from .samp import SampError, send_table
    try:
        names = send_table(a.run, name=a.name)
    except SampError as exc:
        ap.exit(1, f"mergerscan samp: {exc}\n")
    print(f"mergerscan samp: sent to {', '.join(names)}")


def main(argv=None):
    ap = argparse.ArgumentParser(prog="mergerscan")
    sub = ap.add_subparsers(dest="verb", required=True)
    _train_parser(sub)
    _report_parser(sub)
    _samp_parser(sub)
    a = ap.parse_args(argv)
    if a.verb == "samp":
        _samp(ap, a)
    if a.verb == "report":
        _report(ap, a)
    if a.verb == "train":
        from .training.train import TrainArguments, run
        kw = {k: v for k, v in vars(a).items() if k != "verb"}
        try:
            args = TrainArguments(**kw)
        except (ValueError, FileNotFoundError) as exc:
            ap.exit(2, f"mergerscan train: error: {exc}\n")
        from .training.models import MissingWeightsError
        try:
            run(args)
        except MissingWeightsError as exc:
            ap.exit(2, f"mergerscan train: error: {exc}\n")
    return 0


def process_catalog_main(argv=None):
    from .pipeline.cli import main as pc_main
    return pc_main(argv)


if __name__ == "__main__":
    sys.exit(main())
