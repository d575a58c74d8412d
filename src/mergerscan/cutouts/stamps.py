"""Image source for pre-cut stamp files (a directory of JPEG/PNG/FITS cutouts).

A row's file is ``rows['path']`` when that column exists and the value is a non-empty string
(relative paths are resolved against ``directory``), else ``directory/<id>.{jpg,jpeg,png,fits,fit,fits.fz,fits.gz}``
(the first that exists; an id containing a path separator finds nothing).

* Only regular files are opened (a FIFO or device named like a stamp is ``bad_image``, never
  read), and none over 32 MiB; sizes are checked from the header before decoding (see
  :mod:`mergerscan.cutouts.quality`).
* JPEG/PNG are decoded with PIL and must be RGB, or RGBA / palette with every pixel opaque
  (used as RGB, exactly; a transparent pixel is ``bad_image``).  A JPEG must end with its EOI
  marker and a PNG with its IEND chunk, so truncated files fail even where PIL's
  ``LOAD_TRUNCATED_IMAGES`` is set.
* FITS (``.fits``, ``.fit``, ``.fits.fz``, ``.fits.gz``): the first HDU with a 3-d image (a
  tile-compressed one included), a ``(3, H, W)`` or ``(H, W, 3)`` cube in R, G, B order whose
  array row 0 is the top (north) row, as in a JPEG (no flip: FITS viewers would show it upside
  down).  Its NAXISn (ZNAXISn) are checked before the data are read.  uint8 is used as is; other
  dtypes follow :func:`mergerscan.cutouts.quality.display_values` (0..1 floats x255, 0..255 as
  is, NaN/inf -> 0 unless over 10 %, anything else refused).
* Every decoded image then passes :func:`mergerscan.cutouts.quality.check_pixels` (blank,
  constant, JPEG grey fill) at its own resolution.
* A square image of another size than ``spec.stamp_pixels`` (a quarter to four times it) is
  resampled to it with PIL's bilinear filter (antialiased when shrinking, as in the HTTP service
  source), assuming it covers the same field of view (``stamp_pixels * pixel_scale``): the source
  cannot check that.

Status: ``no_image`` (no file; also an id or path that no file can have: too long for the
filesystem, a NUL byte, characters it cannot encode; an id that is ``.``/``..`` or holds a path
separator never leaves ``directory``), ``bad_image`` (unreadable, truncated, damaged, not RGB, not
square, not a regular file), ``small_image``, ``image_too_large``, ``blank_image``; failed rows
get a zero stamp, and ``examples`` keeps the first reason for each status.  Files are decoded by a pool of ``threads`` threads (PIL
and zlib release the GIL).
"""

from __future__ import annotations

import errno
import io
import os
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

from ..catalogs.schema import Status
from .base import SourceBase, SourceOptions, check_directory, empty_stamps
from .preprocess import PreprocessSpec
from .quality import (
    MAX_FILE_BYTES,
    OPAQUE_MODES,
    ImageRejected,
    check_jpeg,
    check_pixels,
    check_size,
    display_values,
    opaque_rgb,
    open_regular,
    read_regular,
)

EXTENSIONS = (".jpg", ".jpeg", ".png", ".fits", ".fit", ".fits.fz", ".fits.gz")
FITS_SUFFIXES = (".fits", ".fit", ".fz", ".fits.gz", ".fit.gz")
MAX_HDUS = 8  # HDUs looked at for the image (a file of 10^5 empty HDUs is not a stamp)
_SEPARATORS = tuple({os.sep, "/", "\\"} | ({os.altsep} if os.altsep else set()))


def _bad(reason: str) -> ImageRejected:
    return ImageRejected(Status.BAD_IMAGE, reason)


