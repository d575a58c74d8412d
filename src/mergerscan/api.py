"""The library: ``load_engine``, ``score``, ``process_catalog``, ``score_catalog``.

What a notebook calls.  ``score`` scores a pandas/astropy table in this process, without Dask:
the table is one partition's rows and goes through the step every partition task of a run uses
(pipeline.score_rows), so its scores equal process-catalog's.  ``process_catalog`` is the run of
the command line (the caller's Dask client, when given, is used and left open).
``score_catalog`` maps that same step over the partitions of an LSDB catalog (lazily).  Bad
arguments raise :class:`InvalidArgument`, a ValueError naming the argument; nothing here reads
the environment or ``~/.config`` (the command line's default image source is the CLI's).
Heavy imports (onnxruntime, dask, lsdb) happen inside the calls, so ``import mergerscan`` is fast.
"""

from __future__ import annotations

import difflib
import os
import shlex
from dataclasses import fields
from pathlib import Path
from typing import TYPE_CHECKING, Any, get_type_hints

from .argument_error import ArgumentError
from .pipeline.in_memory import (
    EngineRef,
    InvalidArgument,
    TableColumns,
    count,
    domain_rules,
    in_python_terms,
    of_type,
    plain_columns,
    score_settings,
    source_config,
)

if TYPE_CHECKING:
    from .cutouts.sources import SourceConfig
    from .engines.base import Engine
    from .pipeline.arguments import ProcessArguments
    from .run_summary import RunSummary

__all__ = ["InvalidArgument", "load_engine", "process_catalog", "score", "score_catalog", "source_config"]


DEFAULT_BACKEND = "onnxruntime"


def _cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def load_engine(
    path: str | Path | None = None,
    backend: str = "onnxruntime",
    views: int | None = None,
    threads: int | None = None,
    **options: Any,
) -> Engine:
    """An engine file (None: the packaged engine) loaded with ``backend`` (``name[:precision]``).

    ``engine.predict(stamps)``: calibrated p_merger of uint8 stamps (N, H, W, 3); ``engine.card``
    (the model card) and ``engine.spec`` (the preprocessing it runs).  ``views``: 1, 2, 4 or 8
    test-time views (default: the card's); ``threads``: CPU threads (default: every core here);
    ``options``: the backend's options (e.g. ``stamp_batch``)."""
    from .engines import load_engine as load

    if path is not None and not isinstance(path, (str, os.PathLike)):
        raise InvalidArgument("path", f"give an engine file's path, not {type(path).__name__}")
    if path is not None and not Path(path).is_file():
        raise InvalidArgument("path", f"{path}: no such engine file")
    _check_backend_views(backend, views)
    if threads is not None:
        count("threads", threads)
    try:
        return load(path, backend=backend, threads=threads or _cores(), views=views, **options)
    except ArgumentError as exc:  # a backend option (its name) or its value
        raise InvalidArgument(exc.argument or "options", exc.render()) from None
    except ValueError as exc:  # not an engine file, views the card has no calibration for, an unknown option
        msg = str(exc)
        argument = (
            "views" if views is not None and "view" in msg else "options" if options and "option" in msg else "path"
        )
        raise InvalidArgument(argument, msg) from None


def _check_backend_views(backend: str, views: int | None) -> None:
    from .engines import get_backend, parse_backend
    from .engines.base import VIEWS

    if not isinstance(backend, str):
        raise InvalidArgument("backend", f"give a backend's name (e.g. 'onnxruntime'), not {type(backend).__name__}")
    if views is not None:
        count("views", views)
    try:
        get_backend(parse_backend(backend)[0])
    except ValueError as exc:
        raise InvalidArgument("backend", str(exc)) from None
    if views is not None and views not in VIEWS:
        raise InvalidArgument("views", f"{views}: choose {', '.join(map(str, VIEWS))}")


def _chosen_engine(
    engine: Engine | str | Path | None, backend: str | None, views: int | None
) -> tuple[Any, str, int | None]:
    """(the loaded engine given, else its file - None: the packaged one -, backend, views), checked
    the same way for every call: a loaded engine brings its own backend and views (one named
    otherwise is refused, not ignored); backend None: the engine's, else onnxruntime."""
    from .engines import parse_backend
    from .engines.base import Engine

    if isinstance(engine, Engine):
        if views is not None and views != engine.info.views:
            raise InvalidArgument("views", f"{views}: the engine given was loaded with {engine.info.views}")
        if backend is not None:
            _check_backend_views(backend, None)
            if parse_backend(backend)[0] != engine.backend:
                raise InvalidArgument("backend", f"{backend}: the engine given was loaded with {engine.backend}")
        return engine, engine.backend, engine.info.views
    backend = DEFAULT_BACKEND if backend is None else backend
    if engine is not None and not isinstance(engine, (str, Path)):
        raise InvalidArgument(
            "engine", f"give an engine file or mergerscan.load_engine(...), not {type(engine).__name__}"
        )
    if engine is not None and not Path(engine).is_file():
        raise InvalidArgument("engine", f"{engine}: no such engine file")
    return engine, backend, views


