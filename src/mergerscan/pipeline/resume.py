"""Resume: per-task done markers and claiming the output directory.

A task writes its output to a temporary file and renames it into place (mergerscan.atomic), then
writes its done marker the same way; a re-run skips tasks whose marker exists.  Dask re-running a
task (after a lost worker) rewrites identical bytes, so writes are idempotent.  The run's
fingerprint (fingerprint.py) is stored in the output directory; resuming with a different one is
refused unless ``--overwrite``.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

from ..atomic import atomic_write_json
from ..run_layout import RunLayout


def done(marker: Path) -> bool:
    return Path(marker).is_file()


def mark_done(marker: Path, info: dict | None = None) -> None:
    atomic_write_json(Path(marker), info or {}, sort_keys=True)


def read_marker(marker: Path) -> dict:
    return json.loads(Path(marker).read_text())


class FingerprintMismatch(RuntimeError):
    pass


class OutputError(RuntimeError):
    """-o cannot be used (a file, not writable, not a mergerscan run); one line."""


def _is_run(layout: RunLayout) -> bool:
    if layout.work.fingerprint.is_file():
        return True
    try:  # a finished run whose _work/ the user removed
        return "mergerscan_version" in json.loads(layout.summary.read_text())
    except (OSError, ValueError, TypeError):
        return False


def check_output(output: Path) -> None:
    """-o must be a directory we can create and write: else one line, before anything is written."""
    output = Path(output)
    if output.exists() and not output.is_dir():
        raise OutputError(f"-o {output}: exists and is not a directory")
    probe_dir = output if output.is_dir() else next((p for p in output.parents if p.exists()), None)
    if probe_dir is None or not probe_dir.is_dir():
        raise OutputError(f"-o {output}: a parent is not a directory")
    try:
        fd, tmp = tempfile.mkstemp(prefix=".mergerscan-probe-", dir=probe_dir)
        os.close(fd)
        os.unlink(tmp)
    except OSError as exc:
        raise OutputError(f"-o {output}: cannot write in {probe_dir} ({exc.strerror or exc})") from None


def _inside(path: str | Path, container: Path) -> bool:
    path, container = Path(path).resolve(), Path(container).resolve()
    return path == container or container in path.parents


def check_or_claim(output: Path, fingerprint: dict, overwrite: bool, protect=(), cache: dict | None = None) -> bool:
    """Claim ``output`` for this run.  Returns True when resuming an earlier identical run.

    Everything is decided before anything is deleted: a non-empty directory that is not a
    mergerscan run is refused (even with ``overwrite``); ``overwrite`` removes only the entries a
    run writes (:data:`run_layout.OUTPUTS`), never other files, and refuses when one of
    ``protect`` (the input catalog, image directories, engine) lies inside them."""
    output = Path(output)
    layout = RunLayout(output)
    check_output(output)
    ours = output.is_dir() and _is_run(layout)
    if output.is_dir() and not ours and any(output.iterdir()):
        names = sorted(p.name for p in output.iterdir())
        raise OutputError(
            f"{output} exists and is not a mergerscan run (it holds {', '.join(names[:3])}"
            f"{', ...' if len(names) > 3 else ''}); choose an empty or new -o "
            "(--overwrite only ever removes what mergerscan wrote)"
        )
    if overwrite and ours:
        doomed = [p for p in layout.outputs() if p.exists() or p.is_symlink()]
        for p in protect:
            hit = next((d for d in doomed if not d.is_symlink() and _inside(p, d)), None)
            if p and hit is not None:
                raise OutputError(
                    f"--overwrite would delete {p} (inside {hit}); move it out of {output} or choose another -o"
                )
        for p in doomed:
            if p.is_symlink() or not p.is_dir():
                p.unlink(missing_ok=True)
            else:
                shutil.rmtree(p)
    fp_file = layout.work.fingerprint
    if fp_file.is_file():
        old = json.loads(fp_file.read_text())
        if old != fingerprint:
            diff = sorted(k for k in set(old) | set(fingerprint) if old.get(k) != fingerprint.get(k))
            raise FingerprintMismatch(
                f"{output} holds a run with a different {', '.join(diff)}; use --overwrite to replace it "
                "or choose another -o"
            )
        resumed = True
    else:
        atomic_write_json(fp_file, fingerprint, indent=1, sort_keys=True)
        resumed = False
    if cache is not None:
        atomic_write_json(layout.work.content_cache, cache, sort_keys=True)
    return resumed
