"""Fit the frame-source colour stretch so frame cutouts look like SkyServer JPEGs.

Cuts M2843 (Darg+2010 merger) from SDSS field 3918-3-213 with :class:`FrameSource` and fits the
Lupton parameters (``scales`` for i and g with r fixed at 1 -- an overall scale is degenerate with
``stretch`` --, ``Q``, ``stretch``, ``minimum``) to ``images/M2843.jpg``:

* orientation: correlation of the cutout with the 8 flips/rotations of the JPEG (identity must win:
  north up, east left);
* alignment: sub-pixel offset by phase correlation; the fit uses a cutout re-centred by it;
* objective: pixel residuals after a 1-px Gaussian smoothing (the JPEG's noise is smoothed by its
  compression; raw-pixel noise is uncorrelated between the two) + 10 x per-channel mean residuals
  (the model sees means), minimised with scipy least_squares from several starts;
* held-out: every catalog object (and Darg companion) inside the 6 fields is compared, not
  fitted; and a 2-fold checkerboard (32-px blocks) cross-validation of the fit itself.

    .venv/bin/python benchmarks/calibrate_stretch.py [--shared ../shared/data]
Writes benchmarks/results/calibrate_stretch.json and m2843_compare.png; prints the
STRETCH_DEFAULT to paste into src/mergerscan/cutouts/preprocess.py.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import time
from pathlib import Path

import numpy as np
import pandas as pd
from astropy.visualization import ManualInterval
from astropy.visualization.lupton_rgb import LuptonAsinhStretch, RGBImageMappingLupton
from PIL import Image
from scipy.ndimage import gaussian_filter
from scipy.optimize import least_squares

from mergerscan.cutouts.frames import FrameSource
from mergerscan.cutouts.preprocess import STRETCH_DEFAULT, PreprocessSpec

HERE = Path(__file__).resolve().parent
OBJ = dict(id="M2843", ra=229.52556, dec=42.745853, field="3918-3-213")
DIHEDRAL = {"identity": lambda a: a, "flip_ud": np.flipud, "flip_lr": np.fliplr,
            "rot180": lambda a: np.rot90(a, 2), "rot90": np.rot90, "rot270": lambda a: np.rot90(a, 3),
            "transpose": lambda a: np.swapaxes(a, 0, 1), "anti_transpose": lambda a: np.swapaxes(np.rot90(a, 2), 0, 1)}
MEAN_WEIGHT = 10.0
SMOOTH = 1.0


def render(bands, p):
    """Float Lupton composite (0..255, (S, S, 3)) = make_lupton_rgb before uint8 truncation."""
    si, sg, q, st, m = p
    mp = RGBImageMappingLupton(interval=ManualInterval(vmin=m), stretch=LuptonAsinhStretch(stretch=st, Q=q))
    with np.errstate(divide="ignore", invalid="ignore"):     # astropy's own 0/0, masked by its where
        return np.moveaxis(mp.apply_mappings(bands[0] * si, bands[1], bands[2] * sg), 0, -1) * 255


def unpack(x):
    return [float(np.exp(x[0])), float(np.exp(x[1])), float(np.exp(x[2])), float(np.exp(x[3])), float(x[4] / 100)]


def smooth(a):
    return gaussian_filter(a, (SMOOTH, SMOOTH, 0))


def phase_shift(a, b):
    """(dy, dx) such that a(y, x) ~ b(y - dy, x - dx), to ~0.1 px (parabolic peak)."""
    a, b = a - a.mean(), b - b.mean()
    c = np.fft.fftshift(np.fft.ifft2(np.fft.fft2(a) * np.conj(np.fft.fft2(b))).real)
    iy, ix = np.unravel_index(c.argmax(), c.shape)
    par = lambda m, z, p: 0.5 * (m - p) / (m - 2 * z + p)
    return (float(iy - c.shape[0] // 2 + par(c[iy - 1, ix], c[iy, ix], c[iy + 1, ix])),
            float(ix - c.shape[1] // 2 + par(c[iy, ix - 1], c[iy, ix], c[iy, ix + 1])))


def lum(bands):
    return np.arcsinh(np.sum(bands, axis=0) / 0.05)


def compare(stamp, jpg) -> dict:
    """Per-channel statistics of a uint8/float stamp vs the JPEG."""
    s, j = np.asarray(stamp, float), np.asarray(jpg, float)
    out = {}
    for c, name in enumerate("RGB"):
        a, b = s[..., c], j[..., c]
        out[name] = {"mean": [round(a.mean(), 2), round(b.mean(), 2)],
                     "p50_p90_p99_p99.9": [np.percentile(a, [50, 90, 99, 99.9]).round(1).tolist(),
                                           np.percentile(b, [50, 90, 99, 99.9]).round(1).tolist()],
                     "corr": round(float(np.corrcoef(a.ravel(), b.ravel())[0, 1]), 4),
                     "corr_smoothed": round(float(np.corrcoef(gaussian_filter(a, SMOOTH).ravel(),
                                                              gaussian_filter(b, SMOOTH).ravel())[0, 1]), 4)}
    out["corr_all"] = round(float(np.corrcoef(s.ravel(), j.ravel())[0, 1]), 4)
    out["mean_abs_diff"] = round(float(np.abs(s - j).mean()), 2)
    return out


def shifted(ra, dec, dy, dx, scale):
    """Centre that moves the stamp's content by (-dy, -dx) px (row = south, column = west): content
    moves down when the centre moves north, and right (west) when it moves east."""
    s = scale / 3600
    return ra - dx * s / np.cos(np.radians(dec)), dec - dy * s


def fit(bands, jpg, mask=None, starts=((8, 0.4), (3, 0.05), (15, 0.3), (8, 0.05))):
    js = smooth(jpg)
    sel = np.ones(jpg.shape[:2], bool) if mask is None else mask

    def resid(x):
        o = render(bands, unpack(x))
        r = ((smooth(o) - js)[sel]).ravel() / np.sqrt(sel.sum())
        return np.concatenate([r, np.sqrt(MEAN_WEIGHT) * (o[sel].mean(0) - jpg[sel].mean(0))])

    best = None
    for q0, st0 in starts:
        # no parameter may start at exactly 0: scipy's relative finite-difference step is then 0
        r = least_squares(resid, [0.01, 0.01, np.log(q0), np.log(st0), 0.01], x_scale=[0.3, 0.3, 0.5, 0.5, 1.0],
                          diff_step=1e-3)
        if best is None or r.cost < best.cost:
            best = r
    return unpack(best.x), float(2 * best.cost)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shared", default=os.environ.get("MERGERSCAN_SHARED", str(HERE.parent.parent / "shared")))
    ap.add_argument("--out", default=str(HERE / "results"))
    a = ap.parse_args()
    shared = Path(a.shared) / "data" if (Path(a.shared) / "data").is_dir() else Path(a.shared)
    frames, gz = shared / "sdss-frames", shared / "sdss-gz-mergers"
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    spec0 = PreprocessSpec()
    src = FrameSource(frames, spec0)
    jpg = np.asarray(Image.open(gz / "images" / f"{OBJ['id']}.jpg").convert("RGB"), np.float64)
    res = {"object": OBJ, "stretch_before": dict(STRETCH_DEFAULT)}

    # catalog objects (and Darg companions) inside the 6 fields: held-out comparisons
    cat = pd.read_csv(gz / "catalog.csv")
    inside = [(r.id, r.ra, r.dec, ",".join(k)) for r, k in zip(cat.itertuples(), src.locate(cat.ra, cat.dec)) if k]
    comp = cat.dropna(subset=["companion_ra"])
    comp_in = [r.id for r, k in zip(comp.itertuples(), src.locate(comp.companion_ra, comp.companion_dec)) if k]
    res["catalog_objects_in_fields"] = [dict(id=i, ra=r, dec=d, fields=k) for i, r, d, k in inside]
    res["companions_in_fields"] = comp_in

    # orientation and alignment, on the nominal cutout
    bands, key, edge = src.band_stamps(OBJ["ra"], OBJ["dec"])
    assert key == OBJ["field"] and not edge, (key, edge)
    L, J = lum(bands), jpg.sum(2)
    corr = lambda a, b: round(float(np.corrcoef(a.ravel(), b.ravel())[0, 1]), 4)
    res["orientation_corr"] = {k: corr(L, f(J)) for k, f in DIHEDRAL.items()}
    res["orientation_best"] = max(res["orientation_corr"], key=res["orientation_corr"].get)
    dy, dx = phase_shift(L, np.arcsinh(J / 10))
    per_band = {b: phase_shift(np.arcsinh(bands[c] / 0.02), jpg[..., c]) for c, b in enumerate(spec0.channels)}
    res["offset_px"] = {"dy_row_south": round(dy, 2), "dx_col_west": round(dx, 2),
                        "arcsec": round(float(np.hypot(dy, dx) * spec0.pixel_scale), 3),
                        "per_band": {b: [round(v, 2) for v in s] for b, s in per_band.items()},
                        "meaning": "frame cutout = JPEG shifted by (dy, dx) px"}
    ra1, dec1 = shifted(OBJ["ra"], OBJ["dec"], dy, dx, spec0.pixel_scale)
    aligned, _, _ = src.band_stamps(ra1, dec1)
    res["offset_after_recentring_px"] = [round(v, 2) for v in phase_shift(lum(aligned), np.arcsinh(J / 10))]

    # the fit (on the re-centred cutout), and a 2-fold checkerboard cross-validation
    p, loss = fit(aligned, jpg)
    res["fit"] = {"scales_irg": [round(p[0], 4), 1.0, round(p[1], 4)], "Q": round(p[2], 3),
                  "stretch": round(p[3], 4), "minimum": round(p[4], 5), "loss": round(loss, 3),
                  "objective": f"mean sq. residual of {SMOOTH}-px-smoothed pixels + {MEAN_WEIGHT} x sum of "
                               "squared per-channel mean residuals; scale_r fixed at 1 (degenerate with stretch)"}
    yy, xx = np.mgrid[:jpg.shape[0], :jpg.shape[1]]
    checker = ((yy // 32 + xx // 32) % 2) == 0
    cv = []
    for fold in (checker, ~checker):
        pf, _ = fit(aligned, jpg, mask=fold, starts=((8, 0.4), (p[2], p[3])))
        o = render(aligned, pf)
        held = ~fold
        cv.append({"params": [round(v, 4) for v in pf],
                   "heldout_corr_smoothed": corr(smooth(o)[held], smooth(jpg)[held]),
                   "heldout_mean_diff": (o[held].mean(0) - jpg[held].mean(0)).round(2).tolist()})
    res["crossval_checkerboard"] = cv

    stretch = {"scales": res["fit"]["scales_irg"], "Q": res["fit"]["Q"], "stretch": res["fit"]["stretch"],
               "minimum": res["fit"]["minimum"]}
    res["stretch_fitted"] = stretch

    # the production path: FrameSource.fetch with the fitted spec, nominal centre (no re-centring)
    spec = PreprocessSpec(stretch=stretch)
    fsrc = FrameSource(frames, spec)
    rows = pd.DataFrame({"id": [OBJ["id"]], "ra": [OBJ["ra"]], "dec": [OBJ["dec"]]})
    st, status = fsrc.fetch(rows)
    res["status"] = status.tolist()
    res["match_production"] = compare(st[0], jpg)
    res["match_recentred"] = compare(np.clip(render(aligned, p), 0, 255).astype(np.uint8), jpg)
    res["match_before_fit"] = compare(src.fetch(rows)[0][0], jpg)
    # background noise: the JPEG's is smoothed (compression); a JPEG round trip shows how much
    bg = (slice(0, 60), slice(180, 256))
    buf = io.BytesIO()
    Image.fromarray(st[0]).save(buf, "JPEG", quality=75)
    rt = np.asarray(Image.open(buf), float)
    lag1 = lambda a: round(float(np.mean([np.corrcoef(a[bg][..., c][:, :-1].ravel(), a[bg][..., c][:, 1:].ravel())[0, 1]
                                          for c in range(3)])), 3)
    res["background_noise"] = {"region": "rows 0-59, cols 180-255",
                               "lag1_autocorr": {"jpeg": lag1(jpg), "cutout": lag1(st[0].astype(float)),
                                                 "cutout_jpeg_q75": lag1(rt)},
                               "median_rgb": {"jpeg": np.median(jpg[bg], axis=(0, 1)).tolist(),
                                              "cutout": np.median(st[0][bg], axis=(0, 1)).tolist()}}
    # held-out objects: compare, never fit
    held = []
    for i, ra, dec, k in inside:
        if i == OBJ["id"]:
            continue
        f = gz / "images" / f"{i}.jpg"
        s1, stt = fsrc.fetch(pd.DataFrame({"id": [i], "ra": [ra], "dec": [dec]}))
        held.append({"id": i, "status": stt[0], **compare(s1[0], np.asarray(Image.open(f).convert("RGB"), float))})
    res["heldout_objects"] = held or "none: M2843 is the only catalog object in the 6 fields"

    # side by side: frame cutout | SkyServer JPEG | |difference| x 2
    diff = np.clip(np.abs(st[0].astype(int) - jpg.astype(int)) * 2, 0, 255).astype(np.uint8)
    gap = np.full((jpg.shape[0], 4, 3), 255, np.uint8)
    Image.fromarray(np.concatenate([st[0], gap, jpg.astype(np.uint8), gap, diff], 1)).save(out / "m2843_compare.png")
    res["seconds"] = round(time.perf_counter() - t0, 1)
    (out / "calibrate_stretch.json").write_text(json.dumps(res, indent=1, default=float) + "\n")
    print(json.dumps({k: res[k] for k in ("orientation_best", "offset_px", "fit", "crossval_checkerboard",
                                            "match_production", "heldout_objects")}, indent=1, default=float))
    print("STRETCH_DEFAULT =", json.dumps(stretch))


if __name__ == "__main__":
    main()
