"""Scoring a table held in memory: a pandas frame (``mergerscan.score``) or one partition of an
LSDB catalog (``mergerscan.score_catalog``).  The table becomes one partition's rows, shaped like
the split stage's shards, and goes through :func:`~.score_rows.score_rows`, the step the
partition task runs: no Dask, no file written.  Errors are :class:`InvalidArgument` (a
ValueError) naming the argument in Python terms.
"""

from __future__ import annotations

import numbers
import types
import typing
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ..argument_error import ArgumentError
from ..catalogs.columns import AmbiguousColumn, brief, find_column
from ..catalogs.read import CatalogError
from ..catalogs.schema import INTERNAL_COLUMNS, id_output_name, output_names
from ..catalogs.validate import DEC_ALIASES, ID_ALIASES, RA_ALIASES, check_numeric, coord_status
from ..cutouts.sources import SourceConfig
from .domain import CatalogRules, DomainSettings, mark_domain, resolve_rules
from .engine_cache import worker_engine
from .plan import Plan, healpix29
from .rows import Scores, output_table
from .score_rows import ScoreSettings, score_rows

__all__ = [
    "EngineRef",
    "InvalidArgument",
    "TableColumns",
    "column_name",
    "column_names",
    "count",
    "domain_rules",
    "fraction",
    "in_python_terms",
    "of_type",
    "pairs",
    "plain_columns",
    "score_lsdb_partition",
    "score_settings",
    "score_table",
    "source_config",
    "table_plan",
]

SOURCE_ARGUMENTS = ("images", "frames", "service", "source")


class InvalidArgument(ValueError):
    """A bad argument of a library call; ``argument`` names it, the message is one line."""

    def __init__(self, argument: str, message: str):
        super().__init__(f"{argument}: {message}")
        self.argument = argument


def in_python_terms(exc: ArgumentError) -> ValueError:
    """The error a library call raises for ``exc``: an :class:`InvalidArgument` naming the
    argument (its template worded in Python terms), ``catalog`` for a problem with the catalog's
    content; any other error is a bug and is returned as it is."""
    if exc.argument is not None:
        return InvalidArgument(exc.argument, exc.render())
    return InvalidArgument("catalog", str(exc)) if isinstance(exc, CatalogError) else exc


@dataclass(frozen=True)
class TableColumns:
    """Which columns of the table the caller named (None: found by the usual aliases)."""

    id: str | None = None
    ra: str | None = None
    dec: str | None = None
    keep: tuple[str, ...] = ()  # ("*",) keeps every column
    path: str | None = None  # stamp file names, for an images directory

    @classmethod
    def given(cls, id_column, ra_column, dec_column, keep_columns, path_column=None) -> TableColumns:
        """The caller's keywords, checked: a name is text (an int, a frame's int column label, as
        text); ``keep_columns`` a list of names, one name, or None (none)."""
        return cls(
            column_name("id_column", id_column),
            column_name("ra_column", ra_column),
            column_name("dec_column", dec_column),
            column_names("keep_columns", keep_columns),
            column_name("path_column", path_column),
        )


# ---------------------------------------------------------------- typed checks of keywords
def count(argument: str, value: Any, minimum: int = 1) -> int:
    """A whole number >= ``minimum`` (a bool or a float is refused, not rounded)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise InvalidArgument(argument, f"{value!r}: give a whole number (an int), not {type(value).__name__}")
    if value < minimum:
        raise InvalidArgument(argument, f"{value}: give at least {minimum}")
    return int(value)


def fraction(argument: str, value: Any) -> float | None:
    """A number or None; its range is the operating point's check (engines/operating.py)."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise InvalidArgument(argument, f"{value!r}: give a number, not {type(value).__name__}")
    return float(value)


