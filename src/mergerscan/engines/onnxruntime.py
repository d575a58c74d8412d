"""ONNX Runtime backend (CPU by default; the CUDA execution provider when installed and asked for)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .base import BackendUnavailable, Engine, EngineInfo

CUDA_EP = "CUDAExecutionProvider"


def cuda_unavailable_reason() -> str | None:
    import onnxruntime as ort

    if CUDA_EP not in ort.get_available_providers():
        return (f"onnxruntime {ort.__version__} has no {CUDA_EP} (install onnxruntime-gpu matching the "
                "site's CUDA instead of onnxruntime)")
    return None


class OnnxRuntimeEngine(Engine):
    backend = "onnxruntime"

    def __init__(self, path: str | Path, threads: int = 1, providers: list[str] | None = None):
        import onnxruntime as ort

        providers = providers or ["CPUExecutionProvider"]
        want_cuda = CUDA_EP in providers
        if want_cuda and (why := cuda_unavailable_reason()):
            raise BackendUnavailable(f"onnxruntime-cuda: {why}")
        so = ort.SessionOptions()
        so.intra_op_num_threads = max(1, int(threads))   # match the worker's cores, no oversubscription
        so.inter_op_num_threads = 1
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        self.session = ort.InferenceSession(str(path), so, providers=providers)
        self.providers = self.session.get_providers()
        if want_cuda and CUDA_EP not in self.providers:
            # ORT logs and falls back to CPU when the CUDA libraries fail to load: refuse instead.
            raise BackendUnavailable(f"onnxruntime-cuda: {CUDA_EP} failed to initialise (CUDA/cuDNN "
                                     f"libraries or driver missing?); session providers {self.providers}")
        meta = self.session.get_modelmeta().custom_metadata_map
        super().__init__(EngineInfo.from_metadata(path, meta))
        self.input_name = self.session.get_inputs()[0].name
        if want_cuda:
            self.backend = "onnxruntime-cuda"

    def _logits(self, x: np.ndarray) -> np.ndarray:
        return self.session.run(None, {self.input_name: np.ascontiguousarray(x, np.float32)})[0]
