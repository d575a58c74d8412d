"""Engines: one interface, every backend that can run here checked against ONNX Runtime CPU.

The test engine is a small EfficientNet-Lite0 (64 px input) exported here, so nothing depends on
the packaged model.  ImageNet weights are used when installed (realistic activations); the last
layer is scaled so the logits spread over a few units and probability tolerances mean something.
Backends that cannot run here are skipped with the reason from ``available_backends()``.

Tolerances on probabilities over 16 real SDSS stamps, (max |dp|, mean |dp|):
  fp32 (torch CPU/CUDA, ORT CUDA)       (1e-4, 1e-5)  measured here (torch CPU): 1.6e-6, 7.7e-7
  bf16 (torch autocast)                 (0.1, 0.03)   8-bit mantissa; measured 0.042, 0.016 (the
                                        trained default engine: 0.061, 0.007 over 128 stamps)
  fp16 (ORT-converted graph, TensorRT)  (1e-2, 2e-3)  measured (graph in ORT CPU) 1.9e-3, 8.6e-4;
                                        default engine 4.8e-3 max over 128 stamps
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from conftest import lite0_engine
from mergerscan.cutouts.preprocess import prepare_batch
from mergerscan.engines import BackendUnavailable, available_backends, load_engine, parse_backend
from mergerscan.engines import tensorrt as trtb

TOL = {"fp32": (1e-4, 1e-5), "bf16": (0.1, 0.03), "fp16": (1e-2, 2e-3)}


def _close(p, ref, precision):
    d = np.abs(np.asarray(p, np.float64) - ref)
    mx, mean = TOL[precision]
    assert d.max() <= mx and d.mean() <= mean, f"{precision}: max {d.max():.2e}, mean {d.mean():.2e}"


def _sigmoid(z):
    return 1.0 / (1.0 + np.exp(-np.asarray(z, np.float64)))


def _with_card(src, dst, **changes):
    """Copy an engine file with card entries changed (None deletes)."""
    from mergerscan.engines.engine_file import read_card, write_metadata

    card = read_card(src)
    for k, v in changes.items():
        card.pop(k, None) if v is None else card.__setitem__(k, v)
    return write_metadata(src, dst, card=card)


@pytest.fixture(scope="session")
def engine_path(tmp_path_factory):
    return lite0_engine(tmp_path_factory.mktemp("engine") / "lite0.onnx", "test-lite0-64", seed=0)


@pytest.fixture(scope="session")
def stamps(real_stamps):
    return real_stamps[:16]  # the first 16 of conftest's shared stamps


@pytest.fixture(scope="session")
def reference(engine_path, stamps):
    eng = load_engine(engine_path, threads=2)
    return eng, eng.predict(stamps)


# ----------------------------------------------------------------- registry
def test_available_backends_reports_every_backend():
    from mergerscan.engines.registry import backend_names

    av = available_backends()
    assert set(av) == set(backend_names())  # what is registered now: other test modules add toys
    assert {"onnxruntime", "onnxruntime-cuda", "torch", "torch-cuda", "tensorrt"} <= set(av)
    assert av["onnxruntime"] is None
    assert all(v is None or (isinstance(v, str) and v) for v in av.values())


def test_backend_names():
    assert parse_backend("torch-cuda:fp16") == ("torch-cuda", {"precision": "fp16"})
    assert parse_backend("onnxruntime") == ("onnxruntime", {})
    with pytest.raises(ValueError, match="unknown backend"):
        parse_backend("tflite")


@pytest.mark.parametrize("backend", ["onnxruntime-cuda", "torch-cuda", "tensorrt"])
def test_unavailable_backend_fails_clearly(engine_path, backend):
    why = available_backends()[backend]
    if why is None:
        pytest.skip(f"{backend} is available here")
    with pytest.raises(BackendUnavailable, match=backend):
        load_engine(engine_path, backend=backend)


# ----------------------------------------------------------------- interface
def test_predict_shape_range_and_empty(reference, stamps):
    eng, p = reference
    assert p.shape == (len(stamps),) and p.dtype == np.float32
    assert np.all((p >= 0) & (p <= 1)) and p.std() > 0.05  # the scaled head spreads scores
    assert eng.predict(stamps[:0]).shape == (0,)
    assert eng.logits(np.zeros((0, 3, 64, 64), np.float32)).shape == (0,)


def test_temperature_applied(engine_path, stamps, reference):
    eng = load_engine(engine_path, threads=2)
    z = eng.logits(prepare_batch(stamps, eng.spec))
    eng.info = replace(eng.info, card=replace(eng.info.card, temperature=2.0))
    np.testing.assert_allclose(eng.predict(stamps), _sigmoid(z / 2.0), atol=1e-6)


def test_test_time_views(engine_path, stamps, tmp_path):
    """views=N: mean logit over N dihedral views of the prepared batch, with the temperature and
    threshold the card holds for N views; a count the card has no calibration for is refused."""
    from mergerscan.engines.base import dihedral_views

    path = _with_card(
        engine_path,
        tmp_path / "tta.onnx",
        views=4,
        temperature=1.3,
        threshold=0.6,
        by_views={"1": {"temperature": 1.0, "threshold": 0.5}, "4": {"temperature": 1.3, "threshold": 0.6}},
    )
    eng = load_engine(path, threads=2)
    assert eng.info.views == 4 and eng.info.threshold == 0.6
    x = prepare_batch(stamps, eng.spec)
    z = np.stack(
        [
            eng.logits(np.ascontiguousarray(v))
            for v in (x, x[..., ::-1], np.rot90(x, 2, axes=(2, 3)), np.rot90(x, 2, axes=(2, 3))[..., ::-1])
        ]
    )
    np.testing.assert_allclose(eng.predict(stamps), _sigmoid(z.mean(0) / 1.3), atol=1e-5)
    assert np.abs(z[0] - z[1]).max() > 1e-3  # the views really differ
    np.testing.assert_allclose(dihedral_views(x, 4).reshape(4, *x.shape)[2], np.rot90(x, 2, axes=(2, 3)))
    one = load_engine(path, threads=2, views=1)
    assert one.info.threshold == 0.5
    np.testing.assert_allclose(one.predict(stamps), _sigmoid(z[0]), atol=1e-5)
    with pytest.raises(ValueError, match="not 8"):
        load_engine(path, views=8)


def test_max_batch_chunking(engine_path, stamps, reference):
    """Stamps go to the backend in chunks of stamp_batch; prepared batches in chunks of max_batch."""
    eng = load_engine(engine_path, threads=2)
    sizes, inner = [], eng._stamp_logits
    eng._stamp_logits = lambda x: (sizes.append(len(x)), inner(x))[1]
    eng.stamp_batch = 5
    np.testing.assert_allclose(eng.predict(stamps), reference[1], atol=1e-6)
    assert sizes == [5, 5, 5, 1]
    sizes, raw = [], eng._logits
    eng._logits = lambda x: (sizes.append(len(x)), raw(x))[1]
    eng.max_batch = 6
    assert eng.logits(prepare_batch(stamps, eng.spec)).shape == (16,) and sizes == [6, 6, 4]


# ----------------------------------------------------------------- batches shared across partitions
def test_shared_batch_engine_merges_concurrent_batches(engine_path, stamps, reference):
    """Threads (the partitions a GPU worker runs at once) get their own rows' scores back, from
    fewer, larger engine calls than they made."""
    import threading

    from mergerscan.engines.batching import SharedBatchEngine

    inner = load_engine(engine_path, threads=1)
    inner.stamp_batch = 64
    sizes, raw = [], inner._stamp_logits
    inner._stamp_logits = lambda x: (sizes.append(len(x)), raw(x))[1]
    eng = SharedBatchEngine(inner, batch=64, max_wait_s=0.05)
    slices = [slice(0, 3), slice(3, 4), slice(4, 9), slice(9, 16)] * 2
    got, barrier = {}, threading.Barrier(len(slices))

    def work(k, sl):
        barrier.wait()
        got[k] = eng.predict(stamps[sl])

    ts = [threading.Thread(target=work, args=(k, sl)) for k, sl in enumerate(slices)]
    [t.start() for t in ts]
    [t.join() for t in ts]
    eng.close()
    for k, sl in enumerate(slices):
        np.testing.assert_allclose(got[k], reference[1][sl], atol=1e-5)
    assert eng.requests == len(slices) and sum(sizes) == 32
    assert eng.calls < len(slices) and max(sizes) > 7, sizes


def test_shared_batch_engine_isolates_a_failing_merged_batch(engine_path, stamps, reference):
    """A merged call that fails (here: out of memory above 8 rows) is re-run request by request, so
    each caller gets its own result or its own error - never another partition's."""
    import threading

    from mergerscan.engines.batching import SharedBatchEngine

    inner = load_engine(engine_path, threads=1)
    raw = inner._stamp_logits

    def limited(x):
        if len(x) > 8:
            raise MemoryError(f"{len(x)} rows")
        return raw(x)

    inner._stamp_logits = limited
    inner.stamp_batch = 1 << 30
    eng = SharedBatchEngine(inner, batch=64, max_wait_s=0.05)
    slices = [slice(0, 6), slice(6, 12), slice(0, 16)]
    got, barrier = {}, threading.Barrier(3)

    def work(k, sl):
        barrier.wait()
        try:
            got[k] = eng.predict(stamps[sl])
        except MemoryError as exc:
            got[k] = exc

    ts = [threading.Thread(target=work, args=(k, sl)) for k, sl in enumerate(slices)]
    [t.start() for t in ts]
    [t.join() for t in ts]
    eng.close()
    np.testing.assert_allclose(got[0], reference[1][:6], atol=1e-5)
    np.testing.assert_allclose(got[1], reference[1][6:12], atol=1e-5)
    assert isinstance(got[2], MemoryError)


