"""SLURM and faults.

* job-script text: the slurm/ templates rendered, the array submission chain (against a fake
  sbatch), the SLURMCluster worker job script, the pure SLURM helpers;
* faults without a scheduler: MemoryError in a batch, a worker killed for memory (retried smaller,
  or flagged ``out_of_memory`` and scored again by a re-run), a task run twice at once;
* a real single-node SLURM cluster (../shared/tools/slurm-local/start.sh, started once per session;
  skipped without root or slurm-wlm): the single-allocation mode, array + finalize with one shard
  resubmitted alone, ``scancel`` mid-run then resubmit, a worker process killed mid-run, and
  ``--cluster slurm`` starting workers as jobs.  Every real run is compared row for row with an
  undisturbed local run.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest

from conftest import (
    SCIENCE,
    assert_no_traceback,
    make_stamps,
    read_out,
    run_arguments,
    two_patch_catalog,
    write_fits_catalog,
)
from mergerscan.pipeline import slurm as S
from mergerscan.pipeline.arguments import ArgumentError, ProcessArguments
from mergerscan.pipeline.faults import environment
from mergerscan.run_layout import RunLayout

REPO = Path(__file__).resolve().parents[2]
SLURM_LOCAL = Path(os.environ.get("MERGERSCAN_SHARED", REPO.parent / "shared")) / "tools" / "slurm-local"
PY = str(Path(sys.executable).absolute())
COLS = SCIENCE + ["mag_r"]


# ---------------------------------------------------------------- a small catalog + stamps
@pytest.fixture(scope="module")
def field(tmp_path_factory, cheap_engine):
    """240 objects on two patches of sky (3 of them flagged: bad coords, no image), and the engine
    that scores them (d / "engine.onnx": conftest's cheap engine; these tests are about jobs and faults)."""
    d = tmp_path_factory.mktemp("slurmfield")
    shutil.copy(cheap_engine, d / "engine.onnx")
    df = two_patch_catalog(240, seed=7, width=0.4, id_step=3)
    df.loc[3, "DEdeg"] = np.nan
    make_stamps(d / "stamps", [o for k, o in enumerate(df["objID"]) if k not in (20, 21)], seed=1, size=128)
    write_fits_catalog(d / "cat.fits", df)
    return d, df


def cli_args(d: Path, out: Path, *extra) -> list[str]:
    """The same process-catalog options for every run compared here (1 thread, same batches)."""
    return [
        str(d / "cat.fits"),
        "-o",
        str(out),
        "--images",
        str(d / "stamps"),
        "--partition-rows",
        "20",
        "--threads-per-worker",
        "1",
        "--batch-size",
        "8",
        "--keep-columns",
        "mag_r",
        "--no-progress",
        "--no-report",
        "--engine",
        str(d / "engine.onnx"),
        *map(str, extra),
    ]


def run_cli(*argv, env=None, timeout=600):
    r = subprocess.run(
        [PY, "-m", "mergerscan.pipeline.cli", *map(str, argv)], capture_output=True, text=True, timeout=timeout, env=env
    )
    assert_no_traceback(r.stdout, r.stderr)
    return r


@pytest.fixture(scope="module")
def reference(field, tmp_path_factory):
    """The undisturbed run every disturbed one must equal, row for row."""
    d, df = field
    out = tmp_path_factory.mktemp("ref") / "out"
    r = run_cli(*cli_args(d, out, "--workers", "1"))
    assert r.returncode == 0, r.stderr
    got = read_out(out)
    assert len(got) == len(df)
    return got


def assert_same_rows(out: Path, ref: pd.DataFrame, exact: bool = True):
    """Row for row equal to the undisturbed run; ``exact``: p_merger bit for bit too."""
    got = read_out(out)
    assert len(got) == len(ref) and got["input_row"].is_unique, "rows duplicated or missing"
    pd.testing.assert_frame_equal(got[COLS], ref[COLS], check_exact=exact)
    assert not list((out / "parquet").rglob(".*.tmp")), "temporary files left in the dataset"


# ---------------------------------------------------------------- job-script text
def test_templates_render(tmp_path):
    paths = S.render_all(
        tmp_path,
        python=PY,
        directives={"account": "abc123", "partition": "gpu", "time": "08:00:00", "mem-per-cpu": None},
        per_template={"shard.sbatch": {"gres": "gpu:1", "cpus-per-task": 16}},
    )
    assert set(paths) == set(S.TEMPLATES)
    for name, p in paths.items():
        text = p.read_text()
        assert subprocess.run(["bash", "-n", str(p)]).returncode == 0, name
        assert os.access(p, os.X_OK)
        if not name.endswith(".sbatch"):
            continue
        assert f"PYTHON=${{MERGERSCAN_PYTHON:-{PY}}}" in text
        assert "#SBATCH --account=abc123" in text and "#SBATCH --partition=gpu" in text
        assert "#SBATCH --time=08:00:00" in text and len(re.findall(r"^#SBATCH --time", text, re.M)) == 1
        assert "#SBATCH --mem-per-cpu" not in text
        assert "-m mergerscan.pipeline.cli" in text
        # directives must come before the first command, or sbatch ignores them
        first_cmd = next(i for i, line in enumerate(text.splitlines()) if line and not line.startswith("#"))
        assert max(i for i, line in enumerate(text.splitlines()) if line.startswith("#SBATCH")) < first_cmd
    shard = paths["shard.sbatch"].read_text()
    assert "#SBATCH --gres=gpu:1" in shard and "#SBATCH --cpus-per-task=16" in shard
    assert '--shard "${SLURM_ARRAY_TASK_ID}/${N}"' in shard
    assert "--gres" not in paths["plan.sbatch"].read_text()
    single = paths["process-catalog.sbatch"].read_text()
    assert "--cluster slurm-runner" in single and re.search(r"^srun .*--cpus-per-task", single, re.M)
    assert "--finalize" in paths["finalize.sbatch"].read_text()
    assert "--plan" in paths["plan.sbatch"].read_text()


def test_shipped_templates_need_no_rendering():
    """slurm/*.sbatch work as they are (sbatch slurm/process-catalog.sbatch ...): no placeholders."""
    for name in S.TEMPLATES:
        text = (REPO / "slurm" / name).read_text()
        assert "@" not in re.sub(r"\$\{?@\}?|\[@\]|%[jaA]", "", text.replace('"$@"', "")), name
        assert subprocess.run(["bash", "-n", str(REPO / "slurm" / name)]).returncode == 0


def test_repository_slurm_dir_is_the_package_templates():
    """slurm/ (submitted from a checkout) and the package's templates (rendered by job_script) are
    the same files: edit the package's, then copy them to slurm/."""
    for name in S.TEMPLATES:
        assert (REPO / "slurm" / name).read_text() == S.template_text(name), f"slurm/{name} differs"
    assert sorted(p.name for p in (REPO / "slurm").iterdir()) == sorted(S.TEMPLATES)


def test_job_script_text():
    """job_script() is the text sbatch gets: directives replaced in place, added after the last one,
    removed; the interpreter baked in as the default; an unknown template is refused."""
    text = S.job_script(
        "shard.sbatch",
        python="/opt/py/bin/python",
        directives={"time": "08:00:00", "gres": "gpu:1", "mem-per-cpu": None, "exclusive": True},
    )
    lines = text.splitlines()
    sbatch = [i for i, line in enumerate(lines) if line.startswith("#SBATCH")]
    assert sbatch == list(range(sbatch[0], sbatch[-1] + 1)), "the #SBATCH block stays in one piece"
    assert "#SBATCH --time=08:00:00" in lines and "#SBATCH --gres=gpu:1" in lines and "#SBATCH --exclusive" in lines
    assert not any(line.startswith("#SBATCH --mem-per-cpu") for line in lines)
    assert "PYTHON=${MERGERSCAN_PYTHON:-/opt/py/bin/python}" in lines
    assert S.job_script("shard.sbatch") == S.template_text("shard.sbatch")  # nothing asked: unchanged
    with pytest.raises(ValueError, match="no SLURM template"):
        S.template_text("other.sbatch")


def test_submit_array_chains_plan_shards_finalize(tmp_path):
    """submit-array.sh against a fake sbatch that records its arguments."""
    S.render_all(tmp_path / "jobs", python=PY)
    fake = tmp_path / "bin" / "sbatch"
    fake.parent.mkdir()
    log = tmp_path / "calls"
    fake.write_text(f'#!/bin/bash\necho "$@" >> {log}\nn=$(wc -l < {log})\necho "$((100 + n));local"\n')
    fake.chmod(0o755)
    env = dict(
        os.environ,
        PATH=f"{fake.parent}:{os.environ['PATH']}",
        MERGERSCAN_SBATCH="--account=abc",
        MERGERSCAN_SHARD_SBATCH="--gres=gpu:1",
    )
    r = subprocess.run(
        [
            "bash",
            str(tmp_path / "jobs" / "submit-array.sh"),
            "4",
            "cat.fits",
            "-o",
            "out",
            "--frames",
            "f",
            "--gpus",
            "1",
        ],
        capture_output=True,
        text=True,
        env=env,
    )
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == ["plan=101", "shards=102", "finalize=103"]
    plan, shards, final = log.read_text().splitlines()
    assert plan.startswith("--parsable --account=abc ") and plan.endswith(
        "plan.sbatch cat.fits -o out --frames f --gpus 1"
    )
    assert "--gres=gpu:1 --dependency=afterok:101 --array=0-3" in shards
    assert shards.endswith("shard.sbatch 4 cat.fits -o out --frames f --gpus 1")
    assert "--dependency=afterok:102" in final and "--gres" not in final and final.endswith("--gpus 1")
    bad = subprocess.run(
        ["bash", str(tmp_path / "jobs" / "submit-array.sh"), "x", "cat.fits"], capture_output=True, text=True, env=env
    )
    assert bad.returncode == 2 and "positive integer" in bad.stderr


def test_slurmcluster_worker_job_script(tmp_path):
    """--cluster slurm: what dask-jobqueue would sbatch for each worker (GPU + CPU-only)."""
    pytest.importorskip("dask_jobqueue")
    from dask_jobqueue import SLURMCluster

    opts = S.SlurmOptions(
        cores=8,
        memory="32GB",
        walltime="02:00:00",
        account="abc123",
        partition="gpu",
        prologue=["module load cuda/12"],
        directives=["--qos=long"],
    )
    with SLURMCluster(**S.cluster_kwargs(opts, gpus=1, python=PY, log_directory=tmp_path)) as cluster:
        text = cluster.job_script()
    for line in (
        "#SBATCH -A abc123",
        "#SBATCH -p gpu",
        "#SBATCH --cpus-per-task=8",
        "#SBATCH -t 02:00:00",
        "#SBATCH --gres=gpu:1",
        "#SBATCH --qos=long",
        "module load cuda/12",
        "export DASK_DISTRIBUTED__WORKER__MEMORY__PAUSE=False",
    ):  # a paused worker would hang the run
        assert line in text, line
    worker = next(line for line in text.splitlines() if "dask_worker" in line)
    assert worker.startswith(PY) and "--nthreads 8" in worker and "--resources GPU=8" in worker
    lifetime = int(re.search(r"--lifetime (\d+)s", worker).group(1))
    stagger = int(re.search(r"--lifetime-stagger (\d+)s", worker).group(1))
    assert lifetime + stagger < 7200 and lifetime >= 5400
    opts.partition = "cpu"
    with SLURMCluster(**S.cluster_kwargs(opts, gpus=0, python=PY, log_directory=tmp_path)) as cluster:
        text = cluster.job_script()
    assert "gres" not in text and "GPU=" not in text and "#SBATCH -p cpu" in text


def test_walltime_lifetime_and_task_helpers():
    assert S.parse_walltime("01:00:00") == 3600 and S.parse_walltime("30") == 1800
    assert S.parse_walltime("1-02:00:00") == 93600 and S.parse_walltime("5:30") == 330
    assert S.parse_walltime("55m") == 3300 and S.format_walltime(93600) == "26:00:00"
    with pytest.raises(ValueError):
        S.parse_walltime("soon")
    life, stagger = S.worker_lifetime(3600)
    assert life + stagger < 3600 and life - stagger > 2400
    with pytest.raises(ValueError, match="too short"):
        S.worker_lifetime(120)
    env = {
        "SLURM_PROCID": "3",
        "SLURM_NTASKS": "6",
        "SLURM_JOB_ID": "9",
        "SLURM_LOCALID": "3",
        "SLURM_NODEID": "0",
        "SLURM_CPUS_PER_TASK": "8",
        "SLURM_MEM_PER_CPU": "4000",
        "CUDA_VISIBLE_DEVICES": "0,1,2,3",
    }
    assert S.is_slurm_task(env) and S.slurm_cpus(env) == 8
    assert S.task_memory_bytes(env) == 8 * 4000 * 2**20
    assert S.worker_index_on_node(env) == 1 and S.pick_gpu(env) == "1"  # tasks 0, 1: scheduler, client
    node1 = dict(env, SLURM_NODEID="1", SLURM_LOCALID="2")
    assert S.worker_index_on_node(node1) == 2 and S.pick_gpu(node1) == "2"
    assert S.pick_gpu(dict(env, CUDA_VISIBLE_DEVICES="5")) is None  # --gpus-per-task: already one
    per_node = {"SLURM_MEM_PER_NODE": "64000", "SLURM_TASKS_PER_NODE": "4(x2),2", "SLURM_NODEID": "2"}
    assert S.task_memory_bytes(per_node) == 32000 * 2**20
    opts = S.runner_worker_options(2, "auto", 1, env)
    assert opts == {"nthreads": 8, "memory_limit": 8 * 4000 * 2**20, "resources": {"GPU": 8}}  # a unit per thread
    f = S.scheduler_file(dict(env, SLURM_SUBMIT_DIR="/scratch/me", SLURM_RESTART_COUNT="2"))
    assert str(f) == "/scratch/me/.mergerscan-dask/scheduler-9.2.json"


def test_arguments_for_slurm(field, tmp_path, monkeypatch):
    d, _ = field
    base = dict(catalog=str(d / "cat.fits"), output=str(tmp_path / "o"), images=str(d / "stamps"))
    with pytest.raises(ArgumentError, match="GPU backend"):
        ProcessArguments(**base, gpus=1)
    with pytest.raises(ArgumentError, match="under srun"):
        ProcessArguments(**base, cluster="slurm-runner")
    with pytest.raises(ArgumentError, match="scheduler"):
        ProcessArguments(**base, cluster="slurm", scheduler="tcp://x:1")
    with pytest.raises(ArgumentError, match="too short"):
        ProcessArguments(**base, cluster="slurm", slurm=S.SlurmOptions(walltime="00:02:00"))
    a = ProcessArguments(**base, cluster="slurm", gpus=1, backend="onnxruntime-cuda", slurm=S.SlurmOptions(cores=12))
    assert a.resolved().threads_per_worker == 12 and a.threads_per_worker == 0  # derived in the resolved copy
    monkeypatch.setenv("SLURM_CPUS_PER_TASK", "3")
    assert ProcessArguments(**base).resolved().threads_per_worker == 3  # not the node's cores


# ---------------------------------------------------------------- faults without a scheduler
def _plan_only(d, out, client):
    """The plan of cli_args(d, out) (in this process, on the session's cluster)."""
    from mergerscan.pipeline.plan import Plan
    from mergerscan.pipeline.run import run

    options = dict(images=d / "stamps", partition_rows=20, keep_columns=["mag_r"], engine=d / "engine.onnx")
    run(run_arguments(d / "cat.fits", out, **options, mode="plan"), client=client)
    return Plan.load(out / "_work" / "plan.json")


def test_memoryerror_batch_retried_in_halves_then_flagged(field, reference, dask_client, tmp_path, monkeypatch):
    """A batch that raises MemoryError is scored in halves (same p_merger); a row that fails alone
    is flagged out_of_memory; the done marker asks a re-run to score the partition again."""
    from mergerscan.catalogs.schema import STATUS
    from mergerscan.engines import read_engine_info
    from mergerscan.pipeline import task as T
    from mergerscan.pipeline.resume import ResumePlan

    d, _ = field
    out = tmp_path / "out"
    plan = _plan_only(d, out, dask_client)
    part = max(plan.partitions, key=lambda p: p.rows)
    real = T.worker_engine(str(d / "engine.onnx"), "onnxruntime", 1)

    class Tight:  # runs out of memory on batches above 3 stamps, and always on one poisoned stamp
        spec, info, poison = real.spec, real.info, None

        def score(self, x, *, features=False):  # the pipeline's engine call (Engine.score)
            if len(x) > 3 or (self.poison is not None and (x == self.poison).all(axis=(1, 2, 3)).any()):
                raise MemoryError("tight")
            return real.score(x)

    tight = Tight()
    monkeypatch.setattr(T, "worker_engine", lambda *a: tight)
    src = ProcessArguments(catalog=str(d / "cat.fits"), output=str(out), images=str(d / "stamps")).source
    meta = {"engine_sha256": read_engine_info(d / "engine.onnx").sha256}
    task = T.PartitionTask(output=str(out), source=src, engine_path=str(d / "engine.onnx"), batch_size=8, run_meta=meta)
    layout = RunLayout(out)
    r = T.score_partition(plan, part, task)
    got = pq.read_table(layout.dataset_file(part)).to_pandas().set_index("input_row")
    ref = reference.set_index("input_row").loc[got.index]
    assert (got["status"] == ref["status"]).all() and "out_of_memory" not in r.status
    assert np.allclose(got["p_merger"], ref["p_merger"], equal_nan=True, atol=1e-6)
    # one stamp that never fits: only its row is flagged, the rest still scored
    ok_row = got.index[got["status"] == "ok"][0]
    from mergerscan.cutouts.sources import open_source

    with_path = pd.DataFrame({"id": [str(got.loc[ok_row, "objid"])], "ra": [0.0], "dec": [0.0]})
    tight.poison = open_source(src, real.spec).fetch(with_path)[0][0]
    layout.work.marker(part.pid).unlink()
    r = T.score_partition(plan, part, task)
    got = pq.read_table(layout.dataset_file(part)).to_pandas().set_index("input_row")
    assert got.loc[ok_row, "status"] == "out_of_memory" and np.isnan(got.loc[ok_row, "p_merger"])
    assert (got.drop(ok_row)["status"] == ref.drop(ok_row)["status"]).all()
    assert "out_of_memory" in STATUS and r.retry and layout.work.retry_marker(part.pid).is_file()
    assert ResumePlan(layout).scored(part.pid).status["out_of_memory"] == 1
    assert ResumePlan(layout).needs_retry(part.pid)
    tight.poison = None  # "more memory": the re-run scores it and clears the retry marker
    r = T.score_partition(plan, part, task)
    assert "out_of_memory" not in r.status
    got = pq.read_table(layout.dataset_file(part)).to_pandas().set_index("input_row")
    assert got.loc[ok_row, "status"] == "ok"
    # a retry marker stays only for rows whose failure may still be transient (no_image here)
    assert layout.work.retry_marker(part.pid).exists() == bool(r.status.get("no_image"))


@pytest.mark.parametrize("kind", ["torch", "cuda-message", "onnxruntime"])
def test_cuda_out_of_memory_batch_retried_in_halves(field, reference, dask_client, tmp_path, monkeypatch, kind):
    """CUDA OOM is a RuntimeError (torch.OutOfMemoryError, ORT's failed BFC allocation), not a
    MemoryError: it must still be retried in halves, never end as inference_failed."""
    import torch
    from onnxruntime.capi.onnxruntime_pybind11_state import RuntimeException

    from mergerscan.engines import read_engine_info
    from mergerscan.pipeline import task as T

    d, _ = field
    out = tmp_path / "out"
    plan = _plan_only(d, out, dask_client)
    part = max(plan.partitions, key=lambda p: p.rows)
    real = T.worker_engine(str(d / "engine.onnx"), "onnxruntime", 1)
    error = {
        "torch": lambda: torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB"),
        "cuda-message": lambda: RuntimeError("CUDA error: out of memory"),
        "onnxruntime": lambda: RuntimeException(
            "BFCArena::AllocateRawInternal Failed to allocate memory for requested buffer of size 1073741824"
        ),
    }[kind]
    sizes = []

    class TightGPU:  # a GPU engine with room for 3 stamps at a time
        spec, info, backend = real.spec, real.info, "torch-cuda"

        def score(self, x, *, features=False):  # the pipeline's engine call (Engine.score)
            sizes.append(len(x))
            if len(x) > 3:
                raise error()
            return real.score(x)

    monkeypatch.setattr(T, "worker_engine", lambda *a: TightGPU())
    src = ProcessArguments(catalog=str(d / "cat.fits"), output=str(out), images=str(d / "stamps")).source
    meta = {"engine_sha256": read_engine_info(d / "engine.onnx").sha256}
    r = T.score_partition(
        plan,
        part,
        T.PartitionTask(output=str(out), source=src, engine_path=str(d / "engine.onnx"), batch_size=8, run_meta=meta),
    )
    got = pq.read_table(RunLayout(out).dataset_file(part)).to_pandas().set_index("input_row")
    ref = reference.set_index("input_row").loc[got.index]
    assert (got["status"] == ref["status"]).all() and not r.retry
    assert "inference_failed" not in set(got["status"])
    assert np.allclose(got["p_merger"], ref["p_merger"], equal_nan=True, atol=1e-6)
    assert max(sizes) > 3 and min(sizes) <= 3  # it failed big, then fitted in halves


# a worker death is reported at once (no rescheduling onto fresh workers first): keeps this quick
ONE_DEATH = dict(os.environ, DASK_DISTRIBUTED__SCHEDULER__ALLOWED_FAILURES="0")


def fault(name: str, argument: str) -> dict[str, str]:
    """The environment that injects one of pipeline/faults.py's faults into the run's tasks."""
    return environment(name, argument)


def test_worker_killed_for_memory_is_retried_smaller(field, reference, tmp_path):
    """Partition 2 really allocates past the worker's memory limit at batch size 8: the nanny kills
    the worker, the run retries that partition with a smaller batch, output identical."""
    d, _ = field
    out = tmp_path / "out"
    r = run_cli(
        *cli_args(d, out, "--workers", "1", "--memory-limit", "1.5GiB"),
        env={**ONE_DEATH, **fault("exhaust_memory", "2:8")},
    )
    assert r.returncode == 0, r.stderr
    assert "partition" in r.stderr and "retrying with batch size 1" in r.stderr
    assert_same_rows(out, reference)


def test_partition_that_always_runs_out_of_memory_is_flagged_then_rescored(field, reference, tmp_path):
    d, df = field
    out = tmp_path / "out"
    r = run_cli(
        *cli_args(d, out, "--workers", "1", "--memory-limit", "1.5GiB"),
        env={**ONE_DEATH, **fault("memory_error", "1:1")},
    )
    assert r.returncode == 0, r.stderr
    got = read_out(out)
    assert len(got) == len(df) and got["input_row"].is_unique  # never lost
    from mergerscan.pipeline.plan import Plan

    part = Plan.load(out / "_work" / "plan.json").partitions[1]
    flagged = got["status"] == "out_of_memory"
    assert (
        flagged.sum()
        == part.rows - (reference.set_index("input_row").loc[got.loc[flagged, "input_row"], "status"] != "ok").sum()
    )
    assert flagged.sum() > 0 and got.loc[flagged, "p_merger"].isna().all()
    assert "out_of_memory" in r.stdout  # the summary names it
    r = run_cli(*cli_args(d, out, "--workers", "1"))  # re-run, enough memory
    assert r.returncode == 0, r.stderr
    assert_same_rows(out, reference)


def test_task_run_twice_at_once_writes_identical_bytes(field, dask_client, tmp_path):
    """Dask may run a task twice (a worker presumed dead was not): both writes land, same bytes."""
    from mergerscan.pipeline import task as T

    d, _ = field
    out = tmp_path / "out"
    plan = _plan_only(d, out, dask_client)
    part = plan.partitions[0]
    src = ProcessArguments(catalog=str(d / "cat.fits"), output=str(out), images=str(d / "stamps")).source
    args = (
        plan,
        part,
        T.PartitionTask(
            output=str(out),
            source=src,
            engine_path=str(d / "engine.onnx"),
            batch_size=8,
            run_meta={"engine_sha256": "x"},
        ),
    )
    layout = RunLayout(out)
    T.score_partition(*args)
    first = layout.dataset_file(part).read_bytes()
    layout.work.marker(part.pid).unlink()
    ts = [threading.Thread(target=T.score_partition, args=args) for _ in range(2)]
    [t.start() for t in ts]
    [t.join() for t in ts]
    assert layout.dataset_file(part).read_bytes() == first
    assert not [f for f in layout.dataset_file(part).parent.iterdir() if f.name.startswith(".")]


# ---------------------------------------------------------------- a real SLURM cluster
class Slurm:
    def __init__(self, state: Path, env: dict):
        self.state, self.env = state, env

    def sbatch(self, *argv, cwd, env=None) -> str:
        r = subprocess.run(
            ["sbatch", "--parsable", *map(str, argv)],
            capture_output=True,
            text=True,
            env=dict(self.env, **(env or {})),
            cwd=cwd,
            timeout=60,
        )
        assert r.returncode == 0, r.stderr
        return r.stdout.strip().split(";")[0]

    def show(self, jid: str) -> str:
        return subprocess.run(["scontrol", "show", "job", jid], capture_output=True, text=True, env=self.env).stdout

    def states(self, jid: str) -> list[str]:
        return re.findall(r"JobState=(\w+)", self.show(jid))

    def wait(self, jid: str, timeout: float = 300) -> list[str]:
        """Wait until every task of job ``jid`` has ended; returns their final states."""
        deadline = time.time() + timeout
        while time.time() < deadline:
            st = self.states(jid)
            if st and not set(st) & {"PENDING", "RUNNING", "CONFIGURING", "COMPLETING", "SUSPENDED", "REQUEUED"}:
                return st
            time.sleep(1)
        subprocess.run(["scancel", jid], env=self.env)
        raise AssertionError(f"job {jid} did not end in {timeout} s: {self.states(jid)}")

    def scontrol(self, *argv):
        r = subprocess.run(["scontrol", *argv], capture_output=True, text=True, env=self.env)
        assert r.returncode == 0, r.stderr


@pytest.fixture(scope="session")
def slurm(tmp_path_factory):
    """A real single-node SLURM cluster (slurmctld + slurmd + munged) for this session."""
    if os.geteuid() != 0:
        pytest.skip("real-SLURM tests start slurmctld/slurmd/munged themselves and need root")
    missing = [
        t
        for t in ("slurmctld", "slurmd", "sbatch", "scontrol", "munged")
        if not shutil.which(t) and not Path("/usr/sbin", t).exists()
    ]
    if missing:
        pytest.skip(
            f"slurm-wlm/munge not installed ({', '.join(missing)} missing): "
            "apt-get install -y slurm-wlm munge (make system-deps does it as root)"
        )
    if not (SLURM_LOCAL / "start.sh").is_file():
        pytest.skip(f"needs {SLURM_LOCAL}/start.sh (../shared/tools/slurm-local)")
    _wait_daemons_gone()  # a previous session's stop.sh signals the daemons but does not wait
    state = tmp_path_factory.mktemp("slurm")
    r = subprocess.run(["bash", str(SLURM_LOCAL / "start.sh"), str(state)], capture_output=True, text=True, timeout=180)
    env = dict(os.environ, SLURM_CONF=str(state / "slurm.conf"))
    env.pop("SLURM_JOB_ID", None)
    if r.returncode != 0 or "idle" not in r.stdout:
        subprocess.run(["bash", str(SLURM_LOCAL / "stop.sh"), str(state)])
        pytest.fail(f"slurm-local did not start (another slurmctld on port 6817?):\n{r.stdout}\n{r.stderr}")
    yield Slurm(state, env)
    subprocess.run(["scancel", "--user", "root"], env=env, capture_output=True)
    time.sleep(2)
    subprocess.run(["bash", str(SLURM_LOCAL / "stop.sh"), str(state)], capture_output=True)
    _wait_daemons_gone()


def _wait_daemons_gone(timeout: float = 30) -> None:
    """Wait for exiting slurmctld/slurmd/munged: start.sh keeps a munged that is still shutting down
    (pgrep finds it) and then nothing answers on the munge socket."""
    deadline = time.time() + timeout
    while time.time() < deadline and any(
        subprocess.run(["pgrep", "-x", d], capture_output=True).returncode == 0
        for d in ("slurmctld", "slurmd", "munged")
    ):
        time.sleep(0.5)


def _jobs(tmp_path: Path, **directives) -> dict:
    """The slurm/ scripts rendered for this 2-core machine: this venv's Python, 1 CPU per task, and
    --overcommit for the single allocation (3 tasks: scheduler, client, one worker)."""
    base = {
        "cpus-per-task": 1,
        "mem-per-cpu": None,
        "mem": "4G",
        "time": "00:15:00",
        "output": str(tmp_path / "slurm-%x-%j.out"),
    }
    single = {"ntasks": 3, "overcommit": True}
    return S.render_all(
        tmp_path / "jobs",
        python=PY,
        directives=dict(base, **directives),
        per_template={
            "process-catalog.sbatch": single,
            "shard.sbatch": {"output": str(tmp_path / "slurm-shard-%A_%a.out")},
        },
    )


def _job_log(tmp_path: Path) -> str:
    return "\n".join(f"--- {p.name}\n{p.read_text()[-6000:]}" for p in sorted(tmp_path.glob("slurm-*.out")))


def _markers(out: Path) -> int:
    return len(list((out / "_work" / "scored").glob("*.json")))


def _n_partitions(out: Path) -> int:
    from mergerscan.pipeline.plan import Plan

    return len(Plan.load(out / "_work" / "plan.json").partitions)


@pytest.mark.slurm
def test_slurm_single_allocation(slurm, field, reference, tmp_path):
    d, _ = field
    jobs, out = _jobs(tmp_path), tmp_path / "out"
    jid = slurm.sbatch(jobs["process-catalog.sbatch"], *cli_args(d, out), cwd=tmp_path)
    assert slurm.wait(jid) == ["COMPLETED"], _job_log(tmp_path)
    log = (tmp_path / f"slurm-mergerscan-{jid}.out").read_text()
    assert "3 tasks (scheduler, client, 1 workers)" in log and "process-catalog: 240 rows" in log
    assert "Traceback" not in log, log
    assert_same_rows(out, reference)
    assert (out / "mergers.fits").is_file() and (out / "parquet" / "dataset" / "_metadata").is_file()
    assert not list((tmp_path / ".mergerscan-dask").glob("*.json")), "scheduler file left behind"


@pytest.mark.slurm
def test_slurm_array_finalize_and_one_shard_resubmitted(slurm, field, reference, tmp_path):
    """plan -> 3 shards (afterok) -> finalize (afterok); shard 1 is cancelled, so finalize waits
    (DependencyNeverSatisfied) until shard 1 alone is resubmitted and finalize pointed at it."""
    d, _ = field
    jobs, out = _jobs(tmp_path), tmp_path / "out"
    env = dict(slurm.env, MERGERSCAN_SBATCH="--hold")  # held: cancel shard 1 before it can run
    r = subprocess.run(
        ["bash", str(jobs["submit-array.sh"]), "3", *cli_args(d, out)],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=60,
    )
    assert r.returncode == 0, r.stderr
    ids = dict(kv.split("=") for kv in r.stdout.split())
    subprocess.run(["scancel", f"{ids['shards']}_1"], env=slurm.env, check=True)
    for j in (ids["plan"], ids["shards"], ids["finalize"]):
        slurm.scontrol("release", j)
    states = slurm.wait(ids["shards"])
    assert states.count("COMPLETED") == 2 and set(states) <= {"COMPLETED", "CANCELLED"}, _job_log(tmp_path)
    time.sleep(6)  # a scheduling pass: finalize must stay pending, its dependency can never be met
    assert slurm.states(ids["finalize"]) == ["PENDING"] and not (out / "mergers.fits").exists()
    assert "DependencyNeverSatisfied" in slurm.show(ids["finalize"])
    assert 0 < _markers(out) < _n_partitions(out)
    again = slurm.sbatch("--array=1", jobs["shard.sbatch"], 3, *cli_args(d, out), cwd=tmp_path)
    slurm.scontrol("update", f"JobId={ids['finalize']}", f"Dependency=afterok:{again}")
    assert slurm.wait(again) == ["COMPLETED"], _job_log(tmp_path)
    assert slurm.wait(ids["finalize"]) == ["COMPLETED"], _job_log(tmp_path)
    assert_same_rows(out, reference)
    assert (out / "mergers.fits").is_file() and (out / "summary.json").is_file()


def _wait_for_markers(out: Path, n: int, jid: str, slurm: Slurm, timeout=240):
    deadline = time.time() + timeout
    while time.time() < deadline and _markers(out) < n:
        if slurm.states(jid) not in (["PENDING"], ["RUNNING"], ["CONFIGURING"]):
            break
        time.sleep(0.1)


# every partition takes >= 0.4 s, so that the kill lands mid-run however fast the machine is
SLOW = fault("sleep", "score:-1:0.4")


@pytest.mark.slurm
def test_slurm_scancel_mid_run_then_resubmit(slurm, field, reference, tmp_path):
    d, _ = field
    jobs, out = _jobs(tmp_path), tmp_path / "out"
    argv = cli_args(d, out)
    jid = slurm.sbatch(jobs["process-catalog.sbatch"], *argv, cwd=tmp_path, env=SLOW)
    _wait_for_markers(out, 2, jid, slurm)
    subprocess.run(["scancel", jid], env=slurm.env, check=True)
    assert slurm.wait(jid) == ["CANCELLED"], _job_log(tmp_path)
    n_done = _markers(out)
    assert 0 < n_done < _n_partitions(out), "the cancel must land mid-run"
    assert not (out / "mergers.fits").exists()
    jid = slurm.sbatch(jobs["process-catalog.sbatch"], *argv, cwd=tmp_path)  # the same command again
    assert slurm.wait(jid) == ["COMPLETED"], _job_log(tmp_path)
    assert_same_rows(out, reference)


def _worker_process(jid: str):
    """The Dask worker process (the nanny's child) of job ``jid``'s worker task."""
    import psutil

    for p in psutil.process_iter(["pid", "cmdline", "environ"]):
        try:
            env = p.info["environ"] or {}
            cmd = " ".join(p.info["cmdline"] or [])
        except (psutil.Error, TypeError):
            continue
        if env.get("SLURM_JOB_ID") == jid and env.get("SLURM_PROCID") == "2" and "multiprocessing" in cmd:
            return p
    return None


@pytest.mark.slurm
def test_slurm_worker_killed_mid_run_is_survived(slurm, field, reference, tmp_path):
    d, _ = field
    jobs, out = _jobs(tmp_path), tmp_path / "out"
    jid = slurm.sbatch(jobs["process-catalog.sbatch"], *cli_args(d, out), cwd=tmp_path, env=SLOW)
    _wait_for_markers(out, 2, jid, slurm)
    w = _worker_process(jid)
    assert w is not None, "no worker process found"
    assert _markers(out) < _n_partitions(out), "the kill must land mid-run"
    os.kill(w.pid, signal.SIGKILL)
    assert slurm.wait(jid) == ["COMPLETED"], _job_log(tmp_path)  # the same job finishes
    assert_same_rows(out, reference)


@pytest.mark.slurm
def test_slurm_cluster_from_login_node(slurm, field, reference, tmp_path):
    """--cluster slurm: the workers are SLURM jobs started by dask-jobqueue's SLURMCluster."""
    pytest.importorskip("dask_jobqueue")
    d, _ = field
    out = tmp_path / "out"
    r = subprocess.run(
        [
            PY,
            "-m",
            "mergerscan.pipeline.cli",
            *cli_args(
                d,
                out,
                "--cluster",
                "slurm",
                "--workers",
                1,
                "--slurm-cores",
                1,
                "--slurm-memory",
                "2GB",
                "--slurm-walltime",
                "00:10:00",
            ),
        ],
        capture_output=True,
        text=True,
        env=slurm.env,
        cwd=tmp_path,
        timeout=400,
    )
    assert r.returncode == 0, r.stderr
    logs = list((out / "_work" / "slurm-logs").glob("mergerscan-worker-*.err"))
    assert logs, "no worker job ran"
    assert_same_rows(out, reference)
