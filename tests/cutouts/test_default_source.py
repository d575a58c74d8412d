"""process-catalog with no image-source flag: the site default (env variable or config file) against
the loopback HTTP server of test_service.py, the built-in SkyServer default, and no network."""

from __future__ import annotations

import socket
import time

import numpy as np
import pandas as pd
import pytest
from test_service import _fake, _jpeg, server  # noqa: F401 - the loopback HTTP server fixture

from conftest import read_out, two_patch_catalog, write_fits_catalog
from mergerscan.cutouts import defaults
from mergerscan.cutouts.preprocess import PreprocessSpec
from mergerscan.cutouts.service import UNREACHABLE_ROWS, ServiceSource
from mergerscan.pipeline.arguments import ArgumentError, ProcessArguments
from mergerscan.pipeline.cli import arguments_from, build_parser
from mergerscan.pipeline.cli import main as process_catalog


@pytest.fixture
def site(tmp_path, monkeypatch):
    """An empty user config dir and no $MERGERSCAN_DEFAULT_SOURCE: only what the test sets counts."""
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))
    monkeypatch.delenv(defaults.ENV, raising=False)
    return tmp_path / "config" / "mergerscan" / "default-source"


@pytest.fixture
def catalog(tmp_path):
    df = two_patch_catalog(24, seed=2, width=0.2, id_step=1)
    write_fits_catalog(tmp_path / "cat.fits", df)
    return tmp_path / "cat.fits", df


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _cli(cat, out, client, *extra):
    return process_catalog(
        [
            str(cat),
            "-o",
            str(out),
            "--no-progress",
            "--no-report",
            "--views",
            "1",
            "--scheduler",
            client.scheduler.address,
            *extra,
        ]
    )


def test_no_flag_uses_the_configured_default_service(server, site, catalog, dask_client, tmp_path, capsys):  # noqa: F811
    cat, df = catalog
    for i, (ra, dec) in enumerate(zip(df["RAdeg"], df["DEdeg"])):
        server.add(ra, dec, "ok", _jpeg(_fake(i)))
    url = f"{server.url}/cutout"
    site.parent.mkdir(parents=True)
    site.write_text(f"# this site's cutout mirror\n--cutout-service {url} --service-rate 200\n")
    assert _cli(cat, tmp_path / "out", dask_client) == 0
    cap = capsys.readouterr()
    assert f"no image source given: using cutout service {url} (default from {site})" in cap.err
    got = read_out(tmp_path / "out")
    assert got["objid"].tolist() == df["objID"].tolist() and (got["status"] == "ok").all()
    assert len(server.queries) == len(df)  # one request per row, at the engine's scale
    assert {q["scale"] for q in server.queries} == {"0.396"} and {q["width"] for q in server.queries} == {"256"}
    assert "fetch failures" not in cap.out


def test_without_network_prints_the_url_and_the_leading_reason(
    site, catalog, dask_client, tmp_path, monkeypatch, capsys
):
    cat, df = catalog
    url = f"http://127.0.0.1:{_closed_port()}/getjpeg"  # nothing listens: as offline as it gets
    monkeypatch.setenv(defaults.ENV, f"--cutout-service {url} --service-retries 1")
    assert _cli(cat, tmp_path / "out", dask_client) == 3  # finished, no row scored: exit 3 (docs/output.md)
    cap = capsys.readouterr()
    assert url in cap.err.splitlines()[0]  # named before any work
    line = next(ln for ln in cap.out.splitlines() if "fetch failures" in ln)
    assert f"connection {len(df)}" in line and f"leading reason: connection; service {url}" in line
    assert (read_out(tmp_path / "out")["status"] == "fetch_failed").all()


def test_built_in_default_is_skyserver(site, catalog, tmp_path, capsys):
    """No source and no site default: SkyServer, filled in when the arguments are resolved (the
    caller's object keeps what it was given)."""
    cat, _ = catalog
    a = ProcessArguments(catalog=str(cat), output=str(tmp_path / "out")).resolved()
    assert a.cutout_service == defaults.SKYSERVER and a.source.kind == "service"
    assert a.service_options == defaults.SKYSERVER_OPTIONS
    line = defaults.startup_line(a.default_source)
    assert defaults.SKYSERVER in line and "4 requests at a time" in line and str(site) in line
    # command-line service options win over the default's
    b = ProcessArguments(
        catalog=str(cat), output=str(tmp_path / "o2"), service_options={"max_concurrency": 2}
    ).resolved()
    assert b.service_options == {**defaults.SKYSERVER_OPTIONS, "max_concurrency": 2}


