"""Resume: atomic writes, per-task done markers and the run fingerprint.

A task writes its output to a temporary file and renames it into place, then writes its done
marker the same way; a re-run skips tasks whose marker exists.  Dask re-running a task (after
a lost worker) rewrites identical bytes, so writes are idempotent.  The fingerprint (input
content hash, columns, engine hash, image source, partitioning) is stored in the output
directory; resuming with a different one is refused unless ``--overwrite``.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import uuid
from pathlib import Path


def atomic_write_bytes(path: Path, data: bytes):
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def done(marker: Path) -> bool:
    return Path(marker).is_file()


def mark_done(marker: Path, info: dict | None = None):
    atomic_write_bytes(Path(marker), json.dumps(info or {}, sort_keys=True).encode())


def read_marker(marker: Path) -> dict:
    return json.loads(Path(marker).read_text())


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(8 << 20):
            h.update(block)
    return h.hexdigest()


def content_identity(path: str, cache: dict | None = None) -> tuple[dict, dict]:
    """The identity of an input (a file, or every file under a directory such as a Parquet dataset):
    its path, size and the SHA-256 of its content - not mtimes, so a ``touch``ed identical catalog
    is the same run and a dataset rewritten in place is not.  ``cache`` ({stat key: sha256}, from
    an earlier run) skips re-reading files whose inode, size, mtime *and ctime* are unchanged
    (ctime moves on every write and cannot be set back).  Returns (identity, new cache)."""
    root = Path(path).resolve()
    files = [root] if root.is_file() else sorted(f for f in root.rglob("*") if f.is_file())
    h, size, new = hashlib.sha256(), 0, {}
    for f in files:
        st = f.stat()
        key = f"{f}|{st.st_dev}|{st.st_ino}|{st.st_size}|{st.st_mtime_ns}|{st.st_ctime_ns}"
        digest = (cache or {}).get(key) or _sha256(f)
        new[key] = digest
        h.update(f"{f.relative_to(root).as_posix() if f != root else ''}\0{digest}\n".encode())
        size += st.st_size
    return {"path": str(root), "files": len(files), "size": size, "sha256": h.hexdigest()}, new


def file_identity(path: str) -> dict:   # kept for callers outside the run (content, no cache)
    return content_identity(path)[0]


# everything a run writes under its output directory (the only entries --overwrite removes)
OUTPUTS = ("_work", "parquet", "mergers.fits", "summary.json", "report")
CACHE = "content-cache.json"


class FingerprintMismatch(RuntimeError):
    pass


class OutputError(RuntimeError):
    """-o cannot be used (a file, not writable, not a mergerscan run); one line."""


def read_cache(output: Path) -> dict:
    try:
        return json.loads((Path(output) / "_work" / CACHE).read_text())
    except (OSError, ValueError):
        return {}


def _is_run(output: Path) -> bool:
    if (output / "_work" / "fingerprint.json").is_file():
        return True
    try:   # a finished run whose _work/ the user removed
        return "mergerscan_version" in json.loads((output / "summary.json").read_text())
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


def _inside(path: Path, container: Path) -> bool:
    path, container = Path(path).resolve(), Path(container).resolve()
    return path == container or container in path.parents


def check_or_claim(output: Path, fingerprint: dict, overwrite: bool, protect=(), cache: dict | None = None) -> bool:
    """Claim ``output`` for this run.  Returns True when resuming an earlier identical run.

    Everything is decided before anything is deleted: a non-empty directory that is not a
    mergerscan run is refused (even with ``overwrite``); ``overwrite`` removes only the entries a
    run writes (:data:`OUTPUTS`), never other files, and refuses when one of ``protect`` (the
    input catalog, image directories, engine) lies inside them."""
    output = Path(output)
    check_output(output)
    fp_file = output / "_work" / "fingerprint.json"
    ours = output.is_dir() and _is_run(output)
    if output.is_dir() and not ours and any(output.iterdir()):
        names = sorted(p.name for p in output.iterdir())
        raise OutputError(f"{output} exists and is not a mergerscan run (it holds {', '.join(names[:3])}"
                          f"{', ...' if len(names) > 3 else ''}); choose an empty or new -o "
                          "(--overwrite only ever removes what mergerscan wrote)")
    if overwrite and ours:
        doomed = [output / n for n in OUTPUTS if (output / n).exists() or (output / n).is_symlink()]
        for p in protect:
            hit = next((d for d in doomed if not d.is_symlink() and _inside(p, d)), None)
            if p and hit is not None:
                raise OutputError(f"--overwrite would delete {p} (inside {hit}); move it out of {output} "
                                  "or choose another -o")
        for p in doomed:
            if p.is_symlink() or not p.is_dir():
                p.unlink(missing_ok=True)
            else:
                shutil.rmtree(p)
    if fp_file.is_file():
        old = json.loads(fp_file.read_text())
        if old != fingerprint:
            diff = sorted(k for k in set(old) | set(fingerprint) if old.get(k) != fingerprint.get(k))
            raise FingerprintMismatch(
                f"{output} holds a run with a different {', '.join(diff)}; use --overwrite to replace it "
                "or choose another -o")
        resumed = True
    else:
        atomic_write_bytes(fp_file, json.dumps(fingerprint, indent=1, sort_keys=True).encode())
        resumed = False
    if cache is not None:
        atomic_write_bytes(output / "_work" / CACHE, json.dumps(cache, sort_keys=True).encode())
    return resumed
