"""TensorRT backend (TensorRT >= 10.12, 11.x): a serialised ``.engine`` built from the engine's ONNX.

Precision lives in the graph (strongly typed networks; TensorRT 11 removed the FP16/INT8 builder
flags): ``fp16`` converts the ONNX to an fp16 graph with fp32 inputs/outputs first, ``fp32``
builds it as is, an ``int8`` engine file (Q/DQ nodes, ``card.precision == "int8"``) is built as
is.  One optimisation profile covers batch sizes ``1..max_batch`` (tuned at ``opt_batch``).
Built engines are cached on disk under a key of GPU name + compute capability, TensorRT version,
ONNX sha256, precision and profile; a timing cache per GPU/TensorRT version speeds up rebuilds.
Inference: ``set_input_shape`` per batch, ``set_tensor_address`` on torch CUDA buffers,
``execute_async_v3`` on a dedicated CUDA stream.

Everything above the ``TensorRTEngine`` class runs without TensorRT (and is tested on CPU).
NOT verified on a GPU in the task that wrote it: see docs/performance.md.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import re
from pathlib import Path

import numpy as np

from .base import CARD_KEY, BackendUnavailable, Engine, read_engine_info

PRECISIONS = ("fp16", "fp32", "int8")


def unavailable_reason() -> str | None:
    if importlib.util.find_spec("tensorrt") is None:
        return "the tensorrt Python package is not installed (pip install tensorrt, matching the site's CUDA)"
    from .torch import cuda_unavailable_reason
    return cuda_unavailable_reason()


def default_cache_dir() -> Path:
    return Path(os.environ.get("MERGERSCAN_TRT_CACHE", Path.home() / ".cache" / "mergerscan" / "tensorrt"))


def profile_shapes(input_size: int, max_batch: int, opt_batch: int | None = None,
                   min_batch: int = 1) -> dict[str, tuple]:
    """min/opt/max input shapes of the one optimisation profile."""
    opt_batch = max_batch if opt_batch is None else opt_batch
    if not 1 <= min_batch <= opt_batch <= max_batch:
        raise ValueError(f"need 1 <= min_batch <= opt_batch <= max_batch, got {min_batch}, {opt_batch}, {max_batch}")
    return {k: (b, 3, input_size, input_size) for k, b in
            (("min", min_batch), ("opt", opt_batch), ("max", max_batch))}


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "-", text).strip("-").lower()


def cache_key(onnx_sha256: str, gpu_name: str, compute_capability: str, trt_version: str,
              precision: str, profile: dict) -> str:
    """Everything an engine plan depends on; a change in any of them means a rebuild."""
    blob = json.dumps({"onnx": onnx_sha256, "gpu": gpu_name, "cc": compute_capability, "trt": trt_version,
                       "precision": precision, "profile": {k: list(v) for k, v in sorted(profile.items())}},
                      sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:24]


def engine_cache_path(cache_dir: str | Path, gpu_name: str, compute_capability: str, trt_version: str,
                      key: str) -> Path:
    """``<cache>/<gpu>-sm<cc>/trt-<version>/<key>.engine``: readable layout, key decides."""
    return (Path(cache_dir) / f"{_slug(gpu_name)}-sm{compute_capability.replace('.', '')}"
            / f"trt-{trt_version}" / f"{key}.engine")


def timing_cache_path(cache_dir: str | Path, gpu_name: str, compute_capability: str, trt_version: str) -> Path:
    return engine_cache_path(cache_dir, gpu_name, compute_capability, trt_version, "timing").with_suffix(".cache")


def fp16_onnx(src: str | Path, dst: str | Path) -> Path:
    """fp32 engine file -> fp16 graph with fp32 input/output (keep_io_types), metadata carried
    over with ``precision: fp16`` in the card.  Uses onnxruntime's own converter."""
    import onnx
    from onnxruntime.transformers.float16 import convert_float_to_float16

    m = onnx.load(str(src))
    m16 = convert_float_to_float16(m, keep_io_types=True)
    meta = {p.key: p.value for p in m.metadata_props}
    card = json.loads(meta.get(CARD_KEY, "{}")) | {"precision": "fp16"}
    meta[CARD_KEY] = json.dumps(card, sort_keys=True)
    del m16.metadata_props[:]
    for k, v in meta.items():
        e = m16.metadata_props.add(); e.key, e.value = k, v
    dst = Path(dst)
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = dst.with_suffix(".tmp")
    onnx.save(m16, str(tmp))
    tmp.replace(dst)
    return dst


