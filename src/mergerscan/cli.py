"""Command lines: ``process-catalog`` and ``mergerscan <verb>``."""

from __future__ import annotations

import argparse
import sys


def _train_parser(sub):
    p = sub.add_parser("train", help="train a model (E1 scratch / E2 transfer) and export an engine")
    p.add_argument("--catalog", help="labelled catalog (CSV/FITS/Parquet) with is_merger and image (required)")
    p.add_argument("--out", help="run directory (model.onnx, metrics.json, plots, checkpoint.pt) (required)")
    p.add_argument(
        "--resume",
        metavar="RUN_DIR",
        help="continue the stopped run in RUN_DIR from its last "
        "checkpoint, with RUN_DIR's configuration (options given with it must match)",
    )
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
    p.add_argument("--seed", type=int, default=0, help="weight init, batch order and augmentation")
    p.add_argument("--split-seed", type=int, default=0, help="train/val/test split (keep it fixed to compare seeds)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--limit-per-class", type=int, help="use a small subset (smoke tests)")
    p.add_argument("--cache", default=".cache/mergerscan", help="decoded-image cache directory")
    p.add_argument("--int8", action="store_true", help="also export a static INT8 model and measure it")
    p.add_argument("--name")
    p.add_argument(
        "--patience",
        type=int,
        default=0,
        help="end a phase when validation loss has not improved for N epochs (0: run every epoch)",
    )
    p.add_argument(
        "--bf16",
        default="auto",
        choices=["auto", "on", "off"],
        help="bf16 autocast + channels_last: auto = where the CPU has AVX512-BF16 or AMX",
    )
    p.add_argument("--prefetch", type=int, default=2, help="batches prepared ahead in the loader thread (0: none)")
    p.add_argument(
        "--stop-after-epochs",
        type=int,
        metavar="N",
        help="stop this invocation after N epochs, leaving a checkpoint for --resume",
    )
    p.add_argument(
        "--no-export",
        dest="export",
        action="store_false",
        help="evaluate but write no ONNX engine file (quicker study runs)",
    )
    p.add_argument(
        "--distill",
        metavar="ENGINE",
        help="teacher engine file (or 'default'): train on its calibrated probabilities mixed with the labels",
    )
    p.add_argument(
        "--distill-weight",
        type=float,
        default=0.5,
        help="share of the teacher in the training target (with --distill; default 0.5)",
    )
    p.add_argument(
        "--ema",
        type=float,
        default=0.0,
        metavar="DECAY",
        help="validate, keep and export an exponential moving average of the weights "
        "(decay per step, e.g. 0.998; default 0: off)",
    )
    p.add_argument(
        "--augment",
        default="standard",
        help="training augmentation: standard (rotation, flip, shift, scale 0.9-1.1, brightness) or survey "
        "(wider shift and scale, plus seeing blur, per-band gain and sky noise)",
    )
    return p


