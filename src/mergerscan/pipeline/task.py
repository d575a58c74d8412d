"""The per-partition task: rows -> stamps -> p_merger -> one Parquet file + done marker.

A pure function of (the partition's rows in the split, the image source, the engine): writing it twice
gives the same bytes.  Three steps: read the rows and decide what needs no image (rows.triage),
fetch and score the rest in batches (:class:`BatchScorer`: fetching batch k+1 overlaps inference
on batch k; a batch out of memory is scored again in halves), write the table and the marker.
"""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from typing import Any, NamedTuple

import numpy as np
import pandas as pd

from ..catalogs.schema import SCORED, STATUS, TRANSIENT
from ..catalogs.write import embedding_matrix, write_partition
from ..cutouts.sources import SourceConfig, open_source
from ..engines.errors import is_out_of_memory, is_sticky, release_device_memory
from ..engines.uncertainty import interval_for_engine
from ..run_layout import RunLayout
from .domain import rule_counts
from .engine_cache import device_failure, worker_engine
from .failures import coord_range, note
from .faults import fault_point
from .plan import Partition, Plan
from .resume import done, mark_done, read_marker
from .rows import Scores, output_table, triage
from .split import read_partition

__all__ = ["BatchScorer", "PartitionTask", "device_failure", "score_partition", "worker_engine"]


