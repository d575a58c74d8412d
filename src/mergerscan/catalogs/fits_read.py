"""Reading a FITS table's rows exactly as the FITS standard (4.0, sections 7.2-7.3) defines them.

The raw bytes of rows [start, stop) are read from the stream (:mod:`.fits_file`: no row before
``start`` is decoded into memory and nothing after ``stop`` is read), then each column's
header applies, per value:

* ``TNULLn`` (integer columns): compared on the *stored* integer; such values become null.
* ``TSCALn``/``TZEROn``: physical = TZERO + TSCAL x stored.  With TSCAL = 1 and an integer
  TZERO the result is an exact integer in the smallest type holding every stored value
  shifted by TZERO: the unsigned conventions (I + 32768 -> uint16, J + 2^31 -> uint32,
  K + 2^63 -> uint64) and the signed byte (B - 128 -> int8) fall out of that rule; any other
  scale gives float64 (null: NaN).
* ``L``: 'T' true, 'F' false, 0 null.  ``A``: text up to the first NUL, trailing blanks dropped.
* ``TDIMn`` / a repeat count: one list per row (nested per TDIM), scaled element by element.

* ``P``/``Q`` (variable-length, from the heap): text one string per row, numbers one list per row.

What cannot be carried exactly is refused by column name (``FitsTable.refusal``): complex (C, M),
bit arrays (X), variable-length arrays of those, empty (repeat 0) fields.  ASCII tables
(``XTENSION='TABLE'``) are read by their TBCOLn/TFORMn (Aw, Iw, Fw.d, Ew.d, Dw.d).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace

import numpy as np
import pandas as pd
from astropy.io import fits

_BIN_TFORM = re.compile(r"^\s*(\d*)([LXBIJKAEDCMPQ])(.*)$")
_ASCII_TFORM = re.compile(r"^\s*([AIFED])(\d+)(?:\.(\d+))?\s*$")
_WIDTH = {"L": 1, "B": 1, "I": 2, "J": 4, "K": 8, "A": 1, "E": 4, "D": 8, "C": 8, "M": 16, "P": 8, "Q": 16}
_RAW = {"L": "u1", "B": "u1", "I": ">i2", "J": ">i4", "K": ">i8", "A": "S", "E": ">f4", "D": ">f8"}
_REFUSED = {"C": "complex (TFORM C)", "M": "complex (TFORM M)", "X": "a bit array (TFORM X)"}
_EXACT = [np.dtype(t) for t in ("i1", "u1", "i2", "u2", "i4", "u4", "i8", "u8")]


@dataclass(frozen=True)
class FitsColumn:
    """One column of a FITS table: where its bytes are and how its header says to read them."""

    name: str
    number: int  # n of TTYPEn
    code: str  # TFORM letter (binary) or A/I/F/E/D (ASCII)
    offset: int  # byte offset in the row
    width: int  # bytes in the row
    repeat: int = 1
    shape: tuple = ()  # per-row shape (TDIM reversed); () for a scalar
    tscal: float | int = 1
    tzero: float | int = 0
    tnull: int | str | None = None
    refused: str | None = None  # why the column cannot be carried, or None
    element: str = ""  # a variable-length (P, Q) column's element type

    @property
    def value_code(self) -> str:
        """The type letter of the values: the column's, or a variable-length column's element."""
        return self.element or self.code

    @property
    def exact_dtype(self) -> np.dtype | None:
        """The exact integer type of an integer column's physical values, None for floats."""
        if self.value_code not in "BIJK" or not _is_one(self.tscal) or not _integral(self.tzero):
            return None
        info = np.iinfo(_RAW[self.value_code])
        lo, hi = info.min + int(self.tzero), info.max + int(self.tzero)
        return next((t for t in _EXACT if np.iinfo(t).min <= lo and hi <= np.iinfo(t).max), None)


def _is_one(v) -> bool:
    return float(v) == 1.0


def _integral(v) -> bool:
    return isinstance(v, (int, np.integer)) or float(v).is_integer()


def _number(header: fits.Header, key: str, default, name: str):
    v = header.get(key, default)
    if isinstance(v, bool) or not isinstance(v, (int, float, np.integer, np.floating)):
        raise ValueError(f"column {name!r}: {key} = {v!r} is not a number")
    return v


