"""The torch model rebuilt from an engine file itself (no sidecar, no pickle): see :mod:`.torch`."""

from __future__ import annotations

import functools
from pathlib import Path

import numpy as np

from .base import EngineInfo
from .engine_file import metadata
from .representation import CARD_KEY, read_block


def _conv_bn_pairs(net, size: int) -> dict[str, str]:
    """{conv module name: BN module name} for every BatchNorm2d whose input is a Conv2d's output,
    found by running one small batch with hooks (works for any architecture, no tracing)."""
    import torch
    from torch import nn

    outs: dict[int, tuple] = {}
    pairs: dict[str, str] = {}
    hooks: list = []
    for name, mod in net.named_modules():
        if isinstance(mod, nn.Conv2d):
            hooks.append(mod.register_forward_hook(lambda m, i, o, name=name: outs.__setitem__(id(o), (name, o))))
        elif isinstance(mod, nn.BatchNorm2d):

            def pre(m, i, name=name):
                src = outs.get(id(i[0]))
                if src is not None and src[1] is i[0]:
                    pairs[src[0]] = name

            hooks.append(mod.register_forward_pre_hook(pre))
    try:
        with torch.no_grad():
            net.eval()(torch.zeros(1, 3, size, size))
    finally:
        for h in hooks:
            h.remove()
    return pairs


def rebuild_model(path: str | Path, with_representation: bool = False):
    """(MergerNet in eval mode with the engine's weights, EngineInfo) from an ONNX engine file;
    with ``with_representation`` and a file that has a representation block, the net wrapped in
    :class:`WithRepresentation` (rows ``[logit, domain_score, embedding...]``)."""
    import onnx
    import torch
    from onnx import numpy_helper
    from torch import nn

    from ..models import ARCHS, create_model

    m = onnx.load(str(path))
    info = EngineInfo.from_metadata(path, metadata(m))
    config = dict(info.card.get("model") or {"arch": info.card.get("arch")})
    arch = config.get("arch")
    if arch not in ARCHS:
        raise ValueError(f"{path}: card arch {arch!r} is not one of {ARCHS}; the torch backend cannot rebuild it")
    if info.card.get("precision") == "int8":
        raise ValueError(f"{path}: a quantised (int8) engine; the torch backend needs the float engine")
    W = {i.name: numpy_helper.to_array(i) for i in m.graph.initializer}
    if "hidden" not in config:  # files exported before the card carried the config
        config["hidden"] = int(W["top.1.weight"].shape[0]) if "top.1.weight" in W else 256
    net = create_model(**config).eval()
    pairs = _conv_bn_pairs(net, info.spec.input_size)
    modules = dict(net.named_modules())

    def tensor(name, like):
        t = torch.from_numpy(np.array(W[name]))
        if tuple(t.shape) != tuple(like.shape):
            raise ValueError(f"{path}: initializer {name} has shape {tuple(t.shape)}, model wants {tuple(like.shape)}")
        return t.to(like.dtype)

    done = set()
    for node in m.graph.node:
        if node.op_type != "Conv" or not node.input[1].endswith(".weight"):
            continue
        cname = node.input[1][: -len(".weight")]
        conv = modules.get(cname)
        if not isinstance(conv, nn.Conv2d):
            raise ValueError(f"{path}: Conv weight {node.input[1]} maps to no Conv2d of {arch}")
        bn = pairs.get(cname)
        folded = bn is not None and f"{bn}.running_mean" not in W
        conv.weight.data.copy_(tensor(node.input[1], conv.weight))
        bias = node.input[2] if len(node.input) > 2 and node.input[2] else None
        if bn is not None and folded:  # the exporter folded `bn` into this conv: do the same here
            b = tensor(bias, torch.empty(conv.out_channels)) if bias else torch.zeros(conv.out_channels)
            conv.bias = nn.Parameter(b)
            parent, _, child = bn.rpartition(".")
            setattr(modules[parent] if parent else net, child, nn.Identity())
        elif bias:
            if conv.bias is None:
                raise ValueError(f"{path}: Conv {cname} has a bias in the graph but none in {arch}")
            conv.bias.data.copy_(tensor(bias, conv.bias))
        done.update({f"{cname}.weight", f"{cname}.bias"})
    missing = []
    for name, t in net.state_dict().items():
        if name in done or name.endswith("num_batches_tracked"):
            continue
        if name in W:
            t.copy_(tensor(name, t))
        else:
            missing.append(name)
    if missing:
        raise ValueError(
            f"{path}: {len(missing)} model tensors have no ONNX initializer "
            f"(e.g. {missing[:3]}); the exporter changed how it names or folds weights"
        )
    rep = read_block(W) if with_representation else None
    if rep is not None:
        features = (info.card.get(CARD_KEY) or {}).get("features", "backbone_pool")
        return _representation_module()(net.eval(), rep, features).eval(), info
    return net.eval(), info


@functools.cache
def _representation_module():
    import torch
    from torch import nn

    class WithRepresentation(nn.Module):
        """The net and its representation block as torch ops (:mod:`.representation`, the same
        initializers): (B, 3, S, S) -> (B, 2 + k) rows ``[logit, domain_score, embedding...]``, one
        tensor so the view mean and CUDA graphs treat it as they treat the logit."""

        def __init__(self, net, rep, features: str):
            super().__init__()
            if features not in ("backbone_pool", "hidden"):
                raise ValueError(
                    f"representation block reads {features!r}; the torch backend knows backbone_pool, hidden"
                )
            self.net, self.hidden = net, features == "hidden"
            for name in ("mean", "components", "inv_std", "score_weights"):
                self.register_buffer(name, torch.from_numpy(np.array(getattr(rep, name), np.float32)))

        def forward(self, x):
            f = self.net.pool(self.net.base(x)).flatten(1)
            h = self.net.top[1:3](f)  # dense + ReLU (the ReLU is in place: on the dense output only)
            z = self.net.top[3:](h)[:, 0]
            c = (h if self.hidden else f).float() - self.mean
            e = c @ self.components.T
            r = c - e @ self.components
            d2 = self.score_weights[0] * ((e * self.inv_std) ** 2).sum(1) + self.score_weights[1] * (r**2).sum(1)
            return torch.cat([z[:, None].float(), torch.sqrt(d2)[:, None], e], 1)

    return WithRepresentation


def __getattr__(name):  # WithRepresentation is built on first use: importing this module needs no torch
    if name == "WithRepresentation":
        return _representation_module()
    raise AttributeError(name)
