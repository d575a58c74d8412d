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
from ..catalogs.read import CatalogError, CatalogReader, csv_id_kind
from ..catalogs.schema import FITS_MAX_COLUMNS, INTERNAL_COLUMNS, OUTPUT_COLUMNS, SCORED, output_names
from ..catalogs.validate import resolve_columns
from ..catalogs.write import write_fits_table, write_metadata
from ..engines import backend_precision, read_engine_info, resolve_engine_path
from .arguments import ArgumentError, ProcessArguments
from .cluster import client_for
from .plan import Plan, chunk_histogram, make_partitions, split_chunk, stage_csv
from .resume import check_or_claim, content_identity, read_cache, read_marker
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
        core = (cols["id"], cols["ra"], cols["dec"])
        internal = [c for c in (*core, *keep) if c in INTERNAL_COLUMNS]
        if internal:
            raise CatalogError(f"{args.catalog}: column {internal[0]!r} has the name of a column mergerscan uses "
                               "internally; rename it (or do not keep it)")
        names = output_names([k for k in keep if k not in core])
        if len(OUTPUT_COLUMNS) + len(names) > FITS_MAX_COLUMNS:
            raise CatalogError(f"{args.catalog}: {len(names)} kept columns + {len(OUTPUT_COLUMNS)} output columns "
                               f"exceed the {FITS_MAX_COLUMNS} columns of a FITS table; keep fewer (--keep-columns)")
        return {"format": reader.format, "nrows": reader.nrows, "columns": cols, "keep": keep, "names": names,
                "id_kind": _id_kind(reader, cols["id"]), "chunks": reader.chunk_ranges()}
    finally:
        reader.close()


def fingerprint(args: ProcessArguments, cat: dict, engine_sha: str, views: int = 1, cache: dict | None = None) -> dict:
    """The run's identity.  ``cache`` (optional, updated in place): the input's content-hash cache."""
    identity, new = content_identity(args.catalog, read_cache(Path(args.output)))
    if cache is not None:
        cache.update(new)
    return {"catalog": identity, "columns": cat["columns"], "keep": cat["keep"],
            "engine_sha256": engine_sha, "precision": backend_precision(args.backend), "views": views, "source": args.source.fingerprint(),
            "partition_rows": args.partition_rows, "chunk_rows": args.chunk_rows,
            "hist_order": args.hist_order, "mergerscan": __version__.split(".")[0]}


class _Progress:
    def __init__(self, total: int, desc: str, enabled: bool):
        self.bar = None
        if enabled and total:
            from tqdm.auto import tqdm
            self.bar = tqdm(total=total, desc=desc, unit="obj", unit_scale=True, dynamic_ncols=True)

    def update(self, n):
        if self.bar is not None:
            self.bar.update(n)

    def close(self):
        if self.bar is not None:
            self.bar.close()


def _drain(client, futures, progress, weight, ordered: bool = False) -> list:
    """Wait for all futures (completion order); collect results and failures, never stop early.
    Input errors (CatalogError) are re-raised as they are: they are the user's one-line message."""
    from distributed import as_completed

    results, errors = {}, []
    for fut in as_completed(futures):
        try:
            r = fut.result()
            results[fut.key] = r
            progress.update(weight(r))
        except CatalogError:
            progress.close()
            client.cancel(futures)
            raise
        except Exception as exc:  # noqa: BLE001 - reported after the rest finished
            errors.append(f"{fut.key}: {type(exc).__name__}: {exc}")
    progress.close()
    if errors:
        raise RuntimeError(f"{len(errors)} task(s) failed (re-run the same command to resume): {errors[0]}")
    return [results[f.key] for f in futures] if ordered else list(results.values())


def make_plan(args: ProcessArguments, cat: dict, client, work: Path) -> Plan:
    plan_file = work / "plan.json"
    if plan_file.is_file():
        return Plan.load(plan_file)
    path = args.catalog
    chunks = cat["chunks"]
    if cat["format"] == "csv":
        path = stage_csv(args.catalog, work, args.chunk_rows, cat["columns"]["id"], cat["id_kind"])
        chunks = CatalogReader(path, chunk_rows=args.chunk_rows).chunk_ranges()
    futs = client.map(chunk_histogram, [path] * len(chunks), [s for s, _ in chunks], [e for _, e in chunks],
                      [cat["columns"]] * len(chunks), [args.hist_order] * len(chunks),
                      [args.catalog] * len(chunks), pure=False)
    res = _drain(client, futs, _Progress(0, "plan", False), lambda r: 0, ordered=True)
    pixels = np.concatenate([r[0] for r in res]) if res else np.zeros(0, np.int64)
    counts = np.concatenate([r[1] for r in res]) if res else np.zeros(0, np.int64)
    parts = make_partitions(pixels, counts, sum(r[2] for r in res), args.hist_order, args.partition_rows)
    plan = Plan(catalog=path, source_catalog=args.catalog, nrows=cat["nrows"], columns=cat["columns"],
                keep=cat["keep"], id_kind=cat["id_kind"], chunks=[tuple(c) for c in chunks],
                hist_order=args.hist_order, partitions=parts, names=cat["names"])
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
    summary = {"rows": rows, "scored": scored, "flagged": rows - scored,
               "status": dict(sorted(status.items(), key=lambda kv: -kv[1])),
               "mergers": sum(m["mergers"] for m in markers), "threshold": info.threshold,
               "partitions": len(plan.partitions), "seconds": round(wall, 2),
               "objects_per_s": round(rows / wall, 1) if wall > 0 else None,
               "engine": info.name, "engine_sha256": info.sha256, "mergerscan_version": __version__,
               "catalog": args.catalog, "command": args.command, "engine_path": info.path,
               "source": {"kind": args.source.kind, "location": args.source.shown,
                          "options": dict(args.source.options)},
               "id_column": "objid" if plan.id_kind == "int" else "id", "keep": plan.keep,
               "fits": str(out / "mergers.fits"), "parquet": str(out / "parquet")}
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


def _plan_and_split(args, cat, client, work: Path) -> Plan:
    plan = make_plan(args, cat, client, work)
    todo = list(range(len(plan.chunks)))
    pplan = _plan_future(client, work)
    futs = client.map(split_chunk, [pplan] * len(todo), todo, [str(work)] * len(todo), pure=False, retries=2)
    _drain(client, futs, _Progress(0, "split", False), lambda r: r)
    return plan


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
    # GPU backends: tasks need the GPU resource that GPU workers advertise (GPU=1): CPU-only workers
    # of the same scheduler never get them, a GPU worker runs up to its threads' worth at once
    resources = {"GPU": 1.0 / max(1, args.threads_per_worker)} if args.gpus else None

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
    cat = inspect_catalog(args)
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
    ctx = contextlib.nullcontext(client) if client is not None else client_for(args)
    with ctx as client:
        plan = _plan_and_split(args, cat, client, work)
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
