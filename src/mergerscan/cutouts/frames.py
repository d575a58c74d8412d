"""Image source for survey frames with a TAN WCS (SDSS DR17 ``frame-[gri]-RRRRRR-C-FFFF.fits[.bz2]``).

This module is the source (:class:`FrameSource`: field choice, frame cache, cutting); its parts
live in :mod:`.frame_io` (reading files), :mod:`.footprint` (the index, a field's footprint),
:mod:`.geometry` (the stamp grid, WCS nodes, bilinear sampling), :mod:`.mosaic` (filling a
stamp from neighbouring frames) and :mod:`.colour` (the composite).

* **Footprint index** (:func:`build_frame_index`): per field (run, camcol, field) and band the file,
  image shape, WCS cards, centre and radius, read from the primary headers only (a bz2 file is
  stream-decompressed until its END card).  Cached as JSON next to the frames (or under
  ``~/.cache/mergerscan`` when that directory is read-only); a cached entry is reused while the
  file's size and mtime are unchanged.  A file whose header cannot be read is listed under
  ``unreadable`` and never breaks the index.
* **Field choice**: among the fields whose reference-band (r) frame contains the object's centre,
  the best is the one where it lies farthest from the edge; none -> ``outside_footprint``.  A
  field that cannot be read (corrupt bz2, missing/unreadable band) passes its objects to their
  next-best field; none left -> ``corrupt_frame``.
* **Mosaic** (:mod:`.mosaic`, option ``mosaic``, default on): where the best field's frame does
  not cover the whole stamp, each band's missing pixels come from the other fields whose frames
  cover them (ranked by the same distance rule, each resampled with its own WCS; no blending at
  seams).  Pixels no readable frame covers are 0 (sky: the frames are sky-subtracted) and the row
  is ``edge``; ``mosaic=false`` is the single-frame rule (every pixel off the best frame is sky).
* **Frame cache**: each needed field (best or neighbour) is read and decompressed once per
  source instance (a source lives for one partition) and kept in a small LRU (``max_fields``
  fields of 3 float32 images).  bz2 is decompressed with ``indexed_bzip2`` when importable (option
  ``threads`` = its parallelisation, default 1: a Dask worker thread should not oversubscribe its
  cores), else with :mod:`bz2`; only HDU0 is decompressed: its header, then exactly the
  NAXIS1 x NAXIS2 pixels it declares, refused above :data:`MAX_FRAME_PIXELS` before anything more
  is read (a small bz2 file can expand to gigabytes).  Only regular files are opened (a FIFO named
  like a frame is listed as ``unreadable`` instead of hanging the run).
* **Quality** (:mod:`mergerscan.cutouts.quality`): a stamp with more than 10 % NaN/inf band
  pixels, or 75 % of it without data (off every frame), is ``blank_image`` (fewer NaN/inf are set
  to 0 = sky), and so is a constant composite.
* **Cutout** (:class:`.geometry.StampGrid`): each band is resampled with its own WCS onto a
  north-up (row 0 = north), east-left TAN grid of ``spec.stamp_pixels`` square at
  ``spec.pixel_scale`` centred on the object (pixel ((S-1)/2, (S-1)/2)), by bilinear
  interpolation.  The band pixel coordinates are computed exactly (SIP-aware ``all_world2pix``) on
  a 9x9 grid of nodes; the full grid is the affine map fitted to them when that reproduces every
  node to 1e-3 px (always for pure TAN: TAN->TAN is projective and its curvature over a 100"
  stamp is ~1e-5 px), else linear interpolation between the nodes.  An output pixel is covered by
  a frame when its 4 bilinear neighbours lie in it.
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

from ..catalogs.schema import Status
from .base import SourceBase, SourceOptions, check_directory, empty_stamps
from .colour import composite, composite_reference
from .footprint import INDEX_NAME, Field, build_frame_index
from .frame_io import read_frame
from .geometry import StampGrid, stamp_nodes, unit
from .mosaic import MAX_NEIGHBOURS, Patch, fill
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

COMPOSITE_STAMPS = 2  # stamps per composite() call in FrameSource._finish
MOSAIC_GROUP = 32  # stamps with gaps completed together (bounds their float32 bands: ~0.8 MB each)


@dataclass
class _Rows:
    """What one fetch writes: stamps, statuses, and the rows' positions and ids."""

    stamps: np.ndarray
    status: np.ndarray
    ra: np.ndarray
    dec: np.ndarray
    ids: list


