"""Preprocessing and test-time views on the device: uint8 stamps in, mean logit out.

An engine file stays ``prepared (N,3,S,S) float32 -> logit (N,)`` (its weights and sha256 never
change).  At load time a backend puts a *front* before it and the view mean after it:

    stamps uint8 (N,H,W,3) -> prepare_batch's resize + normalisation -> the dihedral views
    (V*N,3,S,S), view-major -> the net -> logit (V*N,) -> mean over the views -> (N,)

as ONNX nodes (:func:`with_front`: ONNX Runtime, TensorRT) or torch ops (:class:`TorchFront`).
Both use prepare_batch's own resampling weights and constants, so they equal
:func:`mergerscan.cutouts.preprocess.prepare_batch` to float rounding (tests: <= 1e-5 on real
stamps); training keeps calling prepare_batch itself.  The ONNX front applies the resample as two
strided convolutions where the sizes share a period (every even size from 256 px): 6.5 MFLOP per
object at 224 px instead of the dense matrices' 165, and 0.35-0.45 of their time in ONNX Runtime
on one core (docs/performance.md; the retired benchmarks/bench_front.py).  A host then moves
196 KB of uint8 per object (instead of 8 x 307 KB of float32 views) and sends the views once.
"""

from __future__ import annotations

import math

import numpy as np

from ..cutouts.preprocess import PreprocessSpec, resample_matrix, triangle
from .base import VIEWS

FRONT_PREFIX = "mergerscan_front/"  # node/initializer names of the front (kept fp32 in fp16 graphs)
STAMPS = "stamps"  # graph input name of the composed graph


def _constants(spec: PreprocessSpec):
    """(resample matrix or None, block factor or None, mean*255 (3,), std*255 (3,)), as prepare_batch."""
    h, s = spec.stamp_pixels, spec.input_size
    mean = np.asarray(spec.mean, np.float32) * 255.0
    std = np.asarray(spec.std, np.float32) * 255.0
    if h % s == 0:
        return None, h // s, mean, std
    return resample_matrix(h, s), None, mean, std


def _periodic_resample(n_in: int, n_out: int):
    """prepare_batch's resample matrix as a strided 1-D convolution, or None where it is not one.

    Output i = phase i % p_out of group i // p_out, which reads inputs from group * p_in on with
    the same triangle weights in every group; the matrix only differs at the two ends, where it
    drops the taps outside the stamp and renormalises - zero padding plus one scale per output.
    Returns (kernel (p_out, K) float32, pad before, pad after, stride p_in, edge scale (n_out,)),
    checked against the matrix to 1e-6."""
    d = math.gcd(n_in, n_out)
    p_in, p_out = n_in // d, n_out // d
    if d < 2 or n_in == n_out:
        return None
    scale = n_in / n_out
    support = max(scale, 1.0)
    taps = []
    for p in range(p_out):  # the triangle of resample_matrix for phase p of group 0, before clipping
        center = scale * (p + 0.5)
        j = np.arange(math.floor(center - support - 1), math.ceil(center + support + 1) + 1)
        w = triangle(j, center, support)
        taps.append((j[w > 0], w[w > 0] / w[w > 0].sum()))
    first, end = min(int(j[0]) for j, _ in taps), max(int(j[-1]) for j, _ in taps) + 1
    ker = np.zeros((p_out, end - first))
    for p, (j, w) in enumerate(taps):
        ker[p, j - first] = w
    m = np.zeros((n_out, n_in))
    for i in range(n_out):
        g, p = divmod(i, p_out)
        j = g * p_in + first + np.arange(ker.shape[1])
        ok = (j >= 0) & (j < n_in)
        m[i, j[ok]] = ker[p, ok]
    edge = 1.0 / m.sum(axis=1)
    if np.abs(m * edge[:, None] - resample_matrix(n_in, n_out)).max() > 1e-6:
        return None
    pad_lo = max(0, -first)
    pad_hi = (d - 1) * p_in + ker.shape[1] - n_in - pad_lo
    if first > 0 or pad_hi < 0:
        return None
    return ker.astype(np.float32), pad_lo, pad_hi, p_in, edge.astype(np.float32)


