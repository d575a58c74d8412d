"""``mergerscan doctor --gpu`` (formerly benchmarks/gpu_check.py): without a CUDA device it says
"no GPU here" in one line; ``--cpu`` dry-runs every section on the CPU and reports (CI runs this)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from conftest import cli_process

REPO = Path(__file__).resolve().parents[2]


def test_gpu_check_dry_run_on_cpu(gz_dir, tmp_path):
    sys.path.insert(0, str(REPO / "tools"))
    from pack_gpu_check_data import pack

    names = pack(tmp_path / "data", n=4, source=gz_dir)
    assert len(names) == 4 and (tmp_path / "data" / "manifest.json").is_file()
    out = tmp_path / "g.json"
    r = cli_process(
        "doctor", "--gpu", "--cpu", "--images", tmp_path / "data", "-o", out, program="mergerscan", timeout=240
    )
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == str(out)
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

    from mergerscan.exit_codes import EXIT_BAD_INPUT

    if torch.cuda.is_available():
        pytest.skip("a CUDA device is present")
    r = cli_process("doctor", "--gpu", "-o", tmp_path / "x.json", program="mergerscan", timeout=120)
    assert r.returncode == EXIT_BAD_INPUT == 2 and "--cpu" in r.stderr and not (tmp_path / "x.json").exists()
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("mergerscan doctor --gpu: no GPU here: "), r.stderr
    assert not r.stdout


def test_gpu_check_dry_run_names_a_missing_stamp_folder(tmp_path):
    r = cli_process("doctor", "--gpu", "--cpu", "--images", tmp_path / "none", program="mergerscan", timeout=120)
    assert r.returncode == 2 and r.stderr.count("\n") == 1, r.stderr
    assert str(tmp_path / "none") in r.stderr and "tools/pack_gpu_check_data.py" in r.stderr
