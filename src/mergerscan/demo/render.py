"""The made-up survey and camera of the demo: field WCS along a drift scan, SDSS-like frame
headers, the PSF, and rendering a sky model into a noisy float32 frame (nanomaggies, truncated
like SDSS FLOATCOMPRESS)."""

from __future__ import annotations

import numpy as np

from .sky import Sersic, Star, sersic_bn, sky_offset

BANDS = "gri"
PIXSCALE = 0.396  # arcsec/px
SHAPE = (745, 1024)  # (rows, cols): half an SDSS frame in each direction
OVERLAP = 100  # rows shared by consecutive fields
RUN, CAMCOL, FIELD0, RERUN = 900001, 1, 11, "301"
RA0, DEC0 = 185.25, 15.5  # made-up run start, in the SDSS North Galactic Cap
SKY_SIGMA = np.array([0.017, 0.025, 0.038])  # nanomaggies/px, as measured on DR17 frames
SHOT = np.array([0.0040, 0.0050, 0.0070]) / 4.7  # nmgy per electron (NMGY / gain)
PSF_BAND = np.array([1.05, 1.0, 0.95])  # seeing in g, r, i relative to r
CAMROW = {"r": 1, "i": 2, "u": 3, "z": 4, "g": 5}
OBJID0 = 1237660000000000000


def frame_header(band, field, crval, cd, crpix):
    from astropy.io import fits

    h = fits.Header()
    for key, val, com in [
        ("ORIGIN", "SDSS", None),
        ("TELESCOP", "2.5m", None),
        ("TIMESYS", "TAI", None),
        ("RUN", RUN, "Run number"),
        ("FRAME", field, "Frame sequence number within the run"),
        ("CCDLOC", 10 * CAMROW[band] + CAMCOL, "Survey location of CCD (e.g., rowCol)"),
        ("FLAVOR", "science", "Flavor of this run"),
        ("EXPTIME", "53.907456", "Exposure time (seconds)"),
        ("CCDMODE", "DRIFT", "'STARING' or 'DRIFT'"),
        ("CAMROW", CAMROW[band], "Row in the imaging camera"),
        ("EQUINOX", 2000.0, None),
        ("SOFTBIAS", 1000, 'software "bias" added to all DN'),
        ("BUNIT", "nanomaggy", "1 nanomaggy = 3.631e-6 Jy"),
        ("FILTER", band, "filter used"),
        ("CAMCOL", CAMCOL, "column in the imaging camera"),
        ("RADESYS", "ICRS", None),
        ("CTYPE1", "RA---TAN", None),
        ("CTYPE2", "DEC--TAN", None),
        ("CUNIT1", "deg", None),
        ("CUNIT2", "deg", None),
        ("CRPIX1", crpix[0], None),
        ("CRPIX2", crpix[1], None),
        ("CRVAL1", crval[0], "RA of reference pixel (deg)"),
        ("CRVAL2", crval[1], "Dec of reference pixel (deg)"),
        ("CD1_1", cd[0, 0], "RA deg per column pixel"),
        ("CD1_2", cd[0, 1], "RA deg per row pixel"),
        ("CD2_1", cd[1, 0], "Dec deg per column pixel"),
        ("CD2_2", cd[1, 1], "Dec deg per row pixel"),
        ("NMGY", float(SHOT["gri".index(band)] * 4.7), "Calibration factor [nMgy per count]"),
        ("RERUN", RERUN, "rerun"),
        ("SYNTHETC", True, "made by mergerscan.demo, not SDSS data"),
    ]:
        h[key] = (val, com) if com else val
    h.add_comment("Floats truncated at 10 binary digits like SDSS FLOATCOMPRESS")
    return h


def _psf(r2, fwhm):
    """SDSS-like PSF (unnormalised) at squared radius r2 px^2: double Gaussian + power-law wings."""
    s2 = (fwhm / 2.3548) ** 2
    return (
        0.88 * np.exp(-0.5 * r2 / s2) + 0.1 / 4 * np.exp(-0.125 * r2 / s2) + 0.02 / 4.5 * (1 + r2 / (9 * s2)) ** -2.5
    ) / s2


