"""Catalog readers: FITS tables (:mod:`.fits_read`, row ranges), Parquet (row groups), CSV (chunks).

Every reader streams: ``CatalogReader.iter_chunks(columns)`` yields (start_row, DataFrame)
pieces of bounded size, and ``read_rows(start, stop, columns)`` reads one row range.  No
reader ever loads a whole large catalog into one process.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pandas as pd

from ..argument_error import ArgumentError, literal


class CatalogError(ArgumentError):
    """A problem with an input catalog; the message is one line naming the file (and column/row).
    ``argument``: the argument that names the column at fault (a template then, as for any
    ArgumentError); None: the catalog's content itself."""


def refuse_duplicate_names(path: str | Path, names: list[str]) -> None:
    """A header that names two columns alike is refused: readers would silently take one of them
    (pandas renames the second ``x.1``), so an id or ra could come from the wrong column, and
    the output could not carry both under one name."""
    seen: dict[str, int] = {}
    for i, name in enumerate(names, 1):
        if not str(name).strip():  # blank CSV headers: pandas names them apart ("Unnamed: 3")
            continue
        if str(name) in seen:
            raise CatalogError(
                f"{path}: column name {str(name)!r} appears twice (columns {seen[str(name)]} and {i}); "
                "rename one so every column name is unique"
            )
        seen[str(name)] = i


def catalog_format(path: str | Path) -> str:
    name = str(path).lower()
    for suffix, fmt in (
        (".fits", "fits"),
        (".fit", "fits"),
        (".fits.gz", "fits"),
        (".fit.gz", "fits"),
        (".fts", "fits"),
        (".fts.gz", "fits"),
        (".parquet", "parquet"),
        (".pq", "parquet"),
        (".csv", "csv"),
        (".csv.gz", "csv"),
        (".tsv", "csv"),
        (".tsv.gz", "csv"),
    ):
        if name.endswith(suffix):
            return fmt
    if Path(path).is_dir():
        return "parquet"
    raise CatalogError(f"{path}: unknown catalog format (expected .fits, .parquet or .csv)")


class CatalogReader:
    """Streaming access to a catalog file.  ``columns`` lists the names in the file's spelling."""

    def __init__(self, path: str | Path, chunk_rows: int = 200_000):
        self.path = Path(path)
        self.chunk_rows = int(chunk_rows)
        self.text_columns: set = set()  # CSV columns read as text, exactly as written (ids)
        if not self.path.exists():
            raise CatalogError(f"{self.path}: no such file")
        self.format = catalog_format(self.path)
        try:
            self._open()
        except CatalogError:
            raise
        except Exception as exc:  # any parser failure is the file's fault
            raise CatalogError(
                f"{self.path}: cannot read as {self.format.upper()} "
                f"({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''})"
            ) from None

    # ---- opening
    def _open(self):
        if self.format == "fits":
            from .fits_read import FitsTable

            self._fits = FitsTable(self.path)  # opened by Python: no character of the path has a meaning
            self.columns = list(self._fits.names)
            refuse_duplicate_names(self.path, self.columns)
            self.nrows = self._fits.nrows
        elif self.format == "parquet":
            import pyarrow.parquet as pq

            self._pq = pq.ParquetFile(str(self.path)) if self.path.is_file() else None
            if self._pq is None:
                import pyarrow.dataset as ds

                self._ds = ds.dataset(str(self.path), format="parquet")
                self.columns = list(self._ds.schema.names)
                self.nrows = int(self._ds.count_rows())
            else:
                self.columns = list(self._pq.schema_arrow.names)
                self.nrows = int(self._pq.metadata.num_rows)
            refuse_duplicate_names(self.path, self.columns)
        else:
            head = pd.read_csv(
                self.path,
                nrows=5,
                sep=None if self._csv_sep == "\t" else ",",
                engine="python" if self._csv_sep == "\t" else "c",
            )
            self.columns = list(head.columns)
            # the header as written: pandas has already renamed a repeated name ("x" -> "x.1")
            refuse_duplicate_names(self.path, self._csv_header())
            self.nrows = sum(len(c) for c in self._csv_chunks(usecols=self.columns[:1]))

    @property
    def _csv_sep(self) -> str:
        return "\t" if str(self.path).lower().endswith((".tsv", ".tsv.gz")) else ","

    def _csv_header(self) -> list[str]:
        row = pd.read_csv(self.path, sep=self._csv_sep, header=None, nrows=1, dtype=str, keep_default_na=False)
        return [str(v) for v in row.iloc[0]]

    def _csv_chunks(self, usecols=None, dtype=None):
        if self.text_columns and dtype is None:
            dtype = {c: str for c in self.text_columns if usecols is None or c in usecols}
        return pd.read_csv(
            self.path, sep=self._csv_sep, usecols=usecols, chunksize=self.chunk_rows, dtype=dtype, low_memory=False
        )

    # ---- reading
    def read_rows(
        self, start: int, stop: int, columns: list[str] | None = None, nullable: tuple | list | set = ()
    ) -> pd.DataFrame:
        """Rows [start, stop).  Parquet integer/boolean columns named in ``nullable`` keep their type
        when they hold nulls (pandas nullable dtypes; see :func:`arrow_to_pandas`)."""
        columns = list(columns or self.columns)
        stop = min(stop, self.nrows)
        if start >= stop:
            return pd.DataFrame({c: [] for c in columns})
        if self.format == "fits":
            try:
                data = self._fits.read_rows(start, stop, columns)
            except ValueError as exc:
                raise CatalogError(f"{self.path}: {exc}") from None
            return pd.DataFrame(data, index=pd.RangeIndex(stop - start))
        if self.format == "parquet":
            return self._parquet_rows(start, stop, columns, nullable)
        parts, pos = [], 0
        for chunk in self._csv_chunks(usecols=columns):
            lo, hi = max(start - pos, 0), min(stop - pos, len(chunk))
            if lo < hi:
                parts.append(chunk.iloc[lo:hi])
            pos += len(chunk)
            if pos >= stop:
                break
        return pd.concat(parts, ignore_index=True)[columns]

    def _parquet_rows(self, start, stop, columns, nullable=()):
        import pyarrow as pa

        if self._pq is None:
            tab = self._ds.to_table(columns=columns)  # datasets: read then slice (small inputs)
            return arrow_to_pandas(tab.slice(start, stop - start), nullable)
        pieces, pos = [], 0
        md = self._pq.metadata
        for rg in range(md.num_row_groups):
            n = md.row_group(rg).num_rows
            if pos + n > start and pos < stop:
                t = self._pq.read_row_group(rg, columns=columns)
                pieces.append(t.slice(max(start - pos, 0), min(stop, pos + n) - max(start, pos)))
            pos += n
            if pos >= stop:
                break
        return arrow_to_pandas(pa.concat_tables(pieces), nullable)

    def iter_chunks(self, columns: list[str] | None = None) -> Iterator[tuple[int, pd.DataFrame]]:
        columns = list(columns or self.columns)
        if self.format == "csv":
            pos = 0
            for chunk in self._csv_chunks(usecols=columns):
                yield pos, chunk[columns].reset_index(drop=True)
                pos += len(chunk)
            return
        for start in range(0, self.nrows, self.chunk_rows):
            yield start, self.read_rows(start, start + self.chunk_rows, columns)

    def chunk_ranges(self) -> list[tuple[int, int]]:
        """Row ranges of about ``chunk_rows``.  A Parquet file's are whole row groups (one alone
        when larger): a row group is decoded whole to read any of its rows, so a chunk cut out of
        one would decode it once per chunk (5x the work for pyarrow's 1 Mi-row default)."""
        if self.format == "parquet" and getattr(self, "_pq", None) is not None:
            md, out, start, pos = self._pq.metadata, [], 0, 0
            for rg in range(md.num_row_groups):
                pos += md.row_group(rg).num_rows
                if pos - start >= self.chunk_rows:
                    out.append((start, pos))
                    start = pos
            if pos > start:
                out.append((start, pos))
            return out
        return [(s, min(s + self.chunk_rows, self.nrows)) for s in range(0, self.nrows, self.chunk_rows)]

    def check_columns(self, columns: list[str]) -> None:
        """Refuse, naming it, a column that cannot be carried exactly (FITS: complex, bit and
        variable-length columns), before any task reads it."""
        why = self._fits.refusal(columns) if self.format == "fits" else None
        if why:
            raise CatalogError(
                f"{literal(self.path)}: {literal(why)}; leave it out of {{keep_columns}}", "keep_columns"
            )

    def close(self):
        if getattr(self, "_fits", None) is not None:
            self._fits.close()


