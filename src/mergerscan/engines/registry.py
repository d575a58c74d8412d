"""The backend registry: every inference backend is one :class:`BackendSpec`, registered once.

A spec says everything the rest of the code needs to know about a backend, without importing it:
its name, the engine factory, an options dataclass (unknown or misspelled options are refused with
one line naming the option, the backend and the valid ones), the precisions it runs and the
default one, whether it needs a GPU, and ``unavailable_reason()`` (None when it can run here).
``load_engine``, ``parse_backend``, ``backend_precision``, ``available_backends``, the pipeline's
``--backend``/``--gpus`` checks and the shared-batch engine all ask the registry.

Adding a backend is one new module plus one registry entry::

    # mergerscan/engines/mybackend.py: heavy imports inside the functions only
    @dataclass(frozen=True)
    class MyOptions:
        precision: str | None = None
        max_batch: int = 64

    @register_backend("mybackend", options=MyOptions, precisions=("fp32",), default_precision="fp32")
    class MyEngine(Engine):
        def __init__(self, path, options: MyOptions, threads: int = 1, views: int | None = None): ...

and its module name in :data:`BUILTIN_MODULES` (the entry).  The options dataclass gives every
field a default and has a ``precision`` field (where a ``name:precision`` suffix goes).  The factory is called as
``factory(path, options, threads=threads, views=views)``; ``views`` is the test-time view count
asked for (None: the card's); the engine need not apply it (``load_engine`` sets
``engine.info.with_views`` afterwards) unless it builds views into a compiled plan.

**Backends from outside the package (a test file, a plugin)**: registering in-process is enough for
that process (``@register_backend("toy", ...)`` in the test file, then ``load_engine(path,
backend="toy")``).  Dask workers are other processes (spawned, or started by SLURM) and only see
backends whose module they import.  Three ways, most robust first:

1. ``--backend toy@mymodule`` (``NAME[:PRECISION][@MODULE]``): the backend string itself names the
   module that registers ``toy``; every process that parses the string (the client's argument
   checks, each worker's ``load_engine``) imports it.  Works with an already running cluster, as
   long as ``mymodule`` is importable there (LocalCluster's spawned workers get the client's
   ``sys.path``; a subprocess or SLURM job needs it on ``PYTHONPATH``).
2. ``MERGERSCAN_BACKENDS=mod1,mod2``: when a name is not registered, the registry imports these
   modules (once per process).  Workers see it only if it was set before they started.
3. ``mergerscan.backends`` entry points of installed distributions (``name = "pkg.module"``),
   imported like (2): the way for an installed plugin.

Registering the same factory again (a module imported twice under the same name) is harmless.
"""

from __future__ import annotations

import dataclasses
import difflib
import importlib
import os
import threading
import typing
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from ..argument_error import ArgumentError, literal

PLUGIN_ENV = "MERGERSCAN_BACKENDS"
ENTRY_POINT_GROUP = "mergerscan.backends"
# the package's own backend modules; importing one registers its specs (they import nothing heavy)
BUILTIN_MODULES = ("mergerscan.engines.onnxruntime", "mergerscan.engines.torch", "mergerscan.engines.tensorrt")

_REGISTRY: dict[str, BackendSpec] = {}
_lock = threading.RLock()  # guards the dict; imports hold only _import_lock (no lock-order deadlock)
_import_lock = threading.RLock()
_loaded = {"builtin": False, "plugins": False}


def _always_available() -> str | None:
    return None


@dataclass(frozen=True)
class BackendSpec:
    name: str
    factory: Callable[..., Any]  # (path, options, threads=, views=) -> Engine
    options: type  # a dataclass; every field has a default
    precisions: tuple[str, ...] = ("fp32",)
    default_precision: str = "fp32"
    needs_gpu: bool = False
    unavailable_reason: Callable[[], str | None] = field(default=_always_available)
    help: str = ""

    def __post_init__(self):
        if not dataclasses.is_dataclass(self.options):
            raise TypeError(f"backend {self.name}: options must be a dataclass, got {self.options!r}")
        if self.default_precision not in self.precisions:
            raise ValueError(
                f"backend {self.name}: default precision {self.default_precision} is not one of {self.precisions}"
            )

    @property
    def option_names(self) -> tuple[str, ...]:
        return tuple(f.name for f in dataclasses.fields(self.options))

    def make_options(self, given: dict[str, Any]) -> Any:
        """The options dataclass from a dict; an unknown name is a one-line ValueError."""
        valid = self.option_names
        for key in given:
            if key not in valid:
                close = difflib.get_close_matches(key, valid, n=1)
                hint = f"did you mean {close[0]!r}? " if close else ""
                raise ArgumentError(
                    literal(
                        f"backend {self.name}: unknown option {key!r}; {hint}valid options: {', '.join(valid) or '(none)'}"
                    ),
                    key,
                )
        precision = given.get("precision")
        if precision is not None and precision not in self.precisions:
            others = [n for n, s in sorted(_REGISTRY.items()) if precision in s.precisions]
            raise ValueError(
                f"backend {self.name}: precision {precision!r} is not one it runs "
                f"({', '.join(self.precisions)})" + (f"; {precision} runs on {', '.join(others)}" if others else "")
            )
        for key, value in given.items():
            check_option_value(self.name, key, value, self.options)
        return self.options(**given)

    def _origin(self) -> str:
        return f"{getattr(self.factory, '__module__', '?')}.{getattr(self.factory, '__qualname__', '?')}"


