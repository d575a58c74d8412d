"""The report of a process-catalog run: ``OUT/report/index.html`` (+ the figures as PNG, report.json).

Statistics come from one streaming pass over ``OUT/parquet`` (:mod:`.stream`); the galleries
re-fetch cutouts for at most ``top_n + borderline_n`` rows through the run's own image source
(:mod:`.gallery`).  The figures are :mod:`.figures` and :mod:`.sky`, the engine's card and the
provenance table :mod:`.provenance`, the page's sections :mod:`.sections`.
"""

from __future__ import annotations

import contextlib
import json
import time
from pathlib import Path

import numpy as np

from ..atomic import atomic_write_bytes, atomic_write_json, atomic_write_text
from ..run_layout import RunLayout
from . import sections
from ._page import drawn, esc, fmt, page
from .embedding_map import fig_embedding_map, project
from .embedding_map import section as embedding_section
from .figures import fig_columns, fig_sample, fig_scores, fig_status, fig_throughput, fig_uncertainty
from .gallery import fetch_cutouts, gallery, path_column
from .provenance import card_from_parquet, engine_card, engine_spec, provenance_rows
from .sky import fig_sky
from .stream import RunStats, open_dataset, scan


def _read_markers(out: Path) -> list[dict]:
    ms = []
    for f in sorted(RunLayout(out).work.scored_dir.glob("part-*.json")):
        with contextlib.suppress(ValueError):  # a marker being written: not finished yet
            ms.append(json.loads(f.read_text()))
    return ms


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
    """
    from ..cutouts.sources import redact_text

    t_start = time.time()
    out = Path(out_dir)
    layout = RunLayout(out)
    summary = json.loads(layout.summary.read_text())
    thr = float(summary["threshold"])
    id_col = summary.get("id_column", "objid")
    paths = path_column(summary, open_dataset(out).schema.names)
    st, npre = scan(out, thr, id_col, top_n, borderline_n, sample_rows, max_memory_rows, path_column=paths)
    rep = layout.report_dir
    rep.mkdir(exist_ok=True)
    figs: dict[str, bytes] = {}

    def keep(name, png):
        if png is not None:
            figs[name] = png
            atomic_write_bytes(rep / f"{name}.png", png, fsync=False)
        return png

    card, card_note = engine_card(summary)
    if not card:
        card = card_from_parquet(out)
    spec = engine_spec(summary)

    merg = int(st.score_hist_merger.sum())
    gfrac = merg / st.scored if st.scored else 0.0
    markers = _read_markers(out)
    notes: list[str] = []  # figures that could not be drawn (drawn() guards every one)
    sky_png, sky_cap = drawn(notes, "sky", fig_sky, st, default=(None, None))
    thr_png, thr_cap = drawn(notes, "throughput", fig_throughput, markers, default=(None, ""))
    keep("scores", drawn(notes, "score histogram", fig_scores, st, thr))
    op_views = (summary.get("operating_point") or {}).get("views", 1)
    keep("uncertainty", drawn(notes, "uncertainty", fig_uncertainty, out, thr, card, op_views))
    keep("sky", sky_png)
    keep("columns", drawn(notes, "per-column merger fraction", fig_columns, st, gfrac))
    keep("sample", drawn(notes, "p_merger against columns", fig_sample, st, thr))
    keep("status", drawn(notes, "flags", fig_status, st.status) if st.status else None)
    keep("throughput", thr_png)
    show = [b.name for b in st.bins][:4]
    # the run passes its real location (summary.json holds it with credentials redacted)
    fetch_from = (
        summary
        if source_location is None
        else dict(summary, source=dict(summary.get("source") or {}, location=source_location))
    )
    top_st, top_err = fetch_cutouts(fetch_from, st.top, spec, paths)
    bor_st, bor_err = fetch_cutouts(fetch_from, st.border, spec, paths)
    out_st, out_err = fetch_cutouts(fetch_from, st.outside, spec, paths)
    emb_html, emb_png = _embedding_section(st, notes, fetch_from, spec, paths, thr, summary, show)
    keep("embedding_map", emb_png)

    warn = []
    if st.rows != summary.get("rows"):
        warn.append(
            f"the Parquet dataset holds {st.rows:,} rows but summary.json says {fmt(summary.get('rows'))} "
            "(an unfinished or edited run?)"
        )
    warn += [redact_text(w) for w in (card_note, top_err or bor_err or out_err, *notes) if w]

    S = [
        sections.scores(figs.get("scores"), st, merg, gfrac, thr, summary.get("operating_point")),
        sections.uncertainty(figs.get("uncertainty")),
        sections.sky(sky_png, sky_cap),
    ]
    if "columns" in figs:
        S.append(sections.columns(figs["columns"], figs.get("sample"), st))
    S.append(sections.flags(st.status, st.rows, figs.get("status")))
    n_out = len(st.outside) if st.outside is not None else 0
    S.append(sections.domain(summary, st, n_out, gallery(st.outside, out_st, spec, thr, show, domain=True)))
    geom = f"{spec.stamp_pixels * spec.pixel_scale:.0f}″ × {spec.stamp_pixels * spec.pixel_scale:.0f}″"
    S.append(
        sections.top(
            len(st.top) if st.top is not None else 0,
            summary.get("source", {}).get("kind", "?"),
            geom,
            gallery(st.top, top_st, spec, thr, show),
        )
    )
    S.append(
        sections.borderline(
            len(st.border) if st.border is not None else 0, thr, gallery(st.border, bor_st, spec, thr, show)
        )
    )
    if emb_html:
        S.append(emb_html)
    if thr_png:
        S.append(sections.throughput(thr_png, thr_cap))
    S.append(sections.provenance(provenance_rows(summary, card, thr), card.get("metrics_test") or {}))
    S.append(
        sections.method(
            len(list(layout.catalog_dir.rglob("*.parquet"))),
            max_memory_rows,
            st,
            npre,
            time.time() - t_start,
            time.strftime("%Y-%m-%d %H:%M %Z"),
        )
    )

    html_text = page(
        f"mergerscan run report — {Path(str(summary.get('catalog', out))).name}",
        esc(str(out.resolve())),
        sections.header_cards(st, merg, gfrac, thr, summary),
        sections.nav("".join(S)),
        sections.warnings(warn) + "\n".join(S),
    )
    atomic_write_text(layout.report_index, html_text, fsync=False)
    _write_json(
        rep / "report.json",
        st,
        merg,
        thr,
        npre,
        sky_cap,
        {"fetched": sum(x is not None for x in top_st + bor_st + out_st), "shown": len(top_st + bor_st + out_st)},
    )
    return layout.report_index


def _embedding_section(st: RunStats, notes: list, fetch_from: dict, spec, paths, thr, summary, show):
    """(section, PNG) of the embedding map (runs with --embeddings; ("", None) without): the
    projected sample and a few rows' cutouts."""
    sample = st.embedded
    if sample is None:
        return "", None
    proj = drawn(notes, "embedding map projection", project, sample)
    if proj is None or sample.table is None:
        return embedding_section(None, sample, None, summary, ""), None
    rows = sample.table.iloc[proj.thumbs].reset_index(drop=True)
    stamps, err = fetch_cutouts(fetch_from, rows, spec, paths)
    if err:
        notes.append(err)
    p = sample.table["p_merger"].to_numpy(np.float64)
    png = drawn(notes, "embedding map", fig_embedding_map, proj, p, stamps, thr)
    return embedding_section(png, sample, proj, summary, gallery(rows, stamps, spec, thr, show)), png


def _write_json(path: Path, st: RunStats, merg: int, thr: float, npre: int, sky_cap: str | None, cutouts: dict):
    def rows(df):
        return [] if df is None else json.loads(df.to_json(orient="records"))

    doc = {
        "rows": st.rows,
        "scored": st.scored,
        "mergers": merg,
        "threshold": thr,
        "status": st.status,
        "score_bins": np.linspace(0, 1, len(st.score_hist) + 1).tolist(),
        "score_hist": st.score_hist.tolist(),
        "sky": {"order": st.sky_order, "pixels": len(st.sky_pix), "caption": sky_cap},
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
        "presample_rows": npre,
        "sample_rows": 0 if st.sample is None else len(st.sample),
        "top": rows(st.top),
        "borderline": rows(st.border),
        "outside_domain": rows(st.outside),
        "beyond_image_threshold": st.beyond,
        "cutouts": cutouts,
    }
    atomic_write_json(path, doc, fsync=False, indent=1, default=str)
