"""ONNX Runtime backend (CPU by default; the CUDA execution provider when installed and asked for).

The session runs the engine with its front (:mod:`.front`): uint8 stamps in, the resize,
normalisation, views and view mean inside the graph.  Precision: ``fp32`` (IEEE; on CUDA with
``use_tf32=0``, since ORT's CUDA EP defaults to TF32 matmuls/convolutions), ``tf32`` (CUDA only),
``fp16`` (the graph converted with fp32 I/O and an fp32 front) and ``int8`` (only, and always, for
a quantised engine file).  Anything else is refused, never run at another precision.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .base import BackendUnavailable, Engine, EngineInfo
from .card import EngineCard
from .engine_file import copy_metadata, load_model, metadata
from .registry import get_backend, register_backend
from .representation import has_block

CUDA_EP = "CUDAExecutionProvider"
CPU_PRECISIONS = ("fp32", "fp16", "int8")
CUDA_PRECISIONS = ("fp32", "tf32", "fp16", "int8")


def cuda_unavailable_reason() -> str | None:
    import onnxruntime as ort

    if CUDA_EP not in ort.get_available_providers():
        return (
            f"onnxruntime {ort.__version__} has no {CUDA_EP} (install onnxruntime-gpu matching the "
            "site's CUDA instead of onnxruntime)"
        )
    return None


def cuda_provider_options(precision: str) -> dict:
    """CUDA EP options: fp32 means IEEE fp32 (``use_tf32`` is on by default in ORT >= 1.18)."""
    return {"use_tf32": "1" if precision == "tf32" else "0"}


def check_precision(backend: str, precision: str | None, card: EngineCard, path) -> str:
    """The precision an ORT session will really run at, or a one-line ValueError."""
    have = card.file_precision
    precision = precision or have
    runs = get_backend(backend).precisions
    if precision not in runs:
        raise ValueError(
            f"{backend}:{precision}: ONNX Runtime runs {', '.join(runs)} "
            f"({'tf32 needs onnxruntime-cuda' if precision == 'tf32' else 'use the torch backends for bf16'})"
        )
    if (precision == "int8") != (have == "int8"):
        raise ValueError(
            f"{backend}:{precision}: {path} is {'a quantised int8' if have == 'int8' else 'a float'} engine "
            f"file; int8 needs a quantised (Q/DQ) engine file such as model-int8.onnx, and only that"
        )
    if have == "fp16" and precision != "fp16":
        raise ValueError(f"{backend}:{precision}: {path} is an fp16 engine file")
    return precision


def fp16_model(model):
    """fp16 graph with fp32 inputs/outputs; the front (uint8 -> float, resize) stays fp32."""
    from onnxruntime.transformers.float16 import convert_float_to_float16

    from .front import FRONT_PREFIX
    from .representation import PREFIX

    # the front and the representation block (a residual of two close vectors) stay fp32
    block = [n.name for n in model.graph.node if n.name.startswith((FRONT_PREFIX, PREFIX))]
    m16 = convert_float_to_float16(model, keep_io_types=True, node_block_list=block)
    return copy_metadata(model, m16, card_updates={"precision": "fp16"})


class OnnxRuntimeEngine(Engine):
    backend = "onnxruntime"

    def __init__(
        self,
        path: str | Path,
        threads: int = 1,
        providers: list | None = None,
        precision: str | None = None,
        stamp_batch: int | None = None,
    ):
        import onnxruntime as ort

        providers = providers or ["CPUExecutionProvider"]
        want_cuda = any((p[0] if isinstance(p, tuple) else p) == CUDA_EP for p in providers)
        name = "onnxruntime-cuda" if want_cuda else "onnxruntime"
        if want_cuda and (why := cuda_unavailable_reason()):
            raise BackendUnavailable(f"onnxruntime-cuda: {why}")
        self.model = load_model(path)
        super().__init__(EngineInfo.from_metadata(path, metadata(self.model)))
        self.has_representation = has_block(self.model)
        self.precision = check_precision(name, precision, self.info.card, path)
        if want_cuda:
            providers = [(CUDA_EP, cuda_provider_options(self.precision))] + [
                p for p in providers if (p[0] if isinstance(p, tuple) else p) != CUDA_EP
            ]
        self.backend, self._providers, self._want_cuda = name, providers, want_cuda
        self._so = ort.SessionOptions()
        self._so.intra_op_num_threads = max(1, int(threads))  # match the worker's cores, no oversubscription
        self._so.inter_op_num_threads = 1
        self._so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        # CPU: ORT peaks at 8-32 images per call (docs/performance.md); a GPU wants big batches
        self.images_per_call = 1024 if want_cuda else 32
        self.stamp_batch = stamp_batch
        self._sessions: dict = {}
        self._sessions_lock = threading.Lock()
        self.session = self._session(None)  # prepared-batch graph: fails here, not mid-run
        self.providers = self.session.get_providers()
        self.input_name = self.session.get_inputs()[0].name

    def session_model(self, views: int | None):
        """The ONNX model a session runs: the plain graph (None) or the graph with the front for
        ``views`` views, converted to fp16 when that precision was asked for an fp32 file."""
        from .front import with_front

        m = self.model if views is None else with_front(self.model, self.spec, views)
        if self.precision == "fp16" and self.info.card.file_precision != "fp16":
            m = fp16_model(m)
        return m

    def _session(self, views: int | None):
        """The session for the plain graph (None) or the graph with the front for ``views`` views."""
        with self._sessions_lock:
            if views not in self._sessions:
                import onnxruntime as ort

                m = self.session_model(views)
                s = ort.InferenceSession(m.SerializeToString(), self._so, providers=self._providers)
                if self._want_cuda and CUDA_EP not in s.get_providers():
                    # ORT logs and falls back to CPU when the CUDA libraries fail to load: refuse instead.
                    raise BackendUnavailable(
                        f"onnxruntime-cuda: {CUDA_EP} failed to initialise (CUDA/cuDNN "
                        f"libraries or driver missing?); session providers {s.get_providers()}"
                    )
                self._sessions[views] = s
            return self._sessions[views]

    def _logits(self, x: np.ndarray) -> np.ndarray:
        return self.session.run(None, {self.input_name: np.ascontiguousarray(x, np.float32)})[0]

    def _stamp_logits(self, stamps: np.ndarray) -> np.ndarray:
        from .front import STAMPS

        s = self._session(self.info.views)
        return s.run([s.get_outputs()[0].name], {STAMPS: np.ascontiguousarray(stamps, np.uint8)})[0]

    def _stamp_outputs(self, stamps: np.ndarray):
        """(logit, embedding, domain score) in one session call (outputs in that order)."""
        from .front import STAMPS

        if not self.has_representation:
            return self._stamp_logits(stamps), None, None
        z, emb, d = self._session(self.info.views).run(None, {STAMPS: np.ascontiguousarray(stamps, np.uint8)})
        return z, emb, d


@dataclass(frozen=True)
class OnnxRuntimeOptions:
    precision: str | None = None  # None: the engine file's own (fp32, or fp16 / int8 files)
    stamp_batch: int | None = None  # stamps per session call (None: 32 images' worth on CPU)


def _cpu(path, options: OnnxRuntimeOptions, threads: int = 1, views: int | None = None) -> OnnxRuntimeEngine:
    return OnnxRuntimeEngine(path, threads=threads, precision=options.precision, stamp_batch=options.stamp_batch)


def _cuda(path, options: OnnxRuntimeOptions, threads: int = 1, views: int | None = None) -> OnnxRuntimeEngine:
    return OnnxRuntimeEngine(
        path,
        threads=threads,
        providers=[CUDA_EP, "CPUExecutionProvider"],
        precision=options.precision,
        stamp_batch=options.stamp_batch,
    )


register_backend(
    "onnxruntime", options=OnnxRuntimeOptions, precisions=CPU_PRECISIONS, help="ONNX Runtime on the CPU (the default)"
)(_cpu)
register_backend(
    "onnxruntime-cuda",
    options=OnnxRuntimeOptions,
    precisions=CUDA_PRECISIONS,
    needs_gpu=True,
    unavailable_reason=cuda_unavailable_reason,
    help="ONNX Runtime's CUDA execution provider",
)(_cuda)
