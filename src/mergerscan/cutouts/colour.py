"""Colour composite of three band stamps: the asinh (Lupton) stretch used for frames.

astropy ``make_lupton_rgb(i*s_i, r*s_r, g*s_g, Q=, stretch=, minimum=)`` -> uint8 RGB (R=i, G=r,
B=g), with ``spec.stretch = {"scales": [s_i, s_r, s_g], "Q", "stretch", "minimum"}`` (scales in
``spec.channels`` order).  :func:`composite` computes exactly that (tested to 1 count against
:func:`composite_reference`) in float32, ~3x faster, and pinned to astropy 8's formula so stamps
do not change with the astropy version.
"""

from __future__ import annotations

import numpy as np
from astropy.visualization import make_lupton_rgb


def stretch_params(stretch: dict):
    sc = [float(v) for v in stretch.get("scales", (1.0, 1.0, 1.0))]
    return sc, float(stretch.get("Q", 8.0)), float(stretch.get("stretch", 0.4)), float(stretch.get("minimum", 0.0))


def composite_reference(bands, stretch: dict) -> np.ndarray:
    """(R, G, B) float images (nanomaggies) -> uint8 (..., 3) via astropy ``make_lupton_rgb``."""
    sc, q, st, m = stretch_params(stretch)
    return make_lupton_rgb(bands[0] * sc[0], bands[1] * sc[1], bands[2] * sc[2], Q=q, stretch=st, minimum=m)


def composite(bands, stretch: dict) -> np.ndarray:
    """Same as :func:`composite_reference` (astropy 8's ``make_lupton_rgb``: intensity I = mean of
    the scaled bands minus ``minimum``, f(I) = asinh(I Q/stretch) 0.1/asinh(0.1 Q), each band times
    f(I)/I, clipped at 0, pixels with max > 1 scaled down by their max, x255 truncated to uint8), in
    float32 and in place: ~3x faster, and pinned so stamps do not change with the astropy version
    (tests check it equals make_lupton_rgb to 1 count)."""
    sc, q, st, m = stretch_params(stretch)
    shape = np.shape(bands[0])
    x = np.empty((3,) + shape, np.float32)
    for c in range(3):
        np.multiply(bands[c], np.float32(sc[c]), out=x[c])
        if m:
            x[c] -= np.float32(m)
    i = x[0] + x[1]
    i += x[2]
    i /= np.float32(3)
    np.maximum(i, 0, out=i)  # f(I)/I := 0 where I <= 0 (branch-free:
    f = i * np.float32(q / st)  # 0 / tiny = 0)
    np.arcsinh(f, out=f)
    f *= np.float32(0.1 / np.arcsinh(0.1 * q))
    np.maximum(i, np.float32(1e-30), out=i)
    f /= i
    x *= f
    np.maximum(x, 0, out=x)
    g = np.maximum(np.maximum(x[0], x[1]), x[2])
    np.maximum(g, 1, out=g)  # max > 1: scaled down to 1
    out = np.empty(shape + (3,), np.uint8)
    for c in range(3):
        x[c] /= g
        x[c] *= np.float32(255)
        out[..., c] = x[c]  # truncates like astropy's astype
    return out
