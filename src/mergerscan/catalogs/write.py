"""Writers: atomic Parquet partitions (VOParquet metadata), the dataset ``_metadata``, one FITS table.

* Partitions are written atomically (:mod:`mergerscan.atomic`: a temporary file in the same
  directory, flushed, then ``os.replace``) and deterministically: the same DataFrame and
  metadata give the same bytes (no timestamps).
* Every Parquet file carries VOParquet metadata (IVOA Note "VOParquet" 1.0): the key-value
  pairs ``IVOA.VOTable-Parquet.version = "1.0"`` and ``IVOA.VOTable-Parquet.content`` = a VOTable
  document whose TABLE has one FIELD per column (datatype, unit, UCD, description) and no DATA;
  plus ``mergerscan.*`` provenance keys.
* The FITS table is streamed partition by partition (bounded memory) into a Python file object
  (:mod:`.fits_file`: no character of the output path has a meaning); int64 columns are plain
  ``K`` (no TZERO/TSCAL, so 64-bit ids stay exact); integers with nulls get a ``TNULLn`` that no
  value of the column uses (:mod:`.fits_nulls`); float nulls are NaN; boolean nulls become False;
  strings are fixed width (the widest value over all partitions), ASCII (non-ASCII characters
  as backslash escapes) and string nulls become "".
"""

from __future__ import annotations

import json
from pathlib import Path
from xml.sax.saxutils import escape, quoteattr

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from ..atomic import atomic_write
from .fits_file import TableWriter
from .fits_nulls import U8_ZERO, choose_tnull
from .schema import STATUS_WIDTH, column

VOPARQUET_VERSION = "1.0"
VOTABLE_NS = "http://www.ivoa.net/xml/VOTable/v1.3"
FITS_EXTNAME = "MERGERS"
# run metadata key -> FITS keyword (other keys, e.g. the model card, stay in the Parquet files only)
FITS_KEYWORDS = {
    "engine_name": "ENGINE",
    "engine_sha256": "ENGSHA",
    "mergerscan_version": "MSVERSN",
    "threshold": "THRESH",
    "views": "TTAVIEWS",
    "source": "IMGSRC",
    "command": "COMMAND",
}


# ---------------------------------------------------------------- column metadata
def column_info(name: str) -> tuple[str | None, str | None, str]:
    """(unit, ucd, description) of an output column; carried-through input columns get no unit/UCD."""
    c = column(name)
    return c.unit, c.ucd, c.description


