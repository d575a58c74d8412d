"""The report of a process-catalog run: ``OUT/report/index.html`` (+ the figures as PNG, report.json).

Statistics come from one streaming pass over ``OUT/parquet`` (:mod:`.stream`); the galleries
re-fetch cutouts for at most ``top_n + borderline_n`` rows (and a few outside the domain and on
the embedding map) through the run's own image source (:mod:`.gallery`).  The run's figures are
:mod:`.figures`, :mod:`.sky` and :mod:`.embedding_map`, the engine's card and the provenance table
:mod:`.provenance`, the page's sections :mod:`.sections`.  The run is read through
:class:`~mergerscan.run_layout.RunLayout` and :class:`~mergerscan.run_summary.RunSummary`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..atomic import atomic_write_bytes, atomic_write_json, atomic_write_text
from ..engines.card import EngineCard
from ..run_layout import RunLayout
from ..run_summary import RunSummary, SourceSummary
from . import sections
from .embedding_map import fig_embedding_map, project
from .embedding_map import section as embedding_section
from .figures import fig_columns, fig_sample, fig_scores, fig_status, fig_throughput, fig_uncertainty
from .gallery import fetch_cutouts, gallery, path_column
from .page import drawn, esc, fmt, page
from .provenance import card_from_parquet, engine_card, engine_spec, provenance_rows
from .sky import fig_sky
from .stream import RunStats, open_dataset, scan


def read_summary(layout: RunLayout) -> RunSummary:
    """The run's summary; one without a threshold is refused (a report at an assumed threshold
    would count the wrong mergers), as the KeyError of the key it lacks."""
    summary = RunSummary.from_json(layout.summary.read_text())
    if "threshold" in summary.missing:
        raise KeyError("threshold")
    return summary


def _read_markers(out: Path) -> list[dict]:
    ms = []
    for f in RunLayout(out).work.done_markers():
        with contextlib.suppress(ValueError):  # a marker being written: not finished yet
            ms.append(json.loads(f.read_text()))
    return ms


@dataclass
class _Report:
    """What the steps of one report share: the run, its statistics, and what was drawn so far."""

    layout: RunLayout
    summary: RunSummary
    st: RunStats
    npre: int  # rows read to fix the column bins
    paths: str | None  # the output column naming stamp files (gallery.path_column)
    source: SourceSummary  # where the galleries fetch cutouts (the run's real location)
    spec: Any = None  # the engine's stamp geometry
    figs: dict[str, bytes] = field(default_factory=dict)  # drawn figures (also written as PNG)
    captions: dict[str, str | None] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)  # figures that could not be drawn (drawn() guards each)

    @property
    def thr(self) -> float:
        return float(self.summary.threshold)

    @property
    def mergers(self) -> int:
        return int(self.st.score_hist_merger.sum())

    @property
    def merger_fraction(self) -> float:
        return self.mergers / self.st.scored if self.st.scored else 0.0

    @property
    def show(self) -> list[str]:
        """The catalog columns a gallery card shows (the first four binned)."""
        return [b.name for b in self.st.bins][:4]

    def keep(self, name: str, png: bytes | None, caption: str | None = None) -> None:
        if png is not None:
            self.figs[name] = png
            atomic_write_bytes(self.layout.report_dir / f"{name}.png", png, fsync=False)
        self.captions[name] = caption


@dataclass
class _Galleries:
    """Cutouts of the gallery rows (None where one could not be fetched) and the first error."""

    top: list
    border: list
    outside: list
    error: str


def build_report(
    out_dir,
    top_n: int = 24,
    borderline_n: int = 12,
    sample_rows: int = 200_000,
    max_memory_rows: int = 262_144,
    source_location: str | None = None,
) -> Path:
    """Write ``OUT/report/index.html`` for a process-catalog run directory and return its path.

    ``max_memory_rows``: rows read per streamed batch (memory bound); ``sample_rows``: size of
    the reservoir sample behind the scatter plots.  Everything else is exact.
    ``source_location``: where the run's image source really is (summary.json holds it with
    credentials redacted); the run's own report passes it.
    """
    t_start = time.time()
    layout = RunLayout(Path(out_dir))
    summary = read_summary(layout)
    paths = path_column(summary, open_dataset(layout.root).schema.names)
    st, npre = scan(
        layout.root,
        float(summary.threshold),
        summary.id_column,
        top_n,
        borderline_n,
        sample_rows,
        max_memory_rows,
        path_column=paths,
    )
    layout.report_dir.mkdir(exist_ok=True)
    source = (
        summary.source if source_location is None else dataclasses.replace(summary.source, location=source_location)
    )
    rep = _Report(layout, summary, st, npre, paths, source)
    card, card_note = engine_card(summary)
    card = card or card_from_parquet(layout.root)
    rep.spec = engine_spec(summary)
    _draw_figures(rep, card)
    cutouts = _fetch_galleries(rep)
    emb_html = _embedding_section(rep)
    body = _sections(rep, card, cutouts, emb_html) + [_method(rep, max_memory_rows, t_start)]
    warnings = _warnings(rep, card_note, cutouts.error)
    html_text = page(
        f"mergerscan run report — {Path(summary.catalog or str(layout.root)).name}",
        esc(str(layout.root.resolve())),
        sections.header_cards(st, rep.mergers, rep.merger_fraction, rep.thr, summary),
        sections.nav("".join(body)),
        sections.warnings(warnings) + "\n".join(body),
    )
    atomic_write_text(layout.report_index, html_text, fsync=False)
    shown = cutouts.top + cutouts.border + cutouts.outside
    _write_json(rep, {"fetched": sum(x is not None for x in shown), "shown": len(shown)})
    return layout.report_index


def _draw_figures(rep: _Report, card: EngineCard) -> None:
    """Every figure of the page but the embedding map, in the order their notes appear."""
    st, thr = rep.st, rep.thr
    sky_png, sky_cap = drawn(rep.notes, "sky", fig_sky, st, default=(None, None))
    thr_png, thr_cap = drawn(
        rep.notes, "throughput", fig_throughput, _read_markers(rep.layout.root), default=(None, "")
    )
    rep.keep("scores", drawn(rep.notes, "score histogram", fig_scores, st, thr))
    views = (rep.summary.operating_point or {}).get("views", 1)
    rep.keep("uncertainty", drawn(rep.notes, "uncertainty", fig_uncertainty, rep.layout.root, thr, card, views))
    rep.keep("sky", sky_png, sky_cap)
    rep.keep("columns", drawn(rep.notes, "per-column merger fraction", fig_columns, st, rep.merger_fraction))
    rep.keep("sample", drawn(rep.notes, "p_merger against columns", fig_sample, st, thr))
    rep.keep("status", drawn(rep.notes, "flags", fig_status, st.status) if st.status else None)
    rep.keep("throughput", thr_png, thr_cap)


def _fetch_galleries(rep: _Report) -> _Galleries:
    top, top_err = fetch_cutouts(rep.source, rep.st.top, rep.spec, rep.paths)
    border, border_err = fetch_cutouts(rep.source, rep.st.border, rep.spec, rep.paths)
    outside, outside_err = fetch_cutouts(rep.source, rep.st.outside, rep.spec, rep.paths)
    return _Galleries(top, border, outside, top_err or border_err or outside_err)


def _embedding_section(rep: _Report) -> str:
    """The embedding map's section (runs with --embeddings; "" without): the projected sample
    and a few rows' cutouts."""
    sample = rep.st.embedded
    if sample is None:
        return ""
    proj = drawn(rep.notes, "embedding map projection", project, sample)
    if proj is None or sample.table is None:
        return embedding_section(None, sample, None, rep.summary, "")
    rows = sample.table.iloc[proj.thumbs].reset_index(drop=True)
    stamps, err = fetch_cutouts(rep.source, rows, rep.spec, rep.paths)
    if err:
        rep.notes.append(err)
    p = sample.table["p_merger"].to_numpy(np.float64)
    png = drawn(rep.notes, "embedding map", fig_embedding_map, proj, p, stamps, rep.thr)
    rep.keep("embedding_map", png)
    return embedding_section(png, sample, proj, rep.summary, gallery(rows, stamps, rep.spec, rep.thr, rep.show))


