"""Writers: atomic Parquet partitions (VOParquet metadata), the dataset ``_metadata``; the FITS
table is :mod:`.fits_write`.

* Partitions are written atomically (:mod:`mergerscan.atomic`: a temporary file in the same
  directory, flushed, then ``os.replace``) and deterministically: the same DataFrame and
  metadata give the same bytes (no timestamps).
* Every Parquet file carries VOParquet metadata (IVOA Note "VOParquet" 1.0): the key-value
  pairs ``IVOA.VOTable-Parquet.version = "1.0"`` and ``IVOA.VOTable-Parquet.content`` = a VOTable
  document whose TABLE has one FIELD per column (datatype, unit, UCD, description) and no DATA;
  plus ``mergerscan.*`` provenance keys.
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
from .schema import OPTIONAL_COLUMNS, carried_ids, column

VOPARQUET_VERSION = "1.0"
VOTABLE_NS = "http://www.ivoa.net/xml/VOTable/v1.3"


# ---------------------------------------------------------------- column metadata
def column_info(name: str, carried: set | frozenset = frozenset()) -> tuple[str | None, str | None, str]:
    """(unit, ucd, description) of an output column; carried-through input columns (and the names
    in ``carried``: see :func:`~mergerscan.catalogs.schema.carried_ids`) get no unit/UCD."""
    c = column(name, carried)
    return c.unit, c.ucd, c.description


def is_vector(t: pa.DataType) -> bool:
    """A fixed-size list of float32 (the ``embedding`` column): a vector column in FITS."""
    return pa.types.is_fixed_size_list(t) and t.value_type == pa.float32()


def embedding_matrix(col: pa.Array | pa.ChunkedArray, dim: int) -> np.ndarray:
    """A vector column (fixed-size list of float32) as (n, dim) float32, NaN for null rows."""
    col = col.combine_chunks() if isinstance(col, pa.ChunkedArray) else col
    out = np.full((len(col), dim), np.nan, np.float32)
    valid = ~np.asarray(col.is_null().to_numpy(zero_copy_only=False), bool)
    if valid.any():
        out[valid] = col.filter(pa.array(valid)).flatten().to_numpy(zero_copy_only=False).reshape(-1, dim)
    return out


def carried_names(schema: pa.Schema) -> set[str]:
    """The columns of an output table that are kept input columns although they bear an output
    column's name: a later id spelling (:func:`~mergerscan.catalogs.schema.carried_ids`), and an
    optional column's name on a column that is not that column (a kept ``embedding`` of a run
    without --embeddings, which is not a vector)."""
    return carried_ids(schema.names) | {f.name for f in schema if f.name in OPTIONAL_COLUMNS and not is_vector(f.type)}


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
    if is_vector(t):
        return "float", str(t.list_size)
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
        if key == "model_card" or value is None or isinstance(value, dict):
            continue
        dt = 'datatype="double"' if isinstance(value, float) else 'datatype="char" arraysize="*"'
        out.append(f"<PARAM name={quoteattr(key)} {dt} value={quoteattr(str(value))}/>")
    carried = carried_names(schema)
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
def normalise(arr: pa.Array) -> pa.Array:
    """One Arrow type per kind: string (not large_string), float32 for float16, decoded
    dictionaries, strings for anything exotic (timestamps, lists, all-null columns)."""
    t = arr.type
    if pa.types.is_dictionary(t):
        return normalise(arr.dictionary_decode())
    if pa.types.is_boolean(t) or pa.types.is_integer(t) or t in (pa.float32(), pa.float64()) or is_vector(t):
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
        return normalise(pa.array(s.to_numpy()))  # numpy: NaN stays NaN (not null)
    if s.dtype == object:
        values = s.to_numpy(object)
        try:
            return normalise(pa.array(values, from_pandas=True))
        except (pa.ArrowInvalid, pa.ArrowTypeError):  # mixed types: keep them as text
            return pa.array([None if pd.isna(v) else str(v) for v in values], pa.string())
    return normalise(pa.array(s, from_pandas=True))  # nullable / string / arrow-backed dtypes


def to_arrow(df: pd.DataFrame | pa.Table, schema: pa.Schema | None = None) -> pa.Table:
    """DataFrame (numpy, nullable, string or arrow-backed dtypes) -> Arrow table writeable to
    Parquet and FITS.  ``schema`` (optional) forces the column types, e.g. the same types in
    every partition even where one partition's kept column is all null."""
    if isinstance(df, pa.Table):
        table = pa.table({n: normalise(c.combine_chunks()) for n, c in zip(df.column_names, df.columns)})
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
    emb = (metadata or {}).get("embedding")
    if emb and "embedding" in table.column_names and is_vector(table.schema.field("embedding").type):
        i = table.schema.get_field_index("embedding")  # its provenance, as the field's own metadata
        table = table.set_column(i, table.schema.field(i).with_metadata(emb), table.column(i))
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
