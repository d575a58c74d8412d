"""The one FITS table of a run (``OUT/mergers.fits``), written from its Parquet partitions.

The table is streamed partition by partition (bounded memory) into a Python file object
(:mod:`.fits_file`: no character of the output path has a meaning); int64 columns are plain ``K``
(no TZERO/TSCAL, so 64-bit ids stay exact); integers with nulls get a ``TNULLn`` that no value of
the column uses (:mod:`.fits_nulls`); float nulls are NaN; boolean nulls become False; strings are
fixed width (the widest value over all partitions), ASCII (non-ASCII characters as backslash
escapes) and string nulls become "".
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from ..atomic import atomic_write
from .fits_file import TableWriter
from .fits_nulls import U8_ZERO, choose_tnull
from .schema import STATUS_WIDTH
from .write import carried_names, column_info, embedding_matrix, is_vector, normalise

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
    "p_merger_interval": "PINTVL",  # where p_merger_lo/hi come from (engines.uncertainty), or why they are NaN
    "source": "IMGSRC",
    "command": "COMMAND",
    "domain": "DOMAIN",  # --domain on|off|catalog|image
    "domain_threshold": "DOMTHR",  # the image check's threshold on domain_score (absent: not applied)
    "domain_saturated": "DOMSAT",  # ... and its limit on saturated_core (absent: not applied)
    "embeddings": "EMBDIM",  # --embeddings N: the embedding column's dimension (absent: no column)
}


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
    arr = normalise(arr)
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
            nulls[n] += _null_count(pf, s, n)
        have = [n for n in text if n in s.names]
        if have:
            t = pf.read(columns=have)
            for n in have:
                lengths = pc.binary_length(fits_text(fits_column(t.column(n).combine_chunks())))
                width[n] = max(width[n], int(pc.max(lengths).as_py() or 0))
    return [(f.name, f.type, *_fits_dtype(files, f, nulls, width)) for f in schema]


def _null_count(pf: pq.ParquetFile, schema: pa.Schema, name: str) -> int:
    """Nulls of column ``name`` in one partition file: from the footer's statistics where every
    row group has them, else by reading the column (all rows where the file lacks it)."""
    if name not in schema.names:
        return pf.metadata.num_rows
    i = schema.get_field_index(name)
    stats = [pf.metadata.row_group(r).column(i).statistics for r in range(pf.metadata.num_row_groups)]
    if all(st is not None and st.has_null_count for st in stats):
        return sum(st.null_count for st in stats)
    return pf.read(columns=[name]).column(0).null_count


def _fits_dtype(files: list, f: pa.Field, nulls: dict[str, int], width: dict[str, int]) -> tuple[str, int | None]:
    """(numpy dtype, TNULL or None) of one output column (``nulls`` per integer column,
    ``width`` per text column)."""
    t = f.type
    if pa.types.is_boolean(t):
        return "?", None
    if pa.types.is_integer(t):
        npdt = _INT_FITS[t]
        if nulls[f.name]:  # uint64: TNULL applies to the stored (value - 2^63) integer
            return choose_tnull(files, f.name, "i2" if npdt == "u1" else npdt)
        return npdt, None
    if pa.types.is_floating(t):
        return ("f8" if t.bit_width == 64 else "f4"), None
    if is_vector(t):  # the embedding: a float32 vector column, TFORM 'NE'
        return f"({t.list_size},)f4", None
    return f"S{width[f.name]}", None


def to_fits_records(table: pa.Table, layout: list) -> np.ndarray:
    """One Arrow batch -> a numpy structured array with the FITS layout (nulls filled)."""
    rec = np.zeros(table.num_rows, dtype=[(n, d) for n, _, d, _ in layout])
    for name, t, npdt, tnull in layout:
        if name not in table.column_names:
            col = pa.nulls(table.num_rows, t)
        else:
            col = fits_column(table.column(name).combine_chunks())
        kind = np.dtype(npdt).kind
        if is_vector(t):
            rec[name] = embedding_matrix(col, t.list_size)
        elif kind == "S":
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
    carried = carried_names(pa.schema([(n, t) for n, t, *_ in layout]))
    info = [column_info(n, carried) for n, *_ in layout]
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
