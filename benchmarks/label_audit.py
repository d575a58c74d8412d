"""The label audit of issue 39: the default engine's most confident errors over validation + test.

At the engine's own threshold and view count (the card's), the ``--n`` most confident false
positives (non-mergers with the highest p_merger) and false negatives (mergers with the lowest)
over the validation and test splits (training's split, seed 0) are drawn as galleries of their
shared JPEG stamps, with id, split, p_merger and, for the non-mergers, the GZ1 merger vote fraction
``p_mg``.  Each was judged by eye (label error / model error / ambiguous) into ``judgements.csv``
(id, judgement, note), written by a person looking at the galleries, not by this script.  With the
judgements present it writes ``audit.csv`` (id, split, label, p_merger, p_mg, judgement, note) and
``summary.json``: precision at 2 % on the test split as measured and with the audited label errors
left out (:func:`mergerscan.training.evaluate.precision_at_prevalence`, as the project reports it).

    .venv/bin/python benchmarks/label_audit.py --cache .cache/mergerscan
Writes docs/results/label-audit/{fp,fn}-*.png, audit.csv, summary.json.  The engine's view logits
come from eval_ensembles' cache (computed there when absent, ~minutes).
"""

from __future__ import annotations

import argparse
import csv
from pathlib import Path

import numpy as np

from _common import REPO, cpu_model, need, shared_data, write_result
from eval_ensembles import view_logits

OUT = REPO / "docs" / "results" / "label-audit"
PER_PAGE, COLS, ZOOM = 20, 5, 96


def engine_scores(data, cache: Path | None, threads: int) -> tuple[np.ndarray, np.ndarray, float, int]:
    """(row indices of val + test, their p_merger, the engine threshold, views) for the default engine."""
    from mergerscan.engines import default_engine_path, read_engine_info
    from mergerscan.engines.base import sigmoid
    from mergerscan.training.calibrate import mean_of_views

    path = Path(default_engine_path())
    info = read_engine_info(path)
    z = view_logits(path, data, cache, threads)
    idx = np.r_[data.indices("val"), data.indices("test")]
    zz = np.concatenate([z["val"], z["test"]], axis=1).astype(np.float64)
    p = sigmoid(mean_of_views(zz, info.views) / info.temperature).astype(np.float32)
    return idx, p, info.threshold, info.views


