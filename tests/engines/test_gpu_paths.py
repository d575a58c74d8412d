"""The GPU data path and the GPU defects of issue 13, checked on CPU with real components.

* uint8 stamps in: the front (resize, normalisation, dihedral views) in ONNX and in torch equals
  prepare_batch on real SDSS stamps (<= 1e-5), and the default engine scores the same through it;
* precisions: honoured or refused, fp32 is IEEE fp32 (TF32 off), tf32 is a named precision;
* int8 export is symmetric (every zero point 0: what TensorRT parses);
* TensorRT plans are built once per node under a file lock, by several processes at once;
* engines whose calls share state run one call at a time;
* CUDA out of memory is recognised as out of memory, sticky CUDA errors as sticky;
* GPU resources are integers and local workers get them (or the run refuses in one line).
"""

from __future__ import annotations

import multiprocessing as mp
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from conftest import lite0_engine
from mergerscan.cutouts.preprocess import PreprocessSpec, prepare_batch
from mergerscan.engines import available_backends, load_engine, parse_backend
from mergerscan.engines.base import Engine, dihedral_views

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def small_engine(tmp_path_factory):
    """EfficientNet-Lite0 at 64 px (integer ratio 256/64: the block-mean branch of the front)."""
    by_views = {"8": {"temperature": 1.0, "threshold": 0.5}}
    return lite0_engine(
        tmp_path_factory.mktemp("e") / "e.onnx", "gpu-paths-64", seed=0, by_views=by_views, imagenet=False
    )


# ---------------------------------------------------------------- the front = prepare_batch
@pytest.mark.parametrize("size", [224, 160, 161, 64, 256])  # resample by convolution (224, 160) or
# by the dense matrix (161: no period), block mean, identity
@pytest.mark.parametrize("views", [1, 8])
def test_front_equals_prepare_batch_on_real_stamps(real_stamps, size, views):
    import onnxruntime as ort
    import torch

    from mergerscan.engines.front import STAMPS, front_only, torch_front

    spec = PreprocessSpec(input_size=size)
    ref = dihedral_views(prepare_batch(real_stamps, spec), views)
    sess = ort.InferenceSession(front_only(spec, views).SerializeToString(), providers=["CPUExecutionProvider"])
    got = sess.run(None, {STAMPS: real_stamps})[0]
    assert got.shape == ref.shape and np.abs(got - ref).max() <= 1e-5
    with torch.no_grad():
        got_t = torch_front(spec, views)(torch.from_numpy(real_stamps)).numpy()
    assert got_t.shape == ref.shape and np.abs(got_t - ref).max() <= 1e-5


def test_resample_as_convolution_is_the_matrix():
    """Every input size the convolution form takes reproduces prepare_batch's matrix; sizes without
    a period fall back to the matrix product (None)."""
    from mergerscan.cutouts.preprocess import resample_matrix
    from mergerscan.engines.front import _periodic_resample

    taken = 0
    for size in range(64, 256):
        band = _periodic_resample(256, size)
        if band is None:
            continue
        taken += 1
        ker, pad_lo, pad_hi, stride, edge = band
        padded = np.pad(np.eye(256), ((0, 0), (pad_lo, pad_hi)))  # each input pixel alone
        n_groups = (padded.shape[1] - ker.shape[1]) // stride + 1
        out = np.stack([padded[:, g * stride : g * stride + ker.shape[1]] @ ker.T for g in range(n_groups)], axis=1)
        m = out.reshape(256, size).T * edge[:, None]
        assert np.abs(m - resample_matrix(256, size)).max() < 1e-6, size
    assert taken == len(range(64, 256, 2))  # every even size; an odd one shares no period with 256
    assert _periodic_resample(256, 161) is None


def test_default_engine_scores_the_same_through_the_front(real_stamps):
    """The packaged engine at 4 views (whatever its card's default count) on uint8 stamps: one
    graph call per chunk (views in the graph, not 4 requests), the same scores as preparing on
    the host."""
    eng = load_engine(None, threads=2, views=4)
    assert eng.info.views == 4
    calls, plain = [], eng._logits
    eng._logits = lambda x: (calls.append(len(x)), plain(x))[1]
    p = eng.predict(real_stamps[:8])
    assert calls == []  # no prepared-batch calls at all
    host = eng.calibrate(Engine._stamp_logits(eng, real_stamps[:8]))  # prepare_batch + views + logits
    assert len(calls) == 4  # the old path: one call per view
    assert np.abs(p - host).max() <= 1e-5


