"""Where a training run starts: the network, the preprocessing spec, the labelled set's options and
the card entries that say so.  A run starts from ImageNet or random weights (``mergerscan train``)
or from an engine file's own network (``mergerscan finetune``, :mod:`.finetune`): its weights are
rebuilt from the ONNX initializers (:func:`mergerscan.engines.torch.rebuild_model`, no
pickle), its head is replaced by a fresh one, and its preprocessing spec is kept as it is, so the
fine-tuned engine sees exactly the inputs its backbone learnt on.
"""

from __future__ import annotations

from pathlib import Path

from ..cutouts.preprocess import PreprocessSpec
from ..engines.base import EngineInfo, file_sha256, read_engine_info
from ..models import MergerNet, create_model

# what the study's catalog (mergerscan train's default label) holds
STUDY_LABELS = "Darg+2010 mergers vs Galaxy Zoo 1 non-interacting (SDSS DR7)"


class SourceEngineError(ValueError):
    """The engine a fine-tune starts from cannot be used; the message says why in one line."""


def read_source(path: str | Path, sha256: str | None = None) -> EngineInfo:
    """The source engine's spec and card; one-line :class:`SourceEngineError` when the file is
    missing, is no engine file, or (``sha256`` given: a resume) is not the file the run began from."""
    path = Path(path)
    if not path.is_file():
        raise SourceEngineError(f"--from {path}: no such engine file")
    if sha256 and file_sha256(path) != sha256:
        raise SourceEngineError(f"--from {path}: the engine file changed since the run began (sha256 {sha256[:12]}...)")
    try:
        return read_engine_info(path)
    except Exception as exc:  # protobuf/ONNX errors of a file that is no engine: one line, no traceback
        raise SourceEngineError(f"--from {path}: not a readable engine file ({type(exc).__name__})") from None


def initial_network(args) -> MergerNet:
    """The network before training: ImageNet/random (``create_model``), or the engine ``args.init_from``
    with a new, randomly initialised head (seeded by the run's ``torch.manual_seed``)."""
    if not args.init_from:
        return create_model(args.arch, init=args.init, weights=args.weights)
    from ..engines.torch import rebuild_model

    read_source(args.init_from, args.init_from_sha256)
    net, _ = rebuild_model(args.init_from)  # batch norms folded into the convolutions, as in the file
    fresh = create_model(**net.config)  # the new head: the same shape, fresh weights
    net.top = fresh.top
    return net.train()


def training_spec(args, stamp_pixels: int) -> PreprocessSpec:
    """The preprocessing the run trains with: the source engine's own spec when fine-tuning (the
    stamps must be the size it asks for), else the run's options."""
    if not args.init_from:
        return PreprocessSpec(stamp_pixels=stamp_pixels, pixel_scale=args.pixel_scale, input_size=args.input_size)
    spec = read_source(args.init_from, args.init_from_sha256).spec
    if spec.stamp_pixels != stamp_pixels:
        raise SourceEngineError(
            f"{args.catalog}: stamps are {stamp_pixels} px; the engine {Path(args.init_from).name} "
            f'takes {spec.stamp_pixels} px stamps at {spec.pixel_scale}"/px'
        )
    return spec


def data_options(args) -> dict:
    """Keyword arguments of :func:`mergerscan.training.data.build_labelled_set` for this run."""
    return {
        "seed": args.split_seed,
        "cache": args.cache,
        "limit_per_class": args.limit_per_class,
        "train_labels": args.train_labels,
        "label_column": args.label_column,
        "split_column": args.split_column,
    }


def card_entries(args, data) -> dict:
    """The card entries that describe the labels, the split, the training selection (the galaxies it
    was trained on: ``domain.selection``) and, for a fine-tune, the source engine."""
    from .domain import training_selection

    labels = data.table["label"].to_numpy()
    out = {
        "domain": {"selection": training_selection(args.catalog).to_dict()},
        "labels": STUDY_LABELS
        if args.label_column == "is_merger" and not args.init_from
        else f"column {args.label_column} of {Path(args.catalog).name}: 1 ({int(labels.sum())} rows) "
        f"against 0 ({int((labels == 0).sum())} rows)",
        "label_column": args.label_column,
    }
    if args.split_column:
        out["split"] = f"the catalog's own column {args.split_column} (checked object-disjoint: stamps within 100\")"
    if args.train_labels:
        out["train_labels"] = f"{args.train_labels} training rows, stratified, drawn with seed {args.split_seed}"
    if args.init_from:
        info = read_source(args.init_from, args.init_from_sha256)
        out["finetuned_from"] = {
            "name": info.name,
            "sha256": args.init_from_sha256 or info.sha256,
            "file": Path(args.init_from).name,
            "labels": info.card.training.labels,
            "new_head": "yes: the source's head replaced by a fresh one",
            "unfrozen_blocks": args.unfreeze_blocks,
        }
    return out
