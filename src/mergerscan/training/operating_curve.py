"""Write an engine's validation operating curve into its card, metadata only
(``mergerscan operating-curve CATALOG --engine ENGINE``).

For every view count the card calibrates (``by_views``, else its ``views``), the validation stamps
are scored with the card's own temperature (the p_merger the engine gives, unchanged) and
:class:`mergerscan.engines.operating.Curve` is stored under ``val_curve``
(:func:`~mergerscan.engines.engine_file.write_metadata` with ``card_updates``: composes with other
metadata changes; the weights are untouched).  The validation split is training's (object-disjoint
groups, ``split_seed``); a card that records ``n_val`` must agree with it.  Re-running on the
written file gives the same bytes.  ``mergerscan calibrate`` and ``mergerscan train`` write the
same curve as they calibrate.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np

from ..engines import load_engine
from ..engines.base import sigmoid
from ..engines.engine_file import load_model, write_metadata
from ..engines.operating import Curve, curve_card_updates
from .calibrate import all_view_logits, mean_of_views
from .survey import curve_source


def curves_from_logits(y_val: np.ndarray, z_val: np.ndarray, temperatures: dict[int, float]) -> dict[int, Curve]:
    """{views: Curve} from (views, N) validation logits in the order ``VIEWS[len(z_val)]``."""
    return {
        n: Curve.from_scores(y_val, sigmoid(mean_of_views(z_val.astype(np.float64), n) / t).astype(np.float32))
        for n, t in sorted(temperatures.items())
    }


def _graph_key(path: Path) -> str:
    """The weights' identity (not the file's: writing the curve changes the file's bytes)."""

    return hashlib.sha256(load_model(path).graph.SerializeToString()).hexdigest()[:16]


def _val_logits(engine, path: Path, stamps: np.ndarray, views: int, key: str, cache: str | Path | None) -> np.ndarray:
    f = Path(cache) / f"val-view-logits-{_graph_key(path)}-{key}-{views}.npy" if cache else None
    if f is not None and f.is_file():
        return np.load(f)
    z = all_view_logits(engine, stamps, views=views)
    if f is not None:
        from ..atomic import atomic_path

        f.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(f) as tmp, open(tmp, "wb") as fh:
            np.save(fh, z)
    return z


def write_operating_curve(
    engine_path: str | Path,
    catalog: str | Path,
    out_path: str | Path | None = None,
    split_seed: int = 0,
    cache: str | Path | None = None,
    threads: int = 2,
) -> dict:
    """Score the validation split with ``engine_path`` at each calibrated view count and write the
    curves into the card of ``out_path`` (default: in place).  Returns a JSON-ready summary."""
    from .data import build_labelled_set

    engine_path = Path(engine_path)
    engine = load_engine(engine_path, threads=threads, views=1)
    card = engine.info.card
    counts = sorted(card.calibrated_views())
    temps = {n: engine.info.with_views(n).temperature for n in counts}
    data = build_labelled_set(catalog, seed=split_seed, cache=cache)
    va = data.indices("val")
    if card.training.n_val not in (None, len(va)):
        raise ValueError(
            f"the engine's card says n_val {card.training.n_val}, split seed {split_seed} of {catalog} gives "
            f"{len(va)}: not the split it was calibrated on"
        )
    y = data.table["label"].to_numpy()[va]
    z = _val_logits(engine, engine_path, data.stamps[va], max(counts), f"{data.data_hash}-s{split_seed}", cache)
    curves = curves_from_logits(y, z, temps)
    write_metadata(
        engine_path,
        out_path or engine_path,
        card_updates=curve_card_updates(curves, curve_source(data.data_hash, split_seed)),
    )
    return {
        "engine": engine.info.name,
        "out": str(out_path or engine_path),
        "data_hash": data.data_hash,
        "n_val": len(va),
        "views": {str(n): {"points": len(c.thresholds), "n_pos": c.n_pos, "n_neg": c.n_neg} for n, c in curves.items()},
    }
