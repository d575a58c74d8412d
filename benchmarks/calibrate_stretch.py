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

    .venv/bin/python benchmarks/calibrate_stretch.py [--shared ../shared/data] [--write ENGINE_OUT]
Writes benchmarks/results/calibrate_stretch.json and m2843_compare.png.  ``--write ENGINE_OUT``:
a copy of ``--engine`` (default: the packaged engine) whose spec carries the fitted stretch
(:func:`mergerscan.training.stretch.write_stretch`): the frame source renders with the engine's
spec, so nothing is pasted into source.  The fit itself is :mod:`mergerscan.training.stretch`.
"""

from __future__ import annotations

import argparse
import io
import json
import time
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image
from scipy.ndimage import gaussian_filter

from _common import resolve_shared, result_path, write_result
from mergerscan.cutouts.frames import FrameSource
from mergerscan.cutouts.preprocess import STRETCH_DEFAULT, PreprocessSpec
from mergerscan.training.stretch import MEAN_WEIGHT, SMOOTH, fit, phase_shift, render, smooth, stretch_of

OBJ = dict(id="M2843", ra=229.52556, dec=42.745853, field="3918-3-213")
DIHEDRAL = {
    "identity": lambda a: a,
    "flip_ud": np.flipud,
    "flip_lr": np.fliplr,
    "rot180": lambda a: np.rot90(a, 2),
    "rot90": np.rot90,
    "rot270": lambda a: np.rot90(a, 3),
    "transpose": lambda a: np.swapaxes(a, 0, 1),
    "anti_transpose": lambda a: np.swapaxes(np.rot90(a, 2), 0, 1),
}


def lum(bands):
    return np.arcsinh(np.sum(bands, axis=0) / 0.05)


def compare(stamp, jpg) -> dict:
    """Per-channel statistics of a uint8/float stamp vs the JPEG."""
    s, j = np.asarray(stamp, float), np.asarray(jpg, float)
    out = {}
    for c, name in enumerate("RGB"):
        a, b = s[..., c], j[..., c]
        out[name] = {
            "mean": [round(a.mean(), 2), round(b.mean(), 2)],
            "p50_p90_p99_p99.9": [
                np.percentile(a, [50, 90, 99, 99.9]).round(1).tolist(),
                np.percentile(b, [50, 90, 99, 99.9]).round(1).tolist(),
            ],
            "corr": round(float(np.corrcoef(a.ravel(), b.ravel())[0, 1]), 4),
            "corr_smoothed": round(
                float(np.corrcoef(gaussian_filter(a, SMOOTH).ravel(), gaussian_filter(b, SMOOTH).ravel())[0, 1]), 4
            ),
        }
    out["corr_all"] = round(float(np.corrcoef(s.ravel(), j.ravel())[0, 1]), 4)
    out["mean_abs_diff"] = round(float(np.abs(s - j).mean()), 2)
    return out


def shifted(ra, dec, dy, dx, scale):
    """Centre that moves the stamp's content by (-dy, -dx) px (row = south, column = west): content
    moves down when the centre moves north, and right (west) when it moves east."""
    s = scale / 3600
    return ra - dx * s / np.cos(np.radians(dec)), dec - dy * s


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shared", help="the shared folder or its data/ (default: $MERGERSCAN_SHARED, ../shared)")
    ap.add_argument("--out", default=str(result_path("")))
    ap.add_argument("--engine", help="engine whose spec --write copies (default: the packaged engine)")
    ap.add_argument("--write", metavar="ENGINE_OUT", help="write the engine with the fitted stretch in its spec")
    a = ap.parse_args()
    shared = resolve_shared(a.shared)
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
    res["offset_px"] = {
        "dy_row_south": round(dy, 2),
        "dx_col_west": round(dx, 2),
        "arcsec": round(float(np.hypot(dy, dx) * spec0.pixel_scale), 3),
        "per_band": {b: [round(v, 2) for v in s] for b, s in per_band.items()},
        "meaning": "frame cutout = JPEG shifted by (dy, dx) px",
    }
    ra1, dec1 = shifted(OBJ["ra"], OBJ["dec"], dy, dx, spec0.pixel_scale)
    aligned, _, _ = src.band_stamps(ra1, dec1)
    res["offset_after_recentring_px"] = [round(v, 2) for v in phase_shift(lum(aligned), np.arcsinh(J / 10))]

    # the fit (on the re-centred cutout), and a 2-fold checkerboard cross-validation
    p, loss = fit(aligned, jpg)
    res["fit"] = {
        "scales_irg": [round(p[0], 4), 1.0, round(p[1], 4)],
        "Q": round(p[2], 3),
        "stretch": round(p[3], 4),
        "minimum": round(p[4], 5),
        "loss": round(loss, 3),
        "objective": f"mean sq. residual of {SMOOTH}-px-smoothed pixels + {MEAN_WEIGHT} x sum of "
        "squared per-channel mean residuals; scale_r fixed at 1 (degenerate with stretch)",
    }
    yy, xx = np.mgrid[: jpg.shape[0], : jpg.shape[1]]
    checker = ((yy // 32 + xx // 32) % 2) == 0
    cv = []
    for fold in (checker, ~checker):
        pf, _ = fit(aligned, jpg, mask=fold, starts=((8, 0.4), (p[2], p[3])))
        o = render(aligned, pf)
        held = ~fold
        cv.append(
            {
                "params": [round(v, 4) for v in pf],
                "heldout_corr_smoothed": corr(smooth(o)[held], smooth(jpg)[held]),
                "heldout_mean_diff": (o[held].mean(0) - jpg[held].mean(0)).round(2).tolist(),
            }
        )
    res["crossval_checkerboard"] = cv

    stretch = stretch_of(p)
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
    lag1 = lambda a: round(
        float(
            np.mean([np.corrcoef(a[bg][..., c][:, :-1].ravel(), a[bg][..., c][:, 1:].ravel())[0, 1] for c in range(3)])
        ),
        3,
    )
    res["background_noise"] = {
        "region": "rows 0-59, cols 180-255",
        "lag1_autocorr": {"jpeg": lag1(jpg), "cutout": lag1(st[0].astype(float)), "cutout_jpeg_q75": lag1(rt)},
        "median_rgb": {
            "jpeg": np.median(jpg[bg], axis=(0, 1)).tolist(),
            "cutout": np.median(st[0][bg], axis=(0, 1)).tolist(),
        },
    }
    # held-out objects: compare, never fit
    held = []
    for i, ra, dec, _fields in inside:
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
    write_result(out / "calibrate_stretch.json", res)
    print(
        json.dumps(
            {
                k: res[k]
                for k in (
                    "orientation_best",
                    "offset_px",
                    "fit",
                    "crossval_checkerboard",
                    "match_production",
                    "heldout_objects",
                )
            },
            indent=1,
            default=float,
        )
    )
    if a.write:
        from mergerscan.engines import resolve_engine_path
        from mergerscan.training.stretch import write_stretch

        print(
            "wrote", write_stretch(resolve_engine_path(a.engine), a.write, stretch), "with stretch", json.dumps(stretch)
        )


if __name__ == "__main__":
    main()
