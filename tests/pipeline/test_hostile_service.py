"""Hostile cutout services through the process-catalog CLI (issue 34, classes 5, 6, 7): secrets in
URLs, impossible URLs, a server that trickles its answer.  The server is real (raw sockets on
127.0.0.1 or ::1); the engine is conftest's cheap one (the model is not under test).

Cases (one line each):
1. credentials in a --cutout-service URL of every awkward kind (a quote, a space, %-encoding, an
   '@' in the password, secret query and fragment parameters, an IPv6 host, --source service):
   no secret in any file under OUT (bytes, Parquet metadata and values, FITS header), nor on
   stdout/stderr; the non-secret parts of the URL are kept
2. ftp://, s3://, file:// and other refused URLs with credentials: exit 2, one line, no secret
3. impossible URLs (port 99999 or 0, no host, an unclosed IPv6 bracket, a bad host, a space in
   the path), as --cutout-service, --source service and the site default: exit 2, one line,
   OUT not created, or left as it was
4. a server that trickles its status line and headers a byte a quarter second: the row ends as
   fetch_failed (timeout) within its total limit, the other rows are scored
5. redact_url / redact_command on the URL forms above (parsed, not matched)
"""

from __future__ import annotations

import contextlib
import json
import os
import shlex
import socket
import threading
import time
from pathlib import Path
from urllib.parse import parse_qs, quote, urlsplit

import fitsio
import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
from PIL import Image

from conftest import cli_process, write_fits_catalog
from mergerscan.cutouts.redact import redact_command, redact_text, redact_url

TRICKLE_SECONDS = 60  # how long the trickling server would hold a request


# ---------------------------------------------------------------- a real server from raw sockets
class CutoutServer:
    """HTTP/1.1 on ``host`` (port chosen by the system): a galaxy-like JPEG of the asked width for
    every row, except rows whose ra (rounded to 1e-4) is in ``trickle``: their status line and
    headers come one byte every quarter second for up to ``TRICKLE_SECONDS``.  ``held`` records,
    per trickled row, the seconds from its first request to the client closing the last one."""

    def __init__(self, host: str = "127.0.0.1", trickle=()):
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self.sock = socket.socket(family, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind((host, 0))
        self.sock.listen(64)
        self.port = self.sock.getsockname()[1]
        self.trickle = {round(float(r), 4) for r in trickle}
        self.first: dict = {}  # trickled ra -> first request time
        self.held: dict = {}  # trickled ra -> seconds until the client gave up
        self.requests: list[str] = []
        self.lock = threading.Lock()
        self.stopped = False
        threading.Thread(target=self._accept, daemon=True).start()

    def close(self):
        self.stopped = True
        self.sock.close()

    def _accept(self):
        while not self.stopped:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket):
        with conn, contextlib.suppress(OSError, LookupError, ValueError):  # a client that gave up, a stray request
            conn.settimeout(30)
            data = b""
            while b"\r\n\r\n" not in data:
                chunk = conn.recv(4096)
                if not chunk:
                    return
                data += chunk
            target = data.split(b"\r\n", 1)[0].split(b" ")[1].decode("latin-1")
            with self.lock:
                self.requests.append(target)
            q = parse_qs(urlsplit(target).query)
            ra = round(float(q["ra"][0]), 4)
            if ra in self.trickle:
                return self._trickle(conn, ra)
            body = _jpeg(int(q["width"][0]), seed=int(ra * 1e4) % 1000)
            head = f"HTTP/1.1 200 OK\r\nContent-Type: image/jpeg\r\nContent-Length: {len(body)}\r\nConnection: close\r\n\r\n"
            conn.sendall(head.encode() + body)

    def _trickle(self, conn: socket.socket, ra: float):
        t0 = time.monotonic()
        with self.lock:
            self.first.setdefault(ra, t0)
        head = b"HTTP/1.1 200 OK\r\nContent-Type: image/jpeg\r\nX-Pad: " + b"a" * 1000 + b"\r\n\r\n"
        for byte in head:
            if self.stopped or time.monotonic() - t0 > TRICKLE_SECONDS:
                break
            try:
                conn.sendall(bytes([byte]))
            except OSError:  # the client gave up
                break
            time.sleep(0.25)
        with self.lock:
            self.held[ra] = time.monotonic() - self.first[ra]


