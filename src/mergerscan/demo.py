"""A synthetic SDSS-like field for the demo (``make demo``) and tests that need frames.

:func:`make_demo_field` writes, per field, ``frame-[gri]-RRRRRR-C-FFFF.fits.bz2`` files that
imitate SDSS DR17 corrected frames (HDU0 float32 nanomaggies, rotated TAN WCS, each band with its
own slightly offset WCS, double-Gaussian PSF with wings, sky + shot noise, floats truncated like
SDSS FLOATCOMPRESS) and ``demo-catalog.fits`` (objid, ra, dec, truth, mag_r, redshift).  The sky
holds stars, bulge+disc galaxies, faint background sources and merging pairs whose discs are test
particles of a restricted three-body encounter (Toomre & Toomre 1972), so tails, bridges and
lopsided discs arise from the dynamics.  Consecutive fields of the made-up run overlap by
``OVERLAP`` rows, and 5 catalog rows lie outside every frame.  Deterministic given ``seed``.

    python -m mergerscan.demo OUT_DIR
"""

from __future__ import annotations

import bz2
import io
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

BANDS = "gri"
PIXSCALE = 0.396                      # arcsec/px
SHAPE = (745, 1024)                   # (rows, cols): half an SDSS frame in each direction
OVERLAP = 100                         # rows shared by consecutive fields
RUN, CAMCOL, FIELD0, RERUN = 900001, 1, 11, "301"
RA0, DEC0 = 185.25, 15.5              # made-up run start, in the SDSS North Galactic Cap
SKY_SIGMA = np.array([0.017, 0.025, 0.038])       # nanomaggies/px, as measured on DR17 frames
SHOT = np.array([0.0040, 0.0050, 0.0070]) / 4.7   # nmgy per electron (NMGY / gain)
PSF_BAND = np.array([1.05, 1.0, 0.95])            # seeing in g, r, i relative to r
CAMROW = {"r": 1, "i": 2, "u": 3, "z": 4, "g": 5}
OBJID0 = 1237660000000000000


# --------------------------------------------------------------------------- sky model
@dataclass
class Sersic:
    ra: float
    dec: float
    n: float
    re: float                 # half-light radius along the major axis, arcsec
    q: float                  # axis ratio
    pa: float                 # position angle of the major axis, deg east of north
    flux: np.ndarray          # (3,) nanomaggies in g, r, i
    arms: tuple | None = None  # (amplitude, pitch deg, phase) of a 2-armed log spiral


@dataclass
class Particles:
    ra: float
    dec: float
    east: np.ndarray          # (N,) arcsec offsets from (ra, dec)
    north: np.ndarray
    flux: np.ndarray          # (N, 3)


@dataclass
class Star:
    ra: float
    dec: float
    flux: np.ndarray


def _colour(mag_r, g_r, r_i):
    """(3,) g, r, i fluxes in nanomaggies from r magnitude and colours."""
    fr, g_r, r_i = np.broadcast_arrays(10 ** (-0.4 * (np.asarray(mag_r) - 22.5)), g_r, r_i)
    return np.stack([fr * 10 ** (-0.4 * np.asarray(g_r)), fr, fr * 10 ** (0.4 * np.asarray(r_i))], -1)


def _bn(n):
    return 2 * n - 1 / 3 + 4 / (405 * n) + 46 / (25515 * n * n)


def _sky_offset(ra, dec, east, north):
    return ra + east / 3600 / np.cos(np.radians(dec)), dec + north / 3600


def _re_from_sb(flux_r, mu_e):
    """Half-light radius (arcsec) giving mean surface brightness ``mu_e`` (r mag/arcsec^2) inside it."""
    return np.sqrt(flux_r / 2 / (np.pi * 10 ** (-0.4 * (mu_e - 22.5))))


