"""Arguments of a process-catalog run: a self-validating dataclass (errors are one line)."""

from __future__ import annotations

import argparse
import os
import shlex
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from ..cutouts.sources import SourceConfig, redact_command
from .slurm import SlurmOptions, is_slurm_task, slurm_cpus

if TYPE_CHECKING:
    from ..cutouts.defaults import DefaultSource


class ArgumentError(ValueError):
    """Bad command-line arguments; the message is one line."""


EMBEDDINGS_DEFAULT = 32  # --embeddings without N


def _embedding_dimension(text: str) -> int:
    try:
        n = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: give a whole number of components, e.g. 32") from None
    if n < 1:
        raise argparse.ArgumentTypeError(f"{n}: give at least 1 component")
    return n


def add_embeddings_option(parser: argparse.ArgumentParser) -> None:
    """``--embeddings [N]`` (ProcessArguments.embeddings; the column: pipeline/embeddings.py)."""
    parser.add_argument(
        "--embeddings",
        nargs="?",
        type=_embedding_dimension,
        const=EMBEDDINGS_DEFAULT,
        default=0,
        metavar="N",
        help=f"also write column 'embedding' for every scored row: the first N (default {EMBEDDINGS_DEFAULT}) "
        "PCA components of the engine's penultimate features (the engine needs a representation block)",
    )


