"""Shared fixtures and helpers: paths to ../shared data (skip with a reason where absent), one
Dask cluster, a cheap engine file, and the synthetic catalogs and stamps the pipeline tests make.

Test modules import the helpers with ``from conftest import ...`` (this directory is on sys.path).
"""

from __future__ import annotations

import functools
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from decimal import Decimal
from pathlib import Path

import fitsio
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

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

    cluster = LocalCluster(
        n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None, memory_limit="4GiB"
    )
    client = Client(cluster)
    yield client
    # Workers leave first: closing the scheduler under live workers lets a worker's heartbeat meet a
    # closed socket, which distributed logs as a traceback on a busy machine (seen once in CI).
    cluster.scale(0)
    deadline = time.monotonic() + 60
    while client.scheduler_info(n_workers=-1)["workers"] and time.monotonic() < deadline:
        time.sleep(0.1)
    client.close()
    cluster.close()


@pytest.fixture(scope="session")
def cheap_engine(tmp_path_factory) -> Path:
    """A tiny but real engine file (two convolutions, 32 px input, 1 view, random weights) exported
    through the package's own path (``training.export.export_onnx``: ONNX + spec + card in the
    metadata, the default engine's format).  ~1 ms a stamp on one CPU thread where the packaged
    engine takes ~75 ms at 4 views (224 px; one view, its default, ~4x less), so tests whose subject is not the model's quality
    (row accounting, statuses, resume, bad input, layouts) pass ``--engine`` / ``engine=`` this
    file.  Its scores depend on the image, so score-equality checks between runs stay meaningful.
    Built once per session (~10 s, mostly the exporter), under the session's temporary directory.
    Without torch (no train extra): the packaged engine, slower but the same behaviour."""
    try:
        import torch
        from torch import nn
    except ImportError:
        from mergerscan.engines import default_engine_path

        return default_engine_path()
    from mergerscan.cutouts.preprocess import PreprocessSpec, prepare_batch
    from mergerscan.training.export import export_onnx

    class TinyMergerNet(nn.Module):
        def __init__(self):
            super().__init__()
            self.net = nn.Sequential(
                nn.Conv2d(3, 8, 3, stride=2, padding=1),
                nn.ReLU(),
                nn.Conv2d(8, 16, 3, stride=2, padding=1),
                nn.ReLU(),
                nn.AdaptiveAvgPool2d(1),
                nn.Flatten(),
                nn.Linear(16, 1),
            )

        def forward(self, x):
            return self.net(x)[:, 0]

    torch.manual_seed(0)
    net = TinyMergerNet().eval()
    spec = PreprocessSpec(input_size=32)
    # random weights see mostly the sky level: standardise the logit on synthetic galaxies, so
    # that their scores spread over 0..1 and straddle the threshold like a real model's
    calib = tmp_path_factory.mktemp("cheap-engine-calibration")
    make_stamps(calib, range(32), seed=1)
    stamps = np.stack([np.asarray(Image.open(calib / f"{i}.jpg")) for i in range(32)])
    with torch.no_grad():
        z = net(torch.from_numpy(prepare_batch(stamps, spec)))
        head = net.net[-1]
        head.weight.div_(z.std())
        head.bias.sub_(z.mean()).div_(z.std())
    card = {
        "name": CHEAP_ENGINE_NAME,
        "arch": "tiny_cnn",
        "init": "random",
        "input_size": 32,
        "threshold": 0.5,
        "temperature": 1.0,
        "views": 1,
        "by_views": {"1": {"temperature": 1.0, "threshold": 0.5}},
        "labels": "none: random weights, for tests of everything but the model's quality",
    }
    return export_onnx(net, spec, card, tmp_path_factory.mktemp("cheap-engine") / "tiny-cnn-32px.onnx")


CHEAP_ENGINE_NAME = "test-tiny-cnn-32px"


