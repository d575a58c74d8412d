"""--samp / ``mergerscan samp OUT`` against a real astropy SAMP hub on localhost (no TOPCAT needed:
a real SAMP client in the test subscribes to table.load.fits, as TOPCAT does)."""

from __future__ import annotations

import threading
from pathlib import Path

import fitsio
import numpy as np
import pytest

from mergerscan.cli import main as mergerscan_main
from mergerscan.samp import MTYPE, SampError, send_table

samp = pytest.importorskip("astropy.samp")


@pytest.fixture
def no_user_hub(tmp_path, monkeypatch):
    """Never see or write the user's ~/.samp: HOME is the test's, SAMP_HUB unset."""
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.delenv("SAMP_HUB", raising=False)
    return home


@pytest.fixture
def hub(tmp_path, no_user_hub, monkeypatch):
    lock = tmp_path / "samp-hub.lock"
    server = samp.SAMPHubServer(web_profile=False, lockfile=str(lock), addr="127.0.0.1", mode="single")
    server.start()
    monkeypatch.setenv("SAMP_HUB", f"std-lockurl:{lock.as_uri()}")
    yield server
    server.stop()


class Receiver:
    """A SAMP client that loads tables the way TOPCAT answers table.load.fits."""

    def __init__(self):
        self.got: list = []
        self.event = threading.Event()
        self.client = samp.SAMPIntegratedClient(name="topcat-like", addr="127.0.0.1")
        self.client.connect()
        self.client.bind_receive_call(MTYPE, self.on_call)

    def on_call(self, private_key, sender_id, msg_id, mtype, params, extra):
        path = Path(params["url"].removeprefix("file://"))
        rows = len(fitsio.read(str(path)))  # really load it, as TOPCAT would
        self.got.append((params, rows))
        self.client.reply(msg_id, {"samp.status": "samp.ok", "samp.result": {"rows": str(rows)}})
        self.event.set()

    def close(self):
        self.client.disconnect()


def _out(tmp_path) -> Path:
    out = tmp_path / "run"
    out.mkdir()
    fitsio.write(str(out / "mergers.fits"), np.zeros(7, dtype=[("objid", "i8"), ("p_merger", "f4")]))
    return out


def test_mergerscan_samp_sends_the_table_to_a_subscribed_client(hub, tmp_path, capsys):
    out = _out(tmp_path)
    rx = Receiver()
    try:
        assert mergerscan_main(["samp", str(out)]) == 0
        assert rx.event.wait(10)
    finally:
        rx.close()
    ((params, rows),) = rx.got
    assert params["url"] == (out / "mergers.fits").resolve().as_uri() and rows == 7
    assert params["name"] == "run mergers"
    assert "sent to topcat-like" in capsys.readouterr().out


def test_no_hub_is_a_clear_message(no_user_hub, tmp_path, capsys):
    out = _out(tmp_path)
    with pytest.raises(SystemExit) as e:
        mergerscan_main(["samp", str(out)])
    assert e.value.code == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("mergerscan samp: no SAMP hub is running: start TOPCAT") and "\n" not in err
    assert f"mergerscan samp {out}" in err


def test_hub_without_a_table_client_says_so(hub, tmp_path):
    with pytest.raises(SampError, match="no application there loads FITS tables"):
        send_table(_out(tmp_path))


def test_not_a_run_directory(tmp_path):
    with pytest.raises(SampError, match="no such file"):
        send_table(tmp_path)


def test_process_catalog_samp_sends_the_finished_table(hub, dask_client, tmp_path, capsys):
    from conftest import make_stamps, two_patch_catalog, write_fits_catalog
    from mergerscan.pipeline.cli import main as process_catalog

    df = two_patch_catalog(12, seed=4, width=0.2, id_step=1)
    write_fits_catalog(tmp_path / "cat.fits", df)
    make_stamps(tmp_path / "stamps", df["objID"].tolist())
    rx = Receiver()
    try:
        rc = process_catalog(
            [
                str(tmp_path / "cat.fits"),
                "--images",
                str(tmp_path / "stamps"),
                "-o",
                str(tmp_path / "out"),
                "--no-progress",
                "--no-report",
                "--views",
                "1",
                "--samp",
                "--scheduler",
                dask_client.scheduler.address,
            ]
        )
        assert rc == 0 and rx.event.wait(10)
    finally:
        rx.close()
    ((params, rows),) = rx.got
    assert params["url"] == (tmp_path / "out" / "mergers.fits").resolve().as_uri() and rows == len(df)
    assert "sent to           topcat-like (SAMP)" in capsys.readouterr().out