def table_columns(header: fits.Header) -> tuple[str, list[FitsColumn]]:
    """('binary' or 'ascii', the columns) of a table HDU's header; raises ValueError naming a
    column whose header cannot be read."""
    kind = "ascii" if str(header["XTENSION"]).strip() == "TABLE" else "binary"
    cols, offset = [], 0
    for n in range(1, int(header["TFIELDS"]) + 1):
        name = str(header.get(f"TTYPE{n}", f"col{n}")).rstrip()
        tform = str(header[f"TFORM{n}"]).strip().upper()
        scale = {
            "tscal": _number(header, f"TSCAL{n}", 1, name),
            "tzero": _number(header, f"TZERO{n}", 0, name),
        }
        if kind == "ascii":
            m = _ASCII_TFORM.match(tform)
            if not m:
                raise ValueError(f"column {name!r}: TFORM{n} = {tform!r} is not an ASCII-table format")
            tnull = header.get(f"TNULL{n}")
            cols.append(
                FitsColumn(
                    name,
                    n,
                    m.group(1),
                    int(header[f"TBCOL{n}"]) - 1,
                    int(m.group(2)),
                    tnull=None if tnull is None else str(tnull).strip(),
                    **scale,
                )
            )
            continue
        m = _BIN_TFORM.match(tform)
        if not m:
            raise ValueError(f"column {name!r}: TFORM{n} = {tform!r} is not a binary-table format")
        repeat, code = int(m.group(1) or 1), m.group(2)
        width = (repeat + 7) // 8 if code == "X" else repeat * _WIDTH[code]  # P, Q: the descriptor
        element = m.group(3).strip()[:1] if code in "PQ" else ""
        refused = _refusal(code, element, repeat, tform)
        tnull = header.get(f"TNULL{n}") if (element or code) in "BIJK" else None
        if tnull is not None and not _integral(_number(header, f"TNULL{n}", 0, name)):
            raise ValueError(f"column {name!r}: TNULL{n} = {tnull!r} is not an integer")
        cols.append(
            FitsColumn(
                name,
                n,
                code,
                offset,
                width,
                repeat,
                _shape(header, n, code, repeat, name),
                tnull=None if tnull is None else int(tnull),
                refused=refused,
                element=element,
                **scale,
            )
        )
        offset += width
    if kind == "binary" and offset != int(header["NAXIS1"]):
        raise ValueError(f"the columns' TFORMs add up to {offset} bytes a row, NAXIS1 says {header['NAXIS1']}")
    return kind, cols


def _refusal(code: str, element: str, repeat: int, tform: str) -> str | None:
    if code in _REFUSED:
        return _REFUSED[code]
    if code in "PQ" and element not in "LBIJKAED":
        return f"a variable-length array of {_REFUSED.get(element, repr(element))} (TFORM {tform})"
    return "an empty field (repeat count 0)" if repeat == 0 else None


def _shape(header: fits.Header, n: int, code: str, repeat: int, name: str) -> tuple:
    """Per-row value shape: () scalar, else TDIMn reversed (C order), else (repeat,).  A text
    column's first TDIM axis is the string width."""
    tdim = header.get(f"TDIM{n}")
    if code in "PQ":
        return ()
    dims = [repeat]
    if tdim is not None:
        try:
            dims = [int(d) for d in str(tdim).strip().strip("()").split(",")]
        except ValueError:
            raise ValueError(f"column {name!r}: TDIM{n} = {tdim!r} is not a list of integers") from None
        if int(np.prod(dims)) != repeat:
            raise ValueError(f"column {name!r}: TDIM{n} = {tdim!r} does not match its repeat count {repeat}")
    if code == "A":
        dims = dims[1:]
    elif dims == [1] and tdim is None:
        dims = []
    return tuple(reversed(dims))


