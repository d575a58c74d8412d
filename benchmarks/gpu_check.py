"""The first ten GPU minutes: everything that matters about the GPU path, measured in one command.

Needs only torch (CUDA), onnx, onnxruntime (CPU), numpy and pillow, and the source tree
(``PYTHONPATH=src``, no install) with ~64 real stamps in a git-ignored folder
(``benchmarks/pack_gpu_check_data.py`` fills ``.gpu-check-data/``).  Every section has a time cap
and the JSON is rewritten after every measurement, so a run cut short still reports what it got.

  peak      the same GPU's matmul peak (8192^2) in fp32 (TF32 off), tf32, bf16, fp16
  ceiling   (1) GPU-only ceiling of the default engine rebuilt in torch, input on the device,
            batch 256/512/1024 images, fp32 TF32 off/on, bf16/fp16 autocast, channels_last,
            under a CUDA graph, timed with CUDA events; fraction of the peak
  h2d       (2) pageable vs pinned host->device copy of a full batch: uint8 stamps (what engines
            take now) and the float32 views they replace
  host      (3) host in, host out through the engine API (uint8 stamps, views on the device), and
            through the shared-batch engine with 16 threads and 8 views; busy fraction = achieved
            images/s over the ceiling at the same precision
  parity    (4) every GPU path against ONNX Runtime CPU on the real stamps (|dp| max/mean, flips)
  front     (5) the on-device preprocessing and views against prepare_batch (max |diff|, time)
  compile   (6) last: compile time of one bucket per torch.compile mode, each in a subprocess
            under a timeout

    PYTHONPATH=src python benchmarks/gpu_check.py                      # on the GPU, ~7 minutes
    PYTHONPATH=src python benchmarks/gpu_check.py --cpu --out /tmp/g.json   # dry run, seconds
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np

from _common import REPO, cpu_model, write_result

TOL = {"fp32": (1e-4, 1e-5), "tf32": (1e-2, 2e-3), "bf16": (0.1, 0.03), "fp16": (1e-2, 2e-3)}
DTYPES = ("fp32", "tf32", "bf16", "fp16")


class Report:
    """The JSON document, rewritten atomically after every measurement."""

    def __init__(self, path: Path, meta: dict):
        self.path, self.doc = path, {"meta": meta, "sections": {}}
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.write()

    def put(self, section: str, key: str, value):
        self.doc["sections"].setdefault(section, {})[key] = value
        self.write()

    def write(self):
        write_result(self.path, self.doc)


class Clock:
    """Timing on the device: CUDA events around the calls (GPU time); perf_counter on CPU."""

    def __init__(self, cuda: bool):
        self.cuda = cuda

    def per_call(self, fn, reps: int, warmup: int = 2) -> float:
        import torch

        for _ in range(warmup):
            fn()
        if self.cuda:
            torch.cuda.synchronize()
            a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            a.record()
            for _ in range(reps):
                fn()
            b.record()
            b.synchronize()
            return a.elapsed_time(b) / 1e3 / reps
        t = time.perf_counter()
        for _ in range(reps):
            fn()
        return (time.perf_counter() - t) / reps


def load_stamps(folder: Path, n: int) -> np.ndarray:
    from PIL import Image

    files = sorted(folder.glob("*.jpg"))[:n]
    if not files:
        raise SystemExit(
            f"gpu_check: no stamps in {folder}: run benchmarks/pack_gpu_check_data.py first (and carry .gpu-check-data)"
        )
    return np.stack([np.asarray(Image.open(f).convert("RGB"), np.uint8) for f in files])


def tile(stamps: np.ndarray, n: int) -> np.ndarray:
    return stamps[np.arange(n) % len(stamps)]


def autocast(device: str, precision: str):
    import torch

    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)
    return torch.autocast(device, dtype=dtype or torch.float32, enabled=dtype is not None)


def set_precision(precision: str, cuda: bool):
    if cuda:
        from mergerscan.engines.torch import set_tf32

        set_tf32(precision == "tf32")


# ------------------------------------------------------------------ sections
def peak(rep, dev, clock, a):
    import torch

    n = 8192 if clock.cuda else 512
    for p in DTYPES if clock.cuda else ("fp32",):
        set_precision(p, clock.cuda)
        dt = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(p, torch.float32)
        x, y = torch.randn(n, n, device=dev, dtype=dt), torch.randn(n, n, device=dev, dtype=dt)
        s = clock.per_call(lambda: x @ y, reps=20 if clock.cuda else 2, warmup=2)  # noqa: B023 - called within this iteration
        rep.put("peak", p, {"n": n, "tflops": 2 * n**3 / s / 1e12})
    set_precision("fp32", clock.cuda)


def flops_per_image(net, size: int) -> float:
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    with torch.no_grad(), FlopCounterMode(display=False) as fc:
        net(torch.zeros(1, 3, size, size))
    return float(fc.get_total_flops())


def ceiling(rep, dev, clock, a, net_cpu, info, stamps, cap):
    import copy

    import torch

    from mergerscan.cutouts.preprocess import prepare_batch
    from mergerscan.engines.base import dihedral_views

    s = info.spec.input_size
    gflop = flops_per_image(net_cpu, s) / 1e9
    rep.put("ceiling", "gflop_per_image", gflop)
    net = copy.deepcopy(net_cpu).requires_grad_(False).to(dev, memory_format=torch.channels_last)
    views = torch.from_numpy(dihedral_views(prepare_batch(stamps, info.spec), 8))
    t_end = time.monotonic() + cap
    for b in a.batches:
        x = views[torch.arange(b) % len(views)].to(dev).contiguous(memory_format=torch.channels_last)
        for p in DTYPES if clock.cuda else ("fp32",):
            if time.monotonic() > t_end:
                rep.put("ceiling", "cut_short", f"time cap {cap:.0f} s reached")
                return
            set_precision(p, clock.cuda)
            try:

                def fwd():
                    with torch.no_grad(), autocast(dev, p):  # noqa: B023 - called within this iteration
                        return net(x).float()  # noqa: B023 - called within this iteration

                if clock.cuda:
                    side = torch.cuda.Stream()
                    side.wait_stream(torch.cuda.current_stream())
                    with torch.cuda.stream(side):
                        for _ in range(3):
                            fwd()
                    torch.cuda.current_stream().wait_stream(side)
                    g = torch.cuda.CUDAGraph()
                    with torch.cuda.graph(g):
                        fwd()
                    eager = clock.per_call(fwd, reps=5)
                    sec = clock.per_call(g.replay, reps=20)
                    del g
                else:
                    eager = sec = clock.per_call(fwd, reps=1, warmup=1)
                peak_tf = rep.doc["sections"].get("peak", {}).get(p, {}).get("tflops")
                rep.put(
                    "ceiling",
                    f"{p}-b{b}",
                    {
                        "batch": b,
                        "precision": p,
                        "cuda_graph": clock.cuda,
                        "images_per_s": b / sec,
                        "eager_images_per_s": b / eager,
                        "tflops": gflop * b / sec / 1e3,
                        "fraction_of_peak": (gflop * b / sec / 1e3 / peak_tf) if peak_tf else None,
                    },
                )
            except Exception as exc:
                rep.put("ceiling", f"{p}-b{b}", {"error": f"{type(exc).__name__}: {str(exc)[:300]}"})
                if clock.cuda:
                    torch.cuda.empty_cache()
    set_precision("fp32", clock.cuda)


def h2d(rep, dev, clock, a, info):
    import torch

    if not clock.cuda:
        rep.put("h2d", "skipped", "no CUDA device (pinned memory and host-to-device copies need one)")
        return
    b = a.batches[-1]  # images per call
    h = info.spec.stamp_pixels
    s = info.spec.input_size
    for what, shape, dt in (
        ("uint8_stamps", (b // 8, h, h, 3), torch.uint8),
        ("float32_views", (b, 3, s, s), torch.float32),
    ):
        host = torch.zeros(shape, dtype=dt)
        pinned = host.pin_memory()
        dst = torch.empty(shape, dtype=dt, device=dev)
        mb = host.numel() * host.element_size() / 1e6
        for kind, src in (("pageable", host), ("pinned", pinned)):
            sec = clock.per_call(lambda src=src: dst.copy_(src, non_blocking=True), reps=10)  # noqa: B023 - called within this iteration
            rep.put("h2d", f"{what}-{kind}", {"MB": mb, "ms": sec * 1e3, "GB_per_s": mb / 1e3 / sec})


def host_paths(rep, dev, clock, a, stamps, cap):
    from mergerscan.engines import load_engine
    from mergerscan.engines.batching import SharedBatchEngine

    backend = "torch-cuda" if clock.cuda else "torch"
    t_end = time.monotonic() + cap
    per_call = 128 if clock.cuda else 2
    for p in ("fp32", "bf16") if clock.cuda else ("fp32",):
        if time.monotonic() > t_end:
            rep.put("host", "cut_short", f"time cap {cap:.0f} s reached")
            return
        eng = load_engine(None, backend=backend, precision=p, compile=False, threads=a.threads)
        x = tile(stamps, per_call)
        eng.predict(x)  # graphs captured, buffers made
        n, t = 0, time.perf_counter()
        while time.perf_counter() - t < (10 if clock.cuda else 0.5) or n == 0:
            eng.predict(x)
            n += len(x)
        rate = n / (time.perf_counter() - t)
        ceil = rep.doc["sections"].get("ceiling", {}).get(f"{p}-b{a.batches[-1]}", {}).get("images_per_s")
        rep.put(
            "host",
            f"engine-{p}",
            {
                "views": eng.info.views,
                "stamps_per_call": per_call,
                "objects_per_s": rate,
                "images_per_s": rate * eng.info.views,
                "busy_fraction": rate * eng.info.views / ceil if ceil else None,
            },
        )
        threads = 16 if clock.cuda else 2
        shared = SharedBatchEngine(eng, batch=4 * per_call)
        counts, stop = [0] * threads, time.perf_counter() + (10 if clock.cuda else 0.5)

        def work(k):
            y = tile(stamps[k % len(stamps) :], per_call // 2 or 1)
            while time.perf_counter() < stop:  # noqa: B023 - called within this iteration
                shared.predict(y)  # noqa: B023 - called within this iteration
                counts[k] += len(y)  # noqa: B023 - called within this iteration

        t = time.perf_counter()
        ts = [threading.Thread(target=work, args=(k,)) for k in range(threads)]
        [th.start() for th in ts]
        [th.join() for th in ts]
        rate = sum(counts) / (time.perf_counter() - t)
        rep.put(
            "host",
            f"shared-{p}",
            {
                "threads": threads,
                "views": eng.info.views,
                "objects_per_s": rate,
                "images_per_s": rate * eng.info.views,
                "engine_calls": shared.calls,
                "requests": shared.requests,
                "busy_fraction": rate * eng.info.views / ceil if ceil else None,
            },
        )
        shared.close()


def parity(rep, dev, clock, a, stamps, cap):
    from mergerscan.engines import load_engine

    ref_eng = load_engine(None, backend="onnxruntime", threads=a.threads)
    ref = ref_eng.predict(stamps).astype(np.float64)
    thr = ref_eng.info.threshold
    rep.put(
        "parity", "reference", {"backend": "onnxruntime CPU fp32", "stamps": len(stamps), "views": ref_eng.info.views}
    )
    paths = (
        (
            [("torch-cuda", p, {"compile": False}) for p in DTYPES]
            + [("torch-cuda", "fp32", {"compile": False, "cuda_graphs": False})]
        )
        if clock.cuda
        else [("torch", "fp32", {})]
    )
    t_end = time.monotonic() + cap
    for backend, p, opts in paths:
        name = f"{backend}:{p}" + ("" if opts.get("cuda_graphs", True) else "-no-graphs")
        if time.monotonic() > t_end:
            rep.put("parity", "cut_short", f"time cap {cap:.0f} s reached")
            return
        try:
            got = load_engine(None, backend=backend, precision=p, threads=a.threads, **opts).predict(stamps)
            d = np.abs(got - ref)
            mx, mean = TOL[p]
            rep.put(
                "parity",
                name,
                {
                    "max_dp": float(d.max()),
                    "mean_dp": float(d.mean()),
                    "label_flips": int(((got >= thr) != (ref >= thr)).sum()),
                    "within_tolerance": bool(d.max() <= mx and d.mean() <= mean),
                    "tolerance": [mx, mean],
                },
            )
        except Exception as exc:
            rep.put("parity", name, {"error": f"{type(exc).__name__}: {str(exc)[:300]}"})


def front(rep, dev, clock, a, info, stamps):
    import torch

    from mergerscan.cutouts.preprocess import prepare_batch
    from mergerscan.engines.base import dihedral_views
    from mergerscan.engines.front import torch_front

    f = torch_front(info.spec, 8).to(dev)
    x = torch.from_numpy(stamps).to(dev)
    with torch.no_grad():
        got = f(x).cpu().numpy()
    t = time.perf_counter()
    ref = dihedral_views(prepare_batch(stamps, info.spec), 8)
    host_s = time.perf_counter() - t
    with torch.no_grad():
        dev_s = clock.per_call(lambda: f(x), reps=20 if clock.cuda else 2)
    diff = float(np.abs(got - ref).max())
    rep.put("front", "parity", {"stamps": len(stamps), "views": 8, "max_abs_diff": diff, "within_1e-5": diff <= 1e-5})
    rep.put(
        "front",
        "time",
        {
            "device_ms_per_stamp": dev_s * 1e3 / len(stamps),
            "host_prepare_batch_ms_per_stamp": host_s * 1e3 / len(stamps),
        },
    )


COMPILE_MODES = ("default", "reduce-overhead", "max-autotune-no-cudagraphs", "max-autotune")


def compile_one(mode: str, cuda: bool, batch: int) -> dict:
    """Child process: compile the default engine's net for one bucket, report the seconds."""
    import torch

    from mergerscan.engines.torch import rebuild_model

    dev = "cuda" if cuda else "cpu"
    net, info = rebuild_model(REPO / "src" / "mergerscan" / "data" / "default.onnx")
    net = net.requires_grad_(False).to(dev, memory_format=torch.channels_last)
    s = info.spec.input_size
    x = torch.zeros(batch, 3, s, s, device=dev).contiguous(memory_format=torch.channels_last)
    t = time.perf_counter()
    fn = torch.compile(net, mode=mode, dynamic=False)
    with torch.no_grad(), autocast(dev, "bf16" if cuda else "fp32"):
        fn(x)
        if cuda:
            torch.cuda.synchronize()
        first = time.perf_counter() - t
        per_call = Clock(cuda).per_call(lambda: fn(x), reps=10 if cuda else 1)
    return {"compile_and_first_call_s": first, "images_per_s": batch / per_call}


