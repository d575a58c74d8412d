"""Orchestration of a process-catalog run: claim -> plan -> split -> score -> finalize."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import time
from pathlib import Path

import numpy as np

from .. import __version__
from ..catalogs.columns import require_column
from ..catalogs.read import CatalogError, CatalogReader, csv_id_kind
from ..catalogs.schema import FITS_MAX_COLUMNS, INTERNAL_COLUMNS, OUTPUT_COLUMNS, SCORED, output_names
from ..catalogs.validate import resolve_columns
from ..catalogs.hats import join_pieces, partition_file, write_hats_metadata
from ..catalogs.write import write_fits_table
from ..engines import backend_precision, read_engine_info, resolve_engine_path
from .arguments import ArgumentError, ProcessArguments
from .cluster import check_gpu_workers, check_local_gpu, client_for
from .failures import format_failures, summarize
from .plan import Plan, make_partitions, stage_csv
from . import split
from .resume import check_or_claim, content_identity, read_cache, read_marker
from .slurm import GPU_TASK_RESOURCES
from .task import dataset_path, marker_path, retry_path, score_partition

log = logging.getLogger("mergerscan")


def _resolve_keep(keep: list[str], available: list[str], path: str) -> list[str]:
    return list(available) if keep == ["*"] else _named_columns(keep, available, path, "--keep-columns")


def _named_columns(names: list[str], available: list[str], path: str, flag: str) -> list[str]:
    """Input columns named (case-insensitively) by ``flag``, in the file's spelling."""
    return list(dict.fromkeys(require_column(available, k, path, flag) for k in names))


def _id_kind(reader: CatalogReader, id_col: str) -> str:
    """'int' (signed, or unsigned up to 32 bits: int64 out), 'uint' (uint64: kept as uint64) or 'str',
    from the column's declared type (not a sample: one blank far down must not change it).
    Floating-point and other ids are refused: a float64 id keeps only ~16 digits."""
    if reader.format == "csv":
        return csv_id_kind(reader.path, id_col, reader.chunk_rows)
    if reader.format == "parquet":
        import pyarrow as pa
        schema = reader._pq.schema_arrow if reader._pq is not None else reader._ds.schema
        t = schema.field(id_col).type
        t = t.value_type if pa.types.is_dictionary(t) else t
        kind = ("uint" if t == pa.uint64() else "int") if pa.types.is_integer(t) else \
            "str" if (pa.types.is_string(t) or pa.types.is_large_string(t) or pa.types.is_binary(t)
                      or pa.types.is_large_binary(t) or pa.types.is_null(t)) else str(t)
    else:
        dt = reader.read_rows(0, 1, [id_col])[id_col].dtype
        kind = ("uint" if dt.itemsize == 8 else "int") if dt.kind == "u" else "int" if dt.kind == "i" else \
            "str" if dt.kind in "OSU" else str(dt)
    if kind not in ("int", "uint", "str"):
        raise CatalogError(f"{reader.path}: id column {id_col!r} is {kind}, not integer or text (a float id "
                           "loses digits); name the real id column with --id-column")
    return kind


def _select_columns(args: ProcessArguments, available: list[str]) -> dict:
    """--select's columns, validated against the catalog at the start (one-line errors)."""
    if args.select is None:
        return {}
    from .select import SelectError, resolve
    try:
        return resolve(args.select, list(available), args.catalog)
    except SelectError as exc:
        raise ArgumentError(str(exc)) from None


def _check_select_sample(args: ProcessArguments, cat: dict, reader: CatalogReader) -> None:
    """Evaluate --select on the first rows, so a type error stops the run before any task."""
    if args.select is None:
        return
    from .select import evaluate
    cols = list(dict.fromkeys(cat["select_columns"].values()))
    evaluate(args.select, cat["select_columns"], reader.read_rows(0, min(reader.nrows, 1000), cols), args.catalog)


