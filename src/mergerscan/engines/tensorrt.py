"""TensorRT backend (TensorRT >= 10.12, 11.x): a serialised ``.engine`` built from the engine's ONNX.

The network is the engine with its front (:mod:`.front`): uint8 stamps (N,256,256,3) in, the
resize, normalisation, views and view mean inside the plan, mean logit (N,) out.  Precision lives
in the graph (strongly typed networks; TensorRT 11 removed the FP16/INT8 builder flags): ``fp16``
converts the net to fp16 with an fp32 front and fp32 output, ``fp32`` builds it as is with
``BuilderFlag.TF32`` cleared (TensorRT enables TF32 by default, which would miss the 1e-4 fp32
parity), ``tf32`` sets it, and an ``int8`` engine file (symmetric Q/DQ nodes, ``card.precision ==
"int8"``, see training/export.py) is built as is.  One optimisation profile covers stamp batches
``1..max_batch`` (tuned at ``opt_batch``).  Plans are cached on disk under a key of GPU name +
compute capability, TensorRT version, ONNX sha256, precision, views and profile, built **once per
node**: the first process takes a file lock and builds, the others wait on the lock and then read
the cached plan.  A timing cache per GPU/TensorRT version speeds up rebuilds.  Inference:
``set_input_shape`` (checked) per batch, ``set_tensor_address`` on torch CUDA buffers,
``execute_async_v3`` on a dedicated CUDA stream; one call at a time per engine (the context, the
stream and the buffers are shared by the threads of a worker).

Everything above the ``TensorRTEngine`` class runs without TensorRT (and is tested on CPU).
NOT verified on a GPU in the task that wrote it: see docs/performance.md.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import json
import os
import re
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..atomic import atomic_write_bytes
from .base import BackendUnavailable, Engine, read_engine_info
from .engine_file import copy_metadata, load_model, save_model
from .registry import register_backend
from .representation import DOMAIN_SCORE, EMBEDDING

PRECISIONS = ("fp32", "tf32", "fp16", "int8")
PLAN_FORMAT = "front-1"  # bump when the composed graph (front, view mean) changes


def unavailable_reason() -> str | None:
    if importlib.util.find_spec("tensorrt") is None:
        return "the tensorrt Python package is not installed (pip install tensorrt, matching the site's CUDA)"
    from .torch import cuda_unavailable_reason

    return cuda_unavailable_reason()


def default_cache_dir() -> Path:
    return Path(os.environ.get("MERGERSCAN_TRT_CACHE", Path.home() / ".cache" / "mergerscan" / "tensorrt"))


def profile_shapes(
    stamp_pixels: int, max_batch: int, opt_batch: int | None = None, min_batch: int = 1
) -> dict[str, tuple]:
    """min/opt/max shapes of the one optimisation profile: uint8 stamps (N, H, H, 3)."""
    opt_batch = max_batch if opt_batch is None else opt_batch
    if not 1 <= min_batch <= opt_batch <= max_batch:
        raise ValueError(f"need 1 <= min_batch <= opt_batch <= max_batch, got {min_batch}, {opt_batch}, {max_batch}")
    return {
        k: (b, stamp_pixels, stamp_pixels, 3) for k, b in (("min", min_batch), ("opt", opt_batch), ("max", max_batch))
    }


def builder_flags(precision: str) -> dict[str, bool]:
    """BuilderFlag name -> set (True) or cleared (False).  The precision of a strongly typed
    network is in its graph; TF32 is the one flag left, and it is on by default."""
    return {"TF32": precision == "tf32"}


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "-", text).strip("-").lower()


def cache_key(
    onnx_sha256: str,
    gpu_name: str,
    compute_capability: str,
    trt_version: str,
    precision: str,
    profile: dict,
    views: int = 1,
) -> str:
    """Everything an engine plan depends on; a change in any of them means a rebuild."""
    blob = json.dumps(
        {
            "onnx": onnx_sha256,
            "gpu": gpu_name,
            "cc": compute_capability,
            "trt": trt_version,
            "precision": precision,
            "profile": {k: list(v) for k, v in sorted(profile.items())},
            "views": views,
            "format": PLAN_FORMAT,
        },
        sort_keys=True,
    )
    return hashlib.sha256(blob.encode()).hexdigest()[:24]


def engine_cache_path(
    cache_dir: str | Path, gpu_name: str, compute_capability: str, trt_version: str, key: str
) -> Path:
    """``<cache>/<gpu>-sm<cc>/trt-<version>/<key>.engine``: readable layout, key decides."""
    return (
        Path(cache_dir)
        / f"{_slug(gpu_name)}-sm{compute_capability.replace('.', '')}"
        / f"trt-{trt_version}"
        / f"{key}.engine"
    )


def timing_cache_path(cache_dir: str | Path, gpu_name: str, compute_capability: str, trt_version: str) -> Path:
    return engine_cache_path(cache_dir, gpu_name, compute_capability, trt_version, "timing").with_suffix(".cache")


def fp16_onnx(src: str | Path, dst: str | Path) -> Path:
    """fp32 engine file -> fp16 graph with fp32 input/output (keep_io_types), metadata carried
    over with ``precision: fp16`` in the card.  Uses onnxruntime's own converter."""
    from onnxruntime.transformers.float16 import convert_float_to_float16

    m = load_model(src)
    m16 = convert_float_to_float16(m, keep_io_types=True)
    return save_model(copy_metadata(m, m16, card_updates={"precision": "fp16"}), dst)  # atomic: unique temporary


