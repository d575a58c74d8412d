"""Atomic file writes: the one helper every room uses.

A reader (a resumed run, a concurrent worker, TOPCAT) sees either the old file or the whole new
one, never a torn one.  The data go to a temporary file with a unique name in the same directory
(so two processes writing the same target never share a temporary), are flushed to disk, and
``os.replace`` puts them in place; the directory is flushed too, so the new name survives a
crash of the node.  A temporary left by a killed writer starts with ``.`` and ends in ``.tmp``.
"""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

TMP_SUFFIX = ".tmp"


def temporary_name(path: str | Path) -> Path:
    """A unique sibling of ``path`` for writing it: ``.NAME.<pid>.<random>.tmp``."""
    p = Path(path)
    return p.with_name(f".{p.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}{TMP_SUFFIX}")


def _fsync_dir(directory: Path) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:  # some filesystems do not open directories; the rename still holds
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


@contextmanager
def atomic_path(path: str | Path, fsync: bool = True) -> Iterator[Path]:
    """``with atomic_path(out) as tmp: writer(tmp)``: whatever is written to ``tmp`` becomes
    ``out`` when the block ends without an exception; otherwise ``tmp`` is removed and ``out``
    is left as it was.  The parent directory is created if missing."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = temporary_name(target)
    try:
        yield tmp
        if fsync:
            with open(tmp, "rb+") as f:
                os.fsync(f.fileno())
        os.replace(tmp, target)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        if exc.filename in (None, str(tmp)):  # a full disk, say: name the file being written
            raise OSError(exc.errno, exc.strerror or str(exc), str(target)) from exc
        raise
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    if fsync:
        _fsync_dir(target.parent)


def atomic_write(path: str | Path, write: Callable[[Path], Any], fsync: bool = True) -> None:
    """``write(tmp)`` writes the file; it lands at ``path`` atomically."""
    with atomic_path(path, fsync=fsync) as tmp:
        write(tmp)


def atomic_write_bytes(path: str | Path, data: bytes, fsync: bool = True) -> None:
    with atomic_path(path, fsync=fsync) as tmp:
        tmp.write_bytes(data)


def atomic_write_text(path: str | Path, text: str, fsync: bool = True) -> None:
    atomic_write_bytes(path, text.encode("utf-8"), fsync=fsync)


def atomic_write_json(path: str | Path, obj: Any, fsync: bool = True, **dump_kwargs: Any) -> None:
    """JSON of ``obj`` (``indent``/``sort_keys``/``default`` as for :func:`json.dumps`)."""
    atomic_write_text(path, json.dumps(obj, **dump_kwargs), fsync=fsync)