def inspect_catalog(args: ProcessArguments) -> dict:
    """Columns, size and id type of the input catalog (reads a few rows only)."""
    from ..catalogs.hats import is_hats
    if is_hats(args.catalog):                      # partitions are the HATS pixels (hats_plan.py)
        from .hats_plan import inspect_hats
        cat = inspect_hats(args, _named_columns, lambda cols: _select_columns(args, cols))
        if args.path_column:
            cat["columns"]["path"], = _named_columns([args.path_column], cat["hats"].columns, args.catalog,
                                                     "--path-column")
            cat["keep"] = list(dict.fromkeys([*cat["keep"], cat["columns"]["path"]]))
        return cat
    reader = CatalogReader(args.catalog, chunk_rows=args.chunk_rows)
    try:
        if reader.nrows == 0:
            raise CatalogError(f"{args.catalog}: catalog has no rows")
        cols = resolve_columns(reader.columns, args.id_column, args.ra_column, args.dec_column, path=args.catalog)
        keep = _resolve_keep(args.keep_columns, reader.columns, args.catalog)
        if args.path_column:                       # read into the partitions and carried through
            cols["path"], = _named_columns([args.path_column], reader.columns, args.catalog, "--path-column")
            keep = list(dict.fromkeys([*keep, cols["path"]]))
        core = (cols["id"], cols["ra"], cols["dec"])
        internal = [c for c in (*core, *keep) if c in INTERNAL_COLUMNS]
        if internal:
            raise CatalogError(f"{args.catalog}: column {internal[0]!r} has the name of a column mergerscan uses "
                               "internally; rename it (or do not keep it)")
        names = output_names([k for k in keep if k not in core])
        if len(OUTPUT_COLUMNS) + len(names) > FITS_MAX_COLUMNS:
            raise CatalogError(f"{args.catalog}: {len(names)} kept columns + {len(OUTPUT_COLUMNS)} output columns "
                               f"exceed the {FITS_MAX_COLUMNS} columns of a FITS table; keep fewer (--keep-columns)")
        cat = {"format": reader.format, "nrows": reader.nrows, "columns": cols, "keep": keep, "names": names,
               "id_kind": _id_kind(reader, cols["id"]), "chunks": reader.chunk_ranges(),
               "select_columns": _select_columns(args, reader.columns)}
        _check_select_sample(args, cat, reader)
        return cat
    finally:
        reader.close()


def fingerprint(args: ProcessArguments, cat: dict, engine_sha: str, views: int = 1, cache: dict | None = None) -> dict:
    """The run's identity.  ``cache`` (optional, updated in place): the input's content-hash cache."""
    identity, new = content_identity(args.catalog, read_cache(Path(args.output)))
    if cache is not None:
        cache.update(new)
    extra = {"select": args.select} if args.select is not None else {}   # absent: older runs still resume
    return {**extra, "catalog": identity, "columns": cat["columns"], "keep": cat["keep"],
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
        if not plan.hats and plan.split.get("format") != split.SPLIT_FORMAT:
            raise ArgumentError(f"{args.output}: planned by an older mergerscan (another split layout); "
                                "use --overwrite to plan it again")
        return plan
    if cat["format"] == "hats":                    # no histogram pass: the pixels are the plan
        from .hats_plan import make_hats_plan
        plan = make_hats_plan(args, cat)
        plan.save(plan_file)
        return plan
    path = args.catalog
    chunks = cat["chunks"]
    if cat["format"] == "csv":
        path = stage_csv(args.catalog, work, args.chunk_rows, cat["columns"]["id"], cat["id_kind"])
        chunks = CatalogReader(path, chunk_rows=args.chunk_rows).chunk_ranges()
    select_columns = cat.get("select_columns") or {}
    spec = {"catalog": path, "source_catalog": args.catalog, "columns": cat["columns"], "keep": cat["keep"],
            "hist_order": args.hist_order, "select": args.select, "select_columns": select_columns}
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
                hist_order=args.hist_order, partitions=parts, select=args.select, select_columns=select_columns,
                names=cat["names"], split=split.plan_split(parts, ranges, max(args.chunk_rows, args.partition_rows)))
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
    for tmp in (out / "parquet").rglob(".*.tmp"):   # left by tasks killed mid-write; never part of the dataset
        tmp.unlink(missing_ok=True)
    files, pieces = [], {}
    for p, m in zip(plan.partitions, markers):     # plan order: spatial, bad coordinates last
        if not m["rows"]:
            continue
        if p.order >= 0 and p.nsub > 1:            # a dense pixel's pieces -> its one HATS file
            pieces.setdefault((p.order, p.pixel), []).append(dataset_path(out, p))
            if len(pieces[(p.order, p.pixel)]) == 1:
                files.append(partition_file(out / "parquet", p.order, p.pixel))
        else:
            files.append(dataset_path(out, p))
    for (o, px), group in pieces.items():
        join_pieces(group, partition_file(out / "parquet", o, px))
    on_sky = {(p.order, p.pixel) for p, m in zip(plan.partitions, markers) if m["rows"] and p.order >= 0}
    if on_sky:                                      # OUT/parquet is a HATS catalog (catalogs/hats.py)
        write_hats_metadata(out / "parquet", sorted(on_sky), sum(m["rows"] for p, m in zip(plan.partitions, markers)
                                                                 if p.order >= 0), args.partition_rows,
                            name=Path(args.output).name)
    meta = run_meta(args, info)
    names = plan.names or output_names(plan.carried)
    write_fits_table(files, out / "mergers.fits", meta, origins={v: k for k, v in names.items()})
    status: dict = {}
    for m in markers:
        for k, v in m["status"].items():
            status[k] = status.get(k, 0) + v
    t0 = min((m["started"] for m in markers), default=time.time())
    t1 = max((m["finished"] for m in markers), default=t0)
    wall = seconds if seconds is not None else t1 - t0
    scored = sum(v for k, v in status.items() if k in ("ok", "edge"))
    not_selected = status.get("not_selected", 0)
    fetch_failures: dict = {}
    for m in markers:
        for k, v in m.get("fetch_failures", {}).items():
            fetch_failures[k] = fetch_failures.get(k, 0) + v
    summary = {"rows": rows, "scored": scored, "flagged": rows - scored - not_selected,
               **({"select": args.select, "not_selected": not_selected} if args.select is not None else {}),
               **({"fetch_failures": dict(sorted(fetch_failures.items(), key=lambda kv: -kv[1]))}
                  if fetch_failures else {}),
               "status": dict(sorted(status.items(), key=lambda kv: -kv[1])),
               "mergers": sum(m["mergers"] for m in markers), "threshold": info.threshold,
               "partitions": len(plan.partitions), "seconds": round(wall, 2),
               "objects_per_s": round(rows / wall, 1) if wall > 0 else None,
               "engine": info.name, "engine_sha256": info.sha256, "mergerscan_version": __version__,
               "catalog": args.catalog, "command": args.command, "engine_path": info.path,
               "source": {"kind": args.source.kind, "location": args.source.shown,
                          "options": dict(args.source.options)},
               "id_column": "objid" if plan.id_kind == "int" else "id", "keep": plan.keep,
               "path_column": names.get(plan.path_column),    # its output name: the report's cutouts use it
               "fits": str(out / "mergers.fits"), "parquet": str(out / "parquet")}
    summary.update(summarize(markers, rows, scored, status, plan.columns.get("id")))
    (out / "summary.json").write_text(json.dumps(summary, indent=1))
    if args.report:
        try:
            from ..report import build_report
            summary["report"] = str(build_report(out, source_location=args.source.location))
        except Exception as exc:  # noqa: BLE001 - the catalog is done; a report failure must not hide it
            summary["report_error"] = f"{type(exc).__name__}: {exc}"
    return summary


