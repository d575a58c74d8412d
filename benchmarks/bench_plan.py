"""Planning at scale: ``process-catalog --plan`` against its floor, on an N-row catalog.

Generates an N-row catalog (objid, ra, dec; uniform on the sphere, rows in random sky order -
the worst case for the split, since every input chunk then touches every partition) as Parquet
(pyarrow's default row groups) and as a FITS binary table, then for each format measures in the
same run:

* the floor: reading objid/ra/dec and computing the HEALPix order-29 index (mergerscan's
  ``healpix29``), nothing else - one process, one thread, streaming in 200 k-row pieces; measured
  before and after the plan, the smaller time kept (the ratio is then conservative);
* the whole ``process-catalog CATALOG --images EMPTY -o OUT --plan`` as a subprocess (interpreter
  start, Dask cluster start-up, scan, partitions, split): wall time, the peak of the summed RSS of
  its process tree (sampled every 0.1 s), and the number of files left under OUT/_work.

    nice .venv/bin/python benchmarks/bench_plan.py [--rows 10000000] [--formats parquet,fits]
Writes benchmarks/results/plan.json (or --out).  Needs no ../shared data; the catalogs go to a
temporary directory (about 24 bytes a row per format) that is removed afterwards.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from _common import REPO, cpu_model, result_path, write_result

PIECE = 200_000


def make_catalogs(tmp: Path, n: int, formats: list[str], seed: int = 0) -> dict:
    """The N-row catalog in each format, written in pieces (memory bounded by the piece size)."""
    import fitsio
    import pyarrow as pa
    import pyarrow.parquet as pq

    rng = np.random.default_rng(seed)
    paths = {f: tmp / f"cat.{f}" for f in formats}
    pw = fits = None
    if "parquet" in formats:
        schema = pa.schema([("objid", pa.int64()), ("ra", pa.float64()), ("dec", pa.float64())])
        pw = pq.ParquetWriter(str(paths["parquet"]), schema)
    if "fits" in formats:
        fits = fitsio.FITS(str(paths["fits"]), "rw", clobber=True)
    step = 1_000_000  # pyarrow's default row group size: what a user's file has
    for s in range(0, n, step):
        k = min(step, n - s)
        ra = rng.uniform(0, 360, k)
        dec = np.degrees(np.arcsin(rng.uniform(-1, 1, k)))
        objid = 587722981736000000 + np.arange(s, s + k, dtype=np.int64) * 7
        if pw is not None:
            pw.write_table(pa.table({"objid": objid, "ra": ra, "dec": dec}, schema=schema))
        if fits is not None:
            rec = np.zeros(k, dtype=[("objid", "i8"), ("ra", "f8"), ("dec", "f8")])
            rec["objid"], rec["ra"], rec["dec"] = objid, ra, dec
            if s == 0:
                fits.write(rec)
            else:
                fits[-1].append(rec)
    if pw is not None:
        pw.close()
    if fits is not None:
        fits.close()
    return paths


def floor(path: Path, fmt: str) -> dict:
    """Read objid/ra/dec and compute healpix29, streaming; nothing else."""
    from mergerscan.catalogs.validate import coord_status
    from mergerscan.pipeline.plan import healpix29

    t = time.perf_counter()
    rows = 0
    if fmt == "parquet":
        import pyarrow.parquet as pq

        for b in pq.ParquetFile(str(path)).iter_batches(batch_size=PIECE, columns=["objid", "ra", "dec"]):
            ra, dec = b.column(1).to_numpy(), b.column(2).to_numpy()
            healpix29(ra, dec, coord_status(ra, dec))
            rows += len(ra)
    else:
        import fitsio

        with fitsio.FITS(str(path)) as f:
            h = f[1]
            n = h.get_nrows()
            for s in range(0, n, PIECE):
                d = h.read(columns=["objid", "ra", "dec"], rows=np.arange(s, min(s + PIECE, n)))
                ra, dec = d["ra"].astype(np.float64), d["dec"].astype(np.float64)
                healpix29(ra, dec, coord_status(ra, dec))
                rows += len(ra)
    return {"seconds": round(time.perf_counter() - t, 3), "rows": rows}


def tree_rss(proc) -> int:
    import psutil

    total = 0
    try:
        for p in [proc, *proc.children(recursive=True)]:
            with contextlib.suppress(psutil.NoSuchProcess):
                total += p.memory_info().rss
    except psutil.NoSuchProcess:
        pass
    return total


def plan_run(catalog: Path, out: Path, empty: Path, extra: list[str]) -> dict:
    import psutil

    shutil.rmtree(out, ignore_errors=True)
    env = dict(os.environ, PYTHONPATH=str(REPO / "src") + os.pathsep + os.environ.get("PYTHONPATH", ""))
    cmd = [
        sys.executable,
        "-m",
        "mergerscan.pipeline.cli",
        str(catalog),
        "--images",
        str(empty),
        "-o",
        str(out),
        "--plan",
        "--no-progress",
        *extra,
    ]
    t = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    ps = psutil.Process(proc.pid)
    peak = 0
    while proc.poll() is None:
        peak = max(peak, tree_rss(ps))
        time.sleep(0.1)
    wall = time.perf_counter() - t
    stdout, stderr = proc.communicate()
    if proc.returncode:
        raise RuntimeError(f"--plan failed ({proc.returncode}): {stderr.strip()[-2000:]}")
    files = [p for p in (out / "_work").rglob("*") if p.is_file()]
    plan = json.loads((out / "_work" / "plan.json").read_text())
    return {
        "seconds": round(wall, 2),
        "peak_rss_mb": round(peak / 2**20, 1),
        "work_files": len(files),
        "work_bytes": sum(p.stat().st_size for p in files),
        "partitions": len(plan["partitions"]),
        "buckets": len(plan["split"]["buckets"]),
        "chunks": len(plan["chunks"]),
        "command": "process-catalog CATALOG --images EMPTY -o OUT --plan --no-progress " + " ".join(extra),
        "stdout": stdout.strip(),
    }


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=10_000_000)
    ap.add_argument("--formats", default="parquet,fits")
    ap.add_argument("--tmp", help="directory for the generated catalogs (default: a new temporary one)")
    ap.add_argument("--out", default=str(result_path("plan.json")))
    ap.add_argument("plan_args", nargs="*", help="extra process-catalog options (after --)")
    a = ap.parse_args()
    formats = [f for f in a.formats.split(",") if f]
    tmp = Path(tempfile.mkdtemp(prefix="bench-plan-", dir=a.tmp))
    try:
        t = time.perf_counter()
        cats = make_catalogs(tmp, a.rows, formats)
        gen = time.perf_counter() - t
        (tmp / "empty").mkdir()
        res = {
            "rows": a.rows,
            "generate_s": round(gen, 1),
            "machine": {
                "cpu": cpu_model(),
                "nproc": os.cpu_count(),
                "python": platform.python_version(),
                "loadavg_start": os.getloadavg(),
            },
            "formats": {},
        }
        for fmt in formats:
            f1 = floor(cats[fmt], fmt)
            p = plan_run(cats[fmt], tmp / f"out-{fmt}", tmp / "empty", a.plan_args)
            f2 = floor(cats[fmt], fmt)
            fl = min(f1["seconds"], f2["seconds"])
            res["formats"][fmt] = {
                "catalog_bytes": cats[fmt].stat().st_size,
                "floor_s": fl,
                "floor_runs_s": [f1["seconds"], f2["seconds"]],
                "plan": p,
                "ratio_plan_to_floor": round(p["seconds"] / fl, 2),
                "plan_rows_per_s": round(a.rows / p["seconds"]),
                "floor_rows_per_s": round(a.rows / fl),
            }
            shutil.rmtree(tmp / f"out-{fmt}", ignore_errors=True)
            print(fmt, json.dumps(res["formats"][fmt], indent=1), flush=True)
        res["machine"]["loadavg_end"] = os.getloadavg()
        write_result(a.out, res)
        print("wrote", a.out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
