"""The engine interface: a model file in, probabilities out.

An engine file is an ONNX graph ``stamps-normalised (N,3,S,S) float32 -> logit (N,)`` whose
metadata carries the preprocessing spec and the model card (``mergerscan.spec``,
``mergerscan.card``).  Every backend (ONNX Runtime CPU/CUDA, PyTorch, TensorRT) is built from
that one file.  Engines take **uint8 stamps** (N, H, W, 3) as the image sources deliver them
(:meth:`Engine.predict`); a backend runs the resize, normalisation and test-time views itself, on
its device (``_stamp_logits``, see :mod:`mergerscan.engines.front`), identical to
:func:`prepare_batch`.  ``logits`` on an already prepared batch stays for training and parity checks.
"""

from __future__ import annotations

import hashlib
import threading
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

import numpy as np

from ..cutouts.preprocess import PreprocessSpec, prepare_batch
from .card import EngineCard
from .domain import EngineDomain, saturated_core
from .engine_file import CARD_KEY, SPEC_KEY, card_of, load_metadata, require_spec
from .operating import Curve, card_curve

__all__ = [
    "CARD_KEY",
    "SPEC_KEY",
    "VIEWS",
    "BackendUnavailable",
    "Engine",
    "EngineCard",
    "EngineInfo",
    "EngineOutput",
    "dihedral_views",
    "file_sha256",
    "iter_views",
    "read_engine_info",
    "sigmoid",
]

# test-time augmentation: the dihedral views averaged (mean logit) for 1, 2, 4 or 8 views, as
# (number of 90-degree rotations, horizontal flip); the model card says how many to use and
# carries the temperature and threshold fitted on validation for each count ("by_views")
VIEWS = {
    1: ((0, False),),
    2: ((0, False), (0, True)),
    4: ((0, False), (0, True), (2, False), (2, True)),
    8: tuple((k, f) for k in range(4) for f in (False, True)),
}


def sigmoid(z) -> np.ndarray:
    """The logistic function (float64), clipped so exp never overflows: the one used by the
    engines' calibration and by training's temperature fit and evaluation."""
    return 1.0 / (1.0 + np.exp(-np.clip(np.asarray(z, np.float64), -60, 60)))


def iter_views(x: np.ndarray, views: int):
    """The batch (N, C, H, W) under each of ``views`` dihedral views, one contiguous array at a time."""
    for k, flip in VIEWS[views]:
        v = np.rot90(x, k, axes=(2, 3))
        yield np.ascontiguousarray(v[..., ::-1] if flip else v)


def dihedral_views(x: np.ndarray, views: int) -> np.ndarray:
    """(N, C, H, W) -> (views * N, C, H, W): the batch under each view, view-major."""
    return np.concatenate(list(iter_views(x, views))) if views > 1 else x


class BackendUnavailable(RuntimeError):
    """The asked-for backend cannot run here (package, driver or device missing); never a silent fallback."""


