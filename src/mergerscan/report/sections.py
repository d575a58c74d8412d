"""The run report's page text: one function per section, each returning its HTML.

Values are escaped here (``esc``) or are figures/tables made by :mod:`.page`; the page shell
(style, navigation, the check script) is :func:`.page.page`.
"""

from __future__ import annotations

from ..catalogs.schema import STATUS
from ..engines.operating import operating_line
from ..run_summary import RunSummary
from .page import esc, figure, fmt, table
from .stream import RunStats

COLUMNS_CAPTION = (
    "Red points: fraction of scored objects flagged as mergers per bin, with 68 % Wilson "
    "binomial intervals (horizontal bars: bin extent); blue squares: mean p_merger; grey bars "
    "(right axis): scored objects per bin; dotted line: overall flagged fraction."
)
NAV = [
    ("scores", "Scores"),
    ("uncertainty", "Uncertainty"),
    ("sky", "Sky"),
    ("columns", "Columns"),
    ("flags", "Flags"),
    ("domain", "Domain"),
    ("top", "Top mergers"),
    ("borderline", "Borderline"),
    ("embeddings", "Embeddings"),
    ("throughput", "Throughput"),
    ("provenance", "Provenance"),
    ("method", "Method"),
]


def warnings(texts: list[str]) -> str:
    return "".join(f'<div class="warn">{esc(w)}</div>' for w in texts)


def scores(png: bytes | None, st: RunStats, merg: int, gfrac: float, thr: float, operating: dict | None = None) -> str:
    op = f" Operating point: {esc(operating_line(operating))}." if operating else ""
    return (
        f'<section id="scores"><h2>Score distribution</h2>{figure(png, "histogram of p_merger")}'
        f'<p class="note">{st.scored:,} scored objects; {merg:,} ({gfrac:.2%}) at or above the threshold '
        f"{thr:.4g}.{op} p_merger is temperature-calibrated on the engine's validation split, so the mean "
        f"p_merger of a population estimates its merger fraction (given the training labels' definition).</p></section>"
    )


def uncertainty(png: bytes | None) -> str:
    """The per-row interval's figure (report.figures.fig_uncertainty); nothing for runs without it."""
    if png is None:
        return ""
    caption = (
        "Left: scored objects by the width of their 95 % interval (p_merger_lo to p_merger_hi, from the validation "
        "galaxies the engine scored alike) against p_merger; orange line: the threshold. Right: objects whose interval "
        "lies wholly below, across or wholly above the threshold, with that class's error rate on the engine's "
        "validation split: the errors are where the interval straddles the threshold."
    )
    return (
        f'<section id="uncertainty"><h2>Per-object uncertainty</h2>{figure(png, "interval widths", caption)}</section>'
    )


def sky(png: bytes | None, caption: str | None) -> str:
    """The sky maps; none where no row has valid coordinates, a note where they could not be drawn
    (``caption`` None)."""
    no_coords = '<p class="note">no valid coordinates</p>'
    return (
        '<section id="sky"><h2>On the sky</h2>'
        + (figure(png, "sky maps", esc(caption or "")) if png or caption is None else no_coords)
        + "</section>"
    )


def columns(png: bytes, sample_png: bytes | None, st: RunStats) -> str:
    sample = (
        ""
        if sample_png is None
        else figure(
            sample_png,
            "p_merger against columns, sample",
            f"p_merger against each numeric column for a uniform random sample (reservoir) of "
            f"{len(st.sample) if st.sample is not None else 0:,} of the {st.scored:,} scored objects; "
            f"orange: above the threshold.",
        )
    )
    return (
        '<section id="columns"><h2>Merger fraction against catalog columns</h2>'
        + figure(png, "merger fraction per bin", COLUMNS_CAPTION)
        + sample
        + "</section>"
    )


def flags(status: dict, rows: int, png: bytes | None) -> str:
    status_rows = [
        [k, STATUS.get(k, "?").replace("`", ""), f"{v:,}", f"{v / rows:.2%}"]
        for k, v in sorted(status.items(), key=lambda kv: -kv[1])
    ]
    return (
        '<section id="flags"><h2>Flags</h2><div class="two"><div>'
        + table(["status", "meaning", "rows", "share"], status_rows, num={2, 3})
        + "</div><div>"
        + (figure(png, "status counts") if png is not None else "")
        + "</div></div></section>"
    )


def top(n: int, source_kind: str, geom: str, cards: str) -> str:
    return (
        f'<section id="top"><h2>Top {n} mergers</h2>'
        f'<p class="note">Highest p_merger over the in-domain rows of the whole run (exact; rows outside the '
        "engine's training domain are never mergers: see Domain). Cutouts re-fetched from the run's image "
        f"source ({esc(source_kind)}) exactly as the engine saw them: {geom}, "
        f"north up, east left, gri composite; bar 20″; orange frame: flagged merger.</p>" + cards + "</section>"
    )


