"""The last stage of a run: the partitions' files -> HATS metadata, FITS table, run summary, report."""

from __future__ import annotations

import json
import time
from collections.abc import Iterable

from .. import __version__
from ..atomic import atomic_write_text
from ..catalogs.fits_write import write_fits_table
from ..catalogs.hats import join_pieces, write_hats_metadata
from ..catalogs.schema import SCORED, Status, id_output_name
from ..engines import operating, uncertainty
from ..engines.operating import OperatingPoint, operating_line
from ..run_layout import RunLayout
from ..run_summary import Failure, RunSummary, SourceSummary
from .arguments import ProcessArguments
from .embeddings import provenance, summary_entry, summary_line
from .failures import format_failures, summarize
from .plan import Plan
from .result import PartitionResult
from .resume import ResumePlan


def run_meta(args: ProcessArguments, info, op: OperatingPoint | None = None) -> dict:
    """Provenance stored in every output file (no timestamps: partitions stay byte-identical).
    The operating point (threshold, target, expected purity and completeness) is stated in full;
    the card's validation curve it was read from stays in the engine file (it is long)."""
    op = op or operating.for_engine(info, prevalence=args.prevalence)
    card = info.card.without_val_curve().to_dict()
    # --embeddings: the column's provenance (Parquet field metadata) and EMBDIM in FITS; absent without
    emb = {"embeddings": args.embeddings, "embedding": provenance(args.embeddings, info)} if args.embeddings else {}
    return {
        "domain": args.domain,
        "domain_threshold": args.domain_settings.image_threshold(info.domain),
        "domain_saturated": args.domain_settings.max_saturated_core(info.domain),
        "engine_name": info.name,
        "engine_sha256": info.sha256,
        "threshold": op.threshold,
        **op.header_meta(),
        "views": info.views,
        "p_merger_interval": uncertainty.describe(info.card, info.views),
        "mergerscan_version": __version__,
        "source": args.source.kind,
        "model_card": json.dumps(card, sort_keys=True),
        **emb,
    }


def _by_count(counts: dict) -> dict:
    return dict(sorted(counts.items(), key=lambda kv: -kv[1]))


def _add_counts(counts: Iterable[dict[str, int]]) -> dict:
    total: dict = {}
    for c in counts:
        for k, v in c.items():
            total[k] = total.get(k, 0) + v
    return total


def _write_catalog(
    args: ProcessArguments, plan: Plan, markers: list[PartitionResult], info, layout: RunLayout, op: OperatingPoint
) -> None:
    """The HATS catalog's metadata and the FITS table over every partition's file."""
    for tmp in layout.catalog_dir.rglob(".*.tmp"):  # left by tasks killed mid-write; never part of the dataset
        tmp.unlink(missing_ok=True)
    files: list = []
    pieces: dict[tuple[int, int], list] = {}
    for p, m in zip(plan.partitions, markers):  # plan order: spatial, bad coordinates last
        if not m.rows:
            continue
        if p.order >= 0 and p.nsub > 1:  # a dense pixel's pieces -> its one HATS file
            pieces.setdefault((p.order, p.pixel), []).append(layout.dataset_file(p))
            if len(pieces[(p.order, p.pixel)]) == 1:
                files.append(layout.partition_file(p.order, p.pixel))
        else:
            files.append(layout.dataset_file(p))
    for (o, px), group in pieces.items():
        join_pieces(group, layout.partition_file(o, px))
    on_sky = {(p.order, p.pixel) for p, m in zip(plan.partitions, markers) if m.rows and p.order >= 0}
    if on_sky:  # OUT/parquet is a HATS catalog (catalogs/hats.py)
        write_hats_metadata(
            layout.catalog_dir,
            sorted(on_sky),
            sum(m.rows for p, m in zip(plan.partitions, markers) if p.order >= 0),
            args.partition_rows,
            name=layout.root.name,
        )
    names = plan.output_names
    write_fits_table(files, layout.fits, run_meta(args, info, op), origins={v: k for k, v in names.items()})


