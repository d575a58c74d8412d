"""CPU cost per object of the image-level domain check: today's default engine (``predict``, no
representation block) against the same engine with the block (``score``: p_merger + domain_score
+ embedding from one graph call), side by side in one run on the same real SDSS stamps, ONNX
Runtime CPU, interleaved A B A B so that machine drift hits both alike.

Both the process CPU time (what a cluster bills; ORT's threads included) and the wall time per
object are reported; on a shared machine the CPU time is the steadier of the two.

    .venv/bin/python benchmarks/bench_domain_cost.py BEFORE.onnx [AFTER.onnx] --threads 2
(BEFORE: e.g. ``git show <commit>:src/mergerscan/data/default.onnx > before.onnx``; AFTER: the
packaged default.)  Writes benchmarks/results/domain-cost.json.
"""

from __future__ import annotations

import argparse
import platform
import time

import numpy as np

from _common import cpu_model, result_path, shared_data, write_result


def per_object(fn, x: np.ndarray) -> tuple[float, float]:
    """(process CPU seconds, wall seconds) per object of one call on ``x``."""
    c, w = time.process_time(), time.perf_counter()
    fn(x)
    return (time.process_time() - c) / len(x), (time.perf_counter() - w) / len(x)


def main():
    from mergerscan.engines import default_engine_path, load_engine
    from mergerscan.training.data import decode_stamps

    ap = argparse.ArgumentParser()
    ap.add_argument("before")
    ap.add_argument("after", nargs="?", default=str(default_engine_path()))
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--n", type=int, default=96, help="stamps per call")
    ap.add_argument("--rounds", type=int, default=8)
    ap.add_argument("--out", default=str(result_path("domain-cost.json")))
    a = ap.parse_args()
    images = sorted((shared_data("sdss-gz-mergers") / "images").glob("*.jpg"))[: a.n]
    x = np.ascontiguousarray(decode_stamps([str(p) for p in images]))
    before, after = load_engine(a.before, threads=a.threads), load_engine(a.after, threads=a.threads)
    if before.has_representation or not after.has_representation:
        raise SystemExit("BEFORE must be an engine without the block, AFTER one with it")
    runs = {"before": lambda s: before.predict(s), "after": lambda s: after.score(s)}
    for fn in runs.values():
        fn(x[:8])  # warm-up: sessions and fronts built
    t: dict[str, list] = {k: [] for k in runs}
    for _ in range(a.rounds):
        for k, fn in runs.items():
            t[k].append(per_object(fn, x))
    med = {k: np.median(np.array(v), axis=0) for k, v in t.items()}
    dp = float(np.max(np.abs(before.predict(x) - after.score(x).p_merger)))
    res = {
        "cpu": cpu_model(),
        "machine": f"{platform.machine()}, shared with other jobs (load varies)",
        "threads": a.threads,
        "stamps_per_call": len(x),
        "rounds": a.rounds,
        "cpu_s_per_object": {k: float(v[0]) for k, v in med.items()},
        "wall_s_per_object": {k: float(v[1]) for k, v in med.items()},
        "cpu_ratio_after_over_before": float(med["after"][0] / med["before"][0]),
        "wall_ratio_after_over_before": float(med["after"][1] / med["before"][1]),
        "max_abs_dp": dp,
    }
    write_result(a.out, res)
    print(res)


if __name__ == "__main__":
    main()