def _atomic_write(path: Path, data: bytes):
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_bytes(data)
    tmp.replace(path)


def _import_trt():
    if (why := unavailable_reason()):
        raise BackendUnavailable(f"tensorrt: {why}")
    import tensorrt as trt
    return trt


def build_plan(trt, onnx_path: Path, profile: dict, timing_cache: Path, logger) -> bytes:
    """Parse the ONNX into a strongly typed network and build a serialised plan."""
    builder = trt.Builder(logger)
    flag = getattr(trt.NetworkDefinitionCreationFlag, "STRONGLY_TYPED", None)  # implicit in TRT 11
    network = builder.create_network(0 if flag is None else 1 << int(flag))
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errs = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise RuntimeError(f"TensorRT could not parse {onnx_path}: {errs}")
    config = builder.create_builder_config()
    prof = builder.create_optimization_profile()
    prof.set_shape(network.get_input(0).name, profile["min"], profile["opt"], profile["max"])
    config.add_optimization_profile(prof)
    cache = config.create_timing_cache(timing_cache.read_bytes() if timing_cache.is_file() else b"")
    config.set_timing_cache(cache, ignore_mismatch=False)
    plan = builder.build_serialized_network(network, config)
    if plan is None:
        raise RuntimeError(f"TensorRT failed to build an engine from {onnx_path}")
    _atomic_write(timing_cache, bytes(config.get_timing_cache().serialize()))
    return bytes(plan)


class TensorRTEngine(Engine):
    backend = "tensorrt"

    def __init__(self, path: str | Path, precision: str | None = None, max_batch: int = 256,
                 opt_batch: int | None = None, cache_dir: str | Path | None = None, **_):
        trt = _import_trt()
        import torch

        info = read_engine_info(path)
        super().__init__(info)
        precision = precision or ("int8" if info.card.get("precision") == "int8" else "fp16")
        if precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {PRECISIONS}")
        if (precision == "int8") != (info.card.get("precision") == "int8"):
            raise ValueError("int8 needs a quantised (Q/DQ) engine file, e.g. model-int8.onnx, and only that")
        self.precision, self.max_batch = precision, int(max_batch)
        props = torch.cuda.get_device_properties(torch.cuda.current_device())
        gpu, cc = props.name, f"{props.major}.{props.minor}"
        cache_dir = Path(cache_dir) if cache_dir else default_cache_dir()
        profile = profile_shapes(info.spec.input_size, self.max_batch, opt_batch)
        key = cache_key(info.sha256, gpu, cc, trt.__version__, precision, profile)
        self.plan_path = engine_cache_path(cache_dir, gpu, cc, trt.__version__, key)
        logger = trt.Logger(trt.Logger.WARNING)
        if not self.plan_path.is_file():
            src = Path(path)
            if precision == "fp16":
                src = fp16_onnx(path, self.plan_path.with_suffix(".fp16.onnx"))
            plan = build_plan(trt, src, profile, timing_cache_path(cache_dir, gpu, cc, trt.__version__), logger)
            _atomic_write(self.plan_path, plan)
        self.runtime = trt.Runtime(logger)
        self.engine = self.runtime.deserialize_cuda_engine(self.plan_path.read_bytes())
        if self.engine is None:
            raise RuntimeError(f"could not deserialise {self.plan_path} (delete it to rebuild)")
        self.context = self.engine.create_execution_context()
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        self.input = next(n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT)
        self.output = next(n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.OUTPUT)
        self.stream = torch.cuda.Stream()

    def _logits(self, x: np.ndarray) -> np.ndarray:
        import torch
        with torch.cuda.stream(self.stream):
            inp = torch.from_numpy(np.ascontiguousarray(x, np.float32)).pin_memory().to("cuda", non_blocking=True)
            self.context.set_input_shape(self.input, tuple(inp.shape))
            out = torch.empty(tuple(self.context.get_tensor_shape(self.output)), dtype=torch.float32, device="cuda")
            self.context.set_tensor_address(self.input, inp.data_ptr())
            self.context.set_tensor_address(self.output, out.data_ptr())
            if not self.context.execute_async_v3(self.stream.cuda_stream):
                raise RuntimeError("TensorRT execute_async_v3 failed")
            res = out.cpu()       # synchronises self.stream
        return res.numpy()
