"""The in-memory scoring core: a partition's rows -> statuses, scores and the output table.

No file is read or written here.  The rows are a DataFrame shaped like the split stage's shards
(the plan's columns plus ``_input_row`` and ``_healpix29``; ``_selected`` / ``_domain`` where
--select or the catalog rules of --domain apply).  The partition task (task.py) and the library
calls (``mergerscan.score``, ``mergerscan.score_catalog``: in_memory.py) all score through
:func:`score_rows`, so their scores agree by construction.  Steps: triage (rows.triage), fetch
and score the rest in batches (:class:`BatchScorer`: fetching batch k+1 overlaps inference on
batch k; a batch out of memory is scored again in halves), the output table (rows.output_table).
"""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import NamedTuple

import numpy as np
import pandas as pd

from ..catalogs.schema import SCORED, STATUS, Status
from ..cutouts.sources import SourceConfig, open_source
from ..engines.errors import is_out_of_memory, is_sticky, release_device_memory
from ..engines.uncertainty import score_interval
from .engine_cache import device_failure
from .failures import note
from .plan import Plan
from .resume import ResumePlan
from .rows import Scores, output_table, triage

__all__ = ["BatchScorer", "Previous", "RowsScored", "ScoreSettings", "score_rows"]


@dataclass(frozen=True)
class ScoreSettings:
    """What scoring rows needs besides the rows, the plan, the engine and the image source."""

    batch_size: int = 128  # stamps per engine call
    threshold: float | None = None  # of is_merger (the run's operating point); None: the engine's
    image_threshold: float | None = None  # --domain's image check: domain_score above it is not in_domain
    max_saturated_core: int | None = None  # ... and saturated_core above it
    embeddings: int = 0  # keep the first N embedding components (0: features not asked for)


class Previous(NamedTuple):
    """A partition as an earlier run wrote it, aligned with the rows (a retry keeps its lasting results)."""

    status: np.ndarray
    scores: Scores
    examples: dict


@dataclass
class RowsScored:
    """What :func:`score_rows` gives: the output table (None without rows) and how it went."""

    table: pd.DataFrame | None
    status: np.ndarray
    counts: dict[str, int]
    examples: dict
    fetch_seconds: float = 0.0
    infer_seconds: float = 0.0
    no_domain_score: int = 0  # rows scored by an engine call that gave no domain_score
    fetched: bool = False  # whether any row was sent to the image source
    failures: dict = field(default_factory=dict)  # why a service failed rows (its stats)


class Fetched(NamedTuple):
    stamps: np.ndarray
    status: np.ndarray
    seconds: float


class BatchScorer:
    """Fetch and score rows of one partition, writing into its ``status`` and ``scores`` arrays.

    Memory: a batch that raises MemoryError (or CUDA out of memory: engines/errors.py) is
    scored again in halves, down to single rows; a row that still fails is flagged
    ``out_of_memory``.  Any other inference error flags the batch ``inference_failed``."""

    def __init__(
        self,
        src,
        engine,
        rows: pd.DataFrame,
        status: np.ndarray,
        scores: Scores,
        examples: dict,
        input_rows: np.ndarray,
    ):
        self.src, self.engine, self.rows, self.ids = src, engine, rows, rows["id"].to_numpy()
        self.status, self.examples, self.input_rows = status, examples, input_rows
        self.p, self.d, self.sat, self.e = scores
        self.fetch_seconds = self.infer_seconds = 0.0
        self.no_domain_score = 0  # rows scored by an engine call that gave no domain_score

    def fetch(self, idx: np.ndarray) -> Fetched:
        t = time.time()
        stamps, st = self.src.fetch(self.rows.iloc[idx].reset_index(drop=True))
        return Fetched(stamps, st, time.time() - t)

    def run(self, batches: list[np.ndarray]) -> None:
        """Score every batch, prefetching the next one while the engine runs."""
        if not batches:
            return
        with ThreadPoolExecutor(1) as pool:
            fut = pool.submit(self.fetch, batches[0])
            for k, idx in enumerate(batches):
                fetched: Fetched | None
                try:
                    fetched = fut.result()
                except MemoryError:
                    fetched = None  # fetched again (in halves) by score()
                if k + 1 < len(batches):
                    fut = pool.submit(self.fetch, batches[k + 1])
                self.score(idx, fetched)
                fetched = None  # the stamps are not held while the next batch is fetched

    def score(self, idx: np.ndarray, fetched: Fetched | None = None) -> None:
        """Fetch (unless prefetched) and score rows ``idx``; on MemoryError, in halves."""
        got: Fetched | None = None
        try:
            got = fetched if fetched is not None else self.fetch(idx)
            fetched = None
            self.fetch_seconds += got.seconds
            self.status[idx] = got.status
            self._infer(idx, got.stamps, np.isin(got.status, SCORED))
        except MemoryError:
            got = fetched = None  # drop the stamps before retrying
            self.p[idx] = self.d[idx] = self.sat[idx] = self.e[idx] = np.nan
            if len(idx) == 1:
                self.status[idx] = Status.OUT_OF_MEMORY
                note(
                    self.examples,
                    Status.OUT_OF_MEMORY,
                    f"row {self.input_rows[idx[0]]} (id {self.ids[idx[0]]}): MemoryError even for this row alone",
                )
                return
            h = len(idx) // 2
            self.score(idx[:h])
            self.score(idx[h:])

    def _infer(self, idx: np.ndarray, stamps: np.ndarray, ok: np.ndarray) -> None:
        t = time.time()
        try:
            n_emb = self.e.shape[1]  # 0: the run writes no embeddings, features not asked for
            out = self.engine.score(stamps[ok], features=n_emb > 0)
            self.p[idx[ok]] = out.p_merger
            if out.saturated_core is not None:
                self.sat[idx[ok]] = out.saturated_core
            if n_emb and out.features is not None:
                self.e[idx[ok]] = out.features[:, :n_emb]
            if out.domain_score is not None:  # None: the engine has no image-level check
                self.d[idx[ok]] = out.domain_score
            else:
                self.no_domain_score += int(ok.sum())
        except MemoryError:
            raise
        except Exception as e:  # one bad batch must not lose the partition
            if is_out_of_memory(e):  # CUDA OOM is a RuntimeError: retry in halves too
                release_device_memory()
                raise MemoryError(f"{type(e).__name__}: {str(e)[:200]}") from e
            if is_sticky(e):
                device_failure(self.engine, e)
            self.status[idx[ok]] = Status.INFERENCE_FAILED
            note(
                self.examples,
                Status.INFERENCE_FAILED,
                f"{int(ok.sum())} row(s) from id {self.ids[idx[ok][0]]}: {type(e).__name__}: {e}",
            )
        self.infer_seconds += time.time() - t