def _jpeg(size: int, seed: int) -> bytes:
    import io

    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size] - size / 2
    img = rng.normal(8, 3, (size, size, 3)) + np.exp(-np.hypot(xx, yy) / 6)[..., None] * 180
    buf = io.BytesIO()
    Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).save(buf, "JPEG", quality=92)
    return buf.getvalue()


def _catalog(path: Path, n: int = 6) -> tuple[Path, np.ndarray]:
    ra = 150.0 + 0.01 * np.arange(n)
    dec = 2.0 + 0.01 * np.arange(n)
    write_fits_catalog(path, pd.DataFrame({"objid": np.arange(1, n + 1, dtype=np.int64), "ra": ra, "dec": dec}))
    return path, ra


def _one_line(err: str, *needles):
    lines = [line for line in err.strip().splitlines() if line.strip()]
    assert len(lines) == 1, err
    for n in needles:
        assert n in lines[0], lines[0]
    return lines[0]


def _everything_under(out: Path) -> dict[str, bytes]:
    """Every file's bytes, plus what a reader decodes of the Parquet files (metadata, all values)
    and of the FITS header (compressed or encoded content cannot hide a secret)."""
    texts = {str(p): p.read_bytes() for p in out.rglob("*") if p.is_file()}
    for p in out.rglob("*.parquet"):
        texts[f"{p} (metadata)"] = str(pq.read_metadata(p).metadata).encode()
        texts[f"{p} (values)"] = pq.read_table(p).to_pandas().to_csv().encode()
    if (out / "mergers.fits").is_file():
        texts["FITS header"] = str(fitsio.read_header(str(out / "mergers.fits"), 1)).encode()
    return texts


# a marker in each secret (unique; '~' is in no base64 alphabet, so no embedded PNG holds one by
# chance): found anywhere, raw or %-encoded = leaked
USER = "us'~m1~er"
PASSWORD = "pa'ss ~m2~%40w@rd"  # a quote, a space, %-encoding, an '@' left as it is
API_KEY = "k'~m3~%20v"
TOKEN = "t'~m4~"
FRAGMENT = "f'~m5~"
MARKERS = ("~m1~", "~m2~", "~m3~", "~m4~", "~m5~")


def _hostile_url(host: str, port: int) -> str:
    return (
        f"http://{USER}:{PASSWORD}@{host}:{port}/cut?band=gri&api_key={API_KEY}&Token={TOKEN}#access_token={FRAGMENT}"
    )


def _assert_no_secret(r, out: Path):
    texts = {"stdout": r.stdout.encode(), "stderr": r.stderr.encode(), **_everything_under(out)}
    for where, data in texts.items():
        for m in MARKERS:
            assert m.encode() not in data and quote(m).encode() not in data, (m, where)


# ---------------------------------------------------------------- 1, 2: secrets
@pytest.mark.parametrize("host", ["127.0.0.1", "::1"])
def test_credentials_in_a_service_url_are_never_stored_or_printed(host, cheap_engine, tmp_path):
    if host == "::1" and not socket.has_ipv6:
        pytest.skip("no IPv6 on this machine")
    try:
        server = CutoutServer(host)
    except OSError as exc:
        pytest.skip(f"cannot listen on {host}: {exc}")
    try:
        cat, _ = _catalog(tmp_path / "cat.fits")
        url = _hostile_url(f"[{host}]" if ":" in host else host, server.port)
        out = tmp_path / "out"
        # the report too (it re-fetches its galleries through the service); --source spelling for IPv6
        flags = ["--cutout-service", url] if host == "127.0.0.1" else ["--source", "service", url]
        r = cli_process(cat, *flags, "-o", out, "--views", "1", "--no-progress", "--engine", cheap_engine)
        assert r.returncode == 0, r.stderr
        summary = json.loads((out / "summary.json").read_text())
        assert summary["scored"] == 6 and (out / "report" / "index.html").is_file()
        shown = summary["source"]["location"]
        assert "band=gri" in shown and str(server.port) in shown and "REDACTED" in shown
        assert "REDACTED" in summary["command"] and "band=gri" in summary["command"]
        # the service was asked with the real token: redaction is for what is shown, not sent
        assert any(f"Token={TOKEN}" in q for q in server.requests)
        _assert_no_secret(r, out)
    finally:
        server.close()