def _report_parser(sub):
    p = sub.add_parser(
        "report",
        help="HTML report of a process-catalog run (summary.json) or a training run (metrics.json)",
        epilog=REPORT_EXIT,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("run", help="run directory: process-catalog OUT or a training --out")
    p.add_argument("--top-n", type=int, default=24, help="mergers in the top gallery")
    p.add_argument("--borderline-n", type=int, default=12, help="objects near the threshold in the borderline gallery")
    return p


REPORT_EXIT = """\
Exit status: 0 the report was written (a figure that could not be drawn is left out with a note on
the page), 1 it could not be written (one line saying why), 2 RUN is not a run directory or its
summary.json / metrics.json is unreadable (one line), 130 interrupted."""


def _report(ap, a):
    import json
    from pathlib import Path

    from .cutouts.redact import redact_text
    from .run_layout import RunLayout

    def fail(status: int, why) -> None:
        ap.exit(status, "mergerscan report: error: " + redact_text(" ".join(str(why).split())) + "\n")

    d = Path(a.run)
    doc = RunLayout(d).summary if RunLayout(d).summary.is_file() else d / "metrics.json"
    if not doc.is_file():
        fail(2, f"{d} has neither summary.json (process-catalog run) nor metrics.json (training run)")
    try:
        json.loads(doc.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        fail(2, f"{doc}: not readable as JSON ({exc})")
    try:
        from .report import build_report, build_training_report

        if doc.name == "summary.json":
            path = build_report(d, top_n=a.top_n, borderline_n=a.borderline_n)
        else:
            path = build_training_report(d)
    except KeyboardInterrupt:
        fail(130, "interrupted")
    except Exception as exc:  # never a traceback: one line, the report's own failure
        fail(1, f"the report of {d} could not be written: {type(exc).__name__}: {exc}")
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


def _calibrate_parser(sub):
    p = sub.add_parser(
        "calibrate",
        help="fit an engine's temperature and threshold per test-time view count on "
        "a labelled catalog's validation split; write a calibrated copy",
    )
    p.add_argument("engine", help="engine file (.onnx)")
    p.add_argument(
        "--data", required=True, help="labelled catalog (is_merger, ra, dec, image) or a directory holding catalog.csv"
    )
    p.add_argument("-o", "--out", required=True, help="the calibrated engine file to write")
    p.add_argument("--views", type=int, nargs="+", default=[1, 2, 4, 8], help="view counts to calibrate")
    p.add_argument(
        "--default-views",
        type=int,
        help="the card's default view count (one of --views), e.g. 1 for a CPU-cost budget; "
        "default: the count with the best validation macro F1",
    )
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--split-seed", "--seed", dest="split_seed", type=int, default=0, help="split seed (as training's)")
    p.add_argument("--cache", default=".cache/mergerscan", help="decoded-image cache directory")
    p.add_argument("--limit-per-class", type=int, help="use a small subset (smoke tests)")
    p.add_argument("--results", help="also write the per-view summary (JSON) here")
    p.add_argument(
        "--eval-dir",
        help="also write an evaluation directory for the default view count (metrics.json with the survey "
        "prevalence table and the worst failures, plots, test scores): `mergerscan report DIR` shows it",
    )
    return p


def _calibrate(ap, a):
    import json
    from pathlib import Path

    from .atomic import atomic_write_json
    from .training.calibrate import calibrate_engine

    data = Path(a.data) / "catalog.csv" if Path(a.data).is_dir() else Path(a.data)
    for what, path in (("ENGINE", Path(a.engine)), ("--data", data)):
        if not path.is_file():
            ap.exit(2, f"mergerscan calibrate: error: {what} {path}: no such file\n")
    try:
        res = calibrate_engine(
            a.engine,
            data,
            a.out,
            views=a.views,
            threads=a.threads,
            cache=a.cache,
            split_seed=a.split_seed,
            limit_per_class=a.limit_per_class,
            eval_dir=a.eval_dir,
            default_views=a.default_views,
        )
    except ValueError as exc:
        ap.exit(2, f"mergerscan calibrate: error: {exc}\n")
    if a.results:
        atomic_write_json(a.results, res, indent=1, default=float)
    for n in a.views:
        r = res[f"views_{n}"]
        print(
            f"{n} view(s): T {r['temperature']:.3f} threshold {r['threshold']:.4f} | val macro F1 "
            f"{r['val_macro_f1']:.4f} | test macro F1 {r['test']['macro']['f1']:.4f}"
        )
    print(json.dumps({"out": res["out"], "default_views": res["default_views"]}))


def _curve_parser(sub):
    p = sub.add_parser(
        "operating-curve",
        help="score a labelled catalog's validation split with an engine at each calibrated view count and "
        "write the validation operating curve into its card (metadata only; process-catalog --purity reads it)",
    )
    p.add_argument("engine", help="engine file (.onnx)")
    p.add_argument(
        "--data", required=True, help="labelled catalog (is_merger, ra, dec, image) or a directory holding catalog.csv"
    )
    p.add_argument("-o", "--out", help="the engine file to write (default: ENGINE, in place)")
    p.add_argument("--split-seed", type=int, default=0, help="split seed (as training's; the card's split)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--cache", default=".cache/mergerscan", help="decoded-image and validation-logit cache directory")


def _curve(ap, a):
    import json
    from pathlib import Path

    from .training.operating_curve import write_operating_curve

    data = Path(a.data) / "catalog.csv" if Path(a.data).is_dir() else Path(a.data)
    for what, path in (("ENGINE", Path(a.engine)), ("--data", data)):
        if not path.is_file():
            ap.exit(2, f"mergerscan operating-curve: error: {what} {path}: no such file\n")
    try:
        res = write_operating_curve(a.engine, data, a.out, a.split_seed, a.cache, a.threads)
    except ValueError as exc:
        ap.exit(2, f"mergerscan operating-curve: error: {exc}\n")
    print(json.dumps(res))


def _engine_info_parser(sub):
    p = sub.add_parser("engine-info", help="what an engine file says about itself: card, threshold, training domain")
    p.add_argument("engine", nargs="?", help="engine file (.onnx); default: the packaged engine")
    p.add_argument("--json", action="store_true", help="the whole card as JSON")
    return p


def engine_info_lines(info) -> list[str]:
    """``mergerscan engine-info``'s text: identity, operating point, training, domain, test metrics."""
    card, dom = info.card, info.domain
    m = card.get("metrics_test") or {}
    sel = dom.selection
    lines = [
        f"engine        {info.name}",
        f"file          {info.path}",
        f"sha256        {info.sha256}",
        f"model         {card.get('arch', '?')}, {info.spec.input_size} px input, "
        f"{info.spec.stamp_pixels} px stamps at {info.spec.pixel_scale:g} arcsec/px",
        f"operating     {info.views} view(s): threshold {info.threshold:.4f}, temperature {info.temperature:.4f}",
        f"training      {card.get('labels', '?')}; catalog {card.get('catalog', '?')}, "
        f"{card.get('n_train', '?')} train / {card.get('n_val', '?')} val / {card.get('n_test', '?')} test",
        "domain        " + (sel.describe() if sel else "no training selection recorded"),
    ]
    if sel and sel.reference:
        lines.append(f"              from: {sel.reference}")
    lines.append(
        "image check   "
        + (
            f"{dom.image.score} <= {dom.image.threshold:.4g}"
            if dom.image
            else "none (the engine gives no domain_score)"
        )
    )
    from .engines.representation import describe
    from .pipeline.arguments import EMBEDDINGS_DEFAULT

    lines.append("representation " + describe(card, EMBEDDINGS_DEFAULT))
    if m:
        lines.append("test metrics  " + ", ".join(f"{k} {v:.4f}" for k, v in sorted(m.items()) if isinstance(v, float)))
    return lines


def _engine_info(ap, a):
    import json

    from .engines import read_engine_info, resolve_engine_path

    try:
        info = read_engine_info(resolve_engine_path(a.engine))
    except (OSError, ValueError) as exc:
        ap.exit(2, f"mergerscan engine-info: error: {a.engine}: {exc}\n")
    if a.json:
        print(json.dumps({"path": info.path, "sha256": info.sha256, "card": info.card}, indent=1, sort_keys=True))
    else:
        print("\n".join(engine_info_lines(info)))


def main(argv=None):
    ap = argparse.ArgumentParser(prog="mergerscan")
    sub = ap.add_subparsers(dest="verb", required=True)
    train_parser = _train_parser(sub)
    _report_parser(sub)
    _samp_parser(sub)
    _calibrate_parser(sub)
    _curve_parser(sub)
    _engine_info_parser(sub)
    a = ap.parse_args(argv)
    if a.verb == "operating-curve":
        _curve(ap, a)
    if a.verb == "engine-info":
        _engine_info(ap, a)
    if a.verb == "calibrate":
        _calibrate(ap, a)
    if a.verb == "samp":
        _samp(ap, a)
    if a.verb == "report":
        _report(ap, a)
    if a.verb == "train":
        _train(ap, a, train_parser)
    return 0


def _train(ap, a, train_parser):
    from .models import MissingWeightsError
    from .training.checkpoint import ResumeError, resume_arguments
    from .training.distill import DistillError
    from .training.loader import LoaderError
    from .training.train import TrainArguments, run

    kw = {k: v for k, v in vars(a).items() if k not in ("verb", "resume")}
    fail = lambda exc: ap.exit(2, f"mergerscan train: error: {exc}\n")
    try:
        if a.resume:  # the run's own configuration; options typed here must agree with it
            given = {k: v for k, v in kw.items() if v != train_parser.get_default(k)}
            kw = resume_arguments(a.resume, given)
        elif not (a.catalog and a.out):
            fail("--catalog and --out are required (or --resume RUN_DIR)")
        args = TrainArguments(**kw)
    except (ValueError, FileNotFoundError) as exc:
        fail(exc)
    try:
        run(args, resume=bool(a.resume))
    except (MissingWeightsError, ResumeError, LoaderError, DistillError) as exc:
        fail(exc)


def process_catalog_main(argv=None):
    from .pipeline.cli import main as pc_main

    return pc_main(argv)


if __name__ == "__main__":
    sys.exit(main())
