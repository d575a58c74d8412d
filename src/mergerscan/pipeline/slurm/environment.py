"""Inside a SLURM allocation: what SLURM gave this task (CPUs, memory, GPU) and the worker it runs.

Pure functions of the environment (``env``: default ``os.environ``), tested without SLURM.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

from .options import gpu_worker_resources


def is_slurm_task(env=None) -> bool:
    env = os.environ if env is None else env
    return all(k in env for k in ("SLURM_PROCID", "SLURM_NTASKS", "SLURM_JOB_ID"))


def slurm_cpus(env=None) -> int | None:
    """CPUs SLURM gave this task (``SLURM_CPUS_PER_TASK``), or None outside SLURM."""
    env = os.environ if env is None else env
    v = env.get("SLURM_CPUS_PER_TASK")
    return int(v) if v and v.isdigit() and int(v) > 0 else None


def _tasks_on_node(env) -> int:
    """Tasks on this node, from SLURM_TASKS_PER_NODE ('3(x2),1') and SLURM_NODEID."""
    spec = env.get("SLURM_STEP_TASKS_PER_NODE") or env.get("SLURM_TASKS_PER_NODE") or ""
    counts = []
    for part in spec.split(","):
        m = re.fullmatch(r"(\d+)(?:\(x(\d+)\))?", part.strip())
        if m:
            counts += [int(m.group(1))] * int(m.group(2) or 1)
    node = int(env.get("SLURM_NODEID", 0) or 0)
    return counts[node] if node < len(counts) else 1


def task_memory_bytes(env=None) -> int | None:
    """Memory SLURM gave this task: --mem-per-cpu x cpus-per-task, or --mem / tasks on the node."""
    env = os.environ if env is None else env
    mb = None
    if env.get("SLURM_MEM_PER_CPU", "").isdigit():
        mb = int(env["SLURM_MEM_PER_CPU"]) * (slurm_cpus(env) or 1)
    elif env.get("SLURM_MEM_PER_NODE", "").isdigit():
        mb = int(env["SLURM_MEM_PER_NODE"]) // max(1, _tasks_on_node(env))
    return mb * 2**20 if mb else None


def worker_index_on_node(env=None) -> int:
    """0-based index of this worker among the worker tasks on its node (tasks 0 and 1 of the step
    are the scheduler and the client; with SLURM's default block distribution they sit on node 0)."""
    env = os.environ if env is None else env
    local = int(env.get("SLURM_LOCALID", 0))
    if int(env.get("SLURM_NODEID", 0) or 0) == 0:
        local -= sum(1 for r in (0, 1) if r < int(env.get("SLURM_NTASKS", 3)))
    return max(0, local)


def pick_gpu(env=None) -> str | None:
    """The one GPU this worker task should use: when the task sees several (e.g. ``--gres=gpu:4`` per
    node), the one at its worker index on the node; None when it sees none or exactly one."""
    env = os.environ if env is None else env
    visible = env.get("CUDA_VISIBLE_DEVICES") or env.get("SLURM_STEP_GPUS") or env.get("SLURM_JOB_GPUS") or ""
    gpus = [g.strip() for g in visible.split(",") if g.strip()]
    if len(gpus) <= 1:
        return None
    return gpus[worker_index_on_node(env) % len(gpus)]


def runner_worker_options(threads: int, memory_limit: str, gpus: int, env=None) -> dict:
    """Options of the Dask worker (nanny) in a worker task of the single-allocation mode."""
    env = os.environ if env is None else env
    task_memory = task_memory_bytes(env) if memory_limit == "auto" else None
    nthreads = slurm_cpus(env) or threads
    opts: dict[str, Any] = {
        "nthreads": nthreads,
        "memory_limit": task_memory or memory_limit,
    }  # "auto" would see the whole node's memory
    if gpus:
        opts["resources"] = gpu_worker_resources(nthreads, gpus)
    return opts


def scheduler_file(env=None, directory: str | Path = ".mergerscan-dask") -> Path:
    """Per job *and* per requeue: a stale file from an earlier attempt must never be read."""
    env = os.environ if env is None else env
    base = Path(env.get("SLURM_SUBMIT_DIR", ".")) / directory
    return base / f"scheduler-{env['SLURM_JOB_ID']}.{env.get('SLURM_RESTART_COUNT', '0')}.json"