def _galaxy(rng, ra, dec, mag_r, kind):
    """Components of an isolated galaxy: 'ell' (n=4), 'spiral' (bulge + disc) or 'disc'."""
    flux_r = 10 ** (-0.4 * (mag_r - 22.5))
    pa = rng.uniform(0, 180)
    if kind == "ell":
        return [Sersic(ra, dec, 4.0, _re_from_sb(flux_r, rng.normal(20.6, 0.35)), rng.uniform(0.55, 0.95), pa,
                       _colour(mag_r, rng.normal(0.85, 0.04), rng.normal(0.42, 0.03)))]
    bt = rng.uniform(0.15, 0.5) if kind == "spiral" else rng.uniform(0.0, 0.08)
    q = max(np.cos(np.arcsin(rng.uniform(0, 0.97))), 0.15)  # random inclination
    disc_gr = rng.normal(0.5 if bt > 0.3 else 0.38, 0.06)    # bulgier discs are redder
    re_d = _re_from_sb(flux_r * (1 - bt), rng.normal(21.8, 0.35))
    arms = (rng.uniform(0.3, 0.7), rng.uniform(14, 30), rng.uniform(0, 2 * np.pi)) if q > 0.4 else None
    mag_d = mag_r - 2.5 * np.log10(1 - bt * 0.9)
    out = [Sersic(ra, dec, 1.0, re_d, q, pa, _colour(mag_d, disc_gr, rng.normal(0.27, 0.03)), arms)]
    if bt > 0.02:
        out.append(Sersic(ra, dec, 4.0, max(0.15 * re_d * rng.uniform(0.7, 1.3), 0.4),
                          min(1.0, q + 0.35), pa, _colour(mag_r - 2.5 * np.log10(bt), 0.85, 0.43)))
    # blue star-forming knots
    for _ in range(rng.integers(0, 6) if kind != "ell" else 0):
        r, t = re_d * rng.uniform(0.4, 1.4), rng.uniform(0, 2 * np.pi)
        u, v = r * np.cos(t), r * np.sin(t) * q
        p = np.radians(pa)
        e, n_ = u * np.sin(p) + v * np.cos(p), u * np.cos(p) - v * np.sin(p)
        out.append(Sersic(*_sky_offset(ra, dec, e, n_), 0.5, rng.uniform(0.3, 0.6), 1.0, 0.0,
                          _colour(mag_d + rng.uniform(3.5, 5.0), 0.25, 0.1)))
    return out


def _rotation(rng):
    """Uniform random 3-D rotation matrix."""
    qv = rng.normal(size=4)
    a, b, c, d = qv / np.linalg.norm(qv)
    return np.array([[a*a+b*b-c*c-d*d, 2*(b*c-a*d), 2*(b*d+a*c)],
                     [2*(b*c+a*d), a*a-b*b+c*c-d*d, 2*(c*d-a*b)],
                     [2*(b*d-a*c), 2*(c*d+a*b), a*a-b*b-c*c+d*d]])