def _warnings(rep: _Report, card_note: str, cutouts_error: str) -> list[str]:
    from ..cutouts.sources import redact_text

    warn = []
    if rep.st.rows != rep.summary.rows:
        warn.append(
            f"the Parquet dataset holds {rep.st.rows:,} rows but summary.json says {fmt(rep.summary.rows)} "
            "(an unfinished or edited run?)"
        )
    return warn + [redact_text(w) for w in (card_note, cutouts_error, *rep.notes) if w]


def _sections(rep: _Report, card: EngineCard, cutouts: _Galleries, emb_html: str) -> list[str]:
    """The page's sections in their order (the method section, written last, not included)."""
    st, thr, spec, show, figs = rep.st, rep.thr, rep.spec, rep.show, rep.figs
    S = [
        sections.scores(figs.get("scores"), st, rep.mergers, rep.merger_fraction, thr, rep.summary.operating_point),
        sections.uncertainty(figs.get("uncertainty")),
        sections.sky(figs.get("sky"), rep.captions["sky"]),
    ]
    if "columns" in figs:
        S.append(sections.columns(figs["columns"], figs.get("sample"), st))
    S.append(sections.flags(st.status, st.rows, figs.get("status")))
    n_out = len(st.outside) if st.outside is not None else 0
    S.append(
        sections.domain(rep.summary, st, n_out, gallery(st.outside, cutouts.outside, spec, thr, show, domain=True))
    )
    side = f"{spec.stamp_pixels * spec.pixel_scale:.0f}″"
    n_top = len(st.top) if st.top is not None else 0
    S.append(
        sections.top(
            n_top, rep.summary.source.kind or "?", f"{side} × {side}", gallery(st.top, cutouts.top, spec, thr, show)
        )
    )
    n_border = len(st.border) if st.border is not None else 0
    S.append(sections.borderline(n_border, thr, gallery(st.border, cutouts.border, spec, thr, show)))
    if emb_html:
        S.append(emb_html)
    if "throughput" in figs:
        S.append(sections.throughput(figs["throughput"], rep.captions["throughput"] or ""))
    S.append(
        sections.provenance(
            provenance_rows(rep.summary, card, thr), card.metrics_test.to_dict() if card.metrics_test else {}
        )
    )
    return S


