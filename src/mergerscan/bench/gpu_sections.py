"""The sections of ``mergerscan doctor --gpu`` (see :mod:`mergerscan.bench.gpu`): each measures
one thing about the GPU path and puts its figures in the report as it goes."""

from __future__ import annotations

import copy
import threading
import time

import numpy as np

TOL = {"fp32": (1e-4, 1e-5), "tf32": (1e-2, 2e-3), "bf16": (0.1, 0.03), "fp16": (1e-2, 2e-3)}
DTYPES = ("fp32", "tf32", "bf16", "fp16")


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


def tile(stamps: np.ndarray, n: int) -> np.ndarray:
    return stamps[np.arange(n) % len(stamps)]


def autocast(device: str, precision: str):
    import torch

    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)
    return torch.autocast(device, dtype=dtype or torch.float32, enabled=dtype is not None)


def set_precision(precision: str, cuda: bool):
    if cuda:
        from ..engines.torch import set_tf32

        set_tf32(precision == "tf32")


def error_of(exc: BaseException, limit: int = 300) -> dict:
    return {"error": f"{type(exc).__name__}: {str(exc)[:limit]}"}


def peak(rep, dev, clock, a):
    """The same device's matmul peak per precision (the ceiling's reference)."""
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


def graph_seconds(fwd, clock) -> tuple[float, float]:
    """(eager, CUDA-graph replay) seconds per call; on the CPU one eager call for both."""
    import torch

    if not clock.cuda:
        s = clock.per_call(fwd, reps=1, warmup=1)
        return s, s
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
    return eager, clock.per_call(g.replay, reps=20)


def ceiling_point(rep, dev, clock, net, x, p: str, gflop: float) -> dict:
    import torch

    def fwd():
        with torch.no_grad(), autocast(dev, p):
            return net(x).float()

    eager, sec = graph_seconds(fwd, clock)
    b = len(x)
    peak_tf = rep.doc["sections"].get("peak", {}).get(p, {}).get("tflops")
    return {
        "batch": b,
        "precision": p,
        "cuda_graph": clock.cuda,
        "images_per_s": b / sec,
        "eager_images_per_s": b / eager,
        "tflops": gflop * b / sec / 1e3,
        "fraction_of_peak": (gflop * b / sec / 1e3 / peak_tf) if peak_tf else None,
    }


def ceiling(rep, dev, clock, a, net_cpu, info, stamps, cap):
    """(1) The GPU-only ceiling: the engine's network, input already on the device."""
    import torch

    from ..cutouts.preprocess import prepare_batch
    from ..engines.base import dihedral_views

    gflop = flops_per_image(net_cpu, info.spec.input_size) / 1e9
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
                rep.put("ceiling", f"{p}-b{b}", ceiling_point(rep, dev, clock, net, x, p, gflop))
            except Exception as exc:  # one point's failure is that point's result
                rep.put("ceiling", f"{p}-b{b}", error_of(exc))
                if clock.cuda:
                    torch.cuda.empty_cache()
    set_precision("fp32", clock.cuda)


