"""Inference engines behind one interface; see :func:`load_engine`."""

from __future__ import annotations

from importlib import resources
from pathlib import Path

from .base import BackendUnavailable, Engine, EngineInfo, read_engine_info

DEFAULT_ENGINE = "default.onnx"
BACKENDS = ("onnxruntime", "onnxruntime-cuda", "torch", "torch-cuda", "tensorrt")


def default_engine_path() -> Path:
    return Path(str(resources.files("mergerscan") / "data" / DEFAULT_ENGINE))


def resolve_engine_path(path: str | Path | None) -> Path:
    p = Path(path) if path else default_engine_path()
    if not p.is_file():
        raise FileNotFoundError(f"engine file {p} not found")
    return p


def available_backends() -> dict[str, str | None]:
    """{backend: None if it can run here, else the reason it cannot}.  Imports nothing heavy
    beyond what each check needs (tensorrt itself is only looked up, not imported)."""
    from .onnxruntime import cuda_unavailable_reason as ort_cuda
    from .tensorrt import unavailable_reason as trt_why
    from .torch import cuda_unavailable_reason as torch_cuda

    try:
        import torch  # noqa: F401
        torch_why = None
    except ImportError:
        torch_why = "torch is not installed (pip install mergerscan[train])"
    return {"onnxruntime": None, "onnxruntime-cuda": ort_cuda(), "torch": torch_why,
            "torch-cuda": torch_why or torch_cuda(), "tensorrt": trt_why()}


# the precisions each backend can run; "fp32" is IEEE fp32 everywhere (TF32 off), "tf32" asks for
# TF32 tensor-core matmuls/convolutions on CUDA; int8 needs a quantised engine file
PRECISIONS = {"onnxruntime": ("fp32", "fp16", "int8"), "onnxruntime-cuda": ("fp32", "tf32", "fp16", "int8"),
              "torch": ("fp32", "bf16", "fp16"), "torch-cuda": ("fp32", "tf32", "bf16", "fp16"),
              "tensorrt": ("fp32", "tf32", "fp16", "int8")}


def parse_backend(backend: str) -> tuple[str, dict]:
    """``name[:precision]``, e.g. ``torch-cuda:fp16``, ``tensorrt:fp32`` -> (name, options).
    A precision the backend cannot run is refused (one line), never run at another precision."""
    name, _, precision = backend.partition(":")
    if name not in BACKENDS:
        raise ValueError(f"unknown backend {name!r}; choose from {', '.join(BACKENDS)}")
    if precision and precision not in PRECISIONS[name]:
        raise ValueError(f"{backend}: {name} runs precision {', '.join(PRECISIONS[name])}, not {precision!r}")
    return name, ({"precision": precision} if precision else {})


# the numerics a backend runs at when no ":precision" is given (load_engine's defaults)
DEFAULT_PRECISION = {"onnxruntime": "fp32", "onnxruntime-cuda": "fp32", "torch": "fp32",
                     "torch-cuda": "bf16", "tensorrt": "fp16"}


def backend_precision(backend: str) -> str:
    """The arithmetic a backend spec computes in (``tensorrt`` -> fp16, ``torch-cuda:fp32`` -> fp32).
    Backends at the same precision give the same scores to ~1e-5; a different precision moves
    them by up to a few percent (docs/performance.md), so a run must not mix them."""
    name, opts = parse_backend(backend)
    return opts.get("precision", DEFAULT_PRECISION[name])


def load_engine(path: str | Path | None = None, backend: str = "onnxruntime", threads: int = 1,
                views: int | None = None, **options) -> Engine:
    """Load an engine file with a backend; every backend but ONNX Runtime CPU imports lazily.

    ``options`` go to the backend (``precision``: see ``PRECISIONS``): onnxruntime ``stamp_batch``;
    torch/torch-cuda ``compile``, ``compile_mode``, ``cuda_graphs``, ``max_batch``; tensorrt
    ``max_batch``, ``opt_batch``, ``cache_dir``.  A backend that cannot run here raises
    :class:`BackendUnavailable` (no silent fallback to another device).  ``views``: average the
    logits over 1, 2, 4 or 8 dihedral views (default: what the engine's card says).
    """
    engine = _load(resolve_engine_path(path), backend, threads, options, views)
    if views is not None:                  # test-time views other than the card's default
        engine.info = engine.info.with_views(views)
    return engine


def _load(p: Path, backend: str, threads: int, options: dict, views: int | None = None) -> Engine:
    name, opts = parse_backend(backend)
    opts |= options
    if name in ("onnxruntime", "onnxruntime-cuda"):
        from .onnxruntime import CUDA_EP, OnnxRuntimeEngine
        providers = [CUDA_EP, "CPUExecutionProvider"] if name == "onnxruntime-cuda" else None
        return OnnxRuntimeEngine(p, threads=threads, providers=providers, **opts)
    if name in ("torch", "torch-cuda"):
        from .torch import TorchEngine
        if name == "torch-cuda":
            opts = {"precision": "bf16", "compile": True} | opts
        return TorchEngine(p, device="cuda" if name == "torch-cuda" else "cpu", threads=threads, **opts)
    from .tensorrt import TensorRTEngine
    return TensorRTEngine(p, views=views, **opts)      # the views are built into the plan


__all__ = ["Engine", "EngineInfo", "BackendUnavailable", "load_engine", "read_engine_info",
           "default_engine_path", "resolve_engine_path", "available_backends", "parse_backend", "backend_precision", "BACKENDS", "PRECISIONS"]
