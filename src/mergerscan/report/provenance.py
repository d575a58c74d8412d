"""The run report's provenance: the engine's model card and stamp geometry, the provenance table."""

from __future__ import annotations

import json
from pathlib import Path

from .. import __version__
from ..engines.card import EngineCard
from ..engines.operating import operating_line
from ..run_summary import RunSummary
from .page import Raw, esc


def engine_card(summary: RunSummary) -> tuple[EngineCard | None, str]:
    """The model card from the engine file (None where the file is unreadable or has no card: the
    caller then reads :func:`card_from_parquet`) and a note on it."""
    from ..engines import read_engine_info

    note = ""
    path = summary.engine_path
    try:
        info = read_engine_info(path)  # type: ignore[arg-type]  # None fails like a missing file
        if summary.engine_sha256 and info.sha256 != summary.engine_sha256:
            note = f"the engine file at {path} has changed since the run (sha256 differs); its card is shown"
        return (info.card if info.card.to_dict() else None), note
    except Exception as exc:
        return None, f"engine file {path} unreadable ({type(exc).__name__}); model card from the Parquet metadata"


def card_from_parquet(out: Path) -> EngineCard:
    """The card a partition's metadata states (less its validation curve; empty if none)."""
    import pyarrow.parquet as pq

    from .stream import partition_files

    files = partition_files(out)
    if not files:
        return EngineCard()
    md = pq.read_schema(files[0]).metadata or {}
    try:
        card = json.loads(md.get(b"mergerscan.model_card", b"{}"))
        return EngineCard.from_dict(json.loads(card) if isinstance(card, str) else card)
    except (ValueError, TypeError, AttributeError):
        return EngineCard()


def engine_spec(summary: RunSummary):
    """The stamp geometry the run's engine saw (the default engine's when its file is gone)."""
    from ..engines import default_engine_path, read_engine_info

    try:
        return read_engine_info(summary.engine_path or default_engine_path()).spec
    except Exception:  # the gallery then uses the default engine's stamp geometry
        return read_engine_info(default_engine_path()).spec


def training_domain(card: EngineCard, summary: RunSummary) -> str:
    """The card's training selection and image check, and what the run applied of them (--domain)."""
    dom = card.engine_domain
    parts = [dom.selection.describe() if dom.selection else "no training selection in the card"]
    if dom.selection and dom.selection.reference:
        parts.append(f"from {dom.selection.reference}")
    parts.append(f"image check {dom.image.score} <= {dom.image.threshold:.4g}" if dom.image else "no image check")
    mode = (summary.domain or {}).get("mode")
    parts.append(f"run: --domain {mode}" if mode else "run: before --domain")
    return "; ".join(parts)


def training_line(card: EngineCard) -> str:
    """The card's architecture, experiment, input size, training rows and labels, those it has."""
    t = card.training
    entries: list[tuple[str, object]] = [("arch", card.arch), ("experiment", t.experiment)]
    entries += [("input_size", t.input_size), ("n_train", t.n_train), ("labels", t.labels)]
    return ", ".join(f"{k} {v}" for k, v in entries if v is not None)


def provenance_rows(summary: RunSummary, card: EngineCard, thr: float) -> list[list]:
    """The provenance table: engine, threshold, training, image source, catalog, command, run, versions."""
    return [
        ["engine", summary.engine or card.name or "?"],
        ["engine sha256", Raw(f'<span class="mono">{esc(summary.engine_sha256 or "?")}</span>')],
        ["engine file", Raw(f'<span class="mono">{esc(str(summary.engine_path))}</span>')],
        ["threshold", f"{thr:.6g}"],
        ["operating point", operating_line(summary.operating_point) if summary.operating_point else "?"],
        ["training", training_line(card)],
        ["training domain", training_domain(card, summary)],
        ["image source", f"{summary.source.kind}: {summary.source.location}"],
        ["catalog", summary.catalog or "?"],
        ["command", Raw(f"<code>{esc(summary.command or '?')}</code>")],
        [
            "run",
            f"{summary.rows:,} rows, {summary.partitions} partitions, "
            f"{summary.seconds} s, {summary.objects_per_s} objects/s",
        ],
        ["mergerscan", f"{summary.mergerscan_version} (run), {__version__} (report)"],
    ]
