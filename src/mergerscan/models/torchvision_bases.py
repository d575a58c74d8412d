"""vgg16 (and vgg16_bn), densenet121 and inception_v3: torchvision's own definitions, so the standard ImageNet
checkpoints (torch hub cache) load unchanged."""

from __future__ import annotations

import sys
from pathlib import Path

import torch
from torch import nn

from .registry import MissingWeightsError, register_model

_TV_LIB = None
HEADS = ("classifier", "fc.", "AuxLogits")  # ImageNet heads: replaced by the study's top


def _torchvision():
    """Import torchvision under a CPU-only torch.

    PyPI's torchvision wheels register CUDA kernels for ``torchvision::nms``; with a
    CPU torch the import fails unless the op schemas exist.  Defining them first is
    harmless (only ``torchvision.ops`` stays unusable, and we do not use it).
    """
    global _TV_LIB
    try:
        import torchvision

        return torchvision
    except (RuntimeError, ImportError) as exc:
        if "torchvision::nms" not in str(exc) and "does not exist" not in str(exc):
            raise
    _TV_LIB = torch.library.Library("torchvision", "DEF")
    _TV_LIB.define("nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
    _TV_LIB.define("qnms(Tensor qdets, Tensor scores, float iou_threshold) -> Tensor")
    for mod in [m for m in sys.modules if m.startswith("torchvision")]:
        del sys.modules[mod]
    import torchvision

    return torchvision


def _hub_weights(arch: str, enum_name: str):
    def locate() -> Path:
        enum = getattr(_torchvision().models, enum_name).IMAGENET1K_V1
        hub = Path(torch.hub.get_dir()) / "checkpoints" / Path(enum.url).name
        if hub.is_file():
            return hub
        try:  # the standard download into the torch hub cache
            torch.hub.load_state_dict_from_url(enum.url, progress=False, check_hash=True)
            return hub
        except Exception as exc:
            raise MissingWeightsError(
                f"ImageNet weights for {arch} are not in {hub} and could not be downloaded "
                f"({type(exc).__name__}: {exc}); put the file there or pass --weights FILE. "
                "Refusing to train E2 from random initialisation."
            ) from None

    return locate


def _register_vgg(name: str, weights_enum: str, block_starts: tuple[int, ...]) -> None:
    """A torchvision VGG whose unfreeze units are its five conv blocks (``block_starts``: the
    index in ``features`` of each block's first conv)."""

    def build():
        m = getattr(_torchvision().models, name)(weights=None)
        return m, m.features, 512

    register_model(
        name,
        min_size=32,
        default_size=224,
        blocks=tuple(f"base.{i}" for i in block_starts),
        imagenet_weights=_hub_weights(name, weights_enum),
        ignore_keys=HEADS,
    )(build)


_register_vgg("vgg16", "VGG16_Weights", (0, 5, 10, 17, 24))
# batch norm after each conv: plain VGG-16 from random initialisation stays at the constant
# predictor with SGD here (docs/results.md), so the study's E1 row uses this one
_register_vgg("vgg16_bn", "VGG16_BN_Weights", (0, 7, 14, 24, 34))


@register_model(
    "densenet121",
    min_size=32,
    default_size=224,
    blocks=("base.0.conv0", "base.0.denseblock1", "base.0.denseblock2", "base.0.denseblock3", "base.0.denseblock4"),
    imagenet_weights=_hub_weights("densenet121", "DenseNet121_Weights"),
    ignore_keys=HEADS,
)
def densenet121():
    m = _torchvision().models.densenet121(weights=None)
    return m, nn.Sequential(m.features, nn.ReLU(inplace=True)), 1024


INCEPTION_TRUNK = (
    "Conv2d_1a_3x3",
    "Conv2d_2a_3x3",
    "Conv2d_2b_3x3",
    "maxpool1",
    "Conv2d_3b_1x1",
    "Conv2d_4a_3x3",
    "maxpool2",
    "Mixed_5b",
    "Mixed_5c",
    "Mixed_5d",
    "Mixed_6a",
    "Mixed_6b",
    "Mixed_6c",
    "Mixed_6d",
    "Mixed_6e",
    "Mixed_7a",
    "Mixed_7b",
    "Mixed_7c",
)


class InceptionTrunk(nn.Module):
    """The convolutional trunk of torchvision's Inception3."""

    def __init__(self, inc):
        super().__init__()
        self.inc = inc

    def forward(self, x):
        for name in INCEPTION_TRUNK:
            x = getattr(self.inc, name)(x)
        return x


def _drop_inception_heads(full: nn.Module) -> None:
    """The ImageNet heads inside the wrapped trunk: the auxiliary head goes, fc becomes Identity."""
    full.register_module("AuxLogits", None)
    full.fc = nn.Identity()


@register_model(
    "inception_v3",
    min_size=75,
    default_size=299,
    blocks=(
        "base.inc.Conv2d_1a_3x3",
        "base.inc.Mixed_5b",
        "base.inc.Mixed_6a",
        "base.inc.Mixed_7a",
        "base.inc.Mixed_7b",
        "base.inc.Mixed_7c",
    ),
    imagenet_weights=_hub_weights("inception_v3", "Inception_V3_Weights"),
    ignore_keys=HEADS,
    finalize=_drop_inception_heads,
)
def inception_v3():
    m = _torchvision().models.inception_v3(weights=None, aux_logits=True, init_weights=True)
    return m, InceptionTrunk(m), 2048
