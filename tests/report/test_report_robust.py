"""The run report never fails a run, and ``mergerscan report`` never prints a traceback (issue 34,
class 9): binomial error bars are never negative, a figure that cannot be drawn is left out with a
note on the page, a broken run directory is one line; and the real run that crashed it (every
source detected in the six shared SDSS fields, through ``process-catalog --frames``) renders."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from conftest import cli_process, write_fits_catalog
from mergerscan import __version__
from mergerscan.catalogs.write import write_partition
from mergerscan.cli import main
from mergerscan.pipeline.plan import healpix29
from mergerscan.report.figures import error_bars, wilson

THR = 0.5


def test_wilson_interval_holds_the_estimate_and_stays_in_0_1():
    n = np.repeat(np.arange(1, 401), np.arange(2, 402))  # every k in 0..n for n up to 400
    k = np.concatenate([np.arange(m + 1) for m in range(1, 401)])
    f, lo, hi = wilson(k, n)
    assert (lo >= 0).all() and (hi <= 1).all() and (lo <= f).all() and (f <= hi).all()
    assert (error_bars(f, lo, hi) >= 0).all()
    assert np.isnan(wilson(np.array([0]), np.array([0]))[0]).all()  # no rows: no estimate


def _old_lower_bar(k, n, z=1.0):
    """The interval as it was computed before (issue 34): its lower bar at k = 0."""
    f = k / n
    c = (f + z * z / (2 * n)) / (1 + z * z / n)
    h = z * np.sqrt(f * (1 - f) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return f - (c - h)


def _run_without_mergers(out: Path, groups: dict[str, int]) -> Path:
    """A finished-looking run: every row scored below the threshold, a kept text column ``field``
    with ``groups[name]`` rows per value and a kept number ``area``."""
    field = np.concatenate([[g] * m for g, m in groups.items()]).astype(object)
    n = len(field)
    ra, dec = np.linspace(150, 151, n), np.linspace(2, 3, n)
    p = np.random.default_rng(0).uniform(0.01, 0.3, n).astype(np.float32)
    df = pd.DataFrame(
        {
            "objid": np.arange(n, dtype=np.int64) + 10**18,
            "ra": ra,
            "dec": dec,
            "p_merger": p,
            "is_merger": p >= THR,
            "status": np.full(n, "ok", object),
            "input_row": np.arange(n, dtype=np.int64),
            "_healpix_29": healpix29(ra, dec, np.ones(n, bool)),
            "area": np.linspace(40, 3000, n),
            "field": field,
        }
    )
    write_partition(df, out / "parquet" / "Norder=0" / "Dir=0" / "Npix=4.parquet", {})
    summary = {
        "rows": n,
        "scored": n,
        "status": {"ok": n},
        "mergers": 0,
        "threshold": THR,
        "engine": "test",
        "engine_sha256": "0" * 64,
        "engine_path": str(out / "gone.onnx"),
        "mergerscan_version": __version__,
        "command": "process-catalog cat.fits --keep-columns area,field",
        "source": {"kind": "stamps", "location": str(out / "nope"), "options": {}},
        "id_column": "objid",
        "keep": ["area", "field"],
    }
    (out / "summary.json").write_text(json.dumps(summary))
    return out


def test_a_column_bin_with_no_merger_draws(tmp_path, capsys):
    """The detected-sources run's case, small: bins of 91 and 93 scored rows and no merger, where
    rounding made the lower error bar about -9e-19 and matplotlib refused the figure."""
    groups = {"001035-6-0017": 93, "001043-5-0025": 91, "001992-1-0087": 93}
    assert min(_old_lower_bar(0, m) for m in groups.values()) < 0  # the case does trigger the old bug
    out = _run_without_mergers(tmp_path / "out", groups)
    assert main(["report", str(out)]) == 0
    html = (out / "report" / "index.html").read_text()
    assert (out / "report" / "columns.png").is_file() and "could not be drawn" not in html
    assert capsys.readouterr().out.strip() == str(out / "report" / "index.html")


def test_a_figure_that_cannot_be_drawn_is_left_out_with_a_note(tmp_path, capsys, monkeypatch):
    from mergerscan.report import run as report_run

    def refuses(*args):
        raise ValueError("'yerr' must not contain negative values")

    out = _run_without_mergers(tmp_path / "out", {"a": 30, "b": 40})
    for name in ("fig_columns", "fig_scores", "fig_sky"):  # one in a section of its own, the first, a pair
        monkeypatch.setattr(report_run, name, refuses)
    assert main(["report", str(out)]) == 0
    html = (out / "report" / "index.html").read_text()
    for what in ("per-column merger fraction", "score histogram", "sky"):
        assert f"the {what} figure could not be drawn and is left out (ValueError: &#x27;yerr&#x27;" in html, what
    assert (out / "report" / "status.png").is_file() and not (out / "report" / "columns.png").exists()
    assert "Traceback" not in capsys.readouterr().err


@pytest.mark.parametrize(
    "damage, status, words",
    [
        (lambda out: (out / "summary.json").write_text("{not json"), 2, ["summary.json", "not readable as JSON"]),
        (lambda out: (out / "summary.json").write_text('{"rows": 3}'), 1, ["could not be written", "KeyError"]),
        (lambda out: (out / "summary.json").unlink(), 2, ["neither summary.json"]),
    ],
)
def test_mergerscan_report_on_a_broken_run_is_one_line(damage, status, words, tmp_path):
    out = _run_without_mergers(tmp_path / "out", {"a": 5})
    damage(out)
    r = cli_process("report", out, program="mergerscan", timeout=300)  # fails on a traceback
    assert r.returncode == status, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("mergerscan report: error:"), r.stderr
    assert all(w in lines[0] for w in words), lines[0]


@pytest.mark.slow
@pytest.mark.shared
def test_report_of_every_source_detected_in_the_shared_fields(frames_dir, dask_client, tmp_path, capsys):
    """The run that crashed the report: 1,409 detected sources, kept area, flux and field, the
    packaged engine (its scores made the bins of no merger), through process-catalog --frames."""
    from mergerscan.cutouts.detect import detect_sources
    from mergerscan.pipeline.cli import main as process_catalog

    parts = []
    for f in sorted(frames_dir.glob("frame-r-*.fits.bz2")):
        d = detect_sources(f)
        name = f.name.removeprefix("frame-r-").removesuffix(".fits.bz2")
        parts.append(pd.DataFrame({"ra": d[:, 0], "dec": d[:, 1], "area": d[:, 2], "flux": d[:, 3], "field": name}))
    df = pd.concat(parts, ignore_index=True)
    df.insert(0, "objid", np.arange(len(df), dtype=np.int64) + 10**18)
    assert len(df) > 1000
    cat = tmp_path / "detected.fits"
    write_fits_catalog(cat, df)
    out = tmp_path / "out"
    argv = [cat, "-o", out, "--frames", frames_dir, "--keep-columns", "area,flux,field", "--no-progress"]
    rc = process_catalog([*map(str, argv), "--scheduler", dask_client.scheduler.address])
    printed = capsys.readouterr()
    assert rc == 0 and "Traceback" not in printed.err + printed.out, printed.err
    assert "report failed" not in printed.out, printed.out  # the run's own report
    assert json.loads((out / "summary.json").read_text())["rows"] == len(df)
    html = (out / "report" / "index.html").read_text()
    assert (out / "report" / "columns.png").is_file() and "could not be drawn" not in html
    assert main(["report", str(out)]) == 0  # and again, as `mergerscan report OUT`
    assert "Traceback" not in capsys.readouterr().err


def test_the_report_reads_the_stamp_path_column_the_summary_records():
    """summary.json's path_column, when recorded (null: the run had none); a run of 0.1.0, whose
    summary has no such key, falls back to a column named 'path' in any case, if one only."""
    from mergerscan.catalogs.columns import find_column
    from mergerscan.report.gallery import path_column
    from mergerscan.run_summary import OPTIONAL, RunSummary

    cols = ["objid", "ra", "Path", "in_file"]
    assert path_column(RunSummary.from_dict({"path_column": "in_file"}), cols) == "in_file"
    assert path_column(RunSummary.from_dict({"path_column": "gone"}), cols) is None
    assert path_column(RunSummary.from_dict({"path_column": None}), cols) is None  # recorded: none
    assert path_column(RunSummary.from_dict({}), cols) == "Path"
    assert path_column(RunSummary.from_dict({}), ["PATH", "path"]) == find_column(["PATH", "path"], "path") == "path"
    assert path_column(RunSummary.from_dict({}), ["PATH", "Path"]) is None  # two case-only matches
    # what a summary lacked is known after reading it, and never written back
    s = RunSummary.from_json('{"rows": 3, "threshold": 0.4}')
    assert {"threshold", "rows"}.isdisjoint(s.missing) and {"path_column", "engine"} <= s.missing
    assert RunSummary().missing == frozenset() and "missing" not in RunSummary().to_json()
    assert RunSummary.from_json(RunSummary(rows=3).to_json()).missing == frozenset(OPTIONAL)