# ----------------------------------------------------------------- parity vs ORT CPU
PARITY = [
    ("torch", "fp32"),
    ("torch", "bf16"),
    ("onnxruntime-cuda", "fp32"),
    ("torch-cuda", "fp32"),
    ("torch-cuda", "bf16"),
    ("tensorrt", "fp16"),
    ("tensorrt", "fp32"),
]


@pytest.mark.parametrize("backend,precision", PARITY, ids=[f"{b}-{p}" for b, p in PARITY])
def test_parity_with_onnxruntime_cpu(engine_path, stamps, reference, backend, precision):
    if why := available_backends()[backend]:
        pytest.skip(f"{backend}: {why}")
    opts = {} if backend == "onnxruntime-cuda" else {"precision": precision}
    if backend == "torch-cuda":
        opts["compile"] = False  # eager + CUDA graphs here; compiled runs in the benchmark
    eng = load_engine(engine_path, backend=backend, threads=2, **opts)
    p = eng.predict(stamps)
    assert p.shape == reference[1].shape
    _close(p, reference[1], precision)


def test_torch_compile_parity(engine_path, stamps, reference):
    from mergerscan.engines.torch import compile_unavailable_reason

    if why := compile_unavailable_reason():
        pytest.skip(why)
    eng = load_engine(engine_path, backend="torch", threads=2, compile=True)
    p = eng.predict(stamps[:4])
    _close(p, reference[1][:4], "fp32")


