"""The in-graph front's resample: strided convolutions against the dense matrix products they replaced.

Both are built by ``mergerscan.engines.front.front_only`` (the dense form by switching the
convolution form off), run by ONNX Runtime on real SDSS stamps, interleaved A B A B, and compared
with ``prepare_batch``.  ms per object = the median call over its stamps (one stamp resampled,
normalised, 1 view).

    .venv/bin/python benchmarks/bench_front.py --sizes 160 224 --threads 1
Writes benchmarks/results/front.json.
"""

from __future__ import annotations

import argparse
import os

import numpy as np

from _common import cpu_model, result_path, shared_data, timed, write_result

SHARED = shared_data("sdss-gz-mergers")


def ms_per_object(sess, x: np.ndarray, budget: float) -> float:
    seconds, _ = timed(lambda: sess.run(None, {"stamps": x}), budget, max_reps=10_000)  # median call
    return 1000 * seconds / len(x)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", type=int, nargs="+", default=[160, 224])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--n", type=int, default=32, help="stamps per call")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--budget", type=float, default=4.0)
    ap.add_argument("--out", default=str(result_path("front.json")))
    a = ap.parse_args()
    import onnxruntime as ort

    from mergerscan.cutouts.preprocess import PreprocessSpec, prepare_batch
    from mergerscan.engines import front
    from mergerscan.training.data import decode_stamps

    files = sorted((SHARED / "images").glob("*.jpg"))
    if not files:
        raise SystemExit(f"needs the real stamps in {SHARED}")
    x = decode_stamps([str(f) for f in files[: a.n]])
    so = ort.SessionOptions()
    so.intra_op_num_threads = a.threads
    res: dict = {
        "machine": {"cpu": cpu_model(), "nproc": os.cpu_count(), "load_before": os.getloadavg()},
        "threads": a.threads,
        "stamps_per_call": len(x),
        "sizes": [],
    }
    periodic = front._periodic_resample
    for size in a.sizes:
        spec = PreprocessSpec(input_size=size)
        sessions = {}
        for form in ("convolution", "dense"):
            front._periodic_resample = periodic if form == "convolution" else (lambda *_: None)
            model = front.front_only(spec, 1)
            sessions[form] = ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])
        front._periodic_resample = periodic
        ref = prepare_batch(x, spec)
        row = {"input_size": size, "ms_per_object": {f: [] for f in sessions}, "max_abs_vs_prepare_batch": {}}
        for f, s in sessions.items():
            row["max_abs_vs_prepare_batch"][f] = float(np.abs(s.run(None, {"stamps": x})[0] - ref).max())
        for _ in range(a.rounds):
            for f, s in sessions.items():
                row["ms_per_object"][f].append(round(ms_per_object(s, x, a.budget), 3))
        row["speed_up"] = round(
            float(np.mean(row["ms_per_object"]["dense"]) / np.mean(row["ms_per_object"]["convolution"])), 2
        )
        print(row, flush=True)
        res["sizes"].append(row)
    res["machine"]["load_after"] = os.getloadavg()
    write_result(a.out, res)


if __name__ == "__main__":
    main()