def column_name(argument: str, value: Any) -> str | None:
    """A column's name as text (None: not given)."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (str, numbers.Integral)):
        raise InvalidArgument(argument, f"give a column name, not {type(value).__name__}")
    return str(value)


def column_names(argument: str, value: Any) -> tuple[str, ...]:
    """Column names: a list/tuple of names, one name, or None (none)."""
    if value is None:
        return ()
    if isinstance(value, (str, numbers.Integral)):
        value = [value]
    if not isinstance(value, (list, tuple, pd.Index, np.ndarray)):
        raise InvalidArgument(argument, f"give a list of column names, not {type(value).__name__}")
    return tuple(column_name(argument, v) or "" for v in value)


def of_type(argument: str, value: Any, hint: Any) -> Any:
    """``value`` checked against a ProcessArguments field's annotation where it is a plain type
    (int, float, str, bool, a list of names, each maybe None); its range is the field's check."""
    union = typing.get_origin(hint) in (typing.Union, types.UnionType)
    kinds = [k for k in (typing.get_args(hint) if union else (hint,)) if k is not type(None)]
    if value is None and (kinds == [list[str]] or len(kinds) < len(typing.get_args(hint) if union else (hint,))):
        return [] if kinds == [list[str]] else None
    if kinds == [list[str]]:
        return list(column_names(argument, value))
    if kinds == [tuple]:
        return pairs(argument, value)
    if len(kinds) != 1 or kinds[0] not in (int, float, str, bool):
        return value  # a structured field (a source, a mapping, pairs): its own check
    kind = kinds[0]
    numeric = isinstance(value, numbers.Integral if kind is int else numbers.Real) and not isinstance(value, bool)
    if kind in (int, float) and numeric:
        return kind(value) if type(value).__module__ == "numpy" else value
    if kind in (str, bool) and isinstance(value, kind):
        return value
    words = {int: "a whole number (an int)", float: "a number", str: "text", bool: "True or False"}[kind]
    raise InvalidArgument(argument, f"{value!r}: give {words}, not {type(value).__name__}")


def pairs(argument: str, value: Any) -> tuple:
    """``{key: value}`` or ``[(key, value), ...]`` as ((key, value), ...)."""
    items = list(value.items()) if isinstance(value, dict) else value
    if not isinstance(items, (list, tuple)) or not all(isinstance(p, (list, tuple)) and len(p) == 2 for p in items):
        raise InvalidArgument(argument, f"give {{key: value}} or (key, value) pairs, not {type(value).__name__}")
    return tuple(tuple(p) for p in items)


def plain_columns(frame: pd.DataFrame, argument: str = "table") -> pd.DataFrame:
    """``frame`` with its column labels as text (a frame's int labels become "0", "1"...); columns
    that are a MultiIndex, or two columns of one name, are refused (a name must find one column)."""
    if isinstance(frame.columns, pd.MultiIndex):
        raise InvalidArgument(argument, "its columns are a MultiIndex; flatten them to one name each first")
    names = [str(c) for c in frame.columns]
    twice = next((n for i, n in enumerate(names) if n in names[:i]), None)
    if twice is not None:
        raise InvalidArgument(argument, f"two columns are named {twice!r}; rename one first")
    if all(isinstance(c, str) for c in frame.columns):
        return frame
    return frame.set_axis(names, axis=1)


@dataclass(frozen=True)
class EngineRef:
    """An engine as a worker loads it (picklable; one engine per process: engine_cache)."""

    path: str
    backend: str = "onnxruntime"
    views: int | None = None
    threads: int = 1

    def load(self):
        return worker_engine(self.path, self.backend, self.threads, 0, self.views)

    def info(self):
        """The engine file's spec and card at these views, without loading the engine."""
        from ..engines import read_engine_info

        return read_engine_info(self.path).with_views(self.views)


def _find(available: list[str], role: str, given: str | None, aliases: tuple[str, ...]) -> str:
    argument = f"{role}_column"
    try:
        found = (
            find_column(available, given)
            if given
            else next((f for a in aliases if (f := find_column(available, a))), None)
        )
    except AmbiguousColumn as exc:
        raise InvalidArgument(argument, f"{', '.join(exc.matches)} all match; name one exactly") from None
    if found is None:
        looked = f"{given!r} is not a column" if given else f"no column named {', '.join(aliases)} (any case)"
        raise InvalidArgument(argument, f"{looked}; the table has {brief(available) or 'no columns'}")
    return found


def _named(available: list[str], names, argument: str) -> list[str]:
    out = []
    for name in names:
        found = find_column(available, str(name))
        if found is None:
            raise InvalidArgument(
                argument, f"{name!r} is not a column; the table has {brief(available) or 'no columns'}"
            )
        out.append(found)
    return list(dict.fromkeys(out))


