"""The training room's command lines: ``mergerscan train | finetune | calibrate | operating-curve``
(the verbs are registered by :mod:`mergerscan.cli`; shared flag spellings: :mod:`mergerscan.verb_flags`)."""

from __future__ import annotations

import argparse

from ..exit_codes import EXIT_BAD_INPUT, EXIT_FAILED
from ..verb_flags import (
    add_catalog_argument,
    add_engine_option,
    add_output_option,
    catalog_file,
    check_output,
    count,
    default_of,
    engine_file,
    field_values,
    from_namespace,
    os_error_text,
    positive_float,
    positive_int,
    required_output,
)
from .arguments import TrainArguments


def _field(name: str) -> dict:
    """``default=`` TrainArguments' own default (the one place it is written)."""
    return {"default": default_of(TrainArguments, name)}


def train_parser(sub):
    p = sub.add_parser("train", help="train a model (E1 scratch / E2 transfer) and export an engine")
    p.add_argument("--arch", **_field("arch"))
    p.add_argument("--experiment", choices=["e1", "e2"], **_field("experiment"))
    p.add_argument("--size", dest="input_size", type=positive_int, help="model input size (px)", **_field("input_size"))
    p.add_argument("--lr", type=positive_float, help="E1 SGD learning rate", **_field("lr"))
    p.add_argument("--weights", help="ImageNet weights file for --experiment e2")
    p.add_argument("--int8", action="store_true", help="also export a static INT8 model and measure it")
    p.add_argument(
        "--distill",
        metavar="ENGINE",
        help="teacher engine file (or 'default'): train on its calibrated probabilities mixed with the labels",
    )
    p.add_argument(
        "--distill-weight",
        type=positive_float,
        help="share of the teacher in the training target (with --distill; default %(default)s)",
        **_field("distill_weight"),
    )
    return _training_options(p, "E1 epochs, or E2 fine-tune epochs")


def finetune_parser(sub):
    p = sub.add_parser(
        "finetune",
        help="fine-tune an engine (default: the packaged one) on your own 0/1 labels: a new head, "
        "the last blocks unfrozen, the engine's preprocessing; exports OUT/model.onnx",
    )
    p.add_argument(
        "--engine",
        dest="source",
        default="default",
        metavar="FILE",
        help="engine file to start from (default: default, the packaged engine)",
    )
    p.add_argument("--from", dest="source", default=argparse.SUPPRESS, help=argparse.SUPPRESS)  # earlier spelling
    return _training_options(p, "phase-2 epochs (last blocks unfrozen, SGD)")


def _training_options(p, epochs_help: str):
    """The options train and finetune share (the run, the data, the schedule, the runtime); each
    default is TrainArguments' own, and :func:`train` builds TrainArguments from them by field."""
    add_catalog_argument(p, "labelled catalog (CSV/FITS/Parquet) with id, ra, dec, image and the label (required)")
    add_output_option(p, "run directory (model.onnx, metrics.json, plots, checkpoint.pt) (required)")
    p.add_argument(
        "--resume",
        metavar="RUN_DIR",
        help="continue the stopped run in RUN_DIR from its last "
        "checkpoint, with RUN_DIR's configuration (options given with it must match)",
    )
    _data_options(p)
    _schedule_options(p, epochs_help)
    _runtime_options(p)
    return p


def _data_options(p) -> None:
    p.add_argument(
        "--label-column", help="the catalog's 0/1 label column (default %(default)s)", **_field("label_column")
    )
    p.add_argument("--split-column", help="the catalog's own train/val/test column (checked object-disjoint)")
    p.add_argument(
        "--train-labels", type=positive_int, metavar="N", help="train on N training rows, stratified (learning curves)"
    )
    p.add_argument("--seed", type=count, help="weight init, batch order and augmentation", **_field("seed"))
    p.add_argument(
        "--split-seed", type=count, help="train/val/test split (keep it fixed to compare seeds)", **_field("split_seed")
    )
    p.add_argument("--limit-per-class", type=count, help="use a small subset (smoke tests)")
    p.add_argument("--cache", help="decoded-image cache directory", **_field("cache"))
    p.add_argument(
        "--augment",
        help="training augmentation: standard (rotation, flip, shift, scale 0.9-1.1, brightness) or survey "
        "(wider shift and scale, plus seeing blur, per-band gain and sky noise)",
        **_field("augment"),
    )


