"""``mergerscan doctor --gpu``: the first ten GPU minutes, everything that matters about the
GPU path measured in one command (formerly ``benchmarks/gpu_check.py``).

Needs torch with CUDA, onnxruntime (CPU) and ~64 real stamps in a folder (``--images``; default
``.gpu-check-data``, filled by ``tools/pack_gpu_check_data.py``).  Every section has a time cap
and the JSON is rewritten after every measurement, so a run cut short still reports what it got.

  peak      the same GPU's matmul peak (8192^2) in fp32 (TF32 off), tf32, bf16, fp16
  ceiling   (1) GPU-only ceiling of the engine rebuilt in torch, input on the device, batch
            256/512/1024 images, fp32 TF32 off/on, bf16/fp16 autocast, channels_last, under a
            CUDA graph, timed with CUDA events; fraction of the peak
  h2d       (2) pageable vs pinned host->device copy of a full batch (uint8 stamps, float32 views)
  host      (3) host in, host out through the engine API, and through the shared-batch engine
            with 16 threads; busy fraction = achieved images/s over the ceiling
  parity    (4) every GPU path against ONNX Runtime CPU on the real stamps (|dp| max/mean, flips)
  front     (5) the on-device preprocessing and views against prepare_batch (max |diff|, time)
  compile   (6) last: compile time of one bucket per torch.compile mode, each in a child process
            under a timeout

Without a CUDA device it says so in one line and exits :data:`EXIT_BAD_INPUT`; ``--cpu`` runs
every section on the CPU with tiny sizes instead (a dry run of the code paths, for CI: its
figures mean nothing).
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from . import gpu_sections as S
from .common import cpu_model, write_json

COMPILE_MODES = ("default", "reduce-overhead", "max-autotune-no-cudagraphs", "max-autotune")
SECTIONS = ("peak", "ceiling", "h2d", "host", "parity", "front", "compile")


@dataclass(frozen=True)
class GpuCheck:
    images: str = ".gpu-check-data"  # folder of real stamps (JPEG)
    output: str | None = None  # default: gpu-check-<device>.json in the working directory
    cpu: bool = False  # the dry run
    stamps: int = 64
    batches: tuple[int, ...] = ()  # images per call for the ceiling (default 256,512,1024; 4 on --cpu)
    threads: int = field(default_factory=lambda: min(8, os.cpu_count() or 1))
    caps: tuple[float, ...] = (120.0, 60.0, 45.0, 150.0)  # seconds: ceiling, host, parity, compile
    compile_timeout: float = 75.0

    def for_device(self) -> GpuCheck:
        """The dry run checks that every section runs, in seconds: tiny sizes, short caps."""
        if not self.cpu:
            return replace(self, batches=self.batches or (256, 512, 1024))
        return replace(
            self,
            batches=self.batches or (4,),
            caps=tuple(min(c, 15.0) for c in self.caps),
            compile_timeout=min(self.compile_timeout, 10.0),
            threads=1,
            stamps=min(self.stamps, 2),
        )


def no_gpu_reason() -> str | None:
    """Why the GPU check cannot run here (None: a CUDA device is visible): the torch-cuda
    backend's own reason."""
    from ..engines.torch import cuda_unavailable_reason

    return cuda_unavailable_reason()


class Report:
    """The JSON document, rewritten atomically after every measurement."""

    def __init__(self, path: Path, meta: dict):
        self.path, self.doc = path, {"meta": meta, "sections": {}}
        self.write()

    def put(self, section: str, key: str, value):
        self.doc["sections"].setdefault(section, {})[key] = value
        self.write()

    def write(self):
        write_json(self.path, self.doc)


def load_stamps(folder: Path, n: int) -> np.ndarray:
    from PIL import Image

    files = sorted(folder.glob("*.jpg"))[:n] if folder.is_dir() else []
    if not files:
        raise ValueError(
            f"--images {folder}: no JPEG stamps there (tools/pack_gpu_check_data.py fills .gpu-check-data)"
        )
    return np.stack([np.asarray(Image.open(f).convert("RGB"), np.uint8) for f in files])


def compile_one(mode: str, cuda: bool, batch: int) -> dict:
    """Child process: compile the packaged engine's net for one bucket, report the seconds."""
    import torch

    from ..engines import default_engine_path
    from ..engines.torch import rebuild_model

    dev = "cuda" if cuda else "cpu"
    net, info = rebuild_model(default_engine_path())
    net = net.requires_grad_(False).to(dev, memory_format=torch.channels_last)
    s = info.spec.input_size
    x = torch.zeros(batch, 3, s, s, device=dev).contiguous(memory_format=torch.channels_last)
    t = time.perf_counter()
    fn = torch.compile(net, mode=mode, dynamic=False)
    with torch.no_grad(), S.autocast(dev, "bf16" if cuda else "fp32"):
        fn(x)
        if cuda:
            torch.cuda.synchronize()
        first = time.perf_counter() - t
        per_call = S.Clock(cuda).per_call(lambda: fn(x), reps=10 if cuda else 1)
    return {"compile_and_first_call_s": first, "images_per_s": batch / per_call}


