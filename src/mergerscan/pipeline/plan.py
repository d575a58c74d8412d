"""Planning: the catalog -> bounded-size HEALPix sky partitions, without holding the catalog.

1. *scan* (one task per input chunk, the only read of the catalog; :mod:`.split`): the HEALPix
   index of every row, once; the rows sorted on the sky into a run file; the chunk's sparse
   histogram at ``hist_order``.
2. *partitions* (driver, small): the coarsest pixels holding <= ``partition_rows`` rows, found
   top-down over the summed histogram (the hats "alignment" idea); a pixel still too dense at
   ``hist_order`` is cut into row-number sub-partitions.  Rows with bad coordinates form their
   own partitions (they are flagged, never dropped).
3. *split* (one task per bucket of consecutive partitions; :mod:`.split`): one Parquet file per
   bucket, one row group per partition.
The plan is a JSON file in the work directory (also the unit of work for SLURM array jobs).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ..atomic import atomic_path, atomic_write_text
from ..catalogs.columns import find_column
from ..catalogs.read import CatalogError, CatalogReader
from ..catalogs.schema import output_names
from ..catalogs.validate import check_numeric
from ..run_layout import WorkLayout
from .domain import CatalogRules

ORDER29 = 29


@dataclass(frozen=True)
class Partition:
    pid: int
    order: int  # HEALPix order; -1 for the partition(s) of rows with bad coordinates
    pixel: int
    sub: int = 0  # sub-partition index when one pixel holds more than partition_rows
    nsub: int = 1
    rows: int = 0

    @property
    def name(self) -> str:
        if self.order < 0:
            base = "Norder=-1/invalid"
        else:
            base = f"Norder={self.order}/Dir={self.pixel // 10000 * 10000}/Npix={self.pixel}"
        return base if self.nsub == 1 else f"{base}-{self.sub}"


@dataclass(frozen=True)
class CatalogInspection:
    """What the input catalog holds, read from a few rows before any task
    (:func:`inspection.inspect_catalog`): what the plan and the run's fingerprint are made from."""

    format: str  # the reader's format: "fits", "parquet", "csv"; or "hats"
    nrows: int
    columns: dict[str, str]  # {"id", "ra", "dec"[, "path"]} -> the column in the file's spelling
    keep: list[str]  # input columns carried through
    id_kind: str  # "int", "uint" (uint64) or "str"
    chunks: list = field(default_factory=list)  # [(start, stop)] of the reader (none for HATS)
    names: dict[str, str] = field(default_factory=dict)  # carried column -> output name (HATS: the plan's)
    select_columns: dict[str, str] = field(default_factory=dict)  # {name in --select: column}
    domain: CatalogRules = field(default_factory=CatalogRules)  # the catalog rules of --domain
    hats: Any = None  # catalogs.hats.HatsInput of a HATS input (hats_plan.py)


@dataclass
class Plan:
    catalog: str  # file the tasks read (a Parquet staging copy for CSV input)
    source_catalog: str  # what the user gave
    nrows: int
    columns: dict  # {"id": name, "ra": name, "dec": name[, "path": name]} in the file's spelling
    keep: list  # input columns carried through
    id_kind: str  # "int", "uint" (uint64) or "str"
    chunks: list  # [(start, stop)]
    hist_order: int
    partitions: list = field(default_factory=list)
    split: dict = field(default_factory=dict)  # buckets and run ranges (split.plan_split)
    select: str | None = None  # --select EXPR (see select.py)
    select_columns: dict = field(default_factory=dict)  # {name in EXPR: column in the file's spelling}
    domain: CatalogRules = field(default_factory=CatalogRules)  # catalog rules of --domain (plan.json: to_dict)
    hats: dict | None = None  # HATS input: partitions are its pixels, read directly (hats_plan.py)
    names: dict = field(default_factory=dict)  # carried input column -> output name (schema.output_names)

    @property
    def carried(self) -> list:
        """Kept columns other than id/ra/dec (those have output columns of their own)."""
        core = (self.columns["id"], self.columns["ra"], self.columns["dec"])
        return [k for k in self.keep if k not in core]

    @property
    def output_names(self) -> dict:
        """{carried input column: output name}: as decided at the start (``names``); a plan written
        before the names were stored keeps the rule it was made with (both id spellings reserved)."""
        return dict(self.names) if self.names else output_names(self.carried)

    @property
    def path_column(self) -> str | None:
        """The column naming each row's stamp file: ``--path-column``, else a kept column 'path'."""
        return self.columns.get("path") or find_column(self.keep, "path")

    def to_json(self) -> str:
        d = asdict(self)
        d["domain"] = self.domain.to_dict()
        return json.dumps(d, indent=1)

    @classmethod
    def from_json(cls, text: str) -> Plan:
        d = json.loads(text)
        d["partitions"] = [Partition(**p) for p in d["partitions"]]
        d["chunks"] = [tuple(c) for c in d["chunks"]]
        d["domain"] = CatalogRules.from_dict(d.get("domain"))
        return cls(**d)

    def save(self, path: Path) -> None:
        atomic_write_text(Path(path), self.to_json())

    @classmethod
    def load(cls, path: str | Path) -> Plan:
        return cls.from_json(Path(path).read_text())


