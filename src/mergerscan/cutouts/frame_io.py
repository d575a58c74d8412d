"""Reading SDSS-like frame files: (bz2/gzip-compressed) FITS, primary HDU only.

Only regular files are opened (a FIFO or device named like a frame raises instead of blocking).
bz2 is decompressed with ``indexed_bzip2`` when importable (``threads`` = its parallelisation;
a Dask worker thread should not oversubscribe its cores), else with :mod:`bz2`.  Only HDU0 is
decompressed: its header up to the END card, then exactly the NAXIS1 x NAXIS2 pixels it declares,
refused above :data:`MAX_FRAME_PIXELS` before anything more is read (a small bz2 file can expand
to gigabytes).
"""

from __future__ import annotations

import bz2
import gzip
from pathlib import Path

import numpy as np
from astropy.io import fits

from .quality import open_regular

try:
    import indexed_bzip2
except ImportError:  # optional extra "fast"
    indexed_bzip2 = None

MAX_FRAME_PIXELS = 64 * 2**20  # per band (SDSS: 2048 x 1489 = 3 Mpx)
_DTYPES = {8: ">u1", 16: ">i2", 32: ">i4", 64: ">i8", -32: ">f4", -64: ">f8"}


def open_stream(path: Path, threads: int = 0):
    """A (decompressing) stream of a regular file; a FIFO or device raises, never blocks.
    ``threads`` > 0: bz2 by indexed_bzip2 with that parallelisation (it decodes ahead, so not
    for reading just a header), else by :mod:`bz2`, incrementally."""
    s = str(path)
    raw = open_regular(s)
    try:
        if s.endswith(".bz2"):
            if indexed_bzip2 is not None and threads > 0:
                return indexed_bzip2.open(raw, parallelization=max(1, int(threads)))
            return bz2.open(raw, "rb")  # decompresses incrementally as read
        if s.endswith(".gz"):
            return gzip.open(raw, "rb")
    except BaseException:
        raw.close()
        raise
    return raw


def header_blocks(f) -> bytes:
    """Primary header bytes (whole 2880-byte blocks) read from a stream, up to its END card."""
    buf = b""
    while len(buf) < 2880 * 1000:
        block = f.read(2880)
        if len(block) < 2880:
            raise ValueError("file ends inside the primary header")
        buf += block
        for k in range(0, 2880, 80):
            if block[k : k + 8] == b"END     ":
                return buf
    raise ValueError("no END card in the primary header")


def read_header(path: Path) -> fits.Header:
    """Primary header only: read 2880-byte blocks until the END card (bz2/gzip streamed)."""
    with open_stream(path) as f:
        return fits.Header.fromstring(header_blocks(f))


def frame_shape(hdr: fits.Header) -> tuple[int, int]:
    if hdr.get("NAXIS") != 2:
        raise ValueError(f"HDU0 has NAXIS={hdr.get('NAXIS')}, not a 2-d image")
    ny, nx = int(hdr["NAXIS2"]), int(hdr["NAXIS1"])
    if ny * nx > MAX_FRAME_PIXELS:
        raise ValueError(f"HDU0 declares {nx}x{ny} pixels (limit {MAX_FRAME_PIXELS}); not read")
    return ny, nx


def decompress(path: Path, threads: int = 1, limit: int = -1) -> bytes:
    """Bytes of a (bz2/gzip) file, at most ``limit`` (-1: all)."""
    with open_stream(path, threads) as f:
        return f.read(limit)


def read_frame(path: Path, threads: int = 1) -> np.ndarray:
    """HDU0 image of a (compressed) FITS frame as native float32; raises on any damage.  Only
    HDU0 is decompressed, and only as many bytes as its (bounded) NAXISn declare."""
    with open_stream(path, threads) as f:
        hdr = fits.Header.fromstring(header_blocks(f))
        shape = frame_shape(hdr)
        bitpix = int(hdr["BITPIX"])
        if bitpix not in _DTYPES:
            raise ValueError(f"BITPIX {bitpix} is not a FITS pixel type")
        n = shape[0] * shape[1] * abs(bitpix) // 8
        data = f.read(n)
    if len(data) < n:
        raise ValueError("frame data truncated")
    img = np.frombuffer(data, _DTYPES[bitpix]).reshape(shape).astype(np.float32)
    scale, zero = float(hdr.get("BSCALE", 1.0)), float(hdr.get("BZERO", 0.0))
    if scale != 1.0 or zero != 0.0:
        img = img * np.float32(scale) + np.float32(zero)
    return np.ascontiguousarray(img)