def decode_rows(raw: bytes, nrows: int, row_bytes: int, kind: str, col: FitsColumn):
    """Column ``col`` of ``nrows`` rows whose bytes are ``raw``: a numpy array, a pandas
    extension array (integers with TNULL, logicals with nulls) or a Series of lists."""
    rows = np.frombuffer(raw, dtype=np.uint8).reshape(nrows, row_bytes)
    cell = rows[:, col.offset : col.offset + col.width]
    if kind == "ascii":
        return _ascii_values(np.ascontiguousarray(cell).view(f"S{col.width}").ravel(), col)
    if col.code == "A":
        width = col.repeat // max(1, int(np.prod(col.shape or (1,))))
        text = _text(np.ascontiguousarray(cell).view(f"S{width}").reshape(nrows, -1) if width else cell[:, :0])
        return _listed(text.reshape((nrows, *col.shape)), col) if col.shape else text.ravel()
    if col.code in "PQ":
        raise ValueError("variable-length columns are read by FitsTable")
    stored = np.ascontiguousarray(cell).view(_RAW[col.code]).reshape((nrows, *col.shape))
    if col.code == "L":
        values = _logical(stored)
    elif col.code in "BIJK":
        values = _integers(stored, col)
    else:
        values = stored.astype(stored.dtype.newbyteorder("="))
        if not (_is_one(col.tscal) and float(col.tzero) == 0.0):
            values = float(col.tzero) + float(col.tscal) * values.astype(np.float64)
    return _listed(values, col) if col.shape else values


def _integers(stored: np.ndarray, col: FitsColumn):
    null = (stored == col.tnull) if col.tnull is not None else None
    exact = col.exact_dtype
    if exact is None:
        values = float(col.tzero) + float(col.tscal) * stored.astype(np.float64)
        if null is not None:
            values[null] = np.nan
        return values
    if col.code == "K" and int(col.tzero) == 2**63:  # stored + 2^63 without leaving 64 bits
        values = (stored.astype(np.int64).view(np.uint64) ^ np.uint64(2**63)).astype(exact)
    elif col.code == "K":
        values = stored.astype(np.int64)
    else:
        values = (stored.astype(np.int64) + int(col.tzero)).astype(exact)
    if null is None:
        return values
    if values.ndim > 1:
        return _with_nones(values, null)
    return pd.arrays.IntegerArray(values, null)  # Int8 ... UInt64: exact, with a mask


def _with_nones(values: np.ndarray, null: np.ndarray) -> np.ndarray:
    """A vector column's values as Python objects, None where null (lists carried as JSON)."""
    out = values.astype(object)
    out[null] = None
    return out


def _logical(stored: np.ndarray):
    true, false = stored == ord("T"), stored == ord("F")
    null = ~(true | false)
    if not null.any():
        return true
    if stored.ndim > 1:
        return _with_nones(true, null)
    return pd.arrays.BooleanArray(true, null)


def _text(cells: np.ndarray) -> np.ndarray:
    """Fixed-width FITS text -> str: up to the first NUL, trailing blanks dropped (leading kept)."""
    flat = cells.ravel()
    out = np.empty(len(flat), object)
    for i, b in enumerate(flat.tolist()):
        b = b.split(b"\0", 1)[0].rstrip(b" ")
        out[i] = b.decode("ascii") if b.isascii() else b.decode("utf-8", "backslashreplace")
    return out.reshape(cells.shape)


def _listed(values, col: FitsColumn) -> pd.Series:
    """A vector column: one (nested) list per row, carried through as JSON text."""
    arr = values if isinstance(values, np.ndarray) else np.asarray(values)
    return pd.Series([v for v in arr.tolist()], dtype=object)


def _ascii_values(cells: np.ndarray, col: FitsColumn):
    text = np.char.strip(np.char.decode(cells, "ascii", "replace").astype(str))
    if col.code == "A":
        return np.array([t.rstrip() for t in np.char.decode(cells, "ascii", "backslashreplace")], object)
    null = (text == "") | ((text == col.tnull) if col.tnull is not None else False)
    cleaned = np.where(null, "0", np.char.replace(np.char.upper(text), "D", "E"))
    try:
        if col.code == "I" and _is_one(col.tscal) and _integral(col.tzero):
            return pd.array([None if m else int(v) + int(col.tzero) for v, m in zip(cleaned, null)], "Int64")
        stored = cleaned.astype(np.float64)
    except (ValueError, OverflowError):
        bad = next(t for t, m in zip(text, null) if not m and not _parses(t))
        raise ValueError(f"column {col.name!r}: {bad!r} is not a number ({col.code} field)") from None
    values = float(col.tzero) + float(col.tscal) * stored
    values[null] = np.nan
    return values


def _parses(text: str) -> bool:
    try:
        float(text.upper().replace("D", "E"))
        return True
    except ValueError:
        return False


