"""Writing the demo field: frames of every field and band plus the catalog
(:func:`make_demo_field`)."""

from __future__ import annotations

import bz2
import io
from pathlib import Path

import numpy as np

from ..atomic import atomic_write_bytes
from .render import (
    BANDS,
    CAMCOL,
    FIELD0,
    OBJID0,
    OVERLAP,
    PIXSCALE,
    PSF_BAND,
    RUN,
    SHAPE,
    field_wcs,
    frame_header,
    render,
)
from .sky import Sersic, band_fluxes, galaxy, merger, star


def _place(rng, taken, radius, xlim, ylim, tries=2000):
    for _ in range(tries):
        x, y = rng.uniform(*xlim), rng.uniform(*ylim)
        if all((x - a) ** 2 + (y - b) ** 2 > (radius + r) ** 2 for a, b, r in taken):
            taken.append((x, y, radius))
            return x, y
    raise RuntimeError("demo field too crowded")


def make_demo_field(
    out_dir, n_fields=2, seed=0, galaxies_per_field=40, mergers_per_field=8, stars_per_field=30
) -> dict:
    """Write the synthetic frames and ``demo-catalog.fits`` to ``out_dir``.

    Returns ``{"frames": [paths], "catalog": path}``.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    ss = np.random.SeedSequence(seed)
    r_geo, r_obj, r_bg, r_noise = (np.random.default_rng(s) for s in ss.spawn(4))
    run, geo = field_wcs(r_geo, n_fields)
    ymax = SHAPE[0] + (n_fields - 1) * (SHAPE[0] - OVERLAP)
    to_sky = lambda x, y: tuple(float(v) for v in run.wcs_pix2world([[x, y]], 0)[0])
    counts = (mergers_per_field, galaxies_per_field, stars_per_field)
    rows, objs = _catalogued(r_obj, to_sky, n_fields, ymax, counts)
    objs += _background(r_bg, to_sky, ymax)
    seeing = r_geo.uniform(1.05, 1.4, n_fields)  # r-band FWHM of the PSF core, arcsec
    frames = _write_frames(out, objs, geo, seeing, r_noise)
    return {"frames": frames, "catalog": _write_catalog(out, rows, r_obj.permutation(len(rows)))}


def _catalogued(r_obj, to_sky, n_fields: int, ymax: float, counts: tuple[int, int, int]) -> tuple[list, list]:
    """The catalog's objects, placed apart: (rows (ra, dec, truth, mag_r, z), sky-model objects).
    ``counts``: mergers, galaxies and stars per field; five more galaxies lie outside every frame."""
    mergers_per_field, galaxies_per_field, stars_per_field = counts
    step = SHAPE[0] - OVERLAP
    rows, objs, taken = [], [], []
    for _ in range(n_fields * mergers_per_field):
        ra, dec = to_sky(*_place(r_obj, taken, 70, (90, SHAPE[1] - 90), (90, ymax - 90)))
        mag = r_obj.uniform(14.8, 16.8)
        objs += merger(r_obj, ra, dec, mag)
        rows.append((ra, dec, "merger", mag, r_obj.uniform(0.03, 0.09)))
    for i in range(n_fields * galaxies_per_field):
        ylim = (40, ymax - 40)
        if i < n_fields - 1:  # one galaxy in each overlap strip
            ylim = ((i + 1) * step + 25, SHAPE[0] + i * step - 25)
        ra, dec = to_sky(*_place(r_obj, taken, 35, (40, SHAPE[1] - 40), ylim))
        mag = 17.7 - 2.9 * r_obj.random() ** 1.5
        kind = r_obj.choice(["ell", "spiral", "disc"], p=[0.3, 0.5, 0.2])
        objs += galaxy(r_obj, ra, dec, mag, kind)
        z = np.clip(0.02 + 0.08 * (mag - 14.8) / 2.9 + r_obj.normal(0, 0.012), 0.01, 0.12)
        rows.append((ra, dec, "galaxy", mag, z))
    for _ in range(n_fields * stars_per_field):
        ra, dec = to_sky(*_place(r_obj, taken, 15, (25, SHAPE[1] - 25), (25, ymax - 25)))
        mag = r_obj.uniform(14.5, 20.5)
        objs.append(star(r_obj, ra, dec, mag))
        rows.append((ra, dec, "star", mag, 0.0))
    for _ in range(5):  # far outside every frame
        ra, dec = to_sky(r_obj.uniform(-3000, -2000), r_obj.uniform(-500, ymax + 500))
        rows.append((ra, dec, "galaxy", r_obj.uniform(15, 17.7), r_obj.uniform(0.02, 0.1)))
    return rows, objs


def _background(r_bg, to_sky, ymax: float) -> list:
    """Uncatalogued faint background galaxies and stars (SDSS frames are full of them)."""
    objs = []
    area = ymax / SHAPE[0]  # in frames
    for _ in range(int(160 * area)):
        ra, dec = to_sky(r_bg.uniform(-20, SHAPE[1] + 20), r_bg.uniform(-20, ymax + 20))
        mag = 23.0 - 3.5 * r_bg.random() ** 2
        red = r_bg.random() < 0.4
        colour = band_fluxes(mag, r_bg.normal(1.3 if red else 0.5, 0.15), r_bg.normal(0.5 if red else 0.25, 0.1))
        objs.append(
            Sersic(
                ra,
                dec,
                r_bg.choice([1.0, 4.0]),
                r_bg.uniform(0.3, 1.3) * 10 ** (-0.1 * (mag - 21)),
                r_bg.uniform(0.3, 1.0),
                r_bg.uniform(0, 180),
                colour,
            )
        )
    for _ in range(int(50 * area)):
        ra, dec = to_sky(r_bg.uniform(-20, SHAPE[1] + 20), r_bg.uniform(-20, ymax + 20))
        objs.append(star(r_bg, ra, dec, r_bg.uniform(19.5, 22.5)))
    return objs


def _write_frames(out: Path, objs: list, geo, seeing: np.ndarray, r_noise) -> list[str]:
    """One bzip2-compressed FITS frame per field and band, as SDSS names them; their paths."""
    from astropy.io import fits
    from astropy.wcs import WCS

    frames = []
    for k, bands in enumerate(geo):
        for b, (band, (crval, cd, crpix)) in enumerate(zip(BANDS, bands)):
            hdr = frame_header(band, FIELD0 + k, crval, cd, crpix)
            img = render(objs, WCS(hdr), SHAPE, b, seeing[k] * PSF_BAND[b] / PIXSCALE, r_noise)
            buf = io.BytesIO()
            fits.PrimaryHDU(img, hdr).writeto(buf)
            path = out / f"frame-{band}-{RUN:06d}-{CAMCOL}-{FIELD0 + k:04d}.fits.bz2"
            atomic_write_bytes(path, bz2.compress(buf.getvalue(), 9), fsync=False)
            frames.append(str(path))
    return frames


def _write_catalog(out: Path, rows: list, order: np.ndarray) -> str:
    """``demo-catalog.fits``: the rows in ``order`` (types mixed along the catalog), objid from OBJID0."""
    from astropy.io import fits

    cat = np.zeros(
        len(rows),
        dtype=[("objid", "i8"), ("ra", "f8"), ("dec", "f8"), ("truth", "S6"), ("mag_r", "f4"), ("redshift", "f4")],
    )
    for j, i in enumerate(order):
        ra, dec, truth, mag, z = rows[i]
        cat[j] = (OBJID0 + j, ra, dec, truth, mag, z)
    cpath = out / "demo-catalog.fits"
    buf = io.BytesIO()  # astropy gets a file object, never a path (no character has a meaning)
    fits.HDUList([fits.PrimaryHDU(), fits.BinTableHDU(cat, name="CATALOG")]).writeto(buf)
    atomic_write_bytes(cpath, buf.getvalue(), fsync=False)
    return str(cpath)
