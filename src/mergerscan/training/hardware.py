"""What the training CPU offers: bf16 matrix units (AVX512-BF16 / AMX) decide the precision."""

from __future__ import annotations

import platform
from pathlib import Path

BF16_FLAGS = ("avx512_bf16", "amx_bf16")
BF16_CHOICES = ("auto", "on", "off")


def cpu_flags(cpuinfo: str | Path = "/proc/cpuinfo") -> set[str]:
    """The CPU feature flags of the first processor in /proc/cpuinfo (empty where unreadable)."""
    try:
        text = Path(cpuinfo).read_text(errors="replace")
    except OSError:
        return set()
    for line in text.splitlines():
        if line.split(":")[0].strip() in ("flags", "Features"):
            return set(line.split(":", 1)[1].split())
    return set()


def cpu_model(cpuinfo: str | Path = "/proc/cpuinfo") -> str:
    try:
        for line in Path(cpuinfo).read_text(errors="replace").splitlines():
            if line.split(":")[0].strip() == "model name":
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def cpu_has_bf16(flags: set[str] | None = None) -> bool:
    """True where the CPU computes bf16 natively (AVX512-BF16 or AMX); elsewhere bf16 is emulated
    and slower than fp32."""
    flags = cpu_flags() if flags is None else flags
    return any(f in flags for f in BF16_FLAGS)


def use_bf16(choice: str, flags: set[str] | None = None) -> bool:
    """``--bf16 auto`` follows the CPU; ``on``/``off`` force it."""
    if choice not in BF16_CHOICES:
        raise ValueError(f"--bf16 must be one of {', '.join(BF16_CHOICES)}, not {choice!r}")
    return cpu_has_bf16(flags) if choice == "auto" else choice == "on"
