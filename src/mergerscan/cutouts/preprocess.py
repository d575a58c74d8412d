"""The ONE preprocessing shared by training and inference.

A *stamp* is a uint8 RGB image (H, W, 3) of the sky around an object, in the
SDSS SkyServer convention: R=i, G=r, B=g, SDSS asinh colour stretch, north up,
``stamp_pixels`` square at ``pixel_scale`` arcsec/px.  Every image source
(pre-cut files, survey frames, HTTP cutout service) produces stamps; training
reads stamps from JPEGs.  :func:`prepare_batch` turns stamps into the model's
input tensor.  Its parameters travel inside the engine file (``PreprocessSpec``),
so the pipeline cannot run a model with the wrong preprocessing.
"""

from __future__ import annotations

import functools
import json
from dataclasses import asdict, dataclass, field

import numpy as np

# ImageNet statistics (0..1 scale): used by every architecture in the factory so
# that ImageNet-initialised models see the inputs they were trained on.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class PreprocessSpec:
    stamp_pixels: int = 256  # side of the stamp an image source must deliver
    pixel_scale: float = 0.396  # arcsec/px of that stamp (SDSS native)
    input_size: int = 128  # side of the model input after resampling
    mean: tuple = IMAGENET_MEAN
    std: tuple = IMAGENET_STD
    channels: str = "irg"  # bands in R, G, B order (SkyServer colour JPEGs)
    stretch: dict = field(default_factory=lambda: dict(STRETCH_DEFAULT))

    def __post_init__(self):
        if self.stamp_pixels <= 0 or self.input_size <= 0:
            raise ValueError("stamp_pixels and input_size must be positive")
        if self.input_size > self.stamp_pixels:
            raise ValueError("input_size larger than stamp_pixels would upsample")
        object.__setattr__(self, "mean", tuple(float(v) for v in self.mean))
        object.__setattr__(self, "std", tuple(float(v) for v in self.std))

    @property
    def fov_arcsec(self) -> float:
        return self.stamp_pixels * self.pixel_scale

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> PreprocessSpec:
        return cls(**json.loads(text))


# Parameters of the SDSS-style Lupton et al. (2004) asinh composite made from
# calibrated frames (nanomaggies).  Chosen once by matching frame cutouts to
# SkyServer JPEGs of the same objects (the retired benchmarks/calibrate_stretch.py,
# docs/results.md); stored in the engine spec so a frame source renders what the model was trained on.
STRETCH_DEFAULT = {"scales": [0.8159, 1.0, 1.376], "Q": 8.413, "stretch": 0.4217, "minimum": 0.00192}


def _block_sum(x: np.ndarray, factor: int) -> np.ndarray:
    """Sum of factor x factor pixel blocks (exact integer sums for uint8 input): f^2 strided adds,
    several times faster than a reshape-mean."""
    acc_t = np.float32 if x.dtype.kind == "f" else (np.uint16 if factor * factor * 255 < 65536 else np.uint32)
    acc = x[:, ::factor, ::factor].astype(acc_t)
    for i in range(factor):
        for j in range(factor):
            if i or j:
                acc += x[:, i::factor, j::factor]
    return acc


def prepare_batch(stamps: np.ndarray, spec: PreprocessSpec) -> np.ndarray:
    """Stamps (N, H, W, 3) uint8 or float in 0..255 -> float32 (N, 3, S, S) model input.

    Resampling to ``spec.input_size`` is an exact block mean when the size ratio is
    an integer (area-preserving, no aliasing) and antialiased bilinear otherwise.
    """
    x = np.asarray(stamps)
    if x.ndim == 3:
        x = x[None]
    if x.ndim != 4 or x.shape[-1] != 3:
        raise ValueError(f"stamps must be (N, H, W, 3), got {x.shape}")
    n, h, w, _ = x.shape
    if h != w:
        raise ValueError(f"stamps must be square, got {h}x{w}")
    if h != spec.stamp_pixels:
        raise ValueError(f'stamp is {h} px but the engine expects {spec.stamp_pixels} px at {spec.pixel_scale}"/px')
    s = spec.input_size
    mean = np.asarray(spec.mean, np.float32) * 255.0
    std = np.asarray(spec.std, np.float32) * 255.0
    if h % s == 0:
        f = h // s
        x = _block_sum(x, f) if f > 1 else x
        scale = (1.0 / (f * f * std)).astype(np.float32)  # block mean and normalisation in one pass
        y = x.astype(np.float32) * scale - (mean / std).astype(np.float32)
        return np.ascontiguousarray(y.transpose(0, 3, 1, 2))
    a = resample_matrix(h, s)  # (s, h): rows sum to 1
    # separable: out[c] = A @ img[c] @ A.T, as two large 2-D GEMMs over the whole batch
    t = x.astype(np.float32).transpose(0, 3, 1, 2).reshape(-1, h)  # (n*3*h, h): rows of each band
    y = (t @ a.T).reshape(n, 3, h, s).transpose(0, 1, 3, 2).reshape(-1, h)  # (n*3*s, h)
    y = (y @ a.T).reshape(n, 3, s, s).transpose(0, 1, 3, 2)  # (n, 3, s, s)
    y = np.ascontiguousarray(y, dtype=np.float32)  # one C-order copy
    y -= mean.reshape(1, 3, 1, 1)
    y /= std.reshape(1, 3, 1, 1)
    return y


@functools.lru_cache(maxsize=16)
def resample_matrix(n_in: int, n_out: int) -> np.ndarray:
    """(n_out, n_in) weights of antialiased bilinear downsampling - the triangle kernel widened by
    the scale factor, normalised per output pixel - exactly as torch's
    ``F.interpolate(mode="bilinear", antialias=True, align_corners=False)`` (and PIL) compute them
    (tests check the two agree to 1e-5), in numpy so that workers need no torch."""
    scale = n_in / n_out
    support = max(scale, 1.0)  # bilinear support 1, widened when downsampling
    m = np.zeros((n_out, n_in), np.float64)
    for i in range(n_out):
        center = scale * (i + 0.5)
        lo = max(int(center - support + 0.5), 0)
        hi = min(int(center + support + 0.5), n_in)
        w = triangle(np.arange(lo, hi), center, support)
        m[i, lo:hi] = w / w.sum()
    return m.astype(np.float32)


def triangle(j: np.ndarray, center: float, support: float) -> np.ndarray:
    """Unnormalised weights of input pixels ``j`` for an output pixel centred at ``center`` (in
    input pixels): the bilinear triangle widened to ``support``."""
    return np.clip(1.0 - np.abs((j - center + 0.5) * (1.0 / support)), 0.0, None)
