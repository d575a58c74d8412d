"""Cache for benchmarks/eval_domain.py: the default engine's penultimate features (and logits) on
the 9,520 shared labelled stamps and on every source detected in the six shared frames (cut with
the frames source).  Heavy (a few CPU minutes): run once, niced; results in .cache/domain/.

    nice -n 15 .venv/bin/python benchmarks/domain_cache.py [--engine FILE]
"""

from __future__ import annotations

import argparse

import numpy as np
import pandas as pd

from _common import REPO, shared_data

CACHE = REPO / ".cache" / "domain"
GZ = shared_data("sdss-gz-mergers")
FRAMES = shared_data("sdss-frames")


def labelled():
    """The shared labelled set with the training code's split (seed 0): (table, uint8 stamps)."""
    from mergerscan.training.data import build_labelled_set

    ls = build_labelled_set(GZ / "catalog.csv", seed=0, cache=REPO / ".cache" / "mergerscan")
    return ls.table, ls.stamps


def frame_sources(spec) -> tuple[pd.DataFrame, np.ndarray]:
    """Every source detect_sources finds in the six shared r frames, cut by the frames source."""
    from mergerscan.cutouts.detect import detect_sources
    from mergerscan.cutouts.frames import FrameSource

    rows = []
    for f in sorted(FRAMES.glob("frame-r-*.fits.bz2")):
        det = detect_sources(f)
        field = f.name[len("frame-r-") : -len(".fits.bz2")]
        rows.append(
            pd.DataFrame({"ra": det[:, 0], "dec": det[:, 1], "area": det[:, 2], "flux": det[:, 3], "field": field})
        )
    t = pd.concat(rows, ignore_index=True)
    t["id"] = [f"s{i}" for i in range(len(t))]
    src = FrameSource(FRAMES, spec, index_cache=str(CACHE / "frame-index.json"), max_fields=6)
    stamps, status = src.fetch(t[["id", "ra", "dec"]])
    src.close()
    t["status"] = status
    return t, stamps


def main():
    from mergerscan.engines import default_engine_path
    from mergerscan.engines.base import read_engine_info
    from mergerscan.training.representation import extract

    ap = argparse.ArgumentParser()
    ap.add_argument("--engine", default=None)
    a = ap.parse_args()
    engine = a.engine or str(default_engine_path())
    CACHE.mkdir(parents=True, exist_ok=True)
    ft = CACHE / "frames.parquet"
    if not ft.exists():
        t, stamps = frame_sources(read_engine_info(engine).spec)
        np.save(CACHE / "frames-stamps.npy", stamps)
        t.to_parquet(ft)
    t = pd.read_parquet(ft)
    stamps = np.load(CACHE / "frames-stamps.npy")
    print(len(t), t["status"].value_counts().to_dict(), flush=True)
    np.savez(CACHE / "frames-features.npz", **extract(engine, stamps))
    table, gz = labelled()
    table.to_parquet(CACHE / "gz.parquet")
    np.savez(CACHE / "gz-features.npz", **extract(engine, gz))
    print("done", flush=True)


if __name__ == "__main__":
    main()
