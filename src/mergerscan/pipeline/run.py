"""Orchestration of a process-catalog run: claim -> plan -> split -> score -> finalize.

The stages live in modules of their own: inspection (the input catalog), fingerprint (the run's
identity), plan_stage (scan, plan, split), task (one partition), finalize (catalog metadata, FITS
table, summary, report).  What is left to do and why (the claim of OUT, plan reuse, the partitions
still to score, the transient-status re-runs, the out-of-memory ladder) is resume.ResumePlan's.
"""

from __future__ import annotations

import contextlib
import logging
import sys
import time

from ..catalogs.read import CatalogError
from ..catalogs.schema import Status
from ..engines import operating, read_engine_info, resolve_engine_path
from ..run_layout import RunLayout
from ..run_summary import RunSummary
from .arguments import ArgumentError, ProcessArguments
from .cluster import check_gpu_workers, check_local_gpu, client_for
from .embeddings import provenance as embedding_provenance
from .executor import Progress, TaskRunner
from .finalize import finalize, format_summary, run_meta
from .fingerprint import fingerprint
from .inspection import inspect_catalog
from .plan import CatalogInspection, Partition, Plan
from .plan_stage import plan_and_split, plan_future
from .resume import RETRY, ResumePlan, Todo, after_out_of_memory
from .run_options import literal
from .slurm import GPU_TASK_RESOURCES
from .task import PartitionTask, score_partition

__all__ = ["format_summary", "run", "shard_partitions"]

log = logging.getLogger("mergerscan")


def shard_partitions(plan: Plan, shard: tuple[int, int] | None) -> list[Partition]:
    """Partitions of shard i of n (round-robin over the spatially ordered plan)."""
    if shard is None:
        return list(plan.partitions)
    i, n = shard
    return [p for p in plan.partitions if p.pid % n == i]


def _first_task(args: ProcessArguments, layout: RunLayout, engine_path, info, op) -> PartitionTask:
    """A partition's first attempt: the run's settings (the OOM ladder varies them, resume.py)."""
    return PartitionTask(
        output=str(layout.root),
        source=args.source,
        engine_path=str(engine_path),
        backend=args.backend,
        threads=args.threads_per_worker,
        batch_size=args.batch_size,
        run_meta=run_meta(args, info, op),
        shared_batch=args.shared_batch_rows,
        views=info.views,
        threshold=op.threshold,
        image_threshold=args.domain_settings.image_threshold(info.domain),
        max_saturated_core=args.domain_settings.max_saturated_core(info.domain),
        embeddings=args.embeddings,
    )


def _log_todo(todo: list[Todo], parts: list[Partition]) -> None:
    """What a resumed run still does, and why (at INFO: the progress bar counts the rest as done)."""
    if len(todo) < len(parts):
        log.info("%d of %d partition(s) already scored", len(parts) - len(todo), len(parts))
    for t in [t for t in todo if t.why == RETRY][:3]:
        log.info("partition %s: %s (%s)", t.part.name, t.why, ", ".join(f"{k} {v}" for k, v in t.statuses.items()))


def _score(args: ProcessArguments, client, engine_path, info, op, parts: list[Partition]) -> None:
    """Score the partitions of ``parts`` that the resume plan says remain; a partition out of
    memory climbs the OOM ladder (resume.after_out_of_memory).  Other task errors are reported
    after the rest finished; a CatalogError stops the run at once."""
    from distributed import KilledWorker, as_completed

    layout = RunLayout(args.output)
    pplan = plan_future(client, layout)
    todo = ResumePlan(layout).remaining(parts)
    _log_todo(todo, parts)
    first = _first_task(args, layout, engine_path, info, op)
    # GPU backends: tasks need one unit of the GPU resource that GPU workers advertise (one per
    # thread): CPU-only workers of the same scheduler never get them (cluster.check_gpu_workers)
    resources = dict(GPU_TASK_RESOURCES) if args.gpus else None
    if args.gpus:
        check_gpu_workers(client, args)

    def submit(part: Partition, task: PartitionTask, retries: int = 2):
        return client.submit(score_partition, pplan, part, task, pure=False, retries=retries, resources=resources)

    futs = {submit(t.part, first): (t.part, 0) for t in todo}
    bar = Progress(sum(p.rows for p in parts), "scoring", args.progress)
    bar.update(sum(p.rows for p in parts) - sum(t.part.rows for t in todo))
    errors = []
    pending = as_completed(list(futs))
    for fut in pending:
        part, level = futs.pop(fut)
        try:
            r = fut.result()
            bar.update(r.rows)
            if r.status.get(Status.OUT_OF_MEMORY):
                log.warning("partition %s: %d row(s) flagged out_of_memory", part.name, r.status[Status.OUT_OF_MEMORY])
        except CatalogError:
            bar.close()
            client.cancel(list(futs))
            raise
        except (KilledWorker, MemoryError) as exc:
            task, what = after_out_of_memory(first, level)
            log.warning("partition %s: %s%s", part.name, type(exc).__name__, what)
            new = submit(part, task, retries=0)
            futs[new] = (part, level + 1)
            pending.add(new)
        except Exception as exc:  # reported after the rest finished
            errors.append(f"{fut.key}: {type(exc).__name__}: {exc}")
    bar.close()
    if errors:
        raise RuntimeError(f"{len(errors)} task(s) failed (re-run the same command to resume): {errors[0]}")


def _import_in_background(module: str) -> None:
    """Import ``module`` on a daemon thread; a later ``import`` waits for it (the import lock)
    and an error there is raised again by the real import, where it is reported."""
    import importlib
    import threading

    def quietly() -> None:
        with contextlib.suppress(Exception):
            importlib.import_module(module)

    threading.Thread(target=quietly, name=f"import-{module}", daemon=True).start()


