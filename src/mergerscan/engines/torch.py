"""PyTorch backend: the model rebuilt from the engine file itself (no sidecar, no pickle).

``card["arch"]`` names the architecture in :func:`mergerscan.training.models.create_model`; the
weights are the ONNX initializers.  The dynamo exporter keeps parameter names (``base.x.weight``)
but folds each BatchNorm that directly follows a Conv into that Conv (weight rescaled in place,
bias added as ``<conv>.weight_bias``, or dropped when zero); a BatchNorm it cannot fold (DenseNet's
pre-activation norms) stays a ``BatchNormalization`` node with its state-dict names.  So the torch
model is folded the same way (Conv gets the bias, the BN becomes Identity) and every remaining
tensor is copied by name; anything left unmapped is an error, never a silently random weight.

Options: device ``cpu``/``cuda``, ``channels_last`` always, precision fp32/bf16/fp16 (autocast),
``compile`` (torch.compile; mode ``max-autotune`` on CUDA, which brings its own CUDA graphs), and
on CUDA without compile explicit CUDA graphs per batch bucket (the last batch is zero-padded).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .base import BackendUnavailable, Engine, EngineInfo

PRECISIONS = ("fp32", "bf16", "fp16")


def _conv_bn_pairs(net, size: int) -> dict[str, str]:
    """{conv module name: BN module name} for every BatchNorm2d whose input is a Conv2d's output,
    found by running one small batch with hooks (works for any architecture, no tracing)."""
    import torch
    from torch import nn

    outs, pairs, hooks = {}, {}, []
    for name, mod in net.named_modules():
        if isinstance(mod, nn.Conv2d):
            hooks.append(mod.register_forward_hook(
                lambda m, i, o, name=name: outs.__setitem__(id(o), (name, o))))
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


def rebuild_model(path: str | Path):
    """(MergerNet in eval mode with the engine's weights, EngineInfo) from an ONNX engine file."""
    import onnx
    import torch
    from onnx import numpy_helper
    from torch import nn

    from ..training.models import ARCHS, create_model

    m = onnx.load(str(path))
    info = EngineInfo.from_metadata(path, {p.key: p.value for p in m.metadata_props})
    arch = info.card.get("arch")
    if arch not in ARCHS:
        raise ValueError(f"{path}: card arch {arch!r} is not one of {ARCHS}; the torch backend cannot rebuild it")
    if info.card.get("precision") == "int8":
        raise ValueError(f"{path}: a quantised (int8) engine; the torch backend needs the float engine")
    W = {i.name: numpy_helper.to_array(i) for i in m.graph.initializer}
    hidden = int(W["top.1.weight"].shape[0]) if "top.1.weight" in W else 256
    net = create_model(arch, hidden=hidden).eval()
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
        cname = node.input[1][:-len(".weight")]
        conv = modules.get(cname)
        if not isinstance(conv, nn.Conv2d):
            raise ValueError(f"{path}: Conv weight {node.input[1]} maps to no Conv2d of {arch}")
        bn = pairs.get(cname)
        folded = bn is not None and f"{bn}.running_mean" not in W
        conv.weight.data.copy_(tensor(node.input[1], conv.weight))
        bias = node.input[2] if len(node.input) > 2 and node.input[2] else None
        if folded:       # the exporter folded `bn` into this conv: do the same here
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
        raise ValueError(f"{path}: {len(missing)} model tensors have no ONNX initializer "
                         f"(e.g. {missing[:3]}); the exporter changed how it names or folds weights")
    return net.eval(), info


def cuda_unavailable_reason() -> str | None:
    try:
        import torch
    except ImportError:
        return "torch is not installed (pip install mergerscan[gpu])"
    if not torch.cuda.is_available():
        return f"torch {torch.__version__} sees no CUDA device"
    return None


def compile_unavailable_reason() -> str | None:
    """torch.compile needs inductor to import (and a C++ compiler on CPU); say why not."""
    try:
        import torch
        import torch._inductor.compile_fx  # noqa: F401
    except Exception as exc:  # noqa: BLE001 - any import failure means the same here
        return f"torch.compile (inductor) does not import: {type(exc).__name__}: {exc}"
    return None


class TorchEngine(Engine):
    backend = "torch"

    def __init__(self, path: str | Path, device: str = "cpu", precision: str = "fp32", compile: bool = False,
                 compile_mode: str | None = None, cuda_graphs: bool | None = None, threads: int = 1,
                 max_batch: int = 256):
        try:
            import torch
        except ImportError:
            raise BackendUnavailable("torch backend: torch is not installed") from None
        if precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {PRECISIONS}")
        self.device = torch.device(device)
        cuda = self.device.type == "cuda"
        if cuda and (why := cuda_unavailable_reason()):
            raise BackendUnavailable(f"torch-cuda: {why}")
        if not cuda:
            torch.set_num_threads(max(1, int(threads)))
        net, info = rebuild_model(path)
        super().__init__(info)
        self.backend = "torch-cuda" if cuda else "torch"
        self.max_batch, self.precision = int(max_batch), precision
        self.dtype = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[precision]
        # no grad-requiring leaves: autocast then keeps no weight-cast cache (safe in CUDA graph capture)
        self.net = net.requires_grad_(False).to(self.device, memory_format=torch.channels_last)
        self.fn = self.net
        if compile:
            if (why := compile_unavailable_reason()):
                raise BackendUnavailable(f"torch backend with compile=True: {why}")
            mode = compile_mode or ("max-autotune" if cuda else "default")
            self.fn = torch.compile(self.net, mode=mode, dynamic=False if cuda else None)
        # explicit CUDA graphs only for eager CUDA; inductor's max-autotune captures its own
        self.cuda_graphs = (cuda and not compile) if cuda_graphs is None else bool(cuda_graphs)
        if self.cuda_graphs and not cuda:
            raise ValueError("cuda_graphs needs device='cuda'")
        self._graphs: dict[int, tuple] = {}

    def _forward(self, t):
        import torch
        with torch.no_grad(), torch.autocast(self.device.type, dtype=self.dtype or torch.float32,
                                             enabled=self.dtype is not None):
            return self.fn(t).float()

    def _bucket(self, n: int) -> int:
        """Fixed batch shapes on CUDA (powers of two, 8..max_batch): few graphs/compilations."""
        return min(self.max_batch, max(8, 1 << (n - 1).bit_length()))

    def _graph(self, b: int):
        import torch
        if b not in self._graphs:
            s = self.spec.input_size
            x = torch.zeros(b, 3, s, s, device=self.device).contiguous(memory_format=torch.channels_last)
            side = torch.cuda.Stream()
            side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(side):      # warm-up off the capture stream, as torch requires
                for _ in range(3):
                    self._forward(x)
            torch.cuda.current_stream().wait_stream(side)
            g = torch.cuda.CUDAGraph()
            with torch.cuda.graph(g):
                y = self._forward(x)
            self._graphs[b] = (g, x, y)
        return self._graphs[b]

    def _logits(self, x: np.ndarray) -> np.ndarray:
        import torch
        n = len(x)
        t = torch.from_numpy(np.ascontiguousarray(x, np.float32))
        if self.device.type != "cuda":
            return self._forward(t.contiguous(memory_format=torch.channels_last)).numpy()
        b = self._bucket(n)
        if self.cuda_graphs:
            g, xin, y = self._graph(b)
            xin[:n].copy_(t)                   # stale rows past n only feed ignored outputs
            g.replay()
            return y[:n].cpu().numpy()
        if n < b:
            t = torch.cat([t, t.new_zeros((b - n,) + tuple(t.shape[1:]))])
        t = t.pin_memory().to(self.device, non_blocking=True).contiguous(memory_format=torch.channels_last)
        return self._forward(t)[:n].cpu().numpy()
