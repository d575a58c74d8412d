"""Sections of the training / evaluation report that speak to a survey user: precision at survey
prevalence with its intervals, and where the model fails (the worst test-split errors, with their
cutouts).  Both read what metrics.json holds (training/survey.py writes it)."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import numpy as np

from .gallery import thumbnail
from .page import data_uri, esc, fmt, table

PIXEL_SCALE = 0.396  # arcsec/px of the labelled SDSS stamps (the scale bar of the thumbnails)


def survey_section(survey: dict) -> str:
    """The prevalence table at the engine's threshold and at the precision-target threshold."""
    rows = []
    blocks = [("engine threshold", survey.get("at_engine_threshold"))]
    for key, v in survey.items():
        if key.startswith("for_precision_") and isinstance(v, dict):
            target = key.removeprefix("for_precision_").replace("_at_", " at ").replace("pct", " %")
            blocks.append((f"threshold for precision {target} (from validation)", v.get("test")))
            if v.get("test") is None:
                rows.append([blocks[-1][0], "no validation threshold reaches it", "", "", "", ""])
    for name, m in blocks:
        if not m:
            continue
        ci = lambda k, m=m: f"{fmt(m[k], 3)} [{fmt(m[k + '_ci95'][0], 3)}, {fmt(m[k + '_ci95'][1], 3)}]"
        rows.append(
            [
                f"{name}: {fmt(m['threshold'], 4)}",
                ci("recall"),
                *(ci(f"precision_at_{p}pct") for p in ("1", "2", "5")),
                f"{m['false_positives']} / {m['n_non_mergers']}",
            ]
        )
    hdr = ["threshold", "recall", "precision @ 1 %", "precision @ 2 %", "precision @ 5 %", "false positives (test)"]
    note = esc(survey.get("method", ""))
    return (
        '<section id="survey"><h2>At survey prevalence</h2>'
        f"<p>Test split; value [95 % interval]. Method: {note}.</p>" + table(hdr, rows) + "</section>"
    )


def _stamp(path: str) -> np.ndarray | None:
    from PIL import Image

    try:
        with Image.open(path) as im:
            return np.asarray(im.convert("RGB"))
    except (OSError, ValueError):
        return None


def failures_section(failures: dict, size: int = 160) -> str:
    """Cards of the most confident false positives and false negatives of the test split."""
    parts = ['<section id="failures"><h2>Where it fails</h2>']
    parts.append(
        f"<p>The test split's most confident errors at threshold {fmt(failures.get('threshold'), 4)}: "
        "non-mergers scored highest (false positives) and mergers scored lowest (false negatives).</p>"
    )
    for key, title in (("false_positives", "False positives"), ("false_negatives", "False negatives")):
        rows = failures.get(key) or []
        parts.append(f'<h3>{title} ({len(rows)})</h3><div class="gallery">')
        for r in rows:
            st = _stamp(r["image"]) if Path(r["image"]).is_file() else None
            spec = SimpleNamespace(pixel_scale=PIXEL_SCALE, stamp_pixels=st.shape[0] if st is not None else size)
            jpg = thumbnail(st, spec, size=size, text="image not found")
            parts.append(
                f'<div class="stamp{" merger" if r["is_merger"] else ""}">'
                f'<img src="{data_uri(jpg, "image/jpeg")}" alt="cutout of {esc(r["id"])}" loading="eager">'
                f'<div class="p">p = {r["p_merger"]:.4f}</div><div class="id">{esc(r["id"])}</div>'
                f"<div>labelled {'merger' if r['is_merger'] else 'non-interacting'}</div></div>"
            )
        parts.append("</div>")
    parts.append("</section>")
    return "".join(parts)
