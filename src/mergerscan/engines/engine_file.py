"""The one place that reads and writes an engine file's metadata: the preprocessing spec and the
model card, stored in the ONNX ``metadata_props`` under ``mergerscan.spec`` / ``mergerscan.card``.

Everything else (the backends, export, quantisation, calibration, the fp16 converters) goes through
these functions, so the keys, the JSON form of the card and the atomic write exist once.  The card's
JSON (``card_of``, ``read_card``) is what writers update; readers take the typed
:class:`~mergerscan.engines.card.EngineCard` (``read_engine_card``, ``EngineInfo.card``).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ..atomic import atomic_path
from ..cutouts.preprocess import PreprocessSpec
from .card import EngineCard

SPEC_KEY, CARD_KEY = "mergerscan.spec", "mergerscan.card"


def metadata(model: Any) -> dict[str, str]:
    """{key: value} of an ``onnx.ModelProto``'s metadata_props."""
    return {p.key: p.value for p in model.metadata_props}


def load_metadata(path: str | Path) -> dict[str, str]:
    """The metadata of an engine file, without loading its weights."""
    return metadata(load_model(path, load_external_data=False))


def load_model(path: str | Path, load_external_data: bool = True) -> Any:
    """The ``onnx.ModelProto`` of an engine file; every reader of one comes here, so a file that
    is not one is a one-line ValueError naming it (never protobuf's traceback)."""
    import onnx

    try:
        return onnx.load(str(path), load_external_data=load_external_data)
    except OSError as exc:  # a directory, unreadable: the reader's words, one line
        raise ValueError(f"{path}: cannot read the engine file ({exc.strerror or exc})") from None
    except Exception as exc:  # protobuf's DecodeError (not a ValueError) and kin: not an ONNX file
        raise ValueError(f"{path}: not an ONNX engine file ({type(exc).__name__})") from None


def require_spec(meta: dict[str, str], path: str | Path) -> PreprocessSpec:
    if SPEC_KEY not in meta:
        raise ValueError(f"{path}: not a mergerscan engine (no '{SPEC_KEY}' metadata)")
    return PreprocessSpec.from_json(meta[SPEC_KEY])


def card_of(meta: dict[str, str]) -> dict:
    """The card's JSON (a dict; ``{}`` for a file without one)."""
    return json.loads(meta.get(CARD_KEY, "{}"))


def read_spec(path: str | Path) -> PreprocessSpec:
    return require_spec(load_metadata(path), path)


def read_card(path: str | Path) -> dict:
    """The card's JSON, as stored (for writers that update it)."""
    return card_of(load_metadata(path))


def read_engine_card(path: str | Path) -> EngineCard:
    """The card as the typed object the package reads; an ONNX file that is no mergerscan engine (no
    spec: an empty file parses as an empty model) is a one-line ValueError, never an empty card."""
    meta = load_metadata(path)
    require_spec(meta, path)
    return EngineCard.from_dict(card_of(meta))


def set_metadata(
    model: Any,
    spec: PreprocessSpec | str | None = None,
    card: EngineCard | dict | None = None,
    card_updates: dict | None = None,
) -> Any:
    """Put ``spec`` and the card (``card``, or the model's own card updated with ``card_updates``,
    the JSON of the card's top-level entries) into ``model``'s metadata, in place; other keys are
    kept.  Returns the model."""
    meta = metadata(model)
    if spec is not None:
        meta[SPEC_KEY] = spec if isinstance(spec, str) else spec.to_json()
    if card is not None or card_updates:
        base = card_of(meta) if card is None else card.to_dict() if isinstance(card, EngineCard) else dict(card)
        meta[CARD_KEY] = json.dumps(base | (card_updates or {}), sort_keys=True)
    del model.metadata_props[:]
    for k, v in sorted(meta.items()):
        entry = model.metadata_props.add()
        entry.key, entry.value = k, v
    return model


def copy_metadata(src: Any, dst: Any, card_updates: dict | None = None) -> Any:
    """``dst`` (e.g. a converted or quantised graph) with ``src``'s spec and card."""
    meta = metadata(src)
    del dst.metadata_props[:]
    return set_metadata(dst, meta.get(SPEC_KEY), card_of(meta), card_updates)


def save_model(model: Any, path: str | Path) -> Path:
    """Write an ONNX model atomically (a reader never sees half an engine file)."""
    import onnx

    path = Path(path)
    with atomic_path(path) as tmp:
        onnx.save(model, str(tmp))
    return path


def write_metadata(
    path: str | Path,
    out_path: str | Path | None = None,
    spec: PreprocessSpec | None = None,
    card: EngineCard | dict | None = None,
    card_updates: dict | None = None,
) -> Path:
    """Rewrite an engine file's spec and/or card into ``out_path`` (default: in place), atomically.
    The weights and graph are unchanged; the file's sha256 changes with its metadata."""

    m = load_model(path)
    set_metadata(m, spec, card, card_updates)
    return save_model(m, out_path or path)
