"""CPU cost per object of candidate engines side by side with today's default, in one run.

Each engine runs at its card's default number of test-time views (``FILE:V`` for another count)
through ``Engine.predict`` (uint8 stamps in, the in-graph front and views, ONNX Runtime CPU), on
the same real SDSS stamps, interleaved A B A B so that machine drift hits all alike.  FLOPs per
object = the graph's conv/matmul FLOPs per image x views; the in-graph front (the 256 px stamp
resampled once per object) is counted apart and in the total.

    .venv/bin/python benchmarks/bench_candidate.py default runs/NAME/model.onnx --threads 1 2
Writes benchmarks/results/candidate-cost.json (the first engine is the reference for the ratios).
"""

from __future__ import annotations

import argparse
import os
import platform
import time

import numpy as np

from _common import cpu_model, result_path, shared_data, write_result
from mergerscan.bench.engine import onnx_flops

SHARED = shared_data("sdss-gz-mergers")


def _engine_arg(text: str) -> tuple[str | None, int | None]:
    path, _, views = text.partition(":") if not os.path.exists(text) else (text, "", "")
    return (None if path == "default" else path), (int(views) if views else None)


def front_flops(spec) -> float:
    """FLOPs per object of the front's resample as front.front_nodes builds it: two strided
    convolutions (K taps per output pixel) where the sizes share a period, else two dense matrix
    products; an integer ratio is a block mean (one add per input pixel)."""
    from mergerscan.engines.front import _periodic_resample

    h, s = spec.stamp_pixels, spec.input_size
    if h % s == 0:
        return float(3 * h * h)
    band = _periodic_resample(h, s)
    if band is not None:
        k = band[0].shape[1]
        return float(3 * 2 * k * (h * s + s * s))
    return float(3 * (2 * h * h * s + 2 * s * h * s))


def objects_per_s(eng, x: np.ndarray, budget: float) -> float:
    eng.predict(x[:8])  # warm-up: the session and the front
    k, t = 0, time.perf_counter()
    while time.perf_counter() - t < budget or k < 1:
        eng.predict(x)
        k += 1
    return len(x) * k / (time.perf_counter() - t)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("engines", nargs="+", help="engine files ('default' = the packaged one), FILE:VIEWS for a count")
    ap.add_argument("--n", type=int, default=128, help="stamps per measurement")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--budget", type=float, default=8.0, help="seconds per measurement")
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--out", default=str(result_path("candidate-cost.json")))
    a = ap.parse_args()
    from mergerscan.engines import load_engine, resolve_engine_path
    from mergerscan.training.data import decode_stamps

    files = sorted((SHARED / "images").glob("*.jpg"))
    if not files:
        raise SystemExit(f"needs the real stamps in {SHARED}")
    x = decode_stamps([str(f) for f in files[:: max(1, len(files) // a.n)][: a.n]])
    res: dict = {
        "machine": {
            "cpu": cpu_model(),
            "nproc": os.cpu_count(),
            "python": platform.python_version(),
            "load_before": os.getloadavg(),
        },
        "stamps": f"{len(x)} real SDSS JPEG stamps (256 px)",
        "engines": [],
    }
    specs = [_engine_arg(e) for e in a.engines]
    for (path, views), text in zip(specs, a.engines):
        p = str(resolve_engine_path(path))
        eng = load_engine(p, threads=1, views=views)
        per_image = onnx_flops(p)
        front = front_flops(eng.spec)
        res["engines"].append(
            {
                "engine": text,
                "name": eng.info.name,
                "input_size": eng.spec.input_size,
                "views": eng.info.views,
                "gflops_per_image": round(per_image / 1e9, 4),
                "gflops_per_object": round(per_image * eng.info.views / 1e9, 4),
                "front_gflops_per_object": round(front / 1e9, 4),
                "gflops_per_object_with_front": round((per_image * eng.info.views + front) / 1e9, 4),
                "objects_per_s": {str(t): [] for t in a.threads},
            }
        )
    for _ in range(a.rounds):
        for t in a.threads:
            for (path, views), row in zip(specs, res["engines"]):
                eng = load_engine(path, threads=t, views=views)
                row["objects_per_s"][str(t)].append(round(objects_per_s(eng, x, a.budget), 2))
                print(row["name"], row["views"], f"{t} thread(s)", row["objects_per_s"][str(t)][-1], flush=True)
    ref = res["engines"][0]
    for row in res["engines"]:
        row["flops_ratio_to_first"] = round(row["gflops_per_object"] / ref["gflops_per_object"], 4)
        row["flops_with_front_ratio_to_first"] = round(
            row["gflops_per_object_with_front"] / ref["gflops_per_object_with_front"], 4
        )
        row["speed_ratio_to_first"] = {
            t: round(float(np.mean(row["objects_per_s"][t]) / np.mean(ref["objects_per_s"][t])), 3)
            for t in row["objects_per_s"]
        }
        row["cost_ratio_to_first"] = {t: round(1 / r, 3) for t, r in row["speed_ratio_to_first"].items()}
    res["machine"]["load_after"] = os.getloadavg()
    write_result(a.out, res)
    for row in res["engines"]:
        print(row["name"], row["views"], row["gflops_per_object_with_front"], row["cost_ratio_to_first"])


if __name__ == "__main__":
    main()
