"""benchmarks/gpu_check.py dry-runs on the CPU: every section runs and reports (CI runs this)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_gpu_check_dry_run_on_cpu(gz_dir, tmp_path):
    sys.path.insert(0, str(REPO / "benchmarks"))
    from pack_gpu_check_data import pack

    names = pack(tmp_path / "data", n=4, source=gz_dir)
    assert len(names) == 4 and (tmp_path / "data" / "manifest.json").is_file()
    out = tmp_path / "g.json"
    env = dict(os.environ, PYTHONPATH=str(REPO / "src"))
    r = subprocess.run(
        [
            sys.executable,
            str(REPO / "benchmarks" / "gpu_check.py"),
            "--cpu",
            "--data",
            str(tmp_path / "data"),
            "--out",
            str(out),
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=240,
    )
    assert r.returncode == 0, r.stderr
    doc = json.loads(out.read_text())
    s = doc["sections"]
    assert doc["meta"]["cpu_dry_run"] is True
    assert set(s) == {"peak", "ceiling", "h2d", "host", "parity", "front", "compile"}
    assert not [k for k, v in s.items() if "error" in v], {k: v["error"] for k, v in s.items() if "error" in v}
    assert s["ceiling"]["fp32-b4"]["images_per_s"] > 0 and s["ceiling"]["gflop_per_image"] > 0.3
    assert "no CUDA" in s["h2d"]["skipped"]
    assert s["host"]["engine-fp32"]["objects_per_s"] > 0 and s["host"]["shared-fp32"]["requests"] > 0
    assert s["parity"]["torch:fp32"]["within_tolerance"]
    assert s["front"]["parity"]["within_1e-5"]
    assert "default" in s["compile"]  # a result, an error or a timeout: never missing


def test_gpu_check_refuses_without_cuda_unless_dry_run(tmp_path):
    import torch

    if torch.cuda.is_available():
        import pytest

        pytest.skip("a CUDA device is present")
    env = dict(os.environ, PYTHONPATH=str(REPO / "src"))
    r = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "gpu_check.py"), "--out", str(tmp_path / "x.json")],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert r.returncode == 2 and "--cpu" in r.stderr and not (tmp_path / "x.json").exists()