def _from_command_line(cat, out) -> ProcessArguments:
    """ProcessArguments as process-catalog builds them: the site default is read there."""
    argv = [str(cat), "-o", str(out)]
    return arguments_from(build_parser().parse_args(argv), argv)


def test_site_default_frames_env_beats_file_and_bad_config_is_one_line(site, catalog, tmp_path, monkeypatch):
    cat, _ = catalog
    frames = tmp_path / "frames"
    frames.mkdir()
    site.parent.mkdir(parents=True)
    site.write_text(f"--images {tmp_path}")
    assert _from_command_line(cat, tmp_path / "o1").source.kind == "stamps"
    monkeypatch.setenv(defaults.ENV, f"--frames {frames}")
    a = _from_command_line(cat, tmp_path / "o2")
    assert a.source.kind == "frames" and a.source.location == str(frames.resolve())
    monkeypatch.delenv(defaults.ENV)
    site.write_text("--frames /a --images /b")
    with pytest.raises(ArgumentError, match=f"default image source in {site}: give exactly one"):
        _from_command_line(cat, tmp_path / "o3")
    site.write_text("--frame /a")
    with pytest.raises(ArgumentError) as e:
        _from_command_line(cat, tmp_path / "o4")
    assert str(site) in str(e.value) and "\n" not in str(e.value)


def test_misspelled_source_option_in_the_site_default_is_one_line_exit_2(site, catalog, tmp_path, capsys, monkeypatch):
    """The one command-line path of free-form source options: the site default's flags.  A
    misspelled one stops the run before anything starts: exit 2, one line, a suggestion."""
    cat, _ = catalog
    monkeypatch.setenv(defaults.ENV, "--cutout-service http://127.0.0.1:9/x --service-timout 3")
    assert process_catalog([str(cat), "-o", str(tmp_path / "out"), "--no-progress"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "Traceback" not in err[0], err
    assert err[0].startswith("process-catalog: error: default image source in $MERGERSCAN_DEFAULT_SOURCE")
    assert "'--service-timout 3'" in err[0] and "did you mean --service-timeout?" in err[0]
    assert not (tmp_path / "out").exists()


def test_large_catalog_hint():
    assert defaults.large_catalog_hint(defaults.LARGE_FOR_SERVICE, 8.0, 1) is None
    hint = defaults.large_catalog_hint(2_000_000, 8.0, 2)
    assert "2,000,000 rows" in hint and "--frames DIR" in hint and "16 requests/s" in hint


def test_unreachable_service_is_not_hammered():
    """Rows after UNREACHABLE_ROWS network failures (none ok) fail at once, with the same reason."""
    rows = pd.DataFrame({"id": [f"o{i}" for i in range(60)], "ra": np.linspace(150, 151, 60), "dec": 2.0})
    with ServiceSource(
        f"http://127.0.0.1:{_closed_port()}/x", PreprocessSpec(), retries=2, backoff=0.0, max_concurrency=4
    ) as src:
        _, status = src.fetch(rows)
    assert (status == "fetch_failed").all() and src.stats["failures"] == {"connection": 60}
    assert src.stats["requests"] <= (UNREACHABLE_ROWS + 4) * 3 < 60


def test_rate_limit_spaces_requests(server):  # noqa: F811 - the fixture imported above
    rows = pd.DataFrame({"id": ["a", "b", "c", "d", "e", "f"], "ra": 150.0 + np.arange(6) * 0.01, "dec": 2.0})
    for ra in rows["ra"]:
        server.add(ra, 2.0, "ok", _jpeg(_fake(1)))
    t0 = time.monotonic()
    with ServiceSource(f"{server.url}/cutout", PreprocessSpec(), max_rate=20.0, max_concurrency=6) as src:
        _, status = src.fetch(rows)
    assert (status == "ok").all()
    assert time.monotonic() - t0 >= 5 / 20.0 * 0.99  # 6 request starts at <= 20/s (a lower bound)


def test_start_lines_name_the_source_and_hint_for_large_catalogs(site, catalog, tmp_path, capsys):
    from mergerscan.pipeline.run import _source_notices

    cat, _ = catalog
    a = ProcessArguments(catalog=str(cat), output=str(tmp_path / "out")).resolved()  # as run() sees them
    _source_notices(a, 150_000)
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 2 and defaults.SKYSERVER in err[0]
    assert err[1].startswith("process-catalog: hint: 150,000 rows") and "--frames DIR" in err[1]
    _source_notices(a, defaults.LARGE_FOR_SERVICE)
    assert len(capsys.readouterr().err.splitlines()) == 1  # no hint at 100 k rows