def _schedule_options(p, epochs_help: str) -> None:
    p.add_argument("--epochs", type=count, help=epochs_help, **_field("epochs"))
    p.add_argument("--epochs-top", type=count, help="E2 phase-1 epochs (frozen base, Adam)", **_field("epochs_top"))
    p.add_argument("--batch-size", type=positive_int, **_field("batch_size"))
    p.add_argument("--lr-top", type=positive_float, **_field("lr_top"))
    p.add_argument("--lr-finetune", type=positive_float, **_field("lr_finetune"))
    p.add_argument("--unfreeze-blocks", type=count, **_field("unfreeze_blocks"))
    p.add_argument(
        "--patience",
        type=count,
        help="end a phase when validation loss has not improved for N epochs (0: run every epoch)",
        **_field("patience"),
    )
    p.add_argument(
        "--ema",
        type=positive_float,
        metavar="DECAY",
        help="validate, keep and export an exponential moving average of the weights "
        "(decay per step, e.g. 0.998; default 0: off)",
        **_field("ema"),
    )


def _runtime_options(p) -> None:
    p.add_argument("--threads", type=positive_int, **_field("threads"))
    p.add_argument("--name")
    p.add_argument(
        "--bf16",
        choices=["auto", "on", "off"],
        help="bf16 autocast + channels_last: auto = where the CPU has AVX512-BF16 or AMX",
        **_field("bf16"),
    )
    p.add_argument(
        "--prefetch", type=count, help="batches prepared ahead in the loader thread (0: none)", **_field("prefetch")
    )
    p.add_argument(
        "--stop-after-epochs",
        type=positive_int,
        metavar="N",
        help="stop this invocation after N epochs, leaving a checkpoint for --resume",
    )
    p.add_argument(
        "--no-export",
        dest="export",
        action="store_false",
        help="evaluate but write no ONNX engine file (quicker study runs)",
        **_field("export"),
    )


def _engine_verb(sub, name: str, help: str, output_help: str):
    """calibrate and operating-curve: CATALOG (``--data``: earlier versions), ``--engine FILE``,
    ``-o/--output``, ``--threads``."""
    p = sub.add_parser(name, help=help)
    add_catalog_argument(
        p, "labelled catalog (is_merger, ra, dec, image) or a directory holding catalog.csv (required)", old="--data"
    )
    add_engine_option(p, "engine file (.onnx)")
    add_output_option(p, output_help)
    p.add_argument("--threads", type=count, default=2)  # 0: as before, one thread
    return p


def calibrate_parser(sub):
    p = _engine_verb(
        sub,
        "calibrate",
        "fit an engine's temperature and threshold per test-time view count on "
        "a labelled catalog's validation split; write a calibrated copy",
        "the calibrated engine file to write (required)",
    )
    p.add_argument("--views", type=positive_int, nargs="+", default=[1, 2, 4, 8], help="view counts to calibrate")
    p.add_argument(
        "--default-views",
        type=positive_int,
        help="the card's default view count (one of --views), e.g. 1 for a CPU-cost budget; "
        "default: the count with the best validation macro F1",
    )
    p.add_argument(
        "--split-seed", "--seed", dest="split_seed", type=count, default=0, help="split seed (as training's)"
    )
    p.add_argument("--cache", default=".cache/mergerscan", help="decoded-image cache directory")
    p.add_argument("--limit-per-class", type=count, help="use a small subset (smoke tests)")
    p.add_argument("--results", help="also write the per-view summary (JSON) here")
    p.add_argument(
        "--eval-dir",
        help="also write an evaluation directory for the default view count (metrics.json with the survey "
        "prevalence table and the worst failures, plots, test scores): `mergerscan report DIR` shows it",
    )
    return p


def _inputs(ap, a) -> tuple[str, str]:
    """The engine file and the catalog (a directory: its catalog.csv), each checked to exist."""
    from pathlib import Path

    data = Path(catalog_file(ap, a) or "")
    data = data / "catalog.csv" if data.is_dir() else data
    engine = engine_file(ap, a) or ""
    for what, path in (("ENGINE", Path(engine)), ("CATALOG", data)):
        if not path.is_file():
            ap.exit(EXIT_BAD_INPUT, f"mergerscan {a.verb}: error: {what} {path}: no such file\n")
    return engine, str(data)