def _read_fits(path: Path, stamp_pixels: int) -> np.ndarray:
    from astropy.io import fits

    with open_regular(path, MAX_FILE_BYTES) as f, fits.open(f, memmap=False, lazy_load_hdus=True) as hl:
        for k, hdu in enumerate(hl):
            if k >= MAX_HDUS:
                break
            hdr = hdu.header  # a CompImageHDU's header holds ZNAXISn as NAXISn
            if not hdu.is_image or hdr.get("NAXIS", 0) != 3:
                continue
            shape = tuple(int(hdr.get(f"NAXIS{i}", 0)) for i in (3, 2, 1))  # numpy order
            if shape[0] == 3:
                h, w = shape[1:]
            elif shape[2] == 3:
                h, w = shape[:2]
            else:
                raise _bad(f"cube shape {shape} is neither (3, H, W) nor (H, W, 3)")
            check_size(w, h, stamp_pixels)  # before any pixel is decompressed
            a = np.asarray(hdu.data)
            break
        else:
            raise _bad("no 3-d image HDU")
    if a.shape[0] == 3:
        a = np.moveaxis(a, 0, -1)
    return np.ascontiguousarray(display_values(a))


def _read_raster(path: Path, stamp_pixels: int) -> np.ndarray:
    body = read_regular(path, MAX_FILE_BYTES)
    end = body.rstrip(b"\0\r\n ")
    if body[:2] == b"\xff\xd8" and not end.endswith(b"\xff\xd9"):
        raise _bad("truncated JPEG (no EOI marker)")
    if body[:8] == b"\x89PNG\r\n\x1a\n" and not end.endswith(b"IEND\xaeB`\x82"):
        raise _bad("truncated PNG (no IEND chunk)")
    try:
        im = Image.open(io.BytesIO(body))
    except Image.DecompressionBombError as e:  # PIL's own limit, from the header
        raise ImageRejected(Status.IMAGE_TOO_LARGE, str(e).split(",")[0] + "; not decoded") from None
    except Exception as e:  # not an image PIL knows
        raise _bad(f"not a readable image ({type(e).__name__})") from None
    check_size(*im.size, stamp_pixels)  # header only: checked before decoding
    if im.mode in OPAQUE_MODES:
        return opaque_rgb(im)
    if im.mode != "RGB":
        raise _bad(f"mode {im.mode}, not RGB")
    if im.format == "JPEG" and (a := check_jpeg(body)) is not None:
        return a  # decoded once, strictly
    im.load()
    return np.asarray(im, dtype=np.uint8)


