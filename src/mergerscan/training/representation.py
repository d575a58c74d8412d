"""Fit an engine's representation block (penultimate features -> PCA -> domain score) on the
training split's galaxies, calibrate the image-domain threshold on the validation split, and write
both into the engine file (graph block + ``card["representation"]`` + ``card["domain"]["image"]``)::

    python -m mergerscan.training.representation ENGINE --catalog catalog.csv --out OUT.onnx

Re-runnable and idempotent: an existing block is replaced, the logit nodes and weights are left
as they are (p_merger unchanged; checked before writing), other card entries are kept.  The split
is the training code's (:func:`mergerscan.training.data.build_labelled_set`, same seed), so the
train/val/test sets are the card's.  See :mod:`mergerscan.engines.representation`.
"""

from __future__ import annotations

import argparse
import json
import os
from dataclasses import replace
from pathlib import Path

import numpy as np

from ..exit_codes import EXIT_BAD_INPUT, EXIT_FAILED, EXIT_OK
from ..verb_flags import (
    add_output_option,
    check_output,
    count,
    default_of,
    from_namespace,
    os_error_text,
    positive_float,
    positive_int,
)

POOLS = ("ReduceMean", "GlobalAveragePool")
SHAPERS = ("Reshape", "Flatten", "Squeeze")


def feature_tensors(model) -> dict[str, str]:
    """Names of the net's penultimate tensors in an engine graph: ``backbone_pool`` (the global
    average pool, flattened: the input of the first dense layer after it) and, when the head has
    one, ``hidden`` (the ReLU after that dense layer).  ValueError when the graph has no pool."""
    nodes = list(model.graph.node)
    producer = {o: n for n in nodes for o in n.output}
    for n in nodes:
        if n.op_type not in ("Gemm", "MatMul"):
            continue
        p = producer.get(n.input[0])
        while p is not None and p.op_type in SHAPERS:
            p = producer.get(p.input[0])
        if p is None or p.op_type not in POOLS:
            continue
        out = {"backbone_pool": n.input[0]}
        relu = next((m for m in nodes if m.op_type == "Relu" and m.input[0] == n.output[0]), None)
        if relu is not None:
            out["hidden"] = relu.output[0]
        return out
    raise ValueError("the engine graph has no global pool followed by a dense layer (no penultimate features)")


def with_outputs(model, names):
    """A copy of ``model`` with the tensors ``names`` (float32, (batch, D)) as extra graph outputs."""
    import onnx
    from onnx import TensorProto, helper

    m = onnx.ModelProto()
    m.CopyFrom(model)
    have = {o.name for o in m.graph.output}
    for name in names:
        if name not in have:
            m.graph.output.append(helper.make_tensor_value_info(name, TensorProto.FLOAT, ["batch", "features"]))
    return m


def extract(
    engine_path, stamps: np.ndarray, names=None, threads: int = 2, batch: int = 32, index=None
) -> dict[str, np.ndarray]:
    """{output name: (N, ...) float32} of the engine graph with the front at one view, on uint8
    stamps (``stamps[index]``, read a batch at a time: a memory-mapped cache stays on disk): the
    logit and the penultimate tensors (``names``; default all of :func:`feature_tensors`)."""
    import onnxruntime as ort

    from ..engines.engine_file import load_model, metadata, require_spec
    from ..engines.front import STAMPS, with_front

    model = load_model(engine_path)
    spec = require_spec(metadata(model), engine_path)
    tensors = feature_tensors(model) if names is None else dict(names)
    m = with_front(with_outputs(model, tensors.values()), spec, 1)
    so = ort.SessionOptions()
    so.intra_op_num_threads, so.inter_op_num_threads = threads, 1
    s = ort.InferenceSession(m.SerializeToString(), so, providers=["CPUExecutionProvider"])
    want = [m.graph.output[0].name] + list(tensors.values())
    parts: list[list[np.ndarray]] = [[] for _ in want]
    index = np.arange(len(stamps)) if index is None else np.asarray(index)
    for i in range(0, len(index), batch):
        outs = s.run(want, {STAMPS: np.ascontiguousarray(stamps[index[i : i + batch]], np.uint8)})
        for p, o in zip(parts, outs):
            p.append(np.asarray(o, np.float32).reshape(len(o), -1))
    keys = ["logit"] + list(tensors)
    return {k: np.concatenate(p) for k, p in zip(keys, parts)}


