"""The per-partition task: rows -> stamps -> p_merger -> one Parquet file + done marker.

A pure function of (the partition's rows in the split, the image source, the engine): writing it twice
gives the same bytes.  Three steps: read the rows, score them in memory (score_rows.score_rows:
triage, fetch and score in batches, the output table; the library's ``mergerscan.score`` runs the
same step), write the table and the marker.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import pandas as pd

from ..catalogs.schema import SCORED, TRANSIENT
from ..catalogs.write import embedding_matrix, write_partition
from ..cutouts.sources import SourceConfig
from ..run_layout import RunLayout
from .domain import rule_counts
from .engine_cache import device_failure, worker_engine
from .failures import coord_range
from .faults import fault_point
from .plan import Partition, Plan
from .resume import done, mark_done, read_marker
from .rows import Scores
from .score_rows import BatchScorer, Previous, RowsScored, ScoreSettings, score_rows
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

    @property
    def settings(self) -> ScoreSettings:
        return ScoreSettings(
            self.batch_size, self.threshold, self.image_threshold, self.max_saturated_core, self.embeddings
        )


def _read_rows(plan: Plan, part: Partition, layout: RunLayout) -> pd.DataFrame:
    if plan.hats:  # HATS input: the task reads its pixel itself
        from .hats_plan import read_hats_partition

        return read_hats_partition(plan, part)
    return read_partition(layout.work.dir, plan, part, [plan.columns["id"], *plan.carried])  # ints never via float64


def _previous(layout: RunLayout, part: Partition, df: pd.DataFrame, embeddings: int = 0) -> Previous | None:
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
    return Previous(old.column("status").to_numpy(zero_copy_only=False).astype(object), Scores(p, d, sat, e), examples)


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
    prev = _previous(layout, part, df, task.embeddings) if rerun and n else None
    if n and task.flag_status is None:
        fault_point(task.fault_hook, "score", part.pid, task.batch_size)
    res = score_rows(df, plan, engine, task.source, task.settings, previous=prev, flag_status=task.flag_status)
    if res.table is not None:
        write_partition(res.table, layout.dataset_file(part), task.run_meta)
    info = _info(plan, part, task, layout, df, res, t0)
    transient = {k: int(res.counts[k]) for k in TRANSIENT if res.counts.get(k)}
    if transient:
        info["retry"] = True
        mark_done(retry, {"status": transient, "rows": sum(transient.values())})
    mark_done(marker, info)
    if not info.get("retry"):
        retry.unlink(missing_ok=True)
    return info


def _info(plan: Plan, part: Partition, task: PartitionTask, layout: RunLayout, df, res: RowsScored, t0: float) -> dict:
    """The partition's summary, as the done marker stores it."""
    n, c, counts, table = len(df), plan.columns, res.counts, res.table
    info = {
        "pid": part.pid,
        "name": part.name,
        "rows": n,
        "status": dict(counts),
        "mergers": int(table["is_merger"].sum()) if table is not None else 0,
        "seconds": round(time.time() - t0, 3),
        "fetch_seconds": round(res.fetch_seconds, 3),
        "infer_seconds": round(res.infer_seconds, 3),
        "batch_size": task.batch_size,
        "finished": time.time(),
        "started": t0,
        "file": str(layout.dataset_file(part).relative_to(layout.root)) if n else None,
        "examples": {k: v for k, v in sorted(res.examples.items()) if counts.get(k)},
        "coords": coord_range(df[c["ra"]].to_numpy(np.float64), df[c["dec"]].to_numpy(np.float64)) if n else None,
    }
    if res.failures:  # why a service failed rows (the summary names the leading one)
        info["fetch_failures"] = {str(k): int(v) for k, v in res.failures.items()}
    if table is not None:
        info.update(_domain_counts(plan, df, res.status, table, task))
    if task.image_threshold is not None and res.fetched and res.no_domain_score:
        info["no_domain_score"] = res.no_domain_score  # the card has an image check, this backend gave none
    return info