def calibrate(ap, a):
    import json

    from ..atomic import atomic_write_json
    from .calibrate import calibrate_engine

    engine, data = _inputs(ap, a)
    out = required_output(ap, a)
    check_output(ap, a, out, {"CATALOG": data})  # the engine may be calibrated in place, never the catalog
    check_output(ap, a, a.results, {"CATALOG": data, "ENGINE": engine})
    check_output(ap, a, a.eval_dir, {"CATALOG": data, "ENGINE": engine}, directory=True)
    try:  # every other flag is the keyword of its own name
        res = from_namespace(calibrate_engine, a, engine_path=engine, catalog=data, out_path=out)
    except ValueError as exc:
        ap.exit(EXIT_BAD_INPUT, f"mergerscan calibrate: error: {exc}\n")
    except OSError as exc:  # a write that failed after the checks (a full disk, a vanished folder)
        ap.exit(EXIT_FAILED, f"mergerscan calibrate: error: {os_error_text(exc)}\n")
    if a.results:
        atomic_write_json(a.results, res, indent=1, default=float)
    for n in a.views:
        r = res[f"views_{n}"]
        print(
            f"{n} view(s): T {r['temperature']:.3f} threshold {r['threshold']:.4f} | val macro F1 "
            f"{r['val_macro_f1']:.4f} | test macro F1 {r['test']['macro']['f1']:.4f}"
        )
    print(json.dumps({"out": res["out"], "default_views": res["default_views"]}))


def curve_parser(sub):
    p = _engine_verb(
        sub,
        "operating-curve",
        "score a labelled catalog's validation split with an engine at each calibrated view count and write "
        "the validation operating curve into its card (metadata only; process-catalog --purity reads it)",
        "the engine file to write (default: the --engine file, in place)",
    )
    p.add_argument("--split-seed", type=count, default=0, help="split seed (as training's; the card's split)")
    p.add_argument("--cache", default=".cache/mergerscan", help="decoded-image and validation-logit cache directory")


def curve(ap, a):
    import json

    from .operating_curve import write_operating_curve

    engine, data = _inputs(ap, a)
    check_output(ap, a, a.out, {"CATALOG": data})
    try:
        res = from_namespace(write_operating_curve, a, engine_path=engine, catalog=data, out_path=a.out)
    except ValueError as exc:
        ap.exit(EXIT_BAD_INPUT, f"mergerscan operating-curve: error: {exc}\n")
    except OSError as exc:
        ap.exit(EXIT_FAILED, f"mergerscan operating-curve: error: {os_error_text(exc)}\n")
    print(json.dumps(res))


def train(ap, a, parser):
    """train and finetune (a fine-tune is an E2 run from the engine's network: training.finetune)."""
    from ..models import MissingWeightsError
    from .checkpoint import ResumeError, resume_arguments
    from .distill import DistillError
    from .finetune import finetune_arguments
    from .loader import LoaderError
    from .train import run

    kw = field_values(TrainArguments, a) | {"catalog": catalog_file(ap, a, required=False)}
    fail = lambda exc: ap.exit(EXIT_BAD_INPUT, f"mergerscan {a.verb}: error: {exc}\n")
    if a.out and not a.resume:
        _check_train_output(ap, a)
    try:
        if a.resume:  # the run's own configuration; options typed here must agree with it
            given = {k: v for k, v in kw.items() if v != parser.get_default(k)}
            args = TrainArguments(**resume_arguments(a.resume, given))
        elif not (a.catalog and a.out):
            fail("CATALOG and -o/--output are required (or --resume RUN_DIR)")
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
    except OSError as exc:  # a write that failed after the checks (a full disk, a vanished folder)
        ap.exit(EXIT_FAILED, f"mergerscan {a.verb}: error: {os_error_text(exc)}\n")


def _check_train_output(ap, a) -> None:
    """-o is a run directory, never one of the run's input files."""
    from ..engines import default_engine_path

    engines = {"--engine file": getattr(a, "source", None), "--distill engine": getattr(a, "distill", None)}
    inputs = {"CATALOG": a.catalog, "--weights file": getattr(a, "weights", None)}
    inputs |= {k: default_engine_path() if v == "default" else v for k, v in engines.items()}
    check_output(ap, a, a.out, inputs, directory=True)
