"""(i) Engine-only throughput: stamps already in memory -> p_merger, for the default engine.

Measures objects/s of ``Engine.predict`` (shared preprocessing + ONNX Runtime CPU) at 1 and 2
threads, for 1 view and for the engine's default number of test-time views, on real SDSS stamps when ../shared is present (synthetic otherwise).
Also the engine's FLOPs per image and the fraction of the measured matmul peak it reaches.

    .venv/bin/python benchmarks/bench_engine.py [--engine FILE] [--n 1024]
Writes benchmarks/results/engine.json.
"""

from __future__ import annotations

import argparse
import os
import platform
import time

import numpy as np

from _common import cpu_model, matmul_peak, result_path, shared_data, write_result

SHARED = shared_data("sdss-gz-mergers")


def stamps(n: int, size: int) -> tuple[np.ndarray, str]:
    if SHARED.is_dir():
        from mergerscan.training.data import decode_stamps

        files = sorted(SHARED.glob("images/*.jpg"))[:n]
        return decode_stamps([str(f) for f in files]), "real SDSS JPEG stamps"
    rng = np.random.default_rng(0)
    return rng.integers(0, 255, (n, size, size, 3), dtype=np.uint8), "random stamps"


def onnx_flops(path: str, size: int) -> float:
    """FLOPs per image from the graph's Conv and Gemm/MatMul nodes (2 x MACs)."""
    import onnx
    from onnx import shape_inference

    m = onnx.load(path)
    g = m.graph
    inp = g.input[0]
    inp.type.tensor_type.shape.dim[0].dim_value = 1
    m = shape_inference.infer_shapes(m)
    shapes = {
        v.name: [d.dim_value for d in v.type.tensor_type.shape.dim]
        for v in list(m.graph.value_info) + list(m.graph.output) + list(m.graph.input)
    }
    inits = {i.name: list(i.dims) for i in m.graph.initializer}
    flops = 0
    for node in m.graph.node:
        if node.op_type == "Conv":
            w = inits.get(node.input[1])
            out = shapes.get(node.output[0])
            if w and out and all(out):
                flops += 2 * np.prod(out) * np.prod(w[1:])
        elif node.op_type in ("Gemm", "MatMul"):
            w = inits.get(node.input[1])
            if w:
                flops += 2 * np.prod(w)
    return float(flops)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--engine")
    ap.add_argument("--n", type=int, default=1024)
    ap.add_argument("--out", default=str(result_path("engine.json")))
    a = ap.parse_args()
    from mergerscan.engines import load_engine, resolve_engine_path

    path = str(resolve_engine_path(a.engine))
    res = {
        "engine": path,
        "machine": {"nproc": os.cpu_count(), "python": platform.python_version(), "processor": cpu_model()},
        "runs": [],
    }
    eng = load_engine(path, threads=1)
    x, kind = stamps(a.n, eng.spec.stamp_pixels)
    res["data"] = f"{len(x)} {kind}"
    res["flops_per_image"] = onnx_flops(path, eng.spec.input_size)
    res["default_views"] = eng.info.views
    peaks = {}
    for views in sorted({1, eng.info.views}):
        for threads in (1, 2):
            eng = load_engine(path, threads=threads, views=views)
            n = len(x) if views == 1 else max(128, len(x) // views)
            eng.predict(x[:32])  # warm-up
            t = time.perf_counter()
            for i in range(0, n, 128):  # predict calls of --batch-size 128, as the pipeline
                eng.predict(x[i : min(i + 128, n)])
            dt = time.perf_counter() - t
            peak = peaks.setdefault(threads, matmul_peak("fp32", "cpu", threads=threads))
            ips = n / dt  # objects/s; each object is `views` images
            flops = ips * views * res["flops_per_image"] / 1e9
            res["runs"].append(
                {
                    "views": views,
                    "threads": threads,
                    "call": 128,
                    "batch": eng.max_batch,
                    "objects": n,
                    "objects_per_s": round(ips, 1),
                    "gflops_per_s": round(flops, 1),
                    "matmul_peak_gflops": round(peak, 1),
                    "fraction_of_peak": round(flops / peak, 3),
                }
            )
            print(res["runs"][-1], flush=True)
    write_result(a.out, res)


if __name__ == "__main__":
    main()