def _votable_type(t: pa.DataType) -> tuple[str, str | None]:
    """(VOTable datatype, arraysize) of an Arrow type (as normalised by :func:`to_arrow`)."""
    if pa.types.is_boolean(t):
        return "boolean", None
    if pa.types.is_integer(t):
        return {
            (True, 1): "short",
            (True, 2): "short",
            (True, 4): "int",
            (True, 8): "long",
            (False, 1): "unsignedByte",
            (False, 2): "int",
            (False, 4): "long",
            (False, 8): "long",
        }[(pa.types.is_signed_integer(t), t.bit_width // 8)], None
    if pa.types.is_floating(t):
        return ("double" if t.bit_width == 64 else "float"), None
    if pa.types.is_binary(t) or pa.types.is_large_binary(t):
        return "unsignedByte", "*"
    return "char", "*"


def votable_xml(schema: pa.Schema, metadata: dict | None = None) -> str:
    """The VOParquet ``IVOA.VOTable-Parquet.content`` document: FIELDs for ``schema``, no DATA."""
    out = [
        '<?xml version="1.0" encoding="UTF-8"?>',
        f'<VOTABLE version="1.4" xmlns="{VOTABLE_NS}">',
        '<RESOURCE type="results">',
        '<TABLE name="mergerscan">',
        "<DESCRIPTION>Galaxy-merger probabilities from mergerscan process-catalog</DESCRIPTION>",
    ]
    for key, value in sorted((metadata or {}).items()):
        if key == "model_card" or value is None:
            continue
        dt = 'datatype="double"' if isinstance(value, float) else 'datatype="char" arraysize="*"'
        out.append(f"<PARAM name={quoteattr(key)} {dt} value={quoteattr(str(value))}/>")
    for f in schema:
        datatype, arraysize = _votable_type(f.type)
        unit, ucd, desc = column_info(f.name)
        attrs = f'name={quoteattr(f.name)} datatype="{datatype}"'
        attrs += f' arraysize="{arraysize}"' if arraysize else ""
        attrs += f" unit={quoteattr(unit)}" if unit else ""
        attrs += f" ucd={quoteattr(ucd)}" if ucd else ""
        out.append(f"<FIELD {attrs}><DESCRIPTION>{escape(desc)}</DESCRIPTION></FIELD>")
    out += ["</TABLE>", "</RESOURCE>", "</VOTABLE>"]
    return "\n".join(out)


def parquet_metadata(schema: pa.Schema, metadata: dict | None) -> dict[bytes, bytes]:
    kv = {
        b"IVOA.VOTable-Parquet.version": VOPARQUET_VERSION.encode(),
        b"IVOA.VOTable-Parquet.content": votable_xml(schema, metadata).encode(),
    }
    for key, value in sorted((metadata or {}).items()):
        kv[f"mergerscan.{key}".encode()] = (value if isinstance(value, str) else json.dumps(value)).encode()
    return kv


# ---------------------------------------------------------------- the dtype helper
def _normalise(arr: pa.Array) -> pa.Array:
    """One Arrow type per kind: string (not large_string), float32 for float16, decoded
    dictionaries, strings for anything exotic (timestamps, lists, all-null columns)."""
    t = arr.type
    if pa.types.is_dictionary(t):
        return _normalise(arr.dictionary_decode())
    if pa.types.is_boolean(t) or pa.types.is_integer(t) or t in (pa.float32(), pa.float64()):
        return arr
    if pa.types.is_float16(t):
        return arr.cast(pa.float32())
    if pa.types.is_decimal(t):
        return arr.cast(pa.float64())
    if pa.types.is_large_binary(t) or pa.types.is_binary(t):
        return arr.cast(pa.binary())
    if pa.types.is_string(t) or pa.types.is_large_string(t) or pa.types.is_null(t):
        return arr.cast(pa.string())
    try:
        return arr.cast(pa.string())
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        return pa.array([None if v is None else json.dumps(v, default=str) for v in arr.to_pylist()], pa.string())


def _arrow_column(s: pd.Series) -> pa.Array:
    if isinstance(s.dtype, pd.CategoricalDtype):
        s = s.astype(s.cat.categories.dtype)
    if s.dtype.kind in "fiub" and isinstance(s.dtype, np.dtype):
        return _normalise(pa.array(s.to_numpy()))  # numpy: NaN stays NaN (not null)
    if s.dtype == object:
        values = s.to_numpy(object)
        try:
            return _normalise(pa.array(values, from_pandas=True))
        except (pa.ArrowInvalid, pa.ArrowTypeError):  # mixed types: keep them as text
            return pa.array([None if pd.isna(v) else str(v) for v in values], pa.string())
    return _normalise(pa.array(s, from_pandas=True))  # nullable / string / arrow-backed dtypes


def to_arrow(df: pd.DataFrame | pa.Table, schema: pa.Schema | None = None) -> pa.Table:
    """DataFrame (numpy, nullable, string or arrow-backed dtypes) -> Arrow table writeable to
    Parquet and FITS.  ``schema`` (optional) forces the column types, e.g. the same types in
    every partition even where one partition's kept column is all null."""
    if isinstance(df, pa.Table):
        table = pa.table({n: _normalise(c.combine_chunks()) for n, c in zip(df.column_names, df.columns)})
    else:
        table = pa.table({str(c): _arrow_column(df[c]) for c in df.columns})
    if schema is not None:
        if table.column_names != schema.names:
            raise ValueError(f"columns {table.column_names} do not match the schema {schema.names}")
        cols = []
        for col, f in zip(table.columns, schema):
            if pa.types.is_floating(col.type) and not pa.types.is_floating(f.type):
                col = pc.if_else(pc.is_nan(col), pa.scalar(None, col.type), col)  # pandas NaN = missing
            cols.append(col.cast(f.type))
        table = pa.table(cols, schema=schema.remove_metadata())
    return table


# ---------------------------------------------------------------- Parquet
def write_partition(
    df: pd.DataFrame | pa.Table, path: str | Path, metadata: dict | None = None, schema: pa.Schema | None = None
) -> Path:
    """Write one partition atomically and deterministically, with VOParquet metadata."""
    table = to_arrow(df, schema)
    table = table.replace_schema_metadata(parquet_metadata(table.schema, metadata))
    atomic_write(Path(path), lambda tmp: pq.write_table(table, tmp, compression="zstd", write_statistics=True))
    return Path(path)


def write_metadata(dataset_dir: str | Path, partition_files: list) -> Path:
    """Write ``_common_metadata`` and ``_metadata`` (row groups of every partition, paths relative
    to ``dataset_dir``).  All partitions must share one schema."""
    dataset_dir = Path(dataset_dir)
    if not partition_files:
        raise ValueError(f"{dataset_dir}: no partition files to summarise")
    root = dataset_dir.resolve()
    schema, first, collected = None, None, []
    for f in partition_files:
        md = pq.read_metadata(f)
        s = md.schema.to_arrow_schema()
        if schema is None:
            schema, first = pq.read_schema(f), f
        elif not s.equals(schema, check_metadata=False):
            diff = [f"{a}" for a in s if a.name not in schema.names or schema.field(a.name).type != a.type]
            raise ValueError(
                f"{f}: schema differs from {first} ({'; '.join(diff) or 'column order'}); "
                "write every partition with the same schema= "
            )
        md.set_file_path(Path(f).resolve().relative_to(root).as_posix())
        collected.append(md)
    atomic_write(dataset_dir / "_common_metadata", lambda tmp: pq.write_metadata(schema, tmp))
    atomic_write(dataset_dir / "_metadata", lambda tmp: pq.write_metadata(schema, tmp, metadata_collector=collected))
    return dataset_dir / "_metadata"


# ---------------------------------------------------------------- FITS
_INT_FITS = {  # arrow int type -> numpy dtype written (no TZERO: only signed types and uint8 'B')
    pa.int8(): "i2",
    pa.int16(): "i2",
    pa.int32(): "i4",
    pa.int64(): "i8",
    pa.uint8(): "u1",
    pa.uint16(): "i4",
    pa.uint32(): "i8",
    pa.uint64(): "u8",
}  # uint64 (ids >= 2^63): K with TZERO = 2^63, cfitsio's exact unsigned-64 convention


def fits_text(col) -> pa.Array:
    """A text/binary column as FITS character data: ASCII only (the FITS standard), so any
    non-ASCII character is written as a backslash escape (``naïve`` -> ``na\\xefve``, ``Δ`` ->
    ``\\u0394``); pure-ASCII columns (the usual case) are not touched value by value."""
    col = col.combine_chunks() if isinstance(col, pa.ChunkedArray) else col
    if pa.types.is_string(col.type) or pa.types.is_large_string(col.type):
        if pc.all(pc.string_is_ascii(col)).as_py() in (True, None):
            return col.cast(pa.binary())
        return pa.array([None if v is None else _ascii(v).encode() for v in col.to_pylist()], pa.binary())
    col = col.cast(pa.binary())
    values = col.to_pylist()
    if all(v is None or v.isascii() for v in values):
        return col
    return pa.array(
        [None if v is None else v.decode("ascii", "backslashreplace").encode() for v in values], pa.binary()
    )


def fits_layout(files: list) -> list[tuple[str, pa.DataType, str, int | None]]:
    """First, cheap pass over the partitions: [(name, arrow type, numpy dtype, TNULL or None)].
    Reads Parquet footers, plus only the string columns (for their widths) and integer columns
    whose footers lack null counts."""
    schemas = [pq.read_schema(f).remove_metadata() for f in files]
    try:
        schema = pa.unify_schemas(schemas, promote_options="permissive")
    except (pa.ArrowInvalid, pa.ArrowTypeError) as exc:
        raise ValueError(f"partition schemas cannot be combined into one FITS table: {exc}") from None
    schema = pa.schema([pa.field(f.name, _normalise(pa.array([], f.type)).type) for f in schema])
    text = [f.name for f in schema if pa.types.is_string(f.type) or pa.types.is_binary(f.type)]
    ints = [f.name for f in schema if pa.types.is_integer(f.type)]
    width = {n: (STATUS_WIDTH if n == "status" else 1) for n in text}
    nulls = {n: 0 for n in ints}
    for f, s in zip(files, schemas):
        pf = pq.ParquetFile(f)
        for n in ints:
            if n not in s.names:
                nulls[n] += pf.metadata.num_rows
                continue
            i = s.get_field_index(n)
            stats = [pf.metadata.row_group(r).column(i).statistics for r in range(pf.metadata.num_row_groups)]
            if all(st is not None and st.has_null_count for st in stats):
                nulls[n] += sum(st.null_count for st in stats)
            else:
                nulls[n] += pf.read(columns=[n]).column(0).null_count
        have = [n for n in text if n in s.names]
        if have:
            t = pf.read(columns=have)
            for n in have:
                lengths = pc.binary_length(fits_text(t.column(n)))
                width[n] = max(width[n], int(pc.max(lengths).as_py() or 0))
    layout = []
    for f in schema:
        t, tnull = f.type, None
        if pa.types.is_boolean(t):
            npdt = "?"
        elif pa.types.is_integer(t):
            npdt = _INT_FITS[t]
            if nulls[f.name]:  # uint64: TNULL applies to the stored (value - 2^63) integer
                npdt, tnull = choose_tnull(files, f.name, "i2" if npdt == "u1" else npdt)
        elif pa.types.is_floating(t):
            npdt = "f8" if t.bit_width == 64 else "f4"
        else:
            npdt = f"S{width[f.name]}"
        layout.append((f.name, t, npdt, tnull))
    return layout


def to_fits_records(table: pa.Table, layout: list) -> np.ndarray:
    """One Arrow batch -> a numpy structured array with the FITS layout (nulls filled)."""
    rec = np.zeros(table.num_rows, dtype=[(n, d) for n, _, d, _ in layout])
    for name, t, npdt, tnull in layout:
        if name not in table.column_names:
            col = pa.nulls(table.num_rows, t)
        else:
            col = _normalise(table.column(name).combine_chunks())
        kind = np.dtype(npdt).kind
        if kind == "S":
            rec[name] = pc.fill_null(fits_text(col), b"").to_numpy(zero_copy_only=False).astype(npdt)
        elif kind == "b":
            rec[name] = pc.fill_null(col.cast(pa.bool_()), False).to_numpy(zero_copy_only=False)
        elif kind in "iu":
            target = pa.from_numpy_dtype(np.dtype(npdt))
            col = col.cast(target)  # safe cast: overflow raises
            fill = (tnull + U8_ZERO) if npdt == "u8" and tnull is not None else tnull
            rec[name] = (pc.fill_null(col, fill) if tnull is not None else col).to_numpy(zero_copy_only=False)
        else:
            rec[name] = col.cast(pa.float64()).to_numpy(zero_copy_only=False).astype(npdt)
    return rec


def _ascii(text: str) -> str:
    """FITS header values are printable ASCII: other characters as \\xXX / \\uXXXX escapes."""
    text = text.encode("ascii", "backslashreplace").decode("ascii")
    return "".join(c if " " <= c <= "~" else c.encode("unicode_escape").decode("ascii") for c in text)


def _column_cards(layout: list, info: list, comments: list) -> list:
    """TUNITn, TNULLn, TUCDn and TCOMMn of every column."""
    cards: list = []
    for i, ((*_, tnull), (unit, ucd, _)) in enumerate(zip(layout, info), start=1):
        if unit:
            cards.append((f"TUNIT{i}", unit))
        if tnull is not None:
            cards.append((f"TNULL{i}", tnull))
        if ucd:
            cards.append((f"TUCD{i}", ucd))
        cards.append((f"TCOMM{i}", comments[i - 1]))
    return cards


def write_fits_table(
    partition_files: list,
    fits_path: str | Path,
    header_meta: dict | None = None,
    batch_rows: int = 65536,
    origins: dict | None = None,
) -> Path:
    """Stream all partitions into ONE FITS binary table (units, UCDs, descriptions, run keywords).

    Column names follow :func:`~mergerscan.catalogs.schema.fits_names` (the Parquet name where it is
    a legal FITS name); ``origins`` ({Parquet name: input column}) puts each carried column's input
    name in its TCOMMn, with the Parquet name where FITS had to change it."""
    from .schema import fits_names

    files = [str(f) for f in partition_files]
    if not files:
        raise ValueError(f"{fits_path}: no partition files to write")
    layout = fits_layout(files)
    rename = fits_names([n for n, *_ in layout])
    dtype = np.dtype([(rename[n], d) for n, _, d, _ in layout])
    info = [column_info(n) for n, *_ in layout]
    comments = []
    for (n, *_), (_, _, desc) in zip(layout, info):
        orig = (origins or {}).get(n)
        if orig is not None:
            desc = f"input column {orig!r}"
        if rename[n] != n and orig != n:
            desc += f" (Parquet column {n!r})"
        comments.append(_ascii(desc))
    fits_path = Path(fits_path)
    nrows = sum(pq.ParquetFile(f).metadata.num_rows for f in files)
    cards = _column_cards(layout, info, comments) + [("EXTNAME", FITS_EXTNAME, "name of this binary table extension")]
    for key, value in (header_meta or {}).items():
        if key in FITS_KEYWORDS and value is not None:
            cards.append((FITS_KEYWORDS[key], value if isinstance(value, (int, float)) else _ascii(str(value))))
    cards.append(("NROWS", nrows, "rows (= rows of the input catalog)"))

    def write(tmp: Path):
        with open(tmp, "wb") as f:
            out = TableWriter(f, dtype, nrows, cards)
            for part in files:
                for batch in pq.ParquetFile(part).iter_batches(batch_size=batch_rows):
                    rec = to_fits_records(pa.Table.from_batches([batch]), layout)
                    rec.dtype.names = tuple(rename[n] for n in rec.dtype.names or ())
                    out.append(rec)
            out.close()

    atomic_write(fits_path, write)
    return fits_path
