"""What every image source is made of (a leaf: the sources and the registry import it, never the
reverse).

An image source class declares, as class attributes:

* ``kind``: its name on the registry (``"stamps"``, ``"frames"``, ``"service"``, ...);
* ``Options``: a frozen dataclass of its options (a :class:`SourceOptions`), the only keyword
  arguments its constructor takes; :meth:`SourceOptions.from_mapping` refuses an unknown or
  misspelled one with one line naming it, the source and the valid ones;
* ``statuses``: every status besides ``"ok"`` that its ``fetch`` can return (keys of
  :data:`mergerscan.catalogs.schema.STATUS`);
* :meth:`SourceBase.check_location`: a location it can never use is refused before a run starts;
* capabilities the pipeline asks instead of comparing kind strings: ``reads_path_column`` (rows
  may carry a ``path`` column naming each row's file),
  :meth:`SourceBase.low_memory_options` (its options for a partition retried after the worker ran
  out of memory) and ``needs_network`` (its rows are fetched over the network: a run on SLURM
  compute nodes says so, as many clusters give those no outbound network).

An instance is made as ``cls(location, spec, **options)``; ``fetch(rows)`` receives a DataFrame
with columns ``id`` (str), ``ra``, ``dec`` (float64, deg, already validated) and, where
``reads_path_column``, optionally ``path``; it returns ``(stamps, status)``: uint8 ``(N, S, S,
3)`` stamps in the SkyServer convention described in :mod:`mergerscan.cutouts.preprocess` (S =
spec.stamp_pixels at spec.pixel_scale) and an object array of status strings.  Rows whose status
is not scored get an all-zero stamp (:func:`empty_stamps`); a source also keeps ``examples``, the
first reason (one line) per failure status it returned, for the run summary.  Every source passes
its images through :mod:`mergerscan.cutouts.quality` (the one stamp check).  A source is created
per partition task (so its caches are bounded by the partition) and closed after it.
"""

from __future__ import annotations

import difflib
import numbers
import os
import typing
from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any, ClassVar, Protocol

import numpy as np
import pandas as pd

from .preprocess import PreprocessSpec


class ImageSource(Protocol):
    name: str
    examples: dict

    def fetch(self, rows: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]: ...

    def close(self) -> None: ...


@dataclass(frozen=True)
class SourceOptions:
    """Base of a source's ``Options`` dataclass; ``source_kind`` names the source in messages."""

    source_kind: ClassVar[str] = "image source"

    @classmethod
    def names(cls) -> list[str]:
        return [f.name for f in fields(cls)]

    @classmethod
    def from_mapping(cls, given: Mapping[str, Any], source: str | None = None) -> SourceOptions:
        """The options from ``given``; ValueError (one line) for an option the source (``source``,
        else ``source_kind``) does not take."""
        valid = cls.names()
        for key in given:
            if key not in valid:
                raise ValueError(unknown_option(str(key), source or cls.source_kind, valid))
        kinds = _plain_kinds(cls)
        for key, value in given.items():  # "x" for an int option would fail in a worker, later
            kind = kinds.get(key)
            if kind is not None and value is not None and not _is_kind(value, kind):
                raise ValueError(f"{source or cls.source_kind}: option {key} {value!r}: give {kind.__name__}")
        return cls(**dict(given))


def check_directory(location: str) -> None:
    """ValueError (one line) unless ``location`` is a directory (a stamps or frames source)."""
    if not os.path.isdir(location):
        raise ValueError(f"{location}: not a directory")


def _plain_kinds(cls: type) -> dict[str, type]:
    """The options annotated int, float, bool or str (maybe ``| None``); others are not checked."""
    try:
        hints = typing.get_type_hints(cls)
    except Exception:  # a plugin's annotation this module cannot resolve: its own checks apply
        return {}
    out = {}
    for f in fields(cls):
        args = [a for a in typing.get_args(hints.get(f.name)) if a is not type(None)] or [hints.get(f.name)]
        if len(args) == 1 and args[0] in (int, float, bool, str):
            out[f.name] = args[0]
    return out


def _is_kind(value: Any, kind: type) -> bool:
    if kind is bool or isinstance(value, bool):
        return kind is bool and isinstance(value, (bool, np.bool_))
    if kind in (int, float):
        return isinstance(value, numbers.Integral if kind is int else numbers.Real)
    return isinstance(value, (str, os.PathLike))  # a path option given as a Path


def unknown_option(key: str, kind: str, valid: list[str]) -> str:
    """One line: the unknown option, the source, the valid options and the closest of them."""
    near = difflib.get_close_matches(key, valid, n=1)
    hint = f"; did you mean {near[0]!r}?" if near else ""
    choices = ", ".join(valid) if valid else "none"
    return f"image source {kind!r}: unknown option {key!r} (valid: {choices}){hint}"


class SourceBase:
    """Defaults for the class attributes above, the options and the context-manager protocol."""

    kind: ClassVar[str] = ""
    Options: ClassVar[type[SourceOptions]] = SourceOptions
    statuses: ClassVar[frozenset[str]] = frozenset()
    reads_path_column: ClassVar[bool] = False
    needs_network: ClassVar[bool] = False

    def __init_subclass__(cls, **kw: Any) -> None:
        super().__init_subclass__(**kw)
        if "Options" in cls.__dict__ and cls.kind:  # its own Options: messages name this source
            cls.Options.source_kind = cls.kind

    def __init__(self, location: str, spec: PreprocessSpec, **options: Any) -> None:
        self.location, self.spec = str(location), spec
        self.options: Any = self.Options.from_mapping(options, source=self.kind)  # the subclass's Options
        self.examples: dict = {}  # status -> first reason seen

    @property
    def name(self) -> str:
        return self.kind

    @classmethod
    def check_location(cls, location: str) -> None:
        """ValueError (one line, credentials redacted) for a location this source can never use,
        checked before a run starts (e.g. an impossible URL); default: any."""

    @classmethod
    def low_memory_options(cls, options: Mapping[str, Any]) -> dict:
        """Options for a partition retried after its worker ran out of memory (default: the same)."""
        return dict(options)

    def fetch(self, rows: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
        raise NotImplementedError

    def close(self) -> None:
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def empty_stamps(n: int, spec: PreprocessSpec) -> np.ndarray:
    return np.zeros((n, spec.stamp_pixels, spec.stamp_pixels, 3), np.uint8)
