"""A new image source and a new backend are one class each plus one registry entry, here
from this test file alone, and process-catalog runs with them end to end (a real subprocess with
real Dask worker processes, which import this module by the name the registries carry)."""

from __future__ import annotations

import json
import os
import subprocess
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq

from mergerscan.cutouts.base import SourceBase, SourceOptions, empty_stamps
from mergerscan.cutouts.registry import register_source
from mergerscan.engines.base import Engine, EngineInfo
from mergerscan.engines.engine_file import load_metadata
from mergerscan.engines.registry import register_backend

HERE = Path(__file__).resolve().parent
MISSING_EVERY = 7  # the toy source has no image for every 7th object


@register_source("toy-blobs")
class ToyBlobSource(SourceBase):
    """A grey disc whose brightness is the object's index; no image for every 7th object."""

    kind = "toy-blobs"
    statuses = frozenset({"no_image"})

    @dataclass(frozen=True)
    class Options(SourceOptions):
        radius: int = 40

    def fetch(self, rows: pd.DataFrame):
        n, s = len(rows), self.spec.stamp_pixels
        stamps, status = empty_stamps(n, self.spec), np.full(n, "no_image", dtype=object)
        yy, xx = np.mgrid[:s, :s]
        disc = (yy - s / 2) ** 2 + (xx - s / 2) ** 2 < self.options.radius**2
        for i, oid in enumerate(rows["id"].astype(str)):
            k = int(oid) % 1000
            if k % MISSING_EVERY == 0:
                self.examples.setdefault("no_image", f"id {oid}: the toy has none")
                continue
            stamps[i][disc] = min(255, 40 + 2 * k)
            status[i] = "ok"
        return stamps, status


@dataclass(frozen=True)
class ToyOptions:
    precision: str | None = None
    gain: float = 4.0


@register_backend(
    "toy-mean",
    options=ToyOptions,
    precisions=("fp32",),
    default_precision="fp32",
    help="mean brightness of the prepared stamp, times a gain",
)
class ToyEngine(Engine):
    backend = "toy-mean"

    def __init__(self, path, options: ToyOptions, threads: int = 1, views: int | None = None):
        super().__init__(EngineInfo.from_metadata(path, load_metadata(path)))
        self.gain = options.gain

    def _logits(self, x: np.ndarray) -> np.ndarray:
        return self.gain * x.reshape(len(x), -1).mean(axis=1)


def run_cli(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(HERE), os.environ.get("PYTHONPATH", "")]))
    from conftest import cli_process  # here: workers import this module without tests/ on their path

    return cli_process(*args, cwd=cwd, env=env, timeout=600)  # fails on a printed traceback


def test_process_catalog_with_a_toy_source_and_a_toy_backend(tmp_path):
    n = 60
    rng = np.random.default_rng(3)
    ids = 7_000_000 + np.arange(n)
    cat = pd.DataFrame({"objid": ids, "ra": 150 + rng.uniform(0, 0.5, n), "dec": 2 + rng.uniform(0, 0.5, n)})
    cat.to_csv(tmp_path / "cat.csv", index=False)
    out = tmp_path / "out"
    r = run_cli(
        [
            "cat.csv",
            "-o",
            str(out),
            "--source",
            f"{__name__}:ToyBlobSource",
            "toy://nowhere",
            "--source-option",
            "radius=30",
            "--backend",
            f"toy-mean@{__name__}",
            "--workers",
            "2",
            "--partition-rows",
            "20",
            "--no-progress",
            "--no-report",
        ],
        tmp_path,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    files = sorted((out / "parquet").rglob("*.parquet"))
    got = pd.concat([pq.read_table(f).to_pandas() for f in files]).set_index("objid").sort_index()
    assert list(got.index) == list(ids)  # every row once, with its exact id
    missing = (ids % 1000) % MISSING_EVERY == 0
    assert (got["status"].to_numpy() == np.where(missing, "no_image", "ok")).all()
    assert got["p_merger"].isna().to_numpy().tolist() == missing.tolist()
    # the toy engine's score rises with the disc's brightness, i.e. with the id
    p = got["p_merger"].to_numpy()[~missing]
    assert (np.diff(p) > 0).all(), p
    s = json.loads((out / "summary.json").read_text())
    assert s["source"]["kind"] == f"{__name__}:ToyBlobSource"
    assert s["source"]["options"] == {"radius": 30}
    assert "toy-mean" in json.dumps(s)


def test_a_misspelled_toy_option_is_one_line(tmp_path):
    pd.DataFrame({"objid": [1, 2], "ra": [10.0, 10.1], "dec": [1.0, 1.1]}).to_csv(tmp_path / "c.csv", index=False)
    r = run_cli(
        [
            "c.csv",
            "-o",
            "out",
            "--source",
            f"{__name__}:ToyBlobSource",
            "toy://x",
            "--source-option",
            "radios=3",
            "--no-progress",
        ],
        tmp_path,
    )
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "radios" in lines[0] and "radius" in lines[0], r.stderr
    assert "Traceback" not in r.stderr
    assert not (tmp_path / "out").exists()
