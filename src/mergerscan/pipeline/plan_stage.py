"""The plan stage of a run: scan the catalog, plan the partitions, split the rows into buckets."""

from __future__ import annotations

from ..catalogs.read import CatalogReader
from ..run_layout import RunLayout
from . import split
from .arguments import ProcessArguments
from .executor import Progress, TaskRunner
from .plan import CatalogInspection, Plan, make_partitions, stage_csv
from .resume import ResumePlan


def plan_future(client, layout: RunLayout):
    """The plan as a Dask *task* result, not scattered data: when the worker holding it dies (killed
    for memory, scancel'ed worker job), Dask recomputes it from plan.json instead of failing every
    task that needs it.  ``pure=False``: a fresh key per run (no stale plan from an earlier run)."""
    return client.submit(Plan.load, str(layout.work.plan), pure=False)


def _plan_argument(tasks: TaskRunner, layout: RunLayout):
    return plan_future(tasks.client, layout) if tasks.client is not None else Plan.load(layout.work.plan)


def make_plan(args: ProcessArguments, cat: CatalogInspection, tasks: TaskRunner, layout: RunLayout) -> Plan:
    """Scan every input chunk once (runs + histogram, :func:`split.scan_chunk`), then partitions
    and buckets.  A plan.json from an earlier (killed) run is kept as it is."""
    plan_file = layout.work.plan
    saved = ResumePlan(layout).saved_plan()
    if saved is not None:
        return saved
    if cat.format == "hats":  # no histogram pass: the pixels are the plan
        from .hats_plan import make_hats_plan

        plan = make_hats_plan(args, cat)
        plan.save(plan_file)
        return plan
    work = layout.work.dir
    path = args.catalog
    chunks = cat.chunks
    if cat.format == "csv":
        path = stage_csv(args.catalog, work, args.chunk_rows, cat.columns["id"], cat.id_kind)
        chunks = CatalogReader(path, chunk_rows=args.chunk_rows).chunk_ranges()
    select_columns = cat.select_columns
    spec = split.ScanSpec(
        catalog=path,
        source_catalog=args.catalog,
        columns=cat.columns,
        keep=cat.keep,
        hist_order=args.hist_order,
        select=args.select,
        select_columns=select_columns,
        domain=cat.domain,
    )
    hist, ranges = split.Histogram(), [None] * len(chunks)
    bar = Progress(cat.nrows, "plan: scan", args.progress, unit="rows", lazy=True)
    for r in tasks.map(
        split.scan_chunk,
        [spec] * len(chunks),
        range(len(chunks)),
        [tuple(c) for c in chunks],
        [str(work)] * len(chunks),
        progress=bar,
        weight=lambda r: r["rows"],
    ):
        hist.add(r)
        ranges[r["chunk"]] = r["range"]
    pixels, counts, n_invalid = hist.result()
    parts = make_partitions(pixels, counts, n_invalid, args.hist_order, args.partition_rows)
    plan = Plan(
        catalog=path,
        source_catalog=args.catalog,
        nrows=cat.nrows,
        columns=cat.columns,
        keep=cat.keep,
        id_kind=cat.id_kind,
        chunks=[tuple(c) for c in chunks],
        hist_order=args.hist_order,
        partitions=parts,
        select=args.select,
        select_columns=select_columns,
        domain=cat.domain,
        names=cat.names,
        split=split.plan_split(parts, ranges, max(args.chunk_rows, args.partition_rows)),
    )
    plan.save(plan_file)
    return plan


def _bucket_rows(plan: Plan, b: int) -> int:
    _, _, pid0, pid1 = plan.split["buckets"][b]
    return sum(p.rows for p in plan.partitions[pid0:pid1])


def plan_and_split(args: ProcessArguments, cat: CatalogInspection, tasks: TaskRunner, layout: RunLayout) -> Plan:
    """The plan, and every bucket of the split written (a killed split resumes where it stopped)."""
    plan = make_plan(args, cat, tasks, layout)
    if plan.hats:  # HATS input: tasks read its pixels, nothing to split
        return plan
    work = layout.work.dir
    todo = ResumePlan(layout).missing_buckets(plan)
    if todo:
        bar = Progress(plan.nrows, "plan: split", args.progress, unit="rows", lazy=True)
        bar.update(plan.nrows - sum(_bucket_rows(plan, b) for b in todo))
        pplan = _plan_argument(tasks, layout)
        for _ in tasks.map(
            split.gather_bucket,
            [pplan] * len(todo),
            todo,
            [str(work)] * len(todo),
            progress=bar,
            weight=lambda r: r,
        ):
            pass
    split.remove_runs(work)
    return plan