def test_torch_rebuild_folds_batchnorm_like_the_exporter(engine_path):
    from torch import nn

    from mergerscan.engines.torch import rebuild_model

    net, info = rebuild_model(engine_path)
    assert info.card.arch == "efficientnet_lite0"
    assert not any(isinstance(m, nn.BatchNorm2d) for m in net.modules())  # all conv->BN folded


def test_torch_rebuild_refuses_what_it_cannot_rebuild(engine_path, tmp_path):
    from mergerscan.engines.torch import rebuild_model

    with pytest.raises(ValueError, match="arch"):
        rebuild_model(_with_card(engine_path, tmp_path / "noarch.onnx", arch=None, model=None))
    with pytest.raises(ValueError, match="arch 'resnet9'"):
        rebuild_model(_with_card(engine_path, tmp_path / "badarch.onnx", model={"arch": "resnet9"}))
    with pytest.raises(ValueError, match="int8"):
        rebuild_model(_with_card(engine_path, tmp_path / "q.onnx", precision="int8"))


# ----------------------------------------------------------------- TensorRT parts that run without it
def test_trt_profile_shapes():
    """The plan's input is uint8 stamps (N, H, H, 3): the front is inside it."""
    assert trtb.profile_shapes(256, 128) == {
        "min": (1, 256, 256, 3),
        "opt": (128, 256, 256, 3),
        "max": (128, 256, 256, 3),
    }
    assert trtb.profile_shapes(256, 512, opt_batch=128)["opt"] == (128, 256, 256, 3)
    with pytest.raises(ValueError):
        trtb.profile_shapes(64, 16, opt_batch=32)


def test_trt_cache_key_and_path():
    prof = trtb.profile_shapes(64, 256)
    base = dict(
        onnx_sha256="a" * 64,
        gpu_name="NVIDIA H100 80GB HBM3",
        compute_capability="9.0",
        trt_version="10.13.0",
        precision="fp16",
        profile=prof,
    )
    k = trtb.cache_key(**base)
    assert k == trtb.cache_key(**base) and len(k) == 24
    for change in (
        {"onnx_sha256": "b" * 64},
        {"gpu_name": "NVIDIA H200"},
        {"compute_capability": "8.0"},
        {"trt_version": "11.0.0"},
        {"precision": "fp32"},
        {"profile": trtb.profile_shapes(64, 512)},
        {"views": 8},
    ):
        assert trtb.cache_key(**(base | change)) != k, change
    p = trtb.engine_cache_path("/c", "NVIDIA H100 80GB HBM3", "9.0", "10.13.0", k)
    assert str(p) == f"/c/nvidia-h100-80gb-hbm3-sm90/trt-10.13.0/{k}.engine"
    assert trtb.timing_cache_path("/c", "NVIDIA H100 80GB HBM3", "9.0", "10.13.0").name == "timing.cache"


