"""What every ``mergerscan`` verb's command line shares.

Spellings: ``--engine FILE`` for an engine file, ``-o/--output`` for what a verb writes, the
catalog as the positional ``CATALOG`` (the spellings of earlier versions still accepted, hidden).
Fields: a flag's default is its dataclass field's (:func:`default_of`), and the parsed flags
become the typed object by its fields (:func:`from_namespace`), never copied by hand."""

from __future__ import annotations

import argparse
import inspect
import math
import os
from collections.abc import Callable, Mapping
from dataclasses import MISSING, fields, is_dataclass
from pathlib import Path
from typing import Any, TypeVar

from .exit_codes import EXIT_BAD_INPUT

T = TypeVar("T")
_KEYWORD = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)


def default_of(cls: Any, name: str) -> Any:
    """The default of dataclass ``cls``'s field ``name``, or of a function's keyword ``name`` (the one
    place defaults are written); None where it has none."""
    if not is_dataclass(cls):
        default = inspect.signature(cls).parameters[name].default
        return None if default is inspect.Parameter.empty else default
    f = next(f for f in fields(cls) if f.name == name)
    if f.default_factory is not MISSING:
        return f.default_factory()
    return None if f.default is MISSING else f.default


def field_values(
    build: Callable[..., Any], ns: argparse.Namespace, prefix: str = "", rename: Mapping[str, str] | None = None
) -> dict[str, Any]:
    """The keyword parameters of ``build`` (a dataclass's fields, or a function's) that the parsed
    flags hold: each from the flag whose dest is its name, ``prefix`` + its name, or ``rename[name]``
    where the dest differs.  A parameter no flag fills is left out: it keeps its own default."""
    params = {n: p for n, p in inspect.signature(build).parameters.items() if p.kind in _KEYWORD}
    rename = dict(rename or {})
    if stray := sorted(set(rename) - set(params)):  # a rename of no field: a typo, not a choice
        raise TypeError(f"{getattr(build, '__name__', build)} has no parameter {stray[0]!r}")
    dests = {name: rename.get(name, prefix + name) for name in params}
    return {name: getattr(ns, dest) for name, dest in dests.items() if hasattr(ns, dest)}


def from_namespace(
    build: Callable[..., T],
    ns: argparse.Namespace,
    prefix: str = "",
    rename: Mapping[str, str] | None = None,
    **given: Any,
) -> T:
    """``build(...)`` from the parsed flags (:func:`field_values`); ``given`` wins over a flag."""
    return build(**(field_values(build, ns, prefix, rename) | given))


def add_output_option(p, help: str, dest: str = "out") -> None:
    """``-o/--output``; ``--out`` (earlier versions) still accepted, hidden.  A verb that needs it
    says so itself (:func:`required_output`): argparse's required= would refuse the old spelling."""
    p.add_argument("-o", "--output", dest=dest, metavar="PATH", help=help)
    p.add_argument("--out", dest=dest, default=argparse.SUPPRESS, help=argparse.SUPPRESS)


def required_output(ap, a, dest: str = "out") -> str:
    """The -o/--output value, or a one-line error (exit 2) naming the flag."""
    value = getattr(a, dest)
    if not value:
        ap.exit(EXIT_BAD_INPUT, f"mergerscan {a.verb}: error: -o/--output is required\n")
    return value


def add_engine_option(p, help: str, required: bool = True) -> None:
    """``--engine FILE``, the spelling of every verb; the positional ENGINE of earlier versions is
    still accepted (hidden)."""
    p.add_argument("--engine", dest="engine_flag", metavar="FILE", help=help + (" (required)" if required else ""))
    p.add_argument("engine", nargs="?", help=argparse.SUPPRESS)
    p.set_defaults(engine_required=required)


def engine_file(ap, a) -> str | None:
    """The engine file given as --engine (or positionally); a one-line error when a verb needs one."""
    _engine_in_catalog_place(a)
    if a.engine_flag and a.engine and a.engine_flag != a.engine:
        ap.exit(EXIT_BAD_INPUT, f"mergerscan {a.verb}: error: give the engine once: --engine FILE\n")
    engine = a.engine_flag or a.engine
    if engine is None and a.engine_required:
        ap.exit(EXIT_BAD_INPUT, f"mergerscan {a.verb}: error: --engine FILE is required\n")
    return engine


