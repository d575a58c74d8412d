"""A simple source detector for frames: builds object catalogs of the shared SDSS fields for the
frames tests and benchmarks (threshold + connected components on a smoothed image).  Not a
replacement for a survey photometric catalog."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def detect_sources(frame: str | Path, nsigma: float = 5.0, min_area: int = 40, border: int = 8):
    """(ra, dec, area_px, flux) of connected regions above ``nsigma`` x the sky noise in one frame."""
    from astropy.wcs import WCS
    from scipy import ndimage

    from .frame_io import read_frame, read_header

    img = read_frame(Path(frame))
    wcs = WCS(read_header(Path(frame)))
    sm = ndimage.gaussian_filter(img, 1.5)
    med = np.median(sm)
    sig = 1.4826 * np.median(np.abs(sm - med))
    lab, n = ndimage.label(sm > med + nsigma * sig)
    if n == 0:
        return np.zeros((0, 4))
    idx = np.arange(1, n + 1)
    area = ndimage.sum(np.ones_like(img), lab, idx)
    flux = ndimage.sum(img - med, lab, idx)
    cy, cx = np.array(ndimage.center_of_mass(np.clip(img - med, 0, None), lab, idx)).T
    h, w = img.shape
    keep = (area >= min_area) & (cx > border) & (cy > border) & (cx < w - border) & (cy < h - border)
    sky = wcs.pixel_to_world(cx[keep], cy[keep])
    return np.stack([sky.ra.deg, sky.dec.deg, area[keep], flux[keep]], axis=1)
