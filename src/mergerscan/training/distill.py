"""Distillation: a teacher engine's calibrated merger probabilities as soft training targets.

``mergerscan train --distill TEACHER.onnx|default --distill-weight A`` trains on the target
``(1 - A) * label + A * p_teacher``, where ``p_teacher`` is the teacher engine's calibrated
probability over all its test-time views (e.g. the multi-view default engine, so a 1-view student can
learn what the views see).  Binary cross-entropy is linear in its target, so this is exactly
``(1 - A) * BCE(label) + A * BCE(p_teacher)``, ``pos_weight`` included.  Only training rows get
soft targets: validation (early stopping, temperature, threshold) and test use the labels, so
every reported figure is against the labels.

The teacher must have been trained on the same object-disjoint split (its card's data hash equals
this run's): a teacher that saw this run's validation or test galaxies would leak their labels.
Its probabilities are computed once and kept in ``OUT/teacher.npz`` keyed by the teacher file's
SHA-256 and the data hash, so ``--resume`` trains on the same targets.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..atomic import atomic_path
from ..engines import default_engine_path, load_engine
from ..engines.base import read_engine_info

TEACHER_FILE = "teacher.npz"


class DistillError(ValueError):
    """A teacher that cannot be used for this run; one line."""


def teacher_probabilities(teacher: str | Path, stamps, rows: np.ndarray, threads: int, batch: int = 64) -> np.ndarray:
    """The teacher engine's calibrated probability for ``stamps[rows]`` (all of its views)."""
    eng = load_engine(teacher, threads=threads)
    try:
        out = [eng.predict(np.asarray(stamps[rows[i : i + batch]])) for i in range(0, len(rows), batch)]
    finally:
        eng.close()
    return np.concatenate(out).astype(np.float32) if out else np.zeros(0, np.float32)


def soft_targets(
    teacher: str | Path, weight: float, data, train_rows: np.ndarray, out: Path, threads: int
) -> tuple[np.ndarray, dict]:
    """Per-row training targets (labels everywhere, mixed with the teacher on ``train_rows``) and
    a record of the teacher for the history and the card."""
    path = default_engine_path() if str(teacher) == "default" else Path(teacher)
    if not path.is_file():
        raise DistillError(f"--distill {teacher}: no such engine file")
    info = read_engine_info(path)
    teacher_hash = info.card.training.data_hash
    if teacher_hash != data.data_hash:
        raise DistillError(
            f"--distill {teacher}: the teacher was trained on data hash {teacher_hash!r}, this run's split is "
            f"{data.data_hash!r}; a teacher from another split may have seen this run's validation or test galaxies"
        )
    sha = info.sha256
    labels = data.table["label"].to_numpy().astype(np.float32)
    cache = out / TEACHER_FILE
    p = None
    if cache.is_file():
        with np.load(cache, allow_pickle=False) as z:
            if (
                str(z["sha256"]) == sha
                and str(z["data_hash"]) == data.data_hash
                and np.array_equal(z["rows"], train_rows)
            ):
                p = z["p"]
    if p is None:
        p = teacher_probabilities(path, data.stamps, train_rows, threads)
        with atomic_path(cache) as tmp, open(tmp, "wb") as fh:
            np.savez(fh, sha256=sha, data_hash=data.data_hash, rows=train_rows, p=p)
    targets = labels.copy()
    targets[train_rows] = (1.0 - weight) * labels[train_rows] + weight * p
    from .evaluate import roc_auc

    record = {
        "teacher": info.card.name or path.name,
        "teacher_sha256": sha,
        "teacher_views": info.views,
        "weight": weight,
        "teacher_train_roc_auc": roc_auc(labels[train_rows], p),
    }
    return targets, record