def add_catalog_argument(p, help: str, old: str = "--catalog") -> None:
    """The positional ``CATALOG``; ``old`` (the flag of earlier versions) still accepted, hidden.
    Optional to argparse (a --resume needs none): :func:`catalog_file` says when it is missing.
    Added before :func:`add_engine_option`, whose hidden ENGINE positional comes second (an ENGINE
    alone in the first place, with the catalog given by flag, moves there)."""
    p.add_argument("catalog", nargs="?", metavar="CATALOG", help=help)
    p.add_argument(old, dest="catalog_flag", metavar="CATALOG", help=argparse.SUPPRESS)


def catalog_file(ap, a, required: bool = True) -> str | None:
    """The catalog given as CATALOG (or its earlier flag), also left in ``a.catalog``."""
    _engine_in_catalog_place(a)
    if a.catalog_flag is not None and a.catalog is not None and a.catalog != a.catalog_flag:
        ap.exit(EXIT_BAD_INPUT, f"mergerscan {a.verb}: error: give the catalog once: CATALOG\n")
    a.catalog = a.catalog if a.catalog is not None else a.catalog_flag
    if a.catalog is None and required:
        ap.exit(EXIT_BAD_INPUT, f"mergerscan {a.verb}: error: CATALOG is required\n")
    return a.catalog


def _engine_in_catalog_place(a) -> None:
    """``VERB ENGINE --data CATALOG`` (earlier versions): the one positional is the engine."""
    if getattr(a, "catalog_flag", None) is not None and a.catalog is not None and getattr(a, "engine", False) is None:
        a.engine, a.catalog = a.catalog, a.catalog_flag


def output_problem(out: str | os.PathLike, inputs: Mapping[str, Any] = {}, directory: bool = False) -> str | None:
    """Why ``-o/--output OUT`` cannot be written, checked before any work (None: it can): it is one
    of the verb's ``inputs`` (a name -> path; writing would destroy it), a directory where a file
    goes (or a file where a run directory goes), or its folder is missing or not writable."""
    p = Path(out)
    for what, path in inputs.items():
        if path and p.exists() and Path(path).exists() and os.path.samefile(p, path):
            return f"-o/--output {out} is the {what}; choose another path (it would be overwritten)"
    if directory and p.exists() and not p.is_dir():
        return f"-o/--output {out}: exists and is not a directory"
    if not directory and p.is_dir():
        return f"-o/--output {out}: is a directory; give a file name"
    parent = p if directory else p.parent
    while not parent.exists() and parent != parent.parent:  # the folders a verb makes: the first that exists
        parent = parent.parent
    if not parent.is_dir() or not os.access(parent, os.W_OK | os.X_OK):
        return f"-o/--output {out}: cannot write in {parent}"
    return None


def check_output(ap, a, out: str | os.PathLike | None, inputs: Mapping[str, Any] = {}, directory: bool = False):
    """:func:`output_problem` as the verb's one-line error (exit 2); ``out`` None: nothing to check."""
    if out is not None and (why := output_problem(out, inputs, directory)):
        who = " ".join([ap.prog, *(w for w in (getattr(a, "verb", None), getattr(a, "bench", None)) if w)])
        ap.exit(EXIT_BAD_INPUT, f"{who}: error: {why}\n")


def os_error_text(exc: OSError) -> str:
    """An OSError as one line naming its file: ``PATH: No such file or directory``."""
    where = exc.filename if exc.filename is not None else ""
    return f"{where}: {exc.strerror}" if where and exc.strerror else str(exc)


def _number(kind: Callable[[str], Any], least: float, what: str) -> Callable[[str], Any]:
    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not {what}") from None
        if not math.isfinite(value) or value < least:  # nan, inf: never a count, a rate or a size
            raise argparse.ArgumentTypeError(f"{text!r} is not {what}")
        return value

    parse.__name__ = what  # argparse names the type in its errors
    return parse


# argparse types of the numeric flags: a one-line "argument --k: '0' is not a positive integer" (exit 2)
positive_int = _number(int, 1, "a positive integer")
count = _number(int, 0, "an integer >= 0")
positive_float = _number(float, 0, "a finite number >= 0")
