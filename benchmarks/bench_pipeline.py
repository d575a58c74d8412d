"""(iv) End-to-end process-catalog throughput with 1 and 2 Dask workers.

Two inputs: the 9,520 shared SDSS stamps (--images) and objects detected in the 6 shared SDSS
fields (--frames, frames read + decompressed + cut + composited inside the run).  For each,
objects/s over the whole command (cluster start-up included) and over the scoring phase (first
partition start to last partition end, from the done markers).

    .venv/bin/python benchmarks/bench_pipeline.py [--n-images 9520]
Writes benchmarks/results/pipeline.json.  Needs ../shared/data.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import tempfile
import time
from pathlib import Path

import fitsio
import numpy as np
import pandas as pd

from _common import cpu_model, result_path, shared_data, write_result

SHARED = shared_data()


def images_catalog(tmp: Path, n: int) -> Path:
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
    p = tmp / "images.fits"
    fitsio.write(str(p), df.to_records(index=False), clobber=True)
    return p


def frames_catalog(tmp: Path) -> Path:
    from mergerscan.cutouts.detect import detect_sources

    det = np.concatenate([detect_sources(f) for f in sorted((SHARED / "sdss-frames").glob("frame-r-*.fits.bz2"))])
    df = pd.DataFrame({"objid": np.arange(len(det), dtype=np.int64) + 10**18, "ra": det[:, 0], "dec": det[:, 1]})
    p = tmp / "frames.fits"
    fitsio.write(str(p), df.to_records(index=False), clobber=True)
    return p


def one(catalog: Path, out: Path, workers: int, **source) -> dict:
    from mergerscan.pipeline.arguments import ProcessArguments
    from mergerscan.pipeline.run import run

    shutil.rmtree(out, ignore_errors=True)
    t = time.perf_counter()
    s = run(
        ProcessArguments(
            catalog=str(catalog),
            output=str(out),
            workers=workers,
            threads_per_worker=max(1, (os.cpu_count() or 2) // workers),
            progress=False,
            partition_rows=1000,
            command="bench",
            keep_columns=["path"] if "images" in source else [],
            **source,
        )
    )
    wall = time.perf_counter() - t
    marks = [json.loads(f.read_text()) for f in (out / "_work" / "scored").glob("*.json")]
    t0, t1 = min(m["started"] for m in marks), max(m["finished"] for m in marks)
    return {
        "workers": workers,
        "rows": s["rows"],
        "scored": s["scored"],
        "partitions": s["partitions"],
        "wall_s": round(wall, 2),
        "objects_per_s_wall": round(s["rows"] / wall, 1),
        "scoring_s": round(t1 - t0, 2),
        "objects_per_s_scoring": round(s["rows"] / (t1 - t0), 1),
        "fetch_s": round(sum(m["fetch_seconds"] for m in marks), 2),
        "infer_s": round(sum(m["infer_seconds"] for m in marks), 2),
    }


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--n-images", type=int, default=9520)
    ap.add_argument("--out", default=str(result_path("pipeline.json")))
    a = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="bench-pipeline-"))
    res = {
        "machine": {"nproc": os.cpu_count(), "python": platform.python_version(), "cpu": cpu_model()},
        "images": [],
        "frames": [],
    }
    cat_i, cat_f = images_catalog(tmp, a.n_images), frames_catalog(tmp)
    for w in (1, 2):
        res["images"].append(one(cat_i, tmp / f"oi{w}", w, images=str(SHARED / "sdss-gz-mergers")))
        print("images", res["images"][-1], flush=True)
        res["frames"].append(one(cat_f, tmp / f"of{w}", w, frames=str(SHARED / "sdss-frames")))
        print("frames", res["frames"][-1], flush=True)
    write_result(a.out, res)
    shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
