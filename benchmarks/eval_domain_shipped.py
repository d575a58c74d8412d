"""The default engine's image-level domain check as shipped (issue 35): both rules of the card's
``domain.image`` -- ``domain_score`` above its threshold, or ``saturated_core`` above its limit --
run through ``Engine.score`` itself (no cached features), on

* the labelled TEST split (training code's split, seed 0): the share of each class the check
  rejects, and macro F1 / merger recall at the engine's threshold before / after (a rejected row is
  never is_merger);
* every source ``detect_sources`` finds in the six shared frames, cut by the frames source (status
  ok or edge, as the pipeline scores them): rows flagged before / after with the by-eye judgement
  of each flagged stamp (``eval_domain.EYE``), and a gallery of the largest rows the saturation
  rule rejects (docs/results/domain/saturated-rejected-largest.png: galaxies of every size must
  not be there).

Writes benchmarks/results/domain-shipped.json.  A few CPU minutes:

    nice -n 15 .venv/bin/python benchmarks/eval_domain_shipped.py
"""

from __future__ import annotations

import numpy as np

from _common import result_path, write_result
from domain_cache import frame_sources, labelled
from eval_domain import GALLERY, eye_label, gallery


def outside(out, image) -> np.ndarray:
    """Rows the card's image check puts outside the domain (both rules)."""
    return (out.domain_score > image.threshold) | (out.saturated_core > image.max_saturated_core)


def test_split(eng, image) -> dict:
    from mergerscan.training import evaluate as ev

    gz, stamps = labelled()
    te = gz["split"].to_numpy() == "test"
    y = gz["label"].to_numpy()[te]
    out = eng.score(stamps[te])
    keep = ~outside(out, image)
    t = eng.info.threshold
    before, after = ev.per_class(y, out.p_merger, t), ev.per_class(y, np.where(keep, out.p_merger, 0.0), t)
    by_rule = {
        "domain_score": int((out.domain_score > image.threshold).sum()),
        "saturated_core": int((out.saturated_core > image.max_saturated_core).sum()),
    }
    return {
        "n": int(te.sum()),
        "rejected_fraction": {
            "non_interacting": float(np.mean(~keep[y == 0])),
            "mergers": float(np.mean(~keep[y == 1])),
        },
        "rejected_by_rule": by_rule,
        "macro_f1": [before["macro"]["f1"], after["macro"]["f1"]],
        "merger_recall": [before["merger"]["recall"], after["merger"]["recall"]],
    }


def frames(eng, image) -> dict:
    ft, stamps = frame_sources(eng.spec)
    ok = np.isin(ft["status"].to_numpy(), ["ok", "edge"])
    ft, stamps = ft[ok].reset_index(drop=True), stamps[ok]
    out = eng.score(stamps)
    ft["p"], ft["d"], ft["sat"] = out.p_merger, out.domain_score, out.saturated_core
    ft["out"] = outside(out, image)
    flagged = ft[ft["p"] >= eng.info.threshold].copy()
    flagged["eye"] = [eye_label(r) for r in flagged.itertuples()]
    sat_out = ft[ft["sat"] > image.max_saturated_core].sort_values("area", ascending=False).head(24)
    path = gallery(
        stamps[sat_out.index],
        [f"p{r.p:.2f} sat{r.sat} a{int(r.area)}" for r in sat_out.itertuples()],
        GALLERY / "saturated-rejected-largest.png",
        cols=8,
        size=128,
    )
    after = flagged[~flagged["out"]]
    return {
        "sources": len(ft),
        "rejected_fraction": float(ft["out"].mean()),
        "rejected_by_saturation": int((ft["sat"] > image.max_saturated_core).sum()),
        "flagged_before": len(flagged),
        "flagged_after": len(after),
        "not_galaxies_before": int(flagged["eye"].str.startswith("star").sum()),
        "not_galaxies_after": int(after["eye"].str.startswith("star").sum()),
        "flagged": [
            {
                "field": r.field,
                "ra": r.ra,
                "dec": r.dec,
                "p_merger": r.p,
                "domain_score": r.d,
                "saturated_core": int(r.sat),
                "outside": bool(r.out),
                "eye": r.eye,
            }
            for r in flagged.itertuples()
        ],
        "saturation_gallery": path,
    }


def main():
    from mergerscan.engines import load_engine

    eng = load_engine(None, threads=2)
    image = eng.info.domain.image
    res = {
        "engine": eng.info.name,
        "engine_sha256": eng.info.sha256,
        "image_check": {"threshold": image.threshold, "max_saturated_core": image.max_saturated_core},
    }
    res["test_split"] = test_split(eng, image)
    res["frames"] = frames(eng, image)
    print(write_result(result_path("domain-shipped.json"), res))


if __name__ == "__main__":
    main()
