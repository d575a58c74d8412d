"""A HATS catalog as input: its pixels become the plan's partitions directly (no histogram, no split).

A pixel holding more than ``--partition-rows`` rows is cut into row-number sub-partitions, as the
planner does for dense pixels.  Each scoring task reads its pixel's file itself, with only the
columns it needs (id, ra, dec, kept and --select columns).  ``input_row`` numbers the rows in
partition order (pixels in nested order, rows in file order), so it is stable across runs.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from ..catalogs.hats import HatsInput, read_pixel, sub_rows
from ..catalogs.read import CatalogError, arrow_to_pandas
from ..catalogs.schema import id_output_name, output_names
from ..catalogs.validate import check_numeric, coord_status, resolve_columns
from .plan import CatalogInspection, Partition, Plan, healpix29
from .select import mark_selected


def inspect_hats(args, named_columns, select_columns, domain_rules) -> CatalogInspection:
    """inspect_catalog for a HATS directory (reads the properties, metadata and <= 1000 ids);
    ``domain_rules(columns, sample)``: the catalog rules of --domain (inspection.py)."""
    h = HatsInput(args.catalog)
    if h.nrows == 0:
        raise CatalogError(f"{args.catalog}: catalog has no rows")
    cols = resolve_columns(
        h.columns, args.id_column, args.ra_column or h.ra_column, args.dec_column or h.dec_column, path=args.catalog
    )
    carry = [c for c in h.columns if c != h.healpix_column]  # ours is recomputed: never twice
    keep = (
        list(carry)
        if args.keep_columns == ["*"]
        else named_columns(args.keep_columns, h.columns, args.catalog, "keep_columns")
    )
    o, p = next(op for op in h.pixels if h.rows[op])
    ids = read_pixel(h.path, o, p, [cols["id"]], h.npix_suffix).column(0).slice(0, 1000).to_pandas()
    kind = "int" if pd.api.types.is_integer_dtype(ids.dtype) else "str"
    sel = select_columns(h.columns)
    if sel:  # a type error stops the run here, not in a task
        from .select import evaluate

        t = read_pixel(h.path, o, p, list(dict.fromkeys(sel.values())), h.npix_suffix).slice(0, 1000)
        evaluate(args.select, sel, arrow_to_pandas(t), args.catalog)
    return CatalogInspection(
        format="hats",
        nrows=h.nrows,
        columns=cols,
        keep=keep,
        id_kind=kind,
        chunks=[],
        hats=h,
        select_columns=sel,
        domain=domain_rules(
            h.columns, lambda cs: arrow_to_pandas(read_pixel(h.path, o, p, cs, h.npix_suffix).slice(0, 1000))
        ),
    )


def make_hats_plan(args, cat: CatalogInspection) -> Plan:
    h: HatsInput = cat.hats
    pieces = []  # (order, pixel, sub, nsub, rows), pixels in nested order
    for (o, p), n in ((op, h.rows[op]) for op in h.pixels):
        nsub = max(1, -(-n // args.partition_rows))
        pieces += [(o, p, s, nsub, len(sub_rows(n, s, nsub))) for s in range(nsub) if n]
    parts = [Partition(i, *t) for i, t in enumerate(pieces)]
    core = (cat.columns["id"], cat.columns["ra"], cat.columns["dec"])
    return Plan(
        catalog=str(h.path),
        source_catalog=args.catalog,
        nrows=h.nrows,
        columns=cat.columns,
        keep=cat.keep,
        id_kind=cat.id_kind,
        chunks=[],
        hist_order=args.hist_order,
        partitions=parts,
        select=args.select,
        select_columns=cat.select_columns,
        names=output_names([k for k in cat.keep if k not in core], id_output_name(cat.id_kind), args.optional_columns),
        domain=cat.domain,
        hats={
            "root": str(h.path),
            "npix_suffix": h.npix_suffix,
            "healpix": h.healpix_column,
            "offsets": {f"{o}/{p}": off for (o, p), off in h.offsets.items()},
        },
    )


def read_hats_partition(plan: Plan, part: Partition) -> pd.DataFrame:
    """One partition's rows, shaped like the split stage's shards (``_input_row``, ``_healpix29``)."""
    h, c = plan.hats, plan.columns
    if h is None:
        raise ValueError("read_hats_partition: the plan's input is not a HATS catalog")
    core = [c["id"], c["ra"], c["dec"]]
    hp = h["healpix"]
    rule_cols = plan.domain.columns
    cols = list(dict.fromkeys([*core, *plan.keep, *plan.select_columns.values(), *rule_cols, *([hp] if hp else [])]))
    table = read_pixel(h["root"], part.order, part.pixel, cols, h["npix_suffix"])
    offset = h["offsets"][f"{part.order}/{part.pixel}"]
    idx = sub_rows(table.num_rows, part.sub, part.nsub)
    df = arrow_to_pandas(table.take(idx), [k for k in plan.keep if k not in core])
    check_numeric(df, [c["ra"], c["dec"]], plan.source_catalog, row_offset=offset)
    ra, dec = df[c["ra"]].to_numpy(np.float64), df[c["dec"]].to_numpy(np.float64)
    valid = coord_status(ra, dec)
    hpx = df[hp].to_numpy(np.int64) if hp else healpix29(ra, dec, valid)
    df = df.assign(_input_row=offset + idx, _healpix29=np.where(valid, hpx, -1))
    if hp and hp not in plan.keep:
        df = df.drop(columns=[hp])
    return mark_selected(plan, df, offset)
