"""Arguments of a process-catalog run: a self-validating dataclass (errors are one line)."""

from __future__ import annotations

import os
import shlex
import sys
from dataclasses import dataclass, field
from pathlib import Path

from ..cutouts.sources import SourceConfig


class ArgumentError(ValueError):
    """Bad command-line arguments; the message is one line."""


@dataclass
class ProcessArguments:
    catalog: str
    output: str
    images: str | None = None              # directory of pre-cut stamps
    frames: str | None = None              # directory of survey frames with WCS
    cutout_service: str | None = None      # URL of an ImgCutout-like service
    engine: str | None = None              # engine file; None = the packaged default
    backend: str = "onnxruntime"
    id_column: str | None = None
    ra_column: str | None = None
    dec_column: str | None = None
    keep_columns: list[str] = field(default_factory=list)   # ["*"] keeps all
    workers: int = 1
    threads_per_worker: int = 0            # 0 = cores // workers
    scheduler: str | None = None           # address of a running Dask scheduler
    memory_limit: str = "auto"
    partition_rows: int = 5000             # upper bound on rows per sky partition
    chunk_rows: int = 200_000              # rows per input chunk read by one task
    hist_order: int = 8                    # HEALPix order of the planning histogram
    batch_size: int = 128                  # stamps per engine call
    overwrite: bool = False
    progress: bool = True
    report: bool = True                    # write OUT/report/index.html at the end
    mode: str = "all"                      # all | plan | shard | finalize (SLURM array jobs)
    shard: tuple | None = None             # (i, n) with mode="shard"
    service_options: dict = field(default_factory=dict)
    command: str = field(default_factory=lambda: " ".join(shlex.quote(a) for a in sys.argv))

    def __post_init__(self):
        if not Path(self.catalog).exists():
            raise ArgumentError(f"catalog {self.catalog}: no such file")
        sources = [s for s in (self.images, self.frames, self.cutout_service) if s]
        if len(sources) != 1:
            raise ArgumentError("give exactly one image source: --images DIR, --frames DIR or --cutout-service URL")
        for flag, d in (("--images", self.images), ("--frames", self.frames)):
            if d and not Path(d).is_dir():
                raise ArgumentError(f"{flag} {d}: not a directory")
        if self.cutout_service and not self.cutout_service.lower().startswith(("http://", "https://")):
            raise ArgumentError(f"--cutout-service {self.cutout_service}: only http(s) URLs are allowed")
        if self.engine and not Path(self.engine).is_file():
            raise ArgumentError(f"--engine {self.engine}: no such file")
        if self.workers < 1 or self.threads_per_worker < 0:
            raise ArgumentError("--workers must be >= 1 and --threads-per-worker >= 0")
        if self.partition_rows < 1 or self.chunk_rows < 1 or self.batch_size < 1:
            raise ArgumentError("--partition-rows, --chunk-rows and --batch-size must be positive")
        if not 0 <= self.hist_order <= 12:
            raise ArgumentError("--hist-order must be in 0..12")
        if self.mode not in ("all", "plan", "shard", "finalize"):
            raise ArgumentError(f"unknown mode {self.mode!r}")
        if (self.mode == "shard") != (self.shard is not None):
            raise ArgumentError("--shard i/N goes with shard mode only")
        if self.shard is not None and not (len(self.shard) == 2 and 0 <= self.shard[0] < self.shard[1]):
            raise ArgumentError(f"--shard {self.shard}: need i/N with 0 <= i < N")
        if self.threads_per_worker == 0:
            self.threads_per_worker = max(1, (os.cpu_count() or 1) // self.workers)
        self.catalog = str(Path(self.catalog).resolve())
        self.output = str(Path(self.output).resolve())

    @property
    def source(self) -> SourceConfig:
        if self.images:
            return SourceConfig("stamps", str(Path(self.images).resolve()))
        if self.frames:
            return SourceConfig("frames", str(Path(self.frames).resolve()))
        return SourceConfig("service", self.cutout_service, tuple(sorted(self.service_options.items())))
