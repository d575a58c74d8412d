"""Wall time of the test suite as `make test` runs it, with the slowest tests and the time per file.

    nice .venv/bin/python tools/bench_tests.py --label before
Writes benchmarks/results/test-time-<label>.json.  Run it on an idle machine (the load average
before and after is recorded beside the CPU): the figure is the whole `pytest -q -ra` wall time,
collection and the session fixtures included.  Extra arguments after `--` go to pytest.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from collections import defaultdict
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent


def cpu_model() -> str:
    with open("/proc/cpuinfo") as f:
        return next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), "?")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--label", required=True)
    ap.add_argument("pytest_args", nargs="*")
    a = ap.parse_args()
    junit = Path(tempfile.mkdtemp()) / "junit.xml"
    load_before = os.getloadavg()
    t = time.perf_counter()
    r = subprocess.run([sys.executable, "-m", "pytest", "-q", "-ra", f"--junitxml={junit}", *a.pytest_args], cwd=REPO)
    wall = time.perf_counter() - t
    cases, per_file = [], defaultdict(float)
    counts = {"passed": 0, "failed": 0, "skipped": 0, "error": 0}
    for tc in ET.parse(junit).getroot().iter("testcase"):
        d = float(tc.get("time", 0))
        name = f"{tc.get('classname')}::{tc.get('name')}"
        cases.append((d, name))
        per_file[tc.get("classname", "").rsplit(".", 1)[0] if "." in tc.get("classname", "") else ""] += d
        kinds = {c.tag for c in tc}
        key = (
            "failed"
            if "failure" in kinds
            else "error"
            if "error" in kinds
            else "skipped"
            if "skipped" in kinds
            else "passed"
        )
        counts[key] += 1
    res = {
        "label": a.label,
        "git": subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True
        ).stdout.strip(),
        "machine": {
            "cpu": cpu_model(),
            "nproc": os.cpu_count(),
            "load_before": load_before,
            "load_after": os.getloadavg(),
        },
        "pytest_rc": r.returncode,
        "wall_s": round(wall, 1),
        "counts": counts,
        "slowest": [{"s": round(d, 1), "test": n} for d, n in sorted(cases, reverse=True)[:40]],
        "per_file_s": {k: round(v, 1) for k, v in sorted(per_file.items(), key=lambda kv: -kv[1])},
    }
    out = HERE / "results" / f"test-time-{a.label}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(res, indent=1))
    print(json.dumps({k: res[k] for k in ("wall_s", "counts", "machine")}))


if __name__ == "__main__":
    main()
