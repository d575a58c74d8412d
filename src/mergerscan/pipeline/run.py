"""Orchestration of a process-catalog run: claim -> plan -> split -> score -> finalize."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import time
from pathlib import Path

import numpy as np
import pandas as pd

from .. import __version__
from ..catalogs.read import CatalogError, CatalogReader
from ..catalogs.schema import SCORED
from ..catalogs.validate import resolve_columns
from ..catalogs.write import write_fits_table, write_metadata
from ..engines import backend_precision, read_engine_info, resolve_engine_path
from .arguments import ArgumentError, ProcessArguments
from .cluster import check_gpu_workers, check_local_gpu, client_for
from .plan import Plan, make_partitions, stage_csv
from . import split
from .resume import check_or_claim, file_identity, read_marker
from .slurm import GPU_TASK_RESOURCES
from .task import dataset_path, marker_path, retry_path, score_partition

log = logging.getLogger("mergerscan")


def _resolve_keep(keep: list[str], available: list[str], path: str) -> list[str]:
    return list(available) if keep == ["*"] else _named_columns(keep, available, path, "--keep-columns")


def _named_columns(names: list[str], available: list[str], path: str, flag: str) -> list[str]:
    """Input columns named (case-insensitively) by ``flag``, in the file's spelling."""
    lower = {c.lower(): c for c in available}
    out = []
    for k in names:
        if k.lower() not in lower:
            raise CatalogError(f"{path}: {flag} names {k!r}, which is not a column "
                               f"(columns: {', '.join(available[:12])}{' ...' if len(available) > 12 else ''})")
        out.append(lower[k.lower()])
    return list(dict.fromkeys(out))


def _id_kind(reader: CatalogReader, id_col: str) -> str:
    sample = reader.read_rows(0, min(reader.nrows, 1000), [id_col])[id_col]
    return "int" if pd.api.types.is_integer_dtype(sample.dtype) else "str"


def inspect_catalog(args: ProcessArguments) -> dict:
    """Columns, size and id type of the input catalog (reads a few rows only)."""
    reader = CatalogReader(args.catalog, chunk_rows=args.chunk_rows)
    try:
        if reader.nrows == 0:
            raise CatalogError(f"{args.catalog}: catalog has no rows")
        cols = resolve_columns(reader.columns, args.id_column, args.ra_column, args.dec_column, path=args.catalog)
        keep = _resolve_keep(args.keep_columns, reader.columns, args.catalog)
        if args.path_column:                       # read into the partitions and carried through
            cols["path"], = _named_columns([args.path_column], reader.columns, args.catalog, "--path-column")
            keep = list(dict.fromkeys([*keep, cols["path"]]))
        return {"format": reader.format, "nrows": reader.nrows, "columns": cols, "keep": keep,
                "id_kind": _id_kind(reader, cols["id"]), "chunks": reader.chunk_ranges()}
    finally:
        reader.close()


def fingerprint(args: ProcessArguments, cat: dict, engine_sha: str, views: int = 1) -> dict:
    return {"catalog": file_identity(args.catalog), "columns": cat["columns"], "keep": cat["keep"],
            "engine_sha256": engine_sha, "precision": backend_precision(args.backend), "views": views, "source": args.source.fingerprint(),
            "partition_rows": args.partition_rows, "chunk_rows": args.chunk_rows,
            "hist_order": args.hist_order, "mergerscan": __version__.split(".")[0]}


class _Progress:
    """A tqdm bar (rate and time left).  ``lazy``: shown from the first finished task on, so that
    input that fails at once gets its one-line error and no bar."""

    def __init__(self, total: int, desc: str, enabled: bool, unit: str = "obj", lazy: bool = False):
        self.bar = None
        self._args = dict(total=total, desc=desc, unit=unit, unit_scale=True, dynamic_ncols=True) \
            if enabled and total else None
        if self._args and not lazy:
            self._open()

    def _open(self):
        from tqdm.auto import tqdm
        self.bar, self._args = tqdm(**self._args), None

    def update(self, n):
        if self.bar is None and self._args and n:
            self._open()
        if self.bar is not None:
            self.bar.update(n)

    def close(self):
        if self.bar is not None:
            self.bar.close()


