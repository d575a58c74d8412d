"""The report of a process-catalog run: ``OUT/report/index.html`` (+ the figures as PNG, report.json).

Statistics come from one streaming pass over ``OUT/parquet`` (:mod:`.stream`); the galleries
re-fetch cutouts for at most ``top_n + borderline_n`` rows through the run's own image source.
"""

from __future__ import annotations

import io
import json
import time
from pathlib import Path

import numpy as np

from .. import __version__
from ..catalogs.schema import SCORED, STATUS
from ..run_layout import RunLayout
from ._page import Raw, data_uri, esc, fig_png, figure, fmt, page, table
from .stream import ColumnBins, RunStats, scan

MIN_PIXEL_COUNT = 5        # sky pixels with fewer scored objects are drawn grey in fraction maps


def _plt():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    plt.rcParams.update({"font.size": 10, "axes.titlesize": 11, "axes.spines.top": False,
                         "axes.spines.right": False})
    return plt


def wilson(k: np.ndarray, n: np.ndarray, z: float = 1.0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Binomial fraction and its Wilson-score interval (z=1: 68 %); NaN where n == 0."""
    k, n = np.asarray(k, float), np.asarray(n, float)
    with np.errstate(invalid="ignore", divide="ignore"):
        f = k / n
        c = (f + z * z / (2 * n)) / (1 + z * z / n)
        h = z * np.sqrt(f * (1 - f) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return f, c - h, c + h


# ------------------------------------------------------------------ figures
def fig_scores(st: RunStats, thr: float) -> bytes:
    plt = _plt()
    from .stream import SCORE_BINS
    fig, ax = plt.subplots(figsize=(10.5, 3.4))
    w = np.diff(SCORE_BINS)
    ax.bar(SCORE_BINS[:-1], st.score_hist, w, align="edge", color="#8fb3d9", edgecolor="#4a78a8", lw=0.3,
           label=f"all scored ({st.scored:,})")
    ax.bar(SCORE_BINS[:-1], st.score_hist_merger, w, align="edge", color="#e8a33d", edgecolor="#a8661a", lw=0.3,
           label=f"flagged mergers ({int(st.score_hist_merger.sum()):,})")
    ax.axvline(thr, color="k", ls="--", lw=1)
    ax.text(thr, 1.0, f" threshold {thr:.3f}", transform=ax.get_xaxis_transform(), va="top", fontsize=9)
    if st.score_hist.any():
        ax.set_yscale("log")
        ax.set_ylim(0.7, st.score_hist.max() * 2)
    ax.set(xlim=(0, 1), xlabel="p_merger", ylabel="objects per 0.01 bin")
    ax.legend(loc="upper right", frameon=False)
    return fig_png(fig)


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
    jump = np.flatnonzero(np.abs(np.diff(x)) > np.pi) + 1      # break the line at the map seam
    return np.insert(x, jump, np.nan), np.insert(y, jump, np.nan)


@np.errstate(invalid="ignore", divide="ignore")      # empty pixels; Mollweide's inverse at the poles
def fig_sky(st: RunStats) -> tuple[bytes | None, str]:
    """Three maps (density, merger fraction, flagged fraction) at an adaptive HEALPix order."""
    if not len(st.sky_pix):
        return None, "no rows with valid coordinates"
    import astropy.units as u
    from astropy_healpix import HEALPix
    from matplotlib import patheffects
    from matplotlib.collections import PolyCollection
    from matplotlib.colors import LogNorm, Normalize
    plt = _plt()

    pix, cnt, order, min_n = _coarsen(st.sky_pix, st.sky_counts, st.sky_order)
    hp = HEALPix(nside=2 ** order, order="nested")
    lon, lat = hp.boundaries_lonlat(pix, step=max(1, 4 - order // 3))
    lon, lat = lon.to_value(u.deg), lat.to_value(u.deg)
    clon, clat = hp.healpix_to_lonlat(pix)
    clon, clat = clon.to_value(u.deg), clat.to_value(u.deg)
    ra0 = float(np.degrees(np.arctan2(np.sin(np.radians(clon)).sum(), np.cos(np.radians(clon)).sum())) % 360)
    x = (lon - ra0 + 180) % 360 - 180
    keep = np.ptp(x, axis=1) < 90                       # drop the few pixels cut by the map seam
    x, lat, cnt, clat = x[keep], lat[keep], cnt[keep], clat[keep]
    pix = pix[keep]
    xs, ys = x.max() - x.min(), lat.max() - lat.min()
    local = xs * np.cos(np.radians(np.clip(np.median(clat), -80, 80))) < 60 and ys < 60
    area = hp.pixel_area.to_value(u.deg ** 2)
    rows, scored, merg = cnt.T
    frac = np.where(scored >= min_n, merg / scored, np.nan)
    flag = np.where(rows > 0, 1 - scored / rows, np.nan)
    fmax = np.nanpercentile(frac, 98) if np.isfinite(frac).any() else 1.0
    dens = scored[scored > 0] / area
    lo, hi = np.percentile(dens, [5, 99.5]) if len(dens) else (1, 1)   # partly covered edge pixels clip
    panels = [("scored objects per deg²", scored / area, "viridis",
               LogNorm(lo, max(hi, lo * 1.01)) if len(dens) else Normalize()),
              (f"merger fraction (pixels with ≥{min_n} scored)", frac, "magma", Normalize(0, max(fmax, 1e-3))),
              ("flagged fraction (not scored)", flag, "Reds", Normalize(0, max(np.nanmax(flag, initial=0), 0.05)))]
    res_deg = hp.pixel_resolution.to_value(u.deg)
    if local:
        fig, axs = plt.subplots(1, 3, figsize=(12.5, 4.2), constrained_layout=True)
        axs = [axs[1], axs[0], axs[2]]
        verts = np.stack([x, lat], -1)
    else:                        # all-sky: the merger fraction large, density and flags below
        fig = plt.figure(figsize=(13, 9.6), constrained_layout=True)
        gs = fig.add_gridspec(2, 2, height_ratios=[1.35, 1])
        axs = [fig.add_subplot(gs[0, :], projection="mollweide"), fig.add_subplot(gs[1, 0], projection="mollweide"),
               fig.add_subplot(gs[1, 1], projection="mollweide")]
        verts = np.stack([-np.radians(x), np.radians(lat)], -1)
        cx = -np.radians((clon[keep] - ra0 + 180) % 360 - 180)
    panels = [panels[1], panels[0], panels[2]]
    for k, (ax, (title, v, cmap, norm)) in enumerate(zip(axs, panels)):
        cm = plt.get_cmap(cmap).with_extremes(bad="#c8ccd1")
        v = np.where(np.isfinite(v) & ((v > 0) | (cmap != "viridis")), v, np.nan)
        width_pt = (12 if k == 0 else 6) * 72
        if local or res_deg * width_pt / 360 >= 4:      # pixels big enough to draw as pixels
            art = PolyCollection(verts, array=np.ma.masked_invalid(v), cmap=cm, norm=norm, edgecolors="face",
                                 linewidths=0.3)
            ax.add_collection(art)
        else:                                           # small pixels: markers of at least 4 pt
            o = np.argsort(np.nan_to_num(v, nan=-np.inf))   # highest values on top
            art = ax.scatter(cx[o], np.radians(clat)[o], c=v[o], cmap=cm, norm=norm,
                             s=max(res_deg * width_pt / 360, 4) ** 2, marker="s", lw=0, plotnonfinite=True)
        fig.colorbar(art, ax=ax, shrink=0.8 if local else 0.6, pad=0.02)
        ax.set_title(title)
        if local:
            pad = 0.05 * max(xs, ys, 1e-3)
            ax.set_xlim(x.max() + pad, x.min() - pad)           # RA increases to the left
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
    return png, (f"HEALPix order {order} (nested; pixels ≈ {size} across), {len(pix):,} occupied pixels; "
                          f"{'RA/Dec plate carrée around RA ' + format(ra0, '.2f') + '°' if local else 'Mollweide, RA increasing to the left, centred on RA ' + format(ra0, '.0f') + '°, dashed: Galactic plane'}. "
                          f"Grey: fewer than {min_n} scored objects in the pixel (fraction too noisy).")


def _col_x(b: ColumnBins, n: int):
    if b.edges is None:
        return np.arange(n), b.categories + ["other"]
    return 0.5 * (b.edges[1:] + b.edges[:-1]), None


def fig_columns(st: RunStats, global_frac: float) -> bytes | None:
    """Merger fraction (exact, Wilson 68 % bars) and mean p_merger per bin of each carried column."""
    if not st.bins or not st.scored:
        return None
    plt = _plt()
    nc = min(3, len(st.bins))
    nr = -(-len(st.bins) // nc)
    fig, axs = plt.subplots(nr, nc, figsize=(3.65 * nc, 3.1 * nr), squeeze=False, constrained_layout=True)
    for ax, b in zip(axs.flat, st.bins):
        n, k, ps = st.col_n[b.name], st.col_m[b.name], st.col_p[b.name]
        if b.edges is None and n[-1] == 0:          # no "other" category
            n, k, ps = n[:-1], k[:-1], ps[:-1]
        xc, labels = _col_x(b, len(n))
        labels = labels[:len(n)] if labels else labels
        f, lo, hi = wilson(k, n)
        with np.errstate(invalid="ignore", divide="ignore"):
            meanp = ps / n
        ok = n > 0
        tw = ax.twinx()
        width = np.diff(b.edges) if b.edges is not None else np.full(len(n), 0.8)
        tw.bar(xc, n, width * (0.92 if b.edges is not None else 1), color="#d5dbe2", zorder=0)
        tw.set_ylabel("scored objects", color="#8a96a3")
        tw.tick_params(axis="y", colors="#8a96a3")
        tw.spines["right"].set_visible(True)
        ax.set_zorder(tw.get_zorder() + 1)
        ax.patch.set_visible(False)
        xerr = None if b.edges is None or b.discrete else np.abs(np.stack([xc - b.edges[:-1], b.edges[1:] - xc]))[:, ok]
        ax.errorbar(xc[ok], f[ok], yerr=np.stack([f - lo, hi - f])[:, ok], xerr=xerr, fmt="o", ms=4,
                    color="#b8420f", ecolor="#b8420f", elinewidth=1, capsize=2, label="flagged fraction")
        ax.plot(xc[ok], meanp[ok], "s--", ms=3, lw=1, color="#1f5fa8", label="mean p_merger")
        ax.axhline(global_frac, color="#b8420f", lw=0.7, ls=":")
        ax.set_ylim(0, max(np.nanmax(np.r_[hi[ok], meanp[ok], global_frac]) * 1.15, 0.02))
        ax.set(xlabel=b.name, ylabel="merger fraction")
        if labels is not None:
            ax.set_xticks(xc, labels, rotation=30 if max(map(len, labels)) > 6 else 0)
        miss, under, over = st.col_out[b.name]
        extra = ", ".join(s for s in (f"{under:,} below" if under else "", f"{over:,} above" if over else "",
                                       f"{miss:,} missing" if miss else "") if s)
        ax.set_title(b.name + (f"  ({extra})" if extra else ""), fontsize=10)
    fig.legend(*axs.flat[0].get_legend_handles_labels(), loc="outside lower center", ncol=2, frameon=False)
    for ax in list(axs.flat)[len(st.bins):]:
        ax.set_visible(False)
    return fig_png(fig)


def fig_sample(st: RunStats, thr: float) -> bytes | None:
    """p_merger against each numeric column for the reservoir sample."""
    cols = [b for b in st.bins if b.edges is not None]
    if st.sample is None or not cols:
        return None
    plt = _plt()
    nc = min(3, len(cols))
    nr = -(-len(cols) // nc)
    fig, axs = plt.subplots(nr, nc, figsize=(3.65 * nc, 2.7 * nr), squeeze=False, constrained_layout=True)
    s = st.sample
    m = s["p_merger"].to_numpy() >= thr
    for ax, b in zip(axs.flat, cols):
        v = s[b.name].to_numpy(np.float64)
        ax.scatter(v[~m], s["p_merger"].to_numpy()[~m], s=3, alpha=0.35, lw=0, color="#4a78a8", rasterized=True)
        ax.scatter(v[m], s["p_merger"].to_numpy()[m], s=5, alpha=0.7, lw=0, color="#e8a33d", rasterized=True)
        ax.axhline(thr, color="k", ls="--", lw=0.8)
        lo, hi = b.edges[0], b.edges[-1]
        pad = 0.03 * (hi - lo)
        ax.set(xlim=(lo - pad, hi + pad), ylim=(-0.02, 1.02), xlabel=b.name, ylabel="p_merger")
    for ax in list(axs.flat)[len(cols):]:
        ax.set_visible(False)
    return fig_png(fig)


def _status_colour(s: str) -> str:
    return {"ok": "#3f9a52", "edge": "#8cc58f"}.get(s, "#d9822b" if s in ("no_image", "outside_footprint",
                                                                           "duplicate_id") else "#c0392b")


def fig_status(status: dict) -> bytes:
    plt = _plt()
    items = sorted(status.items(), key=lambda kv: kv[1])
    fig, ax = plt.subplots(figsize=(6.2, 0.45 * len(items) + 1.0))
    ax.barh([k for k, _ in items], [v for _, v in items], color=[_status_colour(k) for k, _ in items])
    for i, (_, v) in enumerate(items):
        ax.text(v, i, f" {v:,}", va="center", fontsize=9)
    ax.set_xscale("log")
    ax.set_xlim(0.8, max(v for _, v in items) * 4)
    ax.set_xlabel("rows")
    return fig_png(fig)


def fig_throughput(markers: list[dict]) -> tuple[bytes | None, str]:
    ms = sorted((m for m in markers if m.get("finished") and m.get("started")), key=lambda m: m["finished"])
    if not ms:
        return None, ""
    plt = _plt()
    t0 = min(m["started"] for m in ms)
    wall = max(m["finished"] for m in ms) - t0
    unit, div = ("s", 1) if wall < 180 else ("min", 60) if wall < 3 * 3600 else ("h", 3600)
    t = np.r_[0, [(m["finished"] - t0) / div for m in ms]]
    cum = np.r_[0, np.cumsum([m["rows"] for m in ms])]
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(11, 3.4), gridspec_kw={"width_ratios": [1.6, 1]},
                                 constrained_layout=True)
    a1.step(t, cum, where="post", color="#1f5fa8", lw=1.5)
    a1.plot(t[1:], cum[1:], ".", color="#1f5fa8", ms=4)
    if wall > 0:
        a1.plot([0, wall / div], [0, cum[-1]], ":", color="k", lw=0.8, label=f"mean {cum[-1] / wall:,.0f} objects/s")
        a1.legend(loc="upper left", frameon=False)
    a1.set(xlabel=f"time since the first partition started [{unit}]", ylabel="objects written (cumulative)",
           title="partitions finishing over time")
    fetch = sum(m.get("fetch_seconds", 0) for m in ms)
    infer = sum(m.get("infer_seconds", 0) for m in ms)
    total = sum(m.get("seconds", 0) for m in ms)
    bars = [("task total", total, "#9aa5b1"), ("image fetch", fetch, "#e8a33d"), ("inference", infer, "#1f5fa8")]
    a2.barh([b[0] for b in bars][::-1], [b[1] for b in bars][::-1], 0.6, color=[b[2] for b in bars][::-1])
    for i, (_, v, _) in enumerate(bars[::-1]):
        a2.text(v, i, f" {v:,.1f} s" + (f" ({v / total:.0%})" if total and v != total else ""), va="center", fontsize=9)
    a2.set(xlim=(0, max(total, fetch, infer, 1e-9) * 1.35), xlabel="seconds, summed over partitions",
           title="where the task time went")
    par = total / wall if wall > 0 else float("nan")
    return fig_png(fig), (f"{len(ms)} partitions, {cum[-1]:,} rows; wall {wall:,.1f} s between the first start "
                          f"and the last finish; task time summed {total:,.1f} s (mean parallelism {par:.1f}). "
                          "Image fetching runs in a prefetch thread and overlaps inference, so the two can add up "
                          "to more than the task total.")


# ------------------------------------------------------------------ galleries
def _thumb(stamp: np.ndarray | None, spec, size: int = 192, text: str = "") -> bytes:
    from PIL import Image, ImageDraw

    if stamp is None:
        im = Image.new("RGB", (size, size), (40, 44, 52))
        ImageDraw.Draw(im).text((10, size // 2 - 6), text or "no cutout", fill=(220, 220, 220))
    else:
        im = Image.fromarray(stamp).resize((size, size), Image.LANCZOS)
        d = ImageDraw.Draw(im)
        c, g, L = size // 2, size // 12, size // 10        # SkyServer-style ticks pointing at the centre
        d.line([(c - g - L, c), (c - g, c)], fill=(120, 220, 120), width=1)
        d.line([(c, c - g - L), (c, c - g)], fill=(120, 220, 120), width=1)
        bar = 20.0 / spec.pixel_scale * size / spec.stamp_pixels       # 20 arcsec
        d.line([(8, size - 10), (8 + bar, size - 10)], fill=(255, 255, 255), width=2)
        d.text((8, size - 24), '20"', fill=(255, 255, 255))
    buf = io.BytesIO()
    im.save(buf, format="JPEG", quality=88)
    return buf.getvalue()


def fetch_cutouts(summary: dict, rows, spec) -> tuple[list, str]:
    """Stamps (or None) for a few rows through the run's own image source; (stamps, error note)."""
    import pandas as pd

    from ..cutouts.sources import SourceConfig, open_source
    if rows is None or not len(rows):
        return [], ""
    src_info = summary.get("source") or {}
    try:
        cfg = SourceConfig(src_info["kind"], src_info["location"], tuple(sorted((src_info.get("options") or {}).items())))
        q = pd.DataFrame({"id": rows["id"].astype(str).to_numpy(), "ra": rows["ra"].to_numpy(np.float64),
                          "dec": rows["dec"].to_numpy(np.float64)})
        if "path" in [c.lower() for c in rows.columns] and cfg.kind == "stamps":
            q["path"] = rows[next(c for c in rows.columns if c.lower() == "path")].astype(str).to_numpy()
        src = open_source(cfg, spec)
        try:
            stamps, status = src.fetch(q)
        finally:
            src.close()
    except Exception as exc:  # noqa: BLE001 - a report without cutouts beats no report
        return [None] * len(rows), f"cutouts could not be fetched: {type(exc).__name__}: {exc}"
    return [stamps[i] if status[i] in SCORED else None for i in range(len(rows))], ""


def gallery(rows, stamps, spec, thr: float, show: list[str]) -> str:
    if rows is None or not len(rows):
        return '<p class="note">no scored rows</p>'
    cards = []
    for (_, r), st in zip(rows.iterrows(), stamps):
        img = data_uri(_thumb(st, spec, text=r["status"] if st is None else ""), "image/jpeg")
        ra, dec = float(r["ra"]), float(r["dec"])
        link = f"https://www.legacysurvey.org/viewer?ra={ra:.6f}&dec={dec:.6f}&layer=ls-dr10&zoom=15"
        vals = " · ".join(f"{esc(c)} {fmt(r[c].item() if hasattr(r[c], 'item') else r[c])}" for c in show
                          if c in r and r[c] == r[c])
        cards.append(f'<div class="stamp{" merger" if r["p_merger"] >= thr else ""}">'
                     f'<img src="{img}" alt="cutout of {esc(str(r["id"]))}" loading="eager">'
                     f'<div class="p">p = {r["p_merger"]:.4f}</div><div class="id">{esc(str(r["id"]))}</div>'
                     f'<div>{ra:.5f} {dec:+.5f}{"" if r["status"] == "ok" else " · " + esc(str(r["status"]))}</div>'
                     + (f"<div>{vals}</div>" if vals else "")
                     + f'<div><a href="{esc(link)}">Legacy Surveys viewer</a></div></div>')
    return '<div class="gallery">' + "".join(cards) + "</div>"


# ------------------------------------------------------------------ provenance
def engine_card(summary: dict) -> tuple[dict, str]:
    """The model card from the engine file (or, if it moved, from a partition's metadata)."""
    from ..engines import read_engine_info
    note = ""
    path = summary.get("engine_path")
    try:
        info = read_engine_info(path)
        if summary.get("engine_sha256") and info.sha256 != summary["engine_sha256"]:
            note = f"the engine file at {path} has changed since the run (sha256 differs); its card is shown"
        return info.card, note
    except Exception as exc:  # noqa: BLE001
        return {}, f"engine file {path} unreadable ({type(exc).__name__}); model card from the Parquet metadata"


def _card_from_parquet(out: Path) -> dict:
    import pyarrow.parquet as pq

    from .stream import partition_files
    files = partition_files(out)
    if not files:
        return {}
    md = pq.read_schema(files[0]).metadata or {}
    try:
        card = json.loads(md.get(b"mergerscan.model_card", b"{}"))
        return json.loads(card) if isinstance(card, str) else card
    except (ValueError, TypeError):
        return {}


def _read_markers(out: Path) -> list[dict]:
    ms = []
    for f in sorted(RunLayout(out).work.scored_dir.glob("part-*.json")):
        try:
            ms.append(json.loads(f.read_text()))
        except ValueError:
            pass
    return ms


# ------------------------------------------------------------------ the page
def build_report(out_dir, top_n: int = 24, borderline_n: int = 12, sample_rows: int = 200_000,
                 max_memory_rows: int = 262_144, source_location: str | None = None) -> Path:
    """Write ``OUT/report/index.html`` for a process-catalog run directory and return its path.

    ``max_memory_rows``: rows read per streamed batch (memory bound); ``sample_rows``: size of
    the reservoir sample behind the scatter plots.  Everything else is exact.
    """
    from ..cutouts.sources import redact_text
    t_start = time.time()
    out = Path(out_dir)
    summary = json.loads(RunLayout(out).summary.read_text())
    thr = float(summary["threshold"])
    id_col = summary.get("id_column", "objid")
    st, npre = scan(out, thr, id_col, top_n, borderline_n, sample_rows, max_memory_rows)
    rep = RunLayout(out).report_dir
    rep.mkdir(exist_ok=True)
    figs: dict[str, bytes] = {}

    def keep(name, png):
        if png is not None:
            figs[name] = png
            (rep / f"{name}.png").write_bytes(png)
        return png

    card, card_note = engine_card(summary)
    if not card:
        card = _card_from_parquet(out)
    from ..engines import default_engine_path, read_engine_info
    try:
        spec = read_engine_info(summary.get("engine_path") or default_engine_path()).spec
    except Exception:  # noqa: BLE001 - the gallery then uses the default engine's stamp geometry
        spec = read_engine_info(default_engine_path()).spec

    merg = int(st.score_hist_merger.sum())
    gfrac = merg / st.scored if st.scored else 0.0
    markers = _read_markers(out)
    sky_png, sky_cap = fig_sky(st)
    thr_png, thr_cap = fig_throughput(markers)
    keep("scores", fig_scores(st, thr))
    keep("sky", sky_png)
    keep("columns", fig_columns(st, gfrac))
    keep("sample", fig_sample(st, thr))
    keep("status", fig_status(st.status) if st.status else None)
    keep("throughput", thr_png)
    show = [b.name for b in st.bins][:4]
    # the run passes its real location (summary.json holds it with credentials redacted)
    fetch_from = summary if source_location is None else \
        dict(summary, source=dict(summary.get("source") or {}, location=source_location))
    top_st, top_err = fetch_cutouts(fetch_from, st.top, spec)
    bor_st, bor_err = fetch_cutouts(fetch_from, st.border, spec)

    warn = []
    if st.rows != summary.get("rows"):
        warn.append(f"the Parquet dataset holds {st.rows:,} rows but summary.json says {fmt(summary.get('rows'))} "
                    "(an unfinished or edited run?)")
    warn += [redact_text(w) for w in (card_note, top_err or bor_err) if w]
    warn_html = "".join(f'<div class="warn">{esc(w)}</div>' for w in warn)

    S = []
    S.append(f'<section id="scores"><h2>Score distribution</h2>{figure(figs["scores"], "histogram of p_merger")}'
             f'<p class="note">{st.scored:,} scored objects; {merg:,} ({gfrac:.2%}) at or above the engine threshold '
             f"{thr:.3f}. p_merger is temperature-calibrated on the engine's validation split, so the mean "
             f"p_merger of a population estimates its merger fraction (given the training labels' definition).</p></section>")
    S.append('<section id="sky"><h2>On the sky</h2>' + (figure(sky_png, "sky maps", esc(sky_cap)) if sky_png else
             '<p class="note">no valid coordinates</p>') + "</section>")
    if "columns" in figs:
        S.append('<section id="columns"><h2>Merger fraction against catalog columns</h2>'
                 + figure(figs["columns"], "merger fraction per bin",
                          "Red points: fraction of scored objects flagged as mergers per bin, with 68 % Wilson "
                          "binomial intervals (horizontal bars: bin extent); blue squares: mean p_merger; grey bars "
                          "(right axis): scored objects per bin; dotted line: overall flagged fraction.")
                 + (figure(figs["sample"], "p_merger against columns, sample",
                           f"p_merger against each numeric column for a uniform random sample (reservoir) of "
                           f"{len(st.sample):,} of the {st.scored:,} scored objects; orange: above the threshold.")
                    if "sample" in figs else "") + "</section>")
    status_rows = [[k, STATUS.get(k, "?"), f"{v:,}", f"{v / st.rows:.2%}"] for k, v in
                   sorted(st.status.items(), key=lambda kv: -kv[1])]
    S.append('<section id="flags"><h2>Flags</h2><div class="two"><div>'
             + table(["status", "meaning", "rows", "share"], status_rows, num={2, 3})
             + "</div><div>" + (figure(figs["status"], "status counts") if "status" in figs else "")
             + "</div></div></section>")
    geom = f'{spec.stamp_pixels * spec.pixel_scale:.0f}″ × {spec.stamp_pixels * spec.pixel_scale:.0f}″'
    S.append(f'<section id="top"><h2>Top {len(st.top) if st.top is not None else 0} mergers</h2>'
             f'<p class="note">Highest p_merger over the whole run (exact). Cutouts re-fetched from the run\'s image '
             f'source ({esc(summary.get("source", {}).get("kind", "?"))}) exactly as the engine saw them: {geom}, '
             f'north up, east left, gri composite; bar 20″; orange frame: flagged merger.</p>'
             + gallery(st.top, top_st, spec, thr, show) + "</section>")
    S.append(f'<section id="borderline"><h2>Borderline cases</h2><p class="note">The {len(st.border) if st.border is not None else 0} '
             f"scored objects with p_merger closest to the threshold {thr:.3f}, sorted by p_merger: where visual "
             f"inspection changes the sample most.</p>" + gallery(st.border, bor_st, spec, thr, show) + "</section>")
    if thr_png:
        S.append(f'<section id="throughput"><h2>Throughput</h2>{figure(thr_png, "throughput", esc(thr_cap))}</section>')
    metrics = card.get("metrics_test") or {}
    prov = [["engine", summary.get("engine", card.get("name", "?"))],
            ["engine sha256", Raw(f'<span class="mono">{esc(str(summary.get("engine_sha256")))}</span>')],
            ["engine file", Raw(f'<span class="mono">{esc(str(summary.get("engine_path")))}</span>')],
            ["threshold", f"{thr:.4f}"],
            ["training", ", ".join(f"{k} {card[k]}" for k in ("arch", "experiment", "input_size", "n_train", "labels")
                                   if k in card)],
            ["image source", f'{summary.get("source", {}).get("kind")}: {summary.get("source", {}).get("location")}'],
            ["catalog", summary.get("catalog", "?")],
            ["command", Raw(f'<code>{esc(str(summary.get("command") or "?"))}</code>')],
            ["run", f'{summary.get("rows", 0):,} rows, {summary.get("partitions")} partitions, '
                    f'{summary.get("seconds")} s, {summary.get("objects_per_s")} objects/s'],
            ["mergerscan", f'{summary.get("mergerscan_version")} (run), {__version__} (report)']]
    mrows = [[k, fmt(v, 4) if isinstance(v, float) else fmt(v)] for k, v in sorted(metrics.items())]
    S.append('<section id="provenance"><h2>Provenance</h2><div class="two"><div>' + table(None, prov)
             + "</div><div><h3>Engine test-split metrics (model card)</h3>"
             + (table(["metric", "value"], mrows, num={1}) if mrows else '<p class="note">none in the card</p>')
             + '<p class="note">precision_at_2pct: precision expected at a 2 % survey merger prevalence.</p>'
             + "</div></div></section>")
    S.append(f'<section id="method"><h2>How this page was made</h2><p class="note">One streaming pass over '
             f"{len(list((out / 'parquet').rglob('*.parquet'))):,} Parquet files in batches of at most "
             f"{max_memory_rows:,} rows. Exact (every row counted): the score histogram, flag counts, sky maps "
             f"(accumulated at HEALPix order {st.sky_order}), the binned merger fractions, the top-N and borderline "
             f"selections. Sampled: the per-column bin edges (1–99 % quantiles of {npre:,} rows from randomly chosen "
             f"row groups; values outside are counted as below/above) and the scatter plots (uniform reservoir sample "
             f"of {0 if st.sample is None else len(st.sample):,} scored rows, seed 0). Built in "
             f"{time.time() - t_start:.1f} s on {time.strftime('%Y-%m-%d %H:%M %Z')}.</p></section>")

    cards = [("rows", f"{st.rows:,}"), ("scored", f"{st.scored:,} ({st.scored / max(st.rows, 1):.1%})"),
             ("flagged mergers", f"{merg:,} ({gfrac:.2%})"), ("threshold", f"{thr:.3f}"),
             ("objects / s", f'{summary.get("objects_per_s") or 0:,.0f}'), ("engine", str(summary.get("engine", "?")))]
    nav = [("scores", "Scores"), ("sky", "Sky"), ("columns", "Columns"), ("flags", "Flags"), ("top", "Top mergers"),
           ("borderline", "Borderline"), ("throughput", "Throughput"), ("provenance", "Provenance"),
           ("method", "Method")]
    nav = [n for n in nav if f'id="{n[0]}"' in "".join(S)]
    html_text = page(f"mergerscan run report — {Path(str(summary.get('catalog', out))).name}",
                     esc(str(out.resolve())), cards, nav, warn_html + "\n".join(S))
    index = RunLayout(out).report_index
    index.write_text(html_text, encoding="utf-8")
    _write_json(rep / "report.json", st, merg, thr, npre, sky_cap,
                {"fetched": sum(x is not None for x in top_st + bor_st), "shown": len(top_st) + len(bor_st)})
    return index


def _write_json(path: Path, st: RunStats, merg: int, thr: float, npre: int, sky_cap: str, cutouts: dict):
    def rows(df):
        return [] if df is None else json.loads(df.to_json(orient="records"))
    doc = {"rows": st.rows, "scored": st.scored, "mergers": merg, "threshold": thr, "status": st.status,
           "score_bins": np.linspace(0, 1, len(st.score_hist) + 1).tolist(), "score_hist": st.score_hist.tolist(),
           "sky": {"order": st.sky_order, "pixels": len(st.sky_pix), "caption": sky_cap},
           "columns": {b.name: {"edges": None if b.edges is None else b.edges.tolist(), "categories": b.categories,
                                "n": st.col_n[b.name].tolist(), "mergers": st.col_m[b.name].tolist(),
                                "outside": st.col_out[b.name].tolist()} for b in st.bins},
           "presample_rows": npre, "sample_rows": 0 if st.sample is None else len(st.sample),
           "top": rows(st.top), "borderline": rows(st.border), "cutouts": cutouts}
    path.write_text(json.dumps(doc, indent=1, default=str))