# ---------------------------------------------------------------- synthetic catalogs and stamps
SCIENCE = ["objid", "ra", "dec", "p_merger", "is_merger", "status", "input_row"]
BIG = 588018055654998067  # a real SDSS objid: must survive exactly (not via float64)


def make_stamps(directory: Path, ids, seed=0, size=256):
    """Galaxy-like stamps: an elliptical blob (sometimes two) on a dark noisy sky."""
    rng = np.random.default_rng(seed)
    directory.mkdir(parents=True, exist_ok=True)
    yy, xx = np.mgrid[:size, :size] - size / 2
    for i in ids:
        img = rng.normal(8, 3, (size, size, 3))
        for _ in range(1 + (rng.random() < 0.3)):
            cx, cy = rng.normal(0, 20, 2)
            r = np.hypot(xx - cx, (yy - cy) * rng.uniform(1, 2))
            img += np.exp(-r / rng.uniform(4, 12))[..., None] * rng.uniform(120, 220, 3)
        Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).save(directory / f"{i}.jpg", quality=92)


def write_fits_catalog(path: Path, df: pd.DataFrame):
    fitsio.write(str(path), df.to_records(index=False), clobber=True)


def two_patch_catalog(n: int, seed: int, width: float, id_step: int) -> pd.DataFrame:
    """n objects (objID, RAdeg, DEdeg, mag_r) on two width x width deg patches of sky, near
    (150, 2) and (210, -1); objids of real SDSS size."""
    rng = np.random.default_rng(seed)
    ra = np.r_[rng.uniform(150, 150 + width, n // 2), rng.uniform(210, 210 + width, n // 2)]
    dec = np.r_[rng.uniform(2, 2 + width, n // 2), rng.uniform(-1, -1 + width, n // 2)]
    objid = BIG + np.arange(n, dtype=np.int64) * id_step
    return pd.DataFrame(
        {"objID": objid, "RAdeg": ra, "DEdeg": dec, "mag_r": rng.uniform(14, 17.7, n).astype(np.float32)}
    )


def read_out(out: Path) -> pd.DataFrame:
    """Every output row of a run: the HATS dataset and the bad-coordinate rows beside it."""
    from mergerscan.catalogs.hats import output_files

    files = [str(f) for f in output_files(out / "parquet")]
    return pq.read_table(files).to_pandas().sort_values("input_row").reset_index(drop=True)


# ---------------------------------------------------------------- no traceback reaches a user
TRACEBACK = "Traceback (most recent call last)"


def assert_no_traceback(*texts, traceback_ok: str | None = None) -> None:
    """What a command printed holds no Python traceback: a user meets one-line errors.  A test that
    means to see one passes ``traceback_ok="why"`` (the reason is the documentation)."""
    if traceback_ok:
        return
    for text in texts:
        text = text.decode("utf-8", "replace") if isinstance(text, bytes) else str(text or "")
        assert TRACEBACK not in text, f"a traceback was printed to the user:\n{text[-3000:]}"


def cli_words(exc) -> str:
    """An ArgumentError (CatalogError, SelectError, ...) as process-catalog prints it: each
    argument as its flag (the message itself words it in Python terms)."""
    from mergerscan.pipeline.flags import build_parser, flag_names

    return exc.render(flag_names(build_parser()))


def cli_process(*argv, timeout=300, env=None, cwd=None, traceback_ok: str | None = None, program="process-catalog"):
    """``process-catalog ARGV`` (or ``mergerscan ARGV`` with ``program="mergerscan"``) as a user runs
    it, in a fresh Python process: the CompletedProcess (text).  Fails the test if it printed a
    traceback (:func:`assert_no_traceback`)."""
    module = {"process-catalog": "mergerscan.pipeline.cli", "mergerscan": "mergerscan.cli"}[program]
    r = subprocess.run(
        [sys.executable, "-m", module, *map(str, argv)],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
        cwd=cwd,
    )
    assert_no_traceback(r.stdout, r.stderr, traceback_ok=traceback_ok)
    return r


def pytest_collection_modifyitems(config, items):
    """With ``pytest -n`` (make test): the tests of the one local SLURM cluster run in one test
    process, one after another, as they were written to (they share its nodes and its queue)."""
    for item in items:
        if item.get_closest_marker("slurm") or item.path.name == "test_slurm.py":
            item.add_marker(pytest.mark.xdist_group("slurm"))


# Dask's own log records (a scheduler or worker of the test session's cluster, or of a client a
# test makes in its process) are captured with the test's output.  A run's local cluster silences
# them (pipeline/cluster.py: ``silence_logs``), and a scheduler of the user's logs to its own
# terminal, so they are never the command's output: set aside whole, with any traceback they carry
# (distributed's shutdown races: a worker's heartbeat meeting a closed comm).  Our own code's
# prints and log records are still checked.
RECORD = re.compile(
    r"^(?:\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d+ - (\S+) - |(?:DEBUG|INFO|WARNING|ERROR|CRITICAL) +([^\s:]+):)"
)


def without_dask_records(text: str) -> str:
    """``text`` less each record logged by ``distributed.*`` (its header line and what follows
    until the next record), in pytest's log format and in distributed's stderr format."""
    kept, inside = [], False
    for line in text.splitlines(keepends=True):
        if m := RECORD.match(line):
            inside = (m[1] or m[2]).startswith("distributed.")
        if not inside:
            kept.append(line)
    return "".join(kept)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """Every test fails if output that pytest captured for it (prints of an in-process CLI run,
    worker processes writing to the terminal, log records) holds a traceback, unless it is marked
    ``@pytest.mark.traceback_ok("why")``."""
    outcome = yield
    rep = outcome.get_result()
    if not rep.passed or item.get_closest_marker("traceback_ok") is not None:
        return
    for name, text in rep.sections:
        text = without_dask_records(text)
        if name.endswith(f" {rep.when}") and TRACEBACK in text:
            rep.outcome = "failed"
            rep.longrepr = f"a traceback reached the user ({name}):\n{text[-3000:]}"
            return


# ---------------------------------------------------------------- process-catalog in this process
def run_cli(client, *argv, capsys=None, engine=None, traceback_ok: str | None = None):
    """process-catalog in this process, on the test session's Dask scheduler, 1 view (``engine``:
    an engine file, else the packaged one): (exit status, stdout, stderr).  Anything but a return
    (an exception = a traceback for the user), or a traceback printed, fails the test."""
    from mergerscan.pipeline.cli import main as cli_main

    if capsys is not None:
        capsys.readouterr()
    rc = cli_main(
        [
            *map(str, argv),
            "--scheduler",
            client.scheduler.address,
            "--views",
            "1",
            "--no-progress",
            "--no-report",
            *(["--engine", str(engine)] if engine else []),
        ]
    )
    out, err = capsys.readouterr() if capsys is not None else ("", "")
    assert_no_traceback(out, err, traceback_ok=traceback_ok)
    return rc, out, err


@pytest.fixture(scope="session")
def cheap_cli(dask_client, cheap_engine):
    """:func:`run_cli` on the session's cluster with the cheap engine, for tests of messages,
    statuses and output layouts: ``cheap_cli(*argv, capsys=None)`` -> (exit status, stdout, stderr)."""
    return functools.partial(run_cli, dask_client, engine=cheap_engine)


def parquet_table(out: Path) -> pa.Table:
    """The output dataset's own columns (no hive partition columns), all partitions."""
    return pa.concat_tables([pq.read_table(f) for f in sorted((out / "parquet").rglob("*.parquet"))])


def assert_fits_equals_parquet(out: Path) -> tuple[pd.DataFrame, np.ndarray, dict]:
    """Every Parquet column has a FITS column (named by schema.fits_names) holding the same values,
    row for row; nulls as documented (int: TNULL, float: NaN, bool: False, text: '', a vector
    column such as ``embedding``: a vector of NaN)."""
    from mergerscan.catalogs.schema import fits_names

    t = parquet_table(out)
    order = np.argsort(t.column("input_row").to_numpy())
    t = t.take(pa.array(order))
    with tempfile.TemporaryDirectory() as d:  # fitsio reads "(", "[", "$"... in a name as syntax
        safe = Path(d) / "mergers.fits"
        safe.symlink_to((out / "mergers.fits").resolve())
        fits = fitsio.read(str(safe), ext="MERGERS")
        hdr = fitsio.read_header(str(safe), ext="MERGERS")
    fits = fits[np.argsort(fits["input_row"], kind="stable")]
    names = fits_names(t.column_names)
    ttype = [hdr[f"TTYPE{i}"] for i in range(1, hdr["TFIELDS"] + 1)]
    assert ttype == [names[n] for n in t.column_names]
    assert len(fits) == t.num_rows
    for n in t.column_names:
        col, f = t.column(n), fits[names[n]]
        typ = col.type
        k = ttype.index(names[n]) + 1
        vals = col.to_pylist()
        if pa.types.is_integer(typ):
            tnull = hdr.get(f"TNULL{k}")
            want = [(tnull + 2**63 if typ == pa.uint64() else tnull) if v is None else v for v in vals]
            assert [int(x) for x in f] == want, n
        elif pa.types.is_floating(typ):
            a = np.array([np.nan if v is None else v for v in vals], np.float64)
            np.testing.assert_array_equal(f.astype(np.float64), a.astype(f.dtype).astype(np.float64), err_msg=n)
        elif pa.types.is_boolean(typ):
            assert [bool(x) for x in f] == [bool(v) for v in vals], n
        elif pa.types.is_fixed_size_list(typ):  # a vector column (embedding): FITS 'NE', null rows NaN
            a = np.array([[np.nan] * typ.list_size if v is None else v for v in vals], np.float64).reshape(
                -1, typ.list_size
            )
            got = np.asarray(f, np.float64).reshape(len(f), -1)
            assert hdr.get(f"TFORM{k}") == f"{typ.list_size}E", n
            np.testing.assert_array_equal(got, a.astype(np.float32).astype(np.float64), err_msg=n)
        elif pa.types.is_decimal(typ) and typ.precision <= 15:
            # FITS float64; printed at the column's scale every value reads back exactly; null: NaN
            got = [None if np.isnan(x) else Decimal(f"{float(x):.{typ.scale}f}") for x in f]
            assert got == vals, n
        elif pa.types.is_decimal(typ):  # wider than a float64 holds: exact text
            assert [x.decode() if isinstance(x, bytes) else str(x) for x in f] == [
                "" if v is None else str(v) for v in vals
            ], n
        else:
            # FITS text is ASCII: non-ASCII characters as backslash escapes (docs/output.md)
            want = [
                ""
                if v is None
                else v.decode("ascii", "backslashreplace")
                if isinstance(v, bytes)
                else v.encode("ascii", "backslashreplace").decode()
                for v in vals
            ]
            got = [x.decode("utf-8", "replace") if isinstance(x, bytes) else str(x) for x in f]
            assert [g.rstrip() for g in got] == [w.rstrip() for w in want], n
    return t.to_pandas(), fits, hdr


# ---------------------------------------------------------------- helpers several test files share
def run_arguments(catalog, output, **fields):
    """The ProcessArguments of an in-process test run: no progress bar, no report, command "test"
    (any field given overrides these); paths may be Path objects."""
    from mergerscan.pipeline.arguments import ProcessArguments

    given = {k: str(v) if isinstance(v, Path) else v for k, v in fields.items()}
    return ProcessArguments(
        **{
            "progress": False,
            "report": False,
            "command": "test",
            **given,
            "catalog": str(catalog),
            "output": str(output),
        }
    )


def engine_with_validation_curve(cheap_engine: Path, d: Path, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """d / "plain.onnx" (the cheap engine) and d / "engine.onnx" (the same with a validation curve in
    its card, from 1,300 made-up labelled scores: mergers ~Beta(5, 2), non-mergers ~Beta(2, 5));
    returns those labels and scores."""
    from mergerscan.engines.engine_file import write_metadata
    from mergerscan.engines.operating import Curve, curve_card_updates

    rng = np.random.default_rng(seed)
    y = np.r_[np.ones(300, bool), np.zeros(1000, bool)]
    p = np.r_[rng.beta(5, 2, 300), rng.beta(2, 5, 1000)].astype(np.float32)
    shutil.copy(cheap_engine, d / "plain.onnx")
    write_metadata(
        d / "plain.onnx", d / "engine.onnx", card_updates=curve_card_updates({1: Curve.from_scores(y, p)}, "test")
    )
    return y, p


def lite0_engine(path: Path, name: str, seed: int, by_views: dict | None = None, imagenet: bool = True) -> Path:
    """A small real engine file: EfficientNet-Lite0 at 64 px (ImageNet weights where present and
    asked for, else random), its head scaled to logits of ~1 instead of ~0.1; its card names it and
    carries ``by_views`` (the operating points per number of views; 1 view by default) if given."""
    import torch

    from mergerscan.cutouts.preprocess import PreprocessSpec
    from mergerscan.models import MissingWeightsError, create_model
    from mergerscan.training.export import export_onnx

    torch.manual_seed(seed)
    try:
        net = create_model("efficientnet_lite0", init="imagenet") if imagenet else create_model("efficientnet_lite0")
    except MissingWeightsError:
        net = create_model("efficientnet_lite0")
    with torch.no_grad():
        net.top[4].weight.mul_(10.0)
    card = {"arch": "efficientnet_lite0", "name": name, "temperature": 1.0}
    card.update({"views": 1, "by_views": by_views} if by_views else {})
    return export_onnx(net.eval(), PreprocessSpec(input_size=64), card, path)


def blob_catalog(root: Path, *, n_per_class: int, seed: int, prefix: str, label: str, ext: str, sideways: bool) -> Path:
    """Tiny labelled 32 px images: one blob (label 0) or two (1) on a noisy sky, the second below the
    first (and shifted sideways too with ``sideways``); root / "catalog.csv" with columns id, ``label``,
    ra, dec, image; objects 1 degree apart (each its own group)."""
    px = 32
    rng = np.random.default_rng(seed)
    (root / "images").mkdir(parents=True, exist_ok=True)
    yy, xx = np.mgrid[:px, :px]
    rows = []
    for i in range(2 * n_per_class):
        merger = i % 2
        img = rng.normal(20, 4, (px, px, 3))
        second = [(px / 2 + rng.uniform(6, 10), px / 2 + (rng.uniform(-6, 6) if sideways else 0))] if merger else []
        for cy, cx in [(px / 2, px / 2), *second]:
            img += 200 * np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * 2.5**2))[..., None]
        file = f"images/{prefix}{i:03d}.{ext}"
        Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).save(root / file, quality=95)  # PNG: lossless
        rows.append(f"{prefix}{i:03d},{merger},{10 + i},{0.5 * (i % 7)},{file}")
    (root / "catalog.csv").write_text(f"id,{label},ra,dec,image\n" + "\n".join(rows) + "\n")
    return root / "catalog.csv"


def need_stilts(why: str) -> str:
    """The stilts command, or skip the test (``why``: what the test checks without it)."""
    if shutil.which("stilts") is None:
        pytest.skip(f"STILTS is not installed ({why})")
    return "stilts"


def stilts_tpipe(fits: Path, *args: str) -> str:
    """``stilts tpipe in=FITS ARGS...`` (TOPCAT's reader on a file we wrote): its stdout; fails the test
    if STILTS refused it."""
    r = subprocess.run(["stilts", "tpipe", f"in={fits}", *args], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    return r.stdout