class _Graph:
    """The front's nodes and initializers as they are added (every name under FRONT_PREFIX)."""

    def __init__(self):
        self.nodes: list = []
        self.inits: list = []

    def const(self, name, arr):
        from onnx import numpy_helper

        if not any(i.name == FRONT_PREFIX + name for i in self.inits):
            self.inits.append(numpy_helper.from_array(np.asarray(arr), FRONT_PREFIX + name))
        return FRONT_PREFIX + name

    def node(self, op, inputs, out, **attrs):
        from onnx import helper

        self.nodes.append(helper.make_node(op, inputs, [FRONT_PREFIX + out], name=FRONT_PREFIX + out, **attrs))
        return FRONT_PREFIX + out


def _banded(g: _Graph, x, spec: PreprocessSpec, band, mean, std):
    """The resample as strided convolutions (~1/20 of the dense FLOPs), then the normalisation."""
    ker, pad_lo, pad_hi, stride, edge = band
    h, s = spec.stamp_pixels, spec.input_size
    x = g.node("Reshape", [x, g.const("planes_shape", np.array([-1, 1, h, h], np.int64))], "planes")
    x = g.node(
        "Conv", [x, g.const("ker_w", ker[:, None, None, :])], "conv_w", strides=[1, stride], pads=[0, pad_lo, 0, pad_hi]
    )  # (B, phase, h, group)
    x = g.node("Transpose", [x], "phase_w", perm=[0, 2, 3, 1])
    x = g.node("Reshape", [x, g.const("rows_shape", np.array([-1, 1, h, s], np.int64))], "resample_w")
    x = g.node(
        "Conv", [x, g.const("ker_h", ker[:, None, :, None])], "conv_h", strides=[stride, 1], pads=[pad_lo, 0, pad_hi, 0]
    )  # (B, phase, group, s)
    x = g.node("Transpose", [x], "phase_h", perm=[0, 2, 1, 3])
    x = g.node("Reshape", [x, g.const("bands_shape", np.array([-1, 3, s, s], np.int64))], "resample_h")
    # edge renormalisation and 1/std in one product, then the mean
    x = g.node("Mul", [x, g.const("edge_scale", np.outer(edge, edge)[None, None] / std.reshape(3, 1, 1))], "scaled")
    return g.node("Sub", [x, g.const("offset", (mean / std).astype(np.float32).reshape(1, 3, 1, 1))], "normalised")


def _resampled(g: _Graph, x, spec: PreprocessSpec):
    """Resize and normalisation of the float NCHW stamps, as prepare_batch does them."""
    a, f, mean, std = _constants(spec)
    band = _periodic_resample(spec.stamp_pixels, spec.input_size) if a is not None else None
    if band is not None:
        return _banded(g, x, spec, band, mean, std)
    if a is not None:  # separable antialiased bilinear: A @ img @ A.T per band
        x = g.node("MatMul", [x, g.const("resample_t", np.ascontiguousarray(a.T))], "resample_w")
        x = g.node("MatMul", [g.const("resample", a), x], "resample_h")
        x = g.node("Sub", [x, g.const("mean", mean.reshape(1, 3, 1, 1))], "centred")
        return g.node("Div", [x, g.const("std", std.reshape(1, 3, 1, 1))], "normalised")
    if f > 1:  # integer ratio: block mean, then one multiply-add (as prepare_batch)
        x = g.node("AveragePool", [x], "block_mean", kernel_shape=[f, f], strides=[f, f])
    x = g.node("Mul", [x, g.const("scale", (1.0 / std).astype(np.float32).reshape(1, 3, 1, 1))], "scaled")
    return g.node("Sub", [x, g.const("offset", (mean / std).astype(np.float32).reshape(1, 3, 1, 1))], "normalised")


