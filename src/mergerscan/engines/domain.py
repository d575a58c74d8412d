"""What an engine was trained on (its *domain*), as its card records it under ``card["domain"]``.

Two halves, each optional:

* ``selection`` -- the training set's selection as data (object class, magnitude range in a named
  band, redshift and angular-size ranges).  The pipeline checks catalog rows against it when the
  catalog carries the columns that decide it.
* ``image`` -- an image-level check for when the catalog cannot tell: a per-row score computed by
  the engine from the network's penultimate features (larger = farther from the training
  galaxies) and the threshold calibrated on validation.

These are blocks of the typed card (:class:`mergerscan.engines.card.EngineCard`, ``.domain``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from .blocks import Block


@dataclass(frozen=True)
class DomainSelection(Block):
    """The training set's selection (None: not constrained / not known)."""

    KEEP_NONE: ClassVar[bool] = True  # every limit is written, None ones as null

    object_class: str | None = "galaxy"
    mag_band: str | None = None  # e.g. "r"
    mag_kind: str | None = None  # e.g. "petro" (SDSS petroMag_r)
    mag_min: float | None = None
    mag_max: float | None = None
    redshift_min: float | None = None
    redshift_max: float | None = None
    size_arcsec_min: float | None = None  # e.g. petroR90_r
    size_arcsec_max: float | None = None
    description: str = ""
    # the magnitude limit is on magnitudes corrected for Galactic extinction (SDSS: petroMag_r -
    # extinction_r); the pipeline subtracts an extinction column where the catalog has one
    mag_dereddened: bool = False
    reference: str = ""  # where the numbers come from (papers, the training catalog)

    def describe(self) -> str:
        """The selection in one line, e.g. ``galaxy; petro r <= 17.77 (extinction-corrected); 0.005 <= z <= 0.1``."""
        band = " ".join(x for x in (self.mag_kind, self.mag_band) if x) or "mag"
        mag = _range(band, self.mag_min, self.mag_max)
        size = _range("size", self.size_arcsec_min, self.size_arcsec_max)
        parts = [
            self.object_class,
            mag and mag + (" (extinction-corrected)" if self.mag_dereddened else ""),
            _range("z", self.redshift_min, self.redshift_max),
            size and size + " arcsec",
        ]
        return "; ".join(p for p in parts if p) or "not constrained"


def _range(name: str, lo: float | None, hi: float | None) -> str | None:
    if lo is not None and hi is not None:
        return f"{lo:g} <= {name} <= {hi:g}"
    if lo is not None:
        return f"{name} >= {lo:g}"
    return f"{name} <= {hi:g}" if hi is not None else None


# A bright star's core saturates the survey stretch (255 in the stamp's centre) and its diffraction
# spikes look like tidal features to the network; the training galaxies' cores almost never
# saturate.  Counted on the uint8 stamp itself, so every backend gets the same integer.
CORE_BOX = 13  # px: the central box (about 5" at the stamps' 0.396"/px)
SATURATED = 250  # a pixel whose brightest channel reaches this is saturated (JPEG-safe margin below 255)


def saturated_core(stamps: np.ndarray) -> np.ndarray:
    """Pixels of each uint8 stamp (N, H, W, 3) in the central CORE_BOX x CORE_BOX box whose
    brightest channel is >= SATURATED, as int16 (N,)."""
    h = stamps.shape[1] // 2 - CORE_BOX // 2
    w = stamps.shape[2] // 2 - CORE_BOX // 2
    core = stamps[:, h : h + CORE_BOX, w : w + CORE_BOX, :].max(axis=3)
    return (core >= SATURATED).sum(axis=(1, 2)).astype(np.int16)


@dataclass(frozen=True)
class ImageDomain(Block):
    """The image-level check: ``score`` names the per-row statistic, ``threshold`` its cut
    (rows with a score above it are outside the domain); ``max_saturated_core``: rows whose
    :func:`saturated_core` exceeds it are outside too (None: not applied)."""

    score: str
    threshold: float
    description: str = ""
    pass_fraction: float | None = None  # the share of each class's validation galaxies that pass
    max_saturated_core: int | None = None
    val_pass: dict[str, float] | None = None  # {"0": share, "1": share} of each class that pass


@dataclass(frozen=True)
class EngineDomain(Block):
    """The card's ``domain`` block: both halves None for an engine without one."""

    selection: DomainSelection | None = None
    image: ImageDomain | None = None

    PARSERS: ClassVar = {"selection": DomainSelection.from_dict, "image": ImageDomain.from_dict}
