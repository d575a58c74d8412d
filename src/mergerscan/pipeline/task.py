"""The per-partition task: rows -> stamps -> p_merger -> one Parquet file + done marker.

A pure function of (the partition's rows in the split, the image source, the engine): writing it twice
gives the same bytes.  Image fetching for batch k+1 overlaps inference on batch k.
"""

from __future__ import annotations

import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pandas as pd

from ..catalogs.schema import SCORED, STATUS, TRANSIENT
from ..catalogs.validate import flag_duplicates
from ..catalogs.hats import partition_file
from ..catalogs.write import write_partition
from ..cutouts.sources import SourceConfig, open_source
from ..engines import load_engine
from .failures import coord_range, note
from ..engines.errors import StickyDeviceError, is_out_of_memory, is_sticky, release_device_memory
from .plan import Partition, Plan
from .resume import done, mark_done, read_marker
from .split import read_partition

_ENGINES: dict = {}
_ENGINES_LOCK = threading.Lock()


def worker_engine(path: str | None, backend: str, threads: int, shared_batch: int = 0, views: int | None = None):
    """One engine per worker process (loading a session per partition would waste seconds).
    ``shared_batch`` > 0: the partitions this worker runs at once share it through a
    :class:`SharedBatchEngine` that merges their batches up to that many rows (GPU backends)."""
    key = (path, backend, threads, shared_batch, views)
    with _ENGINES_LOCK:
        if key not in _ENGINES:
            engine = load_engine(path, backend=backend, threads=threads, views=views)
            if shared_batch:
                from ..engines.batching import SharedBatchEngine
                engine = SharedBatchEngine(engine, batch=shared_batch)
            _ENGINES[key] = engine
        return _ENGINES[key]


def device_failure(engine, exc: BaseException):
    """A sticky CUDA error: this process's device context is unusable, so every later partition
    here would fail too.  Inside a Dask worker, end the process (its nanny starts a fresh one and
    the scheduler reruns its partitions elsewhere or there); outside one, raise."""
    import logging
    import sys

    msg = f"mergerscan: sticky device error in {engine.backend}, this worker process must be replaced: " \
          f"{type(exc).__name__}: {str(exc)[:300]}"
    with _ENGINES_LOCK:
        for k in [k for k, v in _ENGINES.items() if v is engine]:
            del _ENGINES[k]
    try:
        from distributed import get_worker
        get_worker()
    except (ImportError, ValueError):
        raise StickyDeviceError(msg) from exc
    logging.getLogger("mergerscan").error(msg)
    print(msg, file=sys.stderr, flush=True)
    os._exit(70)          # the nanny restarts the worker; its tasks are rescheduled


def dataset_path(output: Path, part: Partition) -> Path:
    """The file a partition task writes: its pixel's file in the output HATS catalog, or, for one
    row-number piece of a dense pixel, a piece that finalize joins into the pixel's one file."""
    if part.order >= 0 and part.nsub > 1:
        return Path(output) / "_work" / "pieces" / f"part-{part.pid:06d}.parquet"
    return partition_file(Path(output) / "parquet", part.order, part.pixel, part.sub)


def marker_path(output: Path, part: Partition) -> Path:
    return Path(output) / "_work" / "scored" / f"part-{part.pid:06d}.json"


def _text_id(v):
    if v is None or (isinstance(v, float) and np.isnan(v)) or v is pd.NA:
        return None
    return v.decode("utf-8", "replace") if isinstance(v, bytes) else str(v)


def output_ids(ids: pd.Series, id_kind: str):
    """The id column exactly as it went in: int64 / uint64 (nullable where the input has nulls,
    never via float64) or text (nulls stay null, never the string 'None')."""
    if id_kind in ("int", "uint"):
        dtype = "Int64" if id_kind == "int" else "UInt64"
        return pd.array(ids, dtype=dtype) if ids.hasnans or isinstance(ids.dtype, pd.api.extensions.ExtensionDtype) \
            else ids.to_numpy(np.int64 if id_kind == "int" else np.uint64)
    return np.array([_text_id(v) for v in ids.to_numpy(object)], dtype=object)