def _psf_fft(shape, fwhm, smooth=0.0, rad=20):
    """rFFT of the normalised PSF (times a Gaussian of sigma ``smooth`` px) on ``shape``."""
    s = (np.arange(-rad * 3 - 1, rad * 3 + 2) + 0.5) / 3 - 1 / 6  # 3x oversampled pixel grid
    y, x = np.meshgrid(s, s, indexing="ij")
    k = _psf(x * x + y * y, fwhm)
    k = k.reshape(2 * rad + 1, 3, 2 * rad + 1, 3).sum((1, 3))
    pad = np.zeros(shape)
    pad[: 2 * rad + 1, : 2 * rad + 1] = k / k.sum()
    pad = np.roll(pad, (-rad, -rad), (0, 1))
    f = np.fft.rfft2(pad)
    if smooth:
        fy, fx = np.fft.fftfreq(shape[0])[:, None], np.fft.rfftfreq(shape[1])[None, :]
        f *= np.exp(-2 * np.pi**2 * smooth**2 * (fx**2 + fy**2))
    return f


def _add(img, stamp, x0, y0):
    """Add ``stamp`` with its [0, 0] pixel at integer (x0, y0) of ``img``, clipped."""
    h, w = stamp.shape
    ya, xa, yb, xb = max(y0, 0), max(x0, 0), min(y0 + h, img.shape[0]), min(x0 + w, img.shape[1])
    if ya < yb and xa < xb:
        img[ya:yb, xa:xb] += stamp[ya - y0 : yb - y0, xa - x0 : xb - x0]


def _sersic_stamp(c, xc, yc, jac):
    """Normalised, pixel-integrated image of a Sersic component centred at pixel (xc, yc)."""
    re_px = c.re / PIXSCALE
    half = int(np.clip((8 if c.n > 2 else 5) * re_px, 6, 150))
    os = 3 if half < 40 else 1  # sub-pixel sampling matters for small ones only
    x0, y0 = int(np.floor(xc)) - half, int(np.floor(yc)) - half
    s = (np.arange((2 * half + 1) * os) + 0.5) / os
    dy, dx = np.meshgrid(y0 + s - 0.5 - yc, x0 + s - 0.5 - xc, indexing="ij")
    e, n = jac[0, 0] * dx + jac[0, 1] * dy, jac[1, 0] * dx + jac[1, 1] * dy
    p = np.radians(c.pa)
    u, v = e * np.sin(p) + n * np.cos(p), (e * np.cos(p) - n * np.sin(p)) / c.q
    r = np.sqrt(u * u + v * v)
    img = np.exp(-sersic_bn(c.n) * ((r / c.re) ** (1 / c.n) - 1))
    if c.arms:
        amp, pitch, ph = c.arms
        rs = c.re / 1.678
        theta = np.arctan2(v, u) - np.log(np.maximum(r, 1e-3) / rs) / np.tan(np.radians(pitch)) + ph
        img *= 1 + amp * (1 - np.exp(-((r / rs) ** 2))) * np.cos(2 * theta)
    img = img.reshape(2 * half + 1, os, 2 * half + 1, os).mean((1, 3))
    return img / img.sum(), x0, y0


