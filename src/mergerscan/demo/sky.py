"""The demo sky model: Sersic components (stars' and galaxies' light), test particles of merging
discs, stars; isolated galaxies (elliptical, spiral, disc) and merging pairs (their discs from
:mod:`mergerscan.demo.nbody`).  Fluxes in nanomaggies (g, r, i)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .nbody import encounter, rotation


@dataclass
class Sersic:
    ra: float
    dec: float
    n: float
    re: float  # half-light radius along the major axis, arcsec
    q: float  # axis ratio
    pa: float  # position angle of the major axis, deg east of north
    flux: np.ndarray  # (3,) nanomaggies in g, r, i
    arms: tuple | None = None  # (amplitude, pitch deg, phase) of a 2-armed log spiral


@dataclass
class Particles:
    ra: float
    dec: float
    east: np.ndarray  # (N,) arcsec offsets from (ra, dec)
    north: np.ndarray
    flux: np.ndarray  # (N, 3)


@dataclass
class Star:
    ra: float
    dec: float
    flux: np.ndarray


def band_fluxes(mag_r, g_r, r_i):
    """(3,) g, r, i fluxes in nanomaggies from r magnitude and colours."""
    fr, g_r, r_i = np.broadcast_arrays(10 ** (-0.4 * (np.asarray(mag_r) - 22.5)), g_r, r_i)
    return np.stack([fr * 10 ** (-0.4 * np.asarray(g_r)), fr, fr * 10 ** (0.4 * np.asarray(r_i))], -1)


def sersic_bn(n):
    return 2 * n - 1 / 3 + 4 / (405 * n) + 46 / (25515 * n * n)


def sky_offset(ra, dec, east, north):
    return ra + east / 3600 / np.cos(np.radians(dec)), dec + north / 3600


def _re_from_sb(flux_r, mu_e):
    """Half-light radius (arcsec) giving mean surface brightness ``mu_e`` (r mag/arcsec^2) inside it."""
    return np.sqrt(flux_r / 2 / (np.pi * 10 ** (-0.4 * (mu_e - 22.5))))


def galaxy(rng, ra, dec, mag_r, kind):
    """Components of an isolated galaxy: 'ell' (n=4), 'spiral' (bulge + disc) or 'disc'."""
    flux_r = 10 ** (-0.4 * (mag_r - 22.5))
    pa = rng.uniform(0, 180)
    if kind == "ell":
        return [
            Sersic(
                ra,
                dec,
                4.0,
                _re_from_sb(flux_r, rng.normal(20.6, 0.35)),
                rng.uniform(0.55, 0.95),
                pa,
                band_fluxes(mag_r, rng.normal(0.85, 0.04), rng.normal(0.42, 0.03)),
            )
        ]
    bt = rng.uniform(0.15, 0.5) if kind == "spiral" else rng.uniform(0.0, 0.08)
    q = max(np.cos(np.arcsin(rng.uniform(0, 0.97))), 0.15)  # random inclination
    disc_gr = rng.normal(0.5 if bt > 0.3 else 0.38, 0.06)  # bulgier discs are redder
    re_d = _re_from_sb(flux_r * (1 - bt), rng.normal(21.8, 0.35))
    arms = (rng.uniform(0.3, 0.7), rng.uniform(14, 30), rng.uniform(0, 2 * np.pi)) if q > 0.4 else None
    mag_d = mag_r - 2.5 * np.log10(1 - bt * 0.9)
    out = [Sersic(ra, dec, 1.0, re_d, q, pa, band_fluxes(mag_d, disc_gr, rng.normal(0.27, 0.03)), arms)]
    if bt > 0.02:
        out.append(
            Sersic(
                ra,
                dec,
                4.0,
                max(0.15 * re_d * rng.uniform(0.7, 1.3), 0.4),
                min(1.0, q + 0.35),
                pa,
                band_fluxes(mag_r - 2.5 * np.log10(bt), 0.85, 0.43),
            )
        )
    # blue star-forming knots
    for _ in range(rng.integers(0, 6) if kind != "ell" else 0):
        r, t = re_d * rng.uniform(0.4, 1.4), rng.uniform(0, 2 * np.pi)
        u, v = r * np.cos(t), r * np.sin(t) * q
        p = np.radians(pa)
        e, n_ = u * np.sin(p) + v * np.cos(p), u * np.cos(p) - v * np.sin(p)
        out.append(
            Sersic(
                *sky_offset(ra, dec, e, n_),
                0.5,
                rng.uniform(0.3, 0.6),
                1.0,
                0.0,
                band_fluxes(mag_d + rng.uniform(3.5, 5.0), 0.25, 0.1),
            )
        )
    return out


def merger(rng, ra, dec, mag_r):
    """Components of a merging pair; the primary's nucleus is at (ra, dec)."""
    snaps, gal, rad, mass = encounter(rng)
    flux_r = 10 ** (-0.4 * (mag_r - 22.5)) * mass / mass[0]  # light follows mass
    bt = rng.uniform(0.12, 0.35, 2)
    re_disc = 1.678 * 0.3 * np.sqrt(mass)  # disc half-mass radii, units
    scale = _re_from_sb(flux_r[0] * (1 - bt[0]), rng.normal(21.6, 0.3)) / re_disc[0]  # arcsec/unit
    for _ in range(60):  # a snapshot and view with a 5-20" separation
        pos, cen = snaps[rng.integers(len(snaps))]
        rot = rotation(rng)
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
        w = 0.6 + x  # outer disc over-weighted: brighter tails
        # disc colour: redder centre, bluer outskirts (star-forming tails) with blue knots
        g_r, r_i = 0.62 - 0.25 * x + rng.normal(0, 0.03), 0.32 - 0.07 * x
        knot = (rng.random(x.size) < 0.015) & (x > 0.3)
        w[knot] *= 20
        g_r[knot], r_i[knot] = 0.2, 0.08
        fr = flux_r[k] * (1 - bt[k]) * w / w.sum()
        comps.append(Particles(ra, dec, east[sel], north[sel], band_fluxes(22.5 - 2.5 * np.log10(fr), g_r, r_i)))
        ce, cn = (c[k, :2] - c[0, :2]) * scale
        comps.append(
            Sersic(
                *sky_offset(ra, dec, ce, cn),
                4.0,
                max(0.15 * re_disc[k] * scale, 0.4),
                rng.uniform(0.7, 1.0),
                rng.uniform(0, 180),
                band_fluxes(22.5 - 2.5 * np.log10(flux_r[k] * bt[k]), 0.85, 0.43),
            )
        )
    return comps


def star(rng, ra, dec, mag_r):
    g_r = np.clip(rng.choice([rng.normal(0.45, 0.12), rng.normal(1.35, 0.12)], p=[0.6, 0.4]), 0.2, 1.6)
    r_i = 0.12 + 0.35 * (g_r - 0.3) if g_r < 1.2 else 0.43 + 1.5 * (g_r - 1.2)
    return Star(ra, dec, band_fluxes(mag_r, g_r, r_i))