class _Tasks:
    """Runs the plan's tasks on the Dask cluster, or - ``--plan`` on this machine (no scheduler
    given) - on threads of this process: the plan needs no worker processes, and starting a
    cluster for it cost as long as reading the catalog's positions (~3-6 s on 2 cores)."""

    def __init__(self, client=None, threads: int = 1):
        self.client, self.threads = client, threads

    def plan_arg(self, work: Path):
        return _plan_future(self.client, work) if self.client is not None else Plan.load(work / "plan.json")

    def map(self, fn, *iterables, progress, weight):
        """Results in completion order, each dropped once read (the driver never holds all of
        them at once); never stops early on a failure.  Input errors (CatalogError) are re-raised
        as they are: they are the user's one-line message."""
        if self.client is not None:
            from distributed import as_completed
            pending = as_completed(self.client.map(fn, *iterables, pure=False, retries=2))
            cancel = lambda: self.client.cancel(list(pending.futures))   # noqa: E731
            name = lambda f: f.key                                      # noqa: E731
        else:
            from concurrent.futures import ThreadPoolExecutor, as_completed
            pool = ThreadPoolExecutor(self.threads, thread_name_prefix="mergerscan-plan")
            futs = {pool.submit(fn, *a): f"{fn.__name__}-{i}" for i, a in enumerate(zip(*iterables))}
            pending = as_completed(list(futs))
            cancel = lambda: [f.cancel() for f in futs]                 # noqa: E731
            name = futs.get
        errors = []
        try:
            for fut in pending:
                try:
                    r = fut.result()
                except CatalogError:
                    progress.close()
                    cancel()
                    raise
                except Exception as exc:  # noqa: BLE001 - reported after the rest finished
                    errors.append(f"{name(fut)}: {type(exc).__name__}: {exc}")
                    continue
                finally:
                    if self.client is not None:
                        fut.release()
                progress.update(weight(r))
                yield r
        finally:
            if self.client is None:
                pool.shutdown(wait=True, cancel_futures=True)
        progress.close()
        if errors:
            raise RuntimeError(f"{len(errors)} task(s) failed (re-run the same command to resume): {errors[0]}")


def make_plan(args: ProcessArguments, cat: dict, tasks: _Tasks, work: Path) -> Plan:
    """Scan every input chunk once (runs + histogram, :func:`split.scan_chunk`), then partitions
    and buckets.  A plan.json from an earlier (killed) run is kept as it is."""
    plan_file = work / "plan.json"
    if plan_file.is_file():
        plan = Plan.load(plan_file)
        if plan.split.get("format") != split.SPLIT_FORMAT:
            raise ArgumentError(f"{args.output}: planned by an older mergerscan (another split layout); "
                                "use --overwrite to plan it again")
        return plan
    path = args.catalog
    chunks = cat["chunks"]
    if cat["format"] == "csv":
        path = stage_csv(args.catalog, work, args.chunk_rows)
        chunks = CatalogReader(path, chunk_rows=args.chunk_rows).chunk_ranges()
    spec = {"catalog": path, "source_catalog": args.catalog, "columns": cat["columns"], "keep": cat["keep"],
            "hist_order": args.hist_order}
    hist, ranges = split.Histogram(), [None] * len(chunks)
    bar = _Progress(cat["nrows"], "plan: scan", args.progress, unit="rows", lazy=True)
    for r in tasks.map(split.scan_chunk, [spec] * len(chunks), range(len(chunks)), [tuple(c) for c in chunks],
                       [str(work)] * len(chunks), progress=bar, weight=lambda r: r["rows"]):
        hist.add(r)
        ranges[r["chunk"]] = r["range"]
    pixels, counts, n_invalid = hist.result()
    parts = make_partitions(pixels, counts, n_invalid, args.hist_order, args.partition_rows)
    plan = Plan(catalog=path, source_catalog=args.catalog, nrows=cat["nrows"], columns=cat["columns"],
                keep=cat["keep"], id_kind=cat["id_kind"], chunks=[tuple(c) for c in chunks],
                hist_order=args.hist_order, partitions=parts,
                split=split.plan_split(parts, ranges, max(args.chunk_rows, args.partition_rows)))
    plan.save(plan_file)
    return plan