def format_summary(s: dict) -> str:
    lines = [f"process-catalog: {s['rows']} rows in {s['seconds']:.1f} s "
             f"({s['objects_per_s']} objects/s), {s['partitions']} sky partitions",
             f"  scored            {s['scored']}",
             f"  flagged           {s['flagged']}" + (" (" + ", ".join(
                 f"{k} {v}" for k, v in s["status"].items() if k not in (*SCORED, "not_selected")) + ")"
                 if s["flagged"] else ""),
             *([f"  not selected      {s['not_selected']} (--select {s['select']}; kept, not scored)"]
               if "select" in s else []),
             *([f"  fetch failures    " + ", ".join(f"{k} {v}" for k, v in s["fetch_failures"].items())
                + f" (leading reason: {next(iter(s['fetch_failures']))}; service {s['source']['location']})"]
               if s.get("fetch_failures") else []),
             *([f"  near frame edge   {s['status']['edge']} (scored; stamp partly filled with sky)"]
               if s["status"].get("edge") else []),
             f"  mergers           {s['mergers']} with p_merger >= {s['threshold']:.3f} ({s['engine']})",
             f"  output            {s['fits']}  and  {s['parquet']}/",
             *([f"  report            {s['report']}"] if s.get("report") else []),
             *([f"  report failed     {s['report_error']}"] if s.get("report_error") else []),
             *format_failures(s)]
    return "\n".join(lines)


def _plan_future(client, work: Path):
    """The plan as a Dask *task* result, not scattered data: when the worker holding it dies (killed
    for memory, scancel'ed worker job), Dask recomputes it from plan.json instead of failing every
    task that needs it.  ``pure=False``: a fresh key per run (no stale plan from an earlier run)."""
    return client.submit(Plan.load, str(work / "plan.json"), pure=False)


def _plan_and_split(args, cat, tasks: _Tasks, work: Path) -> Plan:
    plan = make_plan(args, cat, tasks, work)
    if plan.hats:                                  # HATS input: tasks read its pixels, nothing to split
        return plan
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
                src = args.source.low_memory()           # e.g. frames: one field in memory at a time
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
    _source_notices(args, cat["nrows"])
    out = Path(args.output)
    work = out / "_work"
    cache: dict = {}
    fp = fingerprint(args, cat, info.sha256, info.views, cache)
    protect = [p for p in (args.catalog, args.images, args.frames, args.engine) if p]
    check_or_claim(out, fp, args.overwrite, protect=protect, cache=cache)
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


def _source_notices(args: ProcessArguments, nrows: int) -> None:
    """One line naming the default image source when none was given; a hint towards --frames when
    a web service would take long (cutouts/defaults.py)."""
    import sys
    from ..cutouts.defaults import large_catalog_hint, startup_line
    if args.default_source is not None:
        print(startup_line(args.default_source), file=sys.stderr)
    if args.cutout_service and args.mode in ("all", "plan"):
        hint = large_catalog_hint(nrows, args.service_options.get("max_rate"), args.workers)
        if hint:
            print(hint, file=sys.stderr)


def _existing_plan(work: Path) -> Plan:
    if not (work / "plan.json").is_file():
        raise ArgumentError(f"{work.parent}: no plan yet; run process-catalog --plan with the same arguments first")
    return Plan.load(work / "plan.json")
