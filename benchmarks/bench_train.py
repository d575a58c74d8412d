"""Training-step throughput, before and after issue 14.1, for DenseNet-121 E1 at 128 px.

A (before): the old loop - augmentation and preprocessing of each batch in the main thread, then
the step.  B (after): the same batches from :class:`BatchLoader` (prepared in a thread while the
previous step computes), the step under bf16 autocast + channels_last where the CPU has
AVX512-BF16/AMX (``--bf16 auto``; this is recorded).  Same model, batch size, optimizer and
stamps; blocks of ``--block`` batches alternate A, B, A, B ... until ``--budget-s`` is spent, so
a change of machine load hits both.  B starts its loader per block (as training does per epoch),
so it pays one unoverlapped batch preparation per block.  Real SDSS stamps when ../shared is
present (random stamps otherwise).

    .venv/bin/python benchmarks/bench_train.py [--batch-size 16] [--block 4] [--budget-s 300]
Writes benchmarks/results/train-speed.json.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import statistics
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
SHARED = HERE.parent.parent / "shared" / "data" / "sdss-gz-mergers"


def stamps(n: int) -> tuple[np.ndarray, np.ndarray, str]:
    if (SHARED / "catalog.csv").is_file():
        import pandas as pd

        from mergerscan.training.data import decode_stamps

        cat = pd.read_csv(SHARED / "catalog.csv").sample(n, random_state=0)
        return (
            decode_stamps([str(SHARED / p) for p in cat["image"]]),
            cat["is_merger"].to_numpy(),
            f"{n} real SDSS JPEG stamps (256 px) from {SHARED.name}",
        )
    rng = np.random.default_rng(0)
    return rng.integers(0, 255, (n, 256, 256, 3), dtype=np.uint8), np.arange(n) % 2, f"{n} random stamps"


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--arch", default="densenet121")
    ap.add_argument("--size", type=int, default=128)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--block", type=int, default=4, help="batches per timed block")
    ap.add_argument(
        "--budget-s",
        type=float,
        default=300,
        help="total seconds from start: no A/B pair is started that would end past it",
    )
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--bf16", default="auto", choices=["auto", "on", "off"])
    ap.add_argument("--out", default=str(HERE / "results" / "train-speed.json"))
    a = ap.parse_args(argv)

    import torch

    from mergerscan.atomic import atomic_write_json
    from mergerscan.cutouts.preprocess import PreprocessSpec, prepare_batch
    from mergerscan.models import create_model
    from mergerscan.training.data import augment
    from mergerscan.training.hardware import cpu_flags, cpu_has_bf16, cpu_model, use_bf16
    from mergerscan.training.loader import BatchLoader, epoch_batches
    from mergerscan.training.train import train_step

    t_start = time.perf_counter()
    torch.manual_seed(0)
    torch.set_num_threads(a.threads)
    load_before = os.getloadavg()
    data, labels, what = stamps(256)
    spec = PreprocessSpec(input_size=a.size)
    bf16 = use_bf16(a.bf16)
    pos_weight = torch.tensor(3.0)

    def fresh():
        net = create_model(a.arch).train()
        if bf16:
            net = net.to(memory_format=torch.channels_last)
        return net, torch.optim.SGD(net.parameters(), lr=0.01, momentum=0.9, nesterov=True)

    net_a, opt_a = fresh()
    net_b, opt_b = fresh()
    gen = torch.Generator().manual_seed(0)
    idx = np.arange(len(data))

    def block_a(batches):
        for b in batches:  # the old loop, verbatim in effect
            raw = torch.from_numpy(np.asarray(data[b]))
            x = torch.from_numpy(prepare_batch(augment(raw, gen).numpy(), spec))
            y = torch.from_numpy(labels[b].astype(np.float32))
            train_step(net_a, opt_a, x, y, pos_weight, bf16=False)

    def block_b(batches, k):
        for x, y in BatchLoader(data, labels, batches, spec, 0, 0, k, prefetch=2, channels_last=bf16):
            train_step(net_b, opt_b, x, y, pos_weight, bf16=bf16)

    def batches_for(k):
        return epoch_batches(idx, a.batch_size, 0, 0, k)[: a.block]

    # preparation alone, and one untimed warm-up step per path (oneDNN primitive creation)
    t = time.perf_counter()
    for b in batches_for(999)[:2]:
        prepare_batch(augment(torch.from_numpy(np.asarray(data[b])), gen).numpy(), spec)
    prep_s = (time.perf_counter() - t) / 2
    block_a(batches_for(998)[:1])
    block_b(batches_for(997)[:1], 997)

    def summary(blocks):
        rate = {p: [b["img_per_s"] for b in blocks if b["path"] == p] for p in "AB"}
        total = {
            p: sum(b["images"] for b in blocks if b["path"] == p) / sum(b["seconds"] for b in blocks if b["path"] == p)
            for p in "AB"
        }
        flags = cpu_flags()
        res = {
            "benchmark": "training step throughput (augment + preprocess + forward + backward + SGD step)",
            "command": " ".join(shlex.quote(x) for x in [sys.executable, *sys.argv]),
            "cpu": cpu_model(),
            "cores": os.cpu_count(),
            "threads": a.threads,
            "cpu_flags": sorted(f for f in flags if f.startswith(("avx", "amx", "fma"))),
            "cpu_has_bf16": cpu_has_bf16(flags),
            "bf16_used": bf16,
            "torch": torch.__version__,
            "load_average_before": [round(x, 2) for x in load_before],
            "load_average_after": [round(x, 2) for x in os.getloadavg()],
            "arch": a.arch,
            "input_size": a.size,
            "batch_size": a.batch_size,
            "batches_per_block": a.block,
            "data": what,
            "prep_seconds_per_batch": round(prep_s, 3),
            "A": "before: augmentation + preprocessing in the main thread, fp32",
            "B": "after: BatchLoader thread (prefetch 2)" + (", bf16 autocast + channels_last" if bf16 else ", fp32"),
            "blocks": blocks,
            "img_per_s": {
                p: {
                    "median_block": round(statistics.median(rate[p]), 3),
                    "overall": round(total[p], 3),
                    "blocks": len(rate[p]),
                }
                for p in "AB"
            },
            "speedup_overall": round(total["B"] / total["A"], 4),
        }
        res["wall_seconds"] = round(time.perf_counter() - t_start, 1)
        return res

    blocks, k, pair_s = [], 0, 0.0
    res: dict = {}
    while k < 1 or time.perf_counter() - t_start + pair_s < a.budget_s:
        t_pair = time.perf_counter()
        order = (("A", block_a), ("B", lambda bs, k=k: block_b(bs, k)))
        for path, fn in order if k % 2 == 0 else order[::-1]:  # ABBAAB...: no side always first
            bs = batches_for(k)
            t = time.perf_counter()
            fn(bs)
            dt = time.perf_counter() - t
            n = sum(len(b) for b in bs)
            blocks.append(
                {"path": path, "batches": len(bs), "images": n, "seconds": round(dt, 3), "img_per_s": round(n / dt, 3)}
            )
            print(json.dumps(blocks[-1]), flush=True)
        pair_s = time.perf_counter() - t_pair
        k += 1
        res = summary(blocks)
        atomic_write_json(a.out, res, indent=1)  # after every pair: a kill keeps what was measured
    print(json.dumps(res["img_per_s"]), "speed-up", res["speedup_overall"])
    return res


if __name__ == "__main__":
    main()
