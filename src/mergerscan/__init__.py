"""mergerscan: survey-scale galaxy-merger scoring.

The library (docs/library.md): :func:`load_engine`, :func:`score` (an in-memory table, no Dask),
:func:`process_catalog` (a run, as the command line does it) and :func:`score_catalog` (an LSDB
catalog, lazily).  They are imported on first use (:mod:`mergerscan.api`), so ``import mergerscan``
loads neither onnxruntime nor Dask.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

__all__ = ["__version__", "load_engine", "process_catalog", "score", "score_catalog"]

_API = ("load_engine", "process_catalog", "score", "score_catalog")

if TYPE_CHECKING:
    from .api import load_engine, process_catalog, score, score_catalog


def __getattr__(name: str) -> Any:
    if name in _API:
        from . import api

        return getattr(api, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *_API})
