"""Flag spellings every ``mergerscan`` verb shares: ``--engine FILE`` for an engine file,
``-o/--output`` for what a verb writes (the spellings of earlier versions still accepted, hidden)."""

from __future__ import annotations

import argparse

from .exit_codes import EXIT_BAD_INPUT


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
    if a.engine_flag and a.engine and a.engine_flag != a.engine:
        ap.exit(EXIT_BAD_INPUT, f"mergerscan {a.verb}: error: give the engine once: --engine FILE\n")
    engine = a.engine_flag or a.engine
    if engine is None and a.engine_required:
        ap.exit(EXIT_BAD_INPUT, f"mergerscan {a.verb}: error: --engine FILE is required\n")
    return engine