def worst(labels: np.ndarray, p: np.ndarray, thr: float, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Positions of the ``n`` most confident false positives and false negatives."""
    fp = [i for i in np.argsort(-p, kind="stable") if labels[i] == 0 and p[i] >= thr][:n]
    fn = [i for i in np.argsort(p, kind="stable") if labels[i] == 1 and p[i] < thr][:n]
    return np.array(fp, int), np.array(fn, int)


SCALE = 0.396  # arcsec per stamp pixel (the shared stamps: SkyServer cutouts at SDSS's native scale)


def companion(raw_row) -> tuple[float, float, float] | None:
    """(separation in arcsec, x, y in stamp pixels) of a Darg pair's galaxy 2 (north up, east left)."""
    import math

    if not np.isfinite(raw_row.get("companion_ra", np.nan)):
        return None
    dec0 = math.radians(raw_row["dec"])
    dx = (raw_row["companion_ra"] - raw_row["ra"]) * math.cos(dec0) * 3600
    dy = (raw_row["companion_dec"] - raw_row["dec"]) * 3600
    return math.hypot(dx, dy), 128 - dx / SCALE, 128 - dy / SCALE


def gallery(rows: list[dict], stamps, title: str, path: Path) -> None:
    """Each object twice: the whole stamp (101") and its central 96 px (38") enlarged."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    nrow = -(-len(rows) // COLS)
    fig, axes = plt.subplots(nrow, 2 * COLS, figsize=(2 * COLS * 2.0, nrow * 2.35 + 0.4), squeeze=False)
    for ax in np.ravel(axes):
        ax.axis("off")
    lo, hi = 128 - ZOOM // 2, 128 + ZOOM // 2
    for k, r in enumerate(rows):
        full, zoom = axes[k // COLS, 2 * (k % COLS)], axes[k // COLS, 2 * (k % COLS) + 1]
        full.imshow(stamps[k])
        zoom.imshow(stamps[k][lo:hi, lo:hi], extent=(lo - 0.5, hi - 0.5, hi - 0.5, lo - 0.5))
        extra = f" p_mg {r['p_mg']:.3f}" if r["p_mg"] != "" else ""
        if r.get("_xy") is not None:  # a Darg pair: where its galaxy 2 is (a ring)
            x, y = r["_xy"]
            extra += f' sep {r["companion_sep_arcsec"]:.0f}"'
            for ax in (full, zoom):
                ax.plot([x], [y], "o", ms=12, mfc="none", mec="yellow", mew=0.8, alpha=0.6)
            zoom.set_xlim(lo - 0.5, hi - 0.5)
            zoom.set_ylim(hi - 0.5, lo - 0.5)
            full.set_xlim(-0.5, 255.5)  # a galaxy 2 off the stamp is not drawn
            full.set_ylim(255.5, -0.5)
        full.set_title(f"{r['rank']}. {r['id']} ({r['split']})", fontsize=8, loc="left")
        zoom.set_title(f"p {r['p_merger']:.3f}{extra}", fontsize=8, loc="left")
    fig.suptitle(title, fontsize=10)
    fig.tight_layout(rect=(0, 0, 1, 1 - 0.35 / (nrow * 2.35 + 0.4)))
    fig.savefig(path, dpi=72)
    plt.close(fig)


def read_judgements(path: Path) -> dict[str, dict]:
    if not path.is_file():
        return {}
    with open(path, newline="") as fh:
        return {r["id"]: r for r in csv.DictReader(fh)}


def measured_and_cleaned(y, p, thr, drop: np.ndarray) -> dict:
    from mergerscan.training.evaluate import per_class, precision_at_prevalence

    keep = ~drop
    c0, c1 = per_class(y, p, thr)["confusion"], per_class(y[keep], p[keep], thr)["confusion"]
    return {
        "measured": {"precision_at_2pct": round(precision_at_prevalence(y, p, thr), 4), **c0},
        "without_audited_label_errors": {
            "precision_at_2pct": round(precision_at_prevalence(y[keep], p[keep], thr), 4),
            "dropped": int(drop.sum()),
            **c1,
        },
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=50, help="most confident errors of each kind")
    ap.add_argument("--cache", default=".cache/mergerscan")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default=str(OUT))
    a = ap.parse_args()
    import pandas as pd

    from mergerscan.training.data import build_labelled_set

    catalog = need(shared_data("sdss-gz-mergers", "catalog.csv"))
    data = build_labelled_set(str(catalog), cache=a.cache)
    idx, p, thr, views = engine_scores(data, Path(a.cache) if a.cache else None, a.threads)
    t = data.table.iloc[idx].reset_index(drop=True)
    raw = pd.read_csv(catalog).set_index("id")
    labels = t["label"].to_numpy()
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    judged = read_judgements(out / "judgements.csv")
    rows = []
    for kind, pos in zip(("fp", "fn"), worst(labels, p, thr, a.n)):
        for rank, i in enumerate(pos, 1):
            pmg = raw.loc[t["id"][i], "p_mg"]
            comp = companion(raw.loc[t["id"][i]].to_dict() | {"ra": t["ra"][i], "dec": t["dec"][i]})
            j = judged.get(str(t["id"][i]), {})
            rows.append(
                {
                    "kind": kind,
                    "rank": rank,
                    "id": str(t["id"][i]),
                    "split": t["split"][i],
                    "label": "merger" if labels[i] else "non_interacting",
                    "p_merger": round(float(p[i]), 4),
                    "p_mg": "" if pd.isna(pmg) else round(float(pmg), 3),
                    "companion_sep_arcsec": "" if comp is None else round(comp[0], 1),
                    "judgement": j.get("judgement", ""),
                    "note": j.get("note", ""),
                    "_pos": int(i),
                    "_xy": None if comp is None else comp[1:],
                }
            )
        sel = [r for r in rows if r["kind"] == kind]
        what = (
            "false positives (non-mergers, highest p_merger)"
            if kind == "fp"
            else "false negatives (mergers, lowest p_merger)"
        )
        for page in range(0, len(sel), PER_PAGE):
            chunk = sel[page : page + PER_PAGE]
            stamps = [data.stamps[idx[r["_pos"]]] for r in chunk]
            title = f"default engine, {views} view(s), threshold {thr:.4f}: {what}, {page + 1}-{page + len(chunk)}"
            gallery(chunk, stamps, title, out / f"{kind}-{page // PER_PAGE + 1}.png")
    fields = ["kind", "rank", "id", "split", "label", "p_merger", "p_mg", "companion_sep_arcsec", "judgement", "note"]
    with open(out / "audit.csv", "w", newline="") as fh:
        w = csv.DictWriter(fh, fields, extrasaction="ignore")
        w.writeheader()
        w.writerows(rows)
    test = t["split"].to_numpy() == "test"

    def dropped(kinds: tuple[str, ...]) -> np.ndarray:
        ids = {r["id"] for r in rows if r["judgement"] in kinds}
        return np.array([str(i) in ids for i in t["id"]]) & test

    # GZ1 merger vote fraction: the audited false positives against every val+test non-merger
    pmg_all = raw.loc[t["id"][labels == 0], "p_mg"].to_numpy(float)
    pmg = {
        "all_non_mergers_val_test": {"n": len(pmg_all), "median": round(float(np.median(pmg_all)), 3)},
        **{
            j: {
                "n": len(v := [float(r["p_mg"]) for r in rows if r["kind"] == "fp" and r["judgement"] == j]),
                "median": round(float(np.median(v)), 3) if v else None,
            }
            for j in ("label error", "model error", "ambiguous")
        },
        "share_p_mg_at_least_0.1": {
            "all_non_mergers_val_test": round(float((pmg_all >= 0.1).mean()), 3),
            "false_positives": round(float(np.mean([float(r["p_mg"]) >= 0.1 for r in rows if r["kind"] == "fp"])), 3),
        },
    }
    counts = {
        k: {
            j: sum(r["judgement"] == j for r in rows if r["kind"] == k)
            for j in ("label error", "model error", "ambiguous", "")
        }
        for k in ("fp", "fn")
    }
    write_result(
        out / "summary.json",
        {
            "machine": {"cpu": cpu_model()},
            "engine_threshold": thr,
            "views": views,
            "n_val": int((~test).sum()),
            "n_test": int(test.sum()),
            "errors_at_threshold": {
                "val": {
                    "fp": int(((p >= thr) & (labels == 0) & ~test).sum()),
                    "fn": int(((p < thr) & (labels == 1) & ~test).sum()),
                },
                "test": {
                    "fp": int(((p >= thr) & (labels == 0) & test).sum()),
                    "fn": int(((p < thr) & (labels == 1) & test).sum()),
                },
            },
            "judgements": counts,
            "p_mg_of_false_positives": pmg,
            "test_split": measured_and_cleaned(labels[test], p[test], thr, dropped(("label error",))[test]),
            "test_split_upper_bound_also_without_ambiguous": measured_and_cleaned(
                labels[test], p[test], thr, dropped(("label error", "ambiguous"))[test]
            )["without_audited_label_errors"],
        },
    )
    print(f"{len(rows)} audited rows -> {out}; judged: {sum(bool(r['judgement']) for r in rows)}")


if __name__ == "__main__":
    main()