def run_meta(args: ProcessArguments, info) -> dict:
    """Provenance stored in every output file (no timestamps: partitions stay byte-identical)."""
    return {"engine_name": info.name, "engine_sha256": info.sha256, "threshold": info.threshold, "views": info.views,
            "mergerscan_version": __version__, "source": args.source.kind,
            "model_card": json.dumps(info.card, sort_keys=True)}


def finalize(args: ProcessArguments, plan: Plan, info, seconds: float | None = None) -> dict:
    out = Path(args.output)
    markers = [read_marker(marker_path(out, p)) for p in plan.partitions]
    rows = sum(m["rows"] for m in markers)
    if rows != plan.nrows:
        raise RuntimeError(f"row count mismatch: input has {plan.nrows} rows, partitions hold {rows}")
    files = [dataset_path(out, p) for p, m in zip(plan.partitions, markers) if m["rows"]]
    for tmp in (out / "parquet").rglob(".*.tmp"):   # left by tasks killed mid-write; never part of the dataset
        tmp.unlink(missing_ok=True)
    write_metadata(out / "parquet", files)
    meta = run_meta(args, info)
    write_fits_table(files, out / "mergers.fits", meta)
    status: dict = {}
    for m in markers:
        for k, v in m["status"].items():
            status[k] = status.get(k, 0) + v
    t0 = min((m["started"] for m in markers), default=time.time())
    t1 = max((m["finished"] for m in markers), default=t0)
    wall = seconds if seconds is not None else t1 - t0
    scored = sum(v for k, v in status.items() if k in ("ok", "edge"))
    summary = {"rows": rows, "scored": scored, "flagged": rows - scored,
               "status": dict(sorted(status.items(), key=lambda kv: -kv[1])),
               "mergers": sum(m["mergers"] for m in markers), "threshold": info.threshold,
               "partitions": len(plan.partitions), "seconds": round(wall, 2),
               "objects_per_s": round(rows / wall, 1) if wall > 0 else None,
               "engine": info.name, "engine_sha256": info.sha256, "mergerscan_version": __version__,
               "catalog": args.catalog, "command": args.command, "engine_path": info.path,
               "source": {"kind": args.source.kind, "location": args.source.location,
                          "options": dict(args.source.options)},
               "id_column": "objid" if plan.id_kind == "int" else "id", "keep": plan.keep,
               "fits": str(out / "mergers.fits"), "parquet": str(out / "parquet")}
    (out / "summary.json").write_text(json.dumps(summary, indent=1))
    if args.report:
        try:
            from ..report import build_report
            summary["report"] = str(build_report(out))
        except Exception as exc:  # noqa: BLE001 - the catalog is done; a report failure must not hide it
            summary["report_error"] = f"{type(exc).__name__}: {exc}"
    return summary


def format_summary(s: dict) -> str:
    lines = [f"process-catalog: {s['rows']} rows in {s['seconds']:.1f} s "
             f"({s['objects_per_s']} objects/s), {s['partitions']} sky partitions",
             f"  scored            {s['scored']}",
             f"  flagged           {s['flagged']}" + (" (" + ", ".join(
                 f"{k} {v}" for k, v in s["status"].items() if k not in SCORED) + ")" if s["flagged"] else ""),
             *([f"  near frame edge   {s['status']['edge']} (scored; stamp partly filled with sky)"]
               if s["status"].get("edge") else []),
             f"  mergers           {s['mergers']} with p_merger >= {s['threshold']:.3f} ({s['engine']})",
             f"  output            {s['fits']}  and  {s['parquet']}/",
             *([f"  report            {s['report']}"] if s.get("report") else []),
             *([f"  report failed     {s['report_error']}"] if s.get("report_error") else [])]
    return "\n".join(lines)


