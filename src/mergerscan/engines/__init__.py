"""Inference engines behind one interface; see :func:`load_engine` and, for the backends,
:mod:`mergerscan.engines.registry`."""

from __future__ import annotations

from importlib import resources
from pathlib import Path

from .base import BackendUnavailable, Engine, EngineInfo, EngineOutput, read_engine_info
from .card import EngineCard
from .domain import DomainSelection, EngineDomain, ImageDomain
from .registry import (
    BackendSpec,
    available_backends,
    backend_names,
    backend_precision,
    backend_specs,
    get_backend,
    gpu_backends,
    parse_backend,
    register_backend,
    unregister_backend,
)

DEFAULT_ENGINE = "default.onnx"


def __getattr__(name: str):
    # derived from the registry on each access, so backends registered later are listed too
    if name == "BACKENDS":
        return backend_names()
    if name == "PRECISIONS":
        return {n: s.precisions for n, s in backend_specs().items()}
    if name == "DEFAULT_PRECISION":
        return {n: s.default_precision for n, s in backend_specs().items()}
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def default_engine_path() -> Path:
    return Path(str(resources.files("mergerscan") / "data" / DEFAULT_ENGINE))


def resolve_engine_path(path: str | Path | None) -> Path:
    p = Path(path) if path else default_engine_path()
    if not p.is_file():
        raise FileNotFoundError(f"engine file {p} not found")
    return p


def load_engine(
    path: str | Path | None = None, backend: str = "onnxruntime", threads: int = 1, views: int | None = None, **options
) -> Engine:
    """Load an engine file with a backend (``name[:precision]``, a name in the registry).

    ``options`` go to the backend's options dataclass (see each backend's ``...Options``; an
    unknown name is a one-line ValueError): onnxruntime ``stamp_batch``; torch/torch-cuda
    ``compile``, ``compile_mode``, ``cuda_graphs``, ``max_batch``; tensorrt ``max_batch``,
    ``opt_batch``, ``cache_dir``; all ``precision``.  A backend that cannot run here raises
    :class:`BackendUnavailable` (no silent fallback to another device).  ``views``: average the
    logits over 1, 2, 4 or 8 dihedral views (default: what the engine's card says).
    """
    p = resolve_engine_path(path)
    name, opts = parse_backend(backend)
    spec = get_backend(name)
    engine = spec.factory(p, spec.make_options(opts | options), threads=threads, views=views)
    if views is not None:  # test-time views other than the card's default
        engine.info = engine.info.with_views(views)
    return engine


__all__ = [
    "BACKENDS",
    "DEFAULT_PRECISION",
    "PRECISIONS",
    "BackendSpec",
    "BackendUnavailable",
    "DomainSelection",
    "Engine",
    "EngineCard",
    "EngineDomain",
    "EngineInfo",
    "EngineOutput",
    "ImageDomain",
    "available_backends",
    "backend_names",
    "backend_precision",
    "backend_specs",
    "default_engine_path",
    "get_backend",
    "gpu_backends",
    "load_engine",
    "parse_backend",
    "read_engine_info",
    "register_backend",
    "resolve_engine_path",
    "unregister_backend",
]
