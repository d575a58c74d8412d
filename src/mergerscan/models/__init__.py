"""Network architectures, shared by training (which trains them) and the torch engine backend
(which rebuilds one from an engine file): ``create_model(name, **config)``; see :mod:`.registry`."""

from __future__ import annotations

from . import efficientnet_lite, torchvision_bases  # noqa: F401 - importing registers the architectures
from .registry import (
    MergerNet,
    MissingWeightsError,
    ModelInfo,
    create_model,
    imagenet_weights_path,
    list_models,
    load_state_dict_file,
    model_info,
    register_model,
    trainable_tail,
)

ARCHS = list_models()

__all__ = [
    "ARCHS",
    "MergerNet",
    "MissingWeightsError",
    "ModelInfo",
    "create_model",
    "imagenet_weights_path",
    "list_models",
    "load_state_dict_file",
    "model_info",
    "register_model",
    "trainable_tail",
]
