"""Frame reads of one sky partition: rows in catalog order vs in spatial (HEALPix) order.

A partition's rows are scored in batches (``--batch-size``) through one FrameSource whose frame
cache holds ``max_fields`` fields (default 4).  In catalog order every batch touches every field of
the partition and the cache thrashes; the pipeline therefore scores a partition's rows in nested
HEALPix order (pipeline/task.py).  This measures both on the 6 shared SDSS fields (200 positions
per field as in bench_cutouts.py, 1,200 rows = one partition, batches of 128): fields read
(each = 3 bz2 frames decompressed) and CPU seconds.

    nice -n 10 .venv/bin/python benchmarks/bench_frame_order.py
Writes benchmarks/results/frame_order.json.  Needs ../shared/data/sdss-frames.
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from pathlib import Path

import numpy as np

from _common import result_path, shared_data, write_result


def main():
    from bench_cutouts import machine, positions
    from mergerscan.cutouts import frames as F
    from mergerscan.cutouts.preprocess import PreprocessSpec
    from mergerscan.pipeline.plan import healpix29

    frames = shared_data("sdss-frames")
    res = {"machine": machine(), "loadavg_start": os.getloadavg(), "batch": 128, "max_fields": 4, "runs": {}}
    with tempfile.TemporaryDirectory() as tmp:
        cache = Path(tmp) / "index.json"
        F.build_frame_index(frames, cache=cache)
        spec = PreprocessSpec()
        probe = F.FrameSource(frames, spec, index_cache=cache)
        rows = positions(probe, 200)[["id", "ra", "dec"]]
        probe.close()
        hpx = healpix29(rows["ra"].to_numpy(), rows["dec"].to_numpy(), np.ones(len(rows), bool))
        orders = {"catalog order": np.arange(len(rows)), "HEALPix order": np.argsort(hpx, kind="stable")}
        out = {}
        for name, order in orders.items():
            src = F.FrameSource(frames, spec, index_cache=cache, max_fields=4)
            t, c = time.perf_counter(), time.process_time()
            stamps = np.empty((len(rows), spec.stamp_pixels, spec.stamp_pixels, 3), np.uint8)
            for i in range(0, len(rows), 128):
                idx = order[i : i + 128]
                stamps[idx], _ = src.fetch(rows.iloc[idx].reset_index(drop=True))
            w, c = time.perf_counter() - t, time.process_time() - c
            res["runs"][name] = {
                "fields_read": src.stats["fields_read"],
                "wall_s": round(w, 2),
                "cpu_s": round(c, 2),
                "objects_per_cpu_s": round(len(rows) / c, 1),
            }
            out[name] = stamps
            src.close()
        assert np.array_equal(*out.values()), "the order must not change the stamps"
    res["objects"] = len(rows)
    res["fields"] = 6
    res["loadavg_end"] = os.getloadavg()
    write_result(result_path("frame_order.json"), res)
    print(json.dumps(res["runs"], indent=1))


if __name__ == "__main__":
    main()
