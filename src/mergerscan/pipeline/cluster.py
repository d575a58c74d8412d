"""The one place that creates Dask clusters and clients.

* local: a LocalCluster of worker processes (each under a nanny: a killed worker is restarted and
  its tasks rescheduled);
* ``--scheduler ADDRESS``: join a running scheduler;
* ``--cluster slurm``: dask-jobqueue's SLURMCluster starts the workers as SLURM jobs from here (a
  login node); it adapts back to ``--workers`` jobs, so retired (``--lifetime``) or killed worker
  jobs are replaced during the run;
* ``--cluster slurm-runner``: inside one allocation, dask-jobqueue's SLURMRunner turns the tasks of
  one ``srun`` step into scheduler (task 0), client (task 1) and workers (tasks 2..):
  :func:`slurm_runner`.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys

from ..run_layout import RunLayout
from .slurm import NO_PAUSE_ENV, gpu_worker_resources


def _no_memory_pause() -> None:
    """Dask pauses a worker at 80 % of its memory limit so that spilling managed data can catch up.
    Our tasks hold no managed data (stamps and the engine are unmanaged), so a paused worker never
    resumes and the run hangs; without the pause, a worker that really runs out is restarted by its
    nanny at 95 % and the partition is retried with smaller batches (run._score).  Set here and in
    the environment, for the worker processes the nannies spawn."""
    import dask

    dask.config.set({"distributed.worker.memory.pause": False})
    os.environ[NO_PAUSE_ENV] = "False"


@contextlib.contextmanager
def _scoped_settings():
    """:func:`_no_memory_pause` and quiet distributed logs for one cluster's life only: the caller
    (a notebook: mergerscan.process_catalog) gets its Dask config, environment and log level back."""
    import dask

    env, level = os.environ.get(NO_PAUSE_ENV), logging.getLogger("distributed").level
    try:
        with dask.config.set({"distributed.worker.memory.pause": False}):  # the old value back at the end
            os.environ[NO_PAUSE_ENV] = "False"
            yield
    finally:
        if env is None:
            os.environ.pop(NO_PAUSE_ENV, None)
        else:
            os.environ[NO_PAUSE_ENV] = env
        logging.getLogger("distributed").setLevel(level)


@contextlib.contextmanager
def dask_client(
    workers: int = 1,
    threads_per_worker: int = 1,
    scheduler: str | None = None,
    memory_limit: str = "auto",
    wait_for_workers: int = 0,
    gpus: int = 0,
):
    """``gpus``: local workers advertise the GPU resource the scoring tasks then ask for (all
    local workers share this machine's GPU(s): more than one process per GPU gets past the GIL)."""
    with _scoped_settings():
        yield from _dask_client(workers, threads_per_worker, scheduler, memory_limit, wait_for_workers, gpus)


def _dask_client(workers, threads_per_worker, scheduler, memory_limit, wait_for_workers, gpus):
    from distributed import Client, LocalCluster

    if scheduler:
        client = Client(scheduler)
        try:
            if wait_for_workers:
                client.wait_for_workers(wait_for_workers)
            yield client
        finally:
            client.close()
        return
    logging.getLogger("distributed").setLevel(logging.WARNING)
    cluster = LocalCluster(
        n_workers=workers,
        threads_per_worker=threads_per_worker,
        processes=True,
        dashboard_address=":0",
        memory_limit=memory_limit,
        preload=["mergerscan.pipeline._worker_signals"],  # ^C: one line from the client
        resources=gpu_worker_resources(threads_per_worker, gpus) or None,
        silence_logs=logging.CRITICAL,
    )  # task errors are reported by the run itself
    client = Client(cluster)
    try:
        yield client
    finally:
        client.close()
        cluster.close()


@contextlib.contextmanager
def client_for(args):
    """The Dask client for a process-catalog run (``args``: ProcessArguments)."""
    if args.cluster == "slurm":
        with slurm_cluster_client(args) as client:
            yield client
        return
    with dask_client(
        args.workers,
        args.threads_per_worker,
        args.scheduler,
        args.memory_limit,
        wait_for_workers=1 if args.cluster == "slurm-runner" else 0,
        gpus=args.gpus,
    ) as client:
        yield client


def check_local_gpu(backend: str) -> None:
    """Local workers run on this machine: refuse at once (one line) when the GPU backend cannot run
    here, instead of starting workers that fail every partition."""
    from ..engines import available_backends, parse_backend
    from .run_options import ArgumentError, literal

    why = available_backends()[parse_backend(backend)[0]]
    if why:
        raise ArgumentError(
            f"{{gpus}} 1 with local workers: {{backend}} {literal(backend)} cannot run on this machine: {literal(why)}",
            "gpus",
        )


def check_gpu_workers(client, args) -> None:
    """Tasks that need the GPU resource wait forever when no worker advertises it: refuse instead
    (workers joined with ``--scheduler`` must be started with ``--resources GPU=<threads>``)."""
    if args.cluster == "slurm":
        return  # worker jobs are still queued; they are started with the resource
    workers = client.scheduler_info().get("workers", {})
    if workers and not any(w.get("resources", {}).get("GPU") for w in workers.values()):
        from .run_options import ArgumentError

        raise ArgumentError(
            f"{{gpus}} 1: none of the {len(workers)} worker(s) of the scheduler advertises the Dask "
            "resource GPU (start them with: dask worker --resources GPU=<threads>), so no "
            "partition could ever run",
            "gpus",
        )


@contextlib.contextmanager
def slurm_cluster_client(args):
    """Workers as SLURM jobs (dask-jobqueue SLURMCluster), from a login node."""
    from dask_jobqueue import SLURMCluster
    from distributed import Client

    from .slurm import cluster_kwargs

    logs = RunLayout(args.output).work.slurm_logs
    logs.mkdir(parents=True, exist_ok=True)
    kw = cluster_kwargs(args.slurm, args.gpus, python=sys.executable, log_directory=logs)
    logging.getLogger("distributed").setLevel(logging.WARNING)
    cluster = SLURMCluster(**kw)
    # min = max: jobs that end (worker --lifetime, walltime, scancel, node failure) are resubmitted
    cluster.adapt(minimum_jobs=args.workers, maximum_jobs=args.workers)
    client = Client(cluster)
    try:
        if args.progress:
            print(
                f"process-catalog: waiting for SLURM worker jobs (squeue -u {os.environ.get('USER', '$USER')}); "
                f"worker logs in {logs}",
                file=sys.stderr,
                flush=True,
            )
        client.wait_for_workers(1)
        yield client
    finally:
        client.close()
        cluster.close()


async def _terminate_nannies(scheduler_comm) -> None:
    """Ask every nanny to close (its handler is "terminate"; "close" only closes the comm): it
    stops its worker through the stop queue and waits for the process.  Called from the client,
    so a nanny that closes its comm before replying raises here, silently, not in the scheduler."""
    import asyncio

    from distributed.core import rpc

    info = await scheduler_comm.identity()
    nannies = [w["nanny"] for w in info.get("workers", {}).values() if w.get("nanny")]

    async def terminate(address):
        nanny = rpc(address)
        try:
            with contextlib.suppress(Exception):
                await nanny.terminate(reason="mergerscan-done")
        finally:
            await nanny.close_rpc()

    await asyncio.gather(*map(terminate, nannies))


@contextlib.contextmanager
def slurm_runner(threads: int, memory_limit: str = "auto", gpus: int = 0):
    """Scheduler, client and workers in the tasks of one srun step (dask-jobqueue SLURMRunner).

    Every task enters; task 0 runs the scheduler and task 2.. a worker (under a nanny) until the
    client closes the runner, then they *exit the process* (SLURMRunner's own behaviour) - so this
    must be entered before the client does anything else.  Task 1 gets the scheduler address and
    runs the pipeline; leaving the block shuts the scheduler and the workers down."""
    from .slurm import pick_gpu, runner_worker_options, scheduler_file

    sched_file = scheduler_file()
    sched_file.parent.mkdir(parents=True, exist_ok=True)
    rank = int(os.environ["SLURM_PROCID"])
    if rank >= 2:
        gpu = pick_gpu() if gpus else None
        if gpu is not None:  # before the nanny spawns the worker process
            os.environ["CUDA_VISIBLE_DEVICES"] = gpu
    # quiet job logs: warnings and errors only, also in the worker processes the nannies spawn
    os.environ.setdefault("DASK_LOGGING__DISTRIBUTED", "warning")
    _no_memory_pause()
    logging.getLogger("distributed").setLevel(logging.WARNING)
    from dask_jobqueue.slurm import SLURMRunner

    runner = SLURMRunner(
        scheduler_file=str(sched_file),
        worker_class="distributed.Nanny",
        worker_options=runner_worker_options(threads, memory_limit, gpus),
        scheduler_options={"dashboard_address": ":0"},
    )
    # only the client task gets here
    try:
        yield runner.scheduler_address
    finally:
        # Nannies (and through them their workers) first, so no worker is closed by the scheduler:
        # that races distributed's stop-queue watcher thread at exit and can print "Worker process
        # died unexpectedly" with a TypeError traceback into the job log.
        with contextlib.suppress(Exception):
            runner.sync(_terminate_nannies, runner.scheduler_comm)
        runner.close()  # the scheduler task removes its scheduler file itself