def compile_times(rep, dev, clock, a, cap):
    t_end = time.monotonic() + cap
    for mode in COMPILE_MODES if clock.cuda else COMPILE_MODES[:1]:
        left = t_end - time.monotonic()
        if left < 5:
            rep.put("compile", mode, {"skipped": f"time cap {cap:.0f} s reached"})
            continue
        timeout = min(left, a.compile_timeout)
        cmd = [sys.executable, str(Path(__file__).resolve()), "--compile-one", mode, "--batch", str(a.batches[0])] + (
            [] if clock.cuda else ["--cpu"]
        )
        t = time.monotonic()
        try:
            r = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=os.environ)
            line = (r.stdout.strip().splitlines() or [""])[-1]
            res = (
                json.loads(line)
                if r.returncode == 0 and line.startswith("{")
                else {"error": (r.stderr.strip().splitlines() or ["?"])[-1][:300]}
            )
        except subprocess.TimeoutExpired:
            res = {"timeout_s": round(timeout, 1)}
        res["wall_s"] = round(time.monotonic() - t, 2)
        rep.put("compile", mode, res)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description="GPU check: ceiling, copies, host paths, parity, front, compile")
    ap.add_argument("--cpu", action="store_true", help="dry run on the CPU with tiny sizes (CI)")
    ap.add_argument("--data", default=str(REPO / ".gpu-check-data"))
    ap.add_argument("--out", default=None, help="JSON (default benchmarks/results/gpu-check-<device>.json)")
    ap.add_argument("--stamps", type=int, default=64)
    ap.add_argument("--batches", default=None, help="images per call for the ceiling (default 256,512,1024)")
    ap.add_argument("--threads", type=int, default=min(8, os.cpu_count() or 1))
    ap.add_argument("--caps", default="120,60,45,150", help="seconds for ceiling, host, parity, compile")
    ap.add_argument("--compile-timeout", type=float, default=75.0)
    ap.add_argument("--compile-one", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--batch", type=int, default=256, help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    sys.path.insert(0, str(REPO / "src"))
    import torch

    cuda = not a.cpu
    if cuda and not torch.cuda.is_available():
        print(f"gpu_check: torch {torch.__version__} sees no CUDA device (use --cpu for the dry run)", file=sys.stderr)
        return 2
    if a.compile_one:
        print(json.dumps(compile_one(a.compile_one, cuda, a.batch)))
        return 0
    a.batches = [int(b) for b in (a.batches or ("256,512,1024" if cuda else "4")).split(",")]
    caps = [float(c) for c in a.caps.split(",")]
    if a.cpu:  # the dry run checks that every section runs, in seconds; figures mean nothing
        caps, a.compile_timeout = [min(c, 15.0) for c in caps], min(a.compile_timeout, 10.0)
        a.threads = 1
    dev = "cuda" if cuda else "cpu"
    name = torch.cuda.get_device_name() if cuda else cpu_model()
    out = (
        Path(a.out)
        if a.out
        else REPO
        / "benchmarks"
        / "results"
        / f"gpu-check-{''.join(c if c.isalnum() else '-' for c in name.lower()).strip('-')}.json"
    )
    import onnxruntime

    rep = Report(
        out,
        {
            "device": name,
            "torch": torch.__version__,
            "cuda": torch.version.cuda,
            "onnxruntime": onnxruntime.__version__,
            "cpu_dry_run": a.cpu,
            "host": platform.node(),
            "cpus": os.cpu_count(),
            "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        },
    )
    if not cuda:
        torch.set_num_threads(a.threads)
    from mergerscan.engines.torch import rebuild_model

    stamps = load_stamps(Path(a.data), a.stamps if cuda else min(a.stamps, 2))
    net_cpu, info = rebuild_model(REPO / "src" / "mergerscan" / "data" / "default.onnx")
    clock = Clock(cuda)
    t0 = time.monotonic()
    for name_, fn in (
        ("peak", lambda: peak(rep, dev, clock, a)),
        ("ceiling", lambda: ceiling(rep, dev, clock, a, net_cpu, info, stamps, caps[0])),
        ("h2d", lambda: h2d(rep, dev, clock, a, info)),
        ("host", lambda: host_paths(rep, dev, clock, a, stamps, caps[1])),
        ("parity", lambda: parity(rep, dev, clock, a, stamps, caps[2])),
        ("front", lambda: front(rep, dev, clock, a, info, stamps)),
        ("compile", lambda: compile_times(rep, dev, clock, a, caps[3])),
    ):
        t = time.monotonic()
        try:
            fn()
        except Exception as exc:
            rep.put(name_, "error", f"{type(exc).__name__}: {str(exc)[:400]}")
        rep.put(name_, "seconds", round(time.monotonic() - t, 2))
        print(f"gpu_check: {name_} done in {time.monotonic() - t:.1f} s", file=sys.stderr, flush=True)
    rep.doc["meta"]["seconds"] = round(time.monotonic() - t0, 1)
    rep.write()
    print(f"gpu_check: wrote {out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
