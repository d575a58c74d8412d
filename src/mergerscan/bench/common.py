"""What the measurements share: the machine they ran on, wall and CPU clocks, stamps to feed an
engine, and writing the result document atomically."""

from __future__ import annotations

import json
import os
import platform
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import TypeVar

import numpy as np

T = TypeVar("T")

PACKAGES = (
    *("mergerscan", "numpy", "pandas", "pyarrow", "astropy", "fitsio", "indexed_bzip2", "pillow"),
    *("onnxruntime", "torch", "dask", "distributed"),
)


def cpu_model() -> str:
    """The CPU's model name (/proc/cpuinfo), else what platform knows."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def versions(packages=PACKAGES) -> dict[str, str | None]:
    """Installed versions (None: not installed)."""
    found: dict[str, str | None] = {}
    for p in packages:
        try:
            found[p] = metadata.version(p)
        except metadata.PackageNotFoundError:
            found[p] = None
    return found


def machine(packages=PACKAGES) -> dict:
    """Where a figure was measured: CPU, cores usable, load, Python and the package versions.
    The load average is part of the figure: on a shared machine the wall time includes waiting."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return {
        "cpu": cpu_model(),
        "cores": cores,
        "loadavg": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "packages": versions(packages),
        "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }


@dataclass
class Stopwatch:
    """Wall and process-CPU seconds since it was made (CPU time is the steadier on a busy host)."""

    wall0: float = 0.0
    cpu0: float = 0.0

    def __post_init__(self) -> None:
        self.wall0, self.cpu0 = time.perf_counter(), time.process_time()

    def read(self) -> tuple[float, float]:
        return time.perf_counter() - self.wall0, time.process_time() - self.cpu0


def rate(objects: int, seconds: float) -> float | None:
    return round(objects / seconds, 2) if seconds > 0 else None


def timed_objects(fn: Callable[[], T], objects: int) -> tuple[dict, T]:
    """Run ``fn()`` once: its wall and CPU seconds and objects/s as a result row, and what it returned."""
    sw = Stopwatch()
    out = fn()
    wall, cpu = sw.read()
    row = {"objects": objects, "wall_s": round(wall, 4), "cpu_s": round(cpu, 4), "objects_per_s": rate(objects, wall)}
    return row, out


def load_stamps(folder: str | os.PathLike | None, n: int, size: int = 256) -> tuple[np.ndarray, str]:
    """Up to ``n`` stamps from ``folder`` (JPEG/PNG, sorted by name, decoded as the stamps source
    does), repeated to ``n``; without a folder, deterministic noise stamps (speed only)."""
    if folder is None:
        rng = np.random.default_rng(0)
        return rng.integers(0, 255, (n, size, size, 3), dtype=np.uint8), f"{n} random {size} px stamps"
    from ..cutouts.preprocess import PreprocessSpec
    from ..cutouts.stamps import StampSource

    d = Path(folder)
    files = sorted(p for p in d.iterdir() if p.suffix.lower() in (".jpg", ".jpeg", ".png"))[:n] if d.is_dir() else []
    if not files:
        raise ValueError(f"--images {folder}: no .jpg or .png stamps there")
    src = StampSource(folder, PreprocessSpec(stamp_pixels=size))
    try:
        decoded = np.stack([src.decode(f) for f in files])
    finally:
        src.close()
    return decoded[np.arange(n) % len(decoded)], f"{n} stamps from {len(files)} files in {folder}"


def write_json(path: str | os.PathLike, doc: dict) -> Path:
    """The result document (indent 1, trailing newline), written atomically; its folder is made."""
    from ..atomic import atomic_write_text

    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(p, json.dumps(doc, indent=1, default=float) + "\n")
    return p


def parse_ints(text: str, flag: str) -> list[int]:
    """``"1,2,4"`` -> [1, 2, 4]; a ValueError naming the flag otherwise."""
    try:
        out = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        out = []
    if not out or min(out) < 1:
        raise ValueError(f"{flag} {text!r}: a comma-separated list of positive integers")
    return out
