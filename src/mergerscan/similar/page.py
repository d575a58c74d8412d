"""The neighbour gallery: one HTML page (no external resources) in the style of the run report, with
cutouts of the query and its neighbours fetched through the run's own image source
(:func:`mergerscan.report.gallery.fetch_cutouts`, the run report's galleries)."""

from __future__ import annotations

import io
from pathlib import Path

from ..atomic import atomic_write_text
from ..report.gallery import fetch_cutouts, gallery, path_column
from ..report.page import data_uri, esc, page, table  # the run report's page shell and style
from ..report.provenance import engine_spec
from ..run_layout import RunLayout
from ..run_summary import RunSummary
from .search import SimilarResult, read_summary


def _query_card(result: SimilarResult, summary: RunSummary, spec) -> str:
    """The query: its row's cutout (--like ID) or the file itself (--like-file)."""
    q = result.query
    if "file" in q:
        from PIL import Image

        buf = io.BytesIO()
        with Image.open(q["file"]) as im:
            im.convert("RGB").resize((192, 192)).save(buf, format="JPEG", quality=88)
        img = f'<img src="{data_uri(buf.getvalue(), "image/jpeg")}" alt="query stamp">'
        return (
            f'<div class="gallery"><div class="stamp">{img}<div class="p">p = {q["p_merger"]:.4f}</div>'
            f'<div class="id">{esc(Path(q["file"]).name)}</div><div>a file, not in the catalog</div></div></div>'
        )
    import pandas as pd

    row = pd.DataFrame([{"id": q["id"], **{k: v for k, v in q.items() if k != "id"}}])
    stamps, _ = fetch_cutouts(summary.source, row, spec, path_column(summary, list(row.columns)))
    return gallery(row, stamps, spec, float(summary.threshold), [])


def write_page(result: SimilarResult, path: str | Path | None = None) -> Path:
    """Write the gallery of ``result`` (default ``OUT/similar/like-<query>.html``); returns its path."""
    layout = RunLayout(result.out)
    summary = read_summary(result.out)
    spec = engine_spec(summary)
    thr = float(summary.threshold)
    nb = result.neighbours.drop(columns=["embedding", result.index["column"]], errors="ignore")
    paths = path_column(summary, list(nb.columns))
    stamps, err = fetch_cutouts(summary.source, nb, spec, paths)
    name = result.query.get("id") or Path(str(result.query.get("file"))).stem
    target = Path(path) if path else layout.similar_page(str(name))
    ix = result.index
    prov = table(
        None,
        [
            ["index", f"{ix['kind']} ({ix['factory']}), {ix['rows']:,} rows, {ix['dim']}-d {ix['column']!r}"],
            ["built", f"{ix['built']} in {ix['build_seconds']} s, faiss {ix['faiss']}, mergerscan {ix['mergerscan']}"],
            ["distance", "Euclidean between embeddings, re-ranked exactly"],
            ["engine", f"{summary.engine or '?'} (sha256 {(summary.engine_sha256 or '?')[:16]}...)"],
        ],
    )
    body = (
        f'<section id="query"><h2>Query</h2>{_query_card(result, summary, spec)}</section>'
        f'<section id="neighbours"><h2>{len(nb)} nearest neighbours</h2>'
        + (f'<div class="warn">{esc(err)}</div>' if err else "")
        + gallery(nb, stamps, spec, thr, ["rank", "distance"])
        + table(
            ["rank", "distance", "id", "ra", "dec", "p_merger", "status"],
            [
                [
                    r["rank"],
                    f"{r['distance']:.4f}",
                    r["id"],
                    f"{r['ra']:.6f}",
                    f"{r['dec']:+.6f}",
                    f"{r['p_merger']:.4f}",
                    r["status"],
                ]
                for _, r in nb.iterrows()
            ],
            num={0, 1, 3, 4, 5},
        )
        + f'</section><section id="index"><h2>Index</h2>{prov}</section>'
    )
    n_merg = int((nb["p_merger"] >= thr).sum()) if len(nb) else 0
    html = page(
        f"mergerscan similar — like {name}",
        esc(str(Path(result.out).resolve())),
        [("neighbours", str(len(nb))), ("flagged mergers among them", f"{n_merg}"), ("threshold", f"{thr:.3f}")],
        [("query", "Query"), ("neighbours", "Neighbours"), ("index", "Index")],
        body,
    )
    target.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(target, html, fsync=False)
    return target
