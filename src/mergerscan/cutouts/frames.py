"""Image source for survey frames with a TAN WCS (SDSS DR17 ``frame-[gri]-RRRRRR-C-FFFF.fits[.bz2]``).

This module is the source (:class:`FrameSource`: field choice, frame cache, cutting); its parts
live in :mod:`.frame_io` (reading files), :mod:`.footprint` (the index, a field's footprint),
:mod:`.geometry` (the stamp grid, WCS nodes, bilinear sampling) and :mod:`.colour` (the composite).

* **Footprint index** (:func:`build_frame_index`): per field (run, camcol, field) and band the file,
  image shape, WCS cards, centre and radius, read from the primary headers only (a bz2 file is
  stream-decompressed until its END card).  Cached as JSON next to the frames (or under
  ``~/.cache/mergerscan`` when that directory is read-only); a cached entry is reused while the
  file's size and mtime are unchanged.  A file whose header cannot be read is listed under
  ``unreadable`` and never breaks the index.
* **Field choice**: among the fields whose reference-band (r) frame contains the object's centre,
  the one where it lies farthest from the edge; none -> ``outside_footprint``.  A field that cannot
  be read (corrupt bz2, missing/unreadable band) passes its objects to their next-best field;
  none left -> ``corrupt_frame``.
* **Frame cache**: each needed field is read and decompressed once per source instance (a source
  lives for one partition) and kept in a small LRU (``max_fields`` fields of 3 float32 images).
  bz2 is decompressed with ``indexed_bzip2`` when importable (option ``threads`` = its
  parallelisation, default 1: a Dask worker thread should not oversubscribe its cores), else with
  :mod:`bz2`; only HDU0 is decompressed: its header, then exactly the NAXIS1 x NAXIS2 pixels it
  declares, refused above :data:`MAX_FRAME_PIXELS` before anything more is read (a small bz2
  file can expand to gigabytes).  Only regular files are opened (a FIFO named like a frame is
  listed as ``unreadable`` instead of hanging the run).
* **Quality** (:mod:`mergerscan.cutouts.quality`): a stamp with more than 10 % NaN/inf band
  pixels, or 75 % of it without data (off the frame), is ``blank_image`` (fewer NaN/inf are set
  to 0 = sky), and so is a constant composite.
* **Cutout**: each band is resampled with its own WCS onto a north-up (row 0 = north), east-left
  TAN grid of ``spec.stamp_pixels`` square at ``spec.pixel_scale`` centred on the object (pixel
  ((S-1)/2, (S-1)/2)), by bilinear interpolation.  The band pixel coordinates are computed exactly
  (SIP-aware ``all_world2pix``) on a 9x9 grid of nodes; the full grid is the affine map fitted to
  them when that reproduces every node to 1e-3 px (always for pure TAN: TAN->TAN is projective and
  its curvature over a 100" stamp is ~1e-5 px), else linear interpolation between the nodes.
  Output pixels without 4 neighbours in the band's frame are 0 (frames are sky-subtracted) and the
  row gets ``edge``.
* **Colour**: astropy ``make_lupton_rgb(i*s_i, r*s_r, g*s_g, Q=, stretch=, minimum=)`` -> uint8
  RGB (R=i, G=r, B=g), with ``spec.stretch = {"scales": [s_i, s_r, s_g], "Q", "stretch",
  "minimum"}`` (scales in ``spec.channels`` order).  :func:`composite` computes exactly that (tested
  to 1 count against :func:`composite_reference`) in float32, ~3x faster, and pinned to astropy
  8's formula so stamps do not change with the astropy version.
"""

from __future__ import annotations

from collections import Counter, OrderedDict
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from .base import SourceBase, SourceOptions, empty_stamps
from .colour import composite, composite_reference
from .footprint import INDEX_NAME, Field, build_frame_index
from .frame_io import read_frame
from .geometry import N_NODES, bilinear, node_weights, stamp_nodes, unit
from .preprocess import PreprocessSpec
from .quality import ImageRejected, check_bands, check_pixels

__all__ = [
    "INDEX_NAME",
    "FrameSource",
    "build_frame_index",
    "composite",
    "composite_reference",
    "read_frame",
    "stamp_nodes",
]

COMPOSITE_STAMPS = 2  # stamps per composite() call in FrameSource._cut


