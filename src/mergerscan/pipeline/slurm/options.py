"""SLURM options of ``--cluster slurm`` (worker jobs from a login node), walltimes and GPU resources.

Pure: nothing here imports Dask or dask-jobqueue (``ProcessArguments`` uses :class:`SlurmOptions`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

from ...argument_error import ArgumentError, literal

NO_PAUSE_ENV = "DASK_DISTRIBUTED__WORKER__MEMORY__PAUSE"  # =False: see pipeline/cluster.py
# A scoring task with --gpus 1 asks for one unit of the Dask resource GPU; a GPU worker advertises one
# unit per thread (partition slot), so exactly `threads` partitions share its GPU.  Integer units:
# fractional ones (1/threads per task) lose a slot to rounding (12 threads ran 11 tasks at once).
GPU_TASK_RESOURCES = {"GPU": 1}


def gpu_worker_resources(threads: int, gpus: int) -> dict:
    """The Dask resources a worker with ``gpus`` GPU(s) and ``threads`` threads advertises."""
    return {"GPU": max(1, int(threads)) * int(gpus)} if gpus else {}


@dataclass
class SlurmOptions:
    """Worker jobs started from a login node (``--cluster slurm``); ``--workers`` = number of jobs."""

    cores: int = 4  # cores per worker job (= threads of its worker)
    memory: str = "16GB"  # memory per worker job
    processes: int = 1  # Dask worker processes per job (with --gpus 1 they share the job's GPU)
    walltime: str = "01:00:00"
    account: str | None = None
    partition: str | None = None
    prologue: list = field(default_factory=list)  # shell lines before the worker starts
    directives: list = field(default_factory=list)  # extra #SBATCH options, e.g. "--qos=debug"
    lifetime: str | None = None  # worker --lifetime; default: below the walltime (worker_lifetime)
    interface: str | None = None  # network interface for scheduler and workers, e.g. ib0

    def validate(self):
        """ArgumentError (``slurm``; ``{slurm_cores}`` is ``--slurm-cores`` or ``slurm.cores``), or a
        ValueError about a walltime's text."""
        if self.cores < 1 or self.processes < 1:
            raise ArgumentError("{slurm_cores} and {slurm_processes} must be >= 1", "slurm")
        if self.cores % self.processes:
            raise ArgumentError("{slurm_cores} must be a multiple of {slurm_processes}", "slurm")
        wall = parse_walltime(self.walltime)
        if self.lifetime and parse_walltime(self.lifetime) >= wall:
            raise ArgumentError(
                f"{{slurm_lifetime}} {literal(self.lifetime)} must be below {{slurm_walltime}} {literal(self.walltime)}",
                "slurm",
            )
        worker_lifetime(wall)  # raises when the walltime is too short


# ------------------------------------------------------------------ time
_WALL = re.compile(r"^(?:(\d+)-)?(\d+)(?::(\d+))?(?::(\d+))?$")


def parse_walltime(text: str) -> int:
    """SLURM time formats -> seconds: M, M:S, H:M:S, D-H, D-H:M, D-H:M:S; also '90s', '55m', '2h'."""
    t = str(text).strip()
    m = re.fullmatch(r"(\d+(?:\.\d+)?)\s*([smhd])", t)
    if m:
        return int(float(m.group(1)) * {"s": 1, "m": 60, "h": 3600, "d": 86400}[m.group(2)])
    m = _WALL.match(t)
    if not m:
        raise ValueError(f"walltime {text!r}: expected e.g. 01:00:00, 2-00:00:00 or 55m")
    d, a, b, c = m.groups()
    if d is not None:  # D-H[:M[:S]]
        secs = int(d) * 86400 + int(a) * 3600 + int(b or 0) * 60 + int(c or 0)
    elif c is not None:  # H:M:S
        secs = int(a) * 3600 + int(b) * 60 + int(c)
    elif b is not None:  # M:S
        secs = int(a) * 60 + int(b)
    else:  # M
        secs = int(a) * 60
    if secs <= 0:
        raise ValueError(f"walltime {text!r} must be positive")
    return secs


def format_walltime(seconds: int) -> str:
    h, rem = divmod(int(seconds), 3600)
    return f"{h:02d}:{rem // 60:02d}:{rem % 60:02d}"


def worker_lifetime(walltime_s: int) -> tuple[int, int]:
    """(lifetime, stagger) in seconds for ``dask worker --lifetime``: the worker retires gracefully
    (its running partitions go to other workers, which redo them idempotently) before SLURM kills
    the job.  Margin = max(2 min, 15 % of the walltime); lifetime + stagger stays inside it."""
    margin = max(120, int(0.15 * walltime_s))
    lifetime = walltime_s - margin
    if lifetime < 60:
        raise ValueError(f"walltime {format_walltime(walltime_s)} is too short for a worker job (need >= 3 min)")
    return lifetime, min(300, margin // 2)


def cluster_kwargs(opts: SlurmOptions, gpus: int, python: str, log_directory: str | Path) -> dict:
    """Keyword arguments for ``dask_jobqueue.SLURMCluster`` (pure; the job script is testable text)."""
    wall = parse_walltime(opts.walltime)
    if opts.lifetime:
        life, stagger = parse_walltime(opts.lifetime), 0
    else:
        life, stagger = worker_lifetime(wall)
    extra = ["--lifetime", f"{life}s"] + (["--lifetime-stagger", f"{stagger}s"] if stagger else [])
    directives = list(opts.directives)
    if gpus:
        # --gres=gpu:1 per job, shared by its worker process(es); each advertises one GPU unit per thread
        directives.append(f"--gres=gpu:{gpus}")
        res = gpu_worker_resources(opts.cores // max(1, opts.processes), gpus)
        extra += ["--resources", f"GPU={res['GPU']}"]
    kw = dict(
        cores=opts.cores,
        processes=opts.processes,
        memory=opts.memory,
        walltime=format_walltime(wall),
        account=opts.account,
        queue=opts.partition,
        job_extra_directives=directives,
        job_script_prologue=[f"export {NO_PAUSE_ENV}=False"] + list(opts.prologue),
        worker_extra_args=extra,
        python=python,
        log_directory=str(log_directory),
        job_name="mergerscan-worker",
        scheduler_options={"dashboard_address": ":0"},
    )
    if opts.interface:
        kw["interface"] = opts.interface
    return kw
