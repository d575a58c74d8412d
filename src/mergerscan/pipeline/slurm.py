"""SLURM: options, job-script rendering, and the small pure helpers the cluster code uses.

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

Nothing here imports Dask or dask-jobqueue at module level: ``ProcessArguments`` uses
:class:`SlurmOptions`, and the helpers are pure functions of their inputs (tested without SLURM).
"""

from __future__ import annotations

import argparse
import os
import re
import shlex
import stat
import sys
from dataclasses import dataclass, field
from pathlib import Path

NO_PAUSE_ENV = "DASK_DISTRIBUTED__WORKER__MEMORY__PAUSE"   # =False: see pipeline/cluster.py
TEMPLATES = ("process-catalog.sbatch", "plan.sbatch", "shard.sbatch", "finalize.sbatch", "submit-array.sh")
# A scoring task with --gpus 1 asks for one unit of the Dask resource GPU; a GPU worker advertises one
# unit per thread (partition slot), so exactly `threads` partitions share its GPU.  Integer units:
# fractional ones (1/threads per task) lose a slot to rounding (12 threads ran 11 tasks at once).
GPU_TASK_RESOURCES = {"GPU": 1}


def gpu_worker_resources(threads: int, gpus: int) -> dict:
    """The Dask resources a worker with ``gpus`` GPU(s) and ``threads`` threads advertises."""
    return {"GPU": max(1, int(threads)) * int(gpus)} if gpus else {}


def template_dir() -> Path:
    """The ``slurm/`` directory of the source tree (``$MERGERSCAN_SLURM_TEMPLATES`` overrides)."""
    env = os.environ.get("MERGERSCAN_SLURM_TEMPLATES")
    d = Path(env) if env else Path(__file__).resolve().parents[3] / "slurm"
    if not (d / TEMPLATES[0]).is_file():
        raise FileNotFoundError(f"SLURM templates not found in {d}: run from a source checkout of mergerscan "
                                "or set MERGERSCAN_SLURM_TEMPLATES to its slurm/ directory")
    return d


@dataclass
class SlurmOptions:
    """Worker jobs started from a login node (``--cluster slurm``); ``--workers`` = number of jobs."""
    cores: int = 4                      # cores per worker job (= threads of its worker)
    memory: str = "16GB"                # memory per worker job
    processes: int = 1                  # Dask worker processes per job (with --gpus 1 they share the job's GPU)
    walltime: str = "01:00:00"
    account: str | None = None
    partition: str | None = None
    prologue: list = field(default_factory=list)      # shell lines before the worker starts
    directives: list = field(default_factory=list)    # extra #SBATCH options, e.g. "--qos=debug"
    lifetime: str | None = None         # worker --lifetime; default: below the walltime (worker_lifetime)
    interface: str | None = None        # network interface for scheduler and workers, e.g. ib0

    def validate(self):
        if self.cores < 1 or self.processes < 1:
            raise ValueError("--slurm-cores and --slurm-processes must be >= 1")
        if self.cores % self.processes:
            raise ValueError("--slurm-cores must be a multiple of --slurm-processes")
        wall = parse_walltime(self.walltime)
        if self.lifetime and parse_walltime(self.lifetime) >= wall:
            raise ValueError(f"--slurm-lifetime {self.lifetime} must be below --slurm-walltime {self.walltime}")
        worker_lifetime(wall)   # raises when the walltime is too short


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
    if d is not None:                      # D-H[:M[:S]]
        secs = int(d) * 86400 + int(a) * 3600 + int(b or 0) * 60 + int(c or 0)
    elif c is not None:                    # H:M:S
        secs = int(a) * 3600 + int(b) * 60 + int(c)
    elif b is not None:                    # M:S
        secs = int(a) * 60 + int(b)
    else:                                  # M
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


# ------------------------------------------------------------------ login node: SLURMCluster
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
    kw = dict(cores=opts.cores, processes=opts.processes, memory=opts.memory, walltime=format_walltime(wall),
              account=opts.account, queue=opts.partition, job_extra_directives=directives,
              job_script_prologue=[f"export {NO_PAUSE_ENV}=False"] + list(opts.prologue), worker_extra_args=extra, python=python,
              log_directory=str(log_directory), job_name="mergerscan-worker",
              scheduler_options={"dashboard_address": ":0"})
    if opts.interface:
        kw["interface"] = opts.interface
    return kw


