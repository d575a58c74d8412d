"""Export a trained model to an engine file: ONNX (dynamo exporter, dynamic batch) + metadata.

The preprocessing spec and the model card are written into the ONNX ``metadata_props`` by
:mod:`mergerscan.engines.engine_file` (the one module that reads and writes them), so an engine
file is self-describing (engines are data).  Every engine file is written atomically.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import torch

from ..cutouts.preprocess import PreprocessSpec
from ..engines.card import EngineCard
from ..engines.engine_file import card_of, copy_metadata, metadata, save_model, set_metadata


def export_onnx(model: torch.nn.Module, spec: PreprocessSpec, card: dict, path: str | Path, opset: int = 18) -> Path:
    """``model`` -> engine file at ``path``.  A model from :func:`mergerscan.models.create_model`
    carries its config, which goes into the card as ``model`` (the torch backend rebuilds from it)."""
    import onnx

    path = Path(path)
    model = model.eval().to("cpu", memory_format=torch.contiguous_format)
    config = getattr(model, "config", None)
    if isinstance(config, dict):
        card = {"model": dict(config)} | card
    x = torch.zeros(2, 3, spec.input_size, spec.input_size)
    batch = torch.export.Dim("batch", min=1, max=4096)
    with tempfile.TemporaryDirectory(prefix="mergerscan-export-") as tmp:
        raw = Path(tmp) / "model.onnx"
        torch.onnx.export(
            model,
            (x,),
            str(raw),
            dynamo=True,
            input_names=["input"],
            output_names=["logit"],
            dynamic_shapes={"x": {0: batch}},
            opset_version=opset,
            external_data=False,
            verbose=False,
        )
        m = onnx.load(str(raw))
    return save_model(set_metadata(m, spec, card), path)


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
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.it = iter([{"input": calib[i : i + 16]} for i in range(0, len(calib), 16)])

        def get_next(self):
            return next(self.it, None)

    src = onnx.load(str(onnx_path), load_external_data=False)
    with tempfile.TemporaryDirectory(prefix="mergerscan-int8-") as tmp:
        pre, q = Path(tmp) / "pre.onnx", Path(tmp) / "int8.onnx"
        quant_pre_process(str(onnx_path), str(pre))
        quantize_static(
            str(pre),
            str(q),
            Reader(),
            quant_format=QuantFormat.QDQ,
            per_channel=True,
            activation_type=QuantType.QInt8,
            weight_type=QuantType.QInt8,
            # biases stay float: TensorRT dequantises only int8 (not int32 bias) tensors
            extra_options={"ActivationSymmetric": True, "WeightSymmetric": True, "QuantizeBias": False},
        )
        m = onnx.load(str(q))
    name = EngineCard.from_dict(card_of(metadata(src))).name or "model"
    return save_model(
        copy_metadata(
            src,
            m,
            card_updates={
                "precision": "int8",
                "quantization": "symmetric-s8s8-qdq",
                "name": name + "-int8",
            },
        ),
        out_path,
    )


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
