"""The image check's saturated-core rule: a bright star's core saturates the stretch (its diffraction
spikes look like tidal features to the network); the training galaxies' cores almost never do.
Counted on the uint8 stamp (engines.domain.saturated_core), so every backend gives the same integer."""

from __future__ import annotations

import json

import fitsio
import numpy as np
import pandas as pd
import pytest
from PIL import Image

from conftest import assert_fits_equals_parquet, read_out, run_cli
from mergerscan.engines import default_engine_path, read_engine_info
from mergerscan.engines.domain import CORE_BOX, saturated_core


def test_saturated_core_counts_the_central_box_only():
    st = np.zeros((4, 64, 64, 3), np.uint8)
    st[1, 30:35, 30:35] = 255  # 25 saturated pixels in the centre
    st[2, :5, :5] = 255  # saturated, but in a corner
    st[3, 32, 32, 2] = 250  # one channel at the level counts
    assert saturated_core(st).tolist() == [0, 25, 0, 1]
    st[1, 32 - CORE_BOX : 32 + CORE_BOX, 32 - CORE_BOX : 32 + CORE_BOX] = 255
    assert saturated_core(st[1:2])[0] == CORE_BOX * CORE_BOX


def test_packaged_engine_card_has_a_saturation_limit_from_validation():
    image = read_engine_info(default_engine_path()).domain.image
    assert image is not None and image.max_saturated_core is not None and 5 <= image.max_saturated_core <= 60


def _star(stamp: np.ndarray) -> np.ndarray:
    """A real stamp with a saturated star core and spikes painted on its centre."""
    s = stamp.copy()
    yy, xx = np.mgrid[:256, :256] - 128
    s[np.hypot(yy, xx) < 7] = 255
    s[126:130, 80:176] = 255
    s[80:176, 126:130] = 255
    return s


@pytest.mark.shared
def test_a_saturated_core_is_outside_the_domain_and_never_a_merger(real_stamps, dask_client, tmp_path, capsys):
    d = tmp_path / "stamps"
    d.mkdir()
    stamps = [*real_stamps[:6], _star(real_stamps[0])]
    ids = [f"g{i}" for i in range(6)] + ["star"]
    for i, s in zip(ids, stamps):
        Image.fromarray(s).save(d / f"{i}.png")
    pd.DataFrame({"id": ids, "ra": np.linspace(150, 150.01, 7), "dec": 2.0}).to_csv(tmp_path / "cat.csv", index=False)
    limit = read_engine_info(default_engine_path()).domain.image.max_saturated_core
    out = tmp_path / "out"
    rc, stdout, _ = run_cli(dask_client, tmp_path / "cat.csv", "--images", d, "-o", out, capsys=capsys)
    assert rc == 0
    got = read_out(out).set_index("id")
    assert got.loc["star", "saturated_core"] > limit and not got.loc["star", "in_domain"]
    assert not got.loc["star", "is_merger"] and np.isfinite(got.loc["star", "p_merger"])  # the score is kept
    assert (got.drop(index="star")["saturated_core"] <= limit).all()
    assert got["saturated_core"].tolist() == saturated_core(np.stack(stamps)).tolist()
    assert_fits_equals_parquet(out)
    assert fitsio.read_header(str(out / "mergers.fits"), ext="MERGERS")["DOMSAT"] == limit
    summary = json.loads((out / "summary.json").read_text())
    assert summary["domain"]["max_saturated_core"] == limit
    assert summary["domain_rules"].get(f"saturated_core > {limit} px (image check; scored, never is_merger)") == 1
    assert f"saturated_core > {limit} px" in stdout
    rc, _, _ = run_cli(dask_client, tmp_path / "cat.csv", "--images", d, "-o", tmp_path / "off", "--domain", "off")
    off = read_out(tmp_path / "off").set_index("id")
    assert rc == 0 and off["in_domain"].all() and off.loc["star", "saturated_core"] == got.loc["star", "saturated_core"]
