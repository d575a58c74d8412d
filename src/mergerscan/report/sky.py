"""The run report's sky maps: density, merger fraction and flagged fraction at an adaptive HEALPix order."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from .page import fig_png, pyplot
from .stream import RunStats

MIN_PIXEL_COUNT = 5  # sky pixels with fewer scored objects are drawn grey in fraction maps


def _coarsen(pix: np.ndarray, cnt: np.ndarray, order: int) -> tuple[np.ndarray, np.ndarray, int, int]:
    """Coarsen the sky counts until pixels hold enough objects (and the map stays drawable):
    a median of >= 20 scored objects and of ~5 expected mergers per occupied pixel (capped at 500)."""
    f = cnt[:, 2].sum() / max(cnt[:, 1].sum(), 1)
    need = max(20.0, min(5 / f, 500.0)) if f > 0 else 20.0
    while order > 0 and len(pix):
        occ = cnt[:, 1][cnt[:, 1] > 0]
        enough = len(occ) and np.median(occ) >= need
        u, inv = np.unique(pix >> 2, return_inverse=True)
        if len(pix) <= 50_000 and (enough or len(u) < 12):
            break
        pix, order = u, order - 1
        cnt = np.stack([np.bincount(inv, cnt[:, k], minlength=len(u)) for k in range(3)], 1).astype(np.int64)
    return pix, cnt, order, int(max(MIN_PIXEL_COUNT, need / 4))


def _galactic_plane(ra0: float) -> tuple[np.ndarray, np.ndarray]:
    from astropy.coordinates import SkyCoord

    c = SkyCoord(l=np.linspace(0, 360, 721), b=np.zeros(721), unit="deg", frame="galactic").icrs
    x = -np.radians((c.ra.deg - ra0 + 180) % 360 - 180)
    y = np.radians(c.dec.deg)
    jump = np.flatnonzero(np.abs(np.diff(x)) > np.pi) + 1  # break the line at the map seam
    return np.insert(x, jump, np.nan), np.insert(y, jump, np.nan)


@dataclass
class _SkyGrid:
    """The occupied HEALPix pixels, coarsened (:func:`_coarsen`) and cut at the map seam."""

    hp: Any  # astropy_healpix.HEALPix at ``order``
    order: int
    min_n: int  # fewer scored objects: the pixel is grey in the fraction maps
    pix: np.ndarray
    cnt: np.ndarray  # (rows, scored, mergers) per pixel
    x: np.ndarray  # pixel corners: RA - ra0 wrapped to [-180, 180) [deg]
    lat: np.ndarray  # pixel corners: Dec [deg]
    clon: np.ndarray  # pixel centres [deg]
    clat: np.ndarray
    ra0: float  # the map's central RA (circular mean of the pixel centres)
    local: bool  # a patch under 60 deg across: plate carree, else all-sky Mollweide

    @property
    def xs(self) -> float:
        return self.x.max() - self.x.min()

    @property
    def ys(self) -> float:
        return self.lat.max() - self.lat.min()


@np.errstate(invalid="ignore", divide="ignore")  # empty pixels; Mollweide's inverse at the poles
def fig_sky(st: RunStats) -> tuple[bytes | None, str]:
    """Three maps (density, merger fraction, flagged fraction) at an adaptive HEALPix order."""
    if not len(st.sky_pix):
        return None, "no rows with valid coordinates"
    plt = pyplot()
    g = _sky_grid(st)
    fig, axs, verts = _axes(plt, g)
    for k, (ax, panel) in enumerate(zip(axs, _panels(g))):
        _draw_panel(plt, fig, ax, k, panel, g, verts)
    return fig_png(fig), _caption(g)


def _sky_grid(st: RunStats) -> _SkyGrid:
    import astropy.units as u
    from astropy_healpix import HEALPix

    pix, cnt, order, min_n = _coarsen(st.sky_pix, st.sky_counts, st.sky_order)
    hp = HEALPix(nside=2**order, order="nested")
    lon, lat = hp.boundaries_lonlat(pix, step=max(1, 4 - order // 3))
    lon, lat = lon.to_value(u.deg), lat.to_value(u.deg)
    clon, clat = hp.healpix_to_lonlat(pix)
    clon, clat = clon.to_value(u.deg), clat.to_value(u.deg)
    ra0 = float(np.degrees(np.arctan2(np.sin(np.radians(clon)).sum(), np.cos(np.radians(clon)).sum())) % 360)
    x = (lon - ra0 + 180) % 360 - 180
    keep = np.ptp(x, axis=1) < 90  # drop the few pixels cut by the map seam
    x, lat, cnt, clat, clon, pix = x[keep], lat[keep], cnt[keep], clat[keep], clon[keep], pix[keep]
    xs, ys = x.max() - x.min(), lat.max() - lat.min()
    local = bool(xs * np.cos(np.radians(np.clip(np.median(clat), -80, 80))) < 60 and ys < 60)
    return _SkyGrid(hp, order, min_n, pix, cnt, x, lat, clon, clat, ra0, local)


def _panels(g: _SkyGrid) -> list[tuple[str, np.ndarray, str, Any]]:
    """(title, value per pixel, colour map, norm): the merger fraction first (the large panel of
    the all-sky layout, the middle one of a patch), then density and flagged fraction."""
    import astropy.units as u
    from matplotlib.colors import LogNorm, Normalize

    area = g.hp.pixel_area.to_value(u.deg**2)
    rows, scored, merg = g.cnt.T
    frac = np.where(scored >= g.min_n, merg / scored, np.nan)
    flag = np.where(rows > 0, 1 - scored / rows, np.nan)
    fmax = np.nanpercentile(frac, 98) if np.isfinite(frac).any() else 1.0
    dens = scored[scored > 0] / area
    lo, hi = np.percentile(dens, [5, 99.5]) if len(dens) else (1, 1)  # partly covered edge pixels clip
    density_norm = LogNorm(lo, max(hi, lo * 1.01)) if len(dens) else Normalize()
    return [
        (f"merger fraction (pixels with ≥{g.min_n} scored)", frac, "magma", Normalize(0, max(fmax, 1e-3))),
        ("scored objects per deg²", scored / area, "viridis", density_norm),
        ("flagged fraction (not scored)", flag, "Reds", Normalize(0, max(np.nanmax(flag, initial=0), 0.05))),
    ]


def _axes(plt, g: _SkyGrid) -> tuple[Any, list, np.ndarray]:
    """The figure, its three axes in the order of :func:`_panels`, and the pixels' vertices in
    the axes' coordinates."""
    if g.local:
        fig, axs = plt.subplots(1, 3, figsize=(12.5, 4.2), constrained_layout=True)
        return fig, [axs[1], axs[0], axs[2]], np.stack([g.x, g.lat], -1)
    # all-sky: the merger fraction large, density and flags below
    fig = plt.figure(figsize=(13, 9.6), constrained_layout=True)
    gs = fig.add_gridspec(2, 2, height_ratios=[1.35, 1])
    axs = [
        fig.add_subplot(gs[0, :], projection="mollweide"),
        fig.add_subplot(gs[1, 0], projection="mollweide"),
        fig.add_subplot(gs[1, 1], projection="mollweide"),
    ]
    return fig, axs, np.stack([-np.radians(g.x), np.radians(g.lat)], -1)


