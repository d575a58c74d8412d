"""The run report's sky maps: density, merger fraction and flagged fraction at an adaptive HEALPix order."""

from __future__ import annotations

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


@np.errstate(invalid="ignore", divide="ignore")  # empty pixels; Mollweide's inverse at the poles
def fig_sky(st: RunStats) -> tuple[bytes | None, str]:
    """Three maps (density, merger fraction, flagged fraction) at an adaptive HEALPix order."""
    if not len(st.sky_pix):
        return None, "no rows with valid coordinates"
    import astropy.units as u
    from astropy_healpix import HEALPix
    from matplotlib import patheffects
    from matplotlib.collections import PolyCollection
    from matplotlib.colors import LogNorm, Normalize

    plt = pyplot()

    pix, cnt, order, min_n = _coarsen(st.sky_pix, st.sky_counts, st.sky_order)
    hp = HEALPix(nside=2**order, order="nested")
    lon, lat = hp.boundaries_lonlat(pix, step=max(1, 4 - order // 3))
    lon, lat = lon.to_value(u.deg), lat.to_value(u.deg)
    clon, clat = hp.healpix_to_lonlat(pix)
    clon, clat = clon.to_value(u.deg), clat.to_value(u.deg)
    ra0 = float(np.degrees(np.arctan2(np.sin(np.radians(clon)).sum(), np.cos(np.radians(clon)).sum())) % 360)
    x = (lon - ra0 + 180) % 360 - 180
    keep = np.ptp(x, axis=1) < 90  # drop the few pixels cut by the map seam
    x, lat, cnt, clat = x[keep], lat[keep], cnt[keep], clat[keep]
    pix = pix[keep]
    xs, ys = x.max() - x.min(), lat.max() - lat.min()
    local = xs * np.cos(np.radians(np.clip(np.median(clat), -80, 80))) < 60 and ys < 60
    area = hp.pixel_area.to_value(u.deg**2)
    rows, scored, merg = cnt.T
    frac = np.where(scored >= min_n, merg / scored, np.nan)
    flag = np.where(rows > 0, 1 - scored / rows, np.nan)
    fmax = np.nanpercentile(frac, 98) if np.isfinite(frac).any() else 1.0
    dens = scored[scored > 0] / area
    lo, hi = np.percentile(dens, [5, 99.5]) if len(dens) else (1, 1)  # partly covered edge pixels clip
    panels = [
        (
            "scored objects per deg²",
            scored / area,
            "viridis",
            LogNorm(lo, max(hi, lo * 1.01)) if len(dens) else Normalize(),
        ),
        (f"merger fraction (pixels with ≥{min_n} scored)", frac, "magma", Normalize(0, max(fmax, 1e-3))),
        ("flagged fraction (not scored)", flag, "Reds", Normalize(0, max(np.nanmax(flag, initial=0), 0.05))),
    ]
    res_deg = hp.pixel_resolution.to_value(u.deg)
    if local:
        fig, axs = plt.subplots(1, 3, figsize=(12.5, 4.2), constrained_layout=True)
        axs = [axs[1], axs[0], axs[2]]
        verts = np.stack([x, lat], -1)
    else:  # all-sky: the merger fraction large, density and flags below
        fig = plt.figure(figsize=(13, 9.6), constrained_layout=True)
        gs = fig.add_gridspec(2, 2, height_ratios=[1.35, 1])
        axs = [
            fig.add_subplot(gs[0, :], projection="mollweide"),
            fig.add_subplot(gs[1, 0], projection="mollweide"),
            fig.add_subplot(gs[1, 1], projection="mollweide"),
        ]
        verts = np.stack([-np.radians(x), np.radians(lat)], -1)
        cx = -np.radians((clon[keep] - ra0 + 180) % 360 - 180)
    panels = [panels[1], panels[0], panels[2]]
    for k, (ax, (title, v, cmap, norm)) in enumerate(zip(axs, panels)):
        cm = plt.get_cmap(cmap).with_extremes(bad="#c8ccd1")
        v = np.where(np.isfinite(v) & ((v > 0) | (cmap != "viridis")), v, np.nan)
        width_pt = (12 if k == 0 else 6) * 72
        if local or res_deg * width_pt / 360 >= 4:  # pixels big enough to draw as pixels
            art = PolyCollection(
                verts, array=np.ma.masked_invalid(v), cmap=cm, norm=norm, edgecolors="face", linewidths=0.3
            )
            ax.add_collection(art)
        else:  # small pixels: markers of at least 4 pt
            o = np.argsort(np.nan_to_num(v, nan=-np.inf))  # highest values on top
            art = ax.scatter(
                cx[o],
                np.radians(clat)[o],
                c=v[o],
                cmap=cm,
                norm=norm,
                s=max(res_deg * width_pt / 360, 4) ** 2,
                marker="s",
                lw=0,
                plotnonfinite=True,
            )
        fig.colorbar(art, ax=ax, shrink=0.8 if local else 0.6, pad=0.02)
        ax.set_title(title)
        if local:
            pad = 0.05 * max(xs, ys, 1e-3)
            ax.set_xlim(x.max() + pad, x.min() - pad)  # RA increases to the left
            ax.set_ylim(lat.min() - pad, lat.max() + pad)
            ax.set_aspect(1 / np.cos(np.radians(np.clip(np.median(clat), -85, 85))))
            ax.xaxis.set_major_formatter(lambda t, _: f"{(t + ra0) % 360:.4g}°")
            ax.set(xlabel="RA", ylabel="Dec [deg]", facecolor="#f0f1f3")
        else:
            ticks = np.arange(-150, 151, 30 if k == 0 else 60)
            ax.set_xticks(np.radians(ticks), [f"{(ra0 - t) % 360:.0f}°" for t in ticks], fontsize=8 if k else 9)
            for lab in ax.get_xticklabels():
                lab.set_path_effects([patheffects.withStroke(linewidth=2.5, foreground="white")])
            ax.tick_params(axis="y", labelsize=8)
            ax.grid(True, lw=0.4, alpha=0.6)
            gx, gy = _galactic_plane(ra0)
            ax.plot(gx, gy, color="#5b6670", lw=0.8, ls="--", label="Galactic plane")
    png = fig_png(fig)
    res = hp.pixel_resolution.to(u.arcmin).value
    size = f"{res:.1f}′" if res < 60 else f"{res / 60:.2f}°"
    return png, (
        f"HEALPix order {order} (nested; pixels ≈ {size} across), {len(pix):,} occupied pixels; "
        f"{'RA/Dec plate carrée around RA ' + format(ra0, '.2f') + '°' if local else 'Mollweide, RA increasing to the left, centred on RA ' + format(ra0, '.0f') + '°, dashed: Galactic plane'}. "
        f"Grey: fewer than {min_n} scored objects in the pixel (fraction too noisy)."
    )
