"""The report of a training run: ``RUN/report.html`` from its plots, metrics.json, table1.md, history.json."""

from __future__ import annotations

import json
import re
from pathlib import Path

from ..atomic import atomic_write_text
from ..engines.card import EngineCard
from .page import Raw, drawn, esc, fig_png, figure, fmt, page, table
from .training_sections import failures_section, survey_section

PLOTS = [
    ("roc.png", "ROC curve (test split)"),
    ("pr.png", "Precision-recall curve (test split)"),
    ("reliability.png", "Reliability diagram (test split, after temperature scaling)"),
    ("confusion.png", "Confusion matrix at the validation-chosen threshold"),
]
HEADLINE = ("roc_auc", "pr_auc", "precision_at_2pct", "ece", "threshold", "n")


def markdown_tables(md: str) -> str:
    """The small Markdown subset table1.md uses: '## heading', pipe tables, paragraphs."""
    out: list[str] = []
    rows: list[list[str]] = []

    def flush():
        if rows:
            out.append(table(rows[0], rows[1:], num=set(range(1, len(rows[0])))))
            rows.clear()

    for line in md.splitlines():
        s = line.strip()
        if s.startswith("|"):
            cells = [c.strip() for c in s.strip("|").split("|")]
            if not all(re.fullmatch(r":?-+:?", c) for c in cells):
                rows.append(cells)
            continue
        flush()
        if s.startswith("#"):
            out.append(f"<h3>{esc(s.lstrip('#').strip())}</h3>")
        elif s:
            out.append(f"<p>{esc(s)}</p>")
    flush()
    return "\n".join(out)


def fig_history(history: list[dict]) -> bytes | None:
    ep = [h for h in history if "epoch" in h]
    if not ep:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    x = range(1, len(ep) + 1)
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(10, 3.4), constrained_layout=True)
    for key, c in (("train_loss", "#1f5fa8"), ("val_loss", "#e8a33d")):
        a1.plot(x, [h.get(key, float("nan")) for h in ep], "o-", ms=3, color=c, label=key)
    a2.plot(x, [h.get("val_roc_auc", float("nan")) for h in ep], "o-", ms=3, color="#3f9a52", label="val ROC AUC")
    for ax in (a1, a2):
        for i in range(1, len(ep)):  # phase boundaries
            if ep[i].get("phase") != ep[i - 1].get("phase"):
                ax.axvline(i + 0.5, color="k", ls=":", lw=0.8)
        ax.set_xlabel("epoch (all phases)")
        ax.xaxis.get_major_locator().set_params(integer=True)
        ax.legend(frameon=False)
    a1.set_ylabel("loss")
    a2.set_ylabel("ROC AUC")
    return fig_png(fig)


TRAINING_NAV = (
    ("metrics", "Metrics"),
    ("survey", "Survey prevalence"),
    ("failures", "Failures"),
    ("plots", "Plots"),
    ("history", "History"),
    ("card", "Model card"),
)


def build_training_report(run_dir) -> Path:
    """Gather a training run's plots and metrics into ``RUN/report.html`` (images embedded)."""
    run = Path(run_dir)
    m = json.loads((run / "metrics.json").read_text()) if (run / "metrics.json").is_file() else {}
    card = _engine_card(run, m)
    S = [_metrics_section(run, m)] + [s for s in (_plots_section(run), _history_section(run)) if s]
    if m.get("survey"):
        S.append(survey_section(m["survey"]))
    if m.get("failures"):
        S.append(failures_section(m["failures"]))
    if card_html := _card_section(card):
        S.append(card_html)
    cards = [
        (k, fmt(m.get("test", {}).get(k), 3))
        for k in ("roc_auc", "pr_auc", "precision_at_2pct")
        if m.get("test", {}).get(k) is not None
    ]
    nav = [(a, t) for a, t in TRAINING_NAV if f'id="{a}"' in "".join(S)]
    html_text = page(
        f"mergerscan training report — {card.name or run.name}", esc(str(run.resolve())), cards, nav, "\n".join(S)
    )
    atomic_write_text(run / "report.html", html_text, fsync=False)
    return run / "report.html"


def _metrics_section(run: Path, m: dict) -> str:
    rows = []
    for k in HEADLINE:
        vals = [m.get(split, {}).get(k) for split in ("val", "test", "int8_test")]
        if any(v is not None for v in vals):
            rows.append([k] + ["" if v is None else fmt(v, 4) for v in vals])
    for k in ("f1", "precision", "recall"):
        vals = [m.get(split, {}).get("merger", {}).get(k) for split in ("val", "test", "int8_test")]
        if any(v is not None for v in vals):
            rows.append([f"merger {k}"] + ["" if v is None else fmt(v, 4) for v in vals])
    hdr = ["metric", "validation", "test"] + (["test (INT8 engine)"] if "int8_test" in m else [])
    return (
        '<section id="metrics"><h2>Metrics</h2>'
        + (table(hdr, [r[: len(hdr)] for r in rows], num=set(range(1, len(hdr)))) if rows else "")
        + (markdown_tables((run / "table1.md").read_text()) if (run / "table1.md").is_file() else "")
        + "</section>"
    )


def _plots_section(run: Path) -> str:
    """The run's PNG plots, the known ones first with their captions ("" without any)."""
    figs = []
    for name, cap in PLOTS + [(p.name, p.stem) for p in sorted(run.glob("*.png")) if p.name not in dict(PLOTS)]:
        if (run / name).is_file():
            figs.append(f"<div>{figure((run / name).read_bytes(), name, esc(cap))}</div>")
    if not figs:
        return ""
    return '<section id="plots"><h2>Plots</h2><div class="two">' + "".join(figs) + "</div></section>"


def _history_section(run: Path) -> str:
    """The learning curves from history.json; the note where they could not be drawn."""
    if not (run / "history.json").is_file():
        return ""
    notes: list[str] = []
    history = json.loads((run / "history.json").read_text())
    png = drawn(notes, "learning curves", fig_history, history, default=False)
    if png is None:
        return ""
    return (
        '<section id="history"><h2>Training history</h2>'
        + (figure(png, "learning curves") if png else "".join(f'<p class="note">{esc(n)}</p>' for n in notes))
        + "</section>"
    )


def _engine_card(run: Path, m: dict) -> EngineCard:
    """The run's card (metrics.json's, else card.json), read as every reader of a card reads it."""
    card_file = run / "card.json"
    return EngineCard.from_dict(m.get("card") or (json.loads(card_file.read_text()) if card_file.is_file() else {}))


def _card_section(card: EngineCard) -> str:
    skip = {"metrics_test", "command"}
    stored = card.to_dict()  # the card's JSON, key for key (a table row per key)
    crow = [[k, fmt(v, 4) if isinstance(v, float) else str(v)] for k, v in stored.items() if k not in skip]
    if card.training.command:
        crow.append(["command", Raw(f"<code>{esc(card.training.command)}</code>")])
    return '<section id="card"><h2>Model card</h2>' + table(None, crow) + "</section>" if crow else ""
