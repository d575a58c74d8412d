"""The run report's galleries: cutouts re-fetched through the run's own image source, as cards."""

from __future__ import annotations

import io

import numpy as np

from ..catalogs.columns import AmbiguousColumn, find_column
from ..catalogs.schema import SCORED
from ..run_summary import RunSummary, SourceSummary
from .page import data_uri, esc, fmt


def thumbnail(stamp: np.ndarray | None, spec, size: int = 192, text: str = "") -> bytes:
    from PIL import Image, ImageDraw

    if stamp is None:
        im = Image.new("RGB", (size, size), (40, 44, 52))
        ImageDraw.Draw(im).text((10, size // 2 - 6), text or "no cutout", fill=(220, 220, 220))
    else:
        im = Image.fromarray(stamp).resize((size, size), Image.LANCZOS)
        d = ImageDraw.Draw(im)
        c, g, L = size // 2, size // 12, size // 10  # SkyServer-style ticks pointing at the centre
        d.line([(c - g - L, c), (c - g, c)], fill=(120, 220, 120), width=1)
        d.line([(c, c - g - L), (c, c - g)], fill=(120, 220, 120), width=1)
        bar = 20.0 / spec.pixel_scale * size / spec.stamp_pixels  # 20 arcsec
        d.line([(8, size - 10), (8 + bar, size - 10)], fill=(255, 255, 255), width=2)
        d.text((8, size - 24), '20"', fill=(255, 255, 255))
    buf = io.BytesIO()
    im.save(buf, format="JPEG", quality=88)
    return buf.getvalue()


def path_column(summary: RunSummary, columns: list[str]) -> str | None:
    """The output column naming each row's stamp file: the one summary.json records (its output
    name, ``in_`` prefix included); for a run from before it was recorded (0.1.0), a column
    'path' (any case)."""
    if "path_column" not in summary.missing:
        name = summary.path_column
        return name if name in columns else None
    try:
        return find_column(columns, "path")
    except AmbiguousColumn:
        return None


def fetch_cutouts(source: SourceSummary, rows, spec, path_col: str | None = None) -> tuple[list, str]:
    """Stamps (or None) for a few rows through the run's own image ``source``; (stamps, error
    note).  ``path_col``: the column of the rows naming each stamp file (:func:`path_column`)."""
    import pandas as pd

    from ..cutouts.sources import SourceConfig, open_source

    if rows is None or not len(rows):
        return [], ""
    try:
        cfg = SourceConfig(source.kind, source.location, tuple(sorted(source.options.items())))
        q = pd.DataFrame(
            {
                "id": rows["id"].astype(str).to_numpy(),
                "ra": rows["ra"].to_numpy(np.float64),
                "dec": rows["dec"].to_numpy(np.float64),
            }
        )
        if path_col in rows.columns and cfg.source_class.reads_path_column:
            paths = rows[path_col].astype(object)  # empty, as in the run: DIR/<id>.* instead
            q["path"] = paths.where(paths.notna(), "").astype(str).to_numpy()
        src = open_source(cfg, spec)
        try:
            stamps, status = src.fetch(q)
        finally:
            src.close()
    except Exception as exc:  # a report without cutouts beats no report
        return [None] * len(rows), f"cutouts could not be fetched: {type(exc).__name__}: {exc}"
    return [stamps[i] if status[i] in SCORED else None for i in range(len(rows))], ""


def gallery(rows, stamps, spec, thr: float, show: list[str], domain: bool = False) -> str:
    """Cards of ``rows`` with their cutouts; ``domain``: rows outside the training domain (their
    domain_score shown, never framed as mergers)."""
    if rows is None or not len(rows):
        return '<p class="note">no scored rows</p>'
    cards = []
    for (_, r), st in zip(rows.iterrows(), stamps):
        img = data_uri(thumbnail(st, spec, text=r["status"] if st is None else ""), "image/jpeg")
        ra, dec = float(r["ra"]), float(r["dec"])
        link = f"https://www.legacysurvey.org/viewer?ra={ra:.6f}&dec={dec:.6f}&layer=ls-dr10&zoom=15"
        vals = " · ".join(
            f"{esc(c)} {fmt(r[c].item() if hasattr(r[c], 'item') else r[c])}" for c in show if c in r and r[c] == r[c]
        )
        cards.append(
            f'<div class="stamp{" merger" if r["p_merger"] >= thr and not domain else ""}">'
            f'<img src="{img}" alt="cutout of {esc(str(r["id"]))}" loading="eager">'
            f'<div class="p">p = {r["p_merger"]:.4f}</div><div class="id">{esc(str(r["id"]))}</div>'
            f"<div>{ra:.5f} {dec:+.5f}{'' if r['status'] == 'ok' else ' · ' + esc(str(r['status']))}</div>"
            + (f"<div>{vals}</div>" if vals else "")
            + (
                f"<div>domain_score {r['domain_score']:.4g}</div>"
                if domain and r["domain_score"] == r["domain_score"]
                else ""
            )
            + f'<div><a href="{esc(link)}">Legacy Surveys viewer</a></div></div>'
        )
    return '<div class="gallery">' + "".join(cards) + "</div>"
