"""The study's test protocol: 18 rotated copies (0°, 20°, ... 340°) of each galaxy, for an engine.

Each copy is the 256 px stamp rotated about its centre (bilinear, reflection-padded corners: the
rotation training's augmentation applies), then scored as the engine scores any stamp (``--views``
dihedral views, default 1: the rotations are the augmentation here).  The validation split is
rotated the same way; the temperature and threshold are fitted on it, and the test split is
evaluated once, two ways:

- ``per_copy``: every rotated copy counted as a test sample (18 x 1,427), as the study counted them.
  Copies of one galaxy are not independent, so this is not a once-per-galaxy figure; the
  bootstrap for it resamples galaxies (all 18 copies together), never copies.
- ``per_galaxy_mean``: the mean logit of the 18 copies, one score per galaxy (18-rotation TTA).

    .venv/bin/python benchmarks/eval_rotations.py [ENGINE] [--views 1] [--rotations 18]
Writes benchmarks/results/rotations-<engine name>.json.  Needs the shared data.
"""

from __future__ import annotations

import argparse
import math
import time

import numpy as np

from _common import cpu_model, need, result_path, shared_data, write_result


def rotate_stamps(stamps: np.ndarray, degrees: float) -> np.ndarray:
    """(N, H, W, 3) uint8 stamps rotated by ``degrees`` about the centre, reflection-padded."""
    import torch
    import torch.nn.functional as F

    x = torch.from_numpy(np.ascontiguousarray(stamps)).permute(0, 3, 1, 2).float()
    a = math.radians(degrees)
    theta = torch.tensor([[math.cos(a), -math.sin(a), 0.0], [math.sin(a), math.cos(a), 0.0]]).expand(len(x), 2, 3)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    y = F.grid_sample(x, grid, mode="bilinear", padding_mode="reflection", align_corners=False)
    return y.round_().clamp_(0, 255).to(torch.uint8).permute(0, 2, 3, 1).numpy()


def rotated_logits(engine, stamps: np.ndarray, rotations: int, views: int, batch: int = 64) -> np.ndarray:
    """(rotations, N) logits: copy k is the stamp rotated by k * 360 / rotations degrees."""
    from mergerscan.cutouts.preprocess import prepare_batch
    from mergerscan.engines.base import dihedral_views

    out = np.zeros((rotations, len(stamps)), np.float64)
    for i in range(0, len(stamps), batch):
        s = stamps[i : i + batch]
        for k in range(rotations):
            x = prepare_batch(rotate_stamps(s, 360.0 * k / rotations) if k else s, engine.spec)
            out[k, i : i + len(s)] = engine.logits(dihedral_views(x, views)).reshape(views, len(s)).mean(0)
    return out


def galaxy_bootstrap(y, p, threshold: float, copies: int, n_boot: int = 1000, seed: int = 0) -> dict:
    """95 % intervals of per-copy macro F1 and P @ 2 %, resampling galaxies with all their copies.
    ``y``/``p`` are copy-major (copies, galaxies) flattened."""
    from mergerscan.training import evaluate as ev

    y2, p2 = np.asarray(y).reshape(copies, -1), np.asarray(p).reshape(copies, -1)
    rng = np.random.default_rng(seed)
    f1, p2pct = [], []
    for _ in range(n_boot):
        g = rng.integers(0, y2.shape[1], y2.shape[1])
        yy, pp = y2[:, g].ravel(), p2[:, g].ravel()
        f1.append(ev.per_class(yy, pp, threshold)["macro"]["f1"])
        p2pct.append(ev.precision_at_prevalence(yy, pp, threshold))
    q = lambda v: [round(float(np.percentile(v, 2.5)), 4), round(float(np.percentile(v, 97.5)), 4)]
    return {"macro_f1_95": q(f1), "precision_at_2pct_95": q(p2pct), "n_boot": n_boot, "unit": "galaxy"}


def brief(m: dict) -> dict:
    return {
        "n": m["n"],
        "merger": {k: round(m["merger"][k], 4) for k in ("precision", "recall", "f1")},
        "macro_f1": round(m["macro"]["f1"], 4),
        "roc_auc": round(m["roc_auc"], 4),
        "pr_auc": round(m["pr_auc"], 4),
        "precision_at_2pct": round(m["precision_at_2pct"], 4),
        "ece": round(m["ece"], 4),
        "threshold": round(m["threshold"], 4),
    }


def main(argv=None) -> dict:
    from mergerscan.engines import default_engine_path, load_engine
    from mergerscan.training import evaluate as ev
    from mergerscan.training.data import build_labelled_set

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("engine", nargs="?", default=None, help="engine file (default: the shipped default)")
    ap.add_argument("--views", type=int, default=1, help="dihedral views per rotated copy")
    ap.add_argument("--rotations", type=int, default=18)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--cache", default=None)
    ap.add_argument("--out")
    a = ap.parse_args(argv)
    catalog = need(shared_data("sdss-gz-mergers", "catalog.csv"))
    path = a.engine or str(default_engine_path())
    engine = load_engine(path, threads=a.threads, views=1)
    data = build_labelled_set(catalog, cache=a.cache)
    labels = data.table["label"].to_numpy()
    t0 = time.perf_counter()
    z, y = {}, {}
    for split in ("val", "test"):
        idx = data.indices(split)
        z[split], y[split] = rotated_logits(engine, data.stamps[idx], a.rotations, a.views), labels[idx]
    wall = time.perf_counter() - t0
    r = a.rotations
    copy = ev.calibrate_and_summarize(np.tile(y["val"], r), z["val"].ravel(), np.tile(y["test"], r), z["test"].ravel())
    mean = ev.calibrate_and_summarize(y["val"], z["val"].mean(0), y["test"], z["test"].mean(0))
    unrot = ev.calibrate_and_summarize(y["val"], z["val"][0], y["test"], z["test"][0])
    res = {
        "engine": engine.info.name,
        "engine_file": str(path),
        "data_hash": data.data_hash,
        "rotations_deg": [round(360.0 * k / r, 3) for k in range(r)],
        "views_per_copy": a.views,
        "calibration": "temperature and macro-F1 threshold fitted on the rotated validation split, per mode",
        "per_copy": brief(copy.test)
        | {"bootstrap": galaxy_bootstrap(np.tile(y["test"], r), copy.p_test, copy.threshold, r)},
        "per_galaxy_mean": brief(mean.test),
        "unrotated_same_run": brief(unrot.test),
        "per_rotation_macro_f1": [
            round(
                ev.per_class(y["test"], ev.sigmoid(z["test"][k] / copy.temperature), copy.threshold)["macro"]["f1"], 4
            )
            for k in range(r)
        ],
        "wall_s": round(wall, 1),
        "cpu": cpu_model(),
        "threads": a.threads,
    }
    for k in ("per_copy", "per_galaxy_mean", "unrotated_same_run"):
        m = res[k]
        print(
            f"{k:20s} n={m['n']:6d} macro F1 {m['macro_f1']:.4f} P/R/F1 merger {m['merger']['precision']:.3f}/"
            f"{m['merger']['recall']:.3f}/{m['merger']['f1']:.3f} ROC-AUC {m['roc_auc']:.4f} "
            f"PR-AUC {m['pr_auc']:.4f} P@2% {m['precision_at_2pct']:.3f}"
        )
    write_result(a.out or result_path(f"rotations-{engine.info.name}.json"), res)
    return res


if __name__ == "__main__":
    main()