def _engine(engine: Engine | str | Path | None, backend: str | None, views: int | None, threads: int | None) -> Engine:
    from .engines.base import Engine

    if threads is not None:
        count("threads", threads)
    chosen, backend, views = _chosen_engine(engine, backend, views)
    if isinstance(chosen, Engine):
        return chosen
    try:
        return load_engine(chosen, backend=backend, views=views, threads=threads)
    except InvalidArgument as exc:  # load_engine's "path" is this call's "engine"
        if exc.argument != "path":
            raise
        raise InvalidArgument("engine", str(exc).removeprefix("path: ")) from None


def _as_frame(table) -> tuple[Any, bool, dict[str, Any]]:
    """(pandas DataFrame, whether the caller gave an astropy Table, its columns' units)."""
    import pandas as pd

    if isinstance(table, pd.DataFrame):
        return plain_columns(table), False, {}
    from astropy.table import Table

    if isinstance(table, Table):
        units = {str(n): c.unit for n, c in table.columns.items() if getattr(c, "unit", None) is not None}
        return plain_columns(table.to_pandas(index=False)), True, units
    hint = " (a catalog file: mergerscan.process_catalog)" if isinstance(table, (str, os.PathLike)) else ""
    raise InvalidArgument("table", f"give a pandas DataFrame or an astropy Table, not {type(table).__name__}{hint}")


def score(
    table,
    *,
    images: str | Path | None = None,
    frames: str | Path | None = None,
    service: str | None = None,
    source: SourceConfig | tuple[str, str] | None = None,
    source_options: dict | None = None,
    engine: Engine | str | Path | None = None,
    backend: str | None = None,
    views: int | None = None,
    id_column: str | None = None,
    ra_column: str | None = None,
    dec_column: str | None = None,
    keep_columns: list[str] | tuple[str, ...] = (),
    path_column: str | None = None,
    domain: str = "on",
    purity: float | None = None,
    completeness: float | None = None,
    prevalence: float = 0.02,
    embeddings: int = 0,
    batch_size: int = 128,
    threads: int | None = None,
):
    """Score every row of an in-memory table; no Dask cluster is started.

    Returns the catalog's output columns (docs/output.md: id, ra, dec, p_merger, is_merger,
    in_domain, domain_score, saturated_core, status, input_row, _healpix_29, and the kept
    columns), one row per input row in input order: a pandas DataFrame, or an astropy Table when
    ``table`` is one.  The table is scored as one sky partition, so a repeated id is flagged
    ``duplicate_id`` wherever it repeats.  Keywords as process-catalog's flags: the image source
    (:func:`source_config`), the engine (a file, a loaded engine, None: the packaged one),
    ``domain`` (on, off, catalog, image), the operating point (``purity`` or ``completeness``)."""
    frame, astropy_in, units = _as_frame(table)
    src = source_config(images, frames, service, source, source_options)
    eng = _engine(engine, backend, views, threads)
    target = {"purity": purity, "completeness": completeness, "prevalence": prevalence}
    settings, ds = score_settings(eng.info, domain, batch_size, embeddings, target)
    columns = TableColumns.given(id_column, ra_column, dec_column, keep_columns, path_column)
    out = _score_frame(
        frame, src, eng, settings, domain_rules(ds, eng.info, lambda cs: frame[cs].head(1000), "table"), columns, units
    )
    if not astropy_in:
        return out
    from astropy.table import Table

    return Table.from_pandas(out)


def _score_frame(frame, src, eng, settings, rules, columns: TableColumns, units: dict[str, Any]):
    from .pipeline.in_memory import score_table, table_plan

    if columns.path and not src.source_class.reads_path_column:
        raise InvalidArgument("path_column", f"names stamp files: the {src.kind} source reads none (use images=)")
    plan = table_plan(list(frame.columns), lambda k: frame[k], columns, rules, "table", _optional(settings))
    for role in ("ra", "dec"):
        _check_degrees(f"{role}_column", plan.columns[role], units.get(plan.columns[role]))
    return score_table(frame, plan, eng, src, settings)