def test_stamps_must_match_the_engine(small_engine):
    eng = load_engine(small_engine)
    with pytest.raises(ValueError, match=r"\(N, 256, 256, 3\)"):
        eng.predict(np.zeros((2, 128, 128, 3), np.uint8))


# ---------------------------------------------------------------- precisions
def test_precision_suffixes_honoured_or_refused(small_engine, real_stamps, tmp_path):
    from mergerscan.pipeline.arguments import ArgumentError, ProcessArguments

    ref = load_engine(small_engine, threads=2).predict(real_stamps)
    f16 = load_engine(small_engine, backend="onnxruntime:fp16", threads=2)
    assert f16.precision == "fp16"
    p16 = f16.predict(real_stamps)
    d = np.abs(p16.astype(np.float64) - ref)
    assert 0 < d.max() <= 1e-2, d.max()  # really fp16: close, not identical
    for bad in ("onnxruntime:bf16", "onnxruntime:tf32", "torch:tf32", "tensorrt:bf16"):
        with pytest.raises(ValueError, match="runs precision"):
            parse_backend(bad)
    with pytest.raises(ValueError, match="int8 needs a quantised"):
        load_engine(small_engine, backend="onnxruntime:int8")
    base = dict(catalog=str(small_engine), output=str(tmp_path / "o"), images=str(tmp_path))
    with pytest.raises(ArgumentError, match="onnxruntime runs precision fp32, fp16, int8"):
        ProcessArguments(**base, backend="onnxruntime:bf16")


def test_fp32_means_ieee_fp32_and_tf32_is_named():
    import torch

    from mergerscan.engines.onnxruntime import cuda_provider_options
    from mergerscan.engines.tensorrt import builder_flags
    from mergerscan.engines.torch import set_tf32, tf32_enabled

    assert cuda_provider_options("fp32") == {"use_tf32": "0"}  # ORT's CUDA EP defaults to TF32
    assert cuda_provider_options("fp16") == {"use_tf32": "0"}
    assert cuda_provider_options("tf32") == {"use_tf32": "1"}
    assert builder_flags("fp32") == {"TF32": False} and builder_flags("fp16") == {"TF32": False}
    assert builder_flags("tf32") == {"TF32": True}
    before = tf32_enabled()
    try:
        set_tf32(True)
        assert tf32_enabled() == (True, True)
        set_tf32(False)
        assert tf32_enabled() == (False, False)
        if hasattr(torch.backends.cuda.matmul, "fp32_precision"):  # the new API agrees
            assert torch.backends.cuda.matmul.fp32_precision == "ieee"
        assert torch._C._get_cudnn_allow_tf32() is False  # what torch.onnx.export reads: no error
    finally:
        set_tf32(before[0])
    assert parse_backend("torch-cuda:tf32") == ("torch-cuda", {"precision": "tf32"})
    assert parse_backend("onnxruntime-cuda:tf32")[1] == {"precision": "tf32"}


def test_torch_cpu_refuses_tf32(small_engine):
    with pytest.raises(ValueError, match=r"precision 'tf32' is not one it runs .*; tf32 runs on .*torch-cuda"):
        load_engine(small_engine, backend="torch", precision="tf32")