def _encounter(rng, n1=4000):
    """Restricted three-body parabolic encounter of two discs (G = 1, primary mass 1).

    Returns snapshots ``(particles (N, 3), nuclei (2, 3))`` taken 0.5 to 4.1 time units after
    the first pericentre, each particle's galaxy (0/1) and initial radius (disc units), masses.
    """
    q = rng.uniform(0.35, 1.0)
    mass = np.array([1.0, q])
    mtot, rp, eps, eps_g = 1 + q, rng.uniform(0.9, 1.8), 0.12, 0.3
    f0 = np.radians(-120)
    r0, h = 2 * rp / (1 + np.cos(f0)), np.sqrt(2 * mtot * rp)
    rel = r0 * np.array([np.cos(f0), np.sin(f0), 0])
    vrel = mtot / h * np.array([-np.sin(f0), 1 + np.cos(f0), 0])
    cen = np.array([-q / mtot * rel, rel / mtot])
    vcen = np.array([-q / mtot * vrel, vrel / mtot])
    pos, vel, gal, rad = [], [], [], []
    for k, m in enumerate(mass):
        n = max(int(n1 * m), 1500)
        size = np.sqrt(m)
        r = rng.gamma(2.0, 0.3, n)
        while (bad := r > 2.0).any():
            r[bad] = rng.gamma(2.0, 0.3, bad.sum())
        r = np.maximum(r, 0.02) * size
        phi = rng.uniform(0, 2 * np.pi, n)
        p = np.stack([r * np.cos(phi), r * np.sin(phi), rng.normal(0, 0.03 * size, n)], 1)
        vc = np.sqrt(m * r * r / (r * r + eps * eps) ** 1.5) * (1 + rng.normal(0, 0.04, n))
        v = np.stack([-vc * np.sin(phi), vc * np.cos(phi), rng.normal(0, 0.02, n)], 1)
        rot = _rotation(rng)
        if rot[2, 2] < 0 and rng.random() < 0.7:   # mostly prograde: prograde discs grow tails
            rot = rot @ np.diag([1.0, -1.0, -1.0])
        pos.append(p @ rot.T + cen[k]); vel.append(v @ rot.T + vcen[k])
        gal.append(np.full(n, k)); rad.append(r / size)
    gal, rad = np.concatenate(gal), np.concatenate(rad)
    pos, vel = np.concatenate(pos).T.copy(), np.concatenate(vel).T.copy()   # (3, N): fast rows

    def acc(x, c):
        a = np.zeros_like(x)
        for k in range(2):
            d = c[k][:, None] - x
            r2 = d[0] * d[0] + d[1] * d[1] + d[2] * d[2] + eps * eps
            a += d * (mass[k] / (r2 * np.sqrt(r2)))
        return a

    def acc_c(c):
        d = c[1] - c[0]
        f = d / (d @ d + eps_g ** 2) ** 1.5
        return np.array([q * f, -f])

    dt, t_peri, t, snaps = 0.02, None, 0.0, []
    sep_prev = np.inf
    a, ac = acc(pos, cen), acc_c(cen)
    for _ in range(4000):
        vel += 0.5 * dt * a; vcen += 0.5 * dt * ac
        pos += dt * vel; cen += dt * vcen
        a, ac = acc(pos, cen), acc_c(cen)
        vel += 0.5 * dt * a; vcen += 0.5 * dt * ac
        t += dt
        sep = np.linalg.norm(cen[1] - cen[0])
        if t_peri is None and sep > sep_prev:
            t_peri = t
        sep_prev = sep
        if t_peri is not None and t - t_peri >= 0.5 + 0.3 * len(snaps) - 1e-9:
            snaps.append((pos.T.copy(), cen.copy()))
            if len(snaps) == 13:
                break
    return snaps, gal, rad, mass


def _merger(rng, ra, dec, mag_r):
    """Components of a merging pair; the primary's nucleus is at (ra, dec)."""
    snaps, gal, rad, mass = _encounter(rng)
    flux_r = 10 ** (-0.4 * (mag_r - 22.5)) * mass / mass[0]      # light follows mass
    bt = rng.uniform(0.12, 0.35, 2)
    re_disc = 1.678 * 0.3 * np.sqrt(mass)                     # disc half-mass radii, units
    scale = _re_from_sb(flux_r[0] * (1 - bt[0]), rng.normal(21.6, 0.3)) / re_disc[0]  # arcsec/unit
    for _ in range(60):                      # a snapshot and view with a 5-20" separation
        pos, cen = snaps[rng.integers(len(snaps))]
        rot = _rotation(rng)
        p, c = pos @ rot.T, cen @ rot.T
        sep = scale * np.hypot(*(c[1, :2] - c[0, :2]))
        if 5 <= sep <= 20:
            break
    else:
        scale *= rng.uniform(8, 16) / sep
    east, north = (p[:, 0] - c[0, 0]) * scale, (p[:, 1] - c[0, 1]) * scale
    comps = []
    for k in range(2):
        sel = gal == k
        x = np.clip(rad[sel], 0, 1.2)
        w = 0.6 + x                          # outer disc over-weighted: brighter tails
        # disc colour: redder centre, bluer outskirts (star-forming tails) with blue knots
        g_r, r_i = 0.62 - 0.25 * x + rng.normal(0, 0.03), 0.32 - 0.07 * x
        knot = (rng.random(x.size) < 0.015) & (x > 0.3)
        w[knot] *= 20
        g_r[knot], r_i[knot] = 0.2, 0.08
        fr = flux_r[k] * (1 - bt[k]) * w / w.sum()
        comps.append(Particles(ra, dec, east[sel], north[sel], _colour(22.5 - 2.5 * np.log10(fr), g_r, r_i)))
        ce, cn = (c[k, :2] - c[0, :2]) * scale
        comps.append(Sersic(*_sky_offset(ra, dec, ce, cn), 4.0, max(0.15 * re_disc[k] * scale, 0.4),
                            rng.uniform(0.7, 1.0), rng.uniform(0, 180),
                            _colour(22.5 - 2.5 * np.log10(flux_r[k] * bt[k]), 0.85, 0.43)))
    return comps