def h2d(rep, dev, clock, a, info):
    """(2) Pageable vs pinned host-to-device copies of a full batch."""
    import torch

    if not clock.cuda:
        rep.put("h2d", "skipped", "no CUDA device (pinned memory and host-to-device copies need one)")
        return
    b, h, s = a.batches[-1], info.spec.stamp_pixels, info.spec.input_size
    for what, shape, dt in (
        ("uint8_stamps", (b // 8, h, h, 3), torch.uint8),
        ("float32_views", (b, 3, s, s), torch.float32),
    ):
        host = torch.zeros(shape, dtype=dt)
        dst = torch.empty(shape, dtype=dt, device=dev)
        mb = host.numel() * host.element_size() / 1e6
        for kind, src in (("pageable", host), ("pinned", host.pin_memory())):
            sec = clock.per_call(lambda src=src: dst.copy_(src, non_blocking=True), reps=10)  # noqa: B023 - called within this iteration
            rep.put("h2d", f"{what}-{kind}", {"MB": mb, "ms": sec * 1e3, "GB_per_s": mb / 1e3 / sec})


def busy(rate: float, views: int, ceil: float | None) -> float | None:
    return rate * views / ceil if ceil else None


def host_engine(eng, stamps, per_call: int, seconds: float) -> float:
    """Objects/s through ``Engine.predict`` (host in, host out) for about ``seconds``."""
    x = tile(stamps, per_call)
    eng.predict(x)  # graphs captured, buffers made
    n, t = 0, time.perf_counter()
    while time.perf_counter() - t < seconds or n == 0:
        eng.predict(x)
        n += len(x)
    return n / (time.perf_counter() - t)


def host_shared(shared, stamps, per_call: int, threads: int, seconds: float) -> float:
    """Objects/s of ``threads`` callers sharing one engine's batches for about ``seconds``."""
    counts, stop = [0] * threads, time.perf_counter() + seconds

    def work(k):
        y = tile(stamps[k % len(stamps) :], per_call // 2 or 1)
        while time.perf_counter() < stop:
            shared.predict(y)
            counts[k] += len(y)

    t = time.perf_counter()
    ts = [threading.Thread(target=work, args=(k,)) for k in range(threads)]
    for th in ts:
        th.start()
    for th in ts:
        th.join()
    return sum(counts) / (time.perf_counter() - t)


def host_paths(rep, dev, clock, a, stamps, cap):
    """(3) Host in, host out: the engine API, and the shared-batch engine under many callers."""
    from ..engines import load_engine
    from ..engines.batching import SharedBatchEngine

    backend = "torch-cuda" if clock.cuda else "torch"
    t_end, per_call, seconds = time.monotonic() + cap, (128 if clock.cuda else 2), (10 if clock.cuda else 0.5)
    for p in ("fp32", "bf16") if clock.cuda else ("fp32",):
        if time.monotonic() > t_end:
            rep.put("host", "cut_short", f"time cap {cap:.0f} s reached")
            return
        eng = load_engine(None, backend=backend, precision=p, compile=False, threads=a.threads)
        v = eng.info.views
        ceil = rep.doc["sections"].get("ceiling", {}).get(f"{p}-b{a.batches[-1]}", {}).get("images_per_s")
        r = host_engine(eng, stamps, per_call, seconds)
        rep.put(
            "host",
            f"engine-{p}",
            {
                "views": v,
                "stamps_per_call": per_call,
                "objects_per_s": r,
                "images_per_s": r * v,
                "busy_fraction": busy(r, v, ceil),
            },
        )
        threads = 16 if clock.cuda else 2
        shared = SharedBatchEngine(eng, batch=4 * per_call)
        r = host_shared(shared, stamps, per_call, threads, seconds)
        rep.put(
            "host",
            f"shared-{p}",
            {
                **{"threads": threads, "views": v, "objects_per_s": r, "images_per_s": r * v},
                **{"engine_calls": shared.calls, "requests": shared.requests, "busy_fraction": busy(r, v, ceil)},
            },
        )
        shared.close()


def parity_paths(cuda: bool) -> list[tuple[str, str, dict]]:
    if not cuda:
        return [("torch", "fp32", {})]
    return [("torch-cuda", p, {"compile": False}) for p in DTYPES] + [
        ("torch-cuda", "fp32", {"compile": False, "cuda_graphs": False})
    ]


def parity_of(got: np.ndarray, ref: np.ndarray, thr: float, p: str) -> dict:
    d = np.abs(got - ref)
    mx, mean = TOL[p]
    return {
        "max_dp": float(d.max()),
        "mean_dp": float(d.mean()),
        "label_flips": int(((got >= thr) != (ref >= thr)).sum()),
        "within_tolerance": bool(d.max() <= mx and d.mean() <= mean),
        "tolerance": [mx, mean],
    }


def parity(rep, dev, clock, a, stamps, cap):
    """(4) Every GPU path against ONNX Runtime on the CPU, on the same stamps."""
    from ..engines import load_engine

    ref_eng = load_engine(None, backend="onnxruntime", threads=a.threads)
    ref = ref_eng.predict(stamps).astype(np.float64)
    rep.put(
        "parity", "reference", {"backend": "onnxruntime CPU fp32", "stamps": len(stamps), "views": ref_eng.info.views}
    )
    t_end = time.monotonic() + cap
    for backend, p, opts in parity_paths(clock.cuda):
        name = f"{backend}:{p}" + ("" if opts.get("cuda_graphs", True) else "-no-graphs")
        if time.monotonic() > t_end:
            rep.put("parity", "cut_short", f"time cap {cap:.0f} s reached")
            return
        try:
            got = load_engine(None, backend=backend, precision=p, threads=a.threads, **opts).predict(stamps)
            rep.put("parity", name, parity_of(got, ref, ref_eng.info.threshold, p))
        except Exception as exc:  # one path's failure is that path's result
            rep.put("parity", name, error_of(exc))


def front(rep, dev, clock, a, info, stamps):
    """(5) The on-device preprocessing and views against the host's prepare_batch."""
    import torch

    from ..cutouts.preprocess import prepare_batch
    from ..engines.base import dihedral_views
    from ..engines.front import torch_front

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
    per = 1e3 / len(stamps)
    rep.put("front", "time", {"device_ms_per_stamp": dev_s * per, "host_prepare_batch_ms_per_stamp": host_s * per})