def file_sha256(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


@dataclass
class EngineInfo:
    """What a model file says about itself: its preprocessing spec and its card."""

    path: str
    sha256: str
    spec: PreprocessSpec
    card: EngineCard = field(default_factory=EngineCard)
    views: int = 0  # 0 (or None): the card's default ("views", else 1)

    def __post_init__(self):
        if not self.views:
            self.views = self.card.default_views
        allowed = self.card.calibrated_views()
        if self.views not in allowed:
            raise ValueError(
                f"{self.path}: engine {self.name} has a threshold and temperature for "
                f"{', '.join(map(str, sorted(allowed)))} view(s), not {self.views}"
            )

    def with_views(self, views: int | None) -> EngineInfo:
        return EngineInfo(self.path, self.sha256, self.spec, self.card, views or 0)

    @cached_property
    def curve(self) -> Curve | None:
        """The card's validation curve for these views (:func:`operating.card_curve`; None: none),
        built once per engine, not per partition (the row intervals, :mod:`.uncertainty`, read it)."""
        return card_curve(self.card, self.views)

    @property
    def name(self) -> str:
        return self.card.name or Path(self.path).stem

    @property
    def domain(self) -> EngineDomain:
        """The training domain the card records (both halves None for engines without one)."""
        return self.card.engine_domain

    @property
    def threshold(self) -> float:
        t = self.card.calibration(self.views).threshold
        return 0.5 if t is None else float(t)

    @property
    def temperature(self) -> float:
        t = self.card.calibration(self.views).temperature
        return 1.0 if t is None else float(t)

    @classmethod
    def from_metadata(cls, path, meta: dict) -> EngineInfo:
        return cls(str(path), file_sha256(path), require_spec(meta, path), EngineCard.from_dict(card_of(meta)))


def read_engine_info(path: str | Path) -> EngineInfo:
    """Read spec + card from an ONNX engine file without building a session."""
    return EngineInfo.from_metadata(path, load_metadata(path))


@dataclass(frozen=True)
class EngineOutput:
    """What one engine call gives per stamp (row-aligned with the stamps)."""

    p_merger: np.ndarray  # (N,) float32, calibrated
    domain_score: np.ndarray | None = None  # (N,) float32; None: the engine has no image-domain check
    features: np.ndarray | None = None  # (N, D) float32 penultimate features; only when asked
    saturated_core: np.ndarray | None = None  # (N,) int16 saturated pixels in the stamp's centre (domain.py)


class Engine:
    """Base class: subclasses implement ``_logits(x)`` for a prepared float32 batch and, to run the
    preprocessing on their device, ``_stamp_logits(stamps)`` (uint8 stamps -> mean logit over views)."""

    backend = "abstract"
    precision = "fp32"
    max_batch = 64  # images per net call: CPU engines peak at 8-64 (docs/performance.md)
    images_per_call = 32  # stamp_batch = this // views: each stamp becomes `views` images
    _stamp_batch = None
    # one call at a time: backends whose calls share one execution context, stream or captured
    # input buffer (TensorRT, torch CUDA graphs); ONNX Runtime sessions are safe to share
    serial = False
    # the engine file has a representation block and this backend computes it (score() then
    # fills domain_score; see .representation)
    has_representation = False

    def __init__(self, info: EngineInfo):
        self.info = info
        self._lock = threading.Lock()

    @property
    def spec(self) -> PreprocessSpec:
        return self.info.spec

    @property
    def card(self) -> EngineCard:
        return self.info.card

    @property
    def stamp_batch(self) -> int:
        """Stamps per ``_stamp_logits`` call (the views can change after loading: computed)."""
        return self._stamp_batch or max(1, self.images_per_call // self.info.views)

    @stamp_batch.setter
    def stamp_batch(self, value: int | None):
        self._stamp_batch = value

    def _logits(self, x: np.ndarray) -> np.ndarray:  # pragma: no cover - interface
        raise NotImplementedError

    def _call(self, fn, x):
        if not self.serial:
            return fn(x)
        with self._lock:
            return fn(x)

    def logits(self, x: np.ndarray) -> np.ndarray:
        """Raw logits for an already prepared batch, chunked to ``max_batch``."""
        out = [
            np.asarray(self._call(self._logits, x[i : i + self.max_batch]), np.float32).reshape(-1)
            for i in range(0, len(x), self.max_batch)
        ]
        return np.concatenate(out) if out else np.zeros(0, np.float32)

    def _stamp_logits(self, stamps: np.ndarray) -> np.ndarray:
        """Mean logit over the views for uint8 stamps; this default prepares on the host."""
        x = prepare_batch(stamps, self.spec)
        z = np.zeros(len(stamps), np.float64)
        for v in iter_views(x, self.info.views):  # one view at a time: memory stays that of one batch
            z += self.logits(v)
        return z / self.info.views

    def _stamp_outputs(self, stamps: np.ndarray) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None]:
        """(mean logit, embedding (N, k), domain score (N,)) over the views, the last two None for an
        engine without a representation block; backends whose graph has one override this."""
        return self._stamp_logits(stamps), None, None

    def _checked(self, stamps) -> np.ndarray:
        stamps = np.asarray(stamps)
        if stamps.ndim == 3:
            stamps = stamps[None]
        h = self.spec.stamp_pixels
        if stamps.ndim != 4 or stamps.shape[1:] != (h, h, 3):
            raise ValueError(f"stamps must be (N, {h}, {h}, 3) for this engine, got {stamps.shape}")
        if stamps.dtype != np.uint8:  # sources deliver uint8; floats in 0..255 are rounded once
            stamps = np.clip(np.rint(stamps), 0, 255).astype(np.uint8)
        return stamps

    def _chunks(self, fn, stamps: np.ndarray):
        b = max(1, int(self.stamp_batch))
        return [self._call(fn, stamps[i : i + b]) for i in range(0, len(stamps), b)]

    def stamp_logits(self, stamps: np.ndarray) -> np.ndarray:
        """uint8 stamps (N, H, W, 3) -> mean logit over the engine's views (N,), in chunks of
        ``stamp_batch`` stamps."""
        out = [np.asarray(z, np.float64).reshape(-1) for z in self._chunks(self._stamp_logits, self._checked(stamps))]
        return np.concatenate(out) if out else np.zeros(0, np.float64)

    def calibrate(self, z: np.ndarray) -> np.ndarray:
        """Mean logits -> calibrated p_merger (the card's temperature for this view count)."""
        return sigmoid(np.asarray(z, np.float64) / self.info.temperature).astype(np.float32)

    def predict(self, stamps: np.ndarray) -> np.ndarray:
        """uint8 stamps (N, H, W, 3) -> calibrated p_merger (N,) float32."""
        if len(stamps) == 0:
            return np.zeros(0, np.float32)
        return self.calibrate(self.stamp_logits(stamps))

    def stamp_outputs(self, stamps: np.ndarray) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None]:
        """uint8 stamps -> (mean logit (N,) float64, embedding (N, k) float32, domain score (N,)
        float32), each averaged over the views in one call per chunk; the last two are None when
        the engine has no representation block (then this is :meth:`stamp_logits`)."""
        stamps = self._checked(stamps)
        if not self.has_representation:
            return self.stamp_logits(stamps), None, None
        parts = self._chunks(self._stamp_outputs, stamps)
        if not parts:
            k = self.info.card.n_components
            return np.zeros(0, np.float64), np.zeros((0, k), np.float32), np.zeros(0, np.float32)
        return (
            np.concatenate([np.asarray(p[0], np.float64).reshape(-1) for p in parts]),
            np.concatenate([np.asarray(p[1], np.float32) for p in parts]),
            np.concatenate([np.asarray(p[2], np.float32).reshape(-1) for p in parts]),
        )

    def score(self, stamps: np.ndarray, *, features: bool = False) -> EngineOutput:
        """uint8 stamps -> :class:`EngineOutput`: p_merger (as :meth:`predict`) and, when the engine
        file has a representation block (:mod:`.representation`), the image-domain score and, with
        ``features=True``, the embedding (the PCA coordinates of the pooled penultimate features,
        (N, k); not the raw features), all averaged over the views, from the same net call."""
        z, emb, d = self.stamp_outputs(stamps)
        return EngineOutput(self.calibrate(z), d, emb if features else None, saturated_core(self._checked(stamps)))

    def close(self):
        pass
