"""The image-source registry: the one place an image source is added.

A source is one module with one class (see :mod:`mergerscan.cutouts.base` for what the class
declares) plus one registry entry:

* a built-in source is a line of :data:`BUILTIN` (``kind -> "module:Class"``), imported on first
  use, so importing the registry stays cheap and the source modules never import it;
* any other source (a site's own, a test's toy) registers itself where its class is defined::

      from mergerscan.cutouts.base import SourceBase, SourceOptions
      from mergerscan.cutouts.registry import register_source

      @register_source("toy")
      class ToySource(SourceBase):
          @dataclass(frozen=True)
          class Options(SourceOptions):
              level: int = 7
          statuses = frozenset({Status.NO_IMAGE})
          def fetch(self, rows): ...

  and is then opened by kind: ``open_source(SourceConfig("toy", location, (("level", 3),)), spec)``.

**Worker processes** (Dask) do not run the code that registered a source in the parent.  So a
:class:`SourceConfig` is pickled with its class's ``module:qualname``: a worker that does not
know the kind records that origin, and :func:`source_class` imports the module there (its
``@register_source`` then runs in the worker too).  The class must therefore be defined at the
top level of a module the workers can import (on their ``sys.path``; a pytest test module is, as
Dask's spawned workers inherit the parent's ``sys.path``), not inside a function or in
``__main__``.  A kind may also be given directly as ``"module:Class"``.

Errors are one line (ValueError): an unknown kind lists the registered ones, an unknown option
names itself, the source and the valid options (:meth:`SourceOptions.from_mapping`).
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, replace
from typing import Any

from ..catalogs.schema import STATUS
from .base import SourceBase, SourceOptions
from .preprocess import PreprocessSpec
from .redact import redact_options, redact_url

BUILTIN = {
    "stamps": "mergerscan.cutouts.stamps:StampSource",  # a directory of pre-cut stamp files
    "frames": "mergerscan.cutouts.frames:FrameSource",  # survey frames with a WCS
    "service": "mergerscan.cutouts.service:ServiceSource",  # an ImgCutout-like HTTP service
}
_origins: dict[str, str | None] = dict(BUILTIN)  # kind -> "module:qualname" (None: not importable)
_classes: dict[str, type[SourceBase]] = {}  # kind -> class, once imported or registered
_by_path: dict[str, type[SourceBase]] = {}  # "module:Class" kinds, once imported
CAPABILITIES = ("reads_path_column", "needs_network")


def _origin_of(cls: type) -> str | None:
    if "<locals>" in cls.__qualname__ or cls.__module__ in ("__main__", "__mp_main__"):
        return None  # a worker cannot import it by name
    return f"{cls.__module__}:{cls.__qualname__}"


def _check(kind: str, cls: Any) -> None:
    """One-line ValueError unless ``cls`` declares what a source class must."""
    what = f"image source {kind!r} ({getattr(cls, '__qualname__', cls)!r})"
    if not isinstance(cls, type):
        raise ValueError(f"{what}: not a class")
    opts = getattr(cls, "Options", None)
    if not (isinstance(opts, type) and issubclass(opts, SourceOptions)):
        raise ValueError(f"{what}: needs an Options class: a frozen dataclass subclassing SourceOptions")
    bad = sorted(set(getattr(cls, "statuses", ())) - set(STATUS))
    if bad:
        raise ValueError(f"{what}: statuses {', '.join(map(repr, bad))} are not in catalogs.schema.STATUS")
    for attr in CAPABILITIES:
        if not isinstance(getattr(cls, attr, None), bool):
            raise ValueError(f"{what}: class attribute {attr} must be True or False")
    for meth in ("fetch", "close", "low_memory_options"):
        if not callable(getattr(cls, meth, None)):
            raise ValueError(f"{what}: needs a {meth}() method (subclass SourceBase)")


def register_source(kind: str, cls: type | None = None) -> Any:
    """Register ``cls`` as the image source ``kind``; as a decorator: ``@register_source("toy")``.
    Registering the same class (or a re-import of its module) again is harmless; another class
    under a taken kind is a ValueError."""
    if not isinstance(kind, str) or not kind or ":" in kind or kind != kind.strip():
        raise ValueError(f"image source kind {kind!r}: a non-empty name without ':' or spaces")

    def add(c: type) -> type:
        _check(kind, c)
        origin, taken = _origin_of(c), _origins.get(kind)
        if kind in _origins and taken != origin and _classes.get(kind) is not c:
            raise ValueError(
                f"image source kind {kind!r} is already registered ({taken or 'in-process'}); "
                f"choose another kind for {c.__qualname__}"
            )
        c.kind = kind  # type: ignore[attr-defined]
        if "Options" in c.__dict__:  # its own (not a parent's): messages name this kind
            c.Options.source_kind = kind  # type: ignore[attr-defined]
        _origins[kind], _classes[kind] = origin, c
        return c

    return add if cls is None else add(cls)


def _import(path: str) -> Any:
    module, _, qualname = path.partition(":")
    try:
        obj: Any = importlib.import_module(module)
        for part in qualname.split("."):
            obj = getattr(obj, part)
    except Exception as exc:  # any import failure is one line naming the path
        raise ValueError(f"image source {path!r}: cannot import it ({type(exc).__name__}: {exc})") from None
    return obj


def _kinds() -> list[str]:
    return sorted(_origins)


def source_class(kind: str) -> type[SourceBase]:
    """The class of image source ``kind`` (a registered kind or ``"module:Class"``); it declares
    what :class:`SourceBase` does (checked), whether or not it subclasses it."""
    cls = _classes.get(kind) or _by_path.get(kind)
    if cls is not None:
        return cls
    if kind in _origins:
        origin = _origins[kind]
        if origin is None:
            raise ValueError(
                f"image source {kind!r} was registered in another process from a class this "
                "process cannot import (define it at the top level of an importable module)"
            )
        cls = _import(origin)  # its module may register it itself
        if _classes.get(kind) is None:
            _check(kind, cls)
            if kind in BUILTIN and getattr(cls, "kind", None) != kind:
                raise ValueError(
                    f"built-in image source {origin}: its kind is {getattr(cls, 'kind', None)!r}, not {kind!r}"
                )
            _classes[kind] = cls
        return _classes[kind]
    if ":" in kind:
        cls = _import(kind)
        _check(kind, cls)
        _by_path[kind] = cls
        return cls
    raise ValueError(f"unknown image source kind {kind!r} (registered: {', '.join(_kinds())}; or give 'module:Class')")


def registered_sources() -> dict[str, type[SourceBase]]:
    """Every registered kind and its class (imports the built-ins)."""
    return {k: source_class(k) for k in _kinds()}


@dataclass(frozen=True)
class SourceConfig:
    """What the pipeline knows about the image source: picklable, sent to workers (with the
    origin of its class, see the module docstring)."""

    kind: str  # a registered kind ("stamps" | "frames" | "service" | ...)
    location: str  # directory or URL
    options: tuple = ()  # (key, value) pairs of the source's Options, e.g. (("timeout", 10.0),)

    def fingerprint(self) -> str:
        """The source's part of the run's identity: credentials are not part of it."""
        return f"{self.kind}:{self.shown}:{sorted(self.shown_options.items())}"

    @property
    def shown(self) -> str:
        """The location as stored or printed: credentials in a URL redacted (:func:`redact_url`)."""
        return redact_url(self.location)

    @property
    def shown_options(self) -> dict:
        """The options as stored or printed: secret-named ones redacted (:func:`redact_options`)."""
        return redact_options(self.options)

    def __repr__(self) -> str:  # Dask logs a failed task's arguments: never the credentials
        return f"SourceConfig(kind={self.kind!r}, location={self.shown!r}, options={self.shown_options!r})"

    @property
    def source_class(self) -> type[SourceBase]:
        """The class, for its capabilities: ``config.source_class.reads_path_column``."""
        return source_class(self.kind)

    def check(self) -> SourceOptions:
        """The validated options; ValueError (one line) for an unknown kind or option, or a
        location the source can never use (:meth:`SourceBase.check_location`)."""
        cls = self.source_class
        cls.check_location(self.location)
        return cls.Options.from_mapping(dict(self.options), source=self.kind)

    def low_memory(self) -> SourceConfig:
        """This source with the options for a partition retried after running out of memory."""
        opts = self.source_class.low_memory_options(dict(self.options))
        return replace(self, options=tuple(opts.items()))

    def __reduce__(self):
        origin = None if self.kind in BUILTIN else _origins.get(self.kind)
        return (_unpickle_config, (self.kind, self.location, self.options, origin))


def _unpickle_config(kind: str, location: str, options: tuple, origin: str | None) -> SourceConfig:
    if origin is not None and kind not in _origins:  # registered in the sending process: import on use
        _origins[kind] = origin
    return SourceConfig(kind, location, options)


def open_source(config: SourceConfig, spec: PreprocessSpec) -> SourceBase:
    """An instance of the configured source: ``cls(location, spec, **options)``."""
    return source_class(config.kind)(config.location, spec, **dict(config.options))