def _star(rng, ra, dec, mag_r):
    g_r = np.clip(rng.choice([rng.normal(0.45, 0.12), rng.normal(1.35, 0.12)], p=[0.6, 0.4]), 0.2, 1.6)
    r_i = 0.12 + 0.35 * (g_r - 0.3) if g_r < 1.2 else 0.43 + 1.5 * (g_r - 1.2)
    return Star(ra, dec, _colour(mag_r, g_r, r_i))


# --------------------------------------------------------------------------- frames
def _header(band, field, crval, cd, crpix):
    from astropy.io import fits
    h = fits.Header()
    for key, val, com in [
        ("ORIGIN", "SDSS", None), ("TELESCOP", "2.5m", None), ("TIMESYS", "TAI", None),
        ("RUN", RUN, "Run number"), ("FRAME", field, "Frame sequence number within the run"),
        ("CCDLOC", 10 * CAMROW[band] + CAMCOL, "Survey location of CCD (e.g., rowCol)"),
        ("FLAVOR", "science", "Flavor of this run"), ("EXPTIME", "53.907456", "Exposure time (seconds)"),
        ("CCDMODE", "DRIFT", "'STARING' or 'DRIFT'"), ("CAMROW", CAMROW[band], "Row in the imaging camera"),
        ("EQUINOX", 2000.0, None), ("SOFTBIAS", 1000, 'software "bias" added to all DN'),
        ("BUNIT", "nanomaggy", "1 nanomaggy = 3.631e-6 Jy"), ("FILTER", band, "filter used"),
        ("CAMCOL", CAMCOL, "column in the imaging camera"), ("RADESYS", "ICRS", None),
        ("CTYPE1", "RA---TAN", None), ("CTYPE2", "DEC--TAN", None), ("CUNIT1", "deg", None),
        ("CUNIT2", "deg", None), ("CRPIX1", crpix[0], None), ("CRPIX2", crpix[1], None),
        ("CRVAL1", crval[0], "RA of reference pixel (deg)"), ("CRVAL2", crval[1], "Dec of reference pixel (deg)"),
        ("CD1_1", cd[0, 0], "RA deg per column pixel"), ("CD1_2", cd[0, 1], "RA deg per row pixel"),
        ("CD2_1", cd[1, 0], "Dec deg per column pixel"), ("CD2_2", cd[1, 1], "Dec deg per row pixel"),
        ("NMGY", float(SHOT["gri".index(band)] * 4.7), "Calibration factor [nMgy per count]"),
        ("RERUN", RERUN, "rerun"), ("SYNTHETC", True, "made by mergerscan.demo, not SDSS data"),
    ]:
        h[key] = (val, com) if com else val
    h.add_comment("Floats truncated at 10 binary digits like SDSS FLOATCOMPRESS")
    return h


def _psf(r2, fwhm):
    """SDSS-like PSF (unnormalised) at squared radius r2 px^2: double Gaussian + power-law wings."""
    s2 = (fwhm / 2.3548) ** 2
    return (0.88 * np.exp(-0.5 * r2 / s2) + 0.1 / 4 * np.exp(-0.125 * r2 / s2)
            + 0.02 / 4.5 * (1 + r2 / (9 * s2)) ** -2.5) / s2