@dataclass(frozen=True)
class PartitionTask:
    """Everything a partition task needs besides the plan and the partition; picklable (it is
    sent to the worker with every task).  The run varies ``batch_size``, ``source`` and
    ``flag_status`` when it retries a partition that ran out of memory (oom.py)."""

    output: str  # the run directory (RunLayout)
    source: SourceConfig
    engine_path: str | None  # None: the packaged engine
    backend: str = "onnxruntime"
    threads: int = 1
    batch_size: int = 128
    run_meta: dict[str, Any] = field(default_factory=dict)  # provenance stored in every output file
    # set by the run after the worker scoring this partition was killed repeatedly (memory): write
    # the partition without fetching or scoring, every row not otherwise flagged gets this status
    flag_status: str | None = None
    shared_batch: int = 0  # rows per merged engine call (0: batches not shared)
    views: int | None = None
    threshold: float | None = None  # of is_merger (the run's operating point); None: the engine's
    fault_hook: str | None = None  # faults.py: tests only
    image_threshold: float | None = None  # --domain's image check: domain_score above it is not in_domain
    max_saturated_core: int | None = None  # ... and saturated_core above it (engines.domain.saturated_core)
    embeddings: int = 0  # --embeddings N: keep the first N embedding components (0: features not asked for)

    def retry_with(self, **changes: Any) -> PartitionTask:
        return replace(self, **changes)


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
                self.status[idx] = "out_of_memory"
                note(
                    self.examples,
                    "out_of_memory",
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
            self.status[idx[ok]] = "inference_failed"
            note(
                self.examples,
                "inference_failed",
                f"{int(ok.sum())} row(s) from id {self.ids[idx[ok][0]]}: {type(e).__name__}: {e}",
            )
        self.infer_seconds += time.time() - t


def _read_rows(plan: Plan, part: Partition, layout: RunLayout) -> pd.DataFrame:
    if plan.hats:  # HATS input: the task reads its pixel itself
        from .hats_plan import read_hats_partition

        return read_hats_partition(plan, part)
    return read_partition(layout.work.dir, plan, part, [plan.columns["id"], *plan.carried])  # ints never via float64


def _previous(layout: RunLayout, part: Partition, df: pd.DataFrame, embeddings: int = 0):
    """(status, Scores, examples) of the partition as written by an earlier run, aligned with
    ``df``; None when there is nothing usable (then every row is done again)."""
    import pyarrow.parquet as pq

    try:
        scored = ["p_merger", "domain_score", "saturated_core", *(["embedding"] if embeddings else [])]
        old = pq.read_table(layout.dataset_file(part), columns=["input_row", "status", *scored])
        examples = read_marker(layout.work.marker(part.pid)).get("examples") or {}
    except (OSError, ValueError, KeyError):
        return None
    rows = old.column("input_row").to_numpy()
    if len(rows) != len(df) or not np.array_equal(rows, df["_input_row"].to_numpy()):
        return None
    p, d, sat = (
        old.column(k).to_numpy(zero_copy_only=False).astype(np.float32)
        for k in ("p_merger", "domain_score", "saturated_core")
    )
    e = embedding_matrix(old.column("embedding"), embeddings) if embeddings else np.zeros((len(p), 0), np.float32)
    return old.column("status").to_numpy(zero_copy_only=False).astype(object), Scores(p, d, sat, e), examples


def _fetch_rows(df: pd.DataFrame, plan: Plan, ids: np.ndarray, source: SourceConfig) -> pd.DataFrame:
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


def _domain_counts(plan: Plan, df: pd.DataFrame, status: np.ndarray, table: pd.DataFrame, task: PartitionTask) -> dict:
    """The marker's domain counts: ``domain_rules`` {reason: rows} over both halves (catalog
    rules: rows out_of_domain; image check: scored rows beyond its threshold or its saturated-core
    limit, counted under the first that applies) and ``beyond_image_threshold`` (both)."""
    rules = rule_counts(plan.domain, df["_domain"].to_numpy()[status == "out_of_domain"]) if "_domain" in df else {}
    beyond_rows = ~table["in_domain"].to_numpy() & np.isin(status, SCORED)
    sat = table["saturated_core"].to_numpy(np.float32, na_value=np.nan)
    by_sat = (
        beyond_rows & (sat > task.max_saturated_core) if task.max_saturated_core is not None else beyond_rows & False
    )
    for why, k in (
        (f"saturated_core > {task.max_saturated_core} px (image check; scored, never is_merger)", int(by_sat.sum())),
        (
            f"domain_score > {task.image_threshold or 0:.4g} (image check; scored, never is_merger)",
            int((beyond_rows & ~by_sat).sum()),
        ),
    ):
        if k:
            rules[why] = k
    beyond = int(beyond_rows.sum())
    return {"domain_rules": rules, "beyond_image_threshold": beyond} if rules else {}


def score_partition(plan: Plan, part: Partition, task: PartitionTask) -> dict:
    """Task: score one sky partition.  Returns its summary (also stored in the done marker).

    A partition with a done marker is not scored again, unless its retry marker says that some
    rows failed in a way that may be transient: then only those rows are fetched and scored
    again and every other row is kept as it was."""
    layout = RunLayout(task.output)
    marker, retry = layout.work.marker(part.pid), layout.work.retry_marker(part.pid)
    if done(marker) and not retry.exists():
        return read_marker(marker)
    rerun = done(marker)  # a retry: only the rows whose failure may be transient
    t0 = time.time()
    engine = worker_engine(task.engine_path, task.backend, task.threads, task.shared_batch, task.views)
    df = _read_rows(plan, part, layout)
    n = len(df)
    examples: dict = {}
    status, ids = triage(df, plan, examples)
    inrow = df["_input_row"].to_numpy() if n else np.zeros(0, np.int64)
    scores = Scores.empty(n, task.embeddings)
    if rerun and n and (prev := _previous(layout, part, df, task.embeddings)) is not None:
        keep = (status == "") & ~np.isin(prev[0], TRANSIENT)  # ok and lasting failures stay as they are
        status[keep] = prev[0][keep]
        for now, before in zip(scores, prev[1]):
            now[keep] = before[keep]
        for k, v in prev[2].items():
            if k not in TRANSIENT:
                note(examples, k, v)
    todo = np.flatnonzero(status == "")
    if task.flag_status is not None:
        status[todo] = task.flag_status
        for i in todo[:1]:
            note(
                examples,
                task.flag_status,
                f"row {inrow[i]} (id {ids[i]}): the worker scoring this partition was "
                "killed repeatedly (memory), even with the smallest batches",
            )
        todo = todo[:0]
    elif n:
        fault_point(task.fault_hook, "score", part.pid, task.batch_size)
        # spatial order (nested HEALPix): consecutive batches share survey frames, so a frame source's
        # small per-partition frame cache is reused instead of re-reading frames for every batch
        todo = todo[np.argsort(df["_healpix29"].to_numpy()[todo], kind="stable")]
    batches = [todo[i : i + task.batch_size] for i in range(0, len(todo), task.batch_size)]
    scorer = None
    failures: dict = {}
    if batches:
        src = open_source(task.source, engine.spec)
        scorer = BatchScorer(src, engine, _fetch_rows(df, plan, ids, task.source), status, scores, examples, inrow)
        try:
            scorer.run(batches)
        finally:
            for k, v in (getattr(src, "examples", None) or {}).items():
                note(examples, k, v)
            src.close()
        failures = dict(getattr(src, "stats", {}).get("failures", {}))
    unknown = set(status) - set(STATUS)
    if unknown:
        raise RuntimeError(f"image source returned unknown status {sorted(unknown)}")
    counts = pd.Series(status).value_counts().to_dict() if n else {}
    threshold = engine.info.threshold if task.threshold is None else task.threshold
    interval = interval_for_engine(scores.p_merger, engine.info.card, engine.info.views)
    table = (
        output_table(df, plan, scores, status, threshold, task.image_threshold, task.max_saturated_core, interval)
        if n
        else None
    )
    if table is not None:
        write_partition(table, layout.dataset_file(part), task.run_meta)
    c = plan.columns
    info = {
        "pid": part.pid,
        "name": part.name,
        "rows": n,
        "status": {k: int(v) for k, v in counts.items()},
        "mergers": int(table["is_merger"].sum()) if table is not None else 0,
        "seconds": round(time.time() - t0, 3),
        "fetch_seconds": round(scorer.fetch_seconds if scorer else 0.0, 3),
        "infer_seconds": round(scorer.infer_seconds if scorer else 0.0, 3),
        "batch_size": task.batch_size,
        "finished": time.time(),
        "started": t0,
        "file": str(layout.dataset_file(part).relative_to(layout.root)) if n else None,
        "examples": {k: v for k, v in sorted(examples.items()) if counts.get(k)},
        "coords": coord_range(df[c["ra"]].to_numpy(np.float64), df[c["dec"]].to_numpy(np.float64)) if n else None,
    }
    if failures:  # why a service failed rows (the summary names the leading one)
        info["fetch_failures"] = {str(k): int(v) for k, v in failures.items()}
    if table is not None:
        info.update(_domain_counts(plan, df, status, table, task))
    if task.image_threshold is not None and scorer is not None and scorer.no_domain_score:
        info["no_domain_score"] = scorer.no_domain_score  # the card has an image check, this backend gave none
    transient = {k: int(counts[k]) for k in TRANSIENT if counts.get(k)}
    if transient:
        info["retry"] = True
        mark_done(retry, {"status": transient, "rows": sum(transient.values())})
    mark_done(marker, info)
    if not info.get("retry"):
        retry.unlink(missing_ok=True)
    return info
