"""Engine throughput per backend, precision and batch size, with FLOPs and a roofline fraction.

Part 1 (any machine): the engine file (default: the packaged model) through every backend that
can run here: ORT CPU fp32, ORT CPU int8 (``model-int8.onnx`` next to the engine or --int8),
torch CPU fp32/bf16; and where present ORT CUDA, torch CUDA (eager fp32 / compiled bf16, fp16),
TensorRT fp16.  Timed: ``Engine.logits`` on a prepared batch (host array in, host array out, so
GPU rows include the copies), median of repeats within --budget seconds per point.
Part 2 (CUDA only): the four study architectures as torch modules at 224 px (299 for
inception_v3), input already on the GPU: eager fp32 vs torch.compile(max-autotune) bf16/fp16.

FLOPs per image: torch FlopCounterMode (2 x MACs of conv/matmul) and, for the engine, a count
from the ONNX graph as a cross-check.  Peak: a large matmul in the same dtype, measured here on
the same device with the same threads; fraction_of_peak = achieved FLOP/s / that peak.

    nice -n 10 .venv/bin/python benchmarks/bench_backends.py --batches 1,8,32,128 --budget 3
Writes benchmarks/results/backends-<device>.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from _common import cpu_model, matmul_peak, result_path, shared_data, timed, write_result
from mergerscan.bench.engine import onnx_flops

SHARED = shared_data("sdss-gz-mergers")

ARCH_SIZES = {"vgg16": 224, "inception_v3": 299, "densenet121": 224, "efficientnet_lite0": 224}


def device_name() -> str:
    import torch

    if torch.cuda.is_available():
        return re.sub(r"[^a-z0-9]+", "-", torch.cuda.get_device_name().lower()).strip("-")
    return "cpu"


def fraction(gflops: float, peak: float | None) -> float | None:
    return round(gflops / peak, 4) if peak else None


@dataclass(frozen=True)
class Timing:
    """One timed point: ``batch`` images in ``seconds`` a batch (over ``reps`` repeats)."""

    batch: int
    seconds: float
    reps: int
    flops: float  # per image
    peak_dtype: str

    def row(self, head: dict, peaks: dict, gflops_digits: int) -> dict:
        """The result row: ``head`` (what was timed), then the rates and the fraction of the peak."""
        ips = self.batch / self.seconds
        return {
            **head,
            "batch": self.batch,
            "ms_per_batch": round(self.seconds * 1e3, 3),
            "images_per_s": round(ips, 1),
            "gflops_per_s": round(ips * self.flops / 1e9, gflops_digits),
            "peak_dtype": self.peak_dtype,
            "fraction_of_peak": fraction(ips * self.flops / 1e9, peaks[self.peak_dtype]),
            "reps": self.reps,
        }


def record(res: dict, row: dict) -> None:
    res["runs"].append(row)
    print(json.dumps(row), flush=True)


def torch_flops(net, size: int) -> float:
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    with torch.no_grad(), FlopCounterMode(display=False) as fc:
        net.eval()(torch.zeros(1, 3, size, size, device=next(net.parameters()).device))
    return float(fc.get_total_flops())


def prepared(n: int, spec) -> tuple[np.ndarray, str]:
    from mergerscan.cutouts.preprocess import prepare_batch

    if SHARED.is_dir():
        from mergerscan.training.data import decode_stamps

        files = sorted(SHARED.glob("images/*.jpg"))[: min(n, 256)]
        x = prepare_batch(decode_stamps([str(f) for f in files]), spec)
        kind = f"{len(files)} real SDSS stamps, tiled"
    else:
        rng = np.random.default_rng(0)
        x = prepare_batch(
            rng.integers(0, 255, (min(n, 64), spec.stamp_pixels, spec.stamp_pixels, 3), dtype=np.uint8), spec
        )
        kind = "random stamps, tiled"
    return np.ascontiguousarray(np.resize(x, (n,) + x.shape[1:])), kind


def engine_configs(engine: Path, int8: Path | None, cuda: bool) -> list[tuple]:
    """(label, path, backend, options, precision of the peak to compare with)."""
    cfg = [("onnxruntime fp32", engine, "onnxruntime", {}, "fp32")]
    if int8:
        cfg.append(("onnxruntime int8", int8, "onnxruntime", {}, "int8"))
    cfg += [
        ("torch cpu fp32", engine, "torch", {"precision": "fp32"}, "fp32"),
        ("torch cpu bf16", engine, "torch", {"precision": "bf16"}, "bf16"),
    ]
    if cuda:
        cfg += [
            ("onnxruntime-cuda fp32", engine, "onnxruntime-cuda", {}, "fp32"),
            ("torch-cuda eager fp32", engine, "torch-cuda", {"precision": "fp32", "compile": False}, "fp32"),
            ("torch-cuda compiled bf16", engine, "torch-cuda", {"precision": "bf16", "compile": True}, "bf16"),
            ("torch-cuda compiled fp16", engine, "torch-cuda", {"precision": "fp16", "compile": True}, "fp16"),
            ("tensorrt fp16", engine, "tensorrt", {"precision": "fp16"}, "fp16"),
        ]
    return cfg


def bench_engines(a, res, peaks, cuda):
    from mergerscan.engines import BackendUnavailable, available_backends, load_engine, resolve_engine_path
    from mergerscan.engines.torch import rebuild_model

    engine = resolve_engine_path(a.engine)
    int8 = Path(a.int8) if a.int8 else engine.with_name("model-int8.onnx")
    int8 = int8 if int8.is_file() else None
    net, info = rebuild_model(engine)
    size = info.spec.input_size
    flops = torch_flops(net, size)
    res["engine"] = {
        "path": str(engine),
        "name": info.name,
        "arch": info.card.arch,
        "input_size": size,
        "sha256": info.sha256,
        "int8": str(int8) if int8 else None,
        "flops_per_image_torch": flops,
        "flops_per_image_onnx": onnx_flops(engine),
    }
    x, kind = prepared(max(a.batches), info.spec)
    res["data"] = kind
    av = available_backends()
    for label, path, backend, opts, peak_dtype in engine_configs(engine, int8, cuda):
        if av[backend]:
            res["skipped"][label] = av[backend]
            continue
        try:
            eng = load_engine(path, backend=backend, threads=a.threads, **opts)
        except BackendUnavailable as exc:
            res["skipped"][label] = str(exc)
            continue
        for b in a.batches:
            eng.max_batch = max(b, 1)
            if backend == "tensorrt" and b > 256:
                continue  # outside the engine's optimisation profile
            s, reps = timed(lambda: eng.logits(x[:b]), a.budget)  # noqa: B023 - called within this iteration
            head = {"model": info.name, "input_size": size, "config": label, "backend": backend}
            timing = Timing(b, s, reps, flops, peak_dtype)
            record(res, timing.row({**head, "precision": label.split()[-1]}, peaks, gflops_digits=2))
            if s * 3 > a.budget * 4 and b != a.batches[-1]:  # time-bounded: larger ones take longer
                res["skipped"][f"{label} batch>{b}"] = f"one batch took {s:.1f} s, over the budget"
                break


def bench_archs_cuda(a, res, peaks):
    """Study architectures as plain torch modules on the GPU: eager fp32 vs compiled bf16/fp16."""
    import torch

    from mergerscan.models import create_model

    for arch in a.archs:
        size = ARCH_SIZES[arch]
        net = create_model(arch).eval().cuda().to(memory_format=torch.channels_last)
        flops = torch_flops(net, size)
        res["archs"][arch] = {"input_size": size, "flops_per_image_torch": flops}
        for label, dt, comp in (
            ("eager fp32", None, False),
            ("compiled bf16", torch.bfloat16, True),
            ("compiled fp16", torch.float16, True),
        ):
            fn = torch.compile(net, mode="max-autotune", dynamic=False) if comp else net
            for b in a.batches:
                x = torch.randn(b, 3, size, size, device="cuda").contiguous(memory_format=torch.channels_last)

                def step():
                    with torch.no_grad(), torch.autocast("cuda", dtype=dt or torch.float32, enabled=dt is not None):  # noqa: B023 - called within this iteration
                        fn(x)  # noqa: B023 - called within this iteration

                try:
                    s, reps = timed(step, a.budget)
                except torch.cuda.OutOfMemoryError:
                    res["skipped"][f"{arch} {label} batch {b}"] = "CUDA out of memory"
                    break
                peak_dtype = label.split()[-1]
                head = {"model": arch, "input_size": size, "config": f"torch-cuda {label}", "precision": peak_dtype}
                record(res, Timing(b, s, reps, flops, peak_dtype).row(head, peaks, gflops_digits=1))
        del net
        torch.cuda.empty_cache()


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--engine", help="engine file (default: the packaged model)")
    ap.add_argument("--int8", help="int8 engine (default: model-int8.onnx next to --engine, if any)")
    ap.add_argument("--batches", default="1,8,32,128,512", help="comma-separated batch sizes")
    ap.add_argument("--budget", type=float, default=3.0, help="seconds of repeats per point")
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--archs", default=",".join(ARCH_SIZES), help="CUDA part: architectures")
    ap.add_argument("--out", help="default benchmarks/results/backends-<device>.json")
    a = ap.parse_args()
    a.batches = [int(b) for b in a.batches.split(",")]
    a.archs = [s for s in a.archs.split(",") if s]
    import torch

    torch.set_num_threads(a.threads)
    cuda = torch.cuda.is_available()
    dev = device_name()
    res = {
        "device": dev,
        "gpu": torch.cuda.get_device_name() if cuda else None,
        "machine": {
            "nproc": os.cpu_count(),
            "threads": a.threads,
            "processor": cpu_model(),
            "python": platform.python_version(),
            "torch": torch.__version__,
            "load_avg_at_start": os.getloadavg(),
        },
        "budget_s": a.budget,
        "peaks_gflops": {},
        "runs": [],
        "archs": {},
        "skipped": {},
    }
    for dt in ("fp32", "bf16", "int8") + (("fp16",) if cuda else ()):
        try:
            res["peaks_gflops"][dt] = round(matmul_peak(dt, "cuda" if cuda else "cpu"), 1)
        except RuntimeError as exc:  # e.g. no int8 matmul kernel on this device
            res["skipped"][f"{dt} matmul peak"] = str(exc)[:200]
            res["peaks_gflops"][dt] = None
    print("matmul peaks GFLOP/s:", res["peaks_gflops"], flush=True)
    bench_engines(a, res, res["peaks_gflops"], cuda)
    if cuda:
        bench_archs_cuda(a, res, res["peaks_gflops"])
    else:
        res["skipped"]["cuda architectures"] = "torch.cuda.is_available() is False"
    res["machine"]["load_avg_at_end"] = os.getloadavg()
    out = write_result(a.out or result_path(f"backends-{dev}.json"), res)
    print("wrote", out)


if __name__ == "__main__":
    main()