class FitsTable:
    """The first table HDU of a FITS file, read by row ranges (``read_rows``)."""

    def __init__(self, path):
        from .fits_file import close_stream, iter_hdus, open_fits

        self.path = path
        self._stream = open_fits(path)
        self._close = close_stream
        try:
            hdu = next((h for h in iter_hdus(self._stream) if _is_table(h.header)), None)
            if hdu is None:
                raise LookupError("no table HDU in FITS file")
            self.kind, cols = table_columns(hdu.header)
            self.columns = {c.name: c for c in cols}
            self.names = [c.name for c in cols]
            self.nrows, self.row_bytes = int(hdu.header["NAXIS2"]), int(hdu.header["NAXIS1"])
            self._offset = hdu.data_offset
            self._heap = hdu.data_offset + int(hdu.header.get("THEAP", self.nrows * self.row_bytes))
            self._end = hdu.data_offset + hdu.data_bytes
            self._check_length(hdu.data_bytes)
        except BaseException:
            self.close()
            raise

    def _check_length(self, data_bytes: int) -> None:
        """A truncated file fails here, not deep inside a worker."""
        if data_bytes:  # a gzip stream decompresses to the table's end once, here
            self._stream.seek(self._offset + data_bytes - 1)
            if not self._stream.read(1):
                raise ValueError(f"file truncated: the table needs {self._offset + data_bytes} bytes")

    def refusal(self, names: list[str]) -> str | None:
        """Why one of ``names`` cannot be carried ('column X is ...'), or None."""
        for n in names:
            c = self.columns.get(n)
            if c is not None and c.refused:
                return f"column {n!r} is {c.refused}, which mergerscan cannot carry"
        return None

    def read_rows(self, start: int, stop: int, names: list[str]) -> dict:
        why = self.refusal(names)
        if why:
            raise ValueError(why)
        n = stop - start
        self._stream.seek(self._offset + start * self.row_bytes)
        raw = self._stream.read(n * self.row_bytes)
        if len(raw) < n * self.row_bytes:
            raise ValueError(f"file ends inside row {start + len(raw) // self.row_bytes + 1}")
        return {
            c: self._heap_values(raw, n, col)
            if col.code in "PQ"
            else decode_rows(raw, n, self.row_bytes, self.kind, col)
            for c, col in ((c, self.columns[c]) for c in names)
        }

    def _heap_values(self, raw: bytes, n: int, col: FitsColumn):
        """A variable-length column: its descriptors (count, heap offset) in the rows, its
        elements from the heap (one read spanning the rows'), decoded like a fixed column's.
        Text (PA) is one string per row, numbers one list per row."""
        cell = np.frombuffer(raw, np.uint8).reshape(n, self.row_bytes)[:, col.offset : col.offset + col.width]
        desc = np.ascontiguousarray(cell).view(">i4" if col.code == "P" else ">i8").reshape(n, 2).astype(np.int64)
        counts, offsets, w = desc[:, 0], desc[:, 1], _WIDTH[col.element]
        used = counts > 0
        lo = int(offsets[used].min()) if used.any() else 0
        hi = int((offsets + counts * w)[used].max()) if used.any() else 0
        if (desc < 0).any() or self._heap + hi > self._end:
            raise ValueError(f"column {col.name!r}: a heap descriptor points outside the heap")
        self._stream.seek(self._heap + lo)
        heap = self._stream.read(hi - lo)
        parts = [heap[o - lo : o - lo + c * w] if c else b"" for c, o in zip(counts.tolist(), offsets.tolist())]
        if col.element == "A":
            return _text(np.array(parts, dtype=object))
        elem = replace(col, code=col.element, element="", offset=0, width=w, repeat=1, shape=())
        values = decode_rows(b"".join(parts), int(counts.sum()), w, "binary", elem)
        flat = values.astype(object) if isinstance(values, np.ndarray) else values.to_numpy(object, na_value=None)
        return pd.Series([a.tolist() for a in np.split(flat, np.cumsum(counts)[:-1])], dtype=object)

    def close(self) -> None:
        if self._stream is not None:
            self._close(self._stream)
            self._stream = None


def _is_table(header: fits.Header) -> bool:
    return str(header.get("XTENSION", "")).strip() in ("BINTABLE", "TABLE")