def _planned(layout: RunLayout, plan: Plan) -> dict:
    return {"plan": str(layout.work.plan), "partitions": len(plan.partitions), "rows": plan.nrows}


def _engine(args: ProcessArguments):
    """The engine file, its card (with --views) and the operating point: every refusal before
    anything is written."""
    engine_path = resolve_engine_path(args.engine)
    try:
        info = read_engine_info(engine_path).with_views(args.views)
    except ValueError as exc:  # not an engine file, or views its card cannot give
        if args.views is None:
            raise ArgumentError(f"{{engine}}: {literal(exc)}", "engine") from None
        raise ArgumentError(f"{{views}} {literal(args.views)}: {literal(exc)}", "views") from None
    # a target the card's curve cannot give: an OperatingPointError naming it
    op = operating.for_engine(info, args.purity, args.completeness, args.prevalence)
    if args.embeddings:  # an engine without a representation block, or N > k: refused here
        embedding_provenance(args.embeddings, info)
    return engine_path, info, op


def _claim(args: ProcessArguments, cat: CatalogInspection, info, op) -> ResumePlan:
    """The run directory claimed for this run's fingerprint (resume.py): what is left to do there."""
    resume = ResumePlan(RunLayout(args.output))
    cache: dict = {}
    fp = fingerprint(args, cat, info.sha256, info.views, cache, op)
    protect = [p for p in (args.catalog, args.images, args.frames, args.engine) if p]
    resume.claim(fp, args.overwrite, protect=protect, cache=cache)
    return resume


def _finalize_only(args: ProcessArguments, resume: ResumePlan, info, op) -> RunSummary:
    """--finalize: every partition of the plan must be scored already (by the shards)."""
    plan = resume.existing_plan()
    missing = resume.unscored(plan.partitions)
    if missing:
        raise ArgumentError(
            f"{literal(resume.layout.root)}: {len(missing)} partition(s) not scored yet (e.g. {literal(missing[0].name)}); "
            "run the missing shards first",
            "mode",
        )
    return finalize(args, plan, info, op=op)


def run(args: ProcessArguments, client=None) -> RunSummary | dict:
    """Run (or resume) a process-catalog job.  ``client``: an existing Dask client (tests).

    ``args.mode``: "all" (plan, score, finalize), "plan" (plan + split only, for array jobs),
    "shard" (score partitions ``pid % n == i`` of an existing plan), "finalize" (needs every
    partition done).  Returns the run summary ("all", "finalize"), else a small dict of what
    was done ("plan": plan, partitions, rows; "shard": shard, partitions, seconds)."""
    args = args.resolved()  # absolute paths, the default source, threads: the caller's object is left as given
    t_start = time.time()
    if args.mode == "all":
        _import_in_background("hats")  # finalize's HATS writers: ~3 s of imports, overlapped with scoring
    engine_path, info, op = _engine(args)
    local = client is None and args.cluster == "local" and not args.scheduler
    if args.gpus and local and args.mode in ("all", "shard"):
        check_local_gpu(args.backend)  # local workers would fail (or wait) on every partition
    cat = inspect_catalog(args, info.domain)
    _source_notices(args, cat.nrows)
    resume = _claim(args, cat, info, op)
    layout = resume.layout
    if args.mode == "finalize":
        return _finalize_only(args, resume, info, op)
    if args.mode == "shard":
        resume.existing_plan()
    if args.mode == "plan" and local:
        plan = plan_and_split(args, cat, TaskRunner(threads=args.workers * args.threads_per_worker), layout)
        return _planned(layout, plan)
    ctx = contextlib.nullcontext(client) if client is not None else client_for(args)
    with ctx as client:
        plan = plan_and_split(args, cat, TaskRunner(client), layout)
        if args.mode == "plan":
            return _planned(layout, plan)
        _score(args, client, engine_path, info, op, shard_partitions(plan, args.shard))
    if args.mode == "shard" and args.shard is not None:
        return {
            "shard": list(args.shard),
            "partitions": len(shard_partitions(plan, args.shard)),
            "seconds": round(time.time() - t_start, 2),
        }
    return finalize(args, plan, info, seconds=time.time() - t_start, op=op)


def compute_node_network_note(args: ProcessArguments) -> str | None:
    """The line for a source that ``needs_network`` when its rows are fetched on SLURM compute
    nodes (``--cluster slurm``/``slurm-runner``, or the array jobs' ``--plan``/``--shard``), which
    on many clusters have no outbound network: every row would end fetch_failed, hours later."""
    src = args.source
    if not src.source_class.needs_network:
        return None
    if args.cluster == "local" and args.mode not in ("plan", "shard"):
        return None
    return (
        f"process-catalog: note: the image source ({src.kind} {src.shown}) is read over the network from "
        "the SLURM compute nodes; where they have no outbound network every row ends fetch_failed (a re-run "
        "retries those rows): check that a compute node reaches it (srun curl -sI URL), or use --images/"
        "--frames on a shared filesystem"
    )


def _source_notices(args: ProcessArguments, nrows: int) -> None:
    """One line naming the default image source when none was given; one when its rows are fetched
    over the network on SLURM compute nodes (:func:`compute_node_network_note`); a hint towards
    --frames when a web service would take long (cutouts/defaults.py)."""
    from ..cutouts.defaults import large_catalog_hint, startup_line

    if args.default_source is not None:
        print(startup_line(args.default_source), file=sys.stderr)
    if note := compute_node_network_note(args):
        print(note, file=sys.stderr)
    if args.cutout_service and args.mode in ("all", "plan"):
        hint = large_catalog_hint(nrows, args.service.max_rate, args.workers)
        if hint:
            print(hint, file=sys.stderr)
