"""The image-level domain check of the default engine on real sources (issue 35).

Inputs (cached by ``benchmarks/domain_cache.py``, run that first, niced): the engine's penultimate
features and logits on the 9,520 shared labelled stamps (the training code's split, seed 0) and
on every source ``cutouts.detect.detect_sources`` finds in the six shared r frames, cut with the
frames source (status ``ok`` or ``edge``: both are scored by the pipeline).  The domain score is
the engine file's own block (read from its initializers) applied to those features; a spot check
runs ``Engine.score`` on the flagged frame rows and 64 others and requires the graph's
domain_score to agree to 1e-4 (the tests hold ORT = torch = numpy reference).

Writes benchmarks/results/domain.json and galleries under docs/results/domain/:

* test split: fraction of labelled galaxies the check rejects (mergers, non-interacting), macro F1
  and merger recall at the engine's threshold before / after (a rejected row is not a merger);
* frames: rows flagged is_merger before / after, with the by-eye judgement of each flagged stamp
  (``EYE``: looked at in docs/results/domain/flagged.png), score distributions of frame stamps vs
  JPEG stamps, what the check rejects and what it keeps, by detected size.

    nice -n 15 .venv/bin/python benchmarks/eval_domain.py [--engine FILE]
"""

from __future__ import annotations

import argparse
import itertools
import json

import numpy as np
import pandas as pd

from _common import REPO, result_path, write_result
from domain_cache import CACHE

GALLERY = REPO / "docs" / "results" / "domain"
# by eye, from the 256 px stamps (docs/results/domain/flagged.png), keyed by field and position
EYE = {
    ("001035-6-0017", 7.95611, 15.98334): "galaxy (small, at the frame edge)",
    ("001043-5-0025", 3.59186, 15.63877): "star (compact, beside a saturated star with spikes)",
    ("001043-5-0025", 3.62957, 15.81776): "galaxy (inclined disc)",
    ("001043-5-0025", 3.68951, 15.78357): "star (saturated, diffraction spikes)",
    ("001043-5-0025", 3.71117, 15.67294): "star (compact red point source)",
    ("003184-2-0169", 244.46191, 40.14347): "galaxy (close pair, bright stars in the corners)",
    ("003918-3-0213", 229.52575, 42.74471): "galaxy (M2843, the Darg+2010 merger)",
    ("003918-3-0213", 229.53921, 42.74626): "star (red point source beside M2843)",
    ("004510-4-0030", 200.37740, 36.90295): "galaxy (small, at the frame edge)",
}


def eye_label(row) -> str:
    """The by-eye judgement of a flagged frame stamp ('?' when not looked at)."""
    for (field, ra, dec), label in EYE.items():
        if row.field == field and abs(row.ra - ra) < 3e-4 and abs(row.dec - dec) < 3e-4:
            return label
    return "?"