# ------------------------------------------------------------------ inside an allocation: SLURMRunner
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
    return mb * 2 ** 20 if mb else None


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
    opts = {"nthreads": slurm_cpus(env) or threads,
            "memory_limit": task_memory or memory_limit}   # "auto" would see the whole node's memory
    if gpus:
        opts["resources"] = gpu_worker_resources(opts["nthreads"], gpus)
    return opts


def scheduler_file(env=None, directory: str | Path = ".mergerscan-dask") -> Path:
    """Per job *and* per requeue: a stale file from an earlier attempt must never be read."""
    env = os.environ if env is None else env
    base = Path(env.get("SLURM_SUBMIT_DIR", ".")) / directory
    return base / f"scheduler-{env['SLURM_JOB_ID']}.{env.get('SLURM_RESTART_COUNT', '0')}.json"


# ------------------------------------------------------------------ job-script rendering
_DIRECTIVE = re.compile(r"^#SBATCH\s+(--?[\w-]+)(?:[=\s]\s*(.*?))?\s*(#.*)?$")


def _directive_line(key: str, value) -> str:
    key = key.lstrip("-")
    return f"#SBATCH --{key}" if value is True else f"#SBATCH --{key}={value}"


def render_text(text: str, python: str | None = None, directives: dict | None = None) -> str:
    """A template with ``#SBATCH`` directives replaced, added (``key: value``) or removed
    (``key: None``/``False``), and the Python interpreter baked in as the default."""
    lines = text.splitlines()
    directives = {k.lstrip("-"): v for k, v in (directives or {}).items()}
    seen, out, last = set(), [], None
    for line in lines:
        m = _DIRECTIVE.match(line)
        if m and m.group(1).lstrip("-") in directives:
            key = m.group(1).lstrip("-")
            seen.add(key)
            v = directives[key]
            if v is None or v is False:
                continue
            line = _directive_line(key, v)
        if python and line.startswith("PYTHON=${MERGERSCAN_PYTHON:-"):
            line = f"PYTHON=${{MERGERSCAN_PYTHON:-{python}}}"
        out.append(line)
        if line.startswith("#SBATCH"):
            last = len(out)
    extra = [_directive_line(k, v) for k, v in directives.items() if k not in seen and v not in (None, False)]
    if extra:
        at = last if last is not None else 1
        out[at:at] = extra
    return "\n".join(out) + "\n"


def render(name: str, python: str | None = None, directives: dict | None = None,
           templates: str | Path | None = None) -> str:
    d = Path(templates) if templates else template_dir()
    return render_text((d / name).read_text(), python=python, directives=directives)


def render_all(dest: str | Path, python: str | None = None, directives: dict | None = None,
               per_template: dict | None = None, templates: str | Path | None = None) -> dict:
    """Write every template into ``dest`` (rendered); returns {name: path}.  ``directives`` apply to
    every job script, ``per_template[name]`` on top (e.g. the shard job's ``gres``)."""
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    paths = {}
    for name in TEMPLATES:
        d = dict(directives or {}) if name.endswith(".sbatch") else {}
        d.update((per_template or {}).get(name, {}))
        p = dest / name
        p.write_text(render(name, python=python, directives=d, templates=templates))
        p.chmod(p.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
        paths[name] = p
    return paths


def _kv(text: str):
    """'key=value' -> value, 'key' -> True (a flag), 'key=' -> None (remove the directive)."""
    k, eq, v = text.partition("=")
    return k.lstrip("-"), (v if v else None) if eq else True


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m mergerscan.pipeline.slurm",
        description="Write the slurm/ job scripts into DEST with this Python baked in and #SBATCH options set.",
        epilog="e.g.: python -m mergerscan.pipeline.slurm render jobs/ --set account=abc123 --set partition=gpu "
               "--set time=08:00:00 --shard-set gres=gpu:1 --shard-set cpus-per-task=16")
    sub = ap.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("render")
    r.add_argument("dest")
    r.add_argument("--python", default=sys.executable, help="interpreter with mergerscan installed (default: this one)")
    r.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="#SBATCH option for every job script (KEY alone: a flag; KEY= with no value: remove)")
    r.add_argument("--shard-set", action="append", default=[], metavar="KEY=VALUE",
                   help="#SBATCH option for shard.sbatch and process-catalog.sbatch only (e.g. gres=gpu:1)")
    a = ap.parse_args(argv)
    directives = dict(_kv(s) for s in a.set)
    per = {n: dict(_kv(s) for s in a.shard_set) for n in ("shard.sbatch", "process-catalog.sbatch")}
    paths = render_all(a.dest, python=str(Path(a.python).absolute()), directives=directives, per_template=per)
    print("\n".join(shlex.quote(str(p)) for p in paths.values()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
