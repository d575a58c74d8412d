"""``python -m mergerscan.training.representation``: fit the representation block on the training
split, calibrate the image-domain threshold on validation, embed both; p_merger unchanged."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from conftest import make_stamps
from mergerscan.engines import load_engine
from mergerscan.engines.engine_file import read_card


@pytest.fixture(scope="module")
def labelled(tmp_path_factory):
    root = tmp_path_factory.mktemp("labelled")
    ids = [f"G{i}" for i in range(120)]
    make_stamps(root / "images", ids, seed=3)
    pd.DataFrame(
        {
            "id": ids,
            "ra": 10.0 + 0.1 * np.arange(120),
            "dec": 5.0,
            "is_merger": np.arange(120) % 2,
            "image": [f"images/{i}.jpg" for i in ids],
        }
    ).to_csv(root / "catalog.csv", index=False)
    return root / "catalog.csv"


def test_fit_embeds_block_and_threshold(cheap_engine, labelled, tmp_path, capsys):
    from mergerscan.engines.engine_file import write_metadata
    from mergerscan.training.data import build_labelled_set
    from mergerscan.training.representation import main

    selection = {"object_class": "galaxy", "mag_band": "r", "mag_max": 17.77}
    src = write_metadata(cheap_engine, tmp_path / "src.onnx", card_updates={"domain": {"selection": selection}})
    out = tmp_path / "with-block.onnx"
    assert main([str(src), "--catalog", str(labelled), "--out", str(out), "--k", "8"]) == 0
    printed = json.loads(capsys.readouterr().out)
    card = read_card(out)
    rep, image = card["representation"], card["domain"]["image"]
    assert rep["k"] == 8 and rep["features"] == "backbone_pool" and len(rep["explained_variance_ratio"]) == 8
    assert card["domain"]["selection"] == selection  # the other half of the domain is kept
    assert image["threshold"] == printed["threshold"] and card["name"] == read_card(cheap_engine)["name"]
    ls = build_labelled_set(labelled, seed=0)
    va = ls.indices("val")
    eng, plain = load_engine(out, threads=2), load_engine(cheap_engine, threads=2)
    res = eng.score(ls.stamps[va])
    y = ls.table["label"].to_numpy()[va]
    for c in (0, 1):  # at least the pass fraction of each class's validation galaxies pass
        assert np.mean(res.domain_score[y == c] <= eng.info.domain.image.threshold + 1e-4) >= 0.995
    assert np.abs(res.p_merger - plain.predict(ls.stamps[va])).max() <= 1e-6
    # re-running on its own output replaces the block (same threshold, one block)
    again = tmp_path / "again.onnx"
    main([str(out), "--catalog", str(labelled), "--out", str(again), "--k", "8"])
    assert read_card(again)["domain"]["image"]["threshold"] == pytest.approx(image["threshold"], abs=2e-4)


def test_fit_refuses_unknown_features_in_one_line(cheap_engine, labelled, tmp_path, capsys):
    from mergerscan.training.representation import main

    with pytest.raises(SystemExit) as e:
        main([str(cheap_engine), "--catalog", str(labelled), "--out", str(tmp_path / "x.onnx"), "--features", "hidden"])
    err = capsys.readouterr().err.strip().splitlines()
    assert e.value.code == 2 and len(err) == 1 and "features 'hidden' not found" in err[0]
