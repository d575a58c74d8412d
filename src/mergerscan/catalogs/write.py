"""Writers: atomic Parquet partitions (VOParquet metadata), the dataset ``_metadata``, one FITS table.

* Partitions are written atomically (:mod:`mergerscan.atomic`: a temporary file in the same
  directory, flushed, then ``os.replace``) and deterministically: the same DataFrame and
  metadata give the same bytes (no timestamps).
* Every Parquet file carries VOParquet metadata (IVOA Note "VOParquet" 1.0): the key-value
  pairs ``IVOA.VOTable-Parquet.version = "1.0"`` and ``IVOA.VOTable-Parquet.content`` = a VOTable
  document whose TABLE has one FIELD per column (datatype, unit, UCD, description) and no DATA;
  plus ``mergerscan.*`` provenance keys.
* The FITS table is streamed partition by partition (bounded memory); int64 columns are plain
  ``K`` (no TZERO/TSCAL, so 64-bit ids stay exact); integers with nulls get a ``TNULLn``;
  float nulls are NaN; boolean nulls become False; strings are fixed width (the widest value
  over all partitions), ASCII (non-ASCII characters as backslash escapes) and string nulls become "".
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
from .schema import STATUS_WIDTH, carried_ids, column

VOPARQUET_VERSION = "1.0"
VOTABLE_NS = "http://www.ivoa.net/xml/VOTable/v1.3"
FITS_EXTNAME = "MERGERS"
# run metadata key -> FITS keyword (other keys, e.g. the model card, stay in the Parquet files only)
FITS_KEYWORDS = {
    "engine_name": "ENGINE",
    "engine_sha256": "ENGSHA",
    "mergerscan_version": "MSVERSN",
    "threshold": "THRESH",
    # the operating point (engines/operating.py): how THRESH was chosen and what it means
    "operating_rule": "OPRULE",
    "operating_target": "OPTARGET",
    "prevalence": "OPPREVAL",
    "expected_purity": "EXPPUR",
    "expected_purity_lo": "EXPPURLO",
    "expected_purity_hi": "EXPPURHI",
    "expected_completeness": "EXPCOMP",
    "expected_completeness_lo": "EXPCOMLO",
    "expected_completeness_hi": "EXPCOMHI",
    "views": "TTAVIEWS",
    "source": "IMGSRC",
    "command": "COMMAND",
    "domain": "DOMAIN",  # --domain on|off|catalog|image
    "domain_threshold": "DOMTHR",  # the image check's threshold on domain_score (absent: not applied)
}


# ---------------------------------------------------------------- column metadata
def column_info(name: str, carried: set | frozenset = frozenset()) -> tuple[str | None, str | None, str]:
    """(unit, ucd, description) of an output column; carried-through input columns (and the names
    in ``carried``: see :func:`~mergerscan.catalogs.schema.carried_ids`) get no unit/UCD."""
    c = column(name, carried)
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
    if pa.types.is_floating(t) or pa.types.is_decimal(t):  # a decimal is a number (exact in the file)
        return ("float" if pa.types.is_floating(t) and t.bit_width < 64 else "double"), None
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
    carried = carried_ids(schema.names)
    for f in schema:
        datatype, arraysize = _votable_type(f.type)
        unit, ucd, desc = column_info(f.name, carried)
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
    if pa.types.is_decimal(t):  # exact in Parquet; FITS has no decimal type (fits_column)
        return arr
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


FITS_EXACT_DIGITS = 15  # a float64 holds any decimal of up to 15 significant digits (round-trips)


def fits_column(arr: pa.Array) -> pa.Array:
    """A normalised column as FITS can hold it: a decimal column of precision <= 15 as float64
    (printed with its scale, each value reads back exactly), a wider one as exact text."""
    arr = _normalise(arr)
    if pa.types.is_decimal(arr.type):
        return arr.cast(pa.float64() if arr.type.precision <= FITS_EXACT_DIGITS else pa.string())
    return arr


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
    schema = pa.schema([pa.field(f.name, fits_column(pa.array([], f.type)).type) for f in schema])
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
                lengths = pc.binary_length(fits_text(fits_column(t.column(n).combine_chunks())))
                width[n] = max(width[n], int(pc.max(lengths).as_py() or 0))
    layout = []
    for f in schema:
        t, tnull = f.type, None
        if pa.types.is_boolean(t):
            npdt = "?"
        elif pa.types.is_integer(t):
            npdt = _INT_FITS[t]
            if nulls[f.name]:
                npdt = "i2" if npdt == "u1" else npdt
                # uint64: TNULL applies to the stored (value - 2^63) integer; 2^64-1 is the usual sentinel
                tnull = int(np.iinfo(np.int64).max) if npdt == "u8" else int(np.iinfo(npdt).min)
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
            col = fits_column(table.column(name).combine_chunks())
        kind = np.dtype(npdt).kind
        if kind == "S":
            rec[name] = pc.fill_null(fits_text(col), b"").to_numpy(zero_copy_only=False).astype(npdt)
        elif kind == "b":
            rec[name] = pc.fill_null(col.cast(pa.bool_()), False).to_numpy(zero_copy_only=False)
        elif kind in "iu":
            target = pa.from_numpy_dtype(np.dtype(npdt))
            col = col.cast(target)  # safe cast: overflow raises
            fill = (tnull + 2**63) if npdt == "u8" and tnull is not None else tnull
            rec[name] = (pc.fill_null(col, fill) if tnull is not None else col).to_numpy(zero_copy_only=False)
        else:
            rec[name] = col.cast(pa.float64()).to_numpy(zero_copy_only=False).astype(npdt)
    return rec


def _ascii(text: str) -> str:
    """FITS header values are ASCII: non-ASCII characters as \\uXXXX escapes."""
    return text.encode("ascii", "backslashreplace").decode("ascii")


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
    import fitsio

    from .schema import fits_names

    files = [str(f) for f in partition_files]
    if not files:
        raise ValueError(f"{fits_path}: no partition files to write")
    layout = fits_layout(files)
    rename = fits_names([n for n, *_ in layout])
    dtype = np.dtype([(rename[n], d) for n, _, d, _ in layout])
    info = [column_info(n, carried_ids([n for n, *_ in layout])) for n, *_ in layout]
    comments = []
    for (n, *_), (_, _, desc) in zip(layout, info):
        orig = (origins or {}).get(n)
        if orig is not None:
            desc = f"input column {orig!r}"
        if rename[n] != n and orig != n:
            desc += f" (Parquet column {n!r})"
        comments.append(_ascii(desc))
    fits_path = Path(fits_path)

    def write(tmp: Path):
        nrows = 0
        with fitsio.FITS(str(tmp), "rw", clobber=True) as fits:
            fits.create_table_hdu(dtype=dtype, units=[u or "" for u, _, _ in info], extname=FITS_EXTNAME)
            hdu = fits[-1]
            for i, ((_, _, _, tnull), (_, ucd, _)) in enumerate(zip(layout, info), start=1):
                if tnull is not None:
                    hdu.write_key(f"TNULL{i}", tnull)
                if ucd:
                    hdu.write_key(f"TUCD{i}", ucd)
                hdu.write_key(f"TCOMM{i}", comments[i - 1])
            for key, value in (header_meta or {}).items():
                if key in FITS_KEYWORDS and value is not None:
                    hdu.write_key(FITS_KEYWORDS[key], value if isinstance(value, (int, float)) else str(value))
            for f in files:
                for batch in pq.ParquetFile(f).iter_batches(batch_size=batch_rows):
                    rec = to_fits_records(pa.Table.from_batches([batch]), layout)
                    rec.dtype.names = tuple(rename[n] for n in rec.dtype.names or ())
                    if len(rec):
                        hdu.append(rec)
                        nrows += len(rec)
            hdu.write_key("NROWS", nrows, comment="rows in this table (= rows of the input catalog)")

    atomic_write(fits_path, write)
    return fits_path
