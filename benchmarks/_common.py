"""What every benchmark shares: where the shared data are, the machine, the matmul peak, and
writing a result file (the CPU's name and the writing are the ``mergerscan bench`` verbs' own,
:mod:`mergerscan.bench.common`).

Shared data: ``$MERGERSCAN_SHARED/data`` (default ``<repo>/../shared/data``), the rule of
``tests/conftest.py``.  Benchmarks import this module as ``_common`` (they run as scripts from
``benchmarks/``, which Python puts first on ``sys.path``).
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from mergerscan.bench.common import cpu_model as cpu_model  # re-exported: one machine line for all
from mergerscan.bench.common import write_json

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results"


def shared_root() -> Path:
    return Path(os.environ.get("MERGERSCAN_SHARED", REPO.parent / "shared"))


def shared_data(*parts: str) -> Path:
    """``shared_data("sdss-gz-mergers")`` -> ``$MERGERSCAN_SHARED/data/sdss-gz-mergers``."""
    return shared_root().joinpath("data", *parts)


def resolve_shared(arg: str | os.PathLike | None) -> Path:
    """A ``--shared`` argument: the shared root or its ``data/`` folder (None: the default rule)."""
    p = Path(arg) if arg else shared_root()
    return p / "data" if (p / "data").is_dir() else p


def need(path: Path, what: str = "shared data") -> Path:
    if not path.exists():
        raise SystemExit(f"{what} not found at {path} (set MERGERSCAN_SHARED to the shared folder)")
    return path


def labelled_set(cache: str | os.PathLike | None):
    """The shared labelled stamps with training's seed-0 split (``build_labelled_set``), decoded
    stamps cached under ``cache``: the start of every scoring loop over val/test."""
    from mergerscan.training.data import build_labelled_set

    return build_labelled_set(str(need(shared_data("sdss-gz-mergers", "catalog.csv"))), cache=cache)


def sync() -> None:
    import torch

    if torch.cuda.is_available():
        torch.cuda.synchronize()


def timed(fn: Callable[[], object], budget: float, min_reps: int = 3, max_reps: int = 50) -> tuple[float, int]:
    """Median seconds per call after one warm-up; stops at min_reps once the budget is spent."""
    fn()
    sync()
    times: list[float] = []
    t_end = time.perf_counter() + budget
    while len(times) < min_reps or (time.perf_counter() < t_end and len(times) < max_reps):
        t = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - t)
        if times[-1] > budget:  # one call over budget: that is enough for this point
            break
    return float(np.median(times)), len(times)


def matmul_peak(dtype: str = "fp32", device: str = "cpu", threads: int | None = None, budget: float = 2.0) -> float:
    """GFLOP/s (GOP/s for int8) of an n x n matmul in ``dtype`` (the roofline's compute ceiling):
    n = 8192 on CUDA, 2048 on the CPU (at ``threads`` torch threads when given)."""
    import torch

    if threads:
        torch.set_num_threads(threads)
    n = 8192 if device == "cuda" else 2048
    if dtype == "int8":  # int8 x int8 -> int32, as quantised convs run
        a = torch.randint(-100, 100, (n, n), dtype=torch.int8, device=device)
        s, _ = timed(lambda: torch._int_mm(a, a), budget)
        return 2 * n**3 / s / 1e9
    dt = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[dtype]
    a = torch.randn(n, n, device=device, dtype=dt)
    b = torch.randn(n, n, device=device, dtype=dt)
    s, _ = timed(lambda: a @ b, budget)
    return 2 * n**3 / s / 1e9


def result_path(name: str) -> Path:
    """``benchmarks/results/<name>``: where a benchmark's default result goes."""
    return RESULTS / name


def write_result(path: str | os.PathLike, res: dict) -> Path:
    """A result JSON (indent 1, trailing newline), written atomically: the package's writer."""
    return write_json(path, res)
