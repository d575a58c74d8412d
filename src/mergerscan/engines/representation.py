"""An engine file's *representation block*: the net's penultimate features as outputs of the graph.

The block reads one tensor of the net (card ``representation.features``: ``backbone_pool``, the
global average pool of the convolutional base, or ``hidden``, the head's ReLU layer), and adds,
inside the graph, per image:

* ``embedding`` (N, k): the features' coordinates on the first k principal components of the
  training-split galaxies (PCA mean and components stored as initializers; not whitened, so
  Euclidean distances between embeddings approximate those between the features);
* ``domain_score`` (N,): how far the features are from the training galaxies,
  ``sqrt(w_m * sum_i (e_i / s_i)^2 + w_r * |c - E^T e|^2)`` with ``c`` the centred features, ``s_i``
  the PCA standard deviations (the first term is the squared Mahalanobis distance inside the PCA
  space, the second the squared residual outside it) and the weights ``w`` stored in the file.

The logit stays the graph's first output, computed exactly as before.  Every backend reads the
block from the same initializers: ONNX Runtime and TensorRT run these nodes (the front averages
each output over the views, like the logit), the torch backend rebuilds them as tensor ops
(:mod:`.torch`).  Engines without a block have neither output (``domain_score`` None).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .card import EngineCard

PREFIX = "mergerscan_repr/"
EMBEDDING, DOMAIN_SCORE = "embedding", "domain_score"
OUTPUTS = (EMBEDDING, DOMAIN_SCORE)
NAMES = ("mean", "components", "inv_std", "score_weights")


@dataclass(frozen=True)
class Representation:
    """The block's parameters (float32): ``mean`` (D,), ``components`` (k, D) orthonormal rows,
    ``inv_std`` (k,) 1 / PCA standard deviation, ``score_weights`` (2,) (w_m, w_r)."""

    mean: np.ndarray
    components: np.ndarray
    inv_std: np.ndarray
    score_weights: np.ndarray

    @property
    def k(self) -> int:
        return int(self.components.shape[0])

    def apply(self, features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Reference (numpy, float64): features (N, D) -> (embedding (N, k), domain_score (N,))."""
        c = np.asarray(features, np.float64) - self.mean
        e = c @ self.components.T.astype(np.float64)
        r = c - e @ self.components.astype(np.float64)
        w = self.score_weights.astype(np.float64)
        d2 = w[0] * ((e * self.inv_std) ** 2).sum(1) + w[1] * (r**2).sum(1)
        return e.astype(np.float32), np.sqrt(d2).astype(np.float32)


def describe(card: EngineCard, first: int) -> str:
    """One line on a card's representation block: k components of which features, the variance
    they explain, that of the ``first`` (``--embeddings``' default), what the PCA was fitted on."""
    rep, k = card.representation, card.n_components
    if rep is None or not k:
        return "none (no embedding, no domain_score)"
    ratio = [float(r) for r in rep.explained_variance_ratio or ()]
    dim = f" ({rep.dim}-d)" if rep.dim else ""
    text = f"{k} PCA components of {rep.features or '?'}{dim}"
    if ratio:
        text += f", {sum(ratio[:k]):.1%} of the variance; the first {min(first, k)}: {sum(ratio[:first]):.1%}"
    return text + (f"; fitted on {rep.fitted_on}" if rep.fitted_on else "")


def read_block(initializers: dict[str, np.ndarray]) -> Representation | None:
    """The block from ``{initializer name: array}`` of an engine graph (None: the file has none)."""
    if PREFIX + "mean" not in initializers:
        return None
    return Representation(*(np.asarray(initializers[PREFIX + n], np.float32) for n in NAMES))


def has_block(model) -> bool:
    return any(o.name == DOMAIN_SCORE for o in model.graph.output)


def strip_block(model) -> None:
    """Remove a block (nodes, initializers, outputs) from ``model`` in place: refitting replaces it."""
    keep = [n for n in model.graph.node if not n.name.startswith(PREFIX)]
    del model.graph.node[:]
    model.graph.node.extend(keep)
    inits = [i for i in model.graph.initializer if not i.name.startswith(PREFIX)]
    del model.graph.initializer[:]
    model.graph.initializer.extend(inits)
    outs = [o for o in model.graph.output if o.name not in OUTPUTS]
    del model.graph.output[:]
    model.graph.output.extend(outs)


def add_block(model, rep: Representation, tensor: str) -> None:
    """Add the block reading graph tensor ``tensor`` (the pooled features, (N, D) or (N, D, 1, 1))
    to ``model`` in place, replacing any earlier block; the logit output and its nodes are kept."""
    from onnx import TensorProto, helper, numpy_helper

    strip_block(model)
    g = model.graph
    for name in NAMES:
        g.initializer.append(numpy_helper.from_array(np.asarray(getattr(rep, name), np.float32), PREFIX + name))
    g.initializer.append(numpy_helper.from_array(np.array([1], np.int64), PREFIX + "axis1"))
    P = PREFIX

    def node(op, inputs, out, **attrs):
        g.node.append(helper.make_node(op, inputs, [out if out in OUTPUTS else P + out], name=P + out, **attrs))
        return out if out in OUTPUTS else P + out

    f = node("Flatten", [tensor], "features", axis=1)
    c = node("Sub", [f, P + "mean"], "centred")
    ct = node("Transpose", [P + "components"], "components_t", perm=[1, 0])
    e = node("MatMul", [c, ct], EMBEDDING)
    back = node("MatMul", [e, P + "components"], "reconstructed")
    r = node("Sub", [c, back], "residual")
    m2 = node("ReduceSumSquare", [node("Mul", [e, P + "inv_std"], "whitened"), P + "axis1"], "m2", keepdims=0)
    r2 = node("ReduceSumSquare", [r, P + "axis1"], "r2", keepdims=0)
    w = P + "score_weights"
    wm = node("Gather", [w, node("Constant", [], "i0", value_int=0)], "w_m", axis=0)
    wr = node("Gather", [w, node("Constant", [], "i1", value_int=1)], "w_r", axis=0)
    d2 = node("Add", [node("Mul", [m2, wm], "m2_w"), node("Mul", [r2, wr], "r2_w")], "d2")
    node("Sqrt", [d2], DOMAIN_SCORE)
    g.output.append(helper.make_tensor_value_info(EMBEDDING, TensorProto.FLOAT, ["batch", rep.k]))
    g.output.append(helper.make_tensor_value_info(DOMAIN_SCORE, TensorProto.FLOAT, ["batch"]))
