"""Planning: the catalog -> bounded-size HEALPix sky partitions, without holding the catalog.

1. *histogram* (one task per input chunk): rows per HEALPix pixel at ``hist_order`` (sparse).
2. *partitions* (driver, small): the coarsest pixels holding <= ``partition_rows`` rows, found
   top-down over the summed histogram (the hats "alignment" idea); a pixel still too dense at
   ``hist_order`` is cut into row-number sub-partitions.  Rows with bad coordinates form their
   own partitions (they are flagged, never dropped).
3. *split* (one task per input chunk): route each row to its partition and write one small
   Parquet shard per (chunk, partition), atomically, with a done marker.
The plan is a JSON file in the work directory (also the unit of work for SLURM array jobs).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from ..catalogs.read import CatalogError, CatalogReader
from ..catalogs.validate import check_numeric, coord_status
from .resume import atomic_write_bytes, done, mark_done

ORDER29 = 29


@dataclass(frozen=True)
class Partition:
    pid: int
    order: int           # HEALPix order; -1 for the partition(s) of rows with bad coordinates
    pixel: int
    sub: int = 0         # sub-partition index when one pixel holds more than partition_rows
    nsub: int = 1
    rows: int = 0

    @property
    def name(self) -> str:
        if self.order < 0:
            base = "Norder=-1/invalid"
        else:
            base = f"Norder={self.order}/Dir={self.pixel // 10000 * 10000}/Npix={self.pixel}"
        return base if self.nsub == 1 else f"{base}-{self.sub}"


@dataclass
class Plan:
    catalog: str                 # file the tasks read (a Parquet staging copy for CSV input)
    source_catalog: str          # what the user gave
    nrows: int
    columns: dict                # {"id": name, "ra": name, "dec": name[, "path": name]} in the file's spelling
    keep: list                   # input columns carried through
    id_kind: str                 # "int", "uint" (uint64) or "str"
    chunks: list                 # [(start, stop)]
    hist_order: int
    partitions: list = field(default_factory=list)
    names: dict = field(default_factory=dict)   # carried input column -> output name (schema.output_names)

    @property
    def carried(self) -> list:
        """Kept columns other than id/ra/dec (those have output columns of their own)."""
        core = (self.columns["id"], self.columns["ra"], self.columns["dec"])
        return [k for k in self.keep if k not in core]

    @property
    def path_column(self) -> str | None:
        """The column naming each row's stamp file: ``--path-column``, else a kept column 'path'."""
        return self.columns.get("path") or next((k for k in self.keep if k.lower() == "path"), None)

    def to_json(self) -> str:
        d = asdict(self)
        return json.dumps(d, indent=1)

    @classmethod
    def from_json(cls, text: str) -> "Plan":
        d = json.loads(text)
        d["partitions"] = [Partition(**p) for p in d["partitions"]]
        d["chunks"] = [tuple(c) for c in d["chunks"]]
        return cls(**d)

    def save(self, path: Path):
        atomic_write_bytes(Path(path), self.to_json().encode())

    @classmethod
    def load(cls, path: Path) -> "Plan":
        return cls.from_json(Path(path).read_text())