def compile_child(mode: str, cuda: bool, batch: int, timeout: float) -> dict:
    cmd = [sys.executable, "-m", "mergerscan.bench.gpu", mode, str(batch), "cuda" if cuda else "cpu"]
    try:
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=os.environ)
    except subprocess.TimeoutExpired:
        return {"timeout_s": round(timeout, 1)}
    line = (r.stdout.strip().splitlines() or [""])[-1]
    if r.returncode == 0 and line.startswith("{"):
        return json.loads(line)
    return {"error": (r.stderr.strip().splitlines() or ["?"])[-1][:300]}


def compile_times(rep, dev, clock, a, cap):
    """(6) Compile time per torch.compile mode, each in a child process under a timeout."""
    t_end = time.monotonic() + cap
    for mode in COMPILE_MODES if clock.cuda else COMPILE_MODES[:1]:
        left = t_end - time.monotonic()
        if left < 5:
            rep.put("compile", mode, {"skipped": f"time cap {cap:.0f} s reached"})
            continue
        t = time.monotonic()
        res = compile_child(mode, clock.cuda, a.batches[0], min(left, a.compile_timeout))
        rep.put("compile", mode, res | {"wall_s": round(time.monotonic() - t, 2)})


def default_output(device: str) -> Path:
    return Path(f"gpu-check-{''.join(c if c.isalnum() else '-' for c in device.lower()).strip('-')}.json")


def meta(device: str, cpu: bool) -> dict:
    import onnxruntime
    import torch

    return {
        "device": device,
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "onnxruntime": onnxruntime.__version__,
        "cpu_dry_run": cpu,
        "host": platform.node(),
        "cpus": os.cpu_count(),
        "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }


def run_sections(rep: Report, a: GpuCheck, stamps: np.ndarray) -> None:
    import torch

    from ..engines import default_engine_path
    from ..engines.torch import rebuild_model

    cuda = not a.cpu
    dev, clock, caps = ("cuda" if cuda else "cpu"), S.Clock(cuda), a.caps
    if not cuda:
        torch.set_num_threads(a.threads)
    net_cpu, info = rebuild_model(default_engine_path())
    steps = {
        "peak": lambda: S.peak(rep, dev, clock, a),
        "ceiling": lambda: S.ceiling(rep, dev, clock, a, net_cpu, info, stamps, caps[0]),
        "h2d": lambda: S.h2d(rep, dev, clock, a, info),
        "host": lambda: S.host_paths(rep, dev, clock, a, stamps, caps[1]),
        "parity": lambda: S.parity(rep, dev, clock, a, stamps, caps[2]),
        "front": lambda: S.front(rep, dev, clock, a, info, stamps),
        "compile": lambda: compile_times(rep, dev, clock, a, caps[3]),
    }
    for name in SECTIONS:
        t = time.monotonic()
        try:
            steps[name]()
        except Exception as exc:  # a section's failure is that section's result
            rep.put(name, "error", f"{type(exc).__name__}: {str(exc)[:400]}")
        rep.put(name, "seconds", round(time.monotonic() - t, 2))
        print(f"mergerscan doctor --gpu: {name} done in {time.monotonic() - t:.1f} s", file=sys.stderr, flush=True)


def run_gpu_check(cfg: GpuCheck) -> Path:
    """Run every section; the report's path.  The caller checks :func:`no_gpu_reason` first
    unless ``cfg.cpu``."""
    import torch

    a = cfg.for_device()
    stamps = load_stamps(Path(a.images), a.stamps)
    device = cpu_model() if a.cpu else torch.cuda.get_device_name()
    rep = Report(Path(a.output) if a.output else default_output(device), meta(device, a.cpu))
    t0 = time.monotonic()
    run_sections(rep, a, stamps)
    rep.doc["meta"]["seconds"] = round(time.monotonic() - t0, 1)
    rep.write()
    return rep.path


if __name__ == "__main__":  # the compile section's child: MODE BATCH cuda|cpu -> one JSON line
    print(json.dumps(compile_one(sys.argv[1], sys.argv[3] == "cuda", int(sys.argv[2]))))
