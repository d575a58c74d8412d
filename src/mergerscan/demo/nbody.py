"""A restricted three-body encounter of two discs (Toomre & Toomre 1972): the tails, bridges and
lopsided discs of the demo's merging pairs come from these dynamics."""

from __future__ import annotations

import numpy as np

EPS = 0.12  # softening of the discs' potentials (disc units)
EPS_NUCLEI = 0.3  # softening between the two nuclei


def rotation(rng):
    """Uniform random 3-D rotation matrix."""
    qv = rng.normal(size=4)
    a, b, c, d = qv / np.linalg.norm(qv)
    return np.array(
        [
            [a * a + b * b - c * c - d * d, 2 * (b * c - a * d), 2 * (b * d + a * c)],
            [2 * (b * c + a * d), a * a - b * b + c * c - d * d, 2 * (c * d - a * b)],
            [2 * (b * d - a * c), 2 * (c * d + a * b), a * a - b * b - c * c + d * d],
        ]
    )


def encounter(rng, n1=4000):
    """Restricted three-body parabolic encounter of two discs (G = 1, primary mass 1).

    Returns snapshots ``(particles (N, 3), nuclei (2, 3))`` taken 0.5 to 4.1 time units after
    the first pericentre, each particle's galaxy (0/1) and initial radius (disc units), masses.
    """
    q = rng.uniform(0.35, 1.0)
    mass = np.array([1.0, q])
    mtot, rp = 1 + q, rng.uniform(0.9, 1.8)
    f0 = np.radians(-120)
    r0, h = 2 * rp / (1 + np.cos(f0)), np.sqrt(2 * mtot * rp)
    rel = r0 * np.array([np.cos(f0), np.sin(f0), 0])
    vrel = mtot / h * np.array([-np.sin(f0), 1 + np.cos(f0), 0])
    cen = np.array([-q / mtot * rel, rel / mtot])
    vcen = np.array([-q / mtot * vrel, vrel / mtot])
    pos, vel, gal, rad = [], [], [], []
    for k, m in enumerate(mass):
        p, v, r = _disc(rng, m, max(int(n1 * m), 1500))
        pos.append(p + cen[k])
        vel.append(v + vcen[k])
        gal.append(np.full(len(r), k))
        rad.append(r)
    gal, rad = np.concatenate(gal), np.concatenate(rad)
    pos, vel = np.concatenate(pos).T.copy(), np.concatenate(vel).T.copy()  # (3, N): fast rows
    return _integrate(pos, vel, cen, vcen, mass), gal, rad, mass


def _disc(rng, m: float, n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A rotating disc of ``n`` test particles around a softened point of mass ``m``, randomly
    oriented: positions, velocities (N, 3) and initial radii in disc units."""
    size = np.sqrt(m)
    r = rng.gamma(2.0, 0.3, n)
    while (bad := r > 2.0).any():
        r[bad] = rng.gamma(2.0, 0.3, bad.sum())
    r = np.maximum(r, 0.02) * size
    phi = rng.uniform(0, 2 * np.pi, n)
    p = np.stack([r * np.cos(phi), r * np.sin(phi), rng.normal(0, 0.03 * size, n)], 1)
    vc = np.sqrt(m * r * r / (r * r + EPS * EPS) ** 1.5) * (1 + rng.normal(0, 0.04, n))
    v = np.stack([-vc * np.sin(phi), vc * np.cos(phi), rng.normal(0, 0.02, n)], 1)
    rot = rotation(rng)
    if rot[2, 2] < 0 and rng.random() < 0.7:  # mostly prograde: prograde discs grow tails
        rot = rot @ np.diag([1.0, -1.0, -1.0])
    return p @ rot.T, v @ rot.T, r / size


def _integrate(pos, vel, cen, vcen, mass) -> list[tuple[np.ndarray, np.ndarray]]:
    """Leapfrog (kick-drift-kick) until 13 snapshots, 0.5 to 4.1 time units after pericentre."""
    q = mass[1]

    def acc(x, c):
        a = np.zeros_like(x)
        for k in range(2):
            d = c[k][:, None] - x
            r2 = d[0] * d[0] + d[1] * d[1] + d[2] * d[2] + EPS * EPS
            a += d * (mass[k] / (r2 * np.sqrt(r2)))
        return a

    def acc_c(c):
        d = c[1] - c[0]
        f = d / (d @ d + EPS_NUCLEI**2) ** 1.5
        return np.array([q * f, -f])

    dt, t_peri, t, snaps = 0.02, None, 0.0, []
    sep_prev = np.inf
    a, ac = acc(pos, cen), acc_c(cen)
    for _ in range(4000):
        vel += 0.5 * dt * a
        vcen += 0.5 * dt * ac
        pos += dt * vel
        cen += dt * vcen
        a, ac = acc(pos, cen), acc_c(cen)
        vel += 0.5 * dt * a
        vcen += 0.5 * dt * ac
        t += dt
        sep = np.linalg.norm(cen[1] - cen[0])
        if t_peri is None and sep > sep_prev:
            t_peri = t
        sep_prev = sep
        if t_peri is not None and t - t_peri >= 0.5 + 0.3 * len(snaps) - 1e-9:
            snaps.append((pos.T.copy(), cen.copy()))
            if len(snaps) == 13:
                break
    return snaps
