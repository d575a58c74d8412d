"""Fault injection for the fault tests: a hook the pipeline calls at its fault points.

Not part of any argument object, flag or task: a test names a hook in the environment variable
:data:`ENV` (``MERGERSCAN_FAULT_HOOK``) of the process it starts (:func:`environment`).  The
environment is the one thing that reaches every process of a run unchanged: the Dask worker
processes a local cluster spawns, SLURM job steps (sbatch exports it).  A process without it (every
production run) calls nothing: :func:`fault_point` is one dictionary look-up.

The value is ``package.module:function`` or ``package.module:function=ARGUMENT``, imported in the
process that reaches the point; the function is called as ``function(point)`` or
``function(point, ARGUMENT)`` with a :class:`FaultPoint` before the stage does its work:

* ``scan``   - a split task is about to read input chunk ``index``;
* ``gather`` - a split task is about to write bucket ``index``;
* ``score``  - a partition task (partition ``index``) is about to fetch and score its rows in
  batches of ``batch_size``.

The faults the tests use are below; a test may name a function of its own.  Not in the
fingerprint or the plan: a run with a hook is the same run (its re-run without one resumes it).
"""

from __future__ import annotations

import importlib
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache

import numpy as np

STAGES = ("scan", "gather", "score")
ENV = "MERGERSCAN_FAULT_HOOK"


@dataclass(frozen=True)
class FaultPoint:
    stage: str  # one of STAGES
    index: int  # input chunk (scan), bucket (gather) or partition pid (score)
    batch_size: int = 0  # score: the batch size about to be used


class FaultHookError(ValueError):
    """A fault hook that cannot be used; one line."""


@lru_cache(maxsize=8)
def resolve(spec: str) -> tuple[Callable, tuple[str, ...]]:
    """(function, extra arguments) named by ``spec``; imported once per process."""
    target, eq, argument = spec.partition("=")
    module, colon, name = target.partition(":")
    if not colon or not module or not name:
        raise FaultHookError(f"{ENV}={spec!r}: expected package.module:function[=ARGUMENT]")
    try:
        fn = getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError) as exc:
        raise FaultHookError(f"{ENV}={spec!r}: {type(exc).__name__}: {exc}") from None
    if not callable(fn):
        raise FaultHookError(f"{ENV}={spec!r}: {target} is not a function")
    return fn, ((argument,) if eq else ())


def environment(name: str, argument: str | None = None, module: str = __name__) -> dict[str, str]:
    """The environment entry that injects ``module``'s fault ``name`` (with ``argument``) into the
    processes of a run started with it (tests: ``env=dict(os.environ, **environment(...))``)."""
    return {ENV: f"{module}:{name}" + (f"={argument}" if argument is not None else "")}


def fault_point(stage: str, index: int, batch_size: int = 0) -> None:
    """Call the hook named in the environment (none: nothing) at ``stage``'s fault point."""
    spec = os.environ.get(ENV)
    if spec:
        fn, extra = resolve(spec)
        fn(FaultPoint(stage, int(index), int(batch_size)), *extra)


# ---------------------------------------------------------------- the faults the tests inject
def _fields(argument: str, n: int, usage: str) -> list[str]:
    parts = argument.split(":")
    if len(parts) != n:
        raise FaultHookError(f"fault argument {argument!r}: expected {usage}")
    return parts


def sleep(point: FaultPoint, argument: str) -> None:
    """``STAGE:INDEX:SECONDS`` (INDEX -1: every task of the stage): slows that stage down, so that
    a kill reliably lands mid-run on a fast machine."""
    stage, index, seconds = _fields(argument, 3, "STAGE:INDEX:SECONDS")
    if stage == point.stage and int(index) in (-1, point.index):
        time.sleep(float(seconds))


def memory_error(point: FaultPoint, argument: str) -> None:
    """``PID:MIN_BATCH``: partition PID raises MemoryError while its batch size is >= MIN_BATCH."""
    pid, min_batch = _fields(argument, 2, "PID:MIN_BATCH")
    if point.stage == "score" and point.index == int(pid) and point.batch_size >= int(min_batch):
        raise MemoryError(f"injected: partition {point.index} at batch size {point.batch_size}")


def exhaust_memory(point: FaultPoint, argument: str) -> None:
    """``PID:MIN_BATCH``: partition PID really allocates memory (64 MiB steps, up to 16 GiB) while
    its batch size is >= MIN_BATCH, until the Dask nanny kills the worker for memory."""
    pid, min_batch = _fields(argument, 2, "PID:MIN_BATCH")
    if point.stage != "score" or point.index != int(pid) or point.batch_size < int(min_batch):
        return
    hog = []
    for _ in range(256):
        hog.append(np.ones(8 * 2**20))  # 64 MiB, touched
        time.sleep(0.02)
    raise MemoryError(f"injected: partition {point.index} allocated 16 GiB and was not killed")
