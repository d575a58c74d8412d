"""A block of the engine card as a typed, frozen object with an exact JSON form.

:class:`Block` is the base of every typed part of the card (:mod:`.card`, the domain halves in
:mod:`.domain`).  ``from_dict`` keeps what it does not know in ``extra`` and remembers which known
keys were present (``present``, so a stored ``null`` stays a ``null``), so ``to_dict`` gives back the
JSON it was read from, key for key: a card written by a newer mergerscan survives a rewrite by this
one, and the bytes of an engine file do not change when its card is read and written again.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import MISSING, Field, dataclass, field, fields
from typing import Any, ClassVar, TypeVar

B = TypeVar("B", bound="Block")


def to_json(value: Any) -> Any:
    """A typed card value as JSON data: blocks as dicts, tuples as lists, mapping keys as strings."""
    if isinstance(value, Block):
        return value.to_dict()
    if isinstance(value, tuple):
        return [to_json(v) for v in value]
    if isinstance(value, Mapping):
        return {str(k): to_json(v) for k, v in value.items()}
    return value


def _default(f: Field) -> Any:
    if f.default is not MISSING:
        return f.default
    return f.default_factory() if f.default_factory is not MISSING else MISSING


def by_count(parse: Callable[[Any], Any]) -> Callable[[Mapping], dict[int, Any]]:
    """A parser for a ``{"<view count>": ...}`` mapping: integer keys, values parsed by ``parse``."""
    return lambda d: {int(k): parse(v) for k, v in d.items()}


@dataclass(frozen=True)
class Block:
    """Base of the card's blocks.  Subclasses declare their keys as dataclass fields (None: absent)
    and may name a parser per key in ``PARSERS``; JSON lists become tuples."""

    extra: Mapping[str, Any] = field(default_factory=dict, kw_only=True, repr=False, compare=False)
    # the known keys the JSON it was read from had (None: made in code, not read)
    present: frozenset[str] | None = field(default=None, kw_only=True, repr=False, compare=False)

    PARSERS: ClassVar[Mapping[str, Callable[[Any], Any]]] = {}
    KEEP_NONE: ClassVar[bool] = False  # made in code: write every field, None included (as asdict did)

    @classmethod
    def keys(cls) -> frozenset[str]:
        return frozenset(f.name for f in fields(cls)) - {"extra", "present"}

    @classmethod
    def from_dict(cls: type[B], data: Mapping[str, Any]) -> B:
        names = cls.keys()
        known = {k: cls.parse(k, v) for k, v in data.items() if k in names}
        extra = {k: v for k, v in data.items() if k not in names}
        return cls(**known, extra=extra, present=frozenset(known))

    @classmethod
    def parse(cls, key: str, value: Any) -> Any:
        if value is None:
            return None
        if key in cls.PARSERS:
            return cls.PARSERS[key](value)
        return tuple(value) if isinstance(value, list) else value

    def _written(self, f: Field, value: Any) -> bool:
        """Made in code: every value that is not None (all, with KEEP_NONE).  Read from JSON: the
        keys it had, and any value set since (by ``dataclasses.replace``) to other than the default."""
        if self.present is None:
            return value is not None or self.KEEP_NONE
        return f.name in self.present or (value is not None and value != _default(f))

    def to_dict(self) -> dict[str, Any]:
        out = {}
        keys = self.keys()
        for f in fields(self):  # in field order, as dataclasses.asdict wrote them
            if f.name not in keys:
                continue
            value = getattr(self, f.name)
            if self._written(f, value):
                out[f.name] = to_json(value)
        return out | dict(self.extra)
