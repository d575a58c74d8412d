"""SLURM: options, the allocation's environment, job scripts (package data) and their command line.

Three ways to run process-catalog on a SLURM cluster (docs: README "Running on a SLURM cluster"):

* **single allocation** (``slurm/process-catalog.sbatch``): one ``srun`` step runs process-catalog in
  every task with ``--cluster slurm-runner``; dask-jobqueue's ``SLURMRunner`` gives task 0 the Dask
  scheduler, task 1 the client (the pipeline itself) and tasks 2.. one Dask worker each (under a
  nanny, which restarts a killed worker).  Chosen over dask-mpi: it needs no MPI library or mpi4py
  built against the site's MPI, only SLURM's own environment variables and a scheduler file on the
  shared filesystem, and it comes from dask-jobqueue, which the login-node mode needs anyway.
* **array + finalize** (``slurm/submit-array.sh``): a plan job (``--plan``), an array job whose task
  i runs ``--shard i/N`` (each with a local Dask cluster inside its own allocation), and a finalize
  job (``--dependency=afterok``).  A failed shard is resubmitted alone: ``sbatch --array=i``.
* **from a login node** (``--cluster slurm``): dask-jobqueue's ``SLURMCluster`` starts the workers as
  jobs; worker ``--lifetime`` stays below the walltime and the cluster adapts back to ``--workers``
  jobs, so workers that retire or die are replaced during the run.

Modules: options (``--cluster slurm`` options, walltimes, GPU resources), environment (inside an
allocation), job_scripts (the templates in ``templates/``, rendered), cli (``python -m
mergerscan.pipeline.slurm render DEST``).  Nothing here imports Dask or dask-jobqueue at module
level: ``ProcessArguments`` uses :class:`SlurmOptions`, and the helpers are pure functions of
their inputs (tested without SLURM).
"""

from __future__ import annotations

from .environment import (
    is_slurm_task,
    pick_gpu,
    runner_worker_options,
    scheduler_file,
    slurm_cpus,
    task_memory_bytes,
    worker_index_on_node,
)
from .job_scripts import TEMPLATES, job_script, render_all, render_text, template_text
from .options import (
    GPU_TASK_RESOURCES,
    NO_PAUSE_ENV,
    SlurmOptions,
    cluster_kwargs,
    format_walltime,
    gpu_worker_resources,
    parse_walltime,
    worker_lifetime,
)

__all__ = [
    "GPU_TASK_RESOURCES",
    "NO_PAUSE_ENV",
    "TEMPLATES",
    "SlurmOptions",
    "cluster_kwargs",
    "format_walltime",
    "gpu_worker_resources",
    "is_slurm_task",
    "job_script",
    "parse_walltime",
    "pick_gpu",
    "render_all",
    "render_text",
    "runner_worker_options",
    "scheduler_file",
    "slurm_cpus",
    "task_memory_bytes",
    "template_text",
    "worker_index_on_node",
    "worker_lifetime",
]
