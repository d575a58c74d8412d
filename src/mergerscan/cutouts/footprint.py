"""The footprint index of a directory of frames, and one field's footprint.

:func:`build_frame_index`: per field (run, camcol, field) and band the file, image shape, WCS
cards, centre and radius, read from the primary headers only (a bz2 file is stream-decompressed
until its END card).  Cached as JSON next to the frames (or under ``~/.cache/mergerscan`` when
that directory is read-only), written atomically; a cached entry is reused while the file's size
and mtime are unchanged.  A file whose header cannot be read is listed under ``unreadable`` and
never breaks the index.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import stat
import warnings
from pathlib import Path

import numpy as np

from ..atomic import atomic_write_json
from .frame_io import frame_shape, read_header
from .geometry import make_wcs, quad_meets_rect, unit

INDEX_VERSION = 1
INDEX_NAME = ".mergerscan-frames-index.json"
FRAME_RE = re.compile(r"^frame-([a-z])-(\d{6})-(\d)-(\d{4})\.fits(\.bz2|\.gz)?$")
WCS_KEY_RE = re.compile(
    r"^(NAXIS[12]?|WCSAXES|CTYPE\d|CUNIT\d|CRPIX\d|CRVAL\d|CDELT\d|CD\d_\d|PC\d_\d|"
    r"CROTA\d|LONPOLE|LATPOLE|EQUINOX|RADESYS|RADECSYS|PV\d_\d+|[AB]P?_ORDER|"
    r"[AB]P?_\d+_\d+)$"
)


def header_entry(path: Path) -> dict:
    """Index entry of one file from its primary header (shape, WCS cards, centre, radius)."""
    hdr = read_header(path)
    frame_shape(hdr)  # bounded pixel count, 2-d
    cards = {k: hdr[k] for k in hdr if WCS_KEY_RE.match(k)}
    if "RADECSYS" in cards:  # deprecated spelling (SDSS): avoid the warning
        cards.setdefault("RADESYS", cards.pop("RADECSYS"))
    ny, nx = int(hdr["NAXIS2"]), int(hdr["NAXIS1"])
    w = make_wcs(cards)
    if not w.has_celestial:
        raise ValueError("no celestial WCS")
    px = np.array([(nx - 1) / 2, 0, nx - 1, 0, nx - 1], float)
    py = np.array([(ny - 1) / 2, 0, 0, ny - 1, ny - 1], float)
    ra, dec = w.all_pix2world(px, py, 0)
    u = unit(ra, dec)
    radius = float(np.degrees(np.arccos(np.clip(u[1:] @ u[0], -1, 1))).max())
    return {"shape": [ny, nx], "wcs": cards, "centre": [float(ra[0]), float(dec[0])], "radius": radius}


def writable(directory: Path) -> bool:
    """Writable for us *and* meant to be: root passes os.access on a read-only (r-x) data
    directory, so its permission bits must allow writing too."""
    try:
        mode = directory.stat().st_mode
    except OSError:
        return False
    return os.access(directory, os.W_OK) and bool(mode & (stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH))


def default_cache(directory: Path) -> Path:
    if writable(directory):
        return directory / INDEX_NAME
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "mergerscan"
    key = hashlib.sha1(str(directory.resolve()).encode()).hexdigest()[:16]
    return base / f"frames-index-{key}.json"


def frame_files(directory: Path) -> list[str]:
    """Frame file names, relative to directory, also in subdirectories (SDSS: RERUN/RUN/CAMCOL/)."""
    out = []
    for root, dirs, names in os.walk(directory):
        dirs.sort()
        rel = Path(root).relative_to(directory)
        out += [str(rel / n) if rel.parts else n for n in sorted(names) if FRAME_RE.match(n)]
    return out


def build_frame_index(directory, cache="auto") -> dict:
    """Footprint index of the frames in ``directory``.

    ``cache``: ``"auto"`` (``directory/.mergerscan-frames-index.json`` if writable, else under
    ``~/.cache/mergerscan/``), a file path, or ``None`` (no cache).  Returns
    ``{"version", "directory", "files": {name: entry}, "fields": {key: {...}}, "unreadable": {name: error}}``
    where a field key is ``"RUN-CAMCOL-FIELD"`` and ``fields[key]["bands"][band]`` is a file name.
    """
    directory = Path(directory)
    cache_path = default_cache(directory) if cache == "auto" else (Path(cache) if cache else None)
    old = {}
    if cache_path is not None and cache_path.exists():
        try:
            prev = json.loads(cache_path.read_text())
            if prev.get("version") == INDEX_VERSION and prev.get("directory") == str(directory.resolve()):
                old = prev["files"]
        except (OSError, ValueError, KeyError):
            old = {}
    files, changed = {}, False
    for name in frame_files(directory):
        m = FRAME_RE.match(Path(name).name)
        try:
            st = (directory / name).stat()
        except OSError:  # vanished while listing
            continue
        prev = old.get(name)
        if prev and prev["size"] == st.st_size and prev["mtime_ns"] == st.st_mtime_ns:
            files[name] = prev  # unchanged file: reuse its entry
            continue
        changed = True
        entry = {
            "size": st.st_size,
            "mtime_ns": st.st_mtime_ns,
            "band": m[1],
            "field": f"{int(m[2])}-{int(m[3])}-{int(m[4])}",
        }
        try:
            entry.update(header_entry(directory / name))
        except Exception as e:  # corrupt / not FITS: recorded, never fatal
            entry["error"] = f"{type(e).__name__}: {e}"[:300]
        files[name] = entry
    changed |= set(files) != set(old)
    fields, unreadable = {}, {}
    for name, e in files.items():
        run, camcol, field = (int(v) for v in e["field"].split("-"))
        f = fields.setdefault(e["field"], {"run": run, "camcol": camcol, "field": field, "bands": {}})
        if "error" in e:
            unreadable[name] = e["error"]
        else:
            f["bands"][e["band"]] = name
    index = {
        "version": INDEX_VERSION,
        "directory": str(directory.resolve()),
        "files": files,
        "fields": fields,
        "unreadable": unreadable,
    }
    if cache_path is not None and changed:
        with contextlib.suppress(OSError):  # a lost or failed write only costs a rebuild: no fsync
            atomic_write_json(cache_path, index, fsync=False)
    return index


class Field:
    """One field: its bands' WCS (channel order; None where missing/unreadable) and the footprint
    of its reference band."""

    def __init__(self, key: str, entry: dict, files: dict, bands: str, ref: str):
        self.key = key
        self.paths = [entry["bands"].get(b) for b in bands]
        self.complete = all(n is not None for n in self.paths)
        self.ref_wcs = make_wcs(files[ref]["wcs"])
        self.ref_shape = tuple(files[ref]["shape"])
        self.wcs = [None if n is None else make_wcs(files[n]["wcs"]) for n in self.paths]
        self.shapes = [None if n is None else tuple(files[n]["shape"]) for n in self.paths]

    def edge_distance(self, ra, dec) -> np.ndarray:
        """Distance (px) of each position from the reference frame's edge; <= 0 when outside."""
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            x, y = self.ref_wcs.all_world2pix(ra, dec, 0, quiet=True)
        h, w = self.ref_shape
        e = np.minimum(np.minimum(x + 0.5, w - 0.5 - x), np.minimum(y + 0.5, h - 0.5 - y))
        return np.where(np.isfinite(e), e, -np.inf)

    def meets(self, ra, dec) -> np.ndarray:
        """Whether each stamp, given by its 4 corner pixel centres in order around it ((k, 4) deg),
        has a pixel that some band's frame covers (its 4 bilinear neighbours inside the frame)."""
        out = np.zeros(len(ra), bool)
        for w, shape in zip(self.wcs, self.shapes):
            if w is None:
                continue
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", RuntimeWarning)
                x, y = w.all_world2pix(np.ravel(ra), np.ravel(dec), 0, quiet=True)
            x, y = np.nan_to_num(x.reshape(-1, 4), nan=-1e9), np.nan_to_num(y.reshape(-1, 4), nan=-1e9)
            out |= quad_meets_rect(x, y, shape[1] - 1, shape[0] - 1)
        return out