def missing_ids(ids: pd.Series) -> np.ndarray:
    """True where the id is null/NaN or blank text (flagged ``no_id``)."""
    values = ids.to_numpy(object)
    return np.array([_text_id(v) is None or not _text_id(v).strip() for v in values], bool)


def output_table(df: pd.DataFrame, plan: Plan, p: np.ndarray, status: np.ndarray, threshold: float) -> pd.DataFrame:
    from ..catalogs.schema import output_names
    c = plan.columns
    out = {("objid" if plan.id_kind in ("int", "uint") else "id"): output_ids(df[c["id"]], plan.id_kind),
           "ra": df[c["ra"]].to_numpy(np.float64), "dec": df[c["dec"]].to_numpy(np.float64),
           "p_merger": p.astype(np.float32),
           "is_merger": np.nan_to_num(p, nan=-1.0) >= threshold,
           "status": status.astype(object),
           "input_row": df["_input_row"].to_numpy(np.int64),
           "_healpix_29": df["_healpix29"].to_numpy(np.int64)}
    names = plan.names or output_names(plan.carried)    # plans written before the names were stored
    for k in plan.carried:
        col = df[k]   # nullable (extension) dtypes stay as they are: one column type in every partition
        out[names[k]] = col.array if isinstance(col.dtype, pd.api.extensions.ExtensionDtype) else col.to_numpy()
    return pd.DataFrame(out)


def retry_path(output: Path, part: Partition) -> Path:
    """Present while a partition's done marker records rows whose failure may be transient
    (``TRANSIENT``: fetch_failed, no_image, out_of_memory): a re-run fetches and scores those
    rows again and keeps every other row of the partition as it was."""
    return Path(output) / "_work" / "retry" / f"part-{part.pid:06d}"


def _previous(output: Path, part: Partition, df: pd.DataFrame):
    """(status, p_merger, examples) of the partition as written by an earlier run, aligned with
    ``df``; None when there is nothing usable (then every row is done again)."""
    import pyarrow.parquet as pq

    try:
        old = pq.read_table(dataset_path(output, part), columns=["input_row", "status", "p_merger"])
        examples = read_marker(marker_path(output, part)).get("examples") or {}
    except (OSError, ValueError, KeyError):
        return None
    rows = old.column("input_row").to_numpy()
    if len(rows) != len(df) or not np.array_equal(rows, df["_input_row"].to_numpy()):
        return None
    return (old.column("status").to_numpy(zero_copy_only=False).astype(object),
            old.column("p_merger").to_numpy(zero_copy_only=False).astype(np.float32), examples)


def _inject_fault(part: Partition, batch_size: int):
    """Fault injection for the fault tests only (no effect unless MERGERSCAN_INJECT_FAULT is set):
    ``oom:PID:MINBATCH`` makes partition PID really allocate memory (64 MiB steps, up to 16 GiB)
    while its batch size is >= MINBATCH, until the Dask nanny kills the worker for memory;
    ``memoryerror:PID:MINBATCH`` raises MemoryError instead; ``sleep:PID:SECONDS`` slows partition
    PID (-1: every partition) down, so that a kill reliably lands mid-run on a fast machine."""
    spec = os.environ.get("MERGERSCAN_INJECT_FAULT")
    if not spec:
        return
    kind, pid, arg = spec.split(":")
    if kind == "sleep":
        if int(pid) in (-1, part.pid):
            time.sleep(float(arg))
        return
    if int(pid) != part.pid or batch_size < int(arg):
        return
    if kind == "memoryerror":
        raise MemoryError(f"injected: partition {part.pid} at batch size {batch_size}")
    hog = []
    for _ in range(256):
        hog.append(np.ones(8 * 2 ** 20))       # 64 MiB, touched
        time.sleep(0.02)
    raise MemoryError(f"injected: partition {part.pid} allocated 16 GiB and was not killed")