def test_trt_fp16_graph_parity_in_onnxruntime(engine_path, stamps, reference, tmp_path):
    """The fp16 graph TensorRT is built from, run in ORT CPU: fp32 I/O, metadata kept, close scores."""
    import onnx
    from onnx import TensorProto

    f16 = trtb.fp16_onnx(engine_path, tmp_path / "lite0.fp16.onnx")
    m = onnx.load(str(f16))
    assert m.graph.input[0].type.tensor_type.elem_type == TensorProto.FLOAT
    assert m.graph.output[0].type.tensor_type.elem_type == TensorProto.FLOAT
    assert any(i.data_type == TensorProto.FLOAT16 for i in m.graph.initializer)
    eng = load_engine(f16, threads=2)
    assert eng.info.card.precision == "fp16" and eng.spec == reference[0].spec
    _close(eng.predict(stamps), reference[1], "fp16")


# ----------------------------------------------------------------- backend registry (issue 12)
from dataclasses import dataclass  # noqa: E402

from mergerscan.engines import Engine, read_engine_info, register_backend, unregister_backend  # noqa: E402


@dataclass(frozen=True)
class ToyOptions:
    precision: str | None = None
    gain: float = 1.0


class ToyEngine(Engine):
    """A real, tiny backend defined in a test file: logit = gain * mean of the prepared batch."""

    backend = "toy"

    def __init__(self, path, options: ToyOptions, threads: int = 1, views: int | None = None):
        super().__init__(read_engine_info(path))
        self.gain = options.gain

    def _logits(self, x):
        return self.gain * x.reshape(len(x), -1).mean(1)


@pytest.fixture
def toy_backend():
    register_backend("toy", options=ToyOptions, precisions=("fp32",))(ToyEngine)
    yield "toy"
    unregister_backend("toy")


def test_backend_from_a_test_file_registers_and_loads_by_name(toy_backend, engine_path, stamps):
    eng = load_engine(engine_path, backend="toy", gain=3.0)
    x = prepare_batch(stamps, eng.spec)
    np.testing.assert_allclose(eng.predict(stamps), _sigmoid(3.0 * x.reshape(len(x), -1).mean(1)), atol=1e-6)
    assert "toy" in available_backends() and available_backends()["toy"] is None
    from mergerscan import engines

    assert "toy" in engines.BACKENDS and engines.DEFAULT_PRECISION["toy"] == "fp32"
    with pytest.raises(ValueError, match="toy runs precision fp32, not 'fp16'"):
        parse_backend("toy:fp16")


def test_misspelled_backend_option_is_one_line_naming_it(toy_backend, engine_path):
    with pytest.raises(ValueError) as exc:
        load_engine(engine_path, backend="toy", gian=2.0)
    msg = str(exc.value)
    assert "\n" not in msg and "'gian'" in msg and "toy" in msg and "did you mean 'gain'" in msg
    assert "valid options: precision, gain" in msg
    with pytest.raises(ValueError, match=r"unknown option 'stamp_bach'.*did you mean 'stamp_batch'"):
        load_engine(engine_path, stamp_bach=4)
    with pytest.raises(ValueError, match="did you mean 'onnxruntime'"):
        parse_backend("onnxruntim")


def test_registering_another_factory_under_a_taken_name_is_refused(toy_backend):
    with pytest.raises(ValueError, match="already registered"):
        register_backend("toy", options=ToyOptions)(lambda path, options, threads=1, views=None: None)
    register_backend("toy", options=ToyOptions, precisions=("fp32",))(ToyEngine)  # same factory: fine


