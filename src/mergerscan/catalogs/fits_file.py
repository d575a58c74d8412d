"""FITS files as Python file objects: the one way mergerscan opens a FITS file it reads or writes.

A path is handed only to Python's ``open``, so no character in it has a meaning: cfitsio (and
so fitsio) reads ``(``, ``[``, ``$``, ``!``, ``~``, ``-`` and ``mem://`` in a file *name* as its
extended file-name syntax, and lost ``-o "out (1)"`` or refused ``cat [v2].fits``.  Libraries
(astropy) get the open file object, never the name.

* :func:`open_fits` opens for reading; a gzip stream (magic bytes, whatever the suffix) is
  decompressed incrementally, so reading rows far down a ``.fits.gz`` never holds the file.
* :func:`iter_hdus` walks the HDUs by their headers, skipping data without reading it.
* :class:`TableWriter` streams one binary-table HDU (big-endian records) to an open file; the
  caller gives it the final row count up front and it checks that every row came.
"""

from __future__ import annotations

import gzip
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import numpy as np
from astropy.io import fits

BLOCK = 2880
GZIP_MAGIC = b"\x1f\x8b"


def open_fits(path: str | Path) -> IO[bytes]:
    """A readable, seekable binary stream of the (possibly gzipped) FITS file at ``path``."""
    raw = open(Path(path), "rb")  # noqa: SIM115 - returned to the caller, who closes it
    try:
        if raw.read(2) == GZIP_MAGIC:
            raw.seek(0)
            return gzip.GzipFile(fileobj=raw, mode="rb")  # type: ignore[return-value]
        raw.seek(0)
        return raw
    except BaseException:
        raw.close()
        raise


def close_stream(stream: IO[bytes]) -> None:
    """Close ``stream`` and, for a gzip stream, the file beneath it."""
    inner = getattr(stream, "fileobj", None)
    stream.close()
    if inner is not None:
        inner.close()


@dataclass(frozen=True)
class Hdu:
    index: int
    header: fits.Header
    data_offset: int  # byte offset of the data in the (decompressed) stream
    data_bytes: int  # NAXIS1 x ... x NAXISn (+ PCOUNT), unpadded


def data_size(header: fits.Header) -> int:
    """Bytes of an HDU's data (unpadded): |BITPIX|/8 x GCOUNT x (PCOUNT + NAXIS1 x ... x NAXISn)."""
    naxis = int(header.get("NAXIS", 0))
    if naxis == 0:
        return 0
    n = 1
    for k in range(1, naxis + 1):
        n *= int(header[f"NAXIS{k}"])
    return abs(int(header["BITPIX"])) // 8 * int(header.get("GCOUNT", 1)) * (int(header.get("PCOUNT", 0)) + n)


def iter_hdus(stream: IO[bytes]) -> Iterator[Hdu]:
    """Every HDU's header (and where its data are), from the start of ``stream``."""
    stream.seek(0)
    index = 0
    while True:
        start = stream.tell()
        if not stream.read(1):
            return
        stream.seek(start)
        header = fits.Header.fromfile(stream, padding=True)
        offset = stream.tell()
        size = data_size(header)
        yield Hdu(index, header, offset, size)
        stream.seek(offset + -(-size // BLOCK) * BLOCK)
        index += 1


U8_ZERO = 2**63  # TZERO of uint64 (TFORM K): stored = value - 2^63


def tform(dtype: np.dtype) -> str:
    """The binary-table TFORM of a numpy field type (uint64: K, with TZERO = 2^63)."""
    d = np.dtype(dtype)
    if d.subdtype is not None:  # a vector column (e.g. float32 x N: 'NE')
        base, shape = d.subdtype
        return f"{int(np.prod(shape))}{tform(base)}"
    if d.kind == "S":
        return f"{d.itemsize}A"
    if d.kind == "b":
        return "L"
    return {"u1": "B", "i2": "I", "i4": "J", "i8": "K", "u8": "K", "f4": "E", "f8": "D"}[f"{d.kind}{d.itemsize}"]


class TableWriter:
    """One FITS file holding an empty primary HDU and one binary table of ``nrows`` rows, written
    to the open binary file ``fileobj`` record batch by record batch (``append``).  The fields of
    ``dtype`` are the columns (TTYPEn, TFORMn by :func:`tform`); ``cards`` ([(keyword, value,
    comment)]) follow the structural keywords."""

    def __init__(self, fileobj: IO[bytes], dtype: np.dtype, nrows: int, cards: list):
        self.f, self.nrows, self.written = fileobj, int(nrows), 0
        self.dtype = np.dtype([(n, _on_disk(d)) for n, d in zip(dtype.names or (), _fields(dtype))])
        primary = fits.Header([("SIMPLE", True), ("BITPIX", 8), ("NAXIS", 0), ("EXTEND", True)])
        table = fits.Header(
            [
                ("XTENSION", "BINTABLE", "binary table extension"),
                ("BITPIX", 8, "8-bit bytes"),
                ("NAXIS", 2, "2-dimensional binary table"),
                ("NAXIS1", self.dtype.itemsize, "width of table in bytes"),
                ("NAXIS2", self.nrows, "number of rows in table"),
                ("PCOUNT", 0, "size of special data area"),
                ("GCOUNT", 1, "one data group (required keyword)"),
                ("TFIELDS", len(dtype.names or ()), "number of fields in each row"),
            ]
        )
        for i, (name, field) in enumerate(zip(dtype.names or (), _fields(dtype)), start=1):
            table.append((f"TTYPE{i}", name))
            table.append((f"TFORM{i}", tform(field)))
            if np.dtype(field).subdtype is not None:
                table.append((f"TDIM{i}", f"({int(np.prod(np.dtype(field).shape))})", "vector column"))
            if np.dtype(field) == np.uint64:
                table.append((f"TZERO{i}", U8_ZERO, "offset for unsigned integers"))
        for card in cards:
            table.append(card, end=True)
        self.f.write(primary.tostring().encode("ascii"))
        self.f.write(table.tostring().encode("ascii"))

    def append(self, rec: np.ndarray) -> None:
        if self.written + len(rec) > self.nrows:
            raise ValueError(f"more rows than the {self.nrows} declared")
        out = np.empty(len(rec), self.dtype)
        for name in self.dtype.names or ():
            v = rec[name]
            if v.dtype.kind == "b":
                v = np.where(v, ord("T"), ord("F"))
            elif v.dtype == np.uint64:  # the stored bits of K with TZERO = 2^63
                v = v ^ np.uint64(U8_ZERO)
            out[name] = v
        self.f.write(out.tobytes())
        self.written += len(rec)

    def close(self) -> None:
        if self.written != self.nrows:
            raise ValueError(f"{self.written} rows written, {self.nrows} declared")
        pad = -(self.written * self.dtype.itemsize) % BLOCK
        self.f.write(b"\0" * pad)


def _on_disk(d: np.dtype) -> np.dtype:
    """Big-endian; a boolean is FITS logical 'L', one byte 'T' or 'F'."""
    d = np.dtype(d)
    return np.dtype("u1") if d.kind == "b" else d.newbyteorder(">")


def _fields(dtype: np.dtype) -> list:
    return [dtype.fields[n][0] for n in dtype.names or ()]  # type: ignore[index]
