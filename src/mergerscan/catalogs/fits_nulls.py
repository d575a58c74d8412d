"""TNULL for a nullable integer column of the FITS output: a stored value no real value uses.

A reader (TOPCAT, STILTS, astropy) shows every stored value equal to ``TNULLn`` as null, so
TNULL must not be a value the column holds: the type's minimum is tried first (the usual
choice), then its maximum, then the smallest value absent from the column.  Parquet row-group
statistics (min/max) rule a candidate out without reading the column; only when they cannot is
the column read.  When every value of the type is used (possible for 8/16/32-bit columns) the
column is written one size wider, where the wider type's minimum is free.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from .fits_file import U8_ZERO  # stored = value - 2^63 for uint64 (K)

_WIDER = {"i2": "i4", "i4": "i8"}


def physical_range(npdt: str) -> tuple[int, int]:
    """The values a column written as ``npdt`` can hold ('u8': K with TZERO = 2^63)."""
    if npdt == "u8":
        return 0, 2**64 - 1
    info = np.iinfo(np.dtype(npdt))
    return int(info.min), int(info.max)


def _may_hold(files: list, name: str, value: int) -> list:
    """The files whose statistics do not rule out ``value`` in column ``name``."""
    out = []
    for f in files:
        md = pq.ParquetFile(f).metadata
        names = md.schema.to_arrow_schema().names
        if name not in names:
            continue
        i = names.index(name)
        for r in range(md.num_row_groups):
            st = md.row_group(r).column(i).statistics
            if st is None or not st.has_min_max or st.min <= value <= st.max:
                out.append(f)
                break
    return out


def _column(f, name: str) -> pa.Array:
    return pq.read_table(f, columns=[name]).column(name).combine_chunks()


def _holds(files: list, name: str, value: int) -> bool:
    for f in _may_hold(files, name, value):
        col = _column(f, name)
        info = np.iinfo(col.type.to_pandas_dtype())
        if not info.min <= value <= info.max:  # e.g. -2^15 in an int8 column written as I
            continue
        if pc.any(pc.equal(col, pa.scalar(value, col.type))).as_py():
            return True
    return False


def _first_gap(files: list, name: str, lo: int, hi: int) -> int | None:
    """The smallest value in [lo, hi] the column does not hold, or None when it holds them all."""
    parts = [_column(f, name).drop_null().to_numpy() for f in files if name in pq.read_schema(f).names]
    values = np.unique(np.concatenate(parts)) if parts else np.array([], np.int64)
    expect = lo
    for v in values.tolist():
        if v > expect:
            return expect
        expect = v + 1
    return expect if expect <= hi else None


def choose_tnull(files: list, name: str, npdt: str) -> tuple[str, int]:
    """(numpy dtype to write, TNULL as stored) for the nullable integer column ``name``."""
    lo, hi = physical_range(npdt)
    for candidate in (hi, lo) if npdt == "u8" else (lo, hi):
        if not _holds(files, name, candidate):
            return npdt, _stored(candidate, npdt)
    gap = _first_gap(files, name, lo, hi)
    if gap is not None:
        return npdt, _stored(gap, npdt)
    wider = _WIDER[npdt]  # every value of the type is used: one size up, whose minimum is free
    return wider, int(np.iinfo(np.dtype(wider)).min)


def _stored(value: int, npdt: str) -> int:
    return value - U8_ZERO if npdt == "u8" else value
