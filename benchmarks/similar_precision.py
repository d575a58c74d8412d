"""Neighbour precision through ``mergerscan similar`` on a process-catalog run: for every row whose
truth column is 1, the share of its k nearest rows (self excluded) whose truth is 1; the mean and a
bootstrap 95 % interval over the queries.  Issue 38's bar: mean >= 0.85 at k = 10 on the test split.

    process-catalog test.csv --images DIR --keep-columns truth --embeddings -o OUT
    python benchmarks/similar_precision.py OUT --truth-column truth

The vectors are the engine's own ``embedding`` column (``--embeddings``).  The stand-in that put
``bench_neighbours.py``'s features into a run (``--attach``) was dropped with that script once
the column came from the pipeline (docs/results.md, "Where the scripts went").
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from _common import RESULTS, shared_data
from mergerscan.atomic import atomic_write_json
from mergerscan.similar import open_run, similar


def write_test_split(path: Path) -> None:
    """The study's seed-0 test split (id, ra, dec, truth) as a catalog for process-catalog."""
    from mergerscan.training.data import read_labelled_catalog, with_splits

    t = with_splits(read_labelled_catalog(shared_data("sdss-gz-mergers") / "catalog.csv"), seed=0)
    t = t[t["split"] == "test"][["id", "ra", "dec", "label"]].rename(columns={"label": "truth"})
    path.parent.mkdir(parents=True, exist_ok=True)
    t.to_csv(path, index=False)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("out", help="process-catalog OUT with an embedding column and the truth column")
    ap.add_argument("--write-test-split", metavar="CSV", help="only write the test-split catalog to CSV and stop")
    ap.add_argument("--truth-column", default="truth")
    ap.add_argument("--k", type=int, default=10)
    ap.add_argument("--name", default="similar-precision")
    a = ap.parse_args(argv)
    if a.write_test_split:
        write_test_split(Path(a.write_test_split))
        return 0
    out = Path(a.out)
    run = open_run(out)
    rows = pa.concat_tables(
        [pq.read_table(f, columns=["id", a.truth_column, "embedding"]) for f in run.files]
    ).to_pandas()
    rows = rows[rows["embedding"].notna()]
    truth = dict(zip(rows["id"].astype(str), rows[a.truth_column].astype(int)))
    t0 = time.time()
    per = []
    for q in rows["id"][rows[a.truth_column] == 1].astype(str):
        nb = similar(out, q, k=a.k).neighbours
        per.append(np.mean([truth[i] for i in nb["id"].astype(str)]))
    per = np.array(per)
    rng = np.random.default_rng(0)
    boots = [per[rng.integers(0, len(per), len(per))].mean() for _ in range(2000)]
    doc = {
        "run": str(out),
        "rows_with_embedding": len(rows),
        "queries": len(per),
        "k": a.k,
        "mean_precision": round(float(per.mean()), 4),
        "ci95": np.round(np.percentile(boots, [2.5, 97.5]), 4).tolist(),
        "seconds_per_query": round((time.time() - t0) / max(1, len(per)), 4),
        "index": json.loads((out / "similar" / "index.json").read_text()),
    }
    atomic_write_json(RESULTS / f"{a.name}.json", doc, indent=1)
    print(json.dumps({k: doc[k] for k in ("queries", "k", "mean_precision", "ci95", "seconds_per_query")}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