def _psf_fft(shape, fwhm, smooth=0.0, rad=20):
    """rFFT of the normalised PSF (times a Gaussian of sigma ``smooth`` px) on ``shape``."""
    s = (np.arange(-rad * 3 - 1, rad * 3 + 2) + 0.5) / 3 - 1 / 6   # 3x oversampled pixel grid
    y, x = np.meshgrid(s, s, indexing="ij")
    k = _psf(x * x + y * y, fwhm)
    k = k.reshape(2 * rad + 1, 3, 2 * rad + 1, 3).sum((1, 3))
    pad = np.zeros(shape)
    pad[:2 * rad + 1, :2 * rad + 1] = k / k.sum()
    pad = np.roll(pad, (-rad, -rad), (0, 1))
    f = np.fft.rfft2(pad)
    if smooth:
        fy, fx = np.fft.fftfreq(shape[0])[:, None], np.fft.rfftfreq(shape[1])[None, :]
        f *= np.exp(-2 * np.pi ** 2 * smooth ** 2 * (fx ** 2 + fy ** 2))
    return f


def _add(img, stamp, x0, y0):
    """Add ``stamp`` with its [0, 0] pixel at integer (x0, y0) of ``img``, clipped."""
    h, w = stamp.shape
    ya, xa, yb, xb = max(y0, 0), max(x0, 0), min(y0 + h, img.shape[0]), min(x0 + w, img.shape[1])
    if ya < yb and xa < xb:
        img[ya:yb, xa:xb] += stamp[ya - y0:yb - y0, xa - x0:xb - x0]


def _sersic_stamp(c, xc, yc, jac):
    """Normalised, pixel-integrated image of a Sersic component centred at pixel (xc, yc)."""
    re_px = c.re / PIXSCALE
    half = int(np.clip((8 if c.n > 2 else 5) * re_px, 6, 150))
    os = 3 if half < 40 else 1                # sub-pixel sampling matters for small ones only
    x0, y0 = int(np.floor(xc)) - half, int(np.floor(yc)) - half
    s = (np.arange((2 * half + 1) * os) + 0.5) / os
    dy, dx = np.meshgrid(y0 + s - 0.5 - yc, x0 + s - 0.5 - xc, indexing="ij")
    e, n = jac[0, 0] * dx + jac[0, 1] * dy, jac[1, 0] * dx + jac[1, 1] * dy
    p = np.radians(c.pa)
    u, v = e * np.sin(p) + n * np.cos(p), (e * np.cos(p) - n * np.sin(p)) / c.q
    r = np.sqrt(u * u + v * v)
    img = np.exp(-_bn(c.n) * ((r / c.re) ** (1 / c.n) - 1))
    if c.arms:
        amp, pitch, ph = c.arms
        rs = c.re / 1.678
        theta = np.arctan2(v, u) - np.log(np.maximum(r, 1e-3) / rs) / np.tan(np.radians(pitch)) + ph
        img *= 1 + amp * (1 - np.exp(-(r / rs) ** 2)) * np.cos(2 * theta)
    img = img.reshape(2 * half + 1, os, 2 * half + 1, os).mean((1, 3))
    return img / img.sum(), x0, y0


