"""The training selection recorded in an engine card: derived from the training catalog's own
columns on top of the Galaxy Zoo 1 main-sample limits, written as metadata only (the scores do not
change), idempotent, and an image check already in the card is kept."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from mergerscan.engines import load_engine, read_engine_info
from mergerscan.engines.engine_file import read_card, write_metadata
from mergerscan.training.domain import GZ1_MAIN_SAMPLE, main, training_selection


def test_selection_from_the_catalog_columns(tmp_path):
    cat = pd.DataFrame({"id": ["a", "b", "c", "d"], "Redshift": [0.0123, 0.0987, np.nan, -9999.0]})
    cat.to_csv(tmp_path / "cat.csv", index=False)
    sel = training_selection(tmp_path / "cat.csv")
    assert (sel.redshift_min, sel.redshift_max) == (0.012, 0.099)  # rounded outward; NaN, sentinel left out
    assert sel.mag_max == 17.77 and sel.mag_dereddened and sel.object_class == "galaxy"
    assert "cat.csv" in sel.reference and "Strauss" in sel.reference
    pd.DataFrame({"id": ["a"]}).to_csv(tmp_path / "bare.csv", index=False)
    assert training_selection(tmp_path / "bare.csv").redshift_max is None  # no column: no limit invented


def test_recorded_as_metadata_only_and_idempotent(tmp_path, cheap_engine, real_stamps, capsys):
    engine = tmp_path / "e.onnx"
    image = {"score": "knn", "threshold": 1.5}
    write_metadata(cheap_engine, engine, card_updates={"domain": {"image": image}})
    pd.DataFrame({"id": ["a", "b"], "z": [0.02, 0.08]}).to_csv(tmp_path / "cat.csv", index=False)
    before = load_engine(engine).predict(real_stamps)
    assert main([str(engine), "--catalog", str(tmp_path / "cat.csv")]) == 0
    sha = read_engine_info(engine).sha256
    assert main([str(engine), "--catalog", str(tmp_path / "cat.csv")]) == 0
    assert read_engine_info(engine).sha256 == sha  # idempotent
    np.testing.assert_array_equal(load_engine(engine).predict(real_stamps), before)
    dom = read_engine_info(engine).domain
    assert dom.image is not None and dom.image.threshold == 1.5  # the image half is kept
    assert dom.selection.redshift_max == 0.08 and dom.selection.mag_max == GZ1_MAIN_SAMPLE.mag_max
    assert read_card(engine)["domain"]["selection"]["object_class"] == "galaxy"


def test_engine_info_shows_the_domain(tmp_path, cheap_engine, capsys):
    from mergerscan.cli import main as mergerscan

    pd.DataFrame({"id": ["a"], "z": [0.05]}).to_csv(tmp_path / "cat.csv", index=False)
    main([str(cheap_engine), "--catalog", str(tmp_path / "cat.csv"), "-o", str(tmp_path / "e.onnx")])
    capsys.readouterr()
    assert mergerscan(["engine-info", str(tmp_path / "e.onnx")]) == 0
    out = capsys.readouterr().out
    assert "domain        galaxy; petro r <= 17.77 (extinction-corrected); 0.05 <= z <= 0.05" in out
    assert "image check   none" in out
    with pytest.raises(SystemExit) as e:
        mergerscan(["engine-info", str(tmp_path / "missing.onnx")])
    assert e.value.code == 2