# ---------------------------------------------------------------- int8 for TensorRT
def test_int8_export_is_symmetric(small_engine, real_stamps, tmp_path):
    from mergerscan.training.export import quantize_int8, zero_points

    calib = prepare_batch(real_stamps[:16], PreprocessSpec(input_size=64))
    q = quantize_int8(small_engine, calib, tmp_path / "q.onnx")
    zps = zero_points(q)
    assert len(zps) > 50  # every conv has its Q/DQ pair
    assert all(np.all(z == 0) and z.dtype == np.int8 for z in zps.values()), {
        k: (z.dtype, z.ravel()[:3]) for k, z in zps.items() if not np.all(z == 0) or z.dtype != np.int8
    }
    eng = load_engine(q, threads=2)
    assert eng.precision == "int8" and eng.info.card.quantization == "symmetric-s8s8-qdq"
    ref = load_engine(small_engine, threads=2).predict(real_stamps)
    assert np.abs(eng.predict(real_stamps) - ref).mean() < 0.05
    with pytest.raises(ValueError, match="int8"):
        load_engine(q, backend="onnxruntime:fp32")


# ---------------------------------------------------------------- TensorRT: one build per node
def _build_in_process(plan, log, go):
    from mergerscan.engines.tensorrt import build_once

    go.wait()

    def build():
        with open(log, "a") as f:
            f.write("built\n")
        time.sleep(0.5)  # a build takes time: the others must wait, not build too
        return b"PLAN-" + b"x" * 1000

    return build_once(plan, build, timeout_s=60)


def _worker(plan, log, go, q):
    q.put(_build_in_process(plan, log, go))


def test_trt_plan_built_once_by_concurrent_processes(tmp_path):
    ctx = mp.get_context("spawn")
    plan, log = tmp_path / "cache" / "gpu-sm90" / "k.engine", tmp_path / "builds.log"
    go, q = ctx.Event(), ctx.Queue()
    procs = [ctx.Process(target=_worker, args=(plan, log, go, q)) for _ in range(4)]
    for p in procs:
        p.start()
    go.set()
    got = [q.get(timeout=120) for _ in procs]
    for p in procs:
        p.join(timeout=60)
    assert log.read_text().count("built") == 1
    assert all(g == b"PLAN-" + b"x" * 1000 for g in got) and plan.read_bytes() == got[0]
    assert not [f for f in plan.parent.iterdir() if f.name.endswith(".tmp")]  # unique temps, all gone


def test_trt_fp16_temporaries_are_unique(small_engine, tmp_path):
    from mergerscan.engines import tensorrt as trtb

    out = tmp_path / "x.fp16.onnx"
    ts = [threading.Thread(target=trtb.fp16_onnx, args=(small_engine, out)) for _ in range(3)]
    [t.start() for t in ts]
    [t.join() for t in ts]
    assert out.is_file() and [f.name for f in tmp_path.iterdir()] == [out.name]
    assert load_engine(out).info.card.precision == "fp16"


# ---------------------------------------------------------------- shared execution state
def test_serial_engines_run_one_call_at_a_time(small_engine, real_stamps):
    """TensorRT (one context/stream) is serial; any serial engine gets one call at a time even
    when --no-shared-batch lets every partition thread call it directly."""
    from mergerscan.engines.tensorrt import TensorRTEngine

    assert TensorRTEngine.serial is True
    eng = load_engine(small_engine, threads=1)
    inside, peak, lock, raw = [0], [0], threading.Lock(), eng._stamp_logits

    def tracked(x):
        with lock:
            inside[0] += 1
            peak[0] = max(peak[0], inside[0])
        time.sleep(0.02)
        try:
            return raw(x)
        finally:
            with lock:
                inside[0] -= 1

    eng._stamp_logits = tracked
    eng.stamp_batch = 2

    def run_threads():
        ts = [threading.Thread(target=eng.predict, args=(real_stamps[k::4],)) for k in range(4)]
        [t.start() for t in ts]
        [t.join() for t in ts]

    run_threads()
    assert peak[0] > 1  # ONNX Runtime sessions may run concurrently
    eng.serial, peak[0] = True, 0
    run_threads()
    assert peak[0] == 1


