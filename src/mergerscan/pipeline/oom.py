"""What the run does when a partition runs out of memory on its worker.

A partition whose task keeps killing its worker (Dask reschedules it up to
distributed.scheduler.allowed-failures times, then reports KilledWorker) or raises MemoryError is
retried with these batch sizes (fraction of --batch-size; frames: one field cached at a time),
then written with its rows flagged out_of_memory - never lost, and scored again by a later re-run.
(Inside a task, a batch out of memory is first scored again in halves: task.BatchScorer.)
"""

from __future__ import annotations

from .task import PartitionTask

OOM_BATCH_DIVISORS = (8, 10**9)


def retry_after_oom(task: PartitionTask, level: int) -> tuple[PartitionTask, str]:
    """The task to submit after attempt ``level`` (0: the first) of ``task`` ran out of memory,
    and the end of the warning to log about it.  ``task``: the partition's first attempt (the run's settings)."""
    if level < len(OOM_BATCH_DIVISORS):
        b = max(1, task.batch_size // OOM_BATCH_DIVISORS[level])
        src = task.source.low_memory()  # e.g. frames: one field in memory at a time
        return task.retry_with(batch_size=b, source=src), f"; retrying with batch size {b}"
    return (
        task.retry_with(batch_size=1, flag_status="out_of_memory"),
        " at batch size 1; its rows are flagged out_of_memory",
    )