def _draw_panel(plt, fig, ax, k: int, panel: tuple, g: _SkyGrid, verts: np.ndarray) -> None:
    import astropy.units as u
    from matplotlib.collections import PolyCollection

    title, v, cmap, norm = panel
    cm = plt.get_cmap(cmap).with_extremes(bad="#c8ccd1")
    v = np.where(np.isfinite(v) & ((v > 0) | (cmap != "viridis")), v, np.nan)
    width_pt = (12 if k == 0 else 6) * 72
    res_deg = g.hp.pixel_resolution.to_value(u.deg)
    if g.local or res_deg * width_pt / 360 >= 4:  # pixels big enough to draw as pixels
        art = PolyCollection(
            verts,  # type: ignore[arg-type]  # (N, V, 2): N polygons
            array=np.ma.masked_invalid(v),
            cmap=cm,
            norm=norm,
            edgecolors="face",
            linewidths=0.3,
        )
        ax.add_collection(art)
    else:  # small pixels: markers of at least 4 pt
        o = np.argsort(np.nan_to_num(v, nan=-np.inf))  # highest values on top
        cx = -np.radians((g.clon - g.ra0 + 180) % 360 - 180)
        art = ax.scatter(
            cx[o],
            np.radians(g.clat)[o],
            c=v[o],
            cmap=cm,
            norm=norm,
            s=max(res_deg * width_pt / 360, 4) ** 2,
            marker="s",
            lw=0,
            plotnonfinite=True,
        )
    fig.colorbar(art, ax=ax, shrink=0.8 if g.local else 0.6, pad=0.02)
    ax.set_title(title)
    if g.local:
        _frame_patch(ax, g)
    else:
        _frame_all_sky(ax, k, g.ra0)


def _frame_patch(ax, g: _SkyGrid) -> None:
    pad = 0.05 * max(g.xs, g.ys, 1e-3)
    ax.set_xlim(g.x.max() + pad, g.x.min() - pad)  # RA increases to the left
    ax.set_ylim(g.lat.min() - pad, g.lat.max() + pad)
    ax.set_aspect(1 / np.cos(np.radians(np.clip(np.median(g.clat), -85, 85))))
    ax.xaxis.set_major_formatter(lambda t, _: f"{(t + g.ra0) % 360:.4g}°")
    ax.set(xlabel="RA", ylabel="Dec [deg]", facecolor="#f0f1f3")


def _frame_all_sky(ax, k: int, ra0: float) -> None:
    from matplotlib import patheffects

    ticks = np.arange(-150, 151, 30 if k == 0 else 60)
    ax.set_xticks(np.radians(ticks), [f"{(ra0 - t) % 360:.0f}°" for t in ticks], fontsize=8 if k else 9)
    for lab in ax.get_xticklabels():
        lab.set_path_effects([patheffects.withStroke(linewidth=2.5, foreground="white")])
    ax.tick_params(axis="y", labelsize=8)
    ax.grid(True, lw=0.4, alpha=0.6)
    gx, gy = _galactic_plane(ra0)
    ax.plot(gx, gy, color="#5b6670", lw=0.8, ls="--", label="Galactic plane")


def _caption(g: _SkyGrid) -> str:
    import astropy.units as u

    res = g.hp.pixel_resolution.to(u.arcmin).value
    size = f"{res:.1f}′" if res < 60 else f"{res / 60:.2f}°"
    projection = (
        f"RA/Dec plate carrée around RA {g.ra0:.2f}°"
        if g.local
        else f"Mollweide, RA increasing to the left, centred on RA {g.ra0:.0f}°, dashed: Galactic plane"
    )
    return (
        f"HEALPix order {g.order} (nested; pixels ≈ {size} across), {len(g.pix):,} occupied pixels; "
        f"{projection}. Grey: fewer than {g.min_n} scored objects in the pixel (fraction too noisy)."
    )