@dataclass
class ProcessArguments:
    catalog: str
    output: str
    images: str | None = None  # directory of pre-cut stamps
    frames: str | None = None  # directory of survey frames with WCS
    cutout_service: str | None = None  # URL of an ImgCutout-like service
    engine: str | None = None  # engine file; None = the packaged default
    backend: str = "onnxruntime"
    id_column: str | None = None
    ra_column: str | None = None
    dec_column: str | None = None
    keep_columns: list[str] = field(default_factory=list)  # ["*"] keeps all
    path_column: str | None = None  # with images: column of stamp file paths (carried through)
    workers: int = 1  # local worker processes; SLURM worker jobs with cluster="slurm"
    threads_per_worker: int = 0  # 0 = cores // workers (SLURM: the task's/job's cores)
    scheduler: str | None = None  # address of a running Dask scheduler
    cluster: str = "local"  # local | slurm (workers as SLURM jobs) | slurm-runner (in an allocation)
    gpus: int = 0  # GPUs per worker (0 or 1); tasks then need the Dask resource GPU
    slurm: SlurmOptions = field(default_factory=SlurmOptions)
    views: int | None = None  # test-time views (1, 2, 4, 8); None: the engine card's default
    # operating point (engines/operating.py): a target on the card's validation curve, else the
    # card's threshold; the prevalence states the expected purity in any case
    purity: float | None = None
    completeness: float | None = None
    prevalence: float = 0.02
    shared_batch: bool | None = None  # merge the batches of a worker's concurrent partitions (None: GPU backends)
    memory_limit: str = "auto"
    partition_rows: int = 5000  # upper bound on rows per sky partition
    chunk_rows: int = 200_000  # rows per input chunk read by one task
    hist_order: int = 8  # HEALPix order of the planning histogram
    batch_size: int = 128  # stamps per engine call
    overwrite: bool = False
    progress: bool = True
    report: bool = True  # write OUT/report/index.html at the end
    mode: str = "all"  # all | plan | shard | finalize (SLURM array jobs)
    shard: tuple | None = None  # (i, n) with mode="shard"
    service_options: dict = field(default_factory=dict)
    source_kind: str | None = None  # --source KIND LOCATION: any registered source, or module:Class
    source_location: str | None = None
    source_options: dict = field(default_factory=dict)  # --source-option KEY=VALUE
    select: str | None = None  # --select EXPR: score only rows where it is true (select.py)
    domain: str = "on"  # --domain on|off|catalog|image: the training-domain checks applied (domain.py)
    domain_columns: tuple = ()  # --domain-column KEY=COLUMN: ((key, column or None), ...)
    domain_limits: tuple = ()  # --domain-limit KEY=VALUE: ((key, value or None), ...)
    embeddings: int = 0  # --embeddings N: write the first N PCA components (column embedding); 0: none
    samp: bool = False  # send OUT/mergers.fits to TOPCAT over SAMP at the end
    default_source: DefaultSource | None = None  # set when no source flag was given (cutouts/defaults.py)
    command: str = field(default_factory=lambda: shlex.join(sys.argv))  # redacted in __post_init__

    def __post_init__(self):
        self.command = redact_command(self.command)  # stored in summary.json and the report
        if not Path(self.catalog).exists():
            raise ArgumentError(f"catalog {self.catalog}: no such file")
        sources = [s for s in (self.images, self.frames, self.cutout_service, self.source_kind) if s]
        if not sources:
            if self.source_options:
                raise ArgumentError("--source-option goes with --source KIND LOCATION")
            self._use_default_source()
        elif len(sources) != 1:
            raise ArgumentError(
                "give exactly one image source: --images DIR, --frames DIR, --cutout-service URL "
                "or --source KIND LOCATION (or none for the default)"
            )
        if self.service_options and not self.cutout_service and self.default_source is None:
            raise ArgumentError(
                f"--service-* options go with --cutout-service URL, not "
                f"{'--images' if self.images else '--frames' if self.frames else '--source'}"
            )
        if self.source_options and not self.source_kind:
            raise ArgumentError("--source-option goes with --source KIND LOCATION")
        so = self.service_options
        if (
            so.get("timeout", 1) <= 0
            or so.get("retries", 0) < 0
            or so.get("max_concurrency", 1) < 1
            or (so.get("total_timeout") is not None and so["total_timeout"] <= 0)
        ):
            raise ArgumentError(
                "--service-timeout and --service-total-timeout must be positive, --service-retries "
                ">= 0 and --service-concurrency >= 1"
            )
        self._check_source()
        if self.select is not None:
            from .select import SelectError, expression_names

            try:
                expression_names(self.select)
            except SelectError as exc:
                raise ArgumentError(str(exc)) from None
        try:
            self.domain_settings  # noqa: B018 - validates --domain, --domain-column, --domain-limit
        except ValueError as exc:
            raise ArgumentError(str(exc)) from None
        if self.path_column and not self.source.source_class.reads_path_column:
            raise ArgumentError(
                f"--path-column names stamp files: the {self.source.kind} source reads none (it goes with --images DIR)"
            )
        for flag, d in (("--images", self.images), ("--frames", self.frames)):
            if d and not Path(d).is_dir():
                raise ArgumentError(f"{flag} {d}: not a directory")
        if self.engine and not Path(self.engine).is_file():
            raise ArgumentError(f"--engine {self.engine}: no such file")
        if self.workers < 1 or self.threads_per_worker < 0:
            raise ArgumentError("--workers must be >= 1 and --threads-per-worker >= 0")
        if self.embeddings < 0:
            raise ArgumentError(f"--embeddings {self.embeddings}: give at least 1 component")
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
        if self.cluster not in ("local", "slurm", "slurm-runner"):
            raise ArgumentError(f"--cluster {self.cluster}: choose local, slurm or slurm-runner")
        if self.cluster != "local" and self.scheduler:
            raise ArgumentError(
                "--scheduler joins a running scheduler: it does not go with --cluster slurm/slurm-runner"
            )
        if self.cluster == "slurm-runner" and not is_slurm_task():
            raise ArgumentError(
                "--cluster slurm-runner runs under srun inside a SLURM allocation (see slurm/process-catalog.sbatch)"
            )
        if self.gpus not in (0, 1):
            raise ArgumentError("--gpus: 0 (CPU) or 1 (one GPU per worker)")
        from ..engines import get_backend, gpu_backends, parse_backend
        from ..engines.base import VIEWS

        try:
            backend_name, _ = parse_backend(self.backend)
        except ValueError as exc:
            raise ArgumentError(f"--backend: {exc}") from None
        from ..engines.operating import OperatingPointError, check_target

        try:  # the curve itself is read with the engine (run.py)
            check_target(self.purity, self.completeness, self.prevalence)
        except OperatingPointError as exc:
            raise ArgumentError(str(exc)) from None
        if self.views is not None and self.views not in VIEWS:
            raise ArgumentError(f"--views {self.views}: choose {', '.join(map(str, VIEWS))}")
        if self.shared_batch is None:
            self.shared_batch = get_backend(backend_name).needs_gpu
        if self.gpus and not get_backend(backend_name).needs_gpu:
            raise ArgumentError(
                f"--gpus 1 needs a GPU backend ({', '.join(gpu_backends())}), not --backend {self.backend}"
            )
        if self.cluster == "slurm":
            # --gpus 1 with --slurm-processes k: the k worker processes of a job share its one GPU
            # (past one process's GIL); each advertises its threads as GPU units
            try:
                self.slurm.validate()
            except ValueError as exc:
                raise ArgumentError(str(exc)) from None
            if self.threads_per_worker == 0:
                self.threads_per_worker = self.slurm.cores // self.slurm.processes
        if self.threads_per_worker == 0:
            cores = slurm_cpus() or (
                len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
            )
            self.threads_per_worker = max(1, cores // self.workers)
        self.catalog = str(Path(self.catalog).resolve())
        self.output = str(Path(self.output).resolve())

    def _check_source(self) -> None:
        """An unknown kind, a misspelled option or a location the source can never use (an
        impossible URL): one line now, before anything is written."""
        if self.source_kind:
            flag = f"--source {self.source_kind}"
        elif self.default_source is not None:
            flag = f"default image source in {self.default_source.origin}"
        else:
            flag = "--cutout-service" if self.cutout_service else "--images" if self.images else "--frames"
        try:
            self.source.check()
        except ValueError as exc:
            raise ArgumentError(f"{flag}: {exc}") from None

    def _use_default_source(self):
        """No source flag: the site's default, else SDSS SkyServer (cutouts/defaults.py); options
        given on the command line win over the default's."""
        from ..cutouts.defaults import default_source

        try:
            d = default_source()
        except ValueError as exc:
            raise ArgumentError(str(exc)) from None
        for flag, path in (("--images", d.images), ("--frames", d.frames)):
            if path and not Path(path).is_dir():
                raise ArgumentError(f"default image source in {d.origin}: {flag} {path}: not a directory")
        self.images, self.frames, self.cutout_service = d.images, d.frames, d.cutout_service
        if d.cutout_service:
            self.service_options = {**d.options, **self.service_options}
        self.default_source = d

    @property
    def domain_settings(self):
        """The --domain options as a :class:`~mergerscan.pipeline.domain.DomainSettings`."""
        from .domain import DomainSettings

        return DomainSettings(self.domain, tuple(self.domain_columns), tuple(self.domain_limits))

    @property
    def optional_columns(self) -> tuple[str, ...]:
        """The optional output columns this run writes (catalogs/schema.py OPTIONAL_COLUMNS)."""
        return ("embedding",) if self.embeddings else ()

    @property
    def shared_batch_rows(self) -> int:
        """Rows per merged engine call when batches are shared across partitions (0: not shared)."""
        return 4 * self.batch_size if self.shared_batch else 0

    @property
    def source(self) -> SourceConfig:
        if self.source_kind:
            return SourceConfig(self.source_kind, str(self.source_location), tuple(sorted(self.source_options.items())))
        if self.images:
            return SourceConfig("stamps", str(Path(self.images).resolve()))
        if self.frames:
            return SourceConfig("frames", str(Path(self.frames).resolve()))
        if not self.cutout_service:
            raise ArgumentError("no image source: give --images DIR, --frames DIR or --cutout-service URL")
        return SourceConfig("service", self.cutout_service, tuple(sorted(self.service_options.items())))