@pytest.mark.parametrize(
    "url",
    [
        f"ftp://{USER}:{PASSWORD}@ftp.example.org/cut?token={TOKEN}",
        f"s3://{USER}:{PASSWORD}@bucket/cut?X-Amz-Signature={TOKEN}&X-Amz-Credential={API_KEY}",
        f"file:///data/cut?api_key={API_KEY}#sig={FRAGMENT}",
        f"http://{USER}:{PASSWORD}@127.0.0.1:99999/cut?token={TOKEN}",
    ],
)
def test_a_refused_url_is_named_without_its_secrets(url, tmp_path):
    cat, _ = _catalog(tmp_path / "cat.fits")
    out = tmp_path / "out"
    r = cli_process(cat, "--cutout-service", url, "-o", out, "--no-progress")
    assert r.returncode == 2
    _one_line(r.stderr, "--cutout-service", "REDACTED")
    assert not out.exists()
    _assert_no_secret(r, tmp_path)


# ---------------------------------------------------------------- 3: impossible URLs
IMPOSSIBLE = {
    "http://127.0.0.1:99999/": "65535",
    "http://127.0.0.1:0/x": "port 0",
    "http:///x": "no host",
    "http://[::1/x": "not a valid URL",
    "http://[::zz]/x": "not a valid URL",
    "http://exa mple.org/x": "not a valid host name",
    "http://example..org/x": "not a valid host name",
    "http://256.1.1.1/x": "not an IPv4 address",
    "http://127.0.0.1:8/a b": "space",
    "https://": "no host",
    "gopher://example.org/x": "only http:// and https://",
}


def test_impossible_service_urls_exit_2_and_write_nothing(cheap_cli, tmp_path, capsys):
    cat, _ = _catalog(tmp_path / "cat.fits")
    existing = tmp_path / "existing"
    existing.mkdir()
    (existing / "notes.txt").write_text("mine")
    for url, words in IMPOSSIBLE.items():
        for flags in (["--cutout-service", url], ["--source", "service", url]):
            for out in (tmp_path / "new", existing):
                rc, _, err = cheap_cli(cat, *flags, "-o", out, capsys=capsys)
                assert rc == 2, (url, err)
                _one_line(err, words)
                assert not (tmp_path / "new").exists(), url
                assert sorted(p.name for p in existing.iterdir()) == ["notes.txt"], url
    r = cli_process(cat, "--cutout-service", "http://127.0.0.1:99999/", "-o", tmp_path / "new")  # as a user meets it
    assert r.returncode == 2 and not (tmp_path / "new").exists()
    _one_line(r.stderr, "--cutout-service", "65535")


def test_an_impossible_default_source_url_exits_2(tmp_path):
    cat, _ = _catalog(tmp_path / "cat.fits")
    url = shlex.quote(f"http://{USER}:{PASSWORD}@h:70000/x?token={TOKEN}")  # the site's file is shell words
    env = dict(os.environ, MERGERSCAN_DEFAULT_SOURCE=f"--cutout-service {url}")
    r = cli_process(cat, "-o", tmp_path / "out", "--no-progress", env=env)
    assert r.returncode == 2
    _one_line(r.stderr, "$MERGERSCAN_DEFAULT_SOURCE", "65535")
    assert not (tmp_path / "out").exists()
    _assert_no_secret(r, tmp_path)


# ---------------------------------------------------------------- 4: a trickling server
def test_a_trickling_service_cannot_hold_a_row_past_its_total_limit(cheap_cli, tmp_path, capsys):
    cat, ra = _catalog(tmp_path / "cat.fits")
    server = CutoutServer(trickle=[ra[2]])
    try:
        out = tmp_path / "out"
        url = f"http://127.0.0.1:{server.port}/cut"
        limits = ["--service-timeout", "2", "--service-total-timeout", "3"]
        rc, _, err = cheap_cli(cat, "--cutout-service", url, *limits, "-o", out, capsys=capsys)
        assert rc == 0, err
        deadline = time.monotonic() + 30  # the server notices the client gave up within a send or two
        while round(float(ra[2]), 4) not in server.held and time.monotonic() < deadline:
            time.sleep(0.1)
        held = server.held[round(float(ra[2]), 4)]
        assert held < 20, held  # 3 s allowed; the server would have held it for 60 s
        got = pq.read_table([str(p) for p in (out / "parquet").rglob("*.parquet")]).to_pandas()
        status = dict(zip(got["objid"], got["status"]))
        assert status.pop(3) == "fetch_failed"
        assert set(status.values()) == {"ok"}, status  # the other rows are unaffected
        summary = json.loads((out / "summary.json").read_text())
        (fail,) = [f for f in summary["failures"] if f["status"] == "fetch_failed"]
        assert "timeout" in fail["example"], fail
    finally:
        server.close()