def healpix29(ra: np.ndarray, dec: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """Nested HEALPix index at order 29 (hats ``_healpix_29``); -1 where coordinates are invalid."""
    import astropy.units as u
    from astropy_healpix import lonlat_to_healpix

    out = np.full(len(ra), -1, np.int64)
    if valid.any():
        out[valid] = lonlat_to_healpix(ra[valid] * u.deg, dec[valid] * u.deg, 2 ** ORDER29, order="nested")
    return out


def read_positions(path: str, start: int, stop: int, columns: dict, extra: list | None = None,
                   label: str | None = None) -> pd.DataFrame:
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


def chunk_histogram(path: str, start: int, stop: int, columns: dict, hist_order: int, label: str | None = None):
    """Task: sparse (pixels, counts) of valid rows at ``hist_order`` and the count of invalid rows."""
    df = read_positions(path, start, stop, columns, label=label)
    ra = df[columns["ra"]].to_numpy(np.float64)
    dec = df[columns["dec"]].to_numpy(np.float64)
    valid = coord_status(ra, dec)
    pix = healpix29(ra, dec, valid)[valid] >> (2 * (ORDER29 - hist_order))
    pixels, counts = np.unique(pix, return_counts=True)
    return pixels, counts, int((~valid).sum())


def make_partitions(pixels: np.ndarray, counts: np.ndarray, n_invalid: int, hist_order: int,
                    max_rows: int) -> list[Partition]:
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
    invalid rows split into sub-partitions by ``input_row % nsub``."""
    out = np.full(len(hpx29), -1, np.int64)
    valid = hpx29 >= 0
    by_order: dict[int, dict[int, list[Partition]]] = {}
    for p in partitions:
        by_order.setdefault(p.order, {}).setdefault(p.pixel, []).append(p)
    for order, pixmap in by_order.items():
        if order < 0:
            subs = sorted(pixmap[0], key=lambda q: q.sub)
            m = ~valid
            out[m] = np.asarray([q.pid for q in subs])[input_row[m] % len(subs)]
            continue
        keys = np.array(sorted(pixmap), np.int64)
        anc = hpx29 >> (2 * (ORDER29 - order))
        idx = np.searchsorted(keys, anc)
        hit = valid & (idx < len(keys)) & (keys[np.minimum(idx, len(keys) - 1)] == anc)
        for k_i in np.unique(idx[hit]):
            subs = sorted(pixmap[int(keys[k_i])], key=lambda q: q.sub)
            m = hit & (idx == k_i)
            out[m] = np.asarray([q.pid for q in subs])[input_row[m] % len(subs)]
    if (out < 0).any():
        raise RuntimeError(f"{int((out < 0).sum())} rows fell outside the plan: the catalog changed since planning")
    return out


def shard_dir(work: Path, pid: int) -> Path:
    return Path(work) / "split" / f"part-{pid:06d}"


def split_chunk(plan: Plan, chunk_id: int, work: str) -> int:
    """Task: route one input chunk's rows to partition shards (atomic, idempotent)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    work = Path(work)
    marker = work / "split" / "_done" / f"chunk-{chunk_id:06d}"
    if done(marker):
        return 0
    start, stop = plan.chunks[chunk_id]
    df = read_positions(plan.catalog, start, stop, plan.columns, plan.keep, label=plan.source_catalog)
    ra = df[plan.columns["ra"]].to_numpy(np.float64)
    dec = df[plan.columns["dec"]].to_numpy(np.float64)
    valid = coord_status(ra, dec)
    rows = np.arange(start, start + len(df), dtype=np.int64)
    hpx = healpix29(ra, dec, valid)
    pid = assign_partitions(hpx, rows, plan.partitions)
    df = df.assign(_input_row=rows, _healpix29=hpx, _pid=pid)
    for p, g in df.groupby("_pid", sort=True):
        out = shard_dir(work, int(p)) / f"chunk-{chunk_id:06d}.parquet"
        out.parent.mkdir(parents=True, exist_ok=True)
        sink = pa.BufferOutputStream()
        pq.write_table(pa.Table.from_pandas(g.drop(columns="_pid"), preserve_index=False), sink)
        atomic_write_bytes(out, sink.getvalue().to_pybytes())
    mark_done(marker, {"rows": len(df)})
    return len(df)


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

    out = Path(work) / "input.parquet"
    if out.is_file():
        return str(out)
    tmp = out.with_suffix(".tmp")
    writer = None
    r = CatalogReader(path, chunk_rows=chunk_rows)
    r.text_columns = {id_column} if id_column else set()
    for start, chunk in r.iter_chunks():
        t = pa.Table.from_pandas(chunk, preserve_index=False)
        if id_column:
            t = _csv_id(t, id_column, id_kind)
        if writer is None:
            writer = pq.ParquetWriter(str(tmp), t.schema)
        try:
            writer.write_table(t.cast(writer.schema), row_group_size=chunk_rows)
        except (pa.ArrowInvalid, pa.ArrowTypeError, ValueError) as exc:
            writer.close()
            tmp.unlink(missing_ok=True)
            raise CatalogError(f"{path}: a column changes type in the chunk starting at row {start} "
                               f"({str(exc).splitlines()[0]})") from None
    if writer is None:
        raise ValueError(f"{path}: catalog has no rows")
    writer.close()
    tmp.replace(out)
    return str(out)
