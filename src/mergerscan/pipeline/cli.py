"""``process-catalog CATALOG -o OUT [--images DIR | --frames DIR | --cutout-service URL]``, also
``mergerscan process`` (the same parser, the same behaviour).

The flags (:mod:`.flags`) take their defaults from the dataclasses; the environment and
``~/.config`` (the site's default image source) are read here, not by the dataclass.
"""

from __future__ import annotations

import argparse
import json
import shlex
import signal
import sys
from pathlib import Path

from ..cutouts.source_choice import ServiceOptions
from ..exit_codes import EXIT_BAD_INPUT, EXIT_FAILED, EXIT_INTERRUPTED, EXIT_OK
from ..verb_flags import from_namespace
from .arguments import ArgumentError, ProcessArguments, default_of
from .domain import parse_pairs
from .flags import SERVICE_RENAME, SLURM_RENAME, build_parser, flag_names
from .slurm import SlurmOptions


def _parse_shard(text):
    if not text:
        return None
    try:
        i, n = (int(v) for v in text.replace("%", "/").split("/"))
    except ValueError:
        raise ArgumentError(f"--shard {text}: expected I/N, e.g. 3/16") from None
    return (i, n)


def _source_options(items: list[str]) -> dict:
    out = {}
    for item in items:
        key, eq, value = item.partition("=")
        if not eq or not key.strip():
            raise ArgumentError(f"--source-option {item!r}: expected KEY=VALUE")
        try:
            out[key.strip()] = json.loads(value)
        except ValueError:
            out[key.strip()] = value
    return out


def _site_default(ns: argparse.Namespace):
    """With no source flag: the site's default image source ($MERGERSCAN_DEFAULT_SOURCE, else
    ~/.config), None for the built-in one.  Read here, never by ProcessArguments."""
    from ..cutouts.defaults import default_source

    if ns.images or ns.frames or ns.cutout_service or ns.source:
        return None
    try:
        site = default_source()
    except ValueError as exc:
        raise ArgumentError(str(exc)) from None
    return None if site.origin == "built-in" else site


def arguments_from(ns: argparse.Namespace, argv, prog: str = "process-catalog") -> ProcessArguments:
    """The parsed command line as ProcessArguments (the site default source read here)."""
    given = {
        "catalog": ns.catalog,
        "output": ns.output or str(Path(ns.catalog).name.split(".")[0] + "-mergers"),
        "backend": ns.backend or ("onnxruntime-cuda" if ns.gpus else default_of(ProcessArguments, "backend")),
        "slurm": from_namespace(SlurmOptions, ns, prefix="slurm_", rename=SLURM_RENAME),
        "mode": "plan" if ns.plan else "shard" if ns.shard else "finalize" if ns.finalize else "all",
        "shard": _parse_shard(ns.shard),
        "service_options": from_namespace(ServiceOptions, ns, prefix="service_", rename=SERVICE_RENAME),
        "source_kind": ns.source[0] if ns.source else None,
        "source_location": ns.source[1] if ns.source else None,
        "source_options": _source_options(ns.source_option),
        "default_source": _site_default(ns),
        "domain_columns": parse_pairs(ns.domain_column, "--domain-column", number=False),
        "domain_limits": parse_pairs(ns.domain_limit, "--domain-limit", number=True),
        "command": shlex.join([prog, *argv]),  # redacted when the arguments are resolved
    }
    return from_namespace(ProcessArguments, ns, **given)  # every other flag fills its own field, unchanged


def _error(message, status: int = EXIT_BAD_INPUT) -> int:
    """One line on stderr (credentials in URLs redacted), the exit status."""
    from ..cutouts.sources import redact_text

    text = " ".join(str(message).split())
    print(f"process-catalog: error: {redact_text(text)}", file=sys.stderr)
    return status


def _run(args: ProcessArguments):
    from .run import run

    if args.cluster != "slurm-runner":
        return run(args)
    # every task of the srun step gets here; only the client task (1) returns from entering
    from .cluster import slurm_runner

    resolved = args.resolved()
    with slurm_runner(resolved.threads_per_worker, resolved.memory_limit, resolved.gpus) as address:
        resolved.scheduler = address  # this resolved copy joins the scheduler the runner started
        return run(resolved)


def _finish(summary, args: ProcessArguments, prog: str) -> int:
    """The printed summary, the table sent over SAMP with --samp, the exit status."""
    from .run import format_summary

    print(format_summary(summary))
    if args.samp:  # the catalog is done either way: a SAMP problem is a message
        from ..samp import SampError, send_table

        try:
            print(f"  sent to           {', '.join(send_table(summary.fits))} (SAMP)")
        except SampError as exc:
            print(f"process-catalog: --samp: {exc}", file=sys.stderr)
            return EXIT_FAILED
    return summary.exit_status


def main(argv=None, prog: str = "process-catalog") -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser(prog)
    ns = parser.parse_args(argv)
    try:
        from ..run_summary import RunSummary

        args = arguments_from(ns, argv, prog)
        summary = _run(args)
        if not isinstance(summary, RunSummary):  # --plan / --shard
            print("process-catalog: " + ", ".join(f"{k} {v}" for k, v in summary.items()))
            return EXIT_OK
    except ArgumentError as exc:  # also CatalogError, DomainError, SelectError, the run directory's refusals
        return _error(exc.render(flag_names(parser)))
    except FileNotFoundError as exc:
        return _error(exc)
    except KeyboardInterrupt:
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second ^C while exiting: no traceback either
        print(
            "process-catalog: interrupted; finished partitions are kept - re-run the same command to resume",
            file=sys.stderr,
        )
        return EXIT_INTERRUPTED
    except OSError as exc:  # e.g. OUT became unwritable or full mid-run
        where = f"{exc.filename}: " if getattr(exc, "filename", None) else ""
        return _error(f"{where}{exc.strerror or exc}", EXIT_FAILED)
    except RuntimeError as exc:  # tasks failed after retries: the first failure, in one line
        return _error(exc, EXIT_FAILED)
    return _finish(summary, args, prog)


if __name__ == "__main__":
    sys.exit(main())
