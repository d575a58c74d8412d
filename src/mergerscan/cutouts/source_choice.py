"""Which image source a run reads, as typed objects (one class per kind of source).

``ProcessArguments`` takes one of these (or the flat keywords ``images=`` / ``frames=`` /
``cutout_service=`` / ``source_kind=``, which become one of these); each turns into the picklable
:class:`~mergerscan.cutouts.registry.SourceConfig` the workers open.  Nothing here reads the
environment: the site default (``$MERGERSCAN_DEFAULT_SOURCE``, ``~/.config``) is read by the
command line (:mod:`mergerscan.cutouts.defaults`) and handed in as one of these.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from .registry import SourceConfig


@dataclass(frozen=True)
class ServiceOptions:
    """Options of an HTTP cutout service; None: the service source's own default
    (:class:`mergerscan.cutouts.service.ServiceSource.Options`, the one place they are written)."""

    timeout: float | None = None  # s per request
    retries: int | None = None
    max_concurrency: int | None = None  # requests at a time per partition task
    max_rate: float | None = None  # requests/s per worker process
    total_timeout: float | None = None  # s per row over all attempts
    backoff: float | None = None  # s, first backoff sleep
    max_bytes: int | None = None  # largest body accepted

    @classmethod
    def from_mapping(cls, options: Any) -> ServiceOptions:
        """A ServiceOptions from itself or a dict of its field names (ValueError names a wrong key)."""
        if isinstance(options, ServiceOptions):
            return options
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(options) - known)
        if unknown:
            raise ValueError(f"unknown service option {unknown[0]!r}; choose {', '.join(sorted(known))}")
        return cls(**options)

    def given(self) -> dict:
        """The options set (not None), as the service source's keyword arguments."""
        return {f.name: getattr(self, f.name) for f in fields(self) if getattr(self, f.name) is not None}

    def over(self, base: ServiceOptions) -> ServiceOptions:
        """These options where set, else ``base``'s (command-line options win over a default's)."""
        return ServiceOptions(**{**base.given(), **self.given()})


@dataclass(frozen=True)
class StampsDir:
    """Pre-cut stamps named <id>.jpg/.png/.fits in ``directory`` (or named by ``path_column``)."""

    directory: str
    path_column: str | None = None
    kind = "stamps"

    def config(self) -> SourceConfig:
        return SourceConfig("stamps", str(Path(self.directory).resolve()))


@dataclass(frozen=True)
class FramesDir:
    """Survey frames with a WCS in ``directory``."""

    directory: str
    kind = "frames"

    def config(self) -> SourceConfig:
        return SourceConfig("frames", str(Path(self.directory).resolve()))


@dataclass(frozen=True)
class CutoutService:
    """An ImgCutout-like HTTP service at ``url``."""

    url: str
    options: ServiceOptions = field(default_factory=ServiceOptions)
    kind = "service"

    def config(self) -> SourceConfig:
        return SourceConfig("service", self.url, tuple(sorted(self.options.given().items())))


@dataclass(frozen=True)
class SourcePlugin:
    """Any registered source (or a ``module:Class`` one) at ``location`` with its own options."""

    kind: str
    location: str
    options: tuple = ()  # (key, value) pairs of the class's Options

    def config(self) -> SourceConfig:
        return SourceConfig(self.kind, str(self.location), tuple(sorted(self.options)))


ImageSource = StampsDir | FramesDir | CutoutService | SourcePlugin
