"""Running a stage's tasks and showing their progress (the plan stage's scan and gather)."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from typing import Any

from ..catalogs.read import CatalogError


class Progress:
    """A tqdm bar (rate and time left).  ``lazy``: shown from the first finished task on, so that
    input that fails at once gets its one-line error and no bar."""

    def __init__(self, total: int, desc: str, enabled: bool, unit: str = "obj", lazy: bool = False):
        self.bar: Any = None
        self._args: dict | None = (
            dict(total=total, desc=desc, unit=unit, unit_scale=True, dynamic_ncols=True) if enabled and total else None
        )
        if self._args and not lazy:
            self._open()

    def _open(self) -> None:
        from tqdm.auto import tqdm

        self.bar, self._args = tqdm(**(self._args or {})), None

    def update(self, n: int) -> None:
        if self.bar is None and self._args and n:
            self._open()
        if self.bar is not None:
            self.bar.update(n)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


class TaskRunner:
    """Runs a stage's tasks on the Dask cluster, or - ``--plan`` on this machine (no scheduler
    given) - on threads of this process: the plan needs no worker processes, and starting a
    cluster for it cost as long as reading the catalog's positions (~3-6 s on 2 cores)."""

    def __init__(self, client=None, threads: int = 1):
        self.client, self.threads = client, threads

    def map(self, fn: Callable, *iterables: Iterable, progress: Progress, weight: Callable[[Any], int]) -> Iterator:
        """Results in completion order, each dropped once read (the driver never holds all of
        them at once); never stops early on a failure.  Input errors (CatalogError) are re-raised
        as they are: they are the user's one-line message."""
        if self.client is not None:
            from distributed import as_completed

            pending: Any = as_completed(self.client.map(fn, *iterables, pure=False, retries=2))
            cancel = lambda: self.client.cancel(list(pending.futures))
            name = lambda f: f.key
        else:
            from concurrent.futures import ThreadPoolExecutor
            from concurrent.futures import as_completed as completed

            pool = ThreadPoolExecutor(self.threads, thread_name_prefix="mergerscan-plan")
            futs = {pool.submit(fn, *a): f"{fn.__name__}-{i}" for i, a in enumerate(zip(*iterables))}
            pending = completed(list(futs))
            cancel = lambda: [f.cancel() for f in futs]
            name = futs.get
        errors = []
        try:
            for fut in pending:
                try:
                    r = fut.result()
                except CatalogError:
                    progress.close()
                    cancel()
                    raise
                except Exception as exc:  # reported after the rest finished
                    errors.append(f"{name(fut)}: {type(exc).__name__}: {exc}")
                    continue
                finally:
                    if self.client is not None:
                        fut.release()
                progress.update(weight(r))
                yield r
        finally:
            if self.client is None:
                pool.shutdown(wait=True, cancel_futures=True)
        progress.close()
        if errors:
            raise RuntimeError(f"{len(errors)} task(s) failed (re-run the same command to resume): {errors[0]}")
