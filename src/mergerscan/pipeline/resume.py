"""What is left to do in a run directory, and why: :class:`ResumePlan`, the one owner of OUT/_work's state.

A run is resumable at every step because every file is written atomically (mergerscan.atomic) and
its presence means "done": the fingerprint (the run's identity, fingerprint.py), the plan, the split
buckets, one done marker per scored partition (its :class:`result.PartitionResult`), and a retry
marker beside it while the partition holds rows whose failure may be transient.  :class:`ResumePlan`
reads and writes these and answers the questions a run asks:

* may this run use ``-o`` (:meth:`ResumePlan.claim`: same fingerprint = resume, else refused unless
  ``--overwrite``, which removes only what mergerscan wrote);
* is there a plan already (:meth:`ResumePlan.saved_plan`, :meth:`ResumePlan.existing_plan`), which
  split buckets are missing (:meth:`ResumePlan.missing_buckets`);
* which partitions remain, and why (:meth:`ResumePlan.remaining`: never scored, or a retry marker
  naming the transient statuses to score again); which rows of a retried partition are kept
  (:meth:`ResumePlan.keep_rows`: every row whose status is not in ``catalogs.schema.TRANSIENT``);
* what to do when a partition runs out of memory (:func:`after_out_of_memory`, a module function:
  the ladder of :data:`OOM_BATCH_DIVISORS`).

Dask re-running a task (after a lost worker) rewrites identical bytes, so writes are idempotent.
The on-disk layout (names, JSON content) is run_layout.py's and does not change here.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Protocol, TypeVar

import numpy as np

from ..atomic import atomic_write_json
from ..catalogs.schema import TRANSIENT, Status
from ..run_layout import RunLayout
from .plan import Partition, Plan
from .result import PartitionResult, RetryMarker
from .run_options import ArgumentError, literal


class FingerprintMismatch(ArgumentError):
    """The output directory holds a different run (resume only resumes the same one); one line."""


class OutputError(ArgumentError):
    """-o cannot be used (a file, not writable, not a mergerscan run); one line."""


def _is_run(layout: RunLayout) -> bool:
    if layout.work.fingerprint.is_file():
        return True
    try:  # a finished run whose _work/ the user removed
        return "mergerscan_version" in json.loads(layout.summary.read_text())
    except (OSError, ValueError, TypeError):
        return False


def check_output(output: Path) -> None:
    """-o must be a directory we can create and write: else one line, before anything is written."""
    output = Path(output)
    if output.exists() and not output.is_dir():
        raise OutputError(f"{{output}} {literal(output)}: exists and is not a directory", "output")
    probe_dir = output if output.is_dir() else next((p for p in output.parents if p.exists()), None)
    if probe_dir is None or not probe_dir.is_dir():
        raise OutputError(f"{{output}} {literal(output)}: a parent is not a directory", "output")
    try:
        fd, tmp = tempfile.mkstemp(prefix=".mergerscan-probe-", dir=probe_dir)
        os.close(fd)
        os.unlink(tmp)
    except OSError as exc:
        raise OutputError(
            f"{{output}} {literal(output)}: cannot write in {literal(probe_dir)} ({literal(exc.strerror or exc)})",
            "output",
        ) from None


def _inside(path: str | Path, container: Path) -> bool:
    path, container = Path(path).resolve(), Path(container).resolve()
    return path == container or container in path.parents


def _remove_outputs(layout: RunLayout, protect: Iterable) -> None:
    """--overwrite: remove the entries a run writes under OUT (:data:`run_layout.OUTPUTS`) and
    nothing else; refused (before anything is removed) when one of ``protect`` lies inside them."""
    doomed = [p for p in layout.outputs() if p.exists() or p.is_symlink()]
    for p in protect:
        hit = next((d for d in doomed if not d.is_symlink() and _inside(p, d)), None)
        if p and hit is not None:
            raise OutputError(
                f"{{overwrite}} would delete {literal(p)} (inside {literal(hit)}); move it out of "
                f"{literal(layout.root)} or choose another {{output}}",
                "overwrite",
            )
    for p in doomed:
        if p.is_symlink() or not p.is_dir():
            p.unlink(missing_ok=True)
        else:
            shutil.rmtree(p)


def _same_run(layout: RunLayout, fingerprint: dict) -> bool:
    """True when OUT holds a run with this fingerprint (resume); False when it holds none (the
    fingerprint is written now); a different one is refused."""
    fp_file = layout.work.fingerprint
    if not fp_file.is_file():
        atomic_write_json(fp_file, fingerprint, indent=1, sort_keys=True)
        return False
    old = json.loads(fp_file.read_text())
    if old != fingerprint:
        diff = sorted(k for k in set(old) | set(fingerprint) if old.get(k) != fingerprint.get(k))
        raise FingerprintMismatch(
            f"{literal(layout.root)} holds a run with a different {literal(', '.join(diff))}; use {{overwrite}} "
            "to replace it or choose another {output}",
            "output",
        )
    return True


def check_or_claim(
    output: Path, fingerprint: dict, overwrite: bool, protect: Iterable = (), cache: dict | None = None
) -> bool:
    """Claim ``output`` for this run.  Returns True when resuming an earlier identical run.

    Everything is decided before anything is deleted: a non-empty directory that is not a
    mergerscan run is refused (even with ``overwrite``); ``overwrite`` removes only the entries a
    run writes (:data:`run_layout.OUTPUTS`), never other files, and refuses when one of
    ``protect`` (the input catalog, image directories, engine) lies inside them."""
    output = Path(output)
    layout = RunLayout(output)
    check_output(output)
    ours = output.is_dir() and _is_run(layout)
    if output.is_dir() and not ours and any(output.iterdir()):
        names = sorted(p.name for p in output.iterdir())
        raise OutputError(
            f"{literal(output)} exists and is not a mergerscan run (it holds {literal(', '.join(names[:3]))}"
            f"{', ...' if len(names) > 3 else ''}); choose an empty or new {{output}} "
            "({overwrite} only ever removes what mergerscan wrote)",
            "output",
        )
    if overwrite and ours:
        _remove_outputs(layout, protect)
    resumed = _same_run(layout, fingerprint)
    if cache is not None:
        atomic_write_json(layout.work.content_cache, cache, sort_keys=True)
    return resumed


# ---------------------------------------------------------------- out of memory
# A partition whose task keeps killing its worker (Dask reschedules it up to
# distributed.scheduler.allowed-failures times, then reports KilledWorker) or raises MemoryError is
# retried with these batch sizes (fraction of --batch-size; frames: one field cached at a time),
# then written with its rows flagged out_of_memory: never lost, and scored again by a later re-run
# (out_of_memory is TRANSIENT).  Inside a task, a batch out of memory is first scored again in
# halves (score_rows.BatchScorer).
OOM_BATCH_DIVISORS = (8, 10**9)


class RetriableTask(Protocol):
    """What the ladder needs of a partition task (task.PartitionTask)."""

    @property
    def batch_size(self) -> int: ...
    @property
    def source(self) -> Any: ...
    def retry_with(self, **changes: Any) -> Any: ...


T = TypeVar("T", bound=RetriableTask)


def after_out_of_memory(task: T, level: int) -> tuple[T, str]:
    """The task to submit after attempt ``level`` (0: the first) of ``task`` ran out of memory, and
    the end of the warning to log about it.  ``task``: the partition's first attempt (the run's settings)."""
    if level < len(OOM_BATCH_DIVISORS):
        b = max(1, task.batch_size // OOM_BATCH_DIVISORS[level])
        src = task.source.low_memory()  # e.g. frames: one field in memory at a time
        return task.retry_with(batch_size=b, source=src), f"; retrying with batch size {b}"
    return (
        task.retry_with(batch_size=1, flag_status=Status.OUT_OF_MEMORY),
        " at batch size 1; its rows are flagged out_of_memory",
    )


# ---------------------------------------------------------------- what is left to do
NEVER_SCORED = "never scored"
RETRY = "retry"


@dataclass(frozen=True)
class Todo:
    """A partition a run still has to score, and why: ``NEVER_SCORED``, or ``RETRY`` with the
    transient statuses (and their rows) its retry marker names."""

    part: Partition
    why: str
    statuses: dict[str, int]


def _listing(directory: Path) -> set[str]:
    """File names in a directory (one listdir instead of a stat per partition: ~10^5 at survey scale)."""
    try:
        return set(os.listdir(directory))
    except FileNotFoundError:
        return set()


class ResumePlan:
    """What is left to do in the run directory ``layout`` and why (the module docstring).

    Cheap to build (it holds paths only): the driver and every partition task make their own."""

    def __init__(self, layout: RunLayout | str | Path):
        self.layout = layout if isinstance(layout, RunLayout) else RunLayout(layout)
        self.work = self.layout.work

    def __repr__(self) -> str:
        return f"ResumePlan({str(self.layout.root)!r})"

    # -- the run's identity
    def claim(self, fingerprint: dict, overwrite: bool, protect: Iterable = (), cache: dict | None = None) -> bool:
        """Claim the run directory for a run with ``fingerprint`` (:func:`check_or_claim`);
        True when resuming an earlier identical run."""
        return check_or_claim(self.layout.root, fingerprint, overwrite, protect=protect, cache=cache)

    # -- the plan and the split
    def saved_plan(self) -> Plan | None:
        """The plan an earlier (killed) run of this directory saved, kept as it is; None if none."""
        from .split import SPLIT_FORMAT

        if not self.work.plan.is_file():
            return None
        plan = Plan.load(self.work.plan)
        if not plan.hats and plan.split.get("format") != SPLIT_FORMAT:
            raise ArgumentError(
                f"{literal(self.layout.root)}: planned by an older mergerscan (another split layout); "
                "use {overwrite} to plan it again",
                "overwrite",
            )
        return plan

    def existing_plan(self) -> Plan:
        """The plan, which ``--shard`` and ``--finalize`` need: refused in one line when there is none."""
        plan = self.saved_plan()
        if plan is None:
            raise ArgumentError(
                f"{literal(self.layout.root)}: no plan yet; run process-catalog {{plan}} with the same arguments first",
                "mode",
            )
        return plan

    def missing_buckets(self, plan: Plan) -> list[int]:
        """The split buckets not written yet (a killed split resumes with these)."""
        have = _listing(self.work.split_dir)
        return [b for b in range(len(plan.split["buckets"])) if self.work.bucket_file(b).name not in have]

    # -- the partitions (driver side)
    def remaining(self, parts: Iterable[Partition]) -> list[Todo]:
        """The partitions of ``parts`` still to score, in order, each with why."""
        scored, retry = _listing(self.work.scored_dir), _listing(self.work.retry_dir)
        todo = []
        for p in parts:
            if self.work.marker(p.pid).name not in scored:
                todo.append(Todo(p, NEVER_SCORED, {}))
            elif self.work.retry_marker(p.pid).name in retry:
                todo.append(Todo(p, RETRY, self._retry_statuses(p.pid)))
        return todo

    def unscored(self, parts: Iterable[Partition]) -> list[Partition]:
        """The partitions of ``parts`` without a done marker (``--finalize`` needs none)."""
        scored = _listing(self.work.scored_dir)
        return [p for p in parts if self.work.marker(p.pid).name not in scored]

    def results(self, parts: Iterable[Partition]) -> list[PartitionResult]:
        """The done markers of ``parts``, in order (every one must exist)."""
        return [PartitionResult.from_dict(json.loads(self.work.marker(p.pid).read_text())) for p in parts]

    def _retry_statuses(self, pid: int) -> dict[str, int]:
        marker = self.retry_of(pid)
        return dict(marker.status) if marker is not None else {}

    def retry_of(self, pid: int) -> RetryMarker | None:
        """The partition's retry marker (None: none, or unreadable: it names the statuses only for the log)."""
        try:
            return RetryMarker.from_dict(json.loads(self.work.retry_marker(pid).read_text()))
        except (OSError, ValueError, AttributeError, TypeError):
            return None

    # -- one partition (task side)
    def scored(self, pid: int) -> PartitionResult | None:
        """The partition's result when it is done (its marker exists), else None."""
        marker = self.work.marker(pid)
        if not marker.is_file():
            return None
        return PartitionResult.from_dict(json.loads(marker.read_text()))

    def needs_retry(self, pid: int) -> bool:
        """A done partition whose retry marker asks a re-run to score its transient rows again."""
        return self.work.retry_marker(pid).exists()

    def record(self, result: PartitionResult) -> PartitionResult:
        """Mark the partition done with ``result``: the retry marker first (rows whose status is
        transient; removed when none is), then the done marker.  Returns the result as written."""
        transient = {str(k): int(result.status[k]) for k in TRANSIENT if result.status.get(k)}
        retry = self.work.retry_marker(result.pid)
        if transient:
            result = replace(result, retry=True)
            atomic_write_json(retry, RetryMarker.of(transient).to_dict(), sort_keys=True)
        atomic_write_json(self.work.marker(result.pid), result.to_dict(), sort_keys=True)
        if not transient:
            retry.unlink(missing_ok=True)
        return result

    # -- the re-run policy for a retried partition's rows
    @staticmethod
    def keep_rows(previous_status: np.ndarray) -> np.ndarray:
        """Rows of a retried partition whose earlier outcome stands: scored, or failed for a
        lasting reason (only ``TRANSIENT`` statuses are fetched and scored again)."""
        return ~np.isin(previous_status, TRANSIENT)

    @staticmethod
    def kept_examples(examples: dict[str, str]) -> dict[str, str]:
        """The earlier examples a retried partition keeps (those of the statuses it keeps)."""
        return {k: v for k, v in examples.items() if k not in TRANSIENT}
