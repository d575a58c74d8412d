"""Command lines: ``process-catalog`` and ``mergerscan <verb>``."""

from __future__ import annotations

import argparse
import sys


def _train_parser(sub):
    p = sub.add_parser("train", help="train a model (E1 scratch / E2 transfer) and export an engine")
    p.add_argument("--arch", default="efficientnet_lite0")
    p.add_argument("--experiment", default="e2", choices=["e1", "e2"])
    p.add_argument("--size", dest="input_size", type=int, default=128, help="model input size (px)")
    p.add_argument("--lr", type=float, default=0.02, help="E1 SGD learning rate")
    p.add_argument("--weights", help="ImageNet weights file for --experiment e2")
    p.add_argument("--int8", action="store_true", help="also export a static INT8 model and measure it")
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
    return _training_options(p, "E1 epochs, or E2 fine-tune epochs")


def _finetune_parser(sub):
    p = sub.add_parser(
        "finetune",
        help="fine-tune an engine (default: the packaged one) on your own 0/1 labels: a new head, "
        "the last blocks unfrozen, the engine's preprocessing; exports OUT/model.onnx",
    )
    p.add_argument(
        "--from",
        dest="source",
        default="default",
        metavar="ENGINE",
        help="engine file to start from (default: default)",
    )
    return _training_options(p, "phase-2 epochs (last blocks unfrozen, SGD)")


def _training_options(p, epochs_help: str):
    """The options train and finetune share (resume, data, schedule, runtime)."""
    p.add_argument(
        "--catalog", help="labelled catalog (CSV/FITS/Parquet) with id, ra, dec, image and the label (required)"
    )
    p.add_argument("--out", help="run directory (model.onnx, metrics.json, plots, checkpoint.pt) (required)")
    p.add_argument(
        "--resume",
        metavar="RUN_DIR",
        help="continue the stopped run in RUN_DIR from its last "
        "checkpoint, with RUN_DIR's configuration (options given with it must match)",
    )
    p.add_argument("--label-column", default="is_merger", help="the catalog's 0/1 label column (default is_merger)")
    p.add_argument("--split-column", help="the catalog's own train/val/test column (checked object-disjoint)")
    p.add_argument(
        "--train-labels", type=int, metavar="N", help="train on N training rows, stratified (learning curves)"
    )
    p.add_argument("--epochs", type=int, default=8, help=epochs_help)
    p.add_argument("--epochs-top", type=int, default=2, help="E2 phase-1 epochs (frozen base, Adam)")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--lr-top", type=float, default=1e-3)
    p.add_argument("--lr-finetune", type=float, default=5e-3)
    p.add_argument("--unfreeze-blocks", type=int, default=4)
    p.add_argument("--seed", type=int, default=0, help="weight init, batch order and augmentation")
    p.add_argument("--split-seed", type=int, default=0, help="train/val/test split (keep it fixed to compare seeds)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--limit-per-class", type=int, help="use a small subset (smoke tests)")
    p.add_argument("--cache", default=".cache/mergerscan", help="decoded-image cache directory")
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
        "report", help="HTML report of a process-catalog run (summary.json) or a training run (metrics.json)"
    )
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
        ap.exit(
            2,
            f"mergerscan report: error: {d} has neither summary.json (process-catalog run) "
            "nor metrics.json (training run)\n",
        )
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


def _similar_parser(sub):
    p = sub.add_parser(
        "similar",
        help="the k rows of a run nearest to one object by embedding (faiss index cached under OUT/similar), "
        "with an HTML gallery of their cutouts",
    )
    p.add_argument("out", help="process-catalog OUT directory whose output has an embedding column")
    q = p.add_mutually_exclusive_group(required=True)
    q.add_argument("--like", metavar="ID", help="the id (the run's id column) of a row of the run")
    q.add_argument("--like-file", metavar="STAMP", help="a stamp image (the engine's size) not in the catalog")
    p.add_argument("--k", type=int, default=20, help="neighbours to return (default 20)")
    p.add_argument("--column", default="embedding", help="the vector column (default embedding)")
    p.add_argument("--rebuild", action="store_true", help="rebuild the cached index")
    p.add_argument("--html", help="write the gallery here (default OUT/similar/like-<ID>.html)")
    p.add_argument("--no-html", action="store_true", help="print the neighbours only")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    return p


def _similar(ap, a):
    import json

    from .similar import SimilarError, similar, write_page

    try:
        res = similar(a.out, a.like, like_file=a.like_file, k=a.k, column=a.column, rebuild=a.rebuild)
    except (SimilarError, FileNotFoundError) as exc:
        ap.exit(2, f"mergerscan similar: error: {exc}\n")
    page = None if a.no_html else write_page(res, a.html)
    if a.json:
        print(json.dumps(res.to_dict() | {"html": str(page) if page else None}, default=str))
        return
    ix = res.index
    print(
        f"# index: {ix['kind']} {ix['factory']}, {ix['rows']:,} rows of {ix['dim']}-d {ix['column']!r}"
        f"{' (built now)' if res.built_now else ' (cached)'}"
    )
    cols = [c for c in ("rank", "distance", "id", "ra", "dec", "p_merger", "status") if c in res.neighbours]
    print(res.neighbours[cols].to_string(index=False, float_format=lambda v: f"{v:.6g}"))
    if page:
        print(page)


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


def main(argv=None):
    ap = argparse.ArgumentParser(prog="mergerscan")
    sub = ap.add_subparsers(dest="verb", required=True)
    train_parser = _train_parser(sub)
    finetune_parser = _finetune_parser(sub)
    _report_parser(sub)
    _samp_parser(sub)
    _calibrate_parser(sub)
    _similar_parser(sub)
    a = ap.parse_args(argv)
    if a.verb == "similar":
        _similar(ap, a)
    if a.verb == "calibrate":
        _calibrate(ap, a)
    if a.verb == "samp":
        _samp(ap, a)
    if a.verb == "report":
        _report(ap, a)
    if a.verb == "train":
        _train(ap, a, train_parser)
    if a.verb == "finetune":
        _train(ap, a, finetune_parser)
    return 0


def _train(ap, a, parser):
    """train and finetune (a fine-tune is an E2 run from the engine's network: training.finetune)."""
    from .models import MissingWeightsError
    from .training.checkpoint import ResumeError, resume_arguments
    from .training.distill import DistillError
    from .training.finetune import finetune_arguments
    from .training.loader import LoaderError
    from .training.train import TrainArguments, run

    kw = {k: v for k, v in vars(a).items() if k not in ("verb", "resume", "source")}
    fail = lambda exc: ap.exit(2, f"mergerscan {a.verb}: error: {exc}\n")
    try:
        if a.resume:  # the run's own configuration; options typed here must agree with it
            given = {k: v for k, v in kw.items() if v != parser.get_default(k)}
            args = TrainArguments(**resume_arguments(a.resume, given))
        elif not (a.catalog and a.out):
            fail("--catalog and --out are required (or --resume RUN_DIR)")
        elif a.verb == "finetune":
            args = finetune_arguments(a.source, **kw)
        else:
            args = TrainArguments(**kw)
    except (ValueError, FileNotFoundError) as exc:
        fail(exc)
    try:
        run(args, resume=bool(a.resume))
    except (MissingWeightsError, ResumeError, LoaderError, DistillError) as exc:
        fail(exc)
    except ValueError as exc:  # a bad label/split column or a source engine that cannot be rebuilt
        fail(exc)


def process_catalog_main(argv=None):
    from .pipeline.cli import main as pc_main

    return pc_main(argv)


if __name__ == "__main__":
    sys.exit(main())