def _check_degrees(argument: str, name: str, unit) -> None:
    """An astropy column in another angle unit (rad, arcsec...) would be read as degrees: refused."""
    from astropy import units as u

    if unit is None or not isinstance(unit, u.UnitBase) or isinstance(unit, u.UnrecognizedUnit):
        return
    if unit.physical_type == "angle" and unit != u.deg:
        raise InvalidArgument(argument, f"{name!r} is in {unit}; give degrees (e.g. table[{name!r}].to(u.deg))")


def _optional(settings) -> tuple[str, ...]:
    return ("embedding",) if settings.embeddings else ()


# ---------------------------------------------------------------- process_catalog
_MANAGED = {"catalog", "output", "images", "frames", "cutout_service", "source_kind", "source_location"}
_MANAGED |= {"source_options", "service_options", "engine", "progress", "overwrite", "threads_per_worker"}
_ANY_FORM = {"memory_limit"}  # Dask's own: "4GiB", 4e9 bytes, "auto"
_NOT_OPTIONS = {"mode", "shard", "default_source", "command", "scheduler", "cluster", "slurm"}


def process_arguments(
    catalog, output, src: SourceConfig, engine, progress: bool, overwrite: bool, threads, options: dict
) -> ProcessArguments:
    """The one place the library builds the command line's ProcessArguments from keywords."""
    from .pipeline.arguments import ProcessArguments

    allowed = {f.name for f in fields(ProcessArguments)} - _MANAGED - _NOT_OPTIONS
    hints = get_type_hints(ProcessArguments)
    for name, value in options.items():
        if name not in allowed:
            close = difflib.get_close_matches(name, sorted(allowed), n=1)
            hint = f"did you mean {close[0]}? " if close else ""
            raise InvalidArgument(
                name, f"not an option of process_catalog ({hint}options: {', '.join(sorted(allowed))})"
            )
        if name not in _ANY_FORM:
            options[name] = of_type(name, value, hints[name])
    _check_paths(catalog, output)
    progress, overwrite = of_type("progress", progress, bool), of_type("overwrite", overwrite, bool)
    if threads is not None:
        count("threads", threads)
    kind = {"stamps": "images", "frames": "frames", "service": "cutout_service"}.get(src.kind)
    where: dict[str, Any] = {kind: src.location} if kind else {"source_kind": src.kind, "source_location": src.location}
    opts: dict[str, Any] = (
        {("service_options" if kind == "cutout_service" else "source_options"): dict(src.options)}
        if src.options
        else {}
    )
    try:  # an ArgumentError names its field
        return ProcessArguments(
            catalog=str(catalog),
            output=str(output),
            engine=str(engine) if engine is not None else None,
            progress=progress,
            overwrite=overwrite,
            threads_per_worker=threads or 0,
            command=shlex.join(["mergerscan.process_catalog", str(catalog), str(output)]),
            **where,
            **opts,
            **options,
        )
    except ArgumentError as exc:
        raise in_python_terms(exc) from None


def _check_paths(catalog, output) -> None:
    import pandas as pd

    if isinstance(catalog, pd.DataFrame) or type(catalog).__name__ == "Table":
        raise InvalidArgument("catalog", "give a catalog file's path (an in-memory table: mergerscan.score)")
    for name, value in (("catalog", catalog), ("output", output)):
        if not isinstance(value, (str, os.PathLike)) or not str(value):
            raise InvalidArgument(name, f"give a path, not {type(value).__name__}")
    if not Path(catalog).exists():
        raise InvalidArgument("catalog", f"{catalog}: no such file")


def _check_client(client) -> None:
    from distributed import Client

    if client is not None and not isinstance(client, Client):
        raise InvalidArgument(
            "client", f"give a distributed.Client (or None: a local cluster), not {type(client).__name__}"
        )


def process_catalog(
    catalog: str | Path,
    output: str | Path,
    *,
    images: str | Path | None = None,
    frames: str | Path | None = None,
    service: str | None = None,
    source: SourceConfig | tuple[str, str] | None = None,
    source_options: dict | None = None,
    engine: Engine | str | Path | None = None,
    client=None,
    progress: bool = True,
    overwrite: bool = False,
    threads: int | None = None,
    **options: Any,
) -> RunSummary:
    """Run (or resume) process-catalog on a catalog file into the run directory ``output``.

    ``client``: a ``distributed.Client`` to run on (used, never closed); without one a local
    cluster is started for the run and closed after it.  ``options``: the run's other options by
    their names (``workers``, ``keep_columns``, ``id_column``, ``views``, ``batch_size``,
    ``partition_rows``, ``domain``, ``select``, ``purity``, ``report``...).  Returns the
    :class:`~mergerscan.run_summary.RunSummary` (also in OUT/summary.json)."""
    from .engines.base import Engine
    from .pipeline.run import run
    from .run_summary import RunSummary

    _check_client(client)
    src = source_config(images, frames, service, source, source_options)
    chosen, backend, views = _chosen_engine(engine, None, None)
    if isinstance(chosen, Engine):  # the run loads its file, with the engine's backend and views unless named
        options.setdefault("backend", backend)
        options.setdefault("views", views)
        chosen = chosen.info.path
    args = process_arguments(catalog, output, src, chosen, progress, overwrite, threads, options)
    try:
        summary = run(args, client=client)
    except ArgumentError as exc:  # each names its argument (a CatalogError without one: the catalog)
        raise in_python_terms(exc) from None
    assert isinstance(summary, RunSummary)  # mode "all" always gives one
    return summary


