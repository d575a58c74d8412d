"""The one place that creates a Dask client: a LocalCluster, or a running scheduler."""

from __future__ import annotations

import contextlib
import logging


@contextlib.contextmanager
def dask_client(workers: int = 1, threads_per_worker: int = 1, scheduler: str | None = None,
                memory_limit: str = "auto"):
    from distributed import Client, LocalCluster

    if scheduler:
        client = Client(scheduler)
        try:
            yield client
        finally:
            client.close()
        return
    logging.getLogger("distributed").setLevel(logging.WARNING)
    cluster = LocalCluster(n_workers=workers, threads_per_worker=threads_per_worker, processes=True,
                           dashboard_address=":0", memory_limit=memory_limit,
                           silence_logs=logging.CRITICAL)   # task errors are reported by the run itself
    client = Client(cluster)
    try:
        yield client
    finally:
        client.close()
        cluster.close()
