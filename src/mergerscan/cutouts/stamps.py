"""Image source for pre-cut stamp files (a directory of JPEG/PNG/FITS cutouts).

A row's file is ``rows['path']`` when that column exists and the value is a non-empty string
(relative paths are resolved against ``directory``), else ``directory/<id>.{jpg,jpeg,png,fits,fit}``
(the first that exists; an id containing a path separator finds nothing).

* JPEG/PNG are decoded with PIL and must be RGB.  A JPEG must end with its EOI marker and a PNG
  with its IEND chunk, so truncated files fail even where PIL's ``LOAD_TRUNCATED_IMAGES`` is set.
* FITS: the first HDU with data, a ``(3, H, W)`` or ``(H, W, 3)`` cube in R, G, B order whose array
  row 0 is the top (north) row, as in a JPEG (no flip: FITS viewers would show it upside down).
  uint8 is used as is; any other dtype is taken as display values 0..255: rounded, clipped, NaN -> 0.
* A square image of another size than ``spec.stamp_pixels`` is resampled to it with PIL's
  bilinear filter (antialiased when shrinking, as in the HTTP service source), assuming it covers
  the same field of view (``stamp_pixels * pixel_scale``): the source cannot check that.

Status: ``no_image`` (no file), ``bad_image`` (unreadable, truncated, not RGB, not square, wrong
shape); failed rows get a zero stamp.  Files are decoded by a pool of ``threads`` threads (PIL
and zlib release the GIL).
"""

from __future__ import annotations

import errno
import io
import os
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

from .preprocess import PreprocessSpec
from .sources import empty_stamps

EXTENSIONS = (".jpg", ".jpeg", ".png", ".fits", ".fit")
_SEPARATORS = tuple({os.sep, "/", "\\"} | ({os.altsep} if os.altsep else set()))


class _Bad(Exception):
    pass


def _to_uint8(a: np.ndarray) -> np.ndarray:
    if a.dtype == np.uint8:
        return a
    return np.clip(np.rint(np.nan_to_num(a.astype(np.float64), nan=0.0)), 0, 255).astype(np.uint8)


def _read_fits(path: Path) -> np.ndarray:
    from astropy.io import fits

    with fits.open(path, memmap=False) as hl:
        data = next((h.data for h in hl if getattr(h, "data", None) is not None and h.data.ndim == 3), None)
        if data is None:
            raise _Bad("no 3-d image HDU")
        a = np.asarray(data)
    if a.shape[0] == 3:
        a = np.moveaxis(a, 0, -1)
    elif a.shape[-1] != 3:
        raise _Bad(f"cube shape {a.shape} is neither (3, H, W) nor (H, W, 3)")
    return np.ascontiguousarray(_to_uint8(a))


def _read_raster(path: Path) -> Image.Image:
    body = path.read_bytes()
    end = body.rstrip(b"\0\r\n ")
    if body[:2] == b"\xff\xd8" and not end.endswith(b"\xff\xd9"):
        raise _Bad("truncated JPEG (no EOI marker)")
    if body[:8] == b"\x89PNG\r\n\x1a\n" and not end.endswith(b"IEND\xaeB`\x82"):
        raise _Bad("truncated PNG (no IEND chunk)")
    im = Image.open(io.BytesIO(body))
    if im.mode != "RGB":
        raise _Bad(f"mode {im.mode}, not RGB")
    if im.size[0] != im.size[1]:                         # header only: checked before decoding
        raise _Bad(f"not square: {im.size}")
    im.load()
    return im


class StampSource:
    name = "stamps"

    def __init__(self, directory, spec: PreprocessSpec, *, threads: int = 2, **ignored_known):
        # ignored_known: options meant for other sources (SourceConfig.options) are accepted and unused
        self.directory, self.spec = Path(directory), spec
        self.threads = max(1, int(threads))
        self._pool = ThreadPoolExecutor(self.threads, thread_name_prefix="stamps") if self.threads > 1 else None
        self.stats = Counter()

    # -- protocol -------------------------------------------------------------------------
    def fetch(self, rows: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
        n = len(rows)
        stamps = empty_stamps(n, self.spec)
        status = np.full(n, "no_image", dtype=object)
        ids = rows["id"].astype(str).tolist()
        paths = rows["path"].tolist() if "path" in rows.columns else [None] * n

        def one(i: int) -> None:                         # each call writes its own row
            try:
                path = self.resolve(ids[i], paths[i])
            except OSError as exc:                       # a per-row filesystem error is a per-row status:
                if exc.errno != errno.ENAMETOOLONG:      # a name too long for the filesystem names no file
                    status[i] = "bad_image"
                return
            if path is None:
                return
            try:
                stamps[i] = self.decode(path)
                status[i] = "ok"
            except Exception:                            # unreadable, truncated, wrong shape/mode
                status[i] = "bad_image"

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

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    # -- one row --------------------------------------------------------------------------
    def resolve(self, oid: str, path=None) -> Path | None:
        """The row's file, or None when there is none."""
        if isinstance(path, (str, os.PathLike)) and str(path).strip():
            p = Path(str(path).strip())
            p = p if p.is_absolute() else self.directory / p
            return p if p.is_file() else None
        if not oid or oid in (".", "..") or any(s in oid for s in _SEPARATORS):
            return None
        for ext in EXTENSIONS:
            p = self.directory / f"{oid}{ext}"
            if p.is_file():
                return p
        return None

    def decode(self, path: Path) -> np.ndarray:
        """(S, S, 3) uint8 stamp from one file; raises on anything unusable."""
        s = self.spec.stamp_pixels
        if path.suffix.lower() in (".fits", ".fit", ".fz") or path.name.lower().endswith(".fits.gz"):
            a = _read_fits(path)
            if a.shape[0] != a.shape[1]:
                raise _Bad(f"not square: {a.shape}")
            if a.shape[0] == s:
                return a
            im = Image.fromarray(a, "RGB")
        else:
            im = _read_raster(path)
        if im.size != (s, s):
            im = im.resize((s, s), Image.Resampling.BILINEAR)
        a = np.asarray(im, dtype=np.uint8)
        if a.shape != (s, s, 3):
            raise _Bad(f"decoded shape {a.shape}")
        return a