def build_summary(
    args: ProcessArguments,
    plan: Plan,
    markers: list[PartitionResult],
    info,
    layout: RunLayout,
    seconds: float | None = None,
    op: OperatingPoint | None = None,
) -> RunSummary:
    """The run summary from the partitions' done markers."""
    op = op or operating.for_engine(info, prevalence=args.prevalence)
    rows = sum(m.rows for m in markers)
    status = _add_counts(m.status for m in markers)
    t0 = min((m.started for m in markers), default=time.time())
    t1 = max((m.finished for m in markers), default=t0)
    wall = seconds if seconds is not None else t1 - t0
    scored = sum(v for k, v in status.items() if k in SCORED)
    not_selected = status.get(Status.NOT_SELECTED, 0)
    out_of_domain = status.get(Status.OUT_OF_DOMAIN, 0)
    fetch_failures = _add_counts(m.fetch_failures for m in markers)
    why = summarize(markers, rows, scored, status, plan.columns.get("id"))
    return RunSummary(
        rows=rows,
        scored=scored,
        flagged=rows - scored - not_selected - out_of_domain,
        select=args.select,
        not_selected=not_selected if args.select is not None else None,
        domain=domain_applied(args, plan, info),
        out_of_domain=out_of_domain,
        beyond_image_threshold=sum(m.beyond_image_threshold for m in markers),
        domain_rules=_by_count(_add_counts(m.domain_rules for m in markers)),
        embeddings=summary_entry(args.embeddings, info),
        fetch_failures=_by_count(fetch_failures) if fetch_failures else None,
        status=_by_count(status),
        mergers=sum(m.mergers for m in markers),
        threshold=op.threshold,
        operating_point=op.to_dict(),
        partitions=len(plan.partitions),
        seconds=round(wall, 2),
        objects_per_s=round(rows / wall, 1) if wall > 0 else None,
        engine=info.name,
        engine_sha256=info.sha256,
        mergerscan_version=__version__,
        catalog=args.catalog,
        command=args.command,
        engine_path=info.path,
        source=SourceSummary(kind=args.source.kind, location=args.source.shown, options=args.source.shown_options),
        id_column=id_output_name(plan.id_kind),
        keep=list(plan.keep),
        path_column=plan.output_names.get(plan.path_column) if plan.path_column else None,
        fits=str(layout.fits),
        parquet=str(layout.catalog_dir),
        failures=[Failure(**f) for f in why["failures"]],
        scored_notes=why["scored_notes"],
        warnings=why["warnings"] + domain_warnings(plan, markers),
        retryable=why["retryable"],
        exit_status=why["exit_status"],
    )


def finalize(
    args: ProcessArguments, plan: Plan, info, seconds: float | None = None, op: OperatingPoint | None = None
) -> RunSummary:
    """Every partition scored -> the output catalog's metadata, OUT/mergers.fits, OUT/summary.json
    and (unless --no-report) OUT/report/."""
    layout = RunLayout(args.output)
    markers = ResumePlan(layout).results(plan.partitions)
    rows = sum(m.rows for m in markers)
    if rows != plan.nrows:
        raise RuntimeError(f"row count mismatch: input has {plan.nrows} rows, partitions hold {rows}")
    op = op or operating.for_engine(info, args.purity, args.completeness, args.prevalence)
    _write_catalog(args, plan, markers, info, layout, op)
    summary = build_summary(args, plan, markers, info, layout, seconds, op)
    atomic_write_text(layout.summary, summary.to_json())
    if args.report:
        try:
            from ..report import build_report

            summary.report = str(build_report(layout.root, source_location=args.source.location))
        except Exception as exc:  # the catalog is done; a report failure must not hide it
            summary.report_error = f"{type(exc).__name__}: {exc}"
    return summary