def domain(summary: RunSummary, st: RunStats, n_shown: int, cards: str) -> str:
    """The in-domain / out-of-domain split (summary.json's counts, checked against the dataset's)
    and the gallery of the scored rows farthest beyond the image check."""
    d = summary.domain
    if d is None:  # a run from before --domain
        return ""
    ood = int(summary.out_of_domain or 0)
    inside = st.scored - st.beyond
    rows = [
        ["scored, in the domain (may be is_merger)", f"{inside:,}", f"{inside / max(st.rows, 1):.2%}"],
        [
            "scored, beyond the image check (p_merger kept, never is_merger)",
            f"{st.beyond:,}",
            f"{st.beyond / max(st.rows, 1):.2%}",
        ],
        ["out_of_domain by the catalog rules (not fetched, not scored)", f"{ood:,}", f"{ood / max(st.rows, 1):.2%}"],
    ]
    rules = [[k, f"{v:,}"] for k, v in (summary.domain_rules or {}).items()]
    checks = [*d.get("catalog_rules", [])] + (
        [f"domain_score > {d['image_threshold']:.4g}"] if d.get("image_threshold") is not None else []
    )
    mode = (
        "--domain off: nothing was checked; every row was scored and may be is_merger"
        if d["mode"] == "off"
        else f"--domain {d['mode']}; checks applied: {'; '.join(checks) if checks else 'none could be (no deciding column, no image check)'}"
    )
    limits = f" Limits changed with --domain-limit: {d['limits']}." if d.get("limits") else ""
    return (
        '<section id="domain"><h2>Training domain</h2>'
        f'<p class="note">{esc(mode)}.{esc(limits)} The engine was trained on the selection its card records '
        '(see Provenance); outside it, p_merger means little.</p><div class="two"><div>'
        + table(["rows", "count", "share"], rows, num={1, 2})
        + "</div><div>"
        + (table(["rule", "rows"], rules, num={1}) if rules else '<p class="note">no row failed a check</p>')
        + "</div></div>"
        + f'<h3>{n_shown} scored rows farthest outside the domain</h3><p class="note">Highest domain_score '
        "beyond the image check's threshold (the engine's distance from its training galaxies); their p_merger is "
        "kept but they are never flagged.</p>" + cards + "</section>"
    )


def borderline(n: int, thr: float, cards: str) -> str:
    return (
        f'<section id="borderline"><h2>Borderline cases</h2><p class="note">The {n} '
        f"scored objects with p_merger closest to the threshold {thr:.3f}, sorted by p_merger: where visual "
        f"inspection changes the sample most.</p>" + cards + "</section>"
    )


def throughput(png: bytes, caption: str) -> str:
    return f'<section id="throughput"><h2>Throughput</h2>{figure(png, "throughput", esc(caption))}</section>'


def provenance(prov: list[list], metrics: dict) -> str:
    mrows = [[k, fmt(v, 4) if isinstance(v, float) else fmt(v)] for k, v in sorted(metrics.items())]
    return (
        '<section id="provenance"><h2>Provenance</h2><div class="two"><div>'
        + table(None, prov)
        + "</div><div><h3>Engine test-split metrics (model card)</h3>"
        + (table(["metric", "value"], mrows, num={1}) if mrows else '<p class="note">none in the card</p>')
        + '<p class="note">precision_at_2pct: precision expected at a 2 % survey merger prevalence.</p>'
        + "</div></div></section>"
    )


def method(n_files: int, max_memory_rows: int, st: RunStats, npre: int, seconds: float, when: str) -> str:
    return (
        f'<section id="method"><h2>How this page was made</h2><p class="note">One streaming pass over '
        f"{n_files:,} Parquet files in batches of at most "
        f"{max_memory_rows:,} rows. Exact (every row counted): the score histogram, flag counts, sky maps "
        f"(accumulated at HEALPix order {st.sky_order}), the binned merger fractions, the top-N and borderline "
        f"selections. Sampled: the per-column bin edges (1–99 % quantiles of {npre:,} rows from randomly chosen "
        f"row groups; values outside are counted as below/above) and the scatter plots (uniform reservoir sample "
        f"of {0 if st.sample is None else len(st.sample):,} scored rows, seed 0). Built in "
        f"{seconds:.1f} s on {when}.</p></section>"
    )


def header_cards(st: RunStats, merg: int, gfrac: float, thr: float, summary: RunSummary) -> list[tuple[str, str]]:
    return [
        ("rows", f"{st.rows:,}"),
        ("scored", f"{st.scored:,} ({st.scored / max(st.rows, 1):.1%})"),
        ("flagged mergers", f"{merg:,} ({gfrac:.2%})"),
        ("threshold", f"{thr:.4g}"),
        *expected_purity_card(summary.operating_point),
        ("objects / s", f"{summary.objects_per_s or 0:,.0f}"),
        ("engine", summary.engine or "?"),
    ]


def expected_purity_card(op: dict | None) -> list[tuple[str, str]]:
    """The header card of the expected purity at the run's prevalence (none without a curve)."""
    if not op or op.get("expected_purity") is None:
        return []
    lo, hi = op["expected_purity_ci95"]
    return [(f"expected purity at {op['prevalence']:.0%}", f"{op['expected_purity']:.2f} [{lo:.2f}, {hi:.2f}]")]


def nav(body: str) -> list[tuple[str, str]]:
    """The navigation links of the sections the page has."""
    return [n for n in NAV if f'id="{n[0]}"' in body]
