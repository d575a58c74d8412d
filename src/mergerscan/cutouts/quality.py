"""The one stamp-quality check, used by every image source (stamps, frames, service).

Every image is checked before it is scored; what fails gets a status instead of a score:

* **Size** (:func:`check_size`, from the header, before any pixel is decoded): square, and each
  side between ``stamp_pixels / 4`` and ``4 * stamp_pixels`` (64..1024 px for the 256 px default).
  Smaller: ``small_image`` (upsampling an 8 px image invents the galaxy); larger:
  ``image_too_large`` (not decoded: a 2 MB ``.fits.fz`` can declare gigabytes of pixels).
  Files over :data:`MAX_FILE_BYTES` are ``image_too_large`` without being read.
* **Regular files only** (:func:`open_regular`): ``O_NONBLOCK`` open, then ``fstat``; a FIFO,
  device or directory named like an image is refused instead of hanging the run.
* **Float pixels** (:func:`display_values`, FITS stamps): more than :data:`MAX_NONFINITE` of the
  pixels NaN/inf -> ``blank_image``; otherwise NaN/inf -> 0.  Data whose finite values all lie in
  [0, 1] are display values in 0..1 and are scaled x255; data in [0, 255] are used as they are
  (rounded); anything else (negative or > 255, e.g. raw fluxes) is ``bad_image``: give a colour
  image, or the frames as ``--frames``.
* **Frames** (:func:`check_bands`, on the band stamps before the colour composite): over
  :data:`MAX_NONFINITE` NaN/inf pixels, or at least :data:`MAX_FLAT` of the stamp without data
  (0 in every band: off the frame), -> ``blank_image``; fewer NaN/inf -> 0 (sky).
* **JPEG integrity** (:func:`check_jpeg`): decoded strictly (once: it is the decode) with libjpeg-turbo
  (simplejpeg), where any decoder warning - corrupt data, a zeroed block, data cut short but
  the end marker kept - is ``bad_image`` (0 of the 9,520 SkyServer JPEGs in ../shared warn).
* **Content** (:func:`check_pixels`, on the decoded uint8 image at its own resolution):
  ``blank_image`` when at least :data:`MAX_FLAT` of its 8x8 tiles are flat (one colour: an
  empty, black or constant image, or one mostly off the survey) or when the whole image spans
  at most :data:`MIN_RANGE` counts; ``bad_image`` when at least :data:`MAX_FILL` of its tiles
  are flat mid-grey (128, 128, 128): what a JPEG decoder fills in where the compressed data
  ended early or was damaged (e.g. two thirds of the data cut but the end marker kept).  Over
  all 9,520 SDSS SkyServer JPEGs in ../shared: flat tiles at most 51 % (survey edge), grey-fill
  tiles 0; a JPEG cut to 90 % of its data already has >= 3.7 % grey-fill tiles.
"""

from __future__ import annotations

import os
import stat

import numpy as np

from ..catalogs.schema import Status

MAX_FILE_BYTES = 32 * 2**20  # a stamp file: 1024^2 x 3 float64 FITS is 25 MB
MIN_SIDE_DIVISOR = 4  # side >= stamp_pixels / 4
MAX_SIDE_FACTOR = 4  # side <= 4 * stamp_pixels
MAX_NONFINITE = 0.10  # fraction of NaN/inf pixels tolerated (set to 0) in float stamps
MAX_FLAT = 0.75  # fraction of flat 8x8 tiles that makes a stamp blank
MAX_FILL = 0.01  # fraction of flat mid-grey tiles (JPEG decoder fill) that is damage
MIN_RANGE = 4  # max - min over the whole image at or below this: blank
TILE = 8


class ImageRejected(Exception):
    """An image that must not be scored: ``status`` (a schema status) and a one-line ``reason``."""

    def __init__(self, status: Status, reason: str):
        super().__init__(reason)
        self.status, self.reason = status, reason


class NotRegularFile(OSError):
    pass


