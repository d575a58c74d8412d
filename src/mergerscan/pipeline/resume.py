"""Resume: atomic writes, per-task done markers and the run fingerprint.

A task writes its output to a temporary file and renames it into place, then writes its done
marker the same way; a re-run skips tasks whose marker exists.  Dask re-running a task (after
a lost worker) rewrites identical bytes, so writes are idempotent.  The fingerprint (input
file identity, columns, engine hash, image source, partitioning) is stored in the output
directory; resuming with a different one is refused unless ``--overwrite``.
"""

from __future__ import annotations

import json
import os
import shutil
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


def file_identity(path: str) -> dict:
    st = os.stat(path)
    return {"path": str(Path(path).resolve()), "size": st.st_size, "mtime_ns": st.st_mtime_ns}


# everything a run writes under its output directory (removed by --overwrite)
OUTPUTS = ("_work", "parquet", "mergers.fits", "summary.json", "report")


class FingerprintMismatch(RuntimeError):
    pass


def check_or_claim(output: Path, fingerprint: dict, overwrite: bool) -> bool:
    """Claim ``output`` for this run.  Returns True when resuming an earlier identical run."""
    output = Path(output)
    fp_file = output / "_work" / "fingerprint.json"
    if overwrite and output.exists():
        for name in OUTPUTS:
            p = output / name
            shutil.rmtree(p, ignore_errors=True) if p.is_dir() else p.unlink(missing_ok=True)
    if fp_file.is_file():
        old = json.loads(fp_file.read_text())
        if old != fingerprint:
            diff = sorted(k for k in set(old) | set(fingerprint) if old.get(k) != fingerprint.get(k))
            raise FingerprintMismatch(
                f"{output} holds a run with a different {', '.join(diff)}; use --overwrite to replace it "
                "or choose another -o")
        return True
    if output.exists() and any(output.iterdir()):
        raise FingerprintMismatch(f"{output} exists and is not a mergerscan run; use --overwrite or another -o")
    atomic_write_bytes(fp_file, json.dumps(fingerprint, indent=1, sort_keys=True).encode())
    return False
