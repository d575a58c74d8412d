"""The engine card as a typed, frozen object: read from and written back to the exact JSON an
engine file stores (the packaged engine's included), unknown keys from newer files kept."""

from __future__ import annotations

import copy
import json
from dataclasses import FrozenInstanceError, replace

import numpy as np
import pytest

from mergerscan.engines import EngineCard, default_engine_path, load_engine, read_engine_info
from mergerscan.engines.card import Metrics, ModelConfig, RepresentationCard, ViewCalibration
from mergerscan.engines.domain import DomainSelection, ImageDomain
from mergerscan.engines.engine_file import CARD_KEY, load_metadata, read_card, write_metadata
from mergerscan.engines.operating import card_curve


@pytest.fixture(scope="module")
def packaged():
    """The packaged engine's card as stored: (the JSON text, the dict)."""
    text = load_metadata(default_engine_path())[CARD_KEY]
    return text, json.loads(text)


def test_packaged_card_round_trips_to_identical_json(packaged):
    text, raw = packaged
    card = EngineCard.from_dict(raw)
    assert json.dumps(card.to_dict(), sort_keys=True) == text  # the stored bytes, character for character
    assert card.to_dict() == raw
    # nothing of the released card is left untyped
    assert not card.extra and not card.training.extra and not card.domain.extra
    assert not card.domain.selection.extra and not card.domain.image.extra and not card.representation.extra
    assert not card.model.extra and not card.metrics_test.extra and not card.val_curve.extra
    assert all(not c.extra and not c.test.extra for c in card.by_views.values())
    assert all(not c.extra for c in card.val_curve.by_views.values())


def test_packaged_card_rewritten_leaves_the_engine_file_identical(packaged, tmp_path):
    text, _ = packaged
    info = read_engine_info(default_engine_path())
    out = write_metadata(default_engine_path(), tmp_path / "same.onnx", card=info.card)
    assert load_metadata(out)[CARD_KEY] == text
    assert out.read_bytes() == default_engine_path().read_bytes()


def test_packaged_card_attributes(packaged):
    _, raw = packaged
    card = read_engine_info(default_engine_path()).card
    assert card.name == raw["name"] and card.views == 1 and card.default_views == 1
    assert card.model == ModelConfig(arch="efficientnet_lite0", hidden=256, dropout=0.5)
    assert card.calibrated_views() == {1, 2, 4, 8}
    assert (
        isinstance(card.by_views[4], ViewCalibration)
        and card.by_views[4].threshold == raw["by_views"]["4"]["threshold"]
    )
    assert card.calibration(8).temperature == raw["by_views"]["8"]["temperature"]
    assert isinstance(card.metrics_test, Metrics) and card.metrics_test.roc_auc == raw["metrics_test"]["roc_auc"]
    assert card.training.n_val == 1428 and card.training.data_hash == raw["data_hash"]
    assert isinstance(card.representation, RepresentationCard) and card.n_components == 64
    assert card.representation.explained_variance_ratio == tuple(raw["representation"]["explained_variance_ratio"])
    assert isinstance(card.domain.selection, DomainSelection) and card.domain.selection.mag_max == 17.77
    assert isinstance(card.domain.image, ImageDomain) and card.domain.image.max_saturated_core == 19
    assert card.domain.image.val_pass == raw["domain"]["image"]["val_pass"]
    assert card.file_precision == "fp32"
    curve = card_curve(card, 2)
    assert (curve.n_pos, curve.n_neg) == (raw["val_curve"]["by_views"]["2"]["n_pos"], 1066)
    np.testing.assert_array_equal(curve.tp, raw["val_curve"]["by_views"]["2"]["tp"])
    assert card_curve(card, 3) is None


