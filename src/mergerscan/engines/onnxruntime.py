"""ONNX Runtime backend (CPU by default; the CUDA execution provider when installed and asked for)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .base import Engine, EngineInfo


class OnnxRuntimeEngine(Engine):
    backend = "onnxruntime"

    def __init__(self, path: str | Path, threads: int = 1, providers: list[str] | None = None):
        import onnxruntime as ort

        so = ort.SessionOptions()
        so.intra_op_num_threads = max(1, int(threads))   # match the worker's cores, no oversubscription
        so.inter_op_num_threads = 1
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        self.session = ort.InferenceSession(str(path), so, providers=providers or ["CPUExecutionProvider"])
        meta = self.session.get_modelmeta().custom_metadata_map
        super().__init__(EngineInfo.from_metadata(path, meta))
        self.input_name = self.session.get_inputs()[0].name
        self.providers = self.session.get_providers()
        if "CUDAExecutionProvider" in self.providers:
            self.backend = "onnxruntime-cuda"

    def _logits(self, x: np.ndarray) -> np.ndarray:
        return self.session.run(None, {self.input_name: np.ascontiguousarray(x, np.float32)})[0]