def fetch_rows(df: pd.DataFrame, plan: Plan, ids: np.ndarray, source: SourceConfig) -> pd.DataFrame:
    """What the image source is asked for: id, ra, dec (and the stamp file, with a path column)."""
    c, n = plan.columns, len(df)
    rows = pd.DataFrame(
        {
            "id": ids,
            "ra": df[c["ra"]].to_numpy(np.float64) if n else [],
            "dec": df[c["dec"]].to_numpy(np.float64) if n else [],
        }
    )
    path_col = plan.path_column
    if path_col and source.source_class.reads_path_column:  # else files are named by the id
        rows["path"] = (
            df[path_col].astype(object).where(df[path_col].notna(), "").astype(str).to_numpy() if n else []
        )  # empty: DIR/<id>.* instead
    return rows


def _keep_previous(status: np.ndarray, scores: Scores, examples: dict, prev: Previous) -> None:
    """A retry: rows that were ok or failed lastingly keep what the earlier run wrote (the re-run
    policy is resume.ResumePlan's: only rows of a transient status are scored again)."""
    keep = (status == "") & ResumePlan.keep_rows(prev.status)
    status[keep] = prev.status[keep]
    for now, before in zip(scores, prev.scores):
        now[keep] = before[keep]
    for k, v in ResumePlan.kept_examples(prev.examples).items():
        note(examples, k, v)


def _flag_all(todo: np.ndarray, status: np.ndarray, flag: str, examples: dict, inrow, ids) -> None:
    """The worker scoring this partition was killed repeatedly: every row left gets ``flag``."""
    status[todo] = flag
    for i in todo[:1]:
        note(
            examples,
            flag,
            f"row {inrow[i]} (id {ids[i]}): the worker scoring this partition was "
            "killed repeatedly (memory), even with the smallest batches",
        )


def _fetch_and_score(df, plan, ids, source, engine, scorer_args, batches) -> tuple[BatchScorer, dict]:
    status, scores, examples, inrow = scorer_args
    src = open_source(source, engine.spec)
    scorer = BatchScorer(src, engine, fetch_rows(df, plan, ids, source), status, scores, examples, inrow)
    try:
        scorer.run(batches)
    finally:
        for k, v in (getattr(src, "examples", None) or {}).items():
            note(examples, k, v)
        src.close()
    return scorer, dict(getattr(src, "stats", {}).get("failures", {}))


def score_rows(
    df: pd.DataFrame,
    plan: Plan,
    engine,
    source: SourceConfig,
    settings: ScoreSettings,
    *,
    previous: Previous | None = None,
    flag_status: str | None = None,
) -> RowsScored:
    """Triage, fetch, score and tabulate one partition's rows (in the order given).

    ``previous``: a retry keeps these results for every row that did not fail transiently.
    ``flag_status``: fetch and score nothing, every row not otherwise flagged gets this status."""
    n = len(df)
    examples: dict = {}
    status, ids = triage(df, plan, examples)
    inrow = df["_input_row"].to_numpy() if n else np.zeros(0, np.int64)
    scores = Scores.empty(n, settings.embeddings)
    if previous is not None and n:
        _keep_previous(status, scores, examples, previous)
    todo = np.flatnonzero(status == "")
    if flag_status is not None:
        _flag_all(todo, status, flag_status, examples, inrow, ids)
        todo = todo[:0]
    elif n:
        # spatial order (nested HEALPix): consecutive batches share survey frames, so a frame source's
        # small per-partition frame cache is reused instead of re-reading frames for every batch
        todo = todo[np.argsort(df["_healpix29"].to_numpy()[todo], kind="stable")]
    batches = [todo[i : i + settings.batch_size] for i in range(0, len(todo), settings.batch_size)]
    out = RowsScored(None, status, {}, examples)
    if batches:
        scorer, out.failures = _fetch_and_score(
            df, plan, ids, source, engine, (status, scores, examples, inrow), batches
        )
        out.fetched, out.no_domain_score = True, scorer.no_domain_score
        out.fetch_seconds, out.infer_seconds = scorer.fetch_seconds, scorer.infer_seconds
    unknown = set(status) - set(STATUS)
    if unknown:
        raise RuntimeError(f"image source returned unknown status {sorted(unknown)}")
    out.counts = {k: int(v) for k, v in pd.Series(status).value_counts().items()} if n else {}
    threshold = engine.info.threshold if settings.threshold is None else settings.threshold
    if n:
        interval = score_interval(scores.p_merger, engine.info.curve)  # the curve: once per engine
        out.table = output_table(
            df, plan, scores, status, threshold, settings.image_threshold, settings.max_saturated_core, interval
        )
    return out