@contextlib.contextmanager
def _file_lock(path: Path, timeout_s: float):
    """An exclusive ``flock`` on ``path`` (per node: the cache directory is node-local or the lock
    is per host); waits up to ``timeout_s`` for another process's build."""
    import fcntl

    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as f:
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise TimeoutError(f"waited {timeout_s:.0f} s for another process building {path.stem}") from None
                time.sleep(0.2)
        try:
            yield
        finally:
            fcntl.flock(f.fileno(), fcntl.LOCK_UN)


def build_once(plan_path: str | Path, build, timeout_s: float = 3600.0) -> bytes:
    """The cached plan at ``plan_path``, built by ``build() -> bytes`` by exactly one of the
    processes that ask at once: the first takes ``<plan>.<host>.lock`` and builds; the others wait
    on the lock, then read what it wrote (written atomically, so a reader never sees half a plan)."""
    plan_path = Path(plan_path)
    if plan_path.is_file():
        return plan_path.read_bytes()
    lock = plan_path.with_name(f"{plan_path.name}.{_slug(os.uname().nodename)}.lock")
    with _file_lock(lock, timeout_s):
        if plan_path.is_file():  # built by another process while we waited
            return plan_path.read_bytes()
        plan = build()
        atomic_write_bytes(plan_path, plan)
        return plan


def _import_trt():
    if why := unavailable_reason():
        raise BackendUnavailable(f"tensorrt: {why}")
    import tensorrt as trt

    return trt


def composed_onnx(path: str | Path, precision: str, views: int) -> bytes:
    """The serialised graph TensorRT builds: the engine with its front and view mean; the net in
    fp16 for ``fp16`` (the front stays fp32)."""
    from .front import with_front
    from .onnxruntime import fp16_model

    m = load_model(path)
    info = read_engine_info(path)
    m = with_front(m, info.spec, views)
    if precision == "fp16":
        m = fp16_model(m)
    return m.SerializeToString()


