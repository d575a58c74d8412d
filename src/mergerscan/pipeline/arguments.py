"""Arguments of a process-catalog run, shaped like hats-import's: :class:`RunArguments` (where
the output goes and how the run is executed) and :class:`ProcessArguments` (what is scored, from
which pixels, with which engine) on top, as flat keywords.

The dataclasses validate and never change what the caller gave: values derived from it (absolute
paths, the default source, threads per worker, shared batches, the redacted command) are in the
copy :meth:`ProcessArguments.resolved` returns (``run`` resolves its arguments first).  Nothing
here reads ``$MERGERSCAN_DEFAULT_SOURCE`` or ``~/.config``: the command line does, and passes the
site default in as ``default_source``; without one, no source means SDSS SkyServer.  Errors are an
:class:`ArgumentError` naming the argument in Python terms; the command line words it with flags.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from ..cutouts.defaults import DefaultSource, builtin_default
from ..cutouts.source_choice import CutoutService, FramesDir, ImageSource, ServiceOptions, SourcePlugin, StampsDir
from ..cutouts.sources import SourceConfig, redact_command
from ..verb_flags import default_of
from .run_options import ArgumentError, RunArguments, literal

__all__ = ["EMBEDDINGS_DEFAULT", "ArgumentError", "EngineConfig", "ProcessArguments", "RunArguments", "default_of"]

EMBEDDINGS_DEFAULT = 32  # --embeddings without N


def _embedding_dimension(text: str) -> int:
    try:
        n = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: give a whole number of components, e.g. 32") from None
    if n < 1:
        raise argparse.ArgumentTypeError(f"{n}: give at least 1 component")
    return n


def add_embeddings_option(parser: Any) -> None:
    """``--embeddings [N]`` (ProcessArguments.embeddings; the column: pipeline/embeddings.py)."""
    parser.add_argument(
        "--embeddings",
        nargs="?",
        type=_embedding_dimension,
        const=EMBEDDINGS_DEFAULT,
        default=default_of(ProcessArguments, "embeddings"),
        metavar="N",
        help=f"also write column 'embedding' for every scored row: the first N (default {EMBEDDINGS_DEFAULT}) "
        "PCA components of the engine's penultimate features (the engine needs a representation block)",
    )


@dataclass(frozen=True)
class EngineConfig:
    """The engine of a run and how it is called (a typed view of ProcessArguments' engine fields)."""

    path: str | None  # engine file; None: the packaged default
    backend: str
    views: int | None  # test-time views; None: the card's default
    batch_size: int
    shared_batch: bool  # merge the batches of a worker's concurrent partitions
    purity: float | None  # operating-point targets (engines/operating.py)
    completeness: float | None
    prevalence: float

    @property
    def shared_batch_rows(self) -> int:
        """Rows per merged engine call when batches are shared across partitions (0: not shared)."""
        return 4 * self.batch_size if self.shared_batch else 0


@dataclass(kw_only=True)
class ProcessArguments(RunArguments):
    """A process-catalog run: the catalog, its image source, its engine, the rows and columns."""

    catalog: str
    # the image source: at most one of images / frames / cutout_service / source_kind / image_source
    images: str | None = None  # directory of pre-cut stamps
    frames: str | None = None  # directory of survey frames with WCS
    cutout_service: str | None = None  # URL of an ImgCutout-like service
    service_options: ServiceOptions | dict = field(default_factory=ServiceOptions)  # with cutout_service
    source_kind: str | None = None  # any registered source, or module:Class
    source_location: str | None = None
    source_options: dict = field(default_factory=dict)  # the source class's options
    image_source: ImageSource | None = None  # the same choice as one typed object
    default_source: DefaultSource | None = None  # with no source: the site's (the CLI reads it); None: SkyServer
    engine: str | None = None  # engine file; None = the packaged default
    backend: str = "onnxruntime"
    views: int | None = None  # test-time views (1, 2, 4, 8); None: the engine card's default
    # operating point (engines/operating.py): a target on the card's validation curve, else the
    # card's threshold; the prevalence states the expected purity in any case
    purity: float | None = None
    completeness: float | None = None
    prevalence: float = 0.02  # the survey's merger fraction at which purity is stated
    shared_batch: bool | None = None  # merge the batches of a worker's concurrent partitions (None: GPU backends)
    batch_size: int = 128  # stamps per engine call
    id_column: str | None = None
    ra_column: str | None = None
    dec_column: str | None = None
    keep_columns: list[str] = field(default_factory=list)  # ["*"] keeps all
    path_column: str | None = None  # with images: column of stamp file paths (carried through)
    partition_rows: int = 5000  # upper bound on rows per sky partition
    chunk_rows: int = 200_000  # rows per input chunk read by one task
    hist_order: int = 8  # HEALPix order of the planning histogram
    select: str | None = None  # score only rows where it is true (select.py)
    domain: str = "on"  # on|off|catalog|image: the training-domain checks applied (domain.py)
    domain_columns: tuple = ()  # ((key, column or None), ...)
    domain_limits: tuple = ()  # ((key, value or None), ...)
    embeddings: int = 0  # write the first N PCA components (column embedding); 0: none

    def __post_init__(self):
        if not Path(self.catalog).exists():
            raise ArgumentError(f"catalog {literal(self.catalog)}: no such file", "catalog")
        self._check_source_choice()
        self._check_directories()
        self._check_source()
        self._check_rows()
        self._check_paths()
        self._check_run()
        bad = [n for n in ("partition_rows", "chunk_rows", "batch_size") if getattr(self, n) < 1]
        if bad:  # the argument is the one at fault (the library's .argument); one wording for all three
            raise ArgumentError("{partition_rows}, {chunk_rows} and {batch_size} must be positive", bad[0])
        if not 0 <= self.hist_order <= 12:
            raise ArgumentError("{hist_order} must be in 0..12", "hist_order")
        self._check_cluster()
        self._check_engine()

    # ---------------------------------------------------------------- the image source
    def _explicit_source(self) -> ImageSource | None:
        """The source the caller named (typed), None when none was named."""
        given = [s for s in (self.images, self.frames, self.cutout_service, self.source_kind, self.image_source) if s]
        if len(given) > 1:
            raise ArgumentError(
                "give exactly one image source: {images} DIR, {frames} DIR, {cutout_service} URL "
                "or {source} KIND LOCATION (or none for the default)",
                "image_source",
            )
        if self.image_source is not None:
            return self.image_source
        if self.images:
            return StampsDir(self.images, self.path_column)
        if self.frames:
            return FramesDir(self.frames)
        if self.cutout_service:
            return CutoutService(self.cutout_service, self._service_options())
        if self.source_kind:
            return SourcePlugin(self.source_kind, str(self.source_location), tuple(self.source_options.items()))
        return None

    def _service_options(self) -> ServiceOptions:
        try:
            return ServiceOptions.from_mapping(self.service_options)
        except (TypeError, ValueError) as exc:
            raise ArgumentError(f"{{service_options}}: {literal(exc)}", "service_options") from None

    def _default_in_use(self) -> DefaultSource | None:
        """The default source when none was named: the site's if given, else SkyServer."""
        if self._explicit_source() is not None:
            return None
        return self.default_source or builtin_default()

    @property
    def chosen_source(self) -> ImageSource:
        """The image source of this run, typed (the named one, else the default's with any
        service options given here winning over the default's)."""
        named, default = self._explicit_source(), self._default_in_use()
        if named is not None or default is None:
            assert named is not None
            return named
        if isinstance(default.source, CutoutService):
            return replace(default.source, options=self._service_options().over(default.source.options))
        return default.source

    @property
    def service(self) -> ServiceOptions:
        """The cutout service's options, typed (all None when the source is no service)."""
        chosen = self.chosen_source
        return chosen.options if isinstance(chosen, CutoutService) else ServiceOptions()

    @property
    def source(self) -> SourceConfig:
        """The chosen source as the picklable config the workers open."""
        return self.chosen_source.config()

    def _check_source_choice(self) -> None:
        named = self._explicit_source()
        if self.source_options and not self.source_kind:
            raise ArgumentError("{source_options} goes with {source} KIND LOCATION", "source_options")
        default = self._default_in_use()
        if default is not None and isinstance(default.source, (StampsDir, FramesDir)):
            path, flag = default.source.directory, "images" if isinstance(default.source, StampsDir) else "frames"
            if not Path(path).is_dir():
                raise ArgumentError(
                    f"default image source in {literal(default.origin)}: {{{flag}}} {literal(path)}: not a directory",
                    "default_source",
                )
        options = self._service_options()
        if options.given() and not isinstance(named, CutoutService) and default is None:
            what = "{images}" if self.images else "{frames}" if self.frames else "{source}"
            raise ArgumentError(
                f"{{service_options}} options go with {{cutout_service}} URL, not {what}", "service_options"
            )
        self._check_service_options(options)

    @staticmethod
    def _check_service_options(o: ServiceOptions) -> None:
        if (
            (o.timeout is not None and o.timeout <= 0)
            or (o.retries is not None and o.retries < 0)
            or (o.max_concurrency is not None and o.max_concurrency < 1)
            or (o.total_timeout is not None and o.total_timeout <= 0)
        ):
            raise ArgumentError(
                "{service_timeout} and {service_total_timeout} must be positive, {service_retries} "
                ">= 0 and {service_concurrency} >= 1",
                "service_options",
            )

    def _check_source(self) -> None:
        """An unknown kind, a misspelled option or a location the source can never use (an
        impossible URL): one line now, before anything is written."""
        default, chosen = self._default_in_use(), self.chosen_source
        if self.source_kind or isinstance(chosen, SourcePlugin):
            where, argument = f"{{source}} {literal(chosen.kind)}", "source_kind"
        elif default is not None:
            where, argument = f"default image source in {literal(default.origin)}", "default_source"
        else:
            argument = {"service": "cutout_service", "stamps": "images", "frames": "frames"}[chosen.kind]
            where = f"{{{argument}}}"
        try:
            self.source.check()
        except ValueError as exc:
            raise ArgumentError(f"{where}: {literal(exc)}", argument) from None
        if self.path_column and not self.source.source_class.reads_path_column:
            raise ArgumentError(
                f"{{path_column}} names stamp files: the {literal(self.source.kind)} source reads none (it goes with {{images}} DIR)",
                "path_column",
            )

    # ---------------------------------------------------------------- rows, paths, engine
    def _check_rows(self) -> None:
        if self.select is not None:  # a SelectError names select
            from .select import expression_names

            expression_names(self.select)
        self.domain_settings  # noqa: B018 - validates domain, domain_columns, domain_limits (a DomainError)
        if self.embeddings < 0:
            raise ArgumentError(f"{{embeddings}} {literal(self.embeddings)}: give at least 1 component", "embeddings")

    def _check_directories(self) -> None:
        # before the source's own check (check_location), which words it less precisely
        for name, d in (("images", self.images), ("frames", self.frames)):
            if d and not Path(d).is_dir():
                raise ArgumentError(f"{{{name}}} {literal(d)}: not a directory", name)

    def _check_paths(self) -> None:
        if self.engine and not Path(self.engine).is_file():
            raise ArgumentError(f"{{engine}} {literal(self.engine)}: no such file", "engine")

    def _check_engine(self) -> None:
        from ..engines import get_backend, gpu_backends, parse_backend
        from ..engines.base import VIEWS
        from ..engines.operating import check_target

        try:
            backend_name, _ = parse_backend(self.backend)
        except ValueError as exc:
            raise ArgumentError(f"{{backend}}: {literal(exc)}", "backend") from None
        # an OperatingPointError names the target; the curve itself is read with the engine (run.py)
        check_target(self.purity, self.completeness, self.prevalence)
        if self.views is not None and self.views not in VIEWS:
            raise ArgumentError(f"{{views}} {literal(self.views)}: choose {', '.join(map(str, VIEWS))}", "views")
        if self.gpus and not get_backend(backend_name).needs_gpu:
            raise ArgumentError(
                f"{{gpus}} 1 needs a GPU backend ({', '.join(gpu_backends())}), not {{backend}} {literal(self.backend)}",
                "gpus",
            )

    # ---------------------------------------------------------------- derived
    @property
    def engine_config(self) -> EngineConfig:
        """The engine fields, typed, with shared batches resolved (on for GPU backends by default)."""
        from ..engines import get_backend, parse_backend

        shared = self.shared_batch
        if shared is None:
            shared = get_backend(parse_backend(self.backend)[0]).needs_gpu
        return EngineConfig(
            self.engine,
            self.backend,
            self.views,
            self.batch_size,
            shared,
            self.purity,
            self.completeness,
            self.prevalence,
        )

    @property
    def domain_settings(self):
        """The domain options as a :class:`~mergerscan.pipeline.domain.DomainSettings`."""
        from .domain import DomainSettings

        return DomainSettings(self.domain, tuple(self.domain_columns), tuple(self.domain_limits))

    @property
    def optional_columns(self) -> tuple[str, ...]:
        """The optional output columns this run writes (catalogs/schema.py OPTIONAL_COLUMNS)."""
        return ("embedding",) if self.embeddings else ()

    @property
    def shared_batch_rows(self) -> int:
        """Rows per merged engine call when batches are shared across partitions (0: not shared)."""
        return self.engine_config.shared_batch_rows

    def resolved(self) -> ProcessArguments:
        """A copy with every derived value filled in: absolute catalog and output, the default
        source (if none was named) in the flat source fields and ``default_source``, threads per
        worker, shared batches and the redacted command.  Resolving twice changes nothing."""
        default, chosen = self._default_in_use(), self.chosen_source
        return ResolvedArguments(
            **{f.name: getattr(self, f.name) for f in fields(self)}
            | _flat_source(chosen, self)
            | {
                "default_source": default,
                "threads_per_worker": self.threads,
                "shared_batch": self.engine_config.shared_batch,
                "command": redact_command(self.command),  # stored in summary.json and the report
                "catalog": str(Path(self.catalog).resolve()),
                "output": str(Path(self.output).resolve()),
            }
        )


def _flat_source(chosen: ImageSource, args: ProcessArguments) -> dict:
    """The flat source fields of ``chosen`` (the shape run.py and the summary read)."""
    flat: dict[str, Any] = {"images": None, "frames": None, "cutout_service": None, "image_source": None}
    if isinstance(chosen, StampsDir):
        flat["images"] = chosen.directory
    elif isinstance(chosen, FramesDir):
        flat["frames"] = chosen.directory
    elif isinstance(chosen, CutoutService):
        flat |= {"cutout_service": chosen.url, "service_options": chosen.options.given()}
    else:
        flat |= {"source_kind": chosen.kind, "source_location": chosen.location, "source_options": dict(chosen.options)}
    if isinstance(chosen, StampsDir) and chosen.path_column and not args.path_column:
        flat["path_column"] = chosen.path_column
    return flat


@dataclass(kw_only=True)
class ResolvedArguments(ProcessArguments):
    """ProcessArguments with every derived value filled in (:meth:`ProcessArguments.resolved`)."""

    def _default_in_use(self) -> DefaultSource | None:
        return self.default_source  # filled in when resolved: the default in use, None when one was named

    def resolved(self) -> ProcessArguments:
        return self
