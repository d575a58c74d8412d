"""The run's identity: what a resumed run must share with the run it continues.

The fingerprint (input content hash, columns, engine hash and precision, image source,
partitioning) is stored in ``OUT/_work/fingerprint.json`` by :meth:`resume.ResumePlan.claim`;
resuming with a different one is refused unless ``--overwrite``.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from .. import __version__
from ..engines import backend_precision
from ..engines.operating import DEFAULT_PREVALENCE, OperatingPoint
from ..run_layout import RunLayout
from .arguments import ProcessArguments
from .plan import CatalogInspection


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


def read_cache(layout: RunLayout) -> dict:
    """The content-hash cache an earlier run left (empty when none or unreadable)."""
    try:
        return json.loads(layout.work.content_cache.read_text())
    except (OSError, ValueError):
        return {}


def fingerprint(
    args: ProcessArguments,
    cat: CatalogInspection,
    engine_sha: str,
    views: int | None = 1,
    cache: dict | None = None,
    op: OperatingPoint | None = None,
) -> dict[str, Any]:
    """The run's identity.  ``cache`` (optional, updated in place): the input's content-hash cache.
    ``op``: the operating point, part of the identity when chosen by a target or stated at another
    prevalence (is_merger and the files' metadata depend on it)."""
    identity, new = content_identity(args.catalog, read_cache(RunLayout(args.output)))
    if cache is not None:
        cache.update(new)
    extra: dict[str, Any] = {"select": args.select} if args.select is not None else {}  # absent: older runs resume
    if args.embeddings:  # the output's columns: a run resumed with another N (or none) is refused
        extra["embeddings"] = args.embeddings
    if op is not None and (op.rule != "default" or op.prevalence != DEFAULT_PREVALENCE):
        extra["operating_point"] = {"rule": op.rule, "target": op.target, "prevalence": op.prevalence}
    return {
        **extra,
        "domain": {**args.domain_settings.fingerprint(), "catalog_rules": cat.domain.to_dict()["rules"]},
        "catalog": identity,
        "columns": cat.columns,
        "keep": cat.keep,
        "engine_sha256": engine_sha,
        "precision": backend_precision(args.backend),
        "views": views,
        "source": args.source.fingerprint(),
        "partition_rows": args.partition_rows,
        "chunk_rows": args.chunk_rows,
        "hist_order": args.hist_order,
        "mergerscan": __version__.split(".")[0],
    }