# ------------------------------------------------------------------ fitting
def fit_pca(features: np.ndarray, k: int):
    """(mean (D,), components (k, D) orthonormal, variances (k,), explained variance ratio (k,))."""
    x = np.asarray(features, np.float64)
    mean = x.mean(0)
    _, s, vt = np.linalg.svd(x - mean, full_matrices=False)
    var = s**2 / max(1, len(x) - 1)
    k = min(int(k), vt.shape[0])
    return mean, vt[:k], var[:k], var[:k] / var.sum()


def fit_block(train_features: np.ndarray, k: int, residual_weight: bool = True):
    """The representation block fitted on the training-split galaxies' features, each term of the
    score scaled to 1 on average there: ``w_m = 1/k`` (a chi-square with k degrees of freedom) and
    ``w_r = 1 / mean residual^2`` (0 without the residual term).  Returns (block, explained ratio)."""
    from ..engines.representation import Representation

    mean, comp, var, ratio = fit_pca(train_features, k)
    k = len(var)
    c = np.asarray(train_features, np.float64) - mean
    r2 = ((c - (c @ comp.T) @ comp) ** 2).sum(1).mean()
    weights = np.array([1.0 / k, (1.0 / r2) if residual_weight and r2 > 0 else 0.0])
    rep = Representation(
        mean.astype(np.float32),
        comp.astype(np.float32),
        (1.0 / np.sqrt(np.maximum(var, 1e-12))).astype(np.float32),
        weights.astype(np.float32),
    )
    return rep, ratio


def pass_threshold(scores: np.ndarray, labels: np.ndarray, pass_fraction: float) -> float:
    """The smallest threshold at which at least ``pass_fraction`` of each class's galaxies pass
    (score <= threshold): the larger of the two classes' quantiles (validation only)."""
    return float(max(np.quantile(scores[labels == c], pass_fraction, method="higher") for c in np.unique(labels)))


# ------------------------------------------------------------------ the engine file
SCORE_NAME = "pca_mahalanobis_residual"


def embed(engine_path, rep, tensor: str, card_updates: dict, out_path) -> Path:
    """Write ``engine_path`` with the block (replacing any) and the card updates to ``out_path``."""
    import onnx

    from ..engines.engine_file import load_model, save_model, set_metadata
    from ..engines.representation import add_block

    m = load_model(engine_path)
    add_block(m, rep, tensor)
    onnx.checker.check_model(m)
    return save_model(set_metadata(m, card_updates=card_updates), out_path)


def _representation_entry(rep, ratio, features: str, tensor: str, fitted_on: str, data_hash: str) -> dict:
    """The card's ``representation`` block (its JSON)."""
    return {
        "features": features,
        "tensor": tensor,
        "dim": int(rep.mean.shape[0]),
        "k": rep.k,
        "explained_variance_ratio": [round(float(r), 6) for r in ratio],
        "explained_variance": round(float(ratio.sum()), 4),
        "score": SCORE_NAME,
        "score_weights": [float(w) for w in rep.score_weights],
        "fitted_on": fitted_on,
        "data_hash": data_hash,
    }


def _image_entry(k: int, s_val: np.ndarray, y_val: np.ndarray, pass_fraction: float) -> dict:
    """The card's ``domain.image`` block (its JSON): the threshold that ``pass_fraction`` of each
    class's validation galaxies pass."""
    threshold = pass_threshold(s_val, y_val, pass_fraction)
    return {
        "score": SCORE_NAME,
        "threshold": round(threshold, 4),
        "pass_fraction": pass_fraction,
        "description": (
            "sqrt(Mahalanobis^2/k + residual^2/mean training residual^2) of the pooled penultimate features "
            f"(PCA k={k} of the training galaxies); threshold: at least {pass_fraction:.1%} of each class's "
            f"validation galaxies ({len(y_val)}) pass"
        ),
        "val_pass": {str(c): round(float(np.mean(s_val[y_val == c] <= threshold)), 4) for c in (0, 1)},
    }


def _write_checked(engine, out, rep, tensor: str, card_updates: dict, probe: np.ndarray) -> None:
    """Embed the block into ``out`` (which may be ``engine``): written beside, p_merger compared, then moved."""
    out = Path(out)
    tmp = out.with_name(f".{out.name}.fit-representation.onnx")
    try:
        embed(engine, rep, tensor, card_updates, tmp)
        check_logits_unchanged(engine, tmp, probe)
        os.replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)