# ---------------------------------------------------------------- CUDA errors
def test_cuda_out_of_memory_is_out_of_memory_and_sticky_errors_are_sticky():
    import torch
    from onnxruntime.capi.onnxruntime_pybind11_state import RuntimeException

    from mergerscan.engines.errors import is_out_of_memory, is_sticky

    oom = [
        MemoryError(),
        torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB"),
        RuntimeError("CUDA out of memory. Tried to allocate 512.00 MiB (GPU 0; 79.1 GiB total capacity)"),
        RuntimeException(
            "[ONNXRuntimeError] : 6 : RUNTIME_EXCEPTION : Non-zero status code returned while "
            "running Conv node. Status Message: onnxruntime::BFCArena::AllocateRawInternal "
            "Failed to allocate memory for requested buffer of size 1073741824"
        ),
        RuntimeError("CUDA error: out of memory"),
        RuntimeError("CUBLAS_STATUS_ALLOC_FAILED when calling cublasCreate"),
    ]
    sticky = [
        RuntimeError("CUDA error: an illegal memory access was encountered"),
        RuntimeError("CUDA error: device-side assert triggered"),
        RuntimeError("CUDA error: unspecified launch failure"),
    ]
    other = [ValueError("bad shape"), RuntimeError("TensorRT execute_async_v3 failed")]
    assert all(is_out_of_memory(e) for e in oom) and not any(is_sticky(e) for e in oom)
    assert all(is_sticky(e) for e in sticky) and not any(is_out_of_memory(e) for e in sticky)
    assert not any(is_out_of_memory(e) or is_sticky(e) for e in other)


def test_sticky_error_outside_a_worker_raises(small_engine):
    from mergerscan.engines.errors import StickyDeviceError
    from mergerscan.pipeline.task import device_failure

    with pytest.raises(StickyDeviceError, match="must be replaced"):
        device_failure(load_engine(small_engine), RuntimeError("CUDA error: an illegal memory access"))


# ---------------------------------------------------------------- GPU resources
def _hold(key):
    """A task that reports it started, then waits until the test lets every task go."""
    from distributed import Event, Queue

    Queue("started").put(key)
    return Event("go").wait(timeout=60)


def test_integer_gpu_resources_run_every_thread(tmp_path):
    """12 threads on a local --gpus 1 worker: 12 partitions run at once (1/12 units lost one)."""
    from distributed import Event, Queue

    from mergerscan.pipeline.cluster import dask_client
    from mergerscan.pipeline.slurm import GPU_TASK_RESOURCES, gpu_worker_resources

    assert gpu_worker_resources(12, 1) == {"GPU": 12} and gpu_worker_resources(12, 0) == {}
    with dask_client(workers=1, threads_per_worker=12, memory_limit="2GiB", gpus=1) as client:
        (w,) = client.scheduler_info()["workers"].values()
        assert w["resources"] == {"GPU": 12}
        futs = [client.submit(_hold, k, resources=GPU_TASK_RESOURCES, pure=False) for k in range(12)]
        started = Queue("started", client=client)
        try:
            got = {started.get(timeout=60) for _ in range(12)}  # all 12 at once, or a timeout
        finally:
            Event("go", client=client).set()
        assert got == set(range(12)) and all(client.gather(futs))


def test_gpu_run_refuses_workers_without_the_resource(dask_client, tmp_path):
    from types import SimpleNamespace

    from mergerscan.pipeline.arguments import ArgumentError
    from mergerscan.pipeline.cluster import check_gpu_workers

    with pytest.raises(ArgumentError, match="advertises the Dask resource GPU"):
        check_gpu_workers(dask_client, SimpleNamespace(cluster="local"))


def test_local_gpus_without_a_gpu_refuses_at_once(tmp_path):
    if available_backends()["torch-cuda"] is None:
        pytest.skip("torch-cuda can run here")
    import pandas as pd

    cat = tmp_path / "cat.csv"
    pd.DataFrame({"objid": [1, 2], "ra": [10.0, 10.1], "dec": [0.0, 0.1]}).to_csv(cat, index=False)
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "mergerscan.pipeline.cli",
            str(cat),
            "--images",
            str(tmp_path),
            "-o",
            str(tmp_path / "out"),
            "--gpus",
            "1",
            "--backend",
            "torch-cuda",
            "--no-report",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    lines = [line for line in r.stderr.splitlines() if line.strip()]
    assert r.returncode == 2 and len(lines) == 1, r.stderr
    assert "--gpus 1 with local workers" in lines[0] and "cannot run on this machine" in lines[0]
    assert not (tmp_path / "out" / "parquet").exists()