def gallery(stamps, captions, path, cols=6, size=160):
    from PIL import Image, ImageDraw

    rows = max(1, -(-len(stamps) // cols))
    im = Image.new("RGB", (cols * size, rows * (size + 14)), "white")
    d = ImageDraw.Draw(im)
    for i, (s, c) in enumerate(zip(stamps, captions)):
        x, y = (i % cols) * size, (i // cols) * (size + 14)
        im.paste(Image.fromarray(np.asarray(s)).resize((size, size)), (x, y))
        d.text((x + 2, y + size), c, fill="black")
    path.parent.mkdir(parents=True, exist_ok=True)
    im.save(path)
    return str(path.relative_to(REPO))


def block_of(engine: str):
    import onnx
    from onnx import numpy_helper

    from mergerscan.engines.representation import read_block

    m = onnx.load(engine)
    rep = read_block({i.name: numpy_helper.to_array(i) for i in m.graph.initializer})
    if rep is None:
        raise SystemExit(f"{engine} has no representation block (python -m mergerscan.training.representation)")
    return rep


def test_split(gz, G, eng, rep, th_d) -> dict:
    from mergerscan.training import evaluate as ev

    te = gz["split"].to_numpy() == "test"
    y = gz["label"].to_numpy()[te]
    p = eng.calibrate(G["logit"][te, 0])
    _, d = rep.apply(G[eng.info.card.representation.features][te])
    keep = d <= th_d
    t = eng.info.threshold
    before, after = ev.per_class(y, p, t), ev.per_class(y, np.where(keep, p, 0.0), t)
    return {
        "n": int(te.sum()),
        "rejected_fraction": {
            "non_interacting": float(np.mean(~keep[y == 0])),
            "mergers": float(np.mean(~keep[y == 1])),
        },
        "before": before,
        "after": after,
        "domain_score_percentiles": dict(
            zip(("p50", "p90", "p99", "p99.5"), np.percentile(d, [50, 90, 99, 99.5]).tolist())
        ),
    }


def frames(ft, F, stamps, eng, rep, th_d) -> dict:
    """Flagged before / after on the frames' sources, by eye; galleries of rejected / kept."""
    p = eng.calibrate(F["logit"][:, 0])
    _, d = rep.apply(F[eng.info.card.representation.features])
    t = eng.info.threshold
    before, after = p >= t, (p >= t) & (d <= th_d)
    rows = []
    for i in np.flatnonzero(before):
        r = ft.iloc[i]
        rows.append(
            {
                "row": int(i),
                "field": r.field,
                "ra": float(r.ra),
                "dec": float(r.dec),
                "status": r.status,
                "area_px": float(r.area),
                "p_merger": float(p[i]),
                "domain_score": float(d[i]),
                "kept": bool(after[i]),
                "by_eye": eye_label(r),
            }
        )
    fl = np.flatnonzero(before)
    g = {
        "flagged": gallery(
            stamps[fl],
            [f"{i} p{p[i]:.2f} d{d[i]:.2f} {'kept' if after[i] else 'REJ'}" for i in fl],
            GALLERY / "flagged.png",
            cols=5,
            size=192,
        )
    }
    rej = np.flatnonzero(d > th_d)
    top = rej[np.argsort(-p[rej])][:36]  # the rejected rows the engine liked most
    g["rejected_top_p"] = gallery(
        stamps[top], [f"{i} p{p[i]:.2f} d{d[i]:.2f}" for i in top], GALLERY / "rejected-top-p.png"
    )
    far = rej[np.argsort(-d[rej])][:36]
    g["rejected_farthest"] = gallery(stamps[far], [f"{i} d{d[i]:.2f}" for i in far], GALLERY / "rejected-farthest.png")
    area = ft["area"].to_numpy()
    bins = np.quantile(area, [0, 0.5, 0.8, 0.95, 0.99, 1.0])
    kept_sizes, by_size = [], []
    for lo, hi in itertools.pairwise(bins):
        m = (area >= lo) & (area <= hi)
        by_size.append(
            {"area_px": [float(lo), float(hi)], "n": int(m.sum()), "rejected_fraction": float(np.mean(d[m] > th_d))}
        )
        k = np.flatnonzero(m & (d <= th_d))
        kept_sizes += list(k[np.argsort(-p[k])][:6])  # the kept rows the engine likes most, per size bin
    g["kept_by_size"] = gallery(
        stamps[kept_sizes],
        [f"{i} {area[i]:.0f}px p{p[i]:.2f} d{d[i]:.2f}" for i in kept_sizes],
        GALLERY / "kept-by-size.png",
    )
    status = ft["status"].to_numpy()
    return {
        "sources": len(ft),
        "status": {s: int((status == s).sum()) for s in np.unique(status)},
        "flagged_before": int(before.sum()),
        "flagged_after": int(after.sum()),
        "non_galaxies_flagged_before": sum(r["by_eye"].startswith("star") for r in rows),
        "non_galaxies_flagged_after": sum(r["by_eye"].startswith("star") and r["kept"] for r in rows),
        "flagged": rows,
        "rejected_fraction": {s: float(np.mean(d[status == s] > th_d)) for s in np.unique(status)}
        | {"all": float(np.mean(d > th_d))},
        "rejected_by_size": by_size,
        "domain_score_percentiles": {
            s: np.percentile(d[status == s], [50, 90, 99]).tolist() for s in np.unique(status)
        },
        "galleries": g,
    }


def spot_check(eng, stamps, rows, rep, F) -> float:
    """Max |domain_score(graph) - block applied to the cached features| on ``rows``."""
    got = eng.score(np.ascontiguousarray(stamps[rows])).domain_score
    _, ref = rep.apply(F[eng.info.card.representation.features][rows])
    err = float(np.max(np.abs(got - ref)))
    if err > 1e-4 * max(1.0, float(np.abs(ref).max())):
        raise SystemExit(f"the engine's domain_score differs from the cached features' by {err:.2e}")
    return err


def main():
    from mergerscan.engines import default_engine_path, load_engine

    ap = argparse.ArgumentParser()
    ap.add_argument("--engine", default=str(default_engine_path()))
    ap.add_argument("--out", default=str(result_path("domain.json")))
    a = ap.parse_args()
    eng = load_engine(a.engine, threads=2)
    rep, th_d = block_of(a.engine), eng.info.domain.image.threshold
    gz, G = pd.read_parquet(CACHE / "gz.parquet"), np.load(CACHE / "gz-features.npz")
    ft, F = pd.read_parquet(CACHE / "frames.parquet"), np.load(CACHE / "frames-features.npz")
    stamps = np.load(CACHE / "frames-stamps.npy", mmap_mode="r")
    fr = frames(ft, F, stamps, eng, rep, th_d)
    rng = np.random.default_rng(0)
    check = np.unique(np.r_[[r["row"] for r in fr["flagged"]], rng.choice(len(ft), 64, replace=False)])
    res = {
        "engine": eng.info.name,
        "engine_sha256": eng.info.sha256,
        "p_threshold": eng.info.threshold,
        "domain": eng.info.card.domain.image.to_dict(),
        "test_split": test_split(gz, G, eng, rep, th_d),
        "frames": fr,
        "graph_vs_cached_max_abs": spot_check(eng, stamps, check, rep, F),
        "how": "benchmarks/domain_cache.py then benchmarks/eval_domain.py (1 view, ONNX Runtime CPU)",
    }
    write_result(a.out, res)
    t = res["test_split"]
    print(
        json.dumps(
            {
                "flagged": [fr["flagged_before"], fr["flagged_after"]],
                "non_galaxies": [fr["non_galaxies_flagged_before"], fr["non_galaxies_flagged_after"]],
                "test_rejected": t["rejected_fraction"],
                "frames_rejected": fr["rejected_fraction"],
                "macro_f1": [t["before"]["macro"]["f1"], t["after"]["macro"]["f1"]],
                "recall": [t["before"]["merger"]["recall"], t["after"]["merger"]["recall"]],
            },
            indent=1,
        )
    )


if __name__ == "__main__":
    main()
