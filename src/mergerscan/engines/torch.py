"""PyTorch backend: the model rebuilt from the engine file itself (no sidecar, no pickle).

The card's ``model`` block (written by the export: ``{"arch", "hidden", "dropout"}``) is the
configuration for :func:`mergerscan.models.create_model`; the weights are
the ONNX initializers.  The dynamo exporter keeps parameter names (``base.x.weight``)
but folds each BatchNorm that directly follows a Conv into that Conv (weight rescaled in place,
bias added as ``<conv>.weight_bias``, or dropped when zero); a BatchNorm it cannot fold (DenseNet's
pre-activation norms) stays a ``BatchNormalization`` node with its state-dict names.  So the torch
model is folded the same way (Conv gets the bias, the BN becomes Identity) and every remaining
tensor is copied by name; anything left unmapped is an error, never a silently random weight.

Options: device ``cpu``/``cuda``, ``channels_last`` always, precision fp32 (IEEE: TF32 off for
matmuls and cuDNN convolutions), tf32 (CUDA), bf16/fp16 (autocast), ``compile`` (torch.compile;
on CUDA mode ``max-autotune-no-cudagraphs``, compiled on the first use of each batch bucket), and on CUDA
explicit CUDA graphs per stamp-batch bucket (3 buckets; the last batch is zero-padded).

Stamps in (:meth:`TorchEngine._stamp_logits`): uint8 stamps are copied into a reused pinned host
buffer, sent to the GPU on a copy stream (one H2D copy of 196 KB per object; the views are made on
the device), and the front (resize, normalisation, views), the net and the view mean run as one
captured graph on the compute stream.  Several threads can be in flight: the copy of one call
overlaps the compute of another; only the compute (one graph's static buffers) is serialised.
"""

from __future__ import annotations

import functools
import threading
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .base import BackendUnavailable, Engine, EngineInfo
from .card import EngineCard
from .engine_file import load_model, metadata
from .registry import register_backend
from .representation import read_block

PRECISIONS = ("fp32", "bf16", "fp16")
CUDA_PRECISIONS = ("fp32", "tf32", "bf16", "fp16")


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
    except Exception as exc:
        return f"torch.compile (inductor) does not import: {type(exc).__name__}: {exc}"
    return None


def set_tf32(enabled: bool) -> None:
    """TF32 for fp32 matmuls and cuDNN convolutions (process-wide torch flags; "fp32" must be IEEE
    fp32 to hold the 1e-4 parity)."""
    import torch

    # the legacy flags: torch's own code (torch.onnx.export, ...) still reads them, and raises
    # when the new per-backend fp32_precision settings were used to make conv and rnn differ
    torch.backends.cuda.matmul.allow_tf32 = enabled
    torch.backends.cudnn.allow_tf32 = enabled


def tf32_enabled() -> tuple[bool, bool]:
    """(matmul, cuDNN) TF32 flags as :func:`set_tf32` sets them."""
    import torch

    return bool(torch.backends.cuda.matmul.allow_tf32), bool(torch.backends.cudnn.allow_tf32)