def build_plan(
    trt, onnx_bytes: bytes, profile: dict, timing_cache: Path, logger, precision: str, name: str = "engine"
) -> bytes:
    """Parse the ONNX into a strongly typed network and build a serialised plan."""
    builder = trt.Builder(logger)
    flag = getattr(trt.NetworkDefinitionCreationFlag, "STRONGLY_TYPED", None)  # implicit in TRT 11
    network = builder.create_network(0 if flag is None else 1 << int(flag))
    parser = trt.OnnxParser(network, logger)
    if not parser.parse(onnx_bytes):
        errs = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise RuntimeError(f"TensorRT could not parse {name}: {errs}")
    config = builder.create_builder_config()
    for flag_name, on in builder_flags(precision).items():
        bf = getattr(trt.BuilderFlag, flag_name, None)
        if bf is not None:
            config.set_flag(bf) if on else config.clear_flag(bf)
        elif on:
            raise RuntimeError(f"TensorRT {trt.__version__} has no BuilderFlag.{flag_name}: cannot build {precision}")
    prof = builder.create_optimization_profile()
    prof.set_shape(network.get_input(0).name, profile["min"], profile["opt"], profile["max"])
    config.add_optimization_profile(prof)
    cache = config.create_timing_cache(timing_cache.read_bytes() if timing_cache.is_file() else b"")
    config.set_timing_cache(cache, ignore_mismatch=False)
    plan = builder.build_serialized_network(network, config)
    if plan is None:
        raise RuntimeError(f"TensorRT failed to build an engine from {name}")
    atomic_write_bytes(timing_cache, bytes(config.get_timing_cache().serialize()))
    return bytes(plan)


