"""What a failed engine call means for the caller: out of memory (retry smaller), a sticky device
error (the process's CUDA context is gone: the worker must be replaced), or anything else.

CUDA out-of-memory is not a ``MemoryError``: torch raises ``torch.OutOfMemoryError`` (a
RuntimeError), ONNX Runtime's CUDA EP a ``RuntimeException`` whose message names the failed BFC
arena allocation, TensorRT/cuBLAS a RuntimeError with the CUDA error text.  A sticky error
(illegal address, device-side assert, launch failure, ECC) leaves the context unusable: every later
call in that process fails too, so scoring on is pointless.
"""

from __future__ import annotations

import sys

OOM_PATTERNS = (
    "cuda out of memory",
    "out of memory",
    "failed to allocate memory",
    "cublas_status_alloc_failed",
    "cudaerrormemoryallocation",
    "cudnn_status_alloc_failed",
    "outofmemory",
)
STICKY_PATTERNS = (
    "illegal memory access",
    "cudaerrorillegaladdress",
    "device-side assert",
    "unspecified launch failure",
    "cudaerrorlaunchfailure",
    "misaligned address",
    "illegal instruction",
    "uncorrectable ecc",
    "cudaerrorecc",
    "cuda error: an illegal",
    "cudaerrorhardwarestackerror",
    "device has fallen off",
)


class StickyDeviceError(RuntimeError):
    """The accelerator's context in this process is unusable; the worker process must be replaced."""


def is_out_of_memory(exc: BaseException) -> bool:
    if isinstance(exc, MemoryError):
        return True
    torch = sys.modules.get("torch")  # never import torch here: CPU workers need not have it
    oom_t = getattr(torch, "OutOfMemoryError", None) if torch else None
    if oom_t is not None and isinstance(exc, oom_t):
        return True
    return isinstance(exc, Exception) and not is_sticky(exc) and any(p in str(exc).lower() for p in OOM_PATTERNS)


def is_sticky(exc: BaseException) -> bool:
    return isinstance(exc, StickyDeviceError) or (
        isinstance(exc, Exception) and any(p in str(exc).lower() for p in STICKY_PATTERNS)
    )


def release_device_memory() -> None:
    """After a CUDA OOM: hand torch's cached blocks back so the smaller retry can fit."""
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.empty_cache()
