"""process-catalog with --images on a FITS catalog of all 9,520 shared sdss-gz-mergers objects,
scored with the packaged default engine at its own (validation-chosen) threshold.

Reports precision/recall/F1 per class on all rows (they include the engine's training data, so
these are not a generalisation measure) and on the object-disjoint test split alone.

    .venv/bin/python benchmarks/score_shared_images.py [--engine FILE] [--workers 2]
Writes benchmarks/results/shared_images.json.  Needs ../shared/data.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import fitsio
import numpy as np
import pandas as pd
import pyarrow.parquet as pq

from _common import result_path, shared_data, write_result

GZ = shared_data("sdss-gz-mergers")


def main():
    from mergerscan.catalogs.hats import output_files
    from mergerscan.catalogs.read import read_table
    from mergerscan.pipeline.arguments import ProcessArguments
    from mergerscan.pipeline.run import run
    from mergerscan.training import data as D
    from mergerscan.training import evaluate as ev

    ap = argparse.ArgumentParser()
    ap.add_argument("--engine")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--out", default=str(result_path("shared_images.json")))
    a = ap.parse_args()
    cat = read_table(GZ / "catalog.csv")
    objid = cat["objid"].to_numpy(np.int64).copy()
    objid[objid < 0] = 9_000_000_000_000_000_000 + np.flatnonzero(objid < 0)
    df = pd.DataFrame(
        {
            "objID": objid,
            "ra": cat["ra"].to_numpy(float),
            "dec": cat["dec"].to_numpy(float),
            "label": cat["is_merger"].to_numpy(np.int16),
            "path": cat["image"].astype(str),
        }
    )
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "gz.fits"
        fitsio.write(str(path), df.to_records(index=False), clobber=True)
        t = time.perf_counter()
        s = run(
            ProcessArguments(
                catalog=str(path),
                output=str(Path(tmp) / "out"),
                images=str(GZ),
                engine=a.engine,
                workers=a.workers,
                threads_per_worker=1,
                keep_columns=["label", "path"],
                progress=False,
                command="score_shared_images",
                report=False,
            )
        )
        wall = time.perf_counter() - t
        # the Parquet output is a HATS catalog: its data files, not the directory's other files
        files = [str(f) for f in output_files(Path(tmp) / "out" / "parquet")]
        got = pq.read_table(files).to_pandas().sort_values("input_row")
    assert len(got) == len(df) == s["rows"]
    y, p = got["label"].to_numpy(), got["p_merger"].to_numpy()
    # the training module's object-disjoint split (seed 0), without decoding images
    t = D.with_splits(D.read_labelled_catalog(GZ / "catalog.csv"))
    split_of = dict(zip(t["id"], t["split"]))
    split = np.array([split_of.get(i) for i in cat["id"]]) if "id" in cat else None
    res = {
        "engine": s.get("engine"),
        "threshold": s["threshold"],
        "rows": s["rows"],
        "scored": s["scored"],
        "wall_s": round(wall, 1),
        "all": ev.summarize(y, p, s["threshold"]),
    }
    if split is not None:
        test = split == "test"
        res["test"] = ev.summarize(y[test], p[test], s["threshold"])
    write_result(a.out, res)
    for k in ("all", "test"):
        if k in res:
            m = res[k]
            print(f"{k}: n={int(m['n'])} threshold {s['threshold']:.4f}\n{ev.table1(m)}\nROC-AUC {m['roc_auc']:.4f}")


if __name__ == "__main__":
    main()
