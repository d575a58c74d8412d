"""Shared fixtures: paths to ../shared data (skip with a reason where absent), one Dask cluster."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("MERGERSCAN_SHARED", REPO.parent / "shared")) / "data"
GZ = SHARED / "sdss-gz-mergers"
FRAMES = SHARED / "sdss-frames"


def _need(path: Path):
    if not path.exists():
        pytest.skip(f"needs real SDSS data at {path} (../shared/data is absent in this checkout)")
    return path


@pytest.fixture(scope="session")
def gz_dir() -> Path:
    return _need(GZ)


@pytest.fixture(scope="session")
def frames_dir() -> Path:
    return _need(FRAMES)


@pytest.fixture(scope="session")
def real_stamps(gz_dir):
    """The first 24 shared JPEG stamps (sorted by name), decoded to uint8 (N, 256, 256, 3)."""
    from mergerscan.training.data import decode_stamps
    files = sorted(gz_dir.glob("images/*.jpg"))[:24]
    if len(files) < 24:
        pytest.skip(f"needs 24 JPEGs in {gz_dir}/images")
    return decode_stamps([str(f) for f in files])


@pytest.fixture(scope="session")
def dask_client():
    """One real distributed LocalCluster for the whole test session (2 workers x 1 thread)."""
    from distributed import Client, LocalCluster

    cluster = LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None,
                           memory_limit="4GiB")
    client = Client(cluster)
    yield client
    client.close()
    cluster.close()