def check_option_value(backend: str, key: str, value: Any, options: type) -> None:
    """A backend option's value against its field's type (a one-line ArgumentError naming it): every int option
    counts something (stamps, buffers), so it is a whole number >= 1; a flag is True or False.
    Types a third-party options class declares otherwise are left to it."""
    if value is None:
        return
    hint = typing.get_type_hints(options).get(key)
    kinds = set(typing.get_args(hint)) - {type(None)} if typing.get_args(hint) else {hint}
    if kinds == {int} and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
        raise ArgumentError(literal(f"backend {backend}: option {key} {value!r}: give a whole number >= 1"), key)
    if kinds == {bool} and not isinstance(value, bool):
        raise ArgumentError(literal(f"backend {backend}: option {key} {value!r}: give True or False"), key)
    if kinds == {str} and not isinstance(value, (str, os.PathLike)):
        raise ArgumentError(literal(f"backend {backend}: option {key} {value!r}: give text"), key)


def register_backend(name_or_spec: str | BackendSpec, **spec_fields: Any):
    """Register a :class:`BackendSpec`, or, given a name, decorate the factory (an Engine class or
    a function) with the remaining BackendSpec fields.  Registering a name a second time with a
    factory of the same module and name replaces it (a re-imported module); another factory under
    a taken name is an error."""
    if isinstance(name_or_spec, BackendSpec):
        _add(name_or_spec)
        return name_or_spec

    def decorate(factory):
        _add(BackendSpec(name_or_spec, factory, **spec_fields))
        return factory

    return decorate


def _add(spec: BackendSpec) -> None:
    if not spec.name or any(c in spec.name for c in ":,@"):
        raise ValueError(f"backend name {spec.name!r}: must be non-empty without ':', ',' or '@'")
    with _lock:
        old = _REGISTRY.get(spec.name)
        if old is not None and old._origin() != spec._origin():
            raise ValueError(f"backend {spec.name!r} is already registered by {old._origin()}")
        _REGISTRY[spec.name] = spec


def unregister_backend(name: str) -> None:
    """Remove a backend (tests that register a toy one clean up with this)."""
    with _lock:
        _REGISTRY.pop(name, None)


def _load_builtin() -> None:
    with _import_lock:
        if not _loaded["builtin"]:
            for module in BUILTIN_MODULES:
                importlib.import_module(module)
            _loaded["builtin"] = True


def _load_plugins() -> None:
    """Import the modules of $MERGERSCAN_BACKENDS and the mergerscan.backends entry points, once."""
    with _import_lock:
        if _loaded["plugins"]:
            return
        _loaded["plugins"] = True  # a failing plugin is reported once, not retried per lookup
        for module in filter(None, (m.strip() for m in os.environ.get(PLUGIN_ENV, "").split(","))):
            import_backend_module(module, f"${PLUGIN_ENV}")
        from importlib.metadata import entry_points

        for ep in entry_points(group=ENTRY_POINT_GROUP):
            ep.load()


def backend_specs() -> dict[str, BackendSpec]:
    """Every registered backend (built-in, plugins, and any registered in this process)."""
    _load_builtin()
    _load_plugins()
    with _lock:
        return dict(_REGISTRY)


def get_backend(name: str) -> BackendSpec:
    """The spec of backend ``name`` (no ``:precision``), or a one-line ValueError."""
    _load_builtin()
    if name not in _REGISTRY:
        _load_plugins()
    with _lock:
        if name in _REGISTRY:
            return _REGISTRY[name]
        names = sorted(_REGISTRY)
    close = difflib.get_close_matches(name, names, n=1)
    hint = f"did you mean {close[0]!r}? " if close else ""
    raise ValueError(f"unknown backend {name!r}; {hint}choose from {', '.join(names)}")


def backend_names() -> tuple[str, ...]:
    return tuple(backend_specs())


def gpu_backends() -> tuple[str, ...]:
    return tuple(n for n, s in backend_specs().items() if s.needs_gpu)


def import_backend_module(module: str, backend: str = "") -> None:
    """Import a module that registers backends (``name@module`` references, plugins)."""
    try:
        importlib.import_module(module)
    except ImportError as exc:
        raise ValueError(f"backend {backend or module}: cannot import backend module {module!r}: {exc}") from None


def parse_backend(backend: str) -> tuple[str, dict]:
    """``name[:precision][@module]``, e.g. ``torch-cuda:fp16`` -> (name, {"precision": "fp16"}).
    ``@module`` names a module that registers ``name`` when imported (a backend outside the
    package); it is imported wherever the string is parsed, so Dask workers, which get the same
    string, import it too.  A precision the backend cannot run is refused (one line), never run at
    another precision."""
    backend, _, module = backend.partition("@")
    name, _, precision = backend.partition(":")
    if module and name not in _REGISTRY:
        import_backend_module(module, name)
    spec = get_backend(name)
    if precision and precision not in spec.precisions:
        raise ValueError(f"{backend}: {name} runs precision {', '.join(spec.precisions)}, not {precision!r}")
    return name, ({"precision": precision} if precision else {})


def backend_precision(backend: str) -> str:
    """The arithmetic a backend spec computes in (``tensorrt`` -> fp16, ``torch-cuda:fp32`` -> fp32)."""
    name, opts = parse_backend(backend)
    return opts.get("precision") or get_backend(name).default_precision


def available_backends() -> dict[str, str | None]:
    """{backend: None if it can run here, else the reason it cannot}."""
    return {name: spec.unavailable_reason() for name, spec in backend_specs().items()}
