"""``mergerscan bench engine``: engine speed, stamps already in memory -> p_merger.

For each backend x views x threads x batch size asked for, ``Engine.predict`` (the engine's own
preprocessing and test-time views, as the pipeline calls it) runs over ``n`` stamps in calls of
the batch size after one warm-up call; objects/s from the wall clock, and the process CPU
seconds beside it.  A backend that cannot run here is recorded with its reason, not fatal.
FLOPs per image are counted from the ONNX graph (conv and matmul nodes, 2 x MACs)."""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .common import load_stamps, machine, timed_objects


@dataclass(frozen=True)
class EngineBench:
    engine: str | None = None  # None: the packaged engine
    backends: tuple[str, ...] = ("onnxruntime",)
    views: tuple[int, ...] = ()  # empty: 1 and the card's default
    threads: tuple[int, ...] = (1,)
    batches: tuple[int, ...] = (128,)
    n: int = 256
    images: str | None = None  # a stamp folder; None: noise stamps


def onnx_flops(path: str | Path) -> float:
    """FLOPs per image from the graph's Conv and Gemm/MatMul nodes (2 x MACs), batch of one."""
    from onnx import shape_inference

    from ..engines.engine_file import load_model

    m = load_model(path)
    m.graph.input[0].type.tensor_type.shape.dim[0].dim_value = 1
    m = shape_inference.infer_shapes(m)
    g = m.graph
    shapes = {
        v.name: [d.dim_value for d in v.type.tensor_type.shape.dim]
        for v in list(g.value_info) + list(g.output) + list(g.input)
    }
    inits = {i.name: list(i.dims) for i in g.initializer}
    flops = 0.0
    for node in g.node:
        w = inits.get(node.input[1]) if len(node.input) > 1 else None
        out = shapes.get(node.output[0])
        if node.op_type == "Conv" and w and out and all(out):
            flops += 2 * float(np.prod(out)) * float(np.prod(w[1:]))
        elif node.op_type in ("Gemm", "MatMul") and w:
            flops += 2 * float(np.prod(w))
    return flops


def time_predict(eng, stamps: np.ndarray, batch: int) -> dict:
    """One warm-up call, then every stamp once in calls of ``batch``."""
    eng.predict(stamps[: min(batch, len(stamps))])
    row, _ = timed_objects(
        lambda: [eng.predict(stamps[i : i + batch]) for i in range(0, len(stamps), batch)], len(stamps)
    )
    return row


def unavailable(backend: str) -> str | None:
    """Why ``backend`` cannot run here (None: it can); an unknown name is a ValueError."""
    from ..engines.registry import get_backend, parse_backend

    return get_backend(parse_backend(backend)[0]).unavailable_reason()


def one_backend(cfg: EngineBench, path: Path, backend: str, stamps: np.ndarray, views: list[int]) -> list[dict]:
    from ..engines import load_engine
    from ..engines.base import BackendUnavailable

    if why := unavailable(backend):
        return [{"backend": backend, "skipped": why}]
    runs: list[dict] = []
    for v in views:
        for t in cfg.threads:
            try:
                eng = load_engine(path, backend=backend, threads=t, views=v)
            except (BackendUnavailable, ImportError) as exc:
                return runs + [{"backend": backend, "skipped": " ".join(str(exc).split())}]
            for b in cfg.batches:
                runs.append({"backend": backend, "views": v, "threads": t, "batch": b} | time_predict(eng, stamps, b))
                print(f"bench engine: {runs[-1]}", file=sys.stderr, flush=True)
    return runs


def run_engine_bench(cfg: EngineBench) -> dict:
    """The document ``mergerscan bench engine`` writes."""
    from ..engines import load_engine, resolve_engine_path

    if cfg.n < 1:
        raise ValueError(f"--n {cfg.n}: at least 1")
    path = resolve_engine_path(cfg.engine)
    ref = load_engine(path, threads=1)
    stamps, what = load_stamps(cfg.images, cfg.n, ref.spec.stamp_pixels)
    views = list(cfg.views) or sorted({1, ref.info.views})
    for v in views:  # a count the card has no calibration for is refused before any timing
        try:
            ref.info.with_views(v)
        except ValueError as exc:
            raise ValueError(f"--views {v}: {exc}") from None
    doc: dict = {
        "bench": "engine",
        "engine": str(path),
        "engine_name": ref.info.name,
        "input_size": ref.spec.input_size,
        "default_views": ref.info.views,
        "flops_per_image": onnx_flops(path),
        "data": what,
        "machine": machine(),
        "runs": [],
    }
    for backend in cfg.backends:
        unavailable(backend)  # an unknown name is refused before any timing
    for backend in cfg.backends:
        doc["runs"] += one_backend(cfg, path, backend, stamps, views)
    return doc