def _plan_future(client, work: Path):
    """The plan as a Dask *task* result, not scattered data: when the worker holding it dies (killed
    for memory, scancel'ed worker job), Dask recomputes it from plan.json instead of failing every
    task that needs it.  ``pure=False``: a fresh key per run (no stale plan from an earlier run)."""
    return client.submit(Plan.load, str(work / "plan.json"), pure=False)


def _plan_and_split(args, cat, tasks: _Tasks, work: Path) -> Plan:
    plan = make_plan(args, cat, tasks, work)
    todo = split.missing_buckets(work, plan)
    if todo:
        bar = _Progress(plan.nrows, "plan: split", args.progress, unit="rows", lazy=True)
        bar.update(plan.nrows - sum(_bucket_rows(plan, b) for b in todo))
        pplan = tasks.plan_arg(work)
        for _ in tasks.map(split.gather_bucket, [pplan] * len(todo), todo, [str(work)] * len(todo),
                           progress=bar, weight=lambda r: r):
            pass
    split.remove_runs(work)
    return plan


def _bucket_rows(plan: Plan, b: int) -> int:
    _, _, pid0, pid1 = plan.split["buckets"][b]
    return sum(p.rows for p in plan.partitions[pid0:pid1])


def shard_partitions(plan: Plan, shard: tuple[int, int] | None):
    """Partitions of shard i of n (round-robin over the spatially ordered plan)."""
    if shard is None:
        return list(plan.partitions)
    i, n = shard
    return [p for p in plan.partitions if p.pid % n == i]


# A partition whose task keeps killing its worker (Dask reschedules it up to
# distributed.scheduler.allowed-failures times, then reports KilledWorker) or raises MemoryError is
# retried with these batch sizes (fraction of --batch-size; frames: one field cached at a time), then
# written with its rows flagged out_of_memory - never lost, and scored again by a later re-run.
OOM_BATCH_DIVISORS = (8, 10 ** 9)


def _listing(directory: Path) -> set:
    """File names in a directory (one listdir instead of a stat per partition: ~10^5 at survey scale)."""
    try:
        return set(os.listdir(directory))
    except FileNotFoundError:
        return set()


