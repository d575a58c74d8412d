"""``mergerscan similar OUT --like ID | --like-file STAMP``: the k rows of a run nearest in embedding.

The query is a row of the run (its stored embedding; the row itself is left out of the answer) or
an image file embedded with the run's own engine (``Engine.score(stamps, features=True)``, the
vector the run's column holds).  Candidates come from the cached index (:mod:`.index`) and are
re-ranked with exact Euclidean distances read back from the dataset.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from ..run_layout import RunLayout
from ..run_summary import RunSummary, SummaryError
from .index import VectorIndex, load_index
from .vectors import EMBEDDING_COLUMN, RunVectors, SimilarError, find_id, open_run, read_rows


@dataclass
class SimilarResult:
    """The query and its neighbours (rank, distance, id, ra, dec, p_merger, status, ... by distance)."""

    out: Path
    query: dict  # {"id"|"file", "ra", "dec", "p_merger", "status"} (what is known of it)
    neighbours: pd.DataFrame
    index: dict  # the index's provenance
    built_now: bool = False
    id_column: str = "id"
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        rows = json.loads(self.neighbours.drop(columns=["embedding"], errors="ignore").to_json(orient="records"))
        return {"out": str(self.out), "query": self.query, "neighbours": rows, "index": self.index}


def read_summary(out: Path) -> RunSummary:
    """The run's summary (every key at its default where the run has none)."""
    layout = RunLayout(out)
    if not layout.summary.is_file():
        return RunSummary.from_dict({})
    try:
        return RunSummary.from_json(layout.summary.read_text())
    except SummaryError as exc:  # junk or a truncated write: say which file
        raise SummaryError(f"{layout.summary}: {exc}") from None


def _row_columns(summary: RunSummary, run: RunVectors) -> list[str]:
    cols = [summary.id_column, "ra", "dec", "p_merger", "status"]
    if summary.path_column:
        cols.append(summary.path_column)
    return [*cols, run.column]


def embed_file(out: Path, image: str | Path, run: RunVectors, backend: str = "onnxruntime", threads: int = 2):
    """The run engine's embedding of one stamp file, and the engine's p_merger for it."""
    from PIL import Image

    from ..engines import load_engine

    summary = read_summary(out)
    path = summary.engine_path
    if not path:  # no summary.json, or one without the engine: a run that did not finish
        raise SimilarError(f"{out}: the run's summary.json names no engine file to embed {image} with")
    if not Path(path).is_file():
        raise SimilarError(f"{out}: the run's engine file {path} is not there to embed {image}")
    engine = load_engine(path, backend=backend, threads=threads)
    if summary.engine_sha256 and engine.info.sha256 != summary.engine_sha256:
        raise SimilarError(
            f"{path}: the engine file changed since the run (sha256 differs); its embedding would not match"
        )
    try:
        with Image.open(image) as im:
            stamp = np.asarray(im.convert("RGB"))
    except (OSError, ValueError) as exc:
        raise SimilarError(f"{image}: not a readable image ({exc})") from None
    want = engine.spec.stamp_pixels
    if stamp.shape[:2] != (want, want):
        raise SimilarError(
            f"{image}: {stamp.shape[1]}x{stamp.shape[0]} px; the run's engine takes {want}x{want} px stamps "
            f"at {engine.spec.pixel_scale}\"/px (cut one as the run's image source does)"
        )
    res = engine.score(stamp[None], features=True)
    if res.features is None:
        raise SimilarError(f"{path}: the engine {engine.info.name} gives no embedding (an engine file without one)")
    vec = np.asarray(res.features, np.float32).reshape(1, -1)
    if vec.shape[1] != run.dim:
        raise SimilarError(
            f"{path}: the engine's embedding has {vec.shape[1]} values, the column {run.column!r} {run.dim}"
        )
    return vec, float(res.p_merger[0])


def _neighbours(run: RunVectors, vi: VectorIndex, q: np.ndarray, k: int, cols: list[str], skip: int | None):
    """The k nearest rows (exact re-rank of the index's candidates), ``skip`` (the query row) left out."""
    want = k + (skip is not None)
    n_cand = want if vi.provenance["kind"] == "flat" else max(4 * want, 256)
    _, loc = vi.search(q, n_cand)
    loc = loc[0][loc[0] >= 0]
    if skip is not None:
        loc = loc[loc != skip]
    rows = read_rows(run, loc, cols)
    vec = np.stack(rows[run.column].to_numpy()).astype(np.float32)
    rows.insert(0, "distance", np.sqrt(((vec - q) ** 2).sum(1)).astype(np.float64))
    rows["location"] = loc
    rows = rows.sort_values(["distance", "location"], kind="stable").head(k).reset_index(drop=True)
    rows.insert(0, "rank", np.arange(1, len(rows) + 1))
    return rows.drop(columns=["location"])


def similar(
    out: str | Path,
    like: str | int | None = None,
    *,
    like_file: str | Path | None = None,
    k: int = 20,
    column: str = EMBEDDING_COLUMN,
    rebuild: bool = False,
    backend: str = "onnxruntime",
) -> SimilarResult:
    """The ``k`` rows of the run in ``out`` nearest to the row whose id is ``like`` (or to the stamp
    file ``like_file``), by Euclidean distance between embeddings; builds (or reuses) the index."""
    out = Path(out)
    if (like is None) == (like_file is None):
        raise SimilarError("give one of --like ID or --like-file STAMP")
    if k < 1:
        raise SimilarError("--k must be >= 1")
    run = open_run(out, column)
    summary = read_summary(out)
    id_col = summary.id_column
    cols = _row_columns(summary, run)
    vi, built = load_index(run, rebuild=rebuild)
    if like_file is not None:
        q, p = embed_file(out, like_file, run, backend=backend)
        query, skip = {"file": str(like_file), "p_merger": p}, None
    else:
        skip = find_id(run, id_col, str(like))
        row = read_rows(run, np.array([skip]), cols).iloc[0]
        if row[run.column] is None:
            raise SimilarError(f"{out}: row {id_col} = {like} has no embedding (status {row.get('status')})")
        q = np.asarray(row[run.column], np.float32).reshape(1, -1)
        query = {"id": str(like)} | {c: _plain(row[c]) for c in cols[1:-1] if c in row}
    nb = _neighbours(run, vi, q, k, cols, skip)
    return SimilarResult(out, query, nb.rename(columns={id_col: "id"}), vi.provenance, built, id_col)


def _plain(v):
    return v.item() if hasattr(v, "item") else v