def stamp_buckets(max_images: int, views: int) -> tuple[int, ...]:
    """Fixed stamp-batch shapes on CUDA: three (1/8, 1/2 and all of the largest), so that compiling
    and capturing stays a few graphs, not one per power of two."""
    top = max(1, max_images // views)
    return tuple(sorted({max(1, top // 8), max(1, top // 2), top}))


# ----------------------------------------------------------------- the model rebuilt from the file
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


def model_config(path: str | Path, card: EngineCard) -> dict:
    """The card's ``model`` block as :func:`mergerscan.models.create_model`'s keywords, or a
    one-line ValueError for a file the torch backend cannot rebuild."""
    from ..models import ARCHS

    config = card.model.kwargs() if card.model else {}
    arch = config.get("arch")
    if arch not in ARCHS:
        raise ValueError(f"{path}: card arch {arch!r} is not one of {ARCHS}; the torch backend cannot rebuild it")
    if card.file_precision == "int8":
        raise ValueError(f"{path}: a quantised (int8) engine; the torch backend needs the float engine")
    return config


class _Weights:
    """The ONNX initializers copied into a torch model, each shape checked."""

    def __init__(self, path, graph):
        from onnx import numpy_helper

        self.path, self.W = path, {i.name: numpy_helper.to_array(i) for i in graph.initializer}

    def tensor(self, name, like):
        import torch

        t = torch.from_numpy(np.array(self.W[name]))
        if tuple(t.shape) != tuple(like.shape):
            raise ValueError(
                f"{self.path}: initializer {name} has shape {tuple(t.shape)}, model wants {tuple(like.shape)}"
            )
        return t.to(like.dtype)


def _load_convs(net, graph, weights: _Weights, arch: str, size: int) -> set[str]:
    """Copy every Conv's weight and bias; a BN the exporter folded into its conv is folded here too
    (the conv gets the bias, the BN becomes Identity).  Returns the state-dict names done."""
    import torch
    from torch import nn

    pairs, modules, path, done = _conv_bn_pairs(net, size), dict(net.named_modules()), weights.path, set()
    for node in graph.node:
        if node.op_type != "Conv" or not node.input[1].endswith(".weight"):
            continue
        cname = node.input[1][: -len(".weight")]
        conv = modules.get(cname)
        if not isinstance(conv, nn.Conv2d):
            raise ValueError(f"{path}: Conv weight {node.input[1]} maps to no Conv2d of {arch}")
        bn = pairs.get(cname)
        conv.weight.data.copy_(weights.tensor(node.input[1], conv.weight))
        bias = node.input[2] if len(node.input) > 2 and node.input[2] else None
        if bn is not None and f"{bn}.running_mean" not in weights.W:  # the exporter folded `bn` into this conv
            b = weights.tensor(bias, torch.empty(conv.out_channels)) if bias else torch.zeros(conv.out_channels)
            conv.bias = nn.Parameter(b)
            parent, _, child = bn.rpartition(".")
            setattr(modules[parent] if parent else net, child, nn.Identity())
        elif bias:
            if conv.bias is None:
                raise ValueError(f"{path}: Conv {cname} has a bias in the graph but none in {arch}")
            conv.bias.data.copy_(weights.tensor(bias, conv.bias))
        done.update({f"{cname}.weight", f"{cname}.bias"})
    return done


def _load_rest(net, weights: _Weights, done: set[str]) -> None:
    """Copy every remaining tensor by name; one without an initializer is an error."""
    missing = []
    for name, t in net.state_dict().items():
        if name in done or name.endswith("num_batches_tracked"):
            continue
        if name in weights.W:
            t.copy_(weights.tensor(name, t))
        else:
            missing.append(name)
    if missing:
        raise ValueError(
            f"{weights.path}: {len(missing)} model tensors have no ONNX initializer "
            f"(e.g. {missing[:3]}); the exporter changed how it names or folds weights"
        )


def rebuild_model(path: str | Path, with_representation: bool = False):
    """(MergerNet in eval mode with the engine's weights, EngineInfo) from an ONNX engine file;
    with ``with_representation`` and a file that has a representation block, the net wrapped in
    :class:`WithRepresentation` (rows ``[logit, domain_score, embedding...]``)."""
    from ..models import create_model

    m = load_model(path)
    info = EngineInfo.from_metadata(path, metadata(m))
    config = model_config(path, info.card)
    net = create_model(**config).eval()
    weights = _Weights(path, m.graph)
    _load_rest(net, weights, _load_convs(net, m.graph, weights, config["arch"], info.spec.input_size))
    rep = read_block(weights.W) if with_representation else None
    if rep is not None:
        features = info.card.representation.features if info.card.representation else None
        return _representation_module()(net.eval(), rep, features or "backbone_pool").eval(), info
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


def __getattr__(name: str):  # WithRepresentation is built on first use: importing this module needs no torch
    if name == "WithRepresentation":
        return _representation_module()
    raise AttributeError(name)


class TorchEngine(Engine):
    backend = "torch"

    def __init__(
        self,
        path: str | Path,
        device: str = "cpu",
        precision: str = "fp32",
        compile: bool = False,
        compile_mode: str | None = None,
        cuda_graphs: bool | None = None,
        threads: int = 1,
        max_batch: int | None = None,
        host_buffers: int = 3,
    ):
        try:
            import torch
        except ImportError:
            raise BackendUnavailable("torch backend: torch is not installed") from None
        self.device = torch.device(device)
        cuda = self.device.type == "cuda"
        allowed = PRECISIONS + (("tf32",) if cuda else ())
        if precision not in allowed:
            raise ValueError(
                f"{'torch-cuda' if cuda else 'torch'}: precision must be one of {', '.join(allowed)}"
                + ("" if cuda else " (tf32 is a CUDA precision)")
            )
        if cuda and (why := cuda_unavailable_reason()):
            raise BackendUnavailable(f"torch-cuda: {why}")
        if not cuda:
            torch.set_num_threads(max(1, int(threads)))
        net, info = rebuild_model(path, with_representation=True)
        super().__init__(info)
        self.has_representation = hasattr(net, "score_weights")  # rows [logit, domain_score, embedding...]
        self.backend = "torch-cuda" if cuda else "torch"
        # images per net call: a GPU wants big batches, a CPU 8-64
        self.max_batch, self.precision = int(max_batch or (1024 if cuda else 256)), precision
        self.images_per_call = self.max_batch if cuda else 32
        self.dtype = {"fp32": None, "tf32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[precision]
        self._tf32 = precision == "tf32"
        if cuda:
            set_tf32(self._tf32)
        # no grad-requiring leaves: autocast then keeps no weight-cast cache (safe in CUDA graph capture)
        self.net = net.requires_grad_(False).to(self.device, memory_format=torch.channels_last)
        self.fn = self.net
        if compile:
            if why := compile_unavailable_reason():
                raise BackendUnavailable(f"torch backend with compile=True: {why}")
            # no-cudagraphs: we capture our own graphs (front + net + mean) per bucket; plain
            # max-autotune would add its own per shape, and minutes of start-up per worker
            mode = compile_mode or ("max-autotune-no-cudagraphs" if cuda else "default")
            self.fn = torch.compile(self.net, mode=mode, dynamic=False if cuda else None)
        self.cuda_graphs = cuda if cuda_graphs is None else bool(cuda_graphs)
        if self.cuda_graphs and not cuda:
            raise ValueError("cuda_graphs needs device='cuda'")
        self._fronts: dict = {}
        self._graphs: dict = {}
        self._host_buffers, self._slots, self._slots_for = max(1, int(host_buffers)), None, None
        self._slots_lock = threading.Lock()
        if cuda:
            self._copy_stream = torch.cuda.Stream()
            self._compute_stream = torch.cuda.Stream()

    # ---------------------------------------------------------------- pieces
    def _front(self, views: int):
        if views not in self._fronts:
            from .front import torch_front

            self._fronts[views] = torch_front(self.spec, views).to(self.device)
        return self._fronts[views]

    def _forward(self, t):
        import torch

        with (
            torch.no_grad(),
            torch.autocast(self.device.type, dtype=self.dtype or torch.float32, enabled=self.dtype is not None),
        ):
            return self.fn(t).float()

    def _stamps_forward(self, stamps_dev, views: int):
        """uint8 stamps on the device -> mean logit over the views (N,) float32."""
        import torch

        with torch.no_grad():
            x = self._front(views)(stamps_dev).contiguous(memory_format=torch.channels_last)
            y = self._forward(x)
            return y.reshape(views, -1, *y.shape[1:]).mean(0)

    def _bucket(self, n: int) -> int:
        return next(
            (b for b in stamp_buckets(self.max_batch, self.info.views) if b >= n),
            stamp_buckets(self.max_batch, self.info.views)[-1],
        )

    def _slot_queue(self):
        """``host_buffers`` reused pinned host buffers for the largest stamp batch of the current
        view count, each with its device twin and an event (made on first use: views can change)."""
        import queue

        import torch

        top = stamp_buckets(self.max_batch, self.info.views)[-1]
        with self._slots_lock:
            if self._slots_for != top:
                h = self.spec.stamp_pixels
                q = queue.Queue()
                for _ in range(self._host_buffers):
                    q.put(
                        (
                            torch.empty((top, h, h, 3), dtype=torch.uint8).pin_memory(),
                            torch.empty((top, h, h, 3), dtype=torch.uint8, device=self.device),
                            torch.cuda.Event(),
                        )
                    )
                self._slots, self._slots_for = q, top
            return self._slots

    def _graph(self, b: int, views: int):
        """(graph, static uint8 input, output) for ``b`` stamps: front + views + net + mean."""
        import torch

        key = (b, views)
        if key not in self._graphs:
            h = self.spec.stamp_pixels
            x = torch.zeros((b, h, h, 3), dtype=torch.uint8, device=self.device)
            side = torch.cuda.Stream()
            side.wait_stream(self._compute_stream)
            with torch.cuda.stream(side):  # warm-up (and compilation) off the capture stream
                for _ in range(3):
                    self._stamps_forward(x, views)
            self._compute_stream.wait_stream(side)
            g = torch.cuda.CUDAGraph()
            # thread_local: other threads' copies on the copy stream must not break this capture
            with torch.cuda.graph(g, stream=self._compute_stream, capture_error_mode="thread_local"):
                y = self._stamps_forward(x, views)
            self._graphs[key] = (g, x, y)
        return self._graphs[key]

    # ---------------------------------------------------------------- the engine API
    def _logits(self, x: np.ndarray) -> np.ndarray:
        """A prepared float batch (training parity, benchmarks): eager, no graphs."""
        import torch

        t = torch.from_numpy(np.ascontiguousarray(x, np.float32))
        if self.device.type == "cuda":
            set_tf32(self._tf32)
            t = t.to(self.device)
        y = self._forward(t.contiguous(memory_format=torch.channels_last)).cpu().numpy()
        return y[:, 0] if y.ndim == 2 else y

    def _stamp_logits(self, stamps: np.ndarray) -> np.ndarray:
        y = self._run_stamps(stamps)
        return y[:, 0] if y.ndim == 2 else y

    def _stamp_outputs(self, stamps: np.ndarray):
        y = self._run_stamps(stamps)
        return (y[:, 0], y[:, 2:], y[:, 1]) if y.ndim == 2 else (y, None, None)

    def _run_stamps(self, stamps: np.ndarray) -> np.ndarray:
        """uint8 stamps -> the net's output averaged over the views: (N,) logits, or (N, 2 + k)
        rows [logit, domain_score, embedding...] with a representation block."""
        import torch

        views = self.info.views
        if self.device.type != "cuda":
            return self._stamps_forward(torch.from_numpy(np.ascontiguousarray(stamps)), views).numpy()
        n = len(stamps)
        slots = self._slot_queue()
        host, dev, copied = slots.get()  # bounded: at most host_buffers calls in flight
        try:
            host[:n].numpy()[...] = stamps  # into pinned memory: the H2D copy can be async
            with torch.cuda.stream(self._copy_stream):
                dev[:n].copy_(host[:n], non_blocking=True)
                copied.record(self._copy_stream)
            with self._lock:  # one graph's static buffers: one call at a time
                set_tf32(self._tf32)
                s = self._compute_stream
                s.wait_event(copied)
                with torch.cuda.stream(s):
                    if self.cuda_graphs:
                        b = self._bucket(n)
                        g, xin, y = self._graph(b, views)
                        xin[:n].copy_(dev[:n])  # device to device; stale rows past n feed ignored outputs
                        g.replay()
                        out = y[:n].clone()
                    else:  # compiled shapes are static: pad to the bucket
                        b = self._bucket(n) if self.fn is not self.net else n
                        out = self._stamps_forward(dev[:b], views)[:n]
                    done = torch.cuda.Event()
                    done.record(s)
            done.synchronize()
            return out.cpu().numpy()
        finally:
            slots.put((host, dev, copied))


@dataclass(frozen=True)
class TorchOptions:
    precision: str | None = None  # None: the backend's default (torch fp32, torch-cuda bf16)
    compile: bool | None = None  # torch.compile (None: on for torch-cuda, off on the CPU)
    compile_mode: str | None = None
    cuda_graphs: bool | None = None  # None: on for CUDA
    max_batch: int | None = None  # images per net call
    host_buffers: int = 3  # pinned host buffers (calls in flight) on CUDA


def _torch_engine(device: str, default_precision: str, default_compile: bool):
    def make(path, options: TorchOptions, threads: int = 1, views: int | None = None) -> TorchEngine:
        return TorchEngine(
            path,
            device=device,
            precision=options.precision or default_precision,
            compile=default_compile if options.compile is None else options.compile,
            compile_mode=options.compile_mode,
            cuda_graphs=options.cuda_graphs,
            threads=threads,
            max_batch=options.max_batch,
            host_buffers=options.host_buffers,
        )

    make.__qualname__ = f"torch_engine_{device}"
    return make


def _torch_unavailable_reason() -> str | None:
    import importlib.util

    return None if importlib.util.find_spec("torch") else "torch is not installed (pip install mergerscan[train])"


def _torch_cuda_unavailable_reason() -> str | None:
    return _torch_unavailable_reason() or cuda_unavailable_reason()


register_backend(
    "torch",
    options=TorchOptions,
    precisions=PRECISIONS,
    unavailable_reason=_torch_unavailable_reason,
    help="PyTorch on the CPU, the model rebuilt from the engine file",
)(_torch_engine("cpu", "fp32", False))
register_backend(
    "torch-cuda",
    options=TorchOptions,
    precisions=CUDA_PRECISIONS,
    default_precision="bf16",
    needs_gpu=True,
    unavailable_reason=_torch_cuda_unavailable_reason,
    help="PyTorch on CUDA: bf16 autocast, torch.compile and CUDA graphs by default",
)(_torch_engine("cuda", "bf16", True))