def _method(rep: _Report, max_memory_rows: int, t_start: float) -> str:
    n_files = len(list(rep.layout.catalog_dir.rglob("*.parquet")))
    seconds, when = time.time() - t_start, time.strftime("%Y-%m-%d %H:%M %Z")
    return sections.method(n_files, max_memory_rows, rep.st, rep.npre, seconds, when)


def _write_json(rep: _Report, cutouts: dict) -> None:
    """report.json: the page's numbers, for scripts and the tests."""
    st = rep.st

    def rows(df):
        return [] if df is None else json.loads(df.to_json(orient="records"))

    doc = {
        "rows": st.rows,
        "scored": st.scored,
        "mergers": rep.mergers,
        "threshold": rep.thr,
        "status": st.status,
        "score_bins": np.linspace(0, 1, len(st.score_hist) + 1).tolist(),
        "score_hist": st.score_hist.tolist(),
        "sky": {"order": st.sky_order, "pixels": len(st.sky_pix), "caption": rep.captions["sky"]},
        "columns": {
            b.name: {
                "edges": None if b.edges is None else b.edges.tolist(),
                "categories": b.categories,
                "n": st.col_n[b.name].tolist(),
                "mergers": st.col_m[b.name].tolist(),
                "outside": st.col_out[b.name].tolist(),
            }
            for b in st.bins
        },
        "presample_rows": rep.npre,
        "sample_rows": 0 if st.sample is None else len(st.sample),
        "top": rows(st.top),
        "borderline": rows(st.border),
        "outside_domain": rows(st.outside),
        "beyond_image_threshold": st.beyond,
        "cutouts": cutouts,
    }
    atomic_write_json(rep.layout.report_dir / "report.json", doc, fsync=False, indent=1, default=str)