def score_partition(plan: Plan, part: Partition, output: str, source: SourceConfig, engine_path: str | None,
                    backend: str, threads: int, batch_size: int, run_meta: dict,
                    flag_status: str | None = None, shared_batch: int = 0, views: int | None = None) -> dict:
    """Task: score one sky partition.  Returns its summary (also stored in the done marker).

    Memory: a batch that raises MemoryError (or CUDA out of memory: engines/errors.py) is retried
    in halves, down to single rows; a row that
    still fails is flagged ``out_of_memory``.  ``flag_status`` (set by the run after the worker
    running this partition was killed repeatedly, e.g. for memory): write the partition without
    fetching or scoring, every row not otherwise flagged gets that status, and a retry marker makes
    a later re-run score it again."""
    output = Path(output)
    marker = marker_path(output, part)
    retry = retry_path(output, part)
    if done(marker) and not retry.exists():
        import json
        return json.loads(marker.read_text())
    rerun = done(marker)                     # a retry: only the rows whose failure may be transient
    t0 = time.time()
    engine = worker_engine(engine_path, backend, threads, shared_batch, views)
    if plan.hats:                                  # HATS input: the task reads its pixel itself
        from .hats_plan import read_hats_partition
        df = read_hats_partition(plan, part)
    else:
        df = read_partition(output / "_work", plan, part, [plan.columns["id"], *plan.carried])  # ints never via float64
    n = len(df)
    c = plan.columns
    status = np.full(n, "", dtype=object)
    valid = df["_healpix29"].to_numpy() >= 0 if n else np.zeros(0, bool)
    status[~valid] = "bad_coords"
    no_id = missing_ids(df[c["id"]]) if n else np.zeros(0, bool)
    status[no_id & valid] = "no_id"
    ids = df[c["id"]].astype(str).to_numpy() if n else np.zeros(0, object)
    dup = flag_duplicates(df[c["id"]] if n else ids) & valid & ~no_id   # missing ids are never duplicates
    status[dup] = "duplicate_id"
    if "_selected" in df:                          # --select: the rest is kept, not fetched or scored
        status[(status == "") & ~df["_selected"].to_numpy(bool)] = "not_selected"
    examples: dict = {}
    inrow = df["_input_row"].to_numpy() if n else np.zeros(0, np.int64)
    for i in np.flatnonzero(~valid)[:1]:
        note(examples, "bad_coords", f"row {inrow[i]} (id {ids[i]}): ra={df[c['ra']].iloc[i]!r}, "
                                     f"dec={df[c['dec']].iloc[i]!r}")
    for i in np.flatnonzero(dup)[:1]:
        note(examples, "duplicate_id", f"row {inrow[i]} (id {ids[i]}): the same id appeared earlier in this "
                                       "sky partition")
    p = np.full(n, np.nan, np.float32)
    if rerun and n and (prev := _previous(output, part, df)) is not None:
        keep = (status == "") & ~np.isin(prev[0], TRANSIENT)     # ok and lasting failures stay as they are
        status[keep], p[keep] = prev[0][keep], prev[1][keep]
        for k, v in prev[2].items():
            if k not in TRANSIENT:
                note(examples, k, v)
    todo = np.flatnonzero(status == "")
    if flag_status is not None:
        status[todo] = flag_status
        for i in todo[:1]:
            note(examples, flag_status, f"row {inrow[i]} (id {ids[i]}): the worker scoring this partition was "
                                        "killed repeatedly (memory), even with the smallest batches")
        todo = todo[:0]
    elif n:
        _inject_fault(part, batch_size)
        # spatial order (nested HEALPix): consecutive batches share survey frames, so a frame source's
        # small per-partition frame cache is reused instead of re-reading frames for every batch
        todo = todo[np.argsort(df["_healpix29"].to_numpy()[todo], kind="stable")]
    rows = pd.DataFrame({"id": ids, "ra": df[c["ra"]].to_numpy(np.float64) if n else [],
                         "dec": df[c["dec"]].to_numpy(np.float64) if n else []})
    path_col = plan.path_column
    if path_col and source.source_class.reads_path_column:  # else files are named by the id
        rows["path"] = df[path_col].astype(object).where(df[path_col].notna(), "").astype(str).to_numpy() \
            if n else []                                     # empty: DIR/<id>.* instead
    batches = [todo[i:i + batch_size] for i in range(0, len(todo), batch_size)]
    t_fetch = t_infer = 0.0
    failures: dict = {}
    if batches:
        src = open_source(source, engine.spec)
        try:
            def fetch(idx):
                t = time.time()
                stamps, st = src.fetch(rows.iloc[idx].reset_index(drop=True))
                return stamps, st, time.time() - t

            def score(idx, fetched=None):
                """Fetch (unless prefetched) and score rows ``idx``; on MemoryError, in halves."""
                nonlocal t_fetch, t_infer
                try:
                    stamps, st, dt = fetched if fetched is not None else fetch(idx)
                    t_fetch += dt
                    status[idx] = st
                    ok = np.isin(st, SCORED)
                    t = time.time()
                    try:
                        p[idx[ok]] = engine.predict(stamps[ok])
                    except MemoryError:
                        raise
                    except Exception as e:  # noqa: BLE001 - one bad batch must not lose the partition
                        if is_out_of_memory(e):       # CUDA OOM is a RuntimeError: retry in halves too
                            release_device_memory()
                            raise MemoryError(f"{type(e).__name__}: {str(e)[:200]}") from e
                        if is_sticky(e):
                            device_failure(engine, e)
                        status[idx[ok]] = "inference_failed"
                        note(examples, "inference_failed", f"{int(ok.sum())} row(s) from id {ids[idx[ok][0]]}: "
                                                           f"{type(e).__name__}: {e}")
                    t_infer += time.time() - t
                except MemoryError:
                    stamps = fetched = None
                    p[idx] = np.nan
                    if len(idx) == 1:
                        status[idx] = "out_of_memory"
                        note(examples, "out_of_memory", f"row {inrow[idx[0]]} (id {ids[idx[0]]}): MemoryError "
                                                        "even for this row alone")
                        return
                    h = len(idx) // 2
                    score(idx[:h])
                    score(idx[h:])

            with ThreadPoolExecutor(1) as pool:   # prefetch the next batch while inferring
                fut = pool.submit(fetch, batches[0])
                for k, idx in enumerate(batches):
                    try:
                        fetched = fut.result()
                    except MemoryError:
                        fetched = None            # fetched again (in halves) by score()
                    if k + 1 < len(batches):
                        fut = pool.submit(fetch, batches[k + 1])
                    score(idx, fetched)
                    fetched = None
        finally:
            for k, v in (getattr(src, "examples", None) or {}).items():
                note(examples, k, v)
            src.close()
        failures = dict(getattr(src, "stats", {}).get("failures", {}))
    unknown = set(status) - set(STATUS)
    if unknown:
        raise RuntimeError(f"image source returned unknown status {sorted(unknown)}")
    table = output_table(df, plan, p, status, engine.info.threshold) if n else None
    counts = pd.Series(status).value_counts().to_dict() if n else {}
    if table is not None:
        write_partition(table, dataset_path(output, part), run_meta)
    info = {"pid": part.pid, "name": part.name, "rows": n, "status": {k: int(v) for k, v in counts.items()},
            "mergers": int(np.sum(p >= engine.info.threshold)), "seconds": round(time.time() - t0, 3),
            "fetch_seconds": round(t_fetch, 3), "infer_seconds": round(t_infer, 3), "batch_size": batch_size,
            "finished": time.time(), "started": t0, "file": str(dataset_path(output, part).relative_to(output))
            if n else None,
            "examples": {k: v for k, v in sorted(examples.items()) if counts.get(k)},
            "coords": coord_range(df[c["ra"]].to_numpy(np.float64), df[c["dec"]].to_numpy(np.float64)) if n else None}
    if failures:                                   # why a service failed rows (the summary names the leading one)
        info["fetch_failures"] = {str(k): int(v) for k, v in failures.items()}
    transient = {k: int(counts[k]) for k in TRANSIENT if counts.get(k)}
    if transient:
        info["retry"] = True
        mark_done(retry, {"status": transient, "rows": sum(transient.values())})
    mark_done(marker, info)
    if not info.get("retry"):
        retry.unlink(missing_ok=True)
    return info