def fit_representation(
    engine,
    catalog,
    out,
    *,
    k: int = 64,
    features: str = "backbone_pool",
    pass_fraction: float = 0.995,
    seed: int = 0,
    cache=None,
    threads: int = 2,
) -> dict:
    """Fit, calibrate and embed (see the module docstring); returns what went into the card."""
    from ..engines.domain import ImageDomain
    from ..engines.engine_file import load_model, read_engine_card
    from .data import build_labelled_set

    tensors = feature_tensors(load_model(engine, load_external_data=False))
    if features not in tensors:
        raise ValueError(f"{engine}: features {features!r} not found; this graph has {', '.join(tensors)}")
    ls = build_labelled_set(catalog, seed=seed, cache=cache)
    tr, va = ls.indices("train"), ls.indices("val")
    x = {
        s: extract(engine, ls.stamps, {features: tensors[features]}, threads, index=i)
        for s, i in (("train", tr), ("val", va))
    }
    rep, ratio = fit_block(x["train"][features], k)
    _, s_val = rep.apply(x["val"][features])
    y_val = ls.table["label"].to_numpy()[va]
    fitted_on = f"{len(tr)} training-split galaxies of {Path(catalog).name} (split seed {seed}), 1 view"
    representation = _representation_entry(rep, ratio, features, tensors[features], fitted_on, ls.data_hash)
    image = _image_entry(rep.k, s_val, y_val, pass_fraction)
    domain = replace(read_engine_card(engine).engine_domain, image=ImageDomain.from_dict(image)).to_dict()
    updates = {"representation": representation, "domain": domain}
    _write_checked(engine, out, rep, tensors[features], updates, ls.stamps[va[:64]])
    return {"representation": representation, "image": image}


def check_logits_unchanged(before, after, stamps: np.ndarray, tol: float = 1e-6) -> float:
    """max |dp| of p_merger between two engine files on ``stamps`` (ValueError above ``tol``)."""
    from ..engines.onnxruntime import OnnxRuntimeEngine

    a, b = OnnxRuntimeEngine(before, threads=2), OnnxRuntimeEngine(after, threads=2)
    dp = float(np.max(np.abs(a.predict(stamps) - b.score(stamps).p_merger))) if len(stamps) else 0.0
    if dp > tol:
        raise ValueError(f"{after}: p_merger moved by {dp:.2e} (> {tol}) when the block was added")
    return dp


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m mergerscan.training.representation",
        description="fit an engine's representation block and image-domain threshold (training split / validation)",
    )
    ap.add_argument("engine", help="engine file (.onnx)")
    ap.add_argument("--catalog", required=True, help="the labelled catalog the engine was trained on")
    add_output_option(ap, "engine file to write (may be ENGINE itself) (required)")
    field = lambda name: {"default": default_of(fit_representation, name)}  # the function's own default
    ap.add_argument("--k", type=positive_int, help="principal components kept (embedding size)", **field("k"))
    ap.add_argument("--features", choices=("backbone_pool", "hidden"), **field("features"))
    ap.add_argument(
        "--pass-fraction",
        type=positive_float,
        help="validation galaxies of each class that pass",
        **field("pass_fraction"),
    )
    ap.add_argument("--seed", type=count, help="split seed (the training run's)", **field("seed"))
    ap.add_argument("--cache", help="decoded-stamp cache folder (as mergerscan train --cache)", **field("cache"))
    ap.add_argument("--threads", type=count, **field("threads"))
    a = ap.parse_args(argv)
    if not a.out:
        ap.error("-o/--output is required")
    for what, path in (("ENGINE", a.engine), ("--catalog", a.catalog)):
        if not Path(path).is_file():
            ap.exit(EXIT_BAD_INPUT, f"{ap.prog}: error: {what} {path}: no such file\n")
    check_output(ap, a, a.out, {"--catalog file": a.catalog})  # the engine itself may be rewritten
    try:
        res = from_namespace(fit_representation, a)  # each flag is the keyword of its own name
    except (ValueError, FileNotFoundError) as exc:
        ap.exit(EXIT_BAD_INPUT, f"{ap.prog}: error: {exc}\n")
    except OSError as exc:  # a write that failed after the checks
        ap.exit(EXIT_FAILED, f"{ap.prog}: error: {os_error_text(exc)}\n")
    print(json.dumps(res["image"]))
    return EXIT_OK


if __name__ == "__main__":
    raise SystemExit(main())