def domain_warnings(plan: Plan, markers: list[PartitionResult]) -> list[str]:
    """Catalog columns not used by the rules, and scored rows the image check could not judge."""
    out = list(plan.domain.notes)
    missing = sum(m.no_domain_score for m in markers)
    if missing:
        out.append(
            f"{missing} scored row(s) got no domain_score from the engine's backend although its card has an "
            "image check: those rows count as in the domain"
        )
    return out


def domain_applied(args: ProcessArguments, plan: Plan, info) -> dict:
    """The summary's ``domain``: the mode, the catalog rules and the image threshold applied."""
    settings = args.domain_settings
    return {
        "mode": settings.mode,
        "catalog_rules": [r.reason() for r in plan.domain.rules],
        "image_threshold": settings.image_threshold(info.domain),
        "max_saturated_core": settings.max_saturated_core(info.domain),
        "limits": dict(settings.limits),
    }


NO_COLUMN = "no catalog column decides the engine card's selection, or the card has none"


def format_domain(s: RunSummary) -> list[str]:
    """The printed summary's lines about --domain."""
    d = s.domain
    if d is None:
        return []
    if d["mode"] == "off":
        return ["  domain            off: every row scored, is_merger not limited to the training domain"]
    checks = (
        [*d["catalog_rules"]]
        + ([f"domain_score > {d['image_threshold']:.4g}"] if d.get("image_threshold") is not None else [])
        + ([f"saturated_core > {d['max_saturated_core']} px"] if d.get("max_saturated_core") is not None else [])
    )
    rules = ", ".join(f"{k} {v}" for k, v in (s.domain_rules or {}).items())
    why = [w for m, w in (("image", "the engine has no image check"), ("catalog", NO_COLUMN)) if d["mode"] in ("on", m)]
    return [
        f"  domain            {d['mode']}: " + ("; ".join(checks) if checks else f"nothing checked ({'; '.join(why)})"),
        f"  out of domain     {s.out_of_domain} not scored"
        + (f", {s.beyond_image_threshold} scored but never is_merger" if s.beyond_image_threshold else "")
        + (f" ({rules})" if rules else ""),
    ]


def format_summary(s: RunSummary) -> str:
    """The lines process-catalog prints at the end."""
    unscored = (*SCORED, Status.NOT_SELECTED, Status.OUT_OF_DOMAIN)
    flagged = ", ".join(f"{k} {v}" for k, v in s.status.items() if k not in unscored)
    lines = [
        f"process-catalog: {s.rows} rows in {s.seconds:.1f} s "
        f"({s.objects_per_s} objects/s), {s.partitions} sky partitions",
        f"  scored            {s.scored}",
        f"  flagged           {s.flagged}" + (f" ({flagged})" if s.flagged else ""),
    ]
    if s.select is not None:
        lines.append(f"  not selected      {s.not_selected} (--select {s.select}; kept, not scored)")
    lines += format_domain(s)
    if s.fetch_failures:
        lines.append(
            "  fetch failures    "
            + ", ".join(f"{k} {v}" for k, v in s.fetch_failures.items())
            + f" (leading reason: {next(iter(s.fetch_failures))}; service {s.source.location})"
        )
    if s.status.get(Status.EDGE):
        example = (s.scored_notes or {}).get(Status.EDGE)
        lines.append(
            f"  near frame edge   {s.status[Status.EDGE]} (scored; stamp partly filled with sky)"
            + (f", e.g. {example}" if example else "")
        )
    lines += [
        f"  mergers           {s.mergers} with p_merger >= {s.threshold:.4g}"
        + (" in the domain" if s.domain and s.domain["mode"] != "off" else "")
        + f" ({s.engine})",
        f"  output            {s.fits}  and  {s.parquet}/",
    ]
    if s.operating_point:
        lines.append(f"  operating point   {operating_line(s.operating_point)}")
    if s.embeddings:
        lines.append(f"  embeddings        {summary_line(s.embeddings)}")
    if s.report:
        lines.append(f"  report            {s.report}")
    if s.report_error:
        lines.append(f"  report failed     {s.report_error}")
    return "\n".join(lines + format_failures(s.to_dict()))