def open_regular(path, max_bytes: int | None = None):
    """Open ``path`` for reading only if it is a regular file (never blocks on a FIFO); with
    ``max_bytes``, larger files raise :class:`ImageRejected` ``image_too_large``."""
    fd = os.open(os.fspath(path), os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise NotRegularFile(f"{path}: not a regular file")
        if max_bytes is not None and st.st_size > max_bytes:
            raise ImageRejected(Status.IMAGE_TOO_LARGE, f"file is {st.st_size} bytes (limit {max_bytes})")
        os.set_blocking(fd, True)
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def read_regular(path, max_bytes: int = MAX_FILE_BYTES) -> bytes:
    with open_regular(path, max_bytes) as f:
        body = f.read(max_bytes + 1)
    if len(body) > max_bytes:  # grew after the fstat
        raise ImageRejected(Status.IMAGE_TOO_LARGE, f"file is over {max_bytes} bytes")
    return body


def side_limits(stamp_pixels: int) -> tuple[int, int]:
    return max(1, stamp_pixels // MIN_SIDE_DIVISOR), MAX_SIDE_FACTOR * stamp_pixels


def check_size(width: int, height: int, stamp_pixels: int) -> None:
    """Header-level check (before decoding): square, and not too small or too large."""
    lo, hi = side_limits(stamp_pixels)
    if max(width, height) > hi:
        raise ImageRejected(Status.IMAGE_TOO_LARGE, f"{width}x{height} px (limit {hi} a side); not decoded")
    if width != height:
        raise ImageRejected(Status.BAD_IMAGE, f"not square: {width}x{height} px")
    if width < lo:
        raise ImageRejected(Status.SMALL_IMAGE, f"{width}x{height} px (at least {lo} a side)")


OPAQUE_MODES = ("RGBA", "P")  # PIL modes used as RGB when every pixel is opaque (exported PNGs)


def opaque_rgb(im) -> np.ndarray:
    """An RGBA or palette PIL image as its RGB pixels, exactly, when every pixel is opaque; a
    transparent pixel hides the colour the stamp needs there: ``bad_image``."""
    rgba = np.asarray(im.convert("RGBA"), dtype=np.uint8)
    if (rgba[..., 3] < 255).any():
        raise ImageRejected(Status.BAD_IMAGE, f"mode {im.mode} with transparent pixels")
    return np.ascontiguousarray(rgba[..., :3])


def display_values(a: np.ndarray) -> np.ndarray:
    """FITS pixels of any dtype -> uint8 display values, by the rule in the module docstring."""
    if a.dtype == np.uint8:
        return a
    x = a.astype(np.float64)
    finite = np.isfinite(x)
    bad = 1.0 - finite.mean() if x.size else 1.0
    if bad > MAX_NONFINITE:
        raise ImageRejected(Status.BLANK_IMAGE, f"{bad:.0%} of the pixels are NaN/inf")
    v = x[finite]
    lo, hi = (float(v.min()), float(v.max())) if v.size else (0.0, 0.0)
    if lo < -0.5 or hi > 255.5:
        raise ImageRejected(
            Status.BAD_IMAGE, f"pixel values {lo:.3g}..{hi:.3g} are not display values (0..1 or 0..255)"
        )
    if a.dtype.kind == "f" and hi <= 1.0:
        x = x * 255.0  # display values in 0..1 (matplotlib, skimage)
    x[~finite] = 0.0
    return np.clip(np.rint(x), 0, 255).astype(np.uint8)


def check_jpeg(body: bytes) -> np.ndarray | None:
    """A JPEG must decode without a single libjpeg-turbo warning (simplejpeg ``strict``): corrupt
    data ("N extraneous bytes before marker", a zeroed block) and data cut short ("premature end
    of data segment", even with the end marker put back) are ``bad_image``.  PIL hides these
    warnings and fills the rest with grey.  Returns the decoded (H, W, 3) uint8 image (the same
    pixels PIL decodes, about 5x faster), so a stamp is decoded once; None without simplejpeg,
    where only the grey-fill check applies."""
    try:
        import simplejpeg
    except ImportError:  # a declared dependency; degrade, don't fail
        return None
    try:
        return simplejpeg.decode_jpeg(body, colorspace="RGB", strict=True)
    except ValueError as e:
        raise ImageRejected(Status.BAD_IMAGE, f"corrupt JPEG: {e}") from None


def check_bands(bands: np.ndarray) -> list:
    """Band stamps cut from frames, float (nbands, k, S, S), physical units: NaN/inf set to 0 in
    place; returns [(stamp index, ImageRejected)] for stamps with over :data:`MAX_NONFINITE`
    non-finite pixels, or with at least :data:`MAX_FLAT` of their pixels without data (0 in
    every band: off the frame or masked; real sky is never exactly 0)."""
    out = []
    finite = np.isfinite(bands)
    if not finite.all():
        bad = 1.0 - finite.mean(axis=(0, 2, 3))
        bands[~finite] = 0
        out += [
            (j, ImageRejected(Status.BLANK_IMAGE, f"{bad[j]:.0%} of the frame pixels are NaN/inf"))
            for j in np.flatnonzero(bad > MAX_NONFINITE)
        ]
    empty = (bands == 0).all(axis=0).mean(axis=(1, 2))
    seen = {j for j, _ in out}
    out += [
        (j, ImageRejected(Status.BLANK_IMAGE, f"{empty[j]:.0%} of the stamp has no data (off the frame or 0)"))
        for j in np.flatnonzero(empty >= MAX_FLAT)
        if j not in seen
    ]
    return out


def check_pixels(a: np.ndarray, flat: bool = True) -> None:
    """Content check of a decoded (H, W, 3) uint8 image at its own resolution.  ``flat=False``
    (frames: flat areas are judged on the band data by :func:`check_bands`, since noise-free
    simulated sky is flat) checks only that the image is not constant."""
    h, w = a.shape[:2]
    if int(a.max()) - int(a.min()) <= MIN_RANGE:
        raise ImageRejected(Status.BLANK_IMAGE, f"the image is constant (values {a.min()}..{a.max()})")
    th, tw = h // TILE, w // TILE
    if not flat or not th or not tw:
        return
    c = a[: th * TILE, : tw * TILE].astype(np.uint32)
    v = (c[..., 0] << 16) | (c[..., 1] << 8) | c[..., 2]  # one number per colour
    t = v.reshape(th, TILE, tw, TILE).transpose(0, 2, 1, 3).reshape(th, tw, TILE * TILE)  # tiles, contiguous
    hi = t.max(-1)
    flat = hi == t.min(-1)
    f = flat.mean()
    if f >= MAX_FLAT:
        raise ImageRejected(Status.BLANK_IMAGE, f"{f:.0%} of the image is flat (one colour per 8x8 tile)")
    fill = (flat & (hi == 0x808080)).mean()
    if fill >= MAX_FILL and fill * th * tw >= 2:
        raise ImageRejected(
            Status.BAD_IMAGE, f"{fill:.0%} of the image is flat grey 128: compressed data cut short or damaged"
        )