def id_kind(values: pd.Series) -> str:
    """'int', 'uint' (uint64) or 'str', as process-catalog decides it; a float id is refused."""
    dt = values.dtype
    if pd.api.types.is_integer_dtype(dt):
        return "uint" if pd.api.types.is_unsigned_integer_dtype(dt) and dt.itemsize == 8 else "int"
    if pd.api.types.is_object_dtype(dt) or pd.api.types.is_string_dtype(dt):
        return "str"
    why = " (a float id loses digits)" if pd.api.types.is_float_dtype(dt) else ""
    raise InvalidArgument("id_column", f"{values.name!r} is {dt}, not integer or text{why}")


def table_plan(
    available: list[str],
    ids: Callable[[str], pd.Series],
    columns: TableColumns,
    domain_rules: Callable[[list[str]], CatalogRules],
    label: str = "table",
    optional: tuple[str, ...] = (),
) -> Plan:
    """The plan of a table scored as one partition: its columns, id type, kept columns and the
    catalog rules of --domain (``domain_rules(columns)``).  ``ids(name)``: the id column's values."""
    available = [str(c) for c in available]
    cols = {
        "id": _find(available, "id", columns.id, ID_ALIASES),
        "ra": _find(available, "ra", columns.ra, RA_ALIASES),
        "dec": _find(available, "dec", columns.dec, DEC_ALIASES),
    }
    if len(set(cols.values())) < 3:
        raise InvalidArgument("id_column", f"the same column is used twice for id/ra/dec ({cols})")
    keep = list(available) if list(columns.keep) == ["*"] else _named(available, columns.keep, "keep_columns")
    if columns.path:
        (cols["path"],) = _named(available, [columns.path], "path_column")
        keep = list(dict.fromkeys([*keep, cols["path"]]))
    core = (cols["id"], cols["ra"], cols["dec"])
    internal = [c for c in (*core, *keep) if c in INTERNAL_COLUMNS]
    if internal:
        raise InvalidArgument("table", f"column {internal[0]!r} has the name of a column mergerscan uses internally")
    kind = id_kind(ids(cols["id"]))
    carried = [k for k in keep if k not in core]
    return Plan(
        catalog=label,
        source_catalog=label,
        nrows=0,
        columns=cols,
        keep=keep,
        id_kind=kind,
        chunks=[],
        hist_order=0,
        names=output_names(carried, id_output_name(kind), optional),
        domain=domain_rules(available),
    )


def table_rows(df: pd.DataFrame, plan: Plan, label: str = "table") -> pd.DataFrame:
    """The table as one partition's rows: the plan's columns (ra/dec as float64) plus
    ``_input_row`` (the row's position), ``_healpix29`` and ``_domain`` (the catalog rules)."""
    c = plan.columns
    needed = list(dict.fromkeys([c["id"], c["ra"], c["dec"], *plan.keep, *_rule_columns(plan)]))
    rows = pd.DataFrame({k: df[k].reset_index(drop=True) for k in needed})
    try:
        check_numeric(rows, [c["ra"], c["dec"]], label)
    except CatalogError as exc:
        raise InvalidArgument("ra_column" if repr(c["ra"]) in str(exc) else "dec_column", str(exc)) from None
    ra, dec = rows[c["ra"]].to_numpy(np.float64), rows[c["dec"]].to_numpy(np.float64)
    rows["_input_row"] = np.arange(len(rows), dtype=np.int64)
    rows["_healpix29"] = healpix29(ra, dec, coord_status(ra, dec))
    return mark_domain(plan.domain, rows)


def _rule_columns(plan: Plan) -> list[str]:
    return plan.domain.columns


def score_table(df: pd.DataFrame, plan: Plan, engine, source: SourceConfig, settings: ScoreSettings) -> pd.DataFrame:
    """The output table of ``df`` (one row per input row, in input order)."""
    rows = table_rows(df, plan, plan.source_catalog)
    if len(rows):
        table = score_rows(rows, plan, engine, source, settings).table
        assert table is not None  # rows give a table
        return table
    return _empty_table(rows, plan, settings)


def _empty_table(rows: pd.DataFrame, plan: Plan, settings: ScoreSettings) -> pd.DataFrame:
    """No rows (a Dask meta, an empty partition): the output columns, typed; no engine is needed."""
    scores, status = Scores.empty(0, settings.embeddings), np.zeros(0, dtype=object)
    threshold = 0.5 if settings.threshold is None else settings.threshold  # decides no row
    return output_table(rows, plan, scores, status, threshold, settings.image_threshold, settings.max_saturated_core)


