"""``python -m mergerscan.pipeline.slurm render DEST``: the job scripts for a site, written out."""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path

from .job_scripts import render_all


def _kv(text: str):
    """'key=value' -> value, 'key' -> True (a flag), 'key=' -> None (remove the directive)."""
    k, eq, v = text.partition("=")
    return k.lstrip("-"), (v if v else None) if eq else True


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m mergerscan.pipeline.slurm",
        description="Write the slurm/ job scripts into DEST with this Python baked in and #SBATCH options set.",
        epilog="e.g.: python -m mergerscan.pipeline.slurm render jobs/ --set account=abc123 --set partition=gpu "
        "--set time=08:00:00 --shard-set gres=gpu:1 --shard-set cpus-per-task=16",
    )
    sub = ap.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("render")
    r.add_argument("dest")
    r.add_argument("--python", default=sys.executable, help="interpreter with mergerscan installed (default: this one)")
    r.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="#SBATCH option for every job script (KEY alone: a flag; KEY= with no value: remove)",
    )
    r.add_argument(
        "--shard-set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="#SBATCH option for shard.sbatch and process-catalog.sbatch only (e.g. gres=gpu:1)",
    )
    a = ap.parse_args(argv)
    directives = dict(_kv(s) for s in a.set)
    per = {n: dict(_kv(s) for s in a.shard_set) for n in ("shard.sbatch", "process-catalog.sbatch")}
    paths = render_all(a.dest, python=str(Path(a.python).absolute()), directives=directives, per_template=per)
    print("\n".join(shlex.quote(str(p)) for p in paths.values()))
    return 0