def read_table(path: str | Path, columns: list[str] | None = None) -> pd.DataFrame:
    """Read a whole (small) table: labelled training catalogs, test fixtures."""
    r = CatalogReader(path)
    try:
        return r.read_rows(0, r.nrows, columns)
    finally:
        r.close()


def arrow_to_pandas(table, nullable=()) -> pd.DataFrame:
    """Arrow -> pandas, where the integer/boolean columns named in ``nullable`` become pandas
    nullable dtypes (Int64, boolean...) instead of pyarrow's default float64/object *in the chunks
    that happen to hold a null*: a carried-through column then has one type in every partition,
    and 64-bit integers never pass through float64."""
    import pyarrow as pa

    # decimal columns stay Arrow decimals (exact; one type in every partition), never Python
    # Decimal objects that pyarrow would re-infer per partition, nor float64
    df = table.to_pandas(types_mapper=lambda t: pd.ArrowDtype(t) if pa.types.is_decimal(t) else None)
    # straight from Arrow into pandas' masked arrays: an ArrowDtype -> Int64 astype goes via float64
    nullable_types = {
        pa.bool_(): pd.BooleanDtype(),
        pa.int8(): pd.Int8Dtype(),
        pa.int16(): pd.Int16Dtype(),
        pa.int32(): pd.Int32Dtype(),
        pa.int64(): pd.Int64Dtype(),
        pa.uint8(): pd.UInt8Dtype(),
        pa.uint16(): pd.UInt16Dtype(),
        pa.uint32(): pd.UInt32Dtype(),
        pa.uint64(): pd.UInt64Dtype(),
    }
    for name in nullable:
        if name in table.column_names:
            t = table.schema.field(name).type
            if t in nullable_types:
                df[name] = table.select([name]).to_pandas(types_mapper=nullable_types.get)[name]
    return df


_CANONICAL_INT = r"^-?(0|[1-9][0-9]*)$"


def csv_id_kind(path: str | Path, column: str, chunk_rows: int = 200_000) -> str:
    """'int' when every non-blank value of a CSV id column is a canonical integer in int64 range
    (``0001`` or ``1.0`` or ``1e5`` are not: they stay text), else 'str'.  Reads the column as text,
    so an integer id column with a blank never passes through float64 (pandas' default)."""
    r = CatalogReader(path, chunk_rows=chunk_rows)
    r.text_columns = {column}
    seen = False
    for chunk in r._csv_chunks(usecols=[column]):
        v = chunk[column].dropna().str.strip()
        v = v[v != ""]
        if not v.str.fullmatch(_CANONICAL_INT).all():
            return "str"
        digits = v.str.lstrip("-")
        big = digits.str.len() >= 19
        if big.any() and not all(-(2**63) <= int(x) < 2**63 for x in v[big]):
            return "str"
        seen = seen or len(v) > 0
    return "int" if seen else "str"