def healpix29(ra: np.ndarray, dec: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """Nested HEALPix index at order 29 (hats ``_healpix_29``); -1 where coordinates are invalid."""
    import astropy.units as u
    from astropy_healpix import lonlat_to_healpix

    out = np.full(len(ra), -1, np.int64)
    if valid.any():
        out[valid] = lonlat_to_healpix(ra[valid] * u.deg, dec[valid] * u.deg, 2**ORDER29, order="nested")
    return out


def read_positions(
    path: str, start: int, stop: int, columns: dict, extra: list | None = None, label: str | None = None
) -> pd.DataFrame:
    """Rows [start, stop) with id/ra/dec (+ extra) columns; errors name ``label`` (the user's file)."""
    r = CatalogReader(path)
    try:
        core = [columns["id"], columns["ra"], columns["dec"]]
        cols = list(dict.fromkeys([*core, *(extra or [])]))
        # the id too: a Parquet integer id with a null must not pass through float64
        df = r.read_rows(start, stop, cols, nullable=[c for c in cols if c not in core[1:]])
    finally:
        r.close()
    check_numeric(df, [columns["ra"], columns["dec"]], label or path, row_offset=start)
    return df


def make_partitions(
    pixels: np.ndarray, counts: np.ndarray, n_invalid: int, hist_order: int, max_rows: int
) -> list[Partition]:
    """Coarsest HEALPix pixels with <= max_rows rows (top-down), dense pixels cut by row number."""
    hist = pd.Series(counts, index=pixels).groupby(level=0).sum()
    parts, assigned = [], np.zeros(len(hist), bool)
    pix = hist.index.to_numpy(np.int64)
    cnt = hist.to_numpy(np.int64)
    for order in range(hist_order + 1):
        shift = 2 * (hist_order - order)
        parent = pix >> shift
        free = ~assigned
        tot = pd.Series(cnt[free]).groupby(parent[free]).sum()
        fits = tot[tot <= max_rows] if order < hist_order else tot
        for p, n in fits.items():
            nsub = max(1, -(-int(n) // max_rows))
            for s in range(nsub):
                parts.append((order, int(p), s, nsub, int(n) // nsub + (s < int(n) % nsub)))
        assigned |= np.isin(parent, fits.index.to_numpy()) & free
    if n_invalid:
        nsub = max(1, -(-n_invalid // max_rows))
        parts += [(-1, 0, s, nsub, n_invalid // nsub + (s < n_invalid % nsub)) for s in range(nsub)]
    parts.sort(key=lambda t: (t[0] < 0, t[1] << (2 * (hist_order - t[0])) if t[0] >= 0 else 0, t[2]))
    return [Partition(i, *t) for i, t in enumerate(parts)]


def assign_partitions(hpx29: np.ndarray, input_row: np.ndarray, partitions: list[Partition]) -> np.ndarray:
    """Partition id for each row (pure): valid rows by their HEALPix ancestor, dense pixels and
    invalid rows split into sub-partitions by ``input_row % nsub``.  Vectorised per HEALPix
    order (a loop over partitions per row made the split quadratic at survey scale)."""
    out = np.full(len(hpx29), -1, np.int64)
    valid = hpx29 >= 0
    units: dict[tuple[int, int], list[Partition]] = {}
    for p in partitions:
        units.setdefault((p.order, p.pixel), []).append(p)
    for order in sorted({o for o, _ in units}):
        keys = sorted(px for o, px in units if o == order)
        subs = [sorted(units[(order, k)], key=lambda q: q.sub) for k in keys]
        nsub = np.array([len(s) for s in subs], np.int64)
        first = np.r_[0, np.cumsum(nsub)[:-1]]
        flat = np.array([q.pid for s in subs for q in s], np.int64)
        if order < 0:
            hit, k = ~valid, np.zeros(len(hpx29), np.int64)
        else:
            pixels = np.array(keys, np.int64)
            anc = hpx29 >> (2 * (ORDER29 - order))
            k = np.minimum(np.searchsorted(pixels, anc), len(pixels) - 1)
            hit = valid & (pixels[k] == anc)
        k = k[hit]
        out[hit] = flat[first[k] + input_row[hit] % nsub[k]]
    if (out < 0).any():
        raise RuntimeError(f"{int((out < 0).sum())} rows fell outside the plan: the catalog changed since planning")
    return out


def _csv_id(t, id_column: str, id_kind: str):
    """The CSV id column (read as text) as int64 (``id_kind`` 'int': exact, blanks -> null) or text."""
    import pyarrow as pa
    import pyarrow.compute as pc

    i = t.schema.get_field_index(id_column)
    col = t.column(i).cast(pa.string())
    if id_kind == "int":
        col = pc.utf8_trim_whitespace(col)
        col = pc.if_else(pc.equal(col, ""), pa.scalar(None, pa.string()), col).cast(pa.int64())
    return t.set_column(i, id_column, col)


def stage_csv(path: str, work: Path, chunk_rows: int, id_column: str | None = None, id_kind: str = "str") -> str:
    """CSV cannot be read by row range cheaply: convert it once, streaming, to Parquet row groups.
    The id column is read as text and written as text or exact int64 (never via float64)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    out = WorkLayout(work).staged_csv
    if out.is_file():
        return str(out)
    r = CatalogReader(path, chunk_rows=chunk_rows)
    r.text_columns = {id_column} if id_column else set()
    with atomic_path(out) as tmp:  # a failure leaves no staged file (and no temporary)
        writer = None
        try:
            for start, chunk in r.iter_chunks():
                t = pa.Table.from_pandas(chunk, preserve_index=False)
                if id_column:
                    t = _csv_id(t, id_column, id_kind)
                if writer is None:
                    writer = pq.ParquetWriter(str(tmp), t.schema)
                try:
                    writer.write_table(t.cast(writer.schema), row_group_size=chunk_rows)
                except (pa.ArrowInvalid, pa.ArrowTypeError, ValueError) as exc:
                    raise CatalogError(
                        f"{path}: a column changes type in the chunk starting at row {start} "
                        f"({str(exc).splitlines()[0]})"
                    ) from None
            if writer is None:
                raise ValueError(f"{path}: catalog has no rows")
        finally:
            if writer is not None:
                writer.close()
    return str(out)
