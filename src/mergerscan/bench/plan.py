"""``mergerscan bench plan``: planning at survey scale, ``process-catalog --plan`` against its floor.

An N-row catalog (objid, ra, dec uniform on the sphere, rows in random sky order: the worst case
for the split, every input chunk touches every partition) is written as Parquet and/or FITS in a
temporary folder (about 24 bytes a row per format, removed afterwards).  Per format, in one run:

* the floor: read objid/ra/dec and compute the HEALPix order-29 index, streaming in 200k-row
  pieces, one process; measured before and after the plan, the smaller kept;
* the whole ``process-catalog CATALOG --images EMPTY -o OUT --plan`` as a child process
  (interpreter, Dask cluster start-up, scan, partitions, split): wall seconds, the peak summed
  RSS of its process tree (sampled every 0.1 s), partitions, buckets and files left in OUT/_work.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .common import machine

PIECE = 200_000
FORMATS = ("parquet", "fits")


@dataclass(frozen=True)
class PlanBench:
    rows: int = 1_000_000
    formats: tuple[str, ...] = FORMATS
    threads: int = 1  # threads of the planning worker
    tmp: str | None = None  # where the catalogs go (default: a new temporary folder)
    extra: tuple[str, ...] = ()  # more process-catalog options


def sky_pieces(n: int, seed: int = 0):
    """(objid, ra, dec) in pieces of a million rows (pyarrow's default row group)."""
    rng = np.random.default_rng(seed)
    for s in range(0, n, 1_000_000):
        k = min(1_000_000, n - s)
        ra = rng.uniform(0, 360, k)
        dec = np.degrees(np.arcsin(rng.uniform(-1, 1, k)))
        yield 587722981736000000 + np.arange(s, s + k, dtype=np.int64) * 7, ra, dec


def write_parquet(path: Path, n: int) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    schema = pa.schema([("objid", pa.int64()), ("ra", pa.float64()), ("dec", pa.float64())])
    with pq.ParquetWriter(str(path), schema) as w:
        for objid, ra, dec in sky_pieces(n):
            w.write_table(pa.table({"objid": objid, "ra": ra, "dec": dec}, schema=schema))


def write_fits(path: Path, n: int) -> None:
    import fitsio

    with fitsio.FITS(str(path), "rw", clobber=True) as f:
        for objid, ra, dec in sky_pieces(n):
            rec = np.zeros(len(ra), dtype=[("objid", "i8"), ("ra", "f8"), ("dec", "f8")])
            rec["objid"], rec["ra"], rec["dec"] = objid, ra, dec
            if len(f) < 2:
                f.write(rec)
            else:
                f[-1].append(rec)


def read_pieces(path: Path, fmt: str):
    """(ra, dec) in PIECE-row pieces, the columns the plan reads."""
    if fmt == "parquet":
        import pyarrow.parquet as pq

        for b in pq.ParquetFile(str(path)).iter_batches(batch_size=PIECE, columns=["objid", "ra", "dec"]):
            yield b.column(1).to_numpy(), b.column(2).to_numpy()
        return
    import fitsio

    with fitsio.FITS(str(path)) as f:
        n = f[1].get_nrows()
        for s in range(0, n, PIECE):
            d = f[1].read(columns=["objid", "ra", "dec"], rows=np.arange(s, min(s + PIECE, n)))
            yield d["ra"].astype(np.float64), d["dec"].astype(np.float64)


def floor_seconds(path: Path, fmt: str) -> float:
    """Read objid/ra/dec and compute healpix29; nothing else."""
    from ..catalogs.validate import coord_status
    from ..pipeline.plan import healpix29

    t = time.perf_counter()
    for ra, dec in read_pieces(path, fmt):
        healpix29(ra, dec, coord_status(ra, dec))
    return round(time.perf_counter() - t, 3)


def tree_rss(proc) -> int:
    import psutil

    total = 0
    with contextlib.suppress(psutil.NoSuchProcess):
        for p in [proc, *proc.children(recursive=True)]:
            with contextlib.suppress(psutil.NoSuchProcess):
                total += p.memory_info().rss
    return total


def plan_command(catalog: Path, out: Path, empty: Path, cfg: PlanBench) -> list[str]:
    return [
        *("-m", "mergerscan.pipeline.cli", str(catalog), "--images", str(empty), "-o", str(out)),
        *("--plan", "--no-progress", "--workers", "1", "--threads-per-worker", str(cfg.threads), *cfg.extra),
    ]


def plan_run(catalog: Path, out: Path, empty: Path, cfg: PlanBench) -> dict:
    import psutil

    args = plan_command(catalog, out, empty, cfg)
    t = time.perf_counter()
    proc = subprocess.Popen([sys.executable, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    ps, peak = psutil.Process(proc.pid), 0
    while proc.poll() is None:
        peak = max(peak, tree_rss(ps))
        time.sleep(0.1)
    wall = time.perf_counter() - t
    _, stderr = proc.communicate()
    if proc.returncode:
        raise RuntimeError(f"process-catalog --plan exited {proc.returncode}: {stderr.strip()[-500:]}")
    files = [p for p in (out / "_work").rglob("*") if p.is_file()]
    plan = json.loads((out / "_work" / "plan.json").read_text())
    return {
        "seconds": round(wall, 2),
        "peak_rss_mb": round(peak / 2**20, 1),
        "work_files": len(files),
        "partitions": len(plan["partitions"]),
        "buckets": len(plan["split"]["buckets"]),
        "command": "process-catalog " + " ".join(args[2:]),
    }


def one_format(tmp: Path, fmt: str, cfg: PlanBench) -> dict:
    cat = tmp / f"cat.{fmt}"
    (write_parquet if fmt == "parquet" else write_fits)(cat, cfg.rows)
    before = floor_seconds(cat, fmt)
    plan = plan_run(cat, tmp / f"out-{fmt}", tmp / "empty", cfg)
    fl = min(before, floor_seconds(cat, fmt))
    shutil.rmtree(tmp / f"out-{fmt}", ignore_errors=True)
    return {
        "catalog_bytes": cat.stat().st_size,
        "floor_s": fl,
        "plan": plan,
        "ratio_plan_to_floor": round(plan["seconds"] / fl, 2) if fl > 0 else None,
        "plan_rows_per_s": round(cfg.rows / plan["seconds"]),
    }


def run_plan_bench(cfg: PlanBench) -> dict:
    """The document ``mergerscan bench plan`` writes."""
    bad = sorted(set(cfg.formats) - set(FORMATS))
    if bad or not cfg.formats:
        raise ValueError(f"--formats {','.join(cfg.formats)}: choose from {', '.join(FORMATS)}")
    if cfg.rows < 1:
        raise ValueError(f"--rows {cfg.rows}: at least 1")
    doc: dict = {"bench": "plan", "rows": cfg.rows, "machine": machine(), "formats": {}}
    tmp = Path(tempfile.mkdtemp(prefix="mergerscan-bench-plan-", dir=cfg.tmp))
    try:
        (tmp / "empty").mkdir()
        for fmt in cfg.formats:
            doc["formats"][fmt] = one_format(tmp, fmt, cfg)
            print(f"bench plan: {fmt} {json.dumps(doc['formats'][fmt])}", file=sys.stderr, flush=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return doc
