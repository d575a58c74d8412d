"""A run's embedding column, read from its Parquet dataset (``OUT/parquet``, via :class:`RunLayout`).

Rows are addressed by a *location*: ``file number << 32 | row number in that file`` (int64), over
the dataset's files in sorted order.  The vector index stores locations, not ids, so a neighbour's
row is read back from its one file without holding any id column in memory (10^8 rows).  Rows
whose embedding is null (not scored: no stamp, failed fetch...) are not indexed.
"""

from __future__ import annotations

import hashlib
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from ..catalogs.hats import output_files
from ..run_layout import RunLayout

EMBEDDING_COLUMN = "embedding"  # the fixed-size list column process-catalog --embeddings writes
ROW_BITS = 32


class SimilarError(ValueError):
    """A similarity search that cannot run; the message names the run, column, id or file in one line."""


@dataclass(frozen=True)
class RunVectors:
    """The dataset files of a run and its embedding column (name, dimension, field metadata)."""

    out: Path
    files: tuple[Path, ...]
    column: str
    dim: int
    metadata: dict  # the column's Parquet field metadata (e.g. PCA provenance), decoded

    def fingerprint(self) -> str:
        """Changes when any file is added, removed or rewritten (the cached index is then stale)."""
        h = hashlib.sha256(self.column.encode())
        for f in self.files:
            st = f.stat()
            h.update(f"{f.relative_to(self.out)}|{st.st_size}|{st.st_mtime_ns}\n".encode())
        return h.hexdigest()[:32]

    def rows(self) -> int:
        """Rows in the dataset (null embeddings included: an upper bound of the indexed rows)."""
        n = 0
        for f in self.files:
            with parquet_of(f):
                n += pq.ParquetFile(f).metadata.num_rows
        return n


def open_run(out: str | Path, column: str = EMBEDDING_COLUMN) -> RunVectors:
    """The run in ``out`` and its vector column, checked (one-line :class:`SimilarError` otherwise)."""
    layout = RunLayout(out)
    files = tuple(output_files(layout.catalog_dir)) if layout.catalog_dir.is_dir() else ()
    if not files:
        raise SimilarError(f"{out}: no process-catalog output (no Parquet files under {layout.catalog_dir})")
    with parquet_of(files[0]):
        schema = pq.read_schema(files[0])
    if column not in schema.names:
        raise SimilarError(
            f"{out}: the output has no column {column!r} (run process-catalog with --embeddings to write it)"
        )
    field = schema.field(column)
    t = field.type
    if not (pa.types.is_fixed_size_list(t) or pa.types.is_list(t)) or not pa.types.is_floating(t.value_type):
        raise SimilarError(f"{out}: column {column!r} is {t}, not a vector of floats")
    dim = t.list_size if pa.types.is_fixed_size_list(t) else _first_length(files, column)
    meta = {k.decode(): v.decode(errors="replace") for k, v in (field.metadata or {}).items()}
    return RunVectors(Path(out), files, column, int(dim), meta)


@contextmanager
def parquet_of(path):
    """Arrow's error on a damaged Parquet file of the run (random bytes, a truncated write), as
    one line naming the file; every read of the run's files is inside one."""
    try:
        yield
    except (pa.ArrowException, OSError) as exc:
        raise SimilarError(f"{path}: not a readable Parquet file ({exc})") from None


def _first_length(files, column) -> int:
    for f in files:
        with parquet_of(f):
            arr = pq.read_table(f, columns=[column]).column(column)
        lengths = pc.drop_null(pc.list_value_length(arr))
        if len(lengths):
            return int(lengths[0].as_py())
    return 0


def _vectors(arr: pa.Array, dim: int, where: str) -> tuple[np.ndarray, np.ndarray]:
    """(row numbers of the non-null vectors, (n, dim) float32) of one batch's column."""
    valid = np.asarray(pc.is_valid(arr).to_numpy(zero_copy_only=False), bool)
    rows = np.flatnonzero(valid)
    kept = arr.filter(pa.array(valid))
    if pa.types.is_list(kept.type) and len(kept):
        lengths = np.asarray(pc.list_value_length(kept).to_numpy(zero_copy_only=False))
        if (lengths != dim).any():
            raise SimilarError(f"{where}: a vector of {int(lengths[lengths != dim][0])} values (the column has {dim})")
    flat = np.asarray(kept.flatten().to_numpy(zero_copy_only=False), np.float32)
    vec = flat.reshape(len(rows), dim)
    if not np.isfinite(vec).all():
        raise SimilarError(f"{where}: the embedding column holds NaN or infinite values")
    return rows, vec


def iter_vectors(run: RunVectors, batch_rows: int = 262_144, keep=None):
    """Yield (locations int64, vectors float32 (n, dim)) batch by batch over the whole dataset;
    ``keep(n) -> bool mask`` (optional) thins each batch (a training sample for the index)."""
    for fi, f in enumerate(run.files):
        start = 0
        for batch in _batches(f, batch_rows, run.column):
            rows, vec = _vectors(batch.column(0), run.dim, str(f))
            loc = (np.int64(fi) << ROW_BITS) | (rows + start).astype(np.int64)
            start += batch.num_rows
            if keep is not None:
                m = keep(len(loc))
                loc, vec = loc[m], vec[m]
            if len(loc):
                yield loc, vec


def _batches(path, batch_rows: int, column: str):
    """The column's record batches of one file (read errors as :func:`parquet_of` words them)."""
    with parquet_of(path):
        yield from pq.ParquetFile(path).iter_batches(batch_size=batch_rows, columns=[column])


def read_rows(run: RunVectors, locations: np.ndarray, columns: list[str]) -> pd.DataFrame:
    """The rows at ``locations`` (in that order), with ``columns`` (those the files have)."""
    locations = np.asarray(locations, np.int64)
    fi, ri = locations >> ROW_BITS, locations & ((1 << ROW_BITS) - 1)
    parts = []
    for f in np.unique(fi):
        with parquet_of(run.files[f]):
            have = pq.read_schema(run.files[f]).names
            t = pq.read_table(run.files[f], columns=[c for c in dict.fromkeys(columns) if c in have])
        sel = np.flatnonzero(fi == f)
        df = t.take(pa.array(ri[sel])).to_pandas()
        df.index = sel
        parts.append(df)
    return pd.concat(parts).sort_index() if parts else pd.DataFrame(columns=columns)


def find_id(run: RunVectors, id_column: str, value: str) -> int:
    """The location of the row whose ``id_column`` equals ``value`` (compared as text, so an
    integer objid typed on the command line matches exactly)."""
    if id_column not in pq.read_schema(run.files[0]).names:  # e.g. a run without its summary.json
        raise SimilarError(f"{run.out}: the output has no id column {id_column!r} (the run's summary.json names it)")
    for fi, f in enumerate(run.files):
        with parquet_of(f):
            col = pq.read_table(f, columns=[id_column]).column(id_column)
        eq = pc.fill_null(pc.equal(pc.cast(col, pa.string()), value), False)
        hits = np.flatnonzero(np.asarray(eq.to_numpy(zero_copy_only=False), bool))
        if len(hits):
            return int((fi << ROW_BITS) | int(hits[0]))
    raise SimilarError(f"{run.out}: no row with {id_column} = {value}")