def _view_outputs(g: _Graph, x, views: int) -> list:
    """The batch under each dihedral view (np.rot90 over axes (2, 3), then a flip of axis 3)."""
    big = g.const("big", np.array([-(2**62)], np.int64))
    neg = g.const("minus_one", np.array([-1], np.int64))
    step = g.const("step", np.array([-1], np.int64))

    def flip(t, axis, tag):
        return g.node("Slice", [t, neg, big, g.const(f"axis{axis}", np.array([axis], np.int64)), step], tag)

    outs = []
    for i, (k, fl) in enumerate(VIEWS[views]):
        t = x
        if k == 1:
            t = g.node("Transpose", [flip(t, 3, f"v{i}_f")], f"v{i}_r", perm=[0, 1, 3, 2])
        elif k == 2:
            t = flip(flip(t, 2, f"v{i}_f2"), 3, f"v{i}_r")
        elif k == 3:
            t = flip(g.node("Transpose", [t], f"v{i}_t", perm=[0, 1, 3, 2]), 3, f"v{i}_r")
        if fl:
            t = flip(t, 3, f"v{i}_flip")
        outs.append(t)
    return outs


def front_nodes(spec: PreprocessSpec, views: int, src: str, dst: str):
    """ONNX (nodes, initializers): uint8 NHWC ``src`` -> float32 (V*N,3,S,S) ``dst``."""
    from onnx import TensorProto, helper

    g = _Graph()
    x = g.node("Cast", [src], "float", to=TensorProto.FLOAT)
    x = _resampled(g, g.node("Transpose", [x], "nchw", perm=[0, 3, 1, 2]), spec)
    if views == 1:
        g.nodes.append(helper.make_node("Identity", [x], [dst], name=FRONT_PREFIX + "views"))
    else:
        g.nodes.append(
            helper.make_node("Concat", _view_outputs(g, x, views), [dst], name=FRONT_PREFIX + "views", axis=0)
        )
    return g.nodes, g.inits


