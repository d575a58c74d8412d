"""On the real test split (shared data): process-catalog with the packaged engine (1 view) writes
p_merger_lo / p_merger_hi as users get them, and they are informative: rows whose interval
straddles the threshold err far more often than rows whose interval lies wholly on one side
(benchmarks/eval_uncertainty.py measured 0.29 against 0.03 and 0.02).  Skipped where ../shared is
absent."""

from __future__ import annotations

import json

import fitsio
import numpy as np
import pandas as pd
import pytest

from conftest import read_out
from mergerscan.engines.uncertainty import CLASSES, interval_class
from mergerscan.pipeline.arguments import ProcessArguments
from mergerscan.pipeline.run import run
from mergerscan.training.data import read_labelled_catalog, with_splits


@pytest.mark.slow
@pytest.mark.shared
def test_interval_is_informative_on_the_test_split(gz_dir, dask_client, tmp_path):
    t = with_splits(read_labelled_catalog(gz_dir / "catalog.csv"), seed=0)  # the card's split
    t = t[t["split"] == "test"].reset_index(drop=True)
    df = pd.DataFrame(
        {
            "objID": 9_000_000_000_000_000_000 + np.arange(len(t), dtype=np.int64),
            "ra": t["ra"].to_numpy(float),
            "dec": t["dec"].to_numpy(float),
            "label": t["label"].to_numpy(np.int16),
            "path": [str(p) for p in t["image"]],
        }
    )
    fitsio.write(str(tmp_path / "test.fits"), df.to_records(index=False), clobber=True)
    out = tmp_path / "out"
    args = ProcessArguments(
        catalog=str(tmp_path / "test.fits"),
        output=str(out),
        images=str(gz_dir),
        keep_columns=["label", "path"],
        path_column="path",
        views=1,
        progress=False,
        report=False,
        command="test",
    )
    s = run(args, client=dask_client)
    got = read_out(out)
    assert (got["status"] == "ok").all()
    p, lo, hi = (got[c].to_numpy(np.float64) for c in ("p_merger", "p_merger_lo", "p_merger_hi"))
    assert ((lo >= 0) & (lo <= p) & (p <= hi) & (hi <= 1)).all()
    fits = fitsio.read(str(out / "mergers.fits"), ext="MERGERS")
    fits = fits[np.argsort(fits["input_row"])]
    np.testing.assert_array_equal(fits["p_merger_lo"], got["p_merger_lo"].to_numpy())
    np.testing.assert_array_equal(fits["p_merger_hi"], got["p_merger_hi"].to_numpy())
    thr = s["threshold"]
    err = (p >= np.float32(thr)) != (got["label"].to_numpy() == 1)
    c = interval_class(lo, hi, thr)
    rate = {name: float(err[c == i].mean()) for i, name in enumerate(CLASSES)}
    counts = {name: [int(err[c == i].sum()), int((c == i).sum())] for i, name in enumerate(CLASSES)}
    print(json.dumps({"threshold": thr, "errors_rows_by_class": counts, "error_rate": rate}))
    assert rate["straddles"] > 4 * max(rate["below"], rate["above"]), counts
    assert rate["below"] < 0.06 and rate["above"] < 0.06, counts
