"""Mosaicking: the pixels of a stamp that its best frame lacks, filled from the neighbouring frames.

A stamp that runs off its best field's frame (the field containing the object farthest from its
edge) is completed, band by band, from every other field whose frame covers part of it: SDSS
fields of a run overlap by 128 rows, and the neighbouring camcol or the other strip of the
stripe covers the rest.  Rules (deterministic, and independent of the order frames are read in):

* **Priority.** Each stamp pixel of each band comes from exactly one frame: the best field where
  it covers the pixel (4 bilinear neighbours inside the frame), else the neighbour ranked
  first among those that cover it.  Neighbours are ranked by the object's signed distance from
  their reference frame's edge (farthest inside first; outside = negative), then by field order.
* **No blending at seams.** The frames are calibrated (nanomaggies) and sky-subtracted, so
  overlapping frames agree to the few per cent of SDSS's photometric calibration; a pixel is
  never averaged over frames (that would lower the noise in the overlap only, a texture the
  engine never saw), so a calibration difference shows as a step of that size along the seam.
* **Sky.** Pixels no readable frame covers stay 0 (sky); such a stamp is ``edge`` and the
  fraction of its pixels without data in some band is its sky fraction.  An unreadable
  neighbour is skipped (its pixels stay sky): nothing else changes.
* **Cache.** Neighbour frames are read through the source's per-partition cache, fields already
  in memory first, each other field once per group of stamps.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass

import numpy as np

from .geometry import StampGrid

NO_FRAME = np.uint8(255)  # owner of a pixel no frame covers
MAX_NEIGHBOURS = 254  # ranks 1..254 (0 = the best field)
CHUNK = 16  # stamps resampled per call


@dataclass
class Patch:
    """One object's band stamps while they are being completed."""

    row: int  # index of the object in the fetch's rows
    best: int  # field number of its best field
    bands: np.ndarray  # (B, S, S) float32, nanomaggies; 0 where no frame covers
    owner: np.ndarray  # (B, S, S) uint8: rank of the frame each pixel came from, NO_FRAME where none
    neighbours: int = 0  # fields that added pixels

    @classmethod
    def from_best(cls, row: int, best: int, bands: np.ndarray, covered: np.ndarray) -> Patch:
        return cls(row, best, bands, np.where(covered, np.uint8(0), NO_FRAME))

    @property
    def gap(self) -> np.ndarray:
        """(S, S): pixels without data in some band."""
        return (self.owner == NO_FRAME).any(axis=0)

    def sky_fraction(self) -> float:
        return float(self.gap.mean())


def fill(
    patches: list[Patch],
    plan: dict[int, list[tuple[int, int]]],
    order: Iterable[int],
    load: Callable[[int], list | None],
    wcs_of: Callable[[int], list],
    grid: StampGrid,
    ra: np.ndarray,
    dec: np.ndarray,
) -> None:
    """Fill the patches in place: ``plan[field] = [(patch index, rank), ...]``, fields visited in
    ``order`` (any order gives the same result), read with ``load`` (None: unreadable, skipped),
    their band WCS from ``wcs_of``."""
    for fi in order:
        items = plan.get(fi)
        if not items:
            continue
        images = load(fi)
        if images is None:
            continue
        for j in range(0, len(items), CHUNK):
            part = items[j : j + CHUNK]
            rows = np.array([patches[p].row for p, _ in part])
            vals, covered = grid.resample(wcs_of(fi), images, ra[rows], dec[rows])
            for m, (p, rank) in enumerate(part):
                patch = patches[p]
                take = covered[:, m] & (patch.owner > rank)
                if take.any():
                    patch.bands[take] = vals[:, m][take]
                    patch.owner[take] = rank
                    patch.neighbours += 1