def render(objs, wcs, shape, b, fwhm, rng):
    """Noisy float32 image of ``objs`` in band index ``b`` through ``wcs``."""
    rad = 24
    big = (shape[0] + 2 * rad, shape[1] + 2 * rad)
    layers = np.zeros((2,) + big)  # 0: analytic galaxies, 1: particles (smoothed more)
    jac = wcs.wcs.cd * 3600  # px -> (east, north) arcsec
    inv = np.linalg.inv(jac)
    ra = np.array([o.ra for o in objs])
    dec = np.array([o.dec for o in objs])
    xs, ys = wcs.wcs_world2pix(ra, dec, 0)
    stars = []
    for o, xc, yc in zip(objs, xs + rad, ys + rad):
        if not (-200 < xc < big[1] + 200 and -200 < yc < big[0] + 200):
            continue
        if isinstance(o, Star):
            stars.append((o, xc - rad, yc - rad))
        elif isinstance(o, Sersic):
            st, x0, y0 = _sersic_stamp(o, xc, yc, jac)
            _add(layers[0], st * o.flux[b], x0, y0)
        else:
            px = xc + inv[0, 0] * o.east + inv[0, 1] * o.north
            py = yc + inv[1, 0] * o.east + inv[1, 1] * o.north
            ix, iy = np.floor(px).astype(int), np.floor(py).astype(int)
            fx, fy = px - ix, py - iy
            for ddx, ddy, wgt in (
                (0, 0, (1 - fx) * (1 - fy)),
                (1, 0, fx * (1 - fy)),
                (0, 1, (1 - fx) * fy),
                (1, 1, fx * fy),
            ):
                jx, jy = ix + ddx, iy + ddy
                ok = (jx >= 0) & (jx < big[1]) & (jy >= 0) & (jy < big[0])
                np.add.at(layers[1], (jy[ok], jx[ok]), wgt[ok] * o.flux[ok, b])
    img = np.fft.irfft2(
        np.fft.rfft2(layers[0]) * _psf_fft(big, fwhm) + np.fft.rfft2(layers[1]) * _psf_fft(big, fwhm, smooth=1.0), big
    )
    img = img[rad:-rad, rad:-rad]
    # stars: oversampled PSF at their sub-pixel position, faint spikes along the CCD axes
    for o, xc, yc in stars:
        half = 30 if o.flux[1] > 400 else 14
        x0, y0 = int(np.floor(xc)) - half, int(np.floor(yc)) - half
        s = (np.arange((2 * half + 1) * 3) + 0.5) / 3
        dy, dx = np.meshgrid(y0 + s - 0.5 - yc, x0 + s - 0.5 - xc, indexing="ij")
        r2 = dx * dx + dy * dy
        st = _psf(r2, fwhm)
        if o.flux[1] > 400:
            st += 2e-3 * (np.exp(-0.5 * dx**2 / 0.36) + np.exp(-0.5 * dy**2 / 0.36)) / (1 + r2 / 40)
        st = st.reshape(2 * half + 1, 3, 2 * half + 1, 3).mean((1, 3))
        _add(img, st / st.sum() * o.flux[b], x0, y0)
    sigma = np.sqrt(SKY_SIGMA[b] ** 2 * rng.uniform(0.85, 1.15) ** 2 + np.maximum(img, 0) * SHOT[b])
    img = img + rng.normal(0, 1, shape) * sigma + rng.normal(0, 0.002)
    # SDSS FLOATCOMPRESS: keep 10 mantissa bits
    bits = img.astype(np.float32).view(np.uint32) & np.uint32(0xFFFFE000)
    return bits.view(np.float32)


def field_wcs(rng, n_fields):
    """Per field and band (crval, cd, crpix); the fields follow the run's scan (+rows)."""
    from astropy.wcs import WCS

    theta = np.radians(rng.uniform(20, 160))
    s = PIXSCALE / 3600
    cd = s * np.array([[-np.cos(theta), np.sin(theta)], [np.sin(theta), np.cos(theta)]])
    crpix = ((SHAPE[1] + 1) / 2, (SHAPE[0] + 1) / 2)
    run = WCS(naxis=2)
    run.wcs.ctype, run.wcs.crval, run.wcs.cd, run.wcs.crpix = ["RA---TAN", "DEC--TAN"], [RA0, DEC0], cd, crpix
    step = SHAPE[0] - OVERLAP
    out = []
    for k in range(n_fields):
        ra, dec = run.wcs_pix2world([[crpix[0] - 1, crpix[1] - 1 + k * step]], 0)[0]
        bands = []
        for _ in BANDS:  # each band: a few arcsec offset, a tiny rotation and scale change
            de, dn = rng.normal(0, 1.2, 2)
            rot, sc = np.radians(rng.normal(0, 0.01)), 1 + rng.normal(0, 2e-4)
            r = np.array([[np.cos(rot), -np.sin(rot)], [np.sin(rot), np.cos(rot)]])
            bands.append((sky_offset(ra, dec, de, dn), sc * r @ cd, crpix))
        out.append(bands)
    return run, out