def _render(objs, wcs, shape, b, fwhm, rng):
    """Noisy float32 image of ``objs`` in band index ``b`` through ``wcs``."""
    rad = 24
    big = (shape[0] + 2 * rad, shape[1] + 2 * rad)
    layers = np.zeros((2,) + big)            # 0: analytic galaxies, 1: particles (smoothed more)
    jac = wcs.wcs.cd * 3600                  # px -> (east, north) arcsec
    inv = np.linalg.inv(jac)
    ra = np.array([o.ra for o in objs]); dec = np.array([o.dec for o in objs])
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
            for ddx, ddy, wgt in ((0, 0, (1 - fx) * (1 - fy)), (1, 0, fx * (1 - fy)),
                                  (0, 1, (1 - fx) * fy), (1, 1, fx * fy)):
                jx, jy = ix + ddx, iy + ddy
                ok = (jx >= 0) & (jx < big[1]) & (jy >= 0) & (jy < big[0])
                np.add.at(layers[1], (jy[ok], jx[ok]), wgt[ok] * o.flux[ok, b])
    img = np.fft.irfft2(np.fft.rfft2(layers[0]) * _psf_fft(big, fwhm)
                        + np.fft.rfft2(layers[1]) * _psf_fft(big, fwhm, smooth=1.0), big)
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
            st += 2e-3 * (np.exp(-0.5 * dx ** 2 / 0.36) + np.exp(-0.5 * dy ** 2 / 0.36)) / (1 + r2 / 40)
        st = st.reshape(2 * half + 1, 3, 2 * half + 1, 3).mean((1, 3))
        _add(img, st / st.sum() * o.flux[b], x0, y0)
    sigma = np.sqrt(SKY_SIGMA[b] ** 2 * rng.uniform(0.85, 1.15) ** 2 + np.maximum(img, 0) * SHOT[b])
    img = img + rng.normal(0, 1, shape) * sigma + rng.normal(0, 0.002)
    # SDSS FLOATCOMPRESS: keep 10 mantissa bits
    bits = img.astype(np.float32).view(np.uint32) & np.uint32(0xFFFFE000)
    return bits.view(np.float32)


def _field_wcs(rng, n_fields):
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
        for _ in BANDS:      # each band: a few arcsec offset, a tiny rotation and scale change
            de, dn = rng.normal(0, 1.2, 2)
            rot, sc = np.radians(rng.normal(0, 0.01)), 1 + rng.normal(0, 2e-4)
            r = np.array([[np.cos(rot), -np.sin(rot)], [np.sin(rot), np.cos(rot)]])
            bands.append((_sky_offset(ra, dec, de, dn), sc * r @ cd, crpix))
        out.append(bands)
    return run, out


def _place(rng, taken, radius, xlim, ylim, tries=2000):
    for _ in range(tries):
        x, y = rng.uniform(*xlim), rng.uniform(*ylim)
        if all((x - a) ** 2 + (y - b) ** 2 > (radius + r) ** 2 for a, b, r in taken):
            taken.append((x, y, radius))
            return x, y
    raise RuntimeError("demo field too crowded")