def test_card_is_frozen_and_the_engine_exposes_it():
    eng = load_engine(default_engine_path())
    assert isinstance(eng.card, EngineCard) and eng.card is eng.info.card and eng.spec is eng.info.spec
    with pytest.raises(FrozenInstanceError):
        eng.card.threshold = 0.1
    with pytest.raises(FrozenInstanceError):
        eng.card.training.n_val = 3
    changed = replace(eng.card, temperature=2.0)
    assert changed.temperature == 2.0 and eng.card.temperature != 2.0


def test_unknown_keys_and_nulls_from_a_newer_card_are_kept(packaged, tmp_path):
    _, raw = packaged
    newer = copy.deepcopy(raw)
    newer["future_block"] = {"a": [1, 2, {"b": None}], "c": "text"}
    newer["command"] = None  # a null stays a null (e.g. a run started from Python without a command)
    newer["model"]["activation"] = "swish"
    newer["by_views"]["2"]["future"] = 1.5
    newer["by_views"]["2"]["test"]["brier"] = 0.01
    newer["domain"]["image"]["future"] = {"x": 1}
    newer["domain"]["selection"]["colour_max"] = 2.5
    newer["domain"]["future_half"] = {"y": 2}
    newer["representation"]["whitened"] = False
    newer["val_curve"]["by_views"]["1"]["future"] = [0.5]
    card = EngineCard.from_dict(newer)
    assert card.extra == {"future_block": newer["future_block"]} and card.training.command is None
    assert card.model.extra == {"activation": "swish"} and card.domain.selection.extra == {"colour_max": 2.5}
    assert card.to_dict() == newer
    assert json.dumps(card.to_dict(), sort_keys=True) == json.dumps(newer, sort_keys=True)
    # an older mergerscan rewriting the card (here: a new temperature) keeps what it does not know
    src = write_metadata(default_engine_path(), tmp_path / "newer.onnx", card=newer)
    info = read_engine_info(src)
    out = write_metadata(src, tmp_path / "rewritten.onnx", card=replace(info.card, temperature=1.5))
    assert read_card(out) == newer | {"temperature": 1.5}


def test_absent_entries_stay_absent_and_defaults_apply():
    card = EngineCard.from_dict({"name": "x"})
    assert card.to_dict() == {"name": "x"}
    assert card.default_views == 1 and card.calibrated_views() == {1}
    assert card.calibration(1) == ViewCalibration() and card.n_components == 0
    assert card.engine_domain.selection is None and card.engine_domain.image is None
    assert EngineCard.from_dict({}).to_dict() == {}
    assert EngineCard.from_dict({"precision": "int8"}).file_precision == "int8"


def test_a_partial_block_round_trips_and_a_block_made_in_code_is_written_whole():
    partial = {"domain": {"selection": {"object_class": "galaxy", "mag_band": "r", "mag_max": 17.77}}}
    card = EngineCard.from_dict(partial)
    assert card.to_dict() == partial
    narrowed = replace(card.domain.selection, mag_max=17.0, redshift_max=0.1)
    assert narrowed.to_dict() == {"object_class": "galaxy", "mag_band": "r", "mag_max": 17.0, "redshift_max": 0.1}
    made = DomainSelection(mag_max=17.77)  # as training writes it: every limit, None ones as null
    assert made.to_dict()["mag_min"] is None and set(made.to_dict()) == DomainSelection.keys()
    assert ImageDomain(score="s", threshold=1.0).to_dict() == {"score": "s", "threshold": 1.0, "description": ""}


def test_the_card_the_output_files_state_is_the_stored_one_less_its_curve(packaged):
    """pipeline.finalize.run_meta's ``model_card``: the Parquet/FITS metadata of a run stays as it was."""
    _, raw = packaged
    card = EngineCard.from_dict(raw)
    less = {k: v for k, v in raw.items() if k != "val_curve"}
    assert json.dumps(card.without_val_curve().to_dict(), sort_keys=True) == json.dumps(less, sort_keys=True)
    assert card.val_curve is not None  # the card itself is unchanged
