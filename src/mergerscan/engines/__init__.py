"""Inference engines behind one interface; see :func:`load_engine`."""

from __future__ import annotations

from importlib import resources
from pathlib import Path

from .base import Engine, EngineInfo, read_engine_info

DEFAULT_ENGINE = "default.onnx"
BACKENDS = ("onnxruntime", "onnxruntime-cuda", "torch", "tensorrt")


def default_engine_path() -> Path:
    return Path(str(resources.files("mergerscan") / "data" / DEFAULT_ENGINE))


def resolve_engine_path(path: str | Path | None) -> Path:
    p = Path(path) if path else default_engine_path()
    if not p.is_file():
        raise FileNotFoundError(f"engine file {p} not found")
    return p


def load_engine(path: str | Path | None = None, backend: str = "onnxruntime", threads: int = 1) -> Engine:
    """Load an engine file with a backend.  Backends other than ONNX Runtime CPU import lazily."""
    p = resolve_engine_path(path)
    if backend == "onnxruntime":
        from .onnxruntime import OnnxRuntimeEngine
        return OnnxRuntimeEngine(p, threads=threads)
    if backend == "onnxruntime-cuda":
        from .onnxruntime import OnnxRuntimeEngine
        return OnnxRuntimeEngine(p, threads=threads, providers=["CUDAExecutionProvider", "CPUExecutionProvider"])
    raise ValueError(f"unknown or unavailable backend {backend!r}; choose from {', '.join(BACKENDS)}")


__all__ = ["Engine", "EngineInfo", "load_engine", "read_engine_info", "default_engine_path",
           "resolve_engine_path", "BACKENDS"]
