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

from ..catalogs.schema import SCORED, Status
from ..catalogs.write import embedding_matrix, write_partition
from ..cutouts.sources import SourceConfig
from ..run_layout import RunLayout
from .domain import rule_counts
from .engine_cache import device_failure, worker_engine
from .failures import coord_range
from .faults import fault_point
from .plan import Partition, Plan
from .result import PartitionResult
from .resume import ResumePlan
from .rows import Scores
from .score_rows import BatchScorer, Previous, RowsScored, ScoreSettings, score_rows
from .split import read_partition

__all__ = ["BatchScorer", "PartitionTask", "device_failure", "score_partition", "worker_engine"]


@dataclass(frozen=True)
class PartitionTask:
    """Everything a partition task needs besides the plan and the partition; picklable (it is
    sent to the worker with every task).  The run varies ``batch_size``, ``source`` and
    ``flag_status`` when it retries a partition that ran out of memory (resume.after_out_of_memory)."""

    output: str  # the run directory (RunLayout)
    source: SourceConfig
    engine_path: str | None  # None: the packaged engine
    backend: str = "onnxruntime"
    threads: int = 1
    batch_size: int = 128
    run_meta: dict[str, Any] = field(default_factory=dict)  # provenance stored in every output file
    # set by the run after the worker scoring this partition was killed repeatedly (memory): write
    # the partition without fetching or scoring, every row not otherwise flagged gets this status
    flag_status: Status | None = None
    shared_batch: int = 0  # rows per merged engine call (0: batches not shared)
    views: int | None = None
    threshold: float | None = None  # of is_merger (the run's operating point); None: the engine's
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


def _previous(resume: ResumePlan, part: Partition, df: pd.DataFrame, embeddings: int = 0) -> Previous | None:
    """(status, Scores, examples) of the partition as written by an earlier run, aligned with
    ``df``; None when there is nothing usable (then every row is done again)."""
    import pyarrow.parquet as pq

    try:
        scored = ["p_merger", "domain_score", "saturated_core", *(["embedding"] if embeddings else [])]
        old = pq.read_table(resume.layout.dataset_file(part), columns=["input_row", "status", *scored])
        done = resume.scored(part.pid)
    except (OSError, ValueError, KeyError):
        return None
    if done is None:
        return None
    rows = old.column("input_row").to_numpy()
    if len(rows) != len(df) or not np.array_equal(rows, df["_input_row"].to_numpy()):
        return None
    p, d, sat = (
        old.column(k).to_numpy(zero_copy_only=False).astype(np.float32)
        for k in ("p_merger", "domain_score", "saturated_core")
    )
    e = embedding_matrix(old.column("embedding"), embeddings) if embeddings else np.zeros((len(p), 0), np.float32)
    status = old.column("status").to_numpy(zero_copy_only=False).astype(object)
    return Previous(status, Scores(p, d, sat, e), done.examples)


def _domain_counts(plan: Plan, df: pd.DataFrame, status: np.ndarray, table: pd.DataFrame, task: PartitionTask) -> dict:
    """The result's domain counts (``PartitionResult`` fields): ``domain_rules`` {reason: rows} over both halves (catalog
    rules: rows out_of_domain; image check: scored rows beyond its threshold or its saturated-core
    limit, counted under the first that applies) and ``beyond_image_threshold`` (both)."""
    rules = (
        rule_counts(plan.domain, df["_domain"].to_numpy()[status == Status.OUT_OF_DOMAIN]) if "_domain" in df else {}
    )
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
    return {"domain_rules": rules, "beyond_image_threshold": int(beyond_rows.sum())} if rules else {}


def score_partition(plan: Plan, part: Partition, task: PartitionTask) -> PartitionResult:
    """Task: score one sky partition.  Returns its result (also stored as its done marker).

    A partition with a done marker is not scored again, unless its retry marker says that some
    rows failed in a way that may be transient: then only those rows are fetched and scored
    again and every other row is kept as it was."""
    layout = RunLayout(task.output)
    resume = ResumePlan(layout)
    earlier = resume.scored(part.pid)
    if earlier is not None and not resume.needs_retry(part.pid):
        return earlier
    rerun = earlier is not None  # a retry: only the rows whose failure may be transient
    t0 = time.time()
    engine = worker_engine(task.engine_path, task.backend, task.threads, task.shared_batch, task.views)
    df = _read_rows(plan, part, layout)
    n = len(df)
    prev = _previous(resume, part, df, task.embeddings) if rerun and n else None
    if n and task.flag_status is None:
        fault_point("score", part.pid, task.batch_size)
    res = score_rows(df, plan, engine, task.source, task.settings, previous=prev, flag_status=task.flag_status)
    if res.table is not None:
        write_partition(res.table, layout.dataset_file(part), task.run_meta)
    return resume.record(_result(plan, part, task, layout, df, res, t0))


def _result(
    plan: Plan, part: Partition, task: PartitionTask, layout: RunLayout, df, res: RowsScored, t0: float
) -> PartitionResult:
    """What the partition task did (its done marker; the retry flag is ResumePlan.record's)."""
    n, c, counts, table = len(df), plan.columns, res.counts, res.table
    return PartitionResult(
        pid=part.pid,
        name=part.name,
        rows=n,
        status={k: int(v) for k, v in counts.items()},
        mergers=int(table["is_merger"].sum()) if table is not None else 0,
        seconds=round(time.time() - t0, 3),
        fetch_seconds=round(res.fetch_seconds, 3),
        infer_seconds=round(res.infer_seconds, 3),
        batch_size=task.batch_size,
        finished=time.time(),
        started=t0,
        file=str(layout.dataset_file(part).relative_to(layout.root)) if n else None,
        examples={k: v for k, v in sorted(res.examples.items()) if counts.get(k)},
        coords=coord_range(df[c["ra"]].to_numpy(np.float64), df[c["dec"]].to_numpy(np.float64)) if n else None,
        # why a service failed rows (the summary names the leading one)
        fetch_failures={str(k): int(v) for k, v in res.failures.items()},
        # the card has an image check, this backend gave none
        no_domain_score=res.no_domain_score if task.image_threshold is not None and res.fetched else 0,
        **(_domain_counts(plan, df, res.status, table, task) if table is not None else {}),
    )
