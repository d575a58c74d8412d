"""Sky geometry of a stamp cut from frames: the north-up TAN grid of a stamp, its WCS nodes, and
bilinear sampling of a frame at float pixel coordinates."""

from __future__ import annotations

import warnings

import numpy as np
from astropy.io import fits
from astropy.wcs import WCS, FITSFixedWarning

from .preprocess import PreprocessSpec

N_NODES = 9  # exact WCS nodes per stamp side


def make_wcs(cards: dict) -> WCS:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FITSFixedWarning)
        return WCS(fits.Header(cards))


def unit(ra, dec):
    ra, dec = np.radians(ra), np.radians(dec)
    return np.stack([np.cos(dec) * np.cos(ra), np.cos(dec) * np.sin(ra), np.sin(dec)], axis=-1)


def stamp_nodes(ra0, dec0, spec: PreprocessSpec, n: int = N_NODES):
    """Sky coords (deg) of an n x n grid of nodes spanning the stamp's pixel centres, for each
    object: north-up (row 0 = north), east-left TAN grid centred at pixel ((S-1)/2, (S-1)/2)."""
    s = spec.stamp_pixels
    t = np.linspace(0, s - 1, n) - (s - 1) / 2
    scale = np.radians(spec.pixel_scale / 3600)
    xi = (-t * scale)[None, None, :]  # east = +xi = towards column 0
    eta = (-t * scale)[None, :, None]  # north = +eta = towards row 0
    a0 = np.radians(np.asarray(ra0, float))[:, None, None]
    d0 = np.radians(np.asarray(dec0, float))[:, None, None]
    den = np.cos(d0) - eta * np.sin(d0)  # inverse gnomonic projection
    ra = np.degrees(a0 + np.arctan2(xi, den)) % 360
    dec = np.degrees(np.arctan2(np.sin(d0) + eta * np.cos(d0), np.hypot(xi, den)))
    return ra, dec  # (k, n, n) each


def node_weights(s: int, n: int):
    """Linear interpolation from n equally spaced nodes to s pixels: left node j and weight f."""
    u = np.arange(s) * (n - 1) / (s - 1)
    j = np.minimum(np.floor(u).astype(int), n - 2)
    return j, (u - j).astype(np.float32)


def bilinear(img: np.ndarray, px: np.ndarray, py: np.ndarray, check: bool = True):
    """Bilinear samples of img at float32 (px, py) (0-based, modified in place).  With ``check``,
    points without all 4 neighbours in img are 0 and ``valid`` says which; without, the caller
    guarantees every point is inside.  Returns (values, valid or None)."""
    h, w = img.shape
    x0, y0 = np.floor(px), np.floor(py)
    px -= x0
    py -= y0  # now the fractions
    ix, iy = x0.astype(np.int32), y0.astype(np.int32)
    valid = None
    if check:
        valid = (ix >= 0) & (ix < w - 1) & (iy >= 0) & (iy < h - 1)
        if h < 2 or w < 2:
            return np.zeros(px.shape, np.float32), valid
    iy *= np.int32(w)
    iy += ix
    if check:
        iy *= valid  # outside -> pixel 0 (zeroed below)
    flat = img.ravel()
    a, b, c, d = flat.take(iy), flat[1:].take(iy), flat[w:].take(iy), flat[w + 1 :].take(iy)  # 4 neighbours
    # in place: top row a += (b - a) px, bottom row c += (d - c) px, then a += (c - a) py
    b -= a
    b *= px
    a += b
    d -= c
    d *= px
    c += d
    c -= a
    c *= py
    a += c
    if check:
        a *= valid
    return a, valid