def with_front(model, spec: PreprocessSpec, views: int):
    """The engine's ONNX model (``prepared -> logit (N,)``) with the front before it and the mean
    over ``views`` after it: ``stamps uint8 (N,H,W,3) -> logit (N,)``.  Metadata is kept."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    m = onnx.ModelProto()
    m.CopyFrom(model)
    g = m.graph
    net_in = g.input[0].name
    prepared = FRONT_PREFIX + "prepared"
    for n in g.node:  # the net now reads the front's output
        for i, name in enumerate(n.input):
            if name == net_in:
                n.input[i] = prepared
    nodes, inits = front_nodes(spec, views, STAMPS, prepared)
    tail, outputs = [], []
    if views > 1:  # every output (the logit; the representation block's, when the file has one)
        inits.append(numpy_helper.from_array(np.array([0], np.int64), FRONT_PREFIX + "axis0"))
        for i, o in enumerate(g.output):  # the first output is the logit (its name kept as before)
            t, o_tail, o_init = _view_mean(o, FRONT_PREFIX + ("logit" if i == 0 else o.name), views)
            tail += o_tail
            inits += o_init
            outputs.append(t)
    body = list(g.node)
    del g.node[:]
    g.node.extend(
        _topological(nodes + body + tail, {STAMPS} | {i.name for i in g.initializer} | {i.name for i in inits})
    )
    g.initializer.extend(inits)
    h = spec.stamp_pixels
    del g.input[:]
    g.input.append(helper.make_tensor_value_info(STAMPS, TensorProto.UINT8, ["batch", h, h, 3]))
    if views > 1:
        del g.output[:]
        g.output.extend(outputs)
    del g.value_info[:]  # shapes inside the net changed batch meaning; re-inferred
    onnx.checker.check_model(m)
    return m


def _view_mean(out, tag: str, views: int):
    """(value info, nodes, initializers): the mean over the views of a view-major graph output
    ``out`` (V*N, ...) -> ``tag`` (N, ...)."""
    from onnx import TensorProto, helper, numpy_helper

    dims = [d.dim_value for d in out.type.tensor_type.shape.dim[1:]]
    shape = numpy_helper.from_array(np.array([views, -1, *dims], np.int64), tag + "_view_shape")
    nodes = [
        helper.make_node("Reshape", [out.name, shape.name], [tag + "_by_view"], name=tag + "_by_view"),
        helper.make_node(
            "ReduceMean", [tag + "_by_view", FRONT_PREFIX + "axis0"], [tag], name=tag + "_view_mean", keepdims=0
        ),
    ]
    info = helper.make_tensor_value_info(tag, TensorProto.FLOAT, ["batch", *dims])
    return info, nodes, [shape]


def _topological(nodes, available: set):
    """Nodes in an order where each one's inputs exist (onnxruntime's fp16 converter appends its
    input casts at the end of the graph, which the ONNX checker refuses)."""
    have, out, todo = set(available) | {""}, [], list(nodes)
    while todo:
        rest = []
        for n in todo:
            if all(i in have for i in n.input):
                out.append(n)
                have.update(n.output)
            else:
                rest.append(n)
        if len(rest) == len(todo):
            raise ValueError(f"graph has a cycle or a missing input at node {rest[0].name!r}")
        todo = rest
    return out


def front_only(spec: PreprocessSpec, views: int = 1):
    """An ONNX model of the front alone (``stamps -> prepared views``): parity tests, benchmarks."""
    import onnx
    from onnx import TensorProto, helper

    nodes, inits = front_nodes(spec, views, STAMPS, "prepared")
    h, s = spec.stamp_pixels, spec.input_size
    g = helper.make_graph(
        nodes,
        "front",
        [helper.make_tensor_value_info(STAMPS, TensorProto.UINT8, ["n", h, h, 3])],
        [helper.make_tensor_value_info("prepared", TensorProto.FLOAT, ["vn", 3, s, s])],
        inits,
    )
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 18)])
    m.ir_version = 9
    onnx.checker.check_model(m)
    return m


# ------------------------------------------------------------------ torch
def torch_front(spec: PreprocessSpec, views: int):
    """torch.nn.Module: uint8 (N,H,W,3) on any device -> float32 (V*N,3,S,S), view-major."""
    import torch
    from torch import nn

    a, f, mean, std = _constants(spec)

    class TorchFront(nn.Module):
        def __init__(self):
            super().__init__()
            self.views = VIEWS[views]
            self.factor = f
            self.register_buffer("a", torch.from_numpy(a if a is not None else np.zeros((1, 1), np.float32)))
            self.register_buffer(
                "a_t", torch.from_numpy(np.ascontiguousarray(a.T) if a is not None else np.zeros((1, 1), np.float32))
            )
            self.register_buffer("mean", torch.from_numpy(mean.reshape(1, 3, 1, 1)))
            self.register_buffer("std", torch.from_numpy(std.reshape(1, 3, 1, 1)))
            self.register_buffer("scale", torch.from_numpy((1.0 / std).astype(np.float32).reshape(1, 3, 1, 1)))
            self.register_buffer("offset", torch.from_numpy((mean / std).astype(np.float32).reshape(1, 3, 1, 1)))

        def forward(self, stamps):
            x = stamps.permute(0, 3, 1, 2).float()
            if self.factor is None:
                x = torch.matmul(self.a, torch.matmul(x, self.a_t))
                x = (x - self.mean) / self.std
            else:
                if self.factor > 1:
                    x = torch.nn.functional.avg_pool2d(x, self.factor)
                x = x * self.scale - self.offset
            if len(self.views) == 1:
                return x
            out = []
            for k, fl in self.views:
                t = torch.rot90(x, k, dims=(2, 3)) if k else x
                out.append(torch.flip(t, dims=(3,)) if fl else t)
            return torch.cat(out)

    return TorchFront()