class FrameSource(SourceBase):
    kind = "frames"
    statuses = frozenset({"edge", "outside_footprint", "corrupt_frame", "blank_image"})

    @dataclass(frozen=True)
    class Options(SourceOptions):
        index_cache: str | None = "auto"  # footprint index file, "auto" or None (no cache)
        max_fields: int = 4  # fields (3 float32 bands each) kept in memory
        threads: int = 1  # bz2 decompression threads (indexed_bzip2)
        ref_band: str = "r"  # the band whose frame decides the footprint
        chunk: int = 16  # stamps resampled per call

    @classmethod
    def low_memory_options(cls, options):
        """One field in memory at a time (3 bands of a 2048 x 1489 SDSS field: 36 MB each)."""
        return {**options, "max_fields": 1}

    def __init__(self, directory, spec: PreprocessSpec, **options):
        from scipy.spatial import cKDTree

        super().__init__(directory, spec, **options)
        o = self.options
        self.directory = Path(directory)
        self.index = build_frame_index(self.directory, cache=o.index_cache)
        self.max_fields, self.threads, self.chunk = max(1, int(o.max_fields)), max(1, int(o.threads)), int(o.chunk)
        ref_band = o.ref_band
        files = self.index["files"]
        self.field_keys, self._ref, centres, radii = [], [], [], []
        for key, e in sorted(self.index["fields"].items()):
            ref = e["bands"].get(ref_band) or next(iter(sorted(e["bands"].values())), None)
            if ref is None:  # no readable header at all: unknown footprint
                continue
            self.field_keys.append(key)
            self._ref.append(ref)
            centres.append(unit(*files[ref]["centre"]))
            radii.append(files[ref]["radius"])
        # footprint search: field centres in a KD-tree of unit vectors; WCS built only when needed
        self._tree = cKDTree(np.array(centres)) if centres else None
        self._chord = 2 * np.sin(np.radians(min(max(radii, default=0) * 1.05 + 0.01, 90.0)) / 2)
        self._fields: dict = {}  # field number -> Field, built lazily
        self._cache: OrderedDict = OrderedDict()  # field number -> list of band images (LRU)
        self._bad: dict = {}  # field number -> error (never retried)
        self.stats: Counter = Counter()
        n = spec.stamp_pixels  # node geometry, shared by every stamp
        t = np.linspace(0, n - 1, N_NODES)
        self._design = np.stack([np.tile(t, N_NODES), np.repeat(t, N_NODES), np.ones(N_NODES**2)])
        self._pinv = np.linalg.pinv(self._design)  # (n*n, 3)
        self._pix = np.arange(n, dtype=np.float64)
        self._corners = np.array([[0, n - 1, 0, n - 1], [0, 0, n - 1, n - 1], [1, 1, 1, 1]], float)
        self._nodew = node_weights(n, N_NODES)

    # -- protocol -------------------------------------------------------------------------
    def fetch(self, rows: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
        n = len(rows)
        stamps = empty_stamps(n, self.spec)
        status = np.full(n, "outside_footprint", dtype=object)
        ra = rows["ra"].to_numpy(np.float64)
        dec = rows["dec"].to_numpy(np.float64)
        ids = rows["id"].astype(str).tolist() if "id" in rows.columns else [str(i) for i in range(n)]
        cand, start, ncand = self._candidates(ra, dec)
        rank = np.zeros(n, int)
        pending = np.flatnonzero(ncand > 0)
        while pending.size:
            best = cand[start[pending] + rank[pending]]
            for fi in np.unique(best):
                idx = pending[best == fi]
                images = self._load(int(fi))
                if images is None:  # unreadable field: next-best candidate
                    rank[idx] += 1
                    continue
                for j in range(0, len(idx), self.chunk):
                    part = idx[j : j + self.chunk]
                    stamps[part], edge, rejected = self._cut(self.field(fi), images, ra[part], dec[part])
                    status[part] = np.where(edge, "edge", "ok")
                    for k, why in rejected:
                        stamps[part[k]] = 0
                        status[part[k]] = why.status
                        self.examples.setdefault(
                            why.status, f"id {ids[part[k]]} (field {self.field(fi).key}): {why.reason}"
                        )
            exhausted = rank[pending] >= ncand[pending]
            status[pending[exhausted]] = "corrupt_frame"
            for i in pending[exhausted][:1]:
                keys = [self.field_keys[f] for f in cand[start[i] : start[i] + ncand[i]]]
                self.examples.setdefault(
                    "corrupt_frame",
                    f"id {ids[i]}: field(s) {', '.join(keys)} unreadable: {self._bad.get(cand[start[i]], '?')}"[:300],
                )
            pending = pending[(status[pending] == "outside_footprint") & ~exhausted]
        for i in np.flatnonzero(status == "outside_footprint")[:1]:
            self.examples.setdefault(
                "outside_footprint",
                f"id {ids[i]} at ra={ra[i]:.6f}, dec={dec[i]:.6f}: none of "
                f"the {len(self.field_keys)} fields in {self.directory} "
                "covers it",
            )
        self.stats.update(status.tolist())
        return stamps, status

    def close(self) -> None:
        self._cache.clear()

    # -- footprint ------------------------------------------------------------------------
    def field(self, fi) -> Field:
        """Field by number or key (WCS objects are built on first use)."""
        if isinstance(fi, str):
            fi = self.field_keys.index(fi)
        fi = int(fi)
        if fi not in self._fields:
            key = self.field_keys[fi]
            self._fields[fi] = Field(
                key, self.index["fields"][key], self.index["files"], self.spec.channels, self._ref[fi]
            )
        return self._fields[fi]

    def _candidates(self, ra, dec):
        """Fields containing each position, best (farthest from the edge) first, flattened:
        row i's are ``cand[start[i]:start[i] + ncand[i]]``."""
        n = len(ra)
        if self._tree is None or n == 0:
            return np.zeros(0, int), np.zeros(n, int), np.zeros(n, int)
        near = self._tree.query_ball_point(unit(ra, dec), self._chord)
        pairs = [(i, fi) for i, fs in enumerate(near) for fi in fs]
        if not pairs:
            return np.zeros(0, int), np.zeros(n, int), np.zeros(n, int)
        rows, fis = np.array(pairs).T
        dist = np.empty(len(rows))
        for fi in np.unique(fis):
            m = fis == fi
            dist[m] = self.field(fi).edge_distance(ra[rows[m]], dec[rows[m]])
        keep = dist > 0
        rows, fis, dist = rows[keep], fis[keep], dist[keep]
        o = np.lexsort((fis, -dist, rows))  # by row, then farthest from the edge
        ncand = np.bincount(rows, minlength=n)
        start = np.concatenate([[0], np.cumsum(ncand)[:-1]])
        return fis[o], start, ncand

    def locate(self, ra, dec) -> list[list[str]]:
        """Field keys containing each position, best (farthest from the edge) first."""
        ra, dec = np.atleast_1d(np.asarray(ra, float)), np.atleast_1d(np.asarray(dec, float))
        cand, start, ncand = self._candidates(ra, dec)
        return [[self.field_keys[f] for f in cand[s : s + k]] for s, k in zip(start, ncand)]

    # -- frames ---------------------------------------------------------------------------
    def _load(self, fi: int):
        if fi in self._cache:
            self._cache.move_to_end(fi)
            return self._cache[fi]
        if fi in self._bad:
            return None
        f = self.field(fi)
        try:
            if not f.complete:
                raise ValueError("a band is missing or its header is unreadable")
            images = []
            for p, shape in zip(f.paths, f.shapes):
                img = read_frame(self.directory / p, self.threads)
                if img.shape != shape:
                    raise ValueError(f"{p}: shape {img.shape} differs from its header {shape}")
                images.append(img)
        except Exception as e:  # corrupt bz2, truncated, changed on disk, ...
            self._bad[fi] = f"{type(e).__name__}: {e}"
            self.stats["fields_unreadable"] += 1
            return None
        self.stats["fields_read"] += 1
        self._cache[fi] = images
        while len(self._cache) > self.max_fields:
            self._cache.popitem(last=False)
        return images

    def _cut(self, field: Field, images, ra, dec):
        """Stamps (k, S, S, 3) uint8 and an edge flag per object for objects of one field.  The
        composite goes a few stamps at a time so its float32 temporaries stay in the core's cache
        (0.44 ms/stamp at 2 stamps a call, 0.63 at 16, on this machine)."""
        k, s = len(ra), self.spec.stamp_pixels
        out, edge = self._resample(field, images, ra, dec)
        rejected = check_bands(out)  # [(stamp index, ImageRejected)]; NaN -> 0 in place
        rgb = np.empty((k, s, s, 3), np.uint8)
        for j in range(0, k, COMPOSITE_STAMPS):
            rgb[j : j + COMPOSITE_STAMPS] = composite([o[j : j + COMPOSITE_STAMPS] for o in out], self.spec.stretch)
        done = {j for j, _ in rejected}
        for j in range(k):
            if j not in done:
                try:
                    check_pixels(rgb[j], flat=False)
                except ImageRejected as why:
                    rejected.append((j, why))
        return rgb, edge, rejected

    def _resample(self, field: Field, images, ra, dec):
        """Band stamps (3, k, S, S) float32 (nanomaggies, channel order) and edge flags (k,)."""
        k, s = len(ra), self.spec.stamp_pixels
        nra, ndec = stamp_nodes(ra, dec, self.spec)
        out = np.empty((len(images), k, s, s), np.float32)
        edge = np.zeros(k, bool)
        for b, (w, img) in enumerate(zip(field.wcs, images)):
            px, py = w.all_world2pix(nra.ravel(), ndec.ravel(), 0, quiet=True)  # SIP-aware
            for j, (nx, ny) in enumerate(zip(px.reshape(k, -1), py.reshape(k, -1))):
                out[b, j], inside = self._sample(img, nx, ny)
                edge[j] |= not inside
        return out, edge

    def band_stamps(self, ra: float, dec: float):
        """Diagnostics/calibration: (3, S, S) float32 band stamps (channel order, nanomaggies) of
        one position from its best readable field, with the field key and edge flag; None if none."""
        for key in self.locate(ra, dec)[0]:
            fi = self.field_keys.index(key)
            images = self._load(fi)
            if images is not None:
                out, edge = self._resample(self.field(fi), images, np.array([ra], float), np.array([dec], float))
                return out[:, 0], key, bool(edge[0])
        return None

    def _sample(self, img, nx, ny):
        """One band's (S, S) stamp from the exact pixel coords (nx, ny) of the N_NODES^2 nodes, and
        whether it lies wholly inside the frame.  The full grid is an affine map of the nodes when
        that reproduces them to 1e-3 px (always, for TAN frames), else node interpolation."""
        h, w = img.shape
        nodes = np.stack([nx, ny])
        coef = np.einsum("cn,nk->ck", nodes, self._pinv)  # (2, 3): col, row, 1
        affine = np.abs(coef @ self._design - nodes).max() < 1e-3
        ext = coef @ self._corners if affine else nodes  # stamp corners / nodes: the hull
        lo, hi = np.floor(ext.min(1)) - 1, np.floor(ext.max(1)) + 3  # 1 px margin for float32 rounding
        inside = affine and lo[0] >= 0 and lo[1] >= 0 and hi[0] <= w and hi[1] <= h
        x0, y0 = int(min(max(lo[0], 0), w)), int(min(max(lo[1], 0), h))
        x1, y1 = int(min(max(hi[0], x0), w)), int(min(max(hi[1], y0), h))
        win = np.ascontiguousarray(img[y0:y1, x0:x1])  # compact: cache/TLB-friendly
        t = self._pix
        if affine:  # window-relative float32 coords
            cx, cy = (coef[0, 0] * t).astype(np.float32), (coef[1, 0] * t).astype(np.float32)
            bx = cx[None, :] + (coef[0, 1] * t + (coef[0, 2] - x0)).astype(np.float32)[:, None]
            by = cy[None, :] + (coef[1, 1] * t + (coef[1, 2] - y0)).astype(np.float32)[:, None]
        else:
            j, f = self._nodew
            bx, by = [
                (c[j] * (1 - f)[:, None] + c[j + 1] * f[:, None])
                for c in (
                    (c[:, j] * (1 - f) + c[:, j + 1] * f)
                    for c in (nodes.reshape(2, N_NODES, N_NODES) - np.array([x0, y0])[:, None, None]).astype(np.float32)
                )
            ]
        v, valid = bilinear(win, bx, by, check=not inside)
        return v, inside or bool(valid.all())