def score_lsdb_partition(
    part: pd.DataFrame, plan: Plan, engine: EngineRef, source: SourceConfig, settings: ScoreSettings
) -> pd.DataFrame:
    """One LSDB partition -> its output table, indexed like the partition (``_healpix_29``), so
    the result is a catalog LSDB can crossmatch.  ``input_row`` counts rows within the partition."""
    table = score_table(pd.DataFrame(part), plan, engine.load() if len(part) else None, source, settings)
    table.index = part.index
    text = ["status", *(["id"] if plan.id_kind == "str" else [])]  # Arrow-backed text, in data and meta alike
    return table.drop(columns=["_healpix_29"]).astype(dict.fromkeys(text, "str"))


# ---------------------------------------------------------------- arguments in Python terms
def source_config(
    images: str | Path | None = None,
    frames: str | Path | None = None,
    service: str | None = None,
    source: SourceConfig | tuple[str, str] | None = None,
    source_options: dict | None = None,
) -> SourceConfig:
    """The image source of exactly one of: ``images`` (a directory of stamps named by id),
    ``frames`` (survey frames with WCS), ``service`` (a cutout service URL) or ``source`` (a
    ``SourceConfig``, or ``(kind, location)`` of any registered kind or ``module:Class``);
    ``source_options``: the source's options (e.g. ``{"timeout": 10}`` for a service)."""
    given = {k: v for k, v in zip(SOURCE_ARGUMENTS, (images, frames, service, source)) if v is not None}
    if len(given) != 1:
        raise InvalidArgument(
            "images",
            f"give exactly one image source of images=, frames=, service=, source= (got {sorted(given) or 'none'})",
        )
    ((name, value),) = given.items()
    if source_options is not None and not isinstance(source_options, dict):
        raise InvalidArgument("source_options", f"give a dict of options, not {type(source_options).__name__}")
    opts = tuple(sorted((source_options or {}).items()))
    if name in ("images", "frames"):
        if not Path(str(value)).is_dir():
            raise InvalidArgument(name, f"{value}: not a directory")
        config = SourceConfig("stamps" if name == "images" else "frames", str(Path(str(value)).resolve()), opts)
    elif name == "service":
        config = SourceConfig("service", str(value), opts)
    elif isinstance(value, SourceConfig):
        config = SourceConfig(value.kind, value.location, opts or value.options)
    elif isinstance(value, tuple) and len(value) == 2:
        config = SourceConfig(str(value[0]), str(value[1]), opts)
    else:
        raise InvalidArgument("source", "give a SourceConfig or (kind, location)")
    try:
        config.check()
    except (ValueError, ImportError) as exc:
        raise InvalidArgument("source_options" if opts and _usable(config) else name, str(exc)) from None
    return config


def _usable(config: SourceConfig) -> bool:
    """Whether the source is usable without its options (then they are what is wrong)."""
    try:
        SourceConfig(config.kind, config.location).check()
    except (ValueError, ImportError):
        return False
    return True


def score_settings(info, domain: str, batch_size: int, embeddings: int, target: dict) -> tuple[ScoreSettings, Any]:
    """(ScoreSettings, DomainSettings) for an engine, as a run computes them (run.py)."""
    from ..engines import operating
    from .embeddings import provenance

    count("batch_size", batch_size)
    count("embeddings", embeddings, minimum=0)
    target = {k: fraction(k, v) for k, v in target.items()}
    if target["prevalence"] is None:
        raise InvalidArgument("prevalence", "give a fraction, e.g. 0.02")
    try:  # DomainError, OperatingPointError, the embeddings' ArgumentError: each names its argument
        ds = DomainSettings(domain)
        operating.check_target(target["purity"], target["completeness"], target["prevalence"])
        op = operating.for_engine(info, target["purity"], target["completeness"], target["prevalence"])
        if embeddings:
            provenance(embeddings, info)
    except ArgumentError as exc:
        raise in_python_terms(exc) from None
    settings = ScoreSettings(
        batch_size, op.threshold, ds.image_threshold(info.domain), ds.max_saturated_core(info.domain), embeddings
    )
    return settings, ds


def domain_rules(ds, info, sample, label: str):
    """``domain_rules(columns)`` for table_plan: the catalog rules of ``domain`` (pipeline.domain)."""

    def rules(columns: list[str]) -> CatalogRules:
        if info.domain is None:
            return CatalogRules()
        try:
            return resolve_rules(ds, info.domain, columns, sample, label)
        except ArgumentError as exc:  # a --domain-column mapping to no column
            raise in_python_terms(exc) from None

    return rules