def test_plugin_backend_reaches_another_process_through_the_environment(engine_path, tmp_path):
    """Dask workers are other processes: $MERGERSCAN_BACKENDS names modules they import to find
    backends that are not built in (the mechanism an end-to-end run with a toy backend uses)."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    (tmp_path / "toy_plugin.py").write_text(
        "from dataclasses import dataclass\n"
        "from mergerscan.engines import register_backend\n"
        "from mergerscan.engines.onnxruntime import OnnxRuntimeEngine\n"
        "@dataclass(frozen=True)\nclass Opts:\n    precision: str | None = None\n"
        "@register_backend('toy-plugin', options=Opts)\n"
        "def make(path, options, threads=1, views=None):\n"
        "    return OnnxRuntimeEngine(path, threads=threads)\n"
    )
    src = Path(__file__).resolve().parents[2] / "src"
    env = os.environ | {
        "MERGERSCAN_BACKENDS": "toy_plugin",
        "PYTHONPATH": os.pathsep.join([str(tmp_path), str(src), os.environ.get("PYTHONPATH", "")]),
    }
    code = (
        "import sys; from mergerscan.engines import load_engine, BACKENDS; "
        f"e = load_engine({str(engine_path)!r}, backend='toy-plugin'); print(e.info.name, 'toy-plugin' in BACKENDS)"
    )
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["test-lite0-64", "True"]
    env["MERGERSCAN_BACKENDS"] = "no_such_backend_module"
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert (
        out.returncode != 0
        and "$MERGERSCAN_BACKENDS: cannot import backend module 'no_such_backend_module'" in out.stderr
    )


def test_onnxruntime_fp16_runs_an_fp16_graph(engine_path, stamps, reference):
    """Issue 12 bug: ``--backend onnxruntime:fp16`` was accepted and recorded as fp16 in the run
    fingerprint, but the fp32 graph ran.  The session's graph must hold fp16 weights, and its
    scores must differ from fp32 by a measurable amount within the fp16 tolerance."""
    from onnx import TensorProto

    from mergerscan.engines import backend_precision

    eng = load_engine(engine_path, backend="onnxruntime:fp16", threads=2)
    assert eng.precision == "fp16" and backend_precision("onnxruntime:fp16") == "fp16"
    for views in (None, eng.info.views):  # the prepared-batch graph and the stamps graph
        inits = eng.session_model(views).graph.initializer
        assert sum(i.data_type == TensorProto.FLOAT16 for i in inits) > len(inits) // 2
    p = eng.predict(stamps)
    d = np.abs(p.astype(np.float64) - reference[1])
    assert d.max() > 1e-6, "onnxruntime:fp16 gave fp32 scores: the fp32 graph ran"
    _close(p, reference[1], "fp16")


TOY_MODULE = """
from dataclasses import dataclass
from mergerscan.engines import register_backend
from mergerscan.engines.onnxruntime import OnnxRuntimeEngine

@dataclass(frozen=True)
class Opts:
    precision: str | None = None

@register_backend("{name}", options=Opts)
def make(path, options, threads=1, views=None):
    return OnnxRuntimeEngine(path, threads=threads)
"""


def test_backend_at_module_reference_loads_in_a_fresh_process(engine_path, tmp_path, stamps, reference):
    """``NAME@MODULE``: the backend string names the module that registers it, so any process
    that gets the string (a Dask worker) can load the backend; a bad module is one line."""
    import subprocess
    import sys
    from pathlib import Path

    (tmp_path / "toy_at_mod.py").write_text(TOY_MODULE.format(name="toy-at"))
    np.save(tmp_path / "stamps.npy", stamps)
    src = Path(__file__).resolve().parents[2] / "src"
    code = (
        "import sys, numpy as np; from mergerscan.engines import load_engine; "
        f"e = load_engine({str(engine_path)!r}, backend=sys.argv[1]); "
        f"np.save({str(tmp_path / 'p.npy')!r}, e.predict(np.load({str(tmp_path / 'stamps.npy')!r})))"
    )
    env = {**__import__("os").environ, "PYTHONPATH": f"{tmp_path}:{src}"}
    out = subprocess.run(
        [sys.executable, "-c", code, "toy-at:fp32@toy_at_mod"], env=env, capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stderr
    np.testing.assert_allclose(np.load(tmp_path / "p.npy"), reference[1], atol=1e-6)
    with pytest.raises(ValueError, match="backend toy-gone: cannot import backend module 'no_such_mod'"):
        parse_backend("toy-gone@no_such_mod")


def test_backend_at_module_reference_reaches_running_dask_workers(dask_client, tmp_path):
    """Workers started before the backend existed learn it from the string they are handed."""
    import site

    from mergerscan.engines import backend_names, backend_precision

    (tmp_path / "toy_worker_mod.py").write_text(TOY_MODULE.format(name="toy-worker"))
    dask_client.run(site.addsitedir, str(tmp_path))  # importable there, not yet imported
    assert not any("toy-worker" in names for names in dask_client.run(backend_names).values())
    fut = dask_client.submit(backend_precision, "toy-worker@toy_worker_mod", pure=False)
    assert fut.result(timeout=60) == "fp32"
    assert any("toy-worker" in names for names in dask_client.run(backend_names).values())