# ---------------------------------------------------------------- score_catalog
def score_catalog(
    catalog,
    *,
    images: str | Path | None = None,
    frames: str | Path | None = None,
    service: str | None = None,
    source: SourceConfig | tuple[str, str] | None = None,
    source_options: dict | None = None,
    engine: Engine | str | Path | None = None,
    backend: str | None = None,
    views: int | None = None,
    id_column: str | None = None,
    keep_columns: list[str] | tuple[str, ...] = (),
    domain: str = "on",
    purity: float | None = None,
    completeness: float | None = None,
    prevalence: float = 0.02,
    batch_size: int = 128,
    threads: int = 1,
):
    """An LSDB catalog -> a lazy LSDB catalog of the output columns (``catalog.map_partitions``):
    each partition is scored, when computed, by the step process-catalog's tasks use.  The index
    stays the catalog's ``_healpix_29``, so the result crossmatches like any LSDB catalog;
    ``input_row`` counts rows within each partition.  ``threads``: CPU threads per engine (one
    engine per Dask worker process)."""
    import pandas as pd

    from .pipeline.in_memory import score_lsdb_partition, table_plan

    if not (hasattr(catalog, "map_partitions") and hasattr(catalog, "hc_structure")):
        raise InvalidArgument(
            "catalog", f"give an LSDB catalog (lsdb.open_catalog, lsdb.from_dataframe), not {type(catalog).__name__}"
        )
    src = source_config(images, frames, service, source, source_options)
    ref = _engine_ref(engine, backend, views, threads)
    try:
        info = ref.info()
    except ValueError as exc:  # not an engine file, or views its card has no calibration for
        raise InvalidArgument("views" if views is not None else "engine", str(exc)) from None
    target = {"purity": purity, "completeness": completeness, "prevalence": prevalence}
    settings, ds = score_settings(info, domain, batch_size, 0, target)
    catalog = _ra_dec_named_ra_dec(catalog)
    columns = TableColumns.given(id_column, "ra", "dec", keep_columns)
    empty = pd.DataFrame(catalog.meta)
    rules = domain_rules(ds, info, lambda cs: empty[cs], "catalog")
    plan = table_plan(list(catalog.columns), lambda k: empty[k], columns, rules, "catalog")
    meta = score_lsdb_partition(empty, plan, ref, src, settings)  # no rows: no engine is loaded
    return catalog.map_partitions(score_lsdb_partition, plan, ref, src, settings, meta=meta)


def _engine_ref(engine: Engine | str | Path | None, backend: str | None, views: int | None, threads: int) -> EngineRef:
    """The engine as each worker loads it (an engine object is not sent to workers: its file is)."""
    from .engines import resolve_engine_path
    from .engines.base import Engine

    count("threads", threads)
    chosen, backend, views = _chosen_engine(engine, backend, views)
    if isinstance(chosen, Engine):
        return EngineRef(str(chosen.info.path), backend, views, threads)
    _check_backend_views(backend, views)
    return EngineRef(str(resolve_engine_path(chosen)), backend, views, threads)


def _ra_dec_named_ra_dec(catalog):
    """The catalog with its coordinate columns named ``ra`` and ``dec``, as the output names them
    (LSDB follows the catalog's own names through map_partitions and crossmatch)."""
    info = catalog.hc_structure.catalog_info
    missing = [c for c in (info.ra_column, info.dec_column) if c not in catalog.columns]
    if missing:
        role = "ra" if missing[0] == info.ra_column else "dec"
        raise InvalidArgument("catalog", f"its {role} column {missing[0]!r} (catalog_info) is not among its columns")
    rename = {k: v for k, v in ((info.ra_column, "ra"), (info.dec_column, "dec")) if k != v}
    clash = [v for v in rename.values() if v in catalog.columns]
    if clash:
        raise InvalidArgument("catalog", f"a column {clash[0]!r} that is not its {clash[0]} column; rename it first")
    return catalog.rename(rename) if rename else catalog
