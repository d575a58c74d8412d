"""Fit the frame-source colour stretch so frame cutouts look like the SkyServer JPEGs the model was
trained on, and write it into an engine's preprocessing spec (the spec is what a frame source
renders with, so no value is pasted into source by hand).

The composite is astropy's Lupton asinh mapping (``make_lupton_rgb`` before the uint8 cast) of
the i, r, g bands with per-band ``scales`` (r fixed at 1: an overall scale is degenerate with
``stretch``), ``Q``, ``stretch`` and ``minimum``.  The objective: pixel residuals after a 1-px
Gaussian smoothing (the JPEG's noise is smoothed by its compression) plus 10 x the per-channel
mean residuals (the model sees means), minimised by scipy's least_squares from several starts.
``benchmarks/calibrate_stretch.py`` ran it on the shared SDSS field and object (retired in
f30bf87: ``git show f30bf87^:benchmarks/calibrate_stretch.py``; docs/results.md).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np

MEAN_WEIGHT = 10.0
SMOOTH = 1.0
STARTS = ((8, 0.4), (3, 0.05), (15, 0.3), (8, 0.05))  # (Q, stretch) starting points


def render(bands: np.ndarray, p) -> np.ndarray:
    """Float Lupton composite (0..255, (S, S, 3)) of (i, r, g) bands with params
    ``(scale_i, scale_g, Q, stretch, minimum)``."""
    from astropy.visualization import ManualInterval
    from astropy.visualization.lupton_rgb import LuptonAsinhStretch, RGBImageMappingLupton

    si, sg, q, st, m = p
    mp = RGBImageMappingLupton(interval=ManualInterval(vmin=m), stretch=LuptonAsinhStretch(stretch=st, Q=q))
    with np.errstate(divide="ignore", invalid="ignore"):  # astropy's own 0/0, masked by its where
        return np.moveaxis(mp.apply_mappings(bands[0] * si, bands[1], bands[2] * sg), 0, -1) * 255


def unpack(x) -> list[float]:
    return [float(np.exp(x[0])), float(np.exp(x[1])), float(np.exp(x[2])), float(np.exp(x[3])), float(x[4] / 100)]


def smooth(a: np.ndarray) -> np.ndarray:
    from scipy.ndimage import gaussian_filter

    return gaussian_filter(a, (SMOOTH, SMOOTH, 0))


def fit(bands: np.ndarray, jpg: np.ndarray, mask: np.ndarray | None = None, starts=STARTS) -> tuple[list[float], float]:
    """(params, loss): the Lupton parameters that best render ``bands`` as ``jpg`` (float RGB)."""
    from scipy.optimize import least_squares

    js = smooth(jpg)
    sel = np.ones(jpg.shape[:2], bool) if mask is None else mask

    def resid(x):
        o = render(bands, unpack(x))
        r = ((smooth(o) - js)[sel]).ravel() / np.sqrt(sel.sum())
        return np.concatenate([r, np.sqrt(MEAN_WEIGHT) * (o[sel].mean(0) - jpg[sel].mean(0))])

    best = None
    for q0, st0 in starts:
        # no parameter may start at exactly 0: scipy's relative finite-difference step is then 0
        r = least_squares(
            resid, [0.01, 0.01, np.log(q0), np.log(st0), 0.01], x_scale=[0.3, 0.3, 0.5, 0.5, 1.0], diff_step=1e-3
        )
        if best is None or r.cost < best.cost:
            best = r
    assert best is not None
    return unpack(best.x), float(2 * best.cost)


def stretch_of(p) -> dict:
    """Fitted params -> the ``PreprocessSpec.stretch`` dict (scales in i, r, g order)."""
    return {
        "scales": [round(p[0], 4), 1.0, round(p[1], 4)],
        "Q": round(p[2], 3),
        "stretch": round(p[3], 4),
        "minimum": round(p[4], 5),
    }


def write_stretch(engine_path: str | Path, out_path: str | Path, stretch: dict) -> Path:
    """A copy of the engine whose spec renders frames with ``stretch`` (written atomically)."""
    from ..engines.engine_file import read_spec, write_metadata

    spec = dataclasses.replace(read_spec(engine_path), stretch=dict(stretch))
    return write_metadata(engine_path, out_path, spec=spec)


def phase_shift(a: np.ndarray, b: np.ndarray) -> tuple[float, float]:
    """(dy, dx) such that a(y, x) ~ b(y - dy, x - dx), to ~0.1 px (parabolic peak)."""
    a, b = a - a.mean(), b - b.mean()
    c = np.fft.fftshift(np.fft.ifft2(np.fft.fft2(a) * np.conj(np.fft.fft2(b))).real)
    iy, ix = np.unravel_index(c.argmax(), c.shape)

    def par(m, z, p):
        return 0.5 * (m - p) / (m - 2 * z + p)

    return (
        float(iy - c.shape[0] // 2 + par(c[iy - 1, ix], c[iy, ix], c[iy + 1, ix])),
        float(ix - c.shape[1] // 2 + par(c[iy, ix - 1], c[iy, ix], c[iy, ix + 1])),
    )