class FrameSource(SourceBase):
    kind = "frames"
    statuses = frozenset({Status.EDGE, Status.OUTSIDE_FOOTPRINT, Status.CORRUPT_FRAME, Status.BLANK_IMAGE})

    @dataclass(frozen=True)
    class Options(SourceOptions):
        index_cache: str | None = "auto"  # footprint index file, "auto" or None (no cache)
        max_fields: int = 4  # fields (3 float32 bands each) kept in memory
        threads: int = 1  # bz2 decompression threads (indexed_bzip2)
        ref_band: str = "r"  # the band whose frame decides the footprint
        chunk: int = 16  # stamps resampled per call
        mosaic: bool = True  # fill what the best frame lacks from neighbouring frames

    @classmethod
    def low_memory_options(cls, options):
        """One field in memory at a time (3 bands of a 2048 x 1489 SDSS field: 36 MB each)."""
        return {**options, "max_fields": 1}

    @classmethod
    def check_location(cls, location: str) -> None:
        check_directory(location)

    def __init__(self, directory, spec: PreprocessSpec, **options):
        from scipy.spatial import cKDTree

        super().__init__(directory, spec, **options)
        o = self.options
        self.directory = Path(directory)
        self.index = build_frame_index(self.directory, cache=o.index_cache)
        self.max_fields, self.threads, self.chunk = max(1, int(o.max_fields)), max(1, int(o.threads)), int(o.chunk)
        self.mosaic = bool(o.mosaic)
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
        reach = max(radii, default=0) * 1.05 + 0.01  # deg: a field's centre to its farthest corner
        half_diag = spec.stamp_pixels * spec.pixel_scale / 3600 / np.sqrt(2)  # centre to stamp corner
        self._chord = 2 * np.sin(np.radians(min(reach, 90.0)) / 2)
        self._chord_stamp = 2 * np.sin(np.radians(min(reach + half_diag, 90.0)) / 2)
        self._fields: dict = {}  # field number -> Field, built lazily
        self._cache: OrderedDict = OrderedDict()  # field number -> list of band images (LRU)
        self._bad: dict = {}  # field number -> error (never retried)
        self.stats: Counter = Counter()
        self.grid = StampGrid(spec)  # node geometry, shared by every stamp

    # -- protocol -------------------------------------------------------------------------
    def fetch(self, rows: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
        n = len(rows)
        ids = rows["id"].astype(str).tolist() if "id" in rows.columns else [str(i) for i in range(n)]
        ra, dec = rows["ra"].to_numpy(np.float64), rows["dec"].to_numpy(np.float64)
        out = _Rows(empty_stamps(n, self.spec), np.full(n, Status.OUTSIDE_FOOTPRINT, dtype=object), ra, dec, ids)
        status = out.status
        cand, start, ncand = self._candidates(ra, dec)
        rank = np.zeros(n, int)
        pending = np.flatnonzero(ncand > 0)
        patches: list[Patch] = []  # stamps the best frame leaves partly uncovered
        while pending.size:
            best = cand[start[pending] + rank[pending]]
            for fi in np.unique(best):
                idx = pending[best == fi]
                images = self._load(int(fi))
                if images is None:  # unreadable field: next-best candidate
                    rank[idx] += 1
                    continue
                for j in range(0, len(idx), self.chunk):
                    patches += self._cut_best(int(fi), images, idx[j : j + self.chunk], out)
                    if len(patches) >= MOSAIC_GROUP:
                        self._complete(patches, out)
                        patches = []
            exhausted = rank[pending] >= ncand[pending]
            status[pending[exhausted]] = Status.CORRUPT_FRAME
            for i in pending[exhausted][:1]:
                keys = [self.field_keys[f] for f in cand[start[i] : start[i] + ncand[i]]]
                self.examples.setdefault(
                    Status.CORRUPT_FRAME,
                    f"id {ids[i]}: field(s) {', '.join(keys)} unreadable: {self._bad.get(cand[start[i]], '?')}"[:300],
                )
            pending = pending[(status[pending] == Status.OUTSIDE_FOOTPRINT) & ~exhausted]
        self._complete(patches, out)
        for i in np.flatnonzero(status == Status.OUTSIDE_FOOTPRINT)[:1]:
            self.examples.setdefault(
                Status.OUTSIDE_FOOTPRINT,
                f"id {ids[i]} at ra={ra[i]:.6f}, dec={dec[i]:.6f}: none of "
                f"the {len(self.field_keys)} fields in {self.directory} "
                "covers it",
            )
        self.stats.update(status.tolist())
        return out.stamps, status

    def close(self) -> None:
        self._cache.clear()

    # -- cutting --------------------------------------------------------------------------
    def _cut_best(self, fi: int, images, part: np.ndarray, out: _Rows) -> list[Patch]:
        """Cut objects ``part`` from their best field: stamps it covers wholly are finished, the
        others are returned as patches to complete from the neighbouring frames."""
        bands, covered = self.grid.resample(self.field(fi).wcs, images, out.ra[part], out.dec[part])
        out.status[part] = Status.OK  # provisional: no longer looking for a field
        full = covered.all(axis=(0, 2, 3))
        self._finish(bands[:, full], part[full], np.zeros(int(full.sum())), [fi] * int(full.sum()), out)
        return [Patch.from_best(int(part[m]), fi, bands[:, m].copy(), covered[:, m]) for m in np.flatnonzero(~full)]

    def _complete(self, patches: list[Patch], out: _Rows) -> None:
        """Fill the patches from their neighbouring frames, then composite them."""
        if not patches:
            return
        self._mosaic(patches, out.ra, out.dec)
        sky = np.array([p.sky_fraction() for p in patches])
        self.stats["mosaicked"] += sum(p.neighbours > 0 for p in patches)  # stamps neighbours added to
        self.stats["sky_pixels"] += float(sky.sum()) * self.spec.stamp_pixels**2  # left as sky, in total
        idx = np.array([p.row for p in patches])
        self._finish(np.stack([p.bands for p in patches], axis=1), idx, sky, [p.best for p in patches], out)
        for p, f in zip(patches, sky):
            if f > 0 and out.status[p.row] == Status.EDGE:
                self.examples.setdefault(
                    Status.EDGE,
                    f"id {out.ids[p.row]} (field {self.field_keys[p.best]}, {p.neighbours} neighbouring field(s) "
                    f"added pixels): {f:.1%} of the stamp is covered by no readable frame, filled with sky (0)",
                )
                break

    def _finish(self, bands: np.ndarray, idx: np.ndarray, sky: np.ndarray, fields: list, out: _Rows) -> None:
        """Composite band stamps (B, k, S, S) into ``out.stamps[idx]`` with their status (``edge``
        where part of the stamp is sky) or why they were rejected.  The composite goes a few stamps
        at a time so its float32 temporaries stay in the core's cache (0.44 ms/stamp at 2 stamps a
        call, 0.63 at 16, on this machine)."""
        k = len(idx)
        if not k:
            return
        rejected = dict(check_bands(bands))  # {stamp index: ImageRejected}; NaN -> 0 in place
        for j in range(0, k, COMPOSITE_STAMPS):
            sl = slice(j, j + COMPOSITE_STAMPS)
            out.stamps[idx[sl]] = composite([b[sl] for b in bands], self.spec.stretch)
        out.status[idx] = np.where(sky > 0, Status.EDGE, Status.OK)
        for j, i in enumerate(idx):
            if j not in rejected:
                try:
                    check_pixels(out.stamps[i], flat=False)
                except ImageRejected as why:
                    rejected[j] = why
        for j, why in rejected.items():
            i = idx[j]
            out.stamps[i] = 0
            out.status[i] = why.status
            self.examples.setdefault(why.status, f"id {out.ids[i]} (field {self.field_keys[fields[j]]}): {why.reason}")

    def _mosaic(self, patches: list[Patch], ra, dec) -> None:
        """Fill the patches' missing pixels from the fields that cover them (option ``mosaic``)."""
        plan = self._neighbours(patches, ra, dec) if self.mosaic else {}
        if not plan:
            return
        cached = [fi for fi in reversed(self._cache) if fi in plan]  # in memory first
        order = cached + sorted(set(plan) - set(cached))
        fill(patches, plan, order, self._load, lambda fi: self.field(fi).wcs, self.grid, ra, dec)

    def _neighbours(self, patches: list[Patch], ra, dec) -> dict[int, list[tuple[int, int]]]:
        """``{field: [(patch index, rank), ...]}``: the fields other than its best whose frames
        meet each patch's stamp, ranked (1, 2, ...) farthest-from-the-edge first, then by field."""
        if self._tree is None:
            return {}
        rows = np.array([p.row for p in patches])
        near = self._tree.query_ball_point(unit(ra[rows], dec[rows]), self._chord_stamp)
        pairs = [(m, fi) for m, fs in enumerate(near) for fi in fs if fi != patches[m].best and fi not in self._bad]
        if not pairs:
            return {}
        ms, fis = np.array(pairs).T
        cra, cdec = stamp_nodes(ra[rows], dec[rows], self.spec, n=2)  # (k, 2, 2): the stamp's corners
        cra, cdec = cra.reshape(-1, 4)[:, [0, 1, 3, 2]], cdec.reshape(-1, 4)[:, [0, 1, 3, 2]]  # around it
        dist, meets = np.empty(len(ms)), np.zeros(len(ms), bool)
        for fi in np.unique(fis):
            sel = fis == fi
            f = self.field(fi)
            dist[sel] = f.edge_distance(ra[rows[ms[sel]]], dec[rows[ms[sel]]])
            meets[sel] = f.meets(cra[ms[sel]], cdec[ms[sel]])
        ms, fis, dist = ms[meets], fis[meets], dist[meets]
        plan: dict[int, list[tuple[int, int]]] = {}
        rank = np.zeros(len(patches), int)
        for o in np.lexsort((fis, -dist, ms)):  # by patch, then farthest from the edge, then field
            rank[ms[o]] += 1
            if rank[ms[o]] <= MAX_NEIGHBOURS:
                plan.setdefault(int(fis[o]), []).append((int(ms[o]), int(rank[ms[o]])))
        return plan

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

    def band_stamps(self, ra: float, dec: float):
        """Diagnostics/calibration: (3, S, S) float32 band stamps (channel order, nanomaggies) of
        one position, cut as :meth:`fetch` cuts it (its best readable field, mosaicked), with the
        best field's key and whether part of it is sky (``edge``); None if no field covers it."""
        r, d = np.array([ra], float), np.array([dec], float)
        for key in self.locate(ra, dec)[0]:
            fi = self.field_keys.index(key)
            images = self._load(fi)
            if images is not None:
                bands, covered = self.grid.resample(self.field(fi).wcs, images, r, d)
                patch = Patch.from_best(0, fi, bands[:, 0], covered[:, 0])
                if not covered.all():
                    self._mosaic([patch], r, d)
                return patch.bands, key, bool(patch.gap.any())
        return None
