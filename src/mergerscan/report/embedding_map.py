"""The run report's embedding map, for runs written with ``--embeddings``.

A uniform reservoir of scored rows (their ``embedding`` vectors) is projected onto its own first
two principal components (numpy only: the vectors are already PCA coordinates of the engine's
features, so a second PCA is their best 2-D linear view) and drawn coloured by p_merger, with
the cutouts of a few rows spread over the map, fetched like the galleries' (:mod:`.gallery`).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from ..run_summary import RunSummary
from .page import esc, figure

MAP_ROWS = 20_000  # scored rows behind the map (a uniform sample; memory ~ MAP_ROWS x N floats)
THUMBS = 12  # rows whose cutouts are shown on the map and below it


@dataclass
class EmbeddingSample:
    """Uniform reservoir (smallest random keys, without replacement) of scored rows and their vectors."""

    rows: int = MAP_ROWS
    seed: int = 1
    table: pd.DataFrame | None = None  # id, ra, dec, p_merger, status, ... of the kept rows
    vectors: np.ndarray | None = None  # (len(table), N) float32
    seen: int = 0  # scored rows with a vector offered to the sample
    _keys: np.ndarray = field(default_factory=lambda: np.zeros(0))

    def __post_init__(self):
        self._rng = np.random.default_rng(self.seed)

    def add(self, rows: pd.DataFrame, vectors: np.ndarray) -> None:
        ok = np.isfinite(vectors).all(axis=1)
        if not ok.any():
            return
        rows, vectors = rows[ok].reset_index(drop=True), vectors[ok]
        self.seen += len(rows)
        keys = self._rng.random(len(rows))
        if self.table is not None and self.vectors is not None:
            rows = pd.concat([self.table, rows], ignore_index=True)
            vectors, keys = np.concatenate([self.vectors, vectors]), np.concatenate([self._keys, keys])
        if len(rows) > self.rows:
            keep = np.sort(np.argpartition(keys, self.rows)[: self.rows])
            rows, vectors, keys = rows.iloc[keep].reset_index(drop=True), vectors[keep], keys[keep]
        self.table, self.vectors, self._keys = rows, vectors, keys


@dataclass(frozen=True)
class Projection:
    xy: np.ndarray  # (n, 2)
    ratio: tuple[float, float]  # share of the sample's embedding variance along each axis
    thumbs: np.ndarray  # indices of the rows whose cutouts are shown


def project(sample: EmbeddingSample, thumbs: int = THUMBS) -> Projection | None:
    """The sample on its first two principal components; None with fewer than 3 rows."""
    if sample.vectors is None or len(sample.vectors) < 3:
        return None
    v = np.asarray(sample.vectors, np.float64)
    c = v - v.mean(axis=0)
    _, s, vt = np.linalg.svd(c, full_matrices=False)
    xy = c @ vt[:2].T if vt.shape[0] >= 2 else np.c_[c @ vt[:1].T, np.zeros(len(c))]
    var = s**2 / max(float((s**2).sum()), 1e-30)
    ratio = (float(var[0]), float(var[1]) if len(var) > 1 else 0.0)
    return Projection(xy, ratio, spread(xy, thumbs))


def spread(xy: np.ndarray, k: int) -> np.ndarray:
    """``k`` points spread over the map (farthest-point order from the one nearest the centre): the
    thumbnails show what each region of the map looks like, not only its dense core."""
    d = np.hypot(*(xy - np.median(xy, axis=0)).T)
    chosen = [int(np.argmin(d))]
    far = np.hypot(*(xy - xy[chosen[0]]).T)
    while len(chosen) < min(k, len(xy)):
        i = int(np.argmax(far))
        if far[i] <= 0:
            break
        chosen.append(i)
        far = np.minimum(far, np.hypot(*(xy - xy[i]).T))
    return np.array(chosen, int)


def fig_embedding_map(proj: Projection, p_merger: np.ndarray, stamps: list, thr: float) -> bytes:
    """Scatter of the projected sample coloured by p_merger; the thumbnails' cutouts at their points."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.offsetbox import AnnotationBbox, OffsetImage
    from PIL import Image

    from .page import fig_png

    fig, ax = plt.subplots(figsize=(9.5, 7.2))
    sc = ax.scatter(*proj.xy.T, c=p_merger, cmap="viridis", vmin=0, vmax=1, s=9, alpha=0.8, linewidths=0)
    fig.colorbar(sc, ax=ax, label="p_merger", fraction=0.04, pad=0.02).ax.axhline(thr, color="#e8a33d", lw=2)
    for n, (i, stamp) in enumerate(zip(proj.thumbs, stamps), start=1):
        if stamp is not None:
            thumb = np.asarray(Image.fromarray(stamp).resize((48, 48), Image.LANCZOS))
            edge = "#e8a33d" if p_merger[i] >= thr else "#8a96a3"
            box = AnnotationBbox(OffsetImage(thumb, zoom=0.75), proj.xy[i], bboxprops={"edgecolor": edge, "lw": 1.5})
            box.set_zorder(3)
            ax.add_artist(box)
        label = {"boxstyle": "round,pad=0.15", "fc": "white", "ec": "none", "alpha": 0.85}
        ax.annotate(str(n), proj.xy[i], xytext=(14, 14), textcoords="offset points", fontsize=9, zorder=4, bbox=label)
    ax.set_xlabel(f"embedding PC 1 ({proj.ratio[0]:.0%} of the sample's variance)")
    ax.set_ylabel(f"embedding PC 2 ({proj.ratio[1]:.0%})")
    ax.set_title(f"{len(proj.xy):,} scored objects in the engine's representation")
    return fig_png(fig)


def section(
    png: bytes | None, sample: EmbeddingSample, proj: Projection | None, summary: RunSummary, cards: str
) -> str:
    """The report section of a run with an ``embedding`` column."""
    emb = summary.embeddings or {}
    what = (
        f"the first {emb['dimension']} of the engine's {emb['k']} PCA components of its pooled penultimate features"
        if emb.get("dimension") and emb.get("k")
        else "the engine's PCA embedding of its penultimate features"
    )
    if proj is None:
        body = '<p class="note">fewer than 3 scored rows with an embedding: no map</p>'
    else:
        body = figure(
            png,
            "embedding map",
            esc(
                f"Each point is a scored object ({len(proj.xy):,} of {sample.seen:,}, a uniform sample), placed by "
                f"the first two principal components of its embedding ({sum(proj.ratio):.0%} of the sample's "
                "embedding variance) and coloured by p_merger (the orange tick on the colour bar: the threshold). "
                "Numbered cutouts: objects spread over the map, shown below in the order of their numbers."
            ),
        )
    return (
        '<section id="embeddings"><h2>Embedding map</h2>'
        f'<p class="note">Column <code>embedding</code>: {esc(what)} (<code>--embeddings</code>). Objects close '
        "on this map look alike to the engine; clusters of high p_merger show which kinds of object it calls "
        "mergers.</p>" + body + cards + "</section>"
    )
