"""One engine per worker process, and what to do when its device context is lost."""

from __future__ import annotations

import os
import threading
from typing import Any

from ..engines import load_engine
from ..engines.errors import StickyDeviceError

_ENGINES: dict = {}
_ENGINES_LOCK = threading.Lock()


def worker_engine(path: str | None, backend: str, threads: int, shared_batch: int = 0, views: int | None = None) -> Any:
    """One engine per worker process (loading a session per partition would waste seconds).
    ``shared_batch`` > 0: the partitions this worker runs at once share it through a
    :class:`SharedBatchEngine` that merges their batches up to that many rows (GPU backends)."""
    key = (path, backend, threads, shared_batch, views)
    with _ENGINES_LOCK:
        if key not in _ENGINES:
            engine = load_engine(path, backend=backend, threads=threads, views=views)
            if shared_batch:
                from ..engines.batching import SharedBatchEngine

                engine = SharedBatchEngine(engine, batch=shared_batch)
            _ENGINES[key] = engine
        return _ENGINES[key]


def device_failure(engine, exc: BaseException) -> None:
    """A sticky CUDA error: this process's device context is unusable, so every later partition
    here would fail too.  Inside a Dask worker, end the process (its nanny starts a fresh one and
    the scheduler reruns its partitions elsewhere or there); outside one, raise."""
    import logging
    import sys

    msg = (
        f"mergerscan: sticky device error in {engine.backend}, this worker process must be replaced: "
        f"{type(exc).__name__}: {str(exc)[:300]}"
    )
    with _ENGINES_LOCK:
        for k in [k for k, v in _ENGINES.items() if v is engine]:
            del _ENGINES[k]
    try:
        from distributed import get_worker

        get_worker()
    except (ImportError, ValueError):
        raise StickyDeviceError(msg) from exc
    logging.getLogger("mergerscan").error(msg)
    print(msg, file=sys.stderr, flush=True)
    os._exit(70)  # the nanny restarts the worker; its tasks are rescheduled
