"""Fine-tune an engine on a user's own labels: ``mergerscan finetune CATALOG --engine default|ENGINE``.

The run is an E2 training run (:mod:`.train`: phase 1 trains a new head on the frozen backbone with
Adam, phase 2 unfreezes the last conv blocks and fine-tunes with SGD; checkpoints every epoch,
``--resume``, ``--ema``, temperature and threshold fitted on validation, one evaluation on test,
export) whose network is the source engine's own, rebuilt from the engine file
(:mod:`.source`), with its preprocessing spec, architecture and input size.  The result is a normal
engine file (``OUT/model.onnx``) that ``process-catalog --engine OUT/model.onnx`` runs; its card
names the labels, the source engine and its sha256, and the test metrics.

Labels are 0/1 (one logit, as every engine): a k-class question is k one-against-rest engines.
"""

from __future__ import annotations

from pathlib import Path

from ..engines import resolve_engine_path
from ..engines.base import file_sha256
from .arguments import TrainArguments
from .source import read_source


def source_engine(source: str | Path | None) -> Path:
    """``default`` (or None): the packaged engine; else the engine file at ``source``."""
    return resolve_engine_path(None if source in (None, "default") else source).resolve()


def finetune_arguments(source: str | Path | None, catalog: str | Path, out: str | Path, **options) -> TrainArguments:
    """The :class:`TrainArguments` of a fine-tune of ``source`` on ``catalog``: architecture, input
    size, stamp size and pixel scale come from the engine file (options may not change them)."""
    path = source_engine(source)
    info = read_source(path)
    arch = (info.card.model.arch if info.card.model else None) or ""  # refused by TrainArguments if absent
    fixed = {"arch", "input_size", "experiment", "stamp_pixels", "pixel_scale", "weights", "distill"}
    if clash := sorted(k for k, v in options.items() if k in fixed and v is not None):
        raise ValueError(f"--{clash[0].replace('_', '-')} is the source engine's own when fine-tuning")
    if not options.get("name"):
        options["name"] = f"{info.name}-finetuned-{options.get('label_column') or 'is_merger'}"
    return TrainArguments(
        catalog=str(catalog),
        out=str(out),
        arch=arch,
        experiment="e2",
        input_size=info.spec.input_size,
        stamp_pixels=info.spec.stamp_pixels,
        pixel_scale=info.spec.pixel_scale,
        init_from=str(path),
        init_from_sha256=file_sha256(path),
        **options,
    )


def finetune(
    catalog: str | Path, out: str | Path, *, source: str | Path | None = "default", resume: bool = False, **options
) -> dict:
    """Fine-tune ``source`` (an engine file, or ``default``) on the 0/1 column ``label_column`` of
    ``catalog`` (id, ra, dec, image and that column); writes ``out/model.onnx`` and returns the run's
    metrics (``result["card"]`` is the new engine's card).  Any :class:`TrainArguments` option may be
    given (``epochs``, ``epochs_top``, ``unfreeze_blocks``, ``ema``, ``train_labels``, ...).
    ``resume=True`` continues a stopped run in ``out`` (its own configuration)."""
    from .checkpoint import resume_arguments
    from .train import run

    if resume:
        return run(TrainArguments(**resume_arguments(out, {})), resume=True)
    return run(finetune_arguments(source, catalog, out, **options))