class StampSource(SourceBase):
    kind = "stamps"
    statuses = frozenset(
        {Status.NO_IMAGE, Status.BAD_IMAGE, Status.SMALL_IMAGE, Status.IMAGE_TOO_LARGE, Status.BLANK_IMAGE}
    )
    reads_path_column = True

    @dataclass(frozen=True)
    class Options(SourceOptions):
        threads: int = 2  # decoding threads

    @classmethod
    def check_location(cls, location: str) -> None:
        check_directory(location)

    def __init__(self, directory, spec: PreprocessSpec, **options):
        super().__init__(directory, spec, **options)
        self.directory = Path(directory)
        self.threads = max(1, int(self.options.threads))
        self._pool = ThreadPoolExecutor(self.threads, thread_name_prefix="stamps") if self.threads > 1 else None
        self.stats: Counter = Counter()

    # -- protocol -------------------------------------------------------------------------
    def fetch(self, rows: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
        n = len(rows)
        stamps = empty_stamps(n, self.spec)
        status = np.full(n, Status.NO_IMAGE, dtype=object)
        ids = [str(v) for v in rows["id"].to_numpy(object)]  # str(), not astype: any text the id holds
        paths = rows["path"].tolist() if "path" in rows.columns else [None] * n

        def one(i: int) -> None:  # each call writes its own row
            try:
                path = self.resolve(ids[i], paths[i])
            except Exception as exc:  # any failure to build or look up the path is this row's status
                st = unusable_name_status(exc)
                status[i] = st
                self.examples.setdefault(st, f"id {shown(ids[i])}: {self._looked_for(ids[i], paths[i])}: {reason(exc)}")
                return
            if path is None:
                self.examples.setdefault(Status.NO_IMAGE, f"id {shown(ids[i])}: {self._looked_for(ids[i], paths[i])}")
                return
            try:
                stamps[i] = self.decode(path)
                status[i] = Status.OK
            except ImageRejected as e:
                status[i] = e.status
                self.examples.setdefault(e.status, f"id {shown(ids[i])}: {shown(path)}: {e.reason}")
            except Exception as e:  # unreadable, corrupt: this row only
                status[i] = Status.BAD_IMAGE
                self.examples.setdefault(Status.BAD_IMAGE, f"id {shown(ids[i])}: {shown(path)}: {reason(e)}"[:300])

        if self._pool is None:
            for i in range(n):
                one(i)
        else:
            list(self._pool.map(one, range(n)))
        self.stats.update(status.tolist())
        return stamps, status

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True)

    # -- one row --------------------------------------------------------------------------
    def resolve(self, oid: str, path=None) -> Path | None:
        """The row's file, or None when there is none.  Anything that exists is returned (a FIFO
        or directory too: decode() refuses it, rather than calling the image missing)."""
        if isinstance(path, (str, os.PathLike)) and str(path).strip():
            p = Path(str(path).strip())
            p = p if p.is_absolute() else self.directory / p
            return p if _exists(p) else None
        if not oid or oid in (".", "..") or any(s in oid for s in _SEPARATORS):
            return None
        for ext in EXTENSIONS:
            p = self.directory / f"{oid}{ext}"
            if _exists(p):
                return p
        return None

    def _looked_for(self, oid: str, path=None) -> str:
        if isinstance(path, (str, os.PathLike)) and str(path).strip():
            return f"no file {shown(path)} (path column) under {self.directory}"
        if not oid or oid in (".", "..") or any(s in oid for s in _SEPARATORS):
            return f"the id names no file in {self.directory} (it is '.', '..' or holds a path separator)"
        return f"no file {shown(oid)}.{{{','.join(e[1:] for e in EXTENSIONS)}}} in {self.directory}"

    def decode(self, path: Path) -> np.ndarray:
        """(S, S, 3) uint8 stamp from one file; raises ImageRejected (or anything) on what is unusable."""
        s = self.spec.stamp_pixels
        name = path.name.lower()
        if name.endswith(FITS_SUFFIXES):
            a = _read_fits(path, s)
        else:
            a = _read_raster(path, s)
        check_pixels(a)
        if a.shape[:2] != (s, s):
            a = np.asarray(Image.fromarray(a, "RGB").resize((s, s), Image.Resampling.BILINEAR), dtype=np.uint8)
        if a.shape != (s, s, 3):
            raise _bad(f"decoded shape {a.shape}")
        return a


def unusable_name_status(exc: BaseException) -> str:
    """The status of a row whose id or path cannot be looked up: a name no file can have (too
    long for the filesystem, a NUL byte, characters the filesystem cannot encode) is
    ``no_image``; another filesystem error (permission denied, a symlink loop) ``bad_image``."""
    if isinstance(exc, OSError) and exc.errno not in (errno.ENAMETOOLONG, errno.EILSEQ, errno.EINVAL):
        return Status.BAD_IMAGE
    return Status.NO_IMAGE


def reason(exc: BaseException) -> str:
    """One line for the summary: the exception's kind and message (a path in it shown escaped)."""
    text = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
    return shown(f"{type(exc).__name__}: {text}")


def shown(value, limit: int = 120) -> str:
    """``value`` as printable one-line text: control characters, NUL and lone surrogates escaped
    (``\\x00``, ``\\udc80``), cut to ``limit`` characters with the full length noted."""
    text = str(value)
    out = "".join(c if c.isprintable() else ascii(c)[1:-1] for c in text[: limit + 1])
    return out[:limit] + f"... ({len(text)} characters)" if len(out) > limit or len(text) > limit else out


def _exists(p: Path) -> bool:
    """lstat-free existence (follows symlinks); a name too long raises OSError for the caller."""
    try:
        os.stat(p)
        return True
    except (FileNotFoundError, NotADirectoryError):
        return False
