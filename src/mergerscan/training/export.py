"""Export a trained model to an engine file: ONNX (dynamo exporter, dynamic batch) + metadata.

The preprocessing spec and the model card are written into the ONNX ``metadata_props``; the
engines read them from there, so an engine file is self-describing (engines are data).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from ..cutouts.preprocess import PreprocessSpec
from ..engines.base import CARD_KEY, SPEC_KEY


def export_onnx(model: torch.nn.Module, spec: PreprocessSpec, card: dict, path: str | Path,
                opset: int = 18) -> Path:
    import onnx

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    model = model.eval().to("cpu", memory_format=torch.contiguous_format)
    x = torch.zeros(2, 3, spec.input_size, spec.input_size)
    batch = torch.export.Dim("batch", min=1, max=4096)
    tmp = path.with_suffix(".tmp.onnx")
    torch.onnx.export(model, (x,), str(tmp), dynamo=True, input_names=["input"], output_names=["logit"],
                      dynamic_shapes={"x": {0: batch}}, opset_version=opset, external_data=False,
                      verbose=False)
    m = onnx.load(str(tmp))
    for k, v in ((SPEC_KEY, spec.to_json()), (CARD_KEY, json.dumps(card, sort_keys=True))):
        entry = m.metadata_props.add()
        entry.key, entry.value = k, v
    onnx.save(m, str(path))
    tmp.unlink()
    return path


def parity(model: torch.nn.Module, onnx_path: str | Path, x: np.ndarray) -> float:
    """Max |logit_torch - logit_onnx| on a prepared batch (real images in the tests)."""
    from ..engines.onnxruntime import OnnxRuntimeEngine

    with torch.no_grad():
        ref = model.eval()(torch.from_numpy(x)).numpy()
    got = OnnxRuntimeEngine(onnx_path, threads=2).logits(x)
    return float(np.max(np.abs(ref - got)))


def quantize_int8(onnx_path: str | Path, calib: np.ndarray, out_path: str | Path) -> Path:
    """Static INT8 quantisation calibrated on prepared real images: QDQ, per-channel weights,
    **symmetric signed int8** for weights and activations (every zero point 0), the only form
    TensorRT parses (it refuses asymmetric/QUInt8 activations); ONNX Runtime CPU runs it too (S8S8
    QDQ, its recommended default).  Metadata (spec + card) is carried over, with ``precision:
    int8`` and ``quantization: symmetric-s8s8-qdq`` in the card."""
    import onnx
    from onnxruntime.quantization import (CalibrationDataReader, QuantFormat, QuantType,
                                          quantize_static)
    from onnxruntime.quantization.shape_inference import quant_pre_process

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.it = iter([{"input": calib[i:i + 16]} for i in range(0, len(calib), 16)])

        def get_next(self):
            return next(self.it, None)

    out_path = Path(out_path)
    pre = out_path.with_suffix(".pre.onnx")
    quant_pre_process(str(onnx_path), str(pre))
    quantize_static(str(pre), str(out_path), Reader(), quant_format=QuantFormat.QDQ,
                    per_channel=True, activation_type=QuantType.QInt8, weight_type=QuantType.QInt8,
                    # biases stay float: TensorRT dequantises only int8 (not int32 bias) tensors
                    extra_options={"ActivationSymmetric": True, "WeightSymmetric": True, "QuantizeBias": False})
    pre.unlink()
    src = {p.key: p.value for p in onnx.load(str(onnx_path), load_external_data=False).metadata_props}
    m = onnx.load(str(out_path))
    del m.metadata_props[:]
    card = json.loads(src[CARD_KEY]); card["precision"] = "int8"; card["quantization"] = "symmetric-s8s8-qdq"
    card["name"] = card.get("name", "model") + "-int8"
    for k, v in ((SPEC_KEY, src[SPEC_KEY]), (CARD_KEY, json.dumps(card, sort_keys=True))):
        e = m.metadata_props.add(); e.key, e.value = k, v
    onnx.save(m, str(out_path))
    return out_path


def zero_points(path: str | Path) -> dict[str, np.ndarray]:
    """{initializer name: values} of every Q/DQ zero point in an ONNX file (TensorRT: all 0)."""
    import onnx
    from onnx import numpy_helper

    m = onnx.load(str(path))
    inits = {i.name: i for i in m.graph.initializer}
    out = {}
    for n in m.graph.node:
        if n.op_type in ("QuantizeLinear", "DequantizeLinear") and len(n.input) > 2 and n.input[2] in inits:
            out[n.input[2]] = numpy_helper.to_array(inits[n.input[2]])
    return out


def update_metadata(path: str | Path, out_path: str | Path, spec: PreprocessSpec | None = None,
                    card_updates: dict | None = None) -> Path:
    """Rewrite an engine's spec and/or card (e.g. after calibrating the frame colour stretch,
    which describes how the training stamps were rendered, not the weights)."""
    import onnx

    m = onnx.load(str(path))
    meta = {p.key: p.value for p in m.metadata_props}
    card = json.loads(meta.get(CARD_KEY, "{}"))
    card.update(card_updates or {})
    meta[CARD_KEY] = json.dumps(card, sort_keys=True)
    if spec is not None:
        meta[SPEC_KEY] = spec.to_json()
    del m.metadata_props[:]
    for k, v in sorted(meta.items()):
        e = m.metadata_props.add(); e.key, e.value = k, v
    onnx.save(m, str(out_path))
    return Path(out_path)