def _score(args, plan: Plan, client, engine_path, info, parts):
    from distributed import KilledWorker, as_completed

    out = Path(args.output)
    pplan = _plan_future(client, out / "_work")
    scored = _listing(out / "_work" / "scored")
    retry = _listing(out / "_work" / "retry")
    todo = [p for p in parts if marker_path(out, p).name not in scored or retry_path(out, p).name in retry]
    skipped = sum(p.rows for p in parts) - sum(p.rows for p in todo)
    meta = run_meta(args, info)
    # GPU backends: tasks need one unit of the GPU resource that GPU workers advertise (one per
    # thread): CPU-only workers of the same scheduler never get them (cluster.check_gpu_workers)
    resources = dict(GPU_TASK_RESOURCES) if args.gpus else None
    if args.gpus:
        check_gpu_workers(client, args)

    def submit(part, batch_size, source=args.source, flag=None, retries=2):
        return client.submit(score_partition, pplan, part, str(out), source, str(engine_path), args.backend,
                             args.threads_per_worker, batch_size, meta, flag, args.shared_batch_rows, info.views,
                             pure=False, retries=retries,
                             resources=resources)

    futs = {submit(p, args.batch_size): (p, 0) for p in todo}
    bar = _Progress(sum(p.rows for p in parts), "scoring", args.progress)
    bar.update(skipped)
    errors = []
    pending = as_completed(list(futs))
    for fut in pending:
        part, level = futs.pop(fut)
        try:
            r = fut.result()
            bar.update(r["rows"])
            if r.get("status", {}).get("out_of_memory"):
                log.warning("partition %s: %d row(s) flagged out_of_memory", part.name, r["status"]["out_of_memory"])
        except CatalogError:
            bar.close()
            client.cancel(list(futs))
            raise
        except (KilledWorker, MemoryError) as exc:
            if level < len(OOM_BATCH_DIVISORS):
                b = max(1, args.batch_size // OOM_BATCH_DIVISORS[level])
                src = args.source
                if src.kind == "frames":
                    src = type(src)(src.kind, src.location, tuple(dict(src.options, max_fields=1).items()))
                log.warning("partition %s: %s; retrying with batch size %d", part.name, type(exc).__name__, b)
                new = submit(part, b, source=src, retries=0)
            else:
                log.warning("partition %s: %s at batch size 1; its rows are flagged out_of_memory",
                            part.name, type(exc).__name__)
                new = submit(part, 1, flag="out_of_memory", retries=0)
            futs[new] = (part, level + 1)
            pending.add(new)
        except Exception as exc:  # noqa: BLE001 - reported after the rest finished
            errors.append(f"{fut.key}: {type(exc).__name__}: {exc}")
    bar.close()
    if errors:
        raise RuntimeError(f"{len(errors)} task(s) failed (re-run the same command to resume): {errors[0]}")


def run(args: ProcessArguments, client=None) -> dict:
    """Run (or resume) a process-catalog job.  ``client``: an existing Dask client (tests).

    ``args.mode``: "all" (plan, score, finalize), "plan" (plan + split only, for array jobs),
    "shard" (score partitions ``pid % n == i`` of an existing plan), "finalize" (needs every
    partition done)."""
    t_start = time.time()
    engine_path = resolve_engine_path(args.engine)
    try:
        info = read_engine_info(engine_path).with_views(args.views)
    except ValueError as exc:
        raise ArgumentError(f"--views {args.views}: {exc}") from None
    if args.gpus and client is None and args.cluster == "local" and not args.scheduler and args.mode in ("all", "shard"):
        check_local_gpu(args.backend)         # local workers would fail (or wait) on every partition
    cat = inspect_catalog(args)
    out = Path(args.output)
    work = out / "_work"
    check_or_claim(out, fingerprint(args, cat, info.sha256, info.views), args.overwrite)
    if args.mode == "finalize":
        plan = _existing_plan(work)
        missing = [p.name for p in plan.partitions if not marker_path(out, p).is_file()]
        if missing:
            raise ArgumentError(f"{out}: {len(missing)} partition(s) not scored yet (e.g. {missing[0]}); "
                                "run the missing shards first")
        return finalize(args, plan, info)
    if args.mode == "shard":
        _existing_plan(work)
    if args.mode == "plan" and client is None and args.cluster == "local" and not args.scheduler:
        plan = _plan_and_split(args, cat, _Tasks(threads=args.workers * args.threads_per_worker), work)
        return {"plan": str(work / "plan.json"), "partitions": len(plan.partitions), "rows": plan.nrows}
    ctx = contextlib.nullcontext(client) if client is not None else client_for(args)
    with ctx as client:
        plan = _plan_and_split(args, cat, _Tasks(client), work)
        if args.mode == "plan":
            return {"plan": str(work / "plan.json"), "partitions": len(plan.partitions), "rows": plan.nrows}
        _score(args, plan, client, engine_path, info, shard_partitions(plan, args.shard))
    if args.mode == "shard":
        return {"shard": list(args.shard), "partitions": len(shard_partitions(plan, args.shard)),
                "seconds": round(time.time() - t_start, 2)}
    return finalize(args, plan, info, seconds=time.time() - t_start)


def _existing_plan(work: Path) -> Plan:
    if not (work / "plan.json").is_file():
        raise ArgumentError(f"{work.parent}: no plan yet; run process-catalog --plan with the same arguments first")
    return Plan.load(work / "plan.json")