class TensorRTEngine(Engine):
    backend = "tensorrt"
    serial = True  # one context, stream and buffer set shared by the worker's threads

    def __init__(
        self,
        path: str | Path,
        precision: str | None = None,
        max_batch: int = 128,
        opt_batch: int | None = None,
        cache_dir: str | Path | None = None,
        views: int | None = None,
    ):
        trt = _import_trt()
        import torch

        info = read_engine_info(path)
        super().__init__(info.with_views(views) if views else info)
        quantised = info.card.file_precision == "int8"
        precision = precision or ("int8" if quantised else "fp16")
        if precision not in PRECISIONS:
            raise ValueError(f"tensorrt: precision must be one of {', '.join(PRECISIONS)}")
        if (precision == "int8") != quantised:
            raise ValueError("tensorrt:int8 needs a quantised (Q/DQ) engine file, e.g. model-int8.onnx, and only that")
        self.precision, self.max_batch = precision, int(max_batch)  # stamps per call
        self.images_per_call = self.max_batch * self.info.views
        props = torch.cuda.get_device_properties(torch.cuda.current_device())
        self._gpu, self._cc = props.name, f"{props.major}.{props.minor}"
        self._path, self._opt = Path(path), opt_batch
        self._cache_dir = Path(cache_dir) if cache_dir else default_cache_dir()
        self._logger = trt.Logger(trt.Logger.WARNING)
        self.runtime = trt.Runtime(self._logger)
        self._plans: dict = {}
        self.stream = torch.cuda.Stream()
        self._load(self.info.views)  # build or read the plan now, not mid-run
        self.has_representation = len(self._plans[self.info.views][3]) == 3

    def _load(self, views: int):
        """(context, input name, output name) of the plan for ``views`` views (built once per node)."""
        if views in self._plans:
            return self._plans[views]
        trt = _import_trt()
        profile = profile_shapes(self.spec.stamp_pixels, self.max_batch, self._opt)
        key = cache_key(self.info.sha256, self._gpu, self._cc, trt.__version__, self.precision, profile, views)
        self.plan_path = engine_cache_path(self._cache_dir, self._gpu, self._cc, trt.__version__, key)
        timing = timing_cache_path(self._cache_dir, self._gpu, self._cc, trt.__version__)
        plan = build_once(
            self.plan_path,
            lambda: build_plan(
                trt,
                composed_onnx(self._path, self.precision, views),
                profile,
                timing,
                self._logger,
                self.precision,
                name=f"{self._path} ({self.precision}, {views} views)",
            ),
        )
        engine = self.runtime.deserialize_cuda_engine(plan)
        if engine is None:
            raise RuntimeError(f"could not deserialise {self.plan_path} (delete it to rebuild)")
        names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
        inp = next(n for n in names if engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT)
        # the logit, then (engine files with a representation block) embedding and domain_score
        outs = sorted(
            (n for n in names if engine.get_tensor_mode(n) == trt.TensorIOMode.OUTPUT),
            key=lambda n: 2 if n.endswith(DOMAIN_SCORE) else 1 if n.endswith(EMBEDDING) else 0,
        )
        dtypes = (engine.get_tensor_dtype(inp), *(engine.get_tensor_dtype(o) for o in outs))
        if dtypes != (trt.DataType.UINT8, *(trt.DataType.FLOAT for _ in outs)):
            raise RuntimeError(
                f"{self.plan_path}: I/O dtypes {dtypes}, expected UINT8 in, FLOAT out; delete it to rebuild"
            )
        self._plans[views] = (engine, engine.create_execution_context(), inp, outs)
        return self._plans[views]

    def _logits(self, x: np.ndarray) -> np.ndarray:
        raise NotImplementedError(
            "the tensorrt backend takes uint8 stamps (predict / stamp_logits); "
            "prepared batches go to onnxruntime or torch"
        )

    def _stamp_logits(self, stamps: np.ndarray) -> np.ndarray:
        return self._run_stamps(stamps)[0]

    def _stamp_outputs(self, stamps: np.ndarray):
        outs = self._run_stamps(stamps)
        return (outs[0], outs[1], outs[2]) if len(outs) == 3 else (outs[0], None, None)

    def _run_stamps(self, stamps: np.ndarray) -> list[np.ndarray]:
        """Every output of the plan (each bound: TensorRT needs an address for all of them)."""
        import torch

        _, context, inp_name, out_names = self._load(self.info.views)
        with torch.cuda.stream(self.stream):
            inp = torch.from_numpy(np.ascontiguousarray(stamps, np.uint8)).pin_memory().to("cuda", non_blocking=True)
            if not context.set_input_shape(inp_name, tuple(inp.shape)):
                raise RuntimeError(f"TensorRT rejected input shape {tuple(inp.shape)} (profile 1..{self.max_batch})")
            outs = [
                torch.empty(tuple(context.get_tensor_shape(o)), dtype=torch.float32, device="cuda") for o in out_names
            ]
            context.set_tensor_address(inp_name, inp.data_ptr())
            for o, t in zip(out_names, outs):
                context.set_tensor_address(o, t.data_ptr())
            if not context.execute_async_v3(self.stream.cuda_stream):
                raise RuntimeError("TensorRT execute_async_v3 failed")
            res = [t.cpu() for t in outs]  # synchronises self.stream
        return [r.numpy() for r in res]


@dataclass(frozen=True)
class TensorRTOptions:
    precision: str | None = None  # None: fp16 (int8 for a quantised engine file)
    max_batch: int = 128  # stamps per call: the optimisation profile's maximum
    opt_batch: int | None = None  # the profile's tuning point (None: max_batch)
    cache_dir: str | None = None  # plan cache (None: $MERGERSCAN_TRT_CACHE or ~/.cache)


@register_backend(
    "tensorrt",
    options=TensorRTOptions,
    precisions=PRECISIONS,
    default_precision="fp16",
    needs_gpu=True,
    unavailable_reason=unavailable_reason,
    help="TensorRT plans built from the engine file, cached per node",
)
def _tensorrt(path, options: TensorRTOptions, threads: int = 1, views: int | None = None) -> TensorRTEngine:
    return TensorRTEngine(
        path,
        precision=options.precision,
        max_batch=options.max_batch,
        opt_batch=options.opt_batch,
        cache_dir=options.cache_dir,
        views=views,
    )
