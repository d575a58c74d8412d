"""The run report's figures (PNG bytes): scores, per-column fractions, the sample, flags, throughput.

The sky maps are :mod:`.sky`.  Every figure is drawn off-screen (Agg) from :class:`.stream.RunStats`.
"""

from __future__ import annotations

import numpy as np

from ..engines.card import EngineCard
from .page import fig_png, pyplot
from .stream import ColumnBins, RunStats


def wilson(k: np.ndarray, n: np.ndarray, z: float = 1.0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Binomial fraction and its Wilson-score interval (z=1: 68 %); NaN where n == 0.  The
    interval holds the estimate and lies in [0, 1] exactly: at k = 0 (or k = n) rounding put its
    end a hair past the estimate, a negative error bar that matplotlib refuses."""
    k, n = np.asarray(k, float), np.asarray(n, float)
    with np.errstate(invalid="ignore", divide="ignore"):
        f = k / n
        c = (f + z * z / (2 * n)) / (1 + z * z / n)
        h = z * np.sqrt(np.clip(f * (1 - f), 0, None) / n + z * z / (4 * n * n)) / (1 + z * z / n)
        lo = np.clip(np.fmin(c - h, f), 0.0, 1.0)
        hi = np.clip(np.fmax(c + h, f), 0.0, 1.0)
    return f, lo, hi


def error_bars(f: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    """(2, N) non-negative distances from the estimate to the interval's ends (matplotlib's yerr)."""
    return np.clip(np.stack([f - lo, hi - f]), 0.0, None)


def fig_scores(st: RunStats, thr: float) -> bytes:
    plt = pyplot()
    from .stream import SCORE_BINS

    fig, ax = plt.subplots(figsize=(10.5, 3.4))
    for hist, color, edge, label in (
        (st.score_hist, "#8fb3d9", "#4a78a8", f"all scored ({st.scored:,})"),
        (st.score_hist_merger, "#e8a33d", "#a8661a", f"flagged mergers ({int(st.score_hist_merger.sum()):,})"),
    ):
        ax.bar(
            SCORE_BINS[:-1], hist, np.diff(SCORE_BINS), align="edge", color=color, edgecolor=edge, lw=0.3, label=label
        )
    ax.axvline(thr, color="k", ls="--", lw=1)
    ax.text(thr, 1.0, f" threshold {thr:.3f}", transform=ax.get_xaxis_transform(), va="top", fontsize=9)
    if st.score_hist.any():
        ax.set_yscale("log")
        ax.set_ylim(0.7, st.score_hist.max() * 2)
    ax.set(xlim=(0, 1), xlabel="p_merger", ylabel="objects per 0.01 bin")
    ax.legend(loc="upper right", frameon=False)
    return fig_png(fig)


def _col_x(b: ColumnBins, n: int):
    if b.edges is None:
        return np.arange(n), (b.categories or []) + ["other"]
    return 0.5 * (b.edges[1:] + b.edges[:-1]), None


def fig_columns(st: RunStats, global_frac: float) -> bytes | None:
    """Merger fraction (exact, Wilson 68 % bars) and mean p_merger per bin of each carried column."""
    if not st.bins or not st.scored:
        return None
    plt = pyplot()
    nc = min(3, len(st.bins))
    nr = -(-len(st.bins) // nc)
    fig, axs = plt.subplots(nr, nc, figsize=(3.65 * nc, 3.1 * nr), squeeze=False, constrained_layout=True)
    for ax, b in zip(axs.flat, st.bins):
        n, k, ps = st.col_n[b.name], st.col_m[b.name], st.col_p[b.name]
        if b.edges is None and n[-1] == 0:  # no "other" category
            n, k, ps = n[:-1], k[:-1], ps[:-1]
        xc, labels = _col_x(b, len(n))
        labels = labels[: len(n)] if labels else labels
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
        ax.errorbar(
            xc[ok],
            f[ok],
            yerr=error_bars(f, lo, hi)[:, ok],
            xerr=xerr,
            fmt="o",
            ms=4,
            color="#b8420f",
            ecolor="#b8420f",
            elinewidth=1,
            capsize=2,
            label="flagged fraction",
        )
        ax.plot(xc[ok], meanp[ok], "s--", ms=3, lw=1, color="#1f5fa8", label="mean p_merger")
        ax.axhline(global_frac, color="#b8420f", lw=0.7, ls=":")
        ax.set_ylim(0, max(np.nanmax(np.r_[hi[ok], meanp[ok], global_frac]) * 1.15, 0.02))
        ax.set(xlabel=b.name, ylabel="merger fraction")
        if labels is not None:
            ax.set_xticks(xc, labels, rotation=30 if max(map(len, labels)) > 6 else 0)
        miss, under, over = st.col_out[b.name]
        extra = ", ".join(
            s
            for s in (
                f"{under:,} below" if under else "",
                f"{over:,} above" if over else "",
                f"{miss:,} missing" if miss else "",
            )
            if s
        )
        ax.set_title(b.name + (f"  ({extra})" if extra else ""), fontsize=10)
    fig.legend(*axs.flat[0].get_legend_handles_labels(), loc="outside lower center", ncol=2, frameon=False)
    for ax in list(axs.flat)[len(st.bins) :]:
        ax.set_visible(False)
    return fig_png(fig)


def fig_sample(st: RunStats, thr: float) -> bytes | None:
    """p_merger against each numeric column for the reservoir sample."""
    cols = [b for b in st.bins if b.edges is not None]
    if st.sample is None or not cols:
        return None
    plt = pyplot()
    nc = min(3, len(cols))
    nr = -(-len(cols) // nc)
    fig, axs = plt.subplots(nr, nc, figsize=(3.65 * nc, 2.7 * nr), squeeze=False, constrained_layout=True)
    s = st.sample
    m = s["p_merger"].to_numpy() >= thr
    for ax, b in zip(axs.flat, cols):
        assert b.edges is not None  # cols are the numeric ones
        v = s[b.name].to_numpy(np.float64)
        ax.scatter(v[~m], s["p_merger"].to_numpy()[~m], s=3, alpha=0.35, lw=0, color="#4a78a8", rasterized=True)
        ax.scatter(v[m], s["p_merger"].to_numpy()[m], s=5, alpha=0.7, lw=0, color="#e8a33d", rasterized=True)
        ax.axhline(thr, color="k", ls="--", lw=0.8)
        lo, hi = b.edges[0], b.edges[-1]
        pad = 0.03 * (hi - lo)
        ax.set(xlim=(lo - pad, hi + pad), ylim=(-0.02, 1.02), xlabel=b.name, ylabel="p_merger")
    for ax in list(axs.flat)[len(cols) :]:
        ax.set_visible(False)
    return fig_png(fig)


def _status_colour(s: str) -> str:
    return {"ok": "#3f9a52", "edge": "#8cc58f"}.get(
        s, "#d9822b" if s in ("no_image", "outside_footprint", "duplicate_id") else "#c0392b"
    )


def fig_status(status: dict) -> bytes:
    plt = pyplot()
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
    plt = pyplot()
    t0 = min(m["started"] for m in ms)
    wall = max(m["finished"] for m in ms) - t0
    unit, div = ("s", 1) if wall < 180 else ("min", 60) if wall < 3 * 3600 else ("h", 3600)
    t = np.r_[0, [(m["finished"] - t0) / div for m in ms]]
    cum = np.r_[0, np.cumsum([m["rows"] for m in ms])]
    fig, (a1, a2) = plt.subplots(
        1, 2, figsize=(11, 3.4), gridspec_kw={"width_ratios": [1.6, 1]}, constrained_layout=True
    )
    a1.step(t, cum, where="post", color="#1f5fa8", lw=1.5)
    a1.plot(t[1:], cum[1:], ".", color="#1f5fa8", ms=4)
    if wall > 0:
        a1.plot([0, wall / div], [0, cum[-1]], ":", color="k", lw=0.8, label=f"mean {cum[-1] / wall:,.0f} objects/s")
        a1.legend(loc="upper left", frameon=False)
    a1.set(
        xlabel=f"time since the first partition started [{unit}]",
        ylabel="objects written (cumulative)",
        title="partitions finishing over time",
    )
    fetch = sum(m.get("fetch_seconds", 0) for m in ms)
    infer = sum(m.get("infer_seconds", 0) for m in ms)
    total = sum(m.get("seconds", 0) for m in ms)
    bars = [("task total", total, "#9aa5b1"), ("image fetch", fetch, "#e8a33d"), ("inference", infer, "#1f5fa8")]
    a2.barh([b[0] for b in bars][::-1], [b[1] for b in bars][::-1], 0.6, color=[b[2] for b in bars][::-1])
    for i, (_, v, _) in enumerate(bars[::-1]):
        a2.text(v, i, f" {v:,.1f} s" + (f" ({v / total:.0%})" if total and v != total else ""), va="center", fontsize=9)
    a2.set(
        xlim=(0, max(total, fetch, infer, 1e-9) * 1.35),
        xlabel="seconds, summed over partitions",
        title="where the task time went",
    )
    par = total / wall if wall > 0 else float("nan")
    return fig_png(fig), (
        f"{len(ms)} partitions, {cum[-1]:,} rows; wall {wall:,.1f} s between the first start "
        f"and the last finish; task time summed {total:,.1f} s (mean parallelism {par:.1f}). "
        "Image fetching runs in a prefetch thread and overlaps inference, so the two can add up "
        "to more than the task total."
    )


UNCERTAINTY_COLUMNS = ("p_merger", "p_merger_lo", "p_merger_hi")


def fig_uncertainty(out_dir, thr: float, card: EngineCard, views: int) -> bytes | None:
    """The per-row interval (p_merger_lo/hi): the run's scored rows by interval width against
    p_merger, and by class (interval below / across / above the threshold) with each class's
    error rate on the engine's validation split (the card's curve).  None: no such columns."""
    from ..engines.operating import card_curve
    from ..engines.uncertainty import CLASSES, interval_class, validation_errors_by_class
    from .stream import open_dataset

    data = open_dataset(out_dir)
    if not set(UNCERTAINTY_COLUMNS) <= set(data.schema.names):
        return None
    edges = np.linspace(0, 1, 51)
    hist, counts = np.zeros((50, 50), np.int64), np.zeros(len(CLASSES), np.int64)
    for batch in data.to_batches(columns=list(UNCERTAINTY_COLUMNS)):
        p, lo, hi = (
            np.asarray(batch.column(c).to_numpy(zero_copy_only=False), np.float64) for c in UNCERTAINTY_COLUMNS
        )
        ok = np.isfinite(lo) & np.isfinite(hi) & np.isfinite(p)
        hist += np.histogram2d(p[ok], (hi - lo)[ok], [edges, edges])[0].astype(np.int64)
        c = interval_class(lo[ok], hi[ok], thr)
        counts += np.bincount(c, minlength=len(CLASSES))
    if not counts.sum():
        return None
    curve = card_curve(card, views) if card else None
    val = validation_errors_by_class(curve, thr) if curve is not None else None
    plt = pyplot()
    fig, ax = plt.subplots(1, 2, figsize=(10.5, 3.4), gridspec_kw={"width_ratios": [1.4, 1]})
    im = ax[0].pcolormesh(edges, edges, np.ma.masked_equal(hist.T, 0), cmap="viridis", norm="log")
    fig.colorbar(im, ax=ax[0], label="objects", fraction=0.04, pad=0.02)
    ax[0].axvline(thr, color="#e8a33d", lw=1.5)
    ax[0].set(xlabel="p_merger", ylabel="p_merger_hi - p_merger_lo", xlim=(0, 1), ylim=(0, 1))
    labels = ["interval below\nthreshold", "interval across\nthreshold", "interval above\nthreshold"]
    ax[1].bar(labels, counts, color=["#4a78a8", "#b0b0b0", "#e8a33d"])
    for i, n in enumerate(counts):
        e = (
            f"\nvalidation error rate {val[CLASSES[i]][0] / val[CLASSES[i]][1]:.3f}"
            if val and val[CLASSES[i]][1]
            else ""
        )
        ax[1].annotate(f"{n:,}{e}", (i, n), ha="center", va="bottom", fontsize=8)
    ax[1].set(ylabel="scored objects", ylim=(0, counts.max() * 1.35))
    return fig_png(fig)
