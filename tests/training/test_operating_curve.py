"""The validation operating curve in the engine card: ``mergerscan calibrate`` writes it, and
``mergerscan operating-curve`` adds it to an existing card (metadata only, idempotent), with the
counts the engine's own p_merger gives on the validation split at each calibrated view count."""

from __future__ import annotations

import hashlib
import itertools

import numpy as np
import onnx

from mergerscan.cli import main
from mergerscan.engines import load_engine
from mergerscan.engines.card import EngineCard
from mergerscan.engines.engine_file import read_card, write_metadata
from mergerscan.engines.operating import CURVE_KEY, card_curve, for_engine
from mergerscan.training.data import build_labelled_set


def _graph(path) -> str:
    return hashlib.sha256(onnx.load(str(path)).graph.SerializeToString()).hexdigest()


def test_calibrate_and_operating_curve_write_the_engines_validation_counts(tmp_path, capsys):
    from test_training import _labelled_dir, _tiny_engine

    eng = _tiny_engine(tmp_path / "tiny.onnx")
    data = _labelled_dir(tmp_path / "data", n=60)
    cache = str(tmp_path / "c")
    # ENGINE --data CATALOG: the spellings of earlier versions, still read
    base = ["--data", str(data), "--cache", cache, "--threads", "1"]
    main(["calibrate", str(eng), *base, "-o", str(tmp_path / "cal.onnx"), "--views", "1", "2"])
    card = read_card(tmp_path / "cal.onnx")
    assert set(card[CURVE_KEY]["by_views"]) == {"1", "2"}
    ds = build_labelled_set(data / "catalog.csv", cache=cache)
    va = ds.indices("val")
    y = ds.table["label"].to_numpy()[va].astype(bool)
    for n in (1, 2):
        e = load_engine(tmp_path / "cal.onnx", views=n)
        p = e.predict(np.asarray(ds.stamps[va]))
        curve = card_curve(EngineCard.from_dict(card), n)
        assert (curve.n_pos, curve.n_neg) == (y.sum(), (~y).sum())
        # between two validation scores (the engine's own preprocessing path may differ by ~1e-7)
        th = curve.thresholds.astype(np.float64)
        mids = [(a + b) / 2 for a, b in itertools.pairwise(th) if a - b > 1e-5]
        assert len(mids) > 5
        for t in mids:
            assert curve.counts_at(t) == ((p[y] >= t).sum(), (p[~y] >= t).sum())
        op = for_engine(e.info)  # the card's own threshold, stated on the curve
        t, near = e.info.threshold, np.abs(p - e.info.threshold) < 1e-5
        for got, cls in zip((op.tp, op.fp), (y, ~y)):
            assert ((p >= t) & cls & ~near).sum() <= got <= (((p >= t) | near) & cls).sum()

    # an existing card without a curve: metadata only, the same curve, and re-running changes nothing
    plain = card | {CURVE_KEY: None}
    plain.pop(CURVE_KEY)
    write_metadata(tmp_path / "cal.onnx", tmp_path / "plain.onnx", card=plain)
    assert CURVE_KEY not in read_card(tmp_path / "plain.onnx")
    main(["operating-curve", str(tmp_path / "plain.onnx"), *base])
    again = read_card(tmp_path / "plain.onnx")
    assert again[CURVE_KEY]["by_views"] == card[CURVE_KEY]["by_views"]
    assert {k: v for k, v in again.items() if k != CURVE_KEY} == plain
    assert _graph(tmp_path / "plain.onnx") == _graph(eng)
    before = (tmp_path / "plain.onnx").read_bytes()
    main(["operating-curve", str(tmp_path / "plain.onnx"), *base])
    assert (tmp_path / "plain.onnx").read_bytes() == before