# ---------------------------------------------------------------- 5: the redaction itself
@pytest.mark.parametrize(
    "url, kept, gone",
    [
        ("https://u:p@host:8/x?a=1", ["host:8/x?a=1"], ["u:p"]),
        ("https://host/x?ra=1&token=abc&X-Amz-Signature=s2&sig=q9", ["ra=1"], ["abc", "=s2", "q9"]),
        ("http://u:p'a ss@h/x?api%5Fkey=k'1&band=gri", ["h/x", "band=gri"], ["p'a", "k'1"]),
        ("http://user:p@ss@h/x", ["@h/x"], ["p@ss", "user"]),
        ("http://user:pa/ss@h/x", ["@h/x"], ["pa/ss", "user"]),
        ("ftp://bob:ftpsecret@ftp.example.org/pub", ["ftp.example.org/pub"], ["ftpsecret", "bob"]),
        (
            "s3://AKIA1:sekrit@bucket/k?X-Amz-Credential=c1&X-Amz-Security-Token=t1",
            ["bucket/k"],
            ["sekrit", "c1", "t1"],
        ),
        ("file:///data/x?token=abc", ["file:///data/x"], ["abc"]),
        ("http://[::1]:80/x?access_token=zz#access_token=frag1&page=2", ["[::1]:80", "page=2"], ["zz", "frag1"]),
        ("http://[::1/x?password=hunter2", ["[::1/x"], ["hunter2"]),
        (
            "http://h/a;jsessionid=XYZ12/b?sigma=3&passband=r&AWSAccessKeyId=AK9",
            ["sigma=3", "passband=r"],
            ["XYZ12", "AK9"],
        ),
        ("https://TOKEN123@github.com/x", ["github.com/x"], ["TOKEN123"]),
        (
            "https://skyserver.sdss.org/dr17/ImgCutout/getjpeg",
            ["https://skyserver.sdss.org/dr17/ImgCutout/getjpeg"],
            [],
        ),
        ("/data/stamps", ["/data/stamps"], []),
    ],
)
def test_redact_url_parses_every_scheme(url, kept, gone):
    shown = redact_url(url)
    assert all(k in shown for k in kept), shown
    assert not any(g in shown for g in gone), shown
    assert redact_url(shown) == shown  # idempotent


def test_redact_command_keeps_arguments_whole():
    argv = [
        "process-catalog",
        "c.fits",
        "--cutout-service",
        "http://u:pa ss'@h/x?token=t o'k",
        "--select",
        "token == 3",
    ]
    line = redact_command(argv)
    assert "pa ss" not in line and "t o'k" not in line and "'token == 3'" in line
    assert redact_command(line) == line  # the stored line parses back to the same arguments
    # free text cut at the space: the password is still caught, as a secret redacted before
    assert "pa ss" not in redact_text("failed: cutout service 'http://u:pa ss'@h/x'")


def test_secret_named_options_and_flags_are_redacted():
    from mergerscan.cutouts.redact import redact_options
    from mergerscan.cutouts.sources import SourceConfig

    argv = ["--source-option", "api_key=s3cr3t-opt", "--password", "s3cr3t-flag", "--source-option", "order=11"]
    line = redact_command(argv)
    assert "s3cr3t" not in line and "order=11" in line
    opts = redact_options({"api_key": "s3cr3t", "order": 11, "mirror": "https://u:s3cr3t@h/x"})
    assert opts == {"api_key": "REDACTED", "order": 11, "mirror": "https://REDACTED@h/x"}
    cfg = SourceConfig("service", "https://u:s3cr3t@h/x?token=s3cr3t", (("timeout", 2.0),))
    assert "s3cr3t" not in repr(cfg) + cfg.fingerprint()  # Dask logs a failed task's arguments
