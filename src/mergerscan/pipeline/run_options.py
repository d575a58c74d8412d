"""What every run has, whatever it processes (as hats-import's RuntimeArguments): where the
output goes and how the run is executed; its errors are :class:`ArgumentError` (from
mergerscan.argument_error), naming the argument in Python terms (a field's default is read by
:func:`mergerscan.verb_flags.default_of`)."""

from __future__ import annotations

import os
import shlex
import sys
from dataclasses import dataclass, field

from ..argument_error import ArgumentError, literal
from .slurm import SlurmOptions, is_slurm_task, slurm_cpus

__all__ = ["ArgumentError", "RunArguments", "literal"]


def _available_cores() -> int:
    """The cores this process may use: SLURM's allocation, else the affinity mask, else all."""
    affinity = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None
    return slurm_cpus() or affinity or os.cpu_count() or 1


@dataclass(kw_only=True)
class RunArguments:
    """Where a run writes and how it is executed (as hats-import's RuntimeArguments)."""

    output: str  # the run directory
    overwrite: bool = False  # replace an existing, different run in output (resume is automatic)
    progress: bool = True
    report: bool = True  # write OUT/report/index.html at the end
    samp: bool = False  # send OUT/mergers.fits to TOPCAT over SAMP at the end
    workers: int = 1  # local worker processes; SLURM worker jobs with cluster="slurm"
    threads_per_worker: int = 0  # 0 = cores // workers (SLURM: the task's/job's cores)
    scheduler: str | None = None  # address of a running Dask scheduler
    cluster: str = "local"  # local | slurm (workers as SLURM jobs) | slurm-runner (in an allocation)
    gpus: int = 0  # GPUs per worker (0 or 1); tasks then need the Dask resource GPU
    slurm: SlurmOptions = field(default_factory=SlurmOptions)
    memory_limit: str = "auto"  # per local worker, e.g. 4GiB
    mode: str = "all"  # all | plan | shard | finalize (SLURM array jobs)
    shard: tuple | None = None  # (i, n) with mode="shard"
    command: str = field(default_factory=lambda: shlex.join(sys.argv))  # redacted when resolved

    def _check_run(self) -> None:
        if self.workers < 1 or self.threads_per_worker < 0:
            raise ArgumentError("{workers} must be >= 1 and {threads_per_worker} >= 0", "workers")
        if self.mode not in ("all", "plan", "shard", "finalize"):
            raise ArgumentError(f"unknown mode {literal(repr(self.mode))}", "mode")
        if (self.mode == "shard") != (self.shard is not None):
            raise ArgumentError("{shard} i/N goes with shard mode only", "shard")
        if self.shard is not None and not (len(self.shard) == 2 and 0 <= self.shard[0] < self.shard[1]):
            raise ArgumentError(f"{{shard}} {literal(self.shard)}: need i/N with 0 <= i < N", "shard")

    def _check_cluster(self) -> None:
        if self.cluster not in ("local", "slurm", "slurm-runner"):
            raise ArgumentError(f"{{cluster}} {literal(self.cluster)}: choose local, slurm or slurm-runner", "cluster")
        if self.cluster != "local" and self.scheduler:
            raise ArgumentError(
                "{scheduler} joins a running scheduler: it does not go with {cluster} slurm/slurm-runner", "scheduler"
            )
        if self.cluster == "slurm-runner" and not is_slurm_task():
            raise ArgumentError(
                "{cluster} slurm-runner runs under srun inside a SLURM allocation (see slurm/process-catalog.sbatch)",
                "cluster",
            )
        if self.gpus not in (0, 1):
            raise ArgumentError("{gpus}: 0 (CPU) or 1 (one GPU per worker)", "gpus")
        if self.cluster == "slurm":
            try:
                self.slurm.validate()
            except ArgumentError:
                raise
            except ValueError as exc:  # a walltime's text
                raise ArgumentError(literal(exc), "slurm") from None

    @property
    def threads(self) -> int:
        """Threads per worker: as given, else a SLURM job's cores per process, else cores // workers."""
        if self.threads_per_worker:
            return self.threads_per_worker
        if self.cluster == "slurm":
            # --gpus 1 with --slurm-processes k: the k worker processes of a job share its one GPU
            return self.slurm.cores // self.slurm.processes
        return max(1, _available_cores() // self.workers)