def make_demo_field(out_dir, n_fields=2, seed=0, galaxies_per_field=40, mergers_per_field=8,
                    stars_per_field=30) -> dict:
    """Write the synthetic frames and ``demo-catalog.fits`` to ``out_dir``.

    Returns ``{"frames": [paths], "catalog": path}``.
    """
    import fitsio
    from astropy.io import fits
    from astropy.wcs import WCS

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    ss = np.random.SeedSequence(seed)
    r_geo, r_obj, r_bg, r_noise = (np.random.default_rng(s) for s in ss.spawn(4))
    run, geo = _field_wcs(r_geo, n_fields)
    step = SHAPE[0] - OVERLAP
    ymax = SHAPE[0] + (n_fields - 1) * step
    to_sky = lambda x, y: tuple(float(v) for v in run.wcs_pix2world([[x, y]], 0)[0])  # noqa: E731

    rows, objs, taken = [], [], []
    for _ in range(n_fields * mergers_per_field):
        ra, dec = to_sky(*_place(r_obj, taken, 70, (90, SHAPE[1] - 90), (90, ymax - 90)))
        mag = r_obj.uniform(14.8, 16.8)
        objs += _merger(r_obj, ra, dec, mag)
        rows.append((ra, dec, "merger", mag, r_obj.uniform(0.03, 0.09)))
    n_gal = n_fields * galaxies_per_field
    for i in range(n_gal):
        ylim = (40, ymax - 40)
        if i < n_fields - 1:                 # one galaxy in each overlap strip
            ylim = ((i + 1) * step + 25, SHAPE[0] + i * step - 25)
        ra, dec = to_sky(*_place(r_obj, taken, 35, (40, SHAPE[1] - 40), ylim))
        mag = 17.7 - 2.9 * r_obj.random() ** 1.5
        kind = r_obj.choice(["ell", "spiral", "disc"], p=[0.3, 0.5, 0.2])
        objs += _galaxy(r_obj, ra, dec, mag, kind)
        z = np.clip(0.02 + 0.08 * (mag - 14.8) / 2.9 + r_obj.normal(0, 0.012), 0.01, 0.12)
        rows.append((ra, dec, "galaxy", mag, z))
    for _ in range(n_fields * stars_per_field):
        ra, dec = to_sky(*_place(r_obj, taken, 15, (25, SHAPE[1] - 25), (25, ymax - 25)))
        mag = r_obj.uniform(14.5, 20.5)
        objs.append(_star(r_obj, ra, dec, mag))
        rows.append((ra, dec, "star", mag, 0.0))
    for _ in range(5):                       # far outside every frame
        ra, dec = to_sky(r_obj.uniform(-3000, -2000), r_obj.uniform(-500, ymax + 500))
        rows.append((ra, dec, "galaxy", r_obj.uniform(15, 17.7), r_obj.uniform(0.02, 0.1)))

    # uncatalogued faint background galaxies and stars (SDSS frames are full of them)
    area = ymax / SHAPE[0]                   # in frames
    for _ in range(int(160 * area)):
        ra, dec = to_sky(r_bg.uniform(-20, SHAPE[1] + 20), r_bg.uniform(-20, ymax + 20))
        mag = 23.0 - 3.5 * r_bg.random() ** 2
        red = r_bg.random() < 0.4
        colour = _colour(mag, r_bg.normal(1.3 if red else 0.5, 0.15), r_bg.normal(0.5 if red else 0.25, 0.1))
        objs.append(Sersic(ra, dec, r_bg.choice([1.0, 4.0]), r_bg.uniform(0.3, 1.3) * 10 ** (-0.1 * (mag - 21)),
                           r_bg.uniform(0.3, 1.0), r_bg.uniform(0, 180), colour))
    for _ in range(int(50 * area)):
        ra, dec = to_sky(r_bg.uniform(-20, SHAPE[1] + 20), r_bg.uniform(-20, ymax + 20))
        objs.append(_star(r_bg, ra, dec, r_bg.uniform(19.5, 22.5)))

    seeing = r_geo.uniform(1.05, 1.4, n_fields)    # r-band FWHM of the PSF core, arcsec
    frames = []
    for k, bands in enumerate(geo):
        for b, (band, (crval, cd, crpix)) in enumerate(zip(BANDS, bands)):
            hdr = _header(band, FIELD0 + k, crval, cd, crpix)
            wcs = WCS(hdr)
            img = _render(objs, wcs, SHAPE, b, seeing[k] * PSF_BAND[b] / PIXSCALE, r_noise)
            buf = io.BytesIO()
            fits.PrimaryHDU(img, hdr).writeto(buf)
            path = out / f"frame-{band}-{RUN:06d}-{CAMCOL}-{FIELD0 + k:04d}.fits.bz2"
            path.write_bytes(bz2.compress(buf.getvalue(), 9))
            frames.append(str(path))

    order = r_obj.permutation(len(rows))     # mix types along the catalog
    cat = np.zeros(len(rows), dtype=[("objid", "i8"), ("ra", "f8"), ("dec", "f8"), ("truth", "S6"),
                                     ("mag_r", "f4"), ("redshift", "f4")])
    for j, i in enumerate(order):
        ra, dec, truth, mag, z = rows[i]
        cat[j] = (OBJID0 + j, ra, dec, truth, mag, z)
    cpath = out / "demo-catalog.fits"
    fitsio.write(str(cpath), cat, extname="CATALOG", clobber=True)
    return {"frames": frames, "catalog": str(cpath)}


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1 or argv[0].startswith("-"):
        print("usage: python -m mergerscan.demo OUT_DIR", file=sys.stderr)
        return 2
    paths = make_demo_field(argv[0])
    for p in paths["frames"] + [paths["catalog"]]:
        print(p)
    return 0


if __name__ == "__main__":
    sys.exit(main())
