"""Finding a column by the name a user gave: the one case-insensitive lookup every room uses.

FITS column names are case-insensitive and catalogs spell the same column ``objID``, ``OBJID``
or ``objid`` (or `` objid`` in a CSV written with ", "), so a name matches its exact spelling
first, else the one column equal to it in any case, blanks around it ignored.  Two columns
equal to it in case only (``Zz`` and ``zZ`` for ``zz``) and neither exact: the name is
ambiguous, never silently the first or the last of them.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from ..argument_error import literal
from .read import CatalogError


class AmbiguousColumn(CatalogError):
    """Several columns equal the name case-insensitively and none exactly."""

    def __init__(self, name: str, matches: list[str]):
        super().__init__(f"column {name!r} is ambiguous ({', '.join(matches)}); name one exactly")
        self.name, self.matches = name, matches


def find_column(columns: Iterable[str], name: str) -> str | None:
    """The column called ``name`` in the file's spelling: the exact spelling, else the one
    case-insensitive match (blanks around names ignored); None when there is none;
    :class:`AmbiguousColumn` when there are several."""
    available = [str(c) for c in columns]
    if name in available:
        return name
    # blanks around a name are padding (a CSV written "objid, ra, dec" has a column " ra")
    hits = [c for c in available if c.strip().lower() == name.strip().lower()]
    if len(hits) > 1:
        raise AmbiguousColumn(name, hits)
    return hits[0] if hits else None


def brief(columns: list[str], n: int = 12) -> str:
    """The first ``n`` column names for an error message (quoted where blanks pad them)."""
    return ", ".join(c if c == c.strip() else repr(c) for c in map(str, columns[:n])) + (
        f", ... ({len(columns)} in all)" if len(columns) > n else ""
    )


def require_column(columns: Iterable[str], name: str, path: str | Path, argument: str) -> str:
    """:func:`find_column`, or a one-line :class:`CatalogError` naming the file, the argument
    (``argument``, e.g. ``keep_columns``) and the name: missing (with the columns there are) or
    ambiguous (with its matches)."""
    available = [str(c) for c in columns]
    where = f"{literal(path)}: {{{argument}}} names {literal(repr(name))}"
    try:
        found = find_column(available, name)
    except AmbiguousColumn as exc:
        raise CatalogError(
            f"{where}, which is ambiguous ({literal(', '.join(exc.matches))}); name one exactly", argument
        ) from None
    if found is None:
        raise CatalogError(f"{where}, which is not a column (columns: {literal(brief(available))})", argument)
    return found
