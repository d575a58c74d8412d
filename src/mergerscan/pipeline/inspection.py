"""What the input catalog holds: columns, size, id type - read from a few rows, before any task."""

from __future__ import annotations

from dataclasses import replace

from ..catalogs.columns import require_column
from ..catalogs.read import CatalogError, CatalogReader, csv_id_kind
from ..catalogs.schema import FITS_MAX_COLUMNS, INTERNAL_COLUMNS, OUTPUT_COLUMNS, id_output_name, output_names
from ..catalogs.validate import resolve_columns
from ..engines.domain import EngineDomain
from .arguments import ProcessArguments
from .domain import CatalogRules
from .plan import CatalogInspection
from .run_options import literal


def named_columns(names: list[str], available: list[str], path: str, argument: str) -> list[str]:
    """Input columns named by ``argument`` (exact spelling first, else the one case-insensitive match)."""
    return list(dict.fromkeys(require_column(available, k, path, argument) for k in names))


def _resolve_keep(keep: list[str], available: list[str], path: str) -> list[str]:
    return list(available) if keep == ["*"] else named_columns(keep, available, path, "keep_columns")


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
        kind = (
            ("uint" if t == pa.uint64() else "int")
            if pa.types.is_integer(t)
            else "str"
            if (
                pa.types.is_string(t)
                or pa.types.is_large_string(t)
                or pa.types.is_binary(t)
                or pa.types.is_large_binary(t)
                or pa.types.is_null(t)
            )
            else str(t)
        )
    else:
        dt = reader.read_rows(0, 1, [id_col])[id_col].dtype
        kind = (
            ("uint" if dt.itemsize == 8 else "int")
            if dt.kind == "u"
            else "int"
            if dt.kind == "i"
            else "str"
            if dt.kind in "OSU"
            else str(dt)
        )
    if kind not in ("int", "uint", "str"):
        raise CatalogError(
            f"{literal(reader.path)}: id column {literal(repr(id_col))} is {literal(kind)}, not integer or text "
            "(a float id loses digits); name the real id column with {id_column}",
            "id_column",
        )
    return kind


def _select_columns(args: ProcessArguments, available: list[str]) -> dict:
    """--select's columns, validated against the catalog at the start (one-line errors)."""
    if args.select is None:
        return {}
    from .select import resolve

    return resolve(args.select, list(available), args.catalog)


def _check_select_sample(args: ProcessArguments, cat: CatalogInspection, reader: CatalogReader) -> None:
    """Evaluate --select on the first rows, so a type error stops the run before any task."""
    if args.select is None:
        return
    from .select import evaluate

    cols = list(dict.fromkeys(cat.select_columns.values()))
    evaluate(args.select, cat.select_columns, reader.read_rows(0, min(reader.nrows, 1000), cols), args.catalog)


def _domain_rules(args: ProcessArguments, domain: EngineDomain | None, available: list[str], sample) -> CatalogRules:
    """The catalog rules of --domain for this catalog (domain.py)."""
    from .domain import resolve_rules

    if domain is None:
        return CatalogRules()
    return resolve_rules(args.domain_settings, domain, list(available), sample, args.catalog)


def inspect_catalog(args: ProcessArguments, domain: EngineDomain | None = None) -> CatalogInspection:
    """Columns, size and id type of the input catalog (reads a few rows only); ``domain``: the
    engine's training domain, whose catalog rules are resolved against the columns here."""
    from ..catalogs.hats import is_hats

    if is_hats(args.catalog):  # partitions are the HATS pixels (hats_plan.py)
        from .hats_plan import inspect_hats

        cat = inspect_hats(
            args,
            named_columns,
            lambda cols: _select_columns(args, cols),
            lambda cols, sample: _domain_rules(args, domain, cols, sample),
        )
        if args.path_column:
            (path,) = named_columns([args.path_column], cat.hats.columns, args.catalog, "path_column")
            cat = replace(cat, columns={**cat.columns, "path": path}, keep=list(dict.fromkeys([*cat.keep, path])))
        return cat
    reader = CatalogReader(args.catalog, chunk_rows=args.chunk_rows)
    try:
        if reader.nrows == 0:
            raise CatalogError(f"{args.catalog}: catalog has no rows")
        cols = resolve_columns(reader.columns, args.id_column, args.ra_column, args.dec_column, path=args.catalog)
        keep = _resolve_keep(args.keep_columns, reader.columns, args.catalog)
        if args.path_column:  # read into the partitions and carried through
            (cols["path"],) = named_columns([args.path_column], reader.columns, args.catalog, "path_column")
            keep = list(dict.fromkeys([*keep, cols["path"]]))
        core = (cols["id"], cols["ra"], cols["dec"])
        internal = [c for c in (*core, *keep) if c in INTERNAL_COLUMNS]
        if internal:
            raise CatalogError(
                f"{args.catalog}: column {internal[0]!r} has the name of a column mergerscan uses "
                "internally; rename it (or do not keep it)"
            )
        id_kind = _id_kind(reader, cols["id"])
        names = output_names([k for k in keep if k not in core], id_output_name(id_kind), args.optional_columns)
        if len(OUTPUT_COLUMNS) + len(names) > FITS_MAX_COLUMNS:
            raise CatalogError(
                f"{literal(args.catalog)}: {len(names)} kept columns + {len(OUTPUT_COLUMNS)} output columns "
                f"exceed the {FITS_MAX_COLUMNS} columns of a FITS table; keep fewer ({{keep_columns}})",
                "keep_columns",
            )
        cat = CatalogInspection(
            format=reader.format,
            nrows=reader.nrows,
            columns=cols,
            keep=keep,
            names=names,
            id_kind=id_kind,
            chunks=reader.chunk_ranges(),
            select_columns=_select_columns(args, reader.columns),
            domain=_domain_rules(
                args, domain, reader.columns, lambda cs: reader.read_rows(0, min(reader.nrows, 1000), cs)
            ),
        )
        reader.check_columns([*core, *keep, *cat.select_columns.values()])
        _check_select_sample(args, cat, reader)
        return cat
    finally:
        reader.close()
