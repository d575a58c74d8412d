"""Per-view calibration of an engine file (``mergerscan calibrate CATALOG --engine ENGINE``).

For each test-time view count (1, 2, 4, 8 dihedral views: the mean logit the engines compute),
the temperature and threshold are fitted on the validation split and the test split is evaluated
once, with :func:`mergerscan.training.evaluate.calibrate_and_summarize` (the sequence training
uses).  The result goes into a copy of the engine's card (written atomically): ``by_views``
(temperature, threshold, validation macro F1, test metrics per count), and as the default
``views`` the count with the best validation macro F1 (ties: fewer views), and ``val_curve``, the
validation operating curve of every count (:mod:`mergerscan.engines.operating`: what
``process-catalog --purity/--completeness`` reads).  The weights and the preprocessing spec are
unchanged.  This is how the shipped default engine's card is made.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..cutouts.preprocess import prepare_batch
from ..engines import load_engine
from ..engines.base import VIEWS, dihedral_views
from ..engines.card import EngineCard
from ..engines.engine_file import read_card, write_metadata
from ..engines.operating import Curve, curve_card_updates
from . import evaluate as ev
from . import survey

VIEWS_RULE = "test-time views: mean logit over the dihedral views; count = best validation macro F1"
FIXED_VIEWS_RULE = "test-time views: mean logit over the dihedral views; count fixed at {n} (a CPU-cost budget)"


def all_view_logits(engine, stamps: np.ndarray, batch: int = 32, views: int = 8) -> np.ndarray:
    """(views, N) logits of every stamp under each of the dihedral views ``VIEWS[views]``, in that order."""
    out = []
    for i in range(0, len(stamps), batch):
        x = prepare_batch(np.asarray(stamps[i : i + batch]), engine.spec)
        out.append(engine.logits(dihedral_views(x, views)).reshape(views, len(x)))
    return np.concatenate(out, axis=1) if out else np.zeros((views, 0), np.float32)


def mean_of_views(z: np.ndarray, n: int) -> np.ndarray:
    """The mean logit over the ``n``-view set, from (views, N) logits in the order ``VIEWS[len(z)]``
    (``VIEWS[n]`` is a subset of ``VIEWS[m]`` for n <= m)."""
    order = VIEWS[len(z)]
    return z[[order.index(v) for v in VIEWS[n]]].mean(0)


def calibrate_views(engine, stamps: np.ndarray, labels: np.ndarray, splits: np.ndarray, views=tuple(VIEWS)) -> dict:
    """{view count: Calibration} fitted on ``splits == "val"``, evaluated on ``"test"``."""
    views = tuple(sorted({int(v) for v in views}))
    if bad := [v for v in views if v not in VIEWS]:
        raise ValueError(f"--views {bad[0]}: choose from {', '.join(map(str, VIEWS))}")
    z, y = {}, {}
    for split in ("val", "test"):
        idx = np.flatnonzero(np.asarray(splits) == split)
        if len(idx) == 0 or len(set(np.asarray(labels)[idx])) < 2:
            raise ValueError(f"the {split} split needs objects of both classes to calibrate on")
        # only the views the largest count needs (VIEWS[n] is a subset of VIEWS[m] for n <= m)
        y[split], z[split] = np.asarray(labels)[idx], all_view_logits(engine, stamps[idx], views=max(views))
    return {
        n: ev.calibrate_and_summarize(y["val"], mean_of_views(z["val"], n), y["test"], mean_of_views(z["test"], n))
        for n in views
    }


def _test_metrics(m: dict) -> dict:
    return {
        "macro_f1": round(m["macro"]["f1"], 4),
        "merger_f1": round(m["merger"]["f1"], 4),
        "roc_auc": round(m["roc_auc"], 4),
        "pr_auc": round(m["pr_auc"], 4),
        "precision_at_2pct": round(m["precision_at_2pct"], 4),
    }


def card_updates(cals: dict, default_views: int | None = None) -> dict:
    """The card entries for per-view calibrations (as :func:`calibrate_views` returns them).  The
    default count is the best on validation macro F1, or ``default_views`` when the caller fixes it
    (a cost budget: the other counts stay calibrated for users who choose ``--views``)."""
    best = default_views or max(cals, key=lambda n: (round(cals[n].val["macro"]["f1"], 4), -n))
    by = {
        str(n): {
            "temperature": float(c.temperature),
            "threshold": round(float(c.threshold), 4),
            "val_macro_f1": round(c.val["macro"]["f1"], 4),
            "test": _test_metrics(c.test),
        }
        for n, c in cals.items()
    }
    b, m = by[str(best)], cals[best].test
    metrics = {
        "roc_auc": m["roc_auc"],
        "pr_auc": m["pr_auc"],
        "precision_at_2pct": m["precision_at_2pct"],
        "ece": m["ece"],
        "threshold": b["threshold"],
        "macro_f1": m["macro"]["f1"],
        "merger_f1": m["merger"]["f1"],
        "merger_precision": m["merger"]["precision"],
        "merger_recall": m["merger"]["recall"],
        "views": best,
    }
    return {
        "metrics_test": metrics,
        "views": best,
        "by_views": by,
        "threshold": b["threshold"],
        "temperature": b["temperature"],
        "views_rule": FIXED_VIEWS_RULE.format(n=best) if default_views else VIEWS_RULE,
    }


def calibrate_engine(
    engine_path: str | Path,
    catalog: str | Path,
    out_path: str | Path,
    views=tuple(VIEWS),
    threads: int = 2,
    cache: str | Path | None = None,
    split_seed: int = 0,
    limit_per_class: int | None = None,
    eval_dir: str | Path | None = None,
    default_views: int | None = None,
) -> dict:
    """Calibrate ``engine_path`` on a labelled catalog (its object-disjoint val/test splits) and
    write the calibrated copy to ``out_path``.  Returns a JSON-ready summary."""
    from .data import build_labelled_set

    if default_views is not None and default_views not in {int(v) for v in views}:  # before minutes of work
        raise ValueError(f"--default-views {default_views} is not among --views {' '.join(map(str, views))}")
    engine = load_engine(engine_path, threads=threads, views=1)
    data = build_labelled_set(catalog, seed=split_seed, cache=cache, limit_per_class=limit_per_class)
    t = data.table
    cals = calibrate_views(engine, data.stamps, t["label"].to_numpy(), t["split"].to_numpy(), views)
    updates = card_updates(cals, default_views)
    y_val = t["label"].to_numpy()[data.indices("val")]
    curves = {n: Curve.from_scores(y_val, c.p_val) for n, c in cals.items()}
    updates |= curve_card_updates(curves, survey.curve_source(data.data_hash, split_seed))
    card = read_card(engine_path) | updates  # the JSON of the card written (read before: out may be the input)
    write_metadata(engine_path, out_path, card_updates=updates)
    if eval_dir is not None:
        write_evaluation(eval_dir, card, data, cals[updates["views"]], updates["threshold"])
    return {
        "engine": engine.info.name,
        "data_hash": data.data_hash,
        "out": str(out_path),
        "default_views": updates["views"],
        **{
            f"views_{n}": {
                "temperature": float(c.temperature),
                "threshold": round(float(c.threshold), 4),
                "val_macro_f1": c.val["macro"]["f1"],
                "test": c.test,
            }
            for n, c in cals.items()
        },
    }


def _title(card: EngineCard) -> str:
    return f"{card.name or ''} ({card.default_views} views)"


def write_evaluation(eval_dir: str | Path, card: dict, data, cal, threshold: float) -> Path:
    """An evaluation directory of one calibrated view count, laid out as a training run's
    (metrics.json last, plots, test_scores.npz), so ``mergerscan report DIR`` renders it."""
    from ..atomic import atomic_path, atomic_write_json

    out = Path(eval_dir)
    out.mkdir(parents=True, exist_ok=True)
    t = data.table
    te, va = data.indices("test"), data.indices("val")
    labels = t["label"].to_numpy()
    test = ev.summarize(labels[te], cal.p_test, threshold)  # at the threshold the engine ships with
    ev.plot_all(labels[te], cal.p_test, test, out, title=_title(EngineCard.from_dict(card)))
    with atomic_path(out / "test_scores.npz") as tmp, open(tmp, "wb") as fh:
        np.savez(fh, id=t["id"].to_numpy()[te].astype(str), y=labels[te], p=cal.p_test)
    result = {"card": card, "test": test, "val": ev.summarize(labels[va], cal.p_val, threshold)}
    result |= survey.report_entries(t.iloc[te], labels[va], cal.p_val, cal.p_test, threshold)
    atomic_write_json(out / "metrics.json", result, indent=1, default=float)
    return out
