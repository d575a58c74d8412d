"""CPU: the uint8-stamp engine path against the previous host-preprocessing path, in one run.

(a) engine level, one process, interleaved: per batch of real stamps (default engine, 160 px,
    8 views, ORT CPU): prepare_batch + 8 view calls on the host (the previous path, still
    ``Engine._stamp_logits``) vs the front inside the graph (``Engine.stamp_logits``); also the
    preprocessing alone (prepare_batch vs the ONNX front), and the static INT8 engine (symmetric
    QDQ, calibrated on 64 training stamps here) through the same front, with its score agreement.
(b) end to end: ``process-catalog --images`` on N shared stamps with the previous source tree
    (``--base-src``, e.g. from ``git archive main src``) and this one, alternately A B A B.

    git archive main src | tar -x -C /tmp/base
    nice .venv/bin/python benchmarks/bench_side_by_side.py --base-src /tmp/base/src --n-images 1500
Writes benchmarks/results/side-by-side.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

from _common import REPO, cpu_model, result_path, shared_data, write_result

SHARED = shared_data()


def rate(fn, n, budget=3.0):
    fn()
    k, t = 0, time.perf_counter()
    while time.perf_counter() - t < budget or k < 2:
        fn()
        k += 1
    return n * k / (time.perf_counter() - t)


def engine_level(threads: int, budget: float, tmp: Path) -> dict:
    import onnxruntime as ort

    from mergerscan.cutouts.preprocess import prepare_batch
    from mergerscan.engines import load_engine
    from mergerscan.engines.base import Engine
    from mergerscan.engines.front import STAMPS, front_only
    from mergerscan.training.data import decode_stamps
    from mergerscan.training.export import quantize_int8

    files = sorted((SHARED / "sdss-gz-mergers" / "images").glob("*.jpg"))
    st = decode_stamps([str(f) for f in files[::37][:256]])  # spread over the sample
    calib = decode_stamps([str(f) for f in files[5::101][:64]])
    eng = load_engine(None, threads=threads)
    so = ort.SessionOptions()
    so.intra_op_num_threads, so.inter_op_num_threads = threads, 1
    fr = ort.InferenceSession(front_only(eng.spec, 1).SerializeToString(), so, providers=["CPUExecutionProvider"])
    x = st[:32]
    res = {"threads": threads, "stamps": len(st)}
    res["preprocess_stamps_per_s"] = {"prepare_batch": [], "onnx_front": []}
    res["engine_objects_per_s"] = {"host_prepare": [], "in_graph_front": []}
    for _ in range(2):  # interleaved: A B A B
        res["preprocess_stamps_per_s"]["prepare_batch"].append(rate(lambda: prepare_batch(x, eng.spec), 32, budget))
        res["preprocess_stamps_per_s"]["onnx_front"].append(rate(lambda: fr.run(None, {STAMPS: x}), 32, budget))
        res["engine_objects_per_s"]["host_prepare"].append(rate(lambda: Engine._stamp_logits(eng, x), 32, budget))
        res["engine_objects_per_s"]["in_graph_front"].append(rate(lambda: eng.stamp_logits(x), 32, budget))
    q = quantize_int8(eng.info.path, prepare_batch(calib, eng.spec), tmp / "default-int8.onnx")
    e8 = load_engine(q, threads=threads)
    if e8.info.card.by_views is None:  # the int8 copy scored at the float engine's calibration
        e8.info = replace(e8.info, card=replace(e8.info.card, by_views=eng.info.card.by_views))
    res["engine_objects_per_s"]["int8_in_graph_front"] = [rate(lambda: e8.stamp_logits(x), 32, budget)]
    res["engine_objects_per_s"]["in_graph_front"].append(rate(lambda: eng.stamp_logits(x), 32, budget))
    p32, p8 = eng.predict(st), e8.calibrate(e8.stamp_logits(st))
    d = np.abs(p8.astype(np.float64) - p32)
    thr = eng.info.threshold
    res["int8_vs_fp32"] = {
        "max_dp": float(d.max()),
        "mean_dp": float(d.mean()),
        "label_flips": int(((p8 >= thr) != (p32 >= thr)).sum()),
        "n": len(st),
    }
    hp = eng.calibrate(Engine._stamp_logits(eng, st))
    res["front_vs_host_max_dp"] = float(np.abs(hp - p32).max())
    return res


def end_to_end(base_src: Path, n: int, tmp: Path, rounds: int) -> dict:
    import fitsio
    import pandas as pd

    from mergerscan.catalogs.read import read_table

    cat = read_table(SHARED / "sdss-gz-mergers" / "catalog.csv").iloc[:n]
    df = pd.DataFrame(
        {
            "objid": np.arange(len(cat), dtype=np.int64) + 10**18,
            "ra": cat["ra"].astype(float),
            "dec": cat["dec"].astype(float),
            "path": cat["image"].astype(str),
        }
    )
    catalog = tmp / "images.fits"
    fitsio.write(str(catalog), df.to_records(index=False), clobber=True)
    out = {"n": n, "workers": 2, "threads_per_worker": 1, "base": [], "this": []}
    for _ in range(rounds):
        for name, src in (("base", base_src), ("this", REPO / "src")):
            o = tmp / f"out-{name}"
            shutil.rmtree(o, ignore_errors=True)
            t, t_abs = time.perf_counter(), time.time()
            r = subprocess.run(
                [
                    sys.executable,
                    "-m",
                    "mergerscan.pipeline.cli",
                    str(catalog),
                    "--images",
                    str(SHARED / "sdss-gz-mergers"),
                    "--path-column",
                    "path",
                    "-o",
                    str(o),
                    "--workers",
                    "2",
                    "--threads-per-worker",
                    "1",
                    "--partition-rows",
                    "250",
                    "--no-progress",
                    "--no-report",
                ],
                capture_output=True,
                text=True,
                env=dict(os.environ, PYTHONPATH=str(src)),
            )
            wall, t_end = time.perf_counter() - t, time.time()
            if r.returncode:
                raise SystemExit(f"{name}: {r.stderr[-2000:]}")
            marks = [json.loads(f.read_text()) for f in (o / "_work" / "scored").glob("*.json")]
            t0, t1 = min(m["started"] for m in marks), max(m["finished"] for m in marks)
            out[name].append(
                {
                    "wall_s": round(wall, 2),
                    "objects_per_s_wall": round(n / wall, 2),
                    "objects_per_s_scoring": round(n / (t1 - t0), 2),
                    # where the rest of the wall time goes: before the first partition starts
                    # (imports, catalog checks, cluster, plan) and after the last one ends
                    "startup_s": round(t0 - t_abs, 2),
                    "finalize_s": round(t_end - t1, 2),
                }
            )
            print(name, out[name][-1], flush=True)
    import pyarrow.parquet as pq

    def rows(out: Path):  # every Parquet file under OUT/parquet: a flat dataset or a HATS catalog
        files = sorted((out / "parquet").rglob("*.parquet"))
        return pd.concat([pq.read_table(f).to_pandas() for f in files]).sort_values("input_row")

    a, b = rows(tmp / "out-base"), rows(tmp / "out-this")
    ok = (a["status"].to_numpy() == "ok") & (b["status"].to_numpy() == "ok")
    out["same_status"] = bool((a["status"].to_numpy() == b["status"].to_numpy()).all())
    out["max_dp"] = float(np.abs(a["p_merger"].to_numpy()[ok] - b["p_merger"].to_numpy()[ok]).max())
    mean = lambda k, key: float(np.mean([r[key] for r in out[k]]))
    out["ratio_scoring"] = mean("this", "objects_per_s_scoring") / mean("base", "objects_per_s_scoring")
    out["ratio_wall"] = mean("this", "objects_per_s_wall") / mean("base", "objects_per_s_wall")
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--base-src", required=True, help="src/ of the previous version (git archive main src)")
    ap.add_argument("--n-images", type=int, default=1500)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--budget", type=float, default=3.0)
    ap.add_argument("--skip-engine", action="store_true")
    ap.add_argument("--skip-end-to-end", action="store_true")
    ap.add_argument("--out", default=str(result_path("side-by-side.json")))
    a = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="side-by-side-"))
    res = {
        "machine": {
            "cpu": cpu_model(),
            "nproc": os.cpu_count(),
            "python": platform.python_version(),
            "load_before": os.getloadavg(),
        }
    }
    if not a.skip_engine:
        for th in (1, 2):
            res[f"engine_{th}_thread"] = engine_level(th, a.budget, tmp)
            print(json.dumps(res[f"engine_{th}_thread"]), flush=True)
    if not a.skip_end_to_end:
        res["end_to_end"] = end_to_end(Path(a.base_src), a.n_images, tmp, a.rounds)
        print(json.dumps(res["end_to_end"]))
    res["machine"]["load_after"] = os.getloadavg()
    write_result(a.out, res)
    shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
