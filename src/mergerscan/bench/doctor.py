"""``mergerscan doctor``: a short check of this environment, without the GPU sections.

Versions of the packages that matter, every engine backend with why it cannot run here (None:
it can), and the engine (default: the packaged one) loaded and asked to score two stamps.
The environment is healthy when that engine loads and gives finite scores in [0, 1]."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .common import machine


@dataclass(frozen=True)
class EngineCheck:
    path: str
    name: str | None = None
    backend: str = "onnxruntime"
    scores: tuple[float, ...] = ()
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None


def check_engine(path: str | None, backend: str = "onnxruntime") -> EngineCheck:
    """Load the engine and score a blank and a noise stamp; any failure is the check's result."""
    from ..engines import load_engine, resolve_engine_path

    shown = str(path or "the packaged engine")
    try:
        shown = str(resolve_engine_path(path))
        eng = load_engine(path, backend=backend, threads=1)
        s = eng.spec.stamp_pixels
        rng = np.random.default_rng(0)
        stamps = np.stack([np.full((s, s, 3), 20, np.uint8), rng.integers(0, 255, (s, s, 3), dtype=np.uint8)])
        p = np.asarray(eng.predict(stamps), dtype=float)
    except Exception as exc:  # the check reports why, in one line
        return EngineCheck(shown, backend=backend, error=" ".join(f"{type(exc).__name__}: {exc}".split()))
    if not (np.isfinite(p).all() and ((p >= 0) & (p <= 1)).all()):
        return EngineCheck(shown, eng.info.name, backend, tuple(map(float, p)), "scores not finite in [0, 1]")
    return EngineCheck(shown, eng.info.name, backend, tuple(map(float, p)))


def run_doctor(engine: str | None = None, backend: str = "onnxruntime") -> tuple[dict, EngineCheck]:
    """The document ``mergerscan doctor`` writes, and the engine check that decides its status."""
    from ..engines.registry import available_backends

    chk = check_engine(engine, backend)
    doc: dict = {
        "doctor": "environment",
        "machine": machine(),
        "backends": available_backends(),
        "engine": {"path": chk.path, "name": chk.name, "backend": chk.backend, "scores": list(chk.scores)},
        "ok": chk.ok,
    }
    if chk.error:
        doc["engine"]["error"] = chk.error
    return doc, chk


def doctor_lines(doc: dict) -> list[str]:
    """The text ``mergerscan doctor`` prints."""
    m = doc["machine"]
    lines = [f"machine       {m['cpu']}, {m['cores']} cores, Python {m['python']}"]
    lines.append("packages      " + ", ".join(f"{k} {v or '-'}" for k, v in m["packages"].items()))
    for name, why in sorted(doc["backends"].items()):
        lines.append(f"backend       {name}: " + ("available" if why is None else f"not here ({why})"))
    e = doc["engine"]
    state = f"loads and scores ({', '.join(f'{p:.3f}' for p in e['scores'])})" if doc["ok"] else e.get("error")
    lines.append(f"engine        {e['name'] or '?'} ({e['path']}, {e['backend']}): {state}")
    return lines
