"""ServiceSource against a real HTTP server on 127.0.0.1 that injects faults by position."""

from __future__ import annotations

import builtins
import io
import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from mergerscan.cutouts.preprocess import PreprocessSpec
from mergerscan.cutouts.service import ServiceSource
from mergerscan.cutouts.sources import SourceConfig, open_source

SPEC = PreprocessSpec()  # 256 px at 0.396"/px
S = SPEC.stamp_pixels


def _jpeg(arr: np.ndarray, mode: str = "RGB") -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).convert(mode).save(buf, "JPEG", quality=90)
    return buf.getvalue()


def _fake(seed: int, w: int = S, h: int = S) -> np.ndarray:
    """Smooth random RGB image (compresses to a few kB, like a real cutout)."""
    small = np.random.default_rng(seed).integers(0, 256, (8, 8, 3), dtype=np.uint8)
    return np.asarray(Image.fromarray(small).resize((w, h), Image.Resampling.BILINEAR))


def _decode(body: bytes) -> np.ndarray:
    with Image.open(io.BytesIO(body)) as im:
        return np.asarray(im.convert("RGB"))


@pytest.fixture(scope="module")
def jpegs(request) -> list[bytes]:
    """Real SkyServer JPEGs when ../shared is there, PIL-generated ones otherwise."""
    try:
        gz = request.getfixturevalue("gz_dir")
    except pytest.skip.Exception:
        gz = None
    if gz is not None:
        cat = pd.read_csv(gz / "catalog.csv", nrows=8)
        return [(gz / p).read_bytes() for p in cat["image"]]
    return [_jpeg(_fake(i)) for i in range(8)]


class _State:
    """What the server serves and what it saw."""

    def __init__(self):
        self.routes: dict = {}  # (ra, dec) rounded -> (fault, jpeg bytes)
        self.hits: Counter = Counter()
        self.lock = threading.Lock()
        self.inflight = self.max_inflight = 0
        self.clients: set = set()  # distinct client (host, port) = TCP connections
        self.queries: list = []
        self.delay = 0.0  # added to every request
        self.url = ""

    @staticmethod
    def key(ra, dec):
        return round(float(ra), 5), round(float(dec), 5)

    def add(self, ra, dec, fault, body=None):
        self.routes[self.key(ra, dec)] = (fault, body)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, so persistent connections are testable
    timeout = 5

    def log_message(self, *args):
        pass

    def do_GET(self):
        st: _State = self.server.state
        with st.lock:
            st.inflight += 1
            st.max_inflight = max(st.max_inflight, st.inflight)
            st.clients.add(self.client_address)
        try:
            self._serve(st)
        except OSError:  # client gave up (timeout, oversize abort)
            self.close_connection = True
        finally:
            with st.lock:
                st.inflight -= 1

    def _send(self, code, body=b"", ctype="image/jpeg", length="auto", headers=(), close=False):
        self.send_response(code)
        self.send_header("Content-Type", ctype)
        if length == "auto":
            self.send_header("Content-Length", str(len(body)))
        elif length is not None:
            self.send_header("Content-Length", str(length))
        for k, v in headers:
            self.send_header(k, v)
        if close:
            self.send_header("Connection", "close")
            self.close_connection = True
        self.end_headers()
        self.wfile.write(body)

    def _serve(self, st: _State):
        u = urlsplit(self.path)
        q = {k: v[0] for k, v in parse_qs(u.query).items()}
        if u.path not in ("/cutout", "/redirected"):
            return self._send(404, b"no such path", "text/plain")
        if float(q.get("scale", "nan")) != SPEC.pixel_scale or q.get("width") != str(S) or q.get("height") != str(S):
            return self._send(400, b"bad parameters", "text/plain")
        key = st.key(q["ra"], q["dec"])
        fault, body = st.routes.get(key, ("missing", None))
        with st.lock:
            st.queries.append(q)
            st.hits[key] += 1
            n = st.hits[key]
        time.sleep(st.delay)
        if u.path == "/redirected" or fault == "ok" or (fault.endswith("_once") and n > 1):
            return self._send(200, body)
        if fault == "ok_close":  # keep-alive promised, then closed: a stale connection
            self._send(200, body)
            self.close_connection = True
            return
        if fault in ("500_once", "500"):
            return self._send(500, b"internal error", "text/plain")
        if fault == "429_once":
            return self._send(429, b"slow down", "text/plain", headers=[("Retry-After", "0")])
        if fault == "429_long":
            return self._send(429, b"slow down", "text/plain", headers=[("Retry-After", "3600")])
        if fault == "drop_once":  # connection closed with no response
            self.close_connection = True
            return
        if fault in ("404", "missing"):
            return self._send(404, b"not found", "text/plain")
        if fault == "slow":  # headers only after the client's timeout
            time.sleep(1.0)
            return self._send(200, body)
        if fault == "drip":  # bytes keep coming, each recv is quick, total is slow
            self._send(200, b"", length=len(body))
            for i in range(0, min(len(body), 40), 2):
                self.wfile.write(body[i : i + 2])
                self.wfile.flush()
                time.sleep(0.05)
            return
        if fault == "big":  # no Content-Length, body far over max_bytes
            self._send(200, b"", length=None, close=True)
            for _ in range(64):
                self.wfile.write(body + bytes(64 * 1024))
            return
        if fault == "big_cl":  # honest but huge Content-Length
            return self._send(200, body, length=50_000_000, close=True)
        if fault == "lying_cl":  # Content-Length says 100, body is a JPEG + 1 MB
            return self._send(200, body + bytes(1 << 20), length=100)
        if fault == "short_cl":  # Content-Length more than is sent, then close
            return self._send(200, body, length=len(body) + 1000, close=True)
        if fault.startswith("redirect_to:"):
            target = fault.split(":", 1)[1].replace("{url}", st.url)
            return self._send(302, b"", "text/plain", headers=[("Location", target)])
        if fault in ("truncated", "html", "gray", "small_square", "non_square"):
            return self._send(200, body)  # body prepared by the test
        raise AssertionError(f"unknown fault {fault}")


@pytest.fixture
def server():
    st = _State()
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    httpd.daemon_threads = True
    httpd.handle_error = lambda *a: None  # client aborts are expected
    httpd.state = st
    st.url = f"http://127.0.0.1:{httpd.server_address[1]}"
    t = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    t.start()
    yield st
    httpd.shutdown()
    httpd.server_close()


def _rows(n):
    return pd.DataFrame(
        {"id": [f"o{i}" for i in range(n)], "ra": 150.0 + 0.01 * np.arange(n), "dec": -1.5 + 0.02 * np.arange(n)}
    )


@pytest.mark.parametrize(
    "url",
    [
        "file:///etc/passwd",
        "ftp://example.org/cutout",
        "gopher://h/x",
        "127.0.0.1:8080/cutout",
        "/tmp/cutout",
        "http://",
        "http://h:99999/x",
    ],
)
def test_non_http_url_rejected(url):
    with pytest.raises(ValueError):
        ServiceSource(url, SPEC)


@pytest.mark.parametrize(
    "given, words",
    [
        ({"timout": 5.0}, ["unknown option 'timout'", "did you mean 'timeout'?", "total_timeout"]),
        ({"threads": 2}, ["unknown option 'threads'", "(valid: timeout, retries,"]),  # a stamps option
        ({"timeout": 0.0}, ["timeout, max_concurrency and max_bytes must be positive"]),
        ({"max_rate": -1.0}, ["max_rate must be positive"]),
        ({"total_timeout": 0.0}, ["total_timeout must be positive"]),
    ],
)
def test_service_options_are_checked(given, words):
    """Unknown, misspelled or out-of-range options: one line naming the source, never ignored."""
    for make in (
        lambda: open_source(SourceConfig("service", "http://127.0.0.1:9/cutout", tuple(given.items())), SPEC),
        lambda: ServiceSource("http://127.0.0.1:9/cutout", SPEC, **given),
    ):
        with pytest.raises(ValueError) as e:
            make()
        msg = str(e.value)
        assert "\n" not in msg and "image source 'service'" in msg and all(w in msg for w in words), msg


def test_query_url_keeps_existing_query():
    with ServiceSource("https://skyserver.sdss.org/dr17/SkyServerWS/ImgCutout/getjpeg?opt=", SPEC) as src:
        u = urlsplit(src.query_url(10.5, -2.25))
    q = parse_qs(u.query, keep_blank_values=True)
    assert q["opt"] == [""] and q["scale"] == ["0.396"] and q["width"] == q["height"] == ["256"]
    assert float(q["ra"][0]) == 10.5 and float(q["dec"][0]) == -2.25


def test_faults_nothing_lost(server, jpegs, tmp_path, monkeypatch):
    # a valid stamp on local disk: a client that followed file:// would turn its row "ok"
    local = tmp_path / "local.jpg"
    local.write_bytes(jpegs[0])
    rgb = _decode(jpegs[1])
    small = _jpeg(_fake(99, S // 2, S // 2))
    bodies = {
        "truncated": jpegs[2][: len(jpegs[2]) // 2],
        "html": b"<html>Server Error</html>",
        "gray": _jpeg(rgb, "L"),
        "small_square": small,
        "non_square": _jpeg(_fake(98, S, S - 56)),
    }
    loop = "{url}/cutout?ra=150.22000&dec=-1.06000&scale=0.396&width=256&height=256"  # row 22 itself
    faults = [
        "ok",
        "500_once",
        "429_once",
        "drop_once",
        "500",
        "429_long",
        "404",
        "slow",
        "drip",
        "big",
        "big_cl",
        "lying_cl",
        "short_cl",
        "redirect_to:file:///etc/passwd",
        f"redirect_to:file://{local}",
        "redirect_to:ftp://127.0.0.1/x.jpg",
        "redirect_to:/redirected?ra=150.16&dec=-1.18&scale=0.396&width=256&height=256",
        "redirect_to:{url}/redirected?ra=150.17&dec=-1.16&scale=0.396&width=256&height=256",
        "truncated",
        "html",
        "gray",
        "small_square",
        "redirect_to:" + loop,
        "non_square",
        "ok",
    ]
    rows = _rows(len(faults))
    expected = {}  # row -> expected stamp for rows that must be ok
    for i, (f, ra, dec) in enumerate(zip(faults, rows["ra"], rows["dec"])):
        body = bodies.get(f, jpegs[i % len(jpegs)])
        server.add(ra, dec, f, body)
        if (
            f in ("ok", "500_once", "429_once", "drop_once")
            or f.startswith("redirect_to:/")
            or f.startswith("redirect_to:{url}/redirected")
        ):
            expected[i] = _decode(body)
    expected[faults.index("small_square")] = np.asarray(
        Image.open(io.BytesIO(small)).convert("RGB").resize((S, S), Image.Resampling.BILINEAR)
    )

    opened = []  # every file the process opens during the fetch
    real_open = builtins.open
    monkeypatch.setattr(builtins, "open", lambda f, *a, **k: opened.append(str(f)) or real_open(f, *a, **k))
    t0 = time.monotonic()
    with ServiceSource(
        server.url + "/cutout",
        SPEC,
        timeout=0.3,
        retries=2,
        backoff=0.01,
        max_concurrency=4,
        max_bytes=200_000,
        total_timeout=120,  # the row's total limit is not this test's subject: on a busy machine it cut retries short
    ) as src:
        stamps, status = src.fetch(rows)
    elapsed = time.monotonic() - t0
    monkeypatch.undo()

    # nothing lost, right shapes, zeros where failed, exact pixels where ok
    assert len(status) == len(rows) and stamps.shape == (len(rows), S, S, 3) and stamps.dtype == np.uint8
    want = ["ok" if i in expected else "fetch_failed" for i in range(len(rows))]
    assert list(status) == want, [(f, s) for f, s in zip(faults, status)]
    for i in range(len(rows)):
        if i in expected:
            np.testing.assert_array_equal(stamps[i], expected[i])
        else:
            assert not stamps[i].any()

    # retries only where they may help; the local file was never touched
    hits = {f: server.hits[server.key(ra, dec)] for f, ra, dec in zip(faults, rows["ra"], rows["dec"])}
    assert hits["500_once"] == hits["429_once"] == hits["drop_once"] == 2
    assert hits["500"] == 3 and hits["short_cl"] == 3 and hits["slow"] == 3
    assert hits["404"] == hits["429_long"] == hits["truncated"] == hits["html"] == hits["gray"] == 1
    assert hits["redirect_to:" + loop] == 6  # MAX_REDIRECTS + 1 requests, then given up
    assert sum(v for f, v in hits.items() if "/redirected?" in f) == 4  # redirect + target each
    assert hits[f"redirect_to:file://{local}"] == hits["redirect_to:file:///etc/passwd"] == 1
    assert not any("passwd" in p or str(local) in p for p in opened), opened
    assert src.stats["failures"] == Counter(
        {
            "http_500": 1,
            "http_429": 1,
            "http_404": 1,
            "timeout": 2,
            "connection": 1,
            "oversize": 2,
            "bad_body": 3,
            "bad_redirect": 3,
            "too_many_redirects": 1,
            "bad_image": 2,
        }
    )
    assert src.stats["rows"] == len(rows) and src.stats["ok"] == len(expected)
    # every retry is one more request the server saw for that row (redirect hops aside: their
    # counts are exact above), so the count holds on a busy machine too, where a 0.3 s timeout may
    # also retry an "ok" row once; drop_once on a reused keep-alive connection reconnects at once,
    # without counting a retry
    direct = {f: n for f, n in hits.items() if not f.startswith("redirect_to:")}
    extra = sum(n - 1 for n in direct.values())
    assert extra >= 3 + 2 + 2 + 2 + 2  # *_once, 500, short_cl, slow, drip at least
    assert src.stats["retries"] in (extra, extra - 1), (
        src.stats["retries"],
        str({k: v for k, v in direct.items() if v > 1}),
    )
    assert elapsed < 120  # a hang guard (trickled bytes cannot hold a thread), not a timing


def test_concurrency_bound_and_persistent_connections(server, jpegs):
    server.delay = 0.1  # long enough for requests to overlap
    rows = _rows(24)
    for i, (ra, dec) in enumerate(zip(rows["ra"], rows["dec"])):
        server.add(ra, dec, "ok", jpegs[i % len(jpegs)])
    cfg = SourceConfig("service", server.url + "/cutout", (("timeout", 5.0), ("max_concurrency", 3), ("retries", 0)))
    src = open_source(cfg, SPEC)
    try:
        stamps, status = src.fetch(rows)
        empty, estatus = src.fetch(rows.iloc[:0])
    finally:
        src.close()
    assert (status == "ok").all() and empty.shape == (0, S, S, 3) and len(estatus) == 0
    for i in range(len(rows)):
        np.testing.assert_array_equal(stamps[i], _decode(jpegs[i % len(jpegs)]))
    assert 2 <= server.max_inflight <= 3
    assert len(server.clients) <= 3  # one keep-alive connection per pool thread
    assert src.stats["requests"] == 24 and src.stats["retries"] == 0
    q = server.queries[0]
    assert (q["scale"], q["width"], q["height"]) == ("0.396", "256", "256")


def test_stale_keepalive_connection_reconnects_without_retry(server, jpegs):
    rows = _rows(6)
    for i, (ra, dec) in enumerate(zip(rows["ra"], rows["dec"])):
        server.add(ra, dec, "ok_close", jpegs[i])
    with ServiceSource(server.url + "/cutout", SPEC, timeout=5.0, retries=0, max_concurrency=1) as src:
        _, status = src.fetch(rows)
    assert (status == "ok").all() and src.stats["retries"] == 0
    assert len(server.clients) == 6  # one fresh connection per row
    assert src.stats["requests"] == 11  # 5 re-sent at once on a fresh connection


def test_real_catalog_objects(gz_dir, server):
    cat = pd.read_csv(gz_dir / "catalog.csv", nrows=16)
    for ra, dec, p in zip(cat["ra"], cat["dec"], cat["image"]):
        server.add(ra, dec, "ok", (gz_dir / p).read_bytes())
    rows = cat[["id", "ra", "dec"]]
    with ServiceSource(server.url + "/cutout", SPEC, timeout=5.0, max_concurrency=4) as src:
        stamps, status = src.fetch(rows)
    assert (status == "ok").all()
    for i, p in enumerate(cat["image"]):
        np.testing.assert_array_equal(stamps[i], _decode((gz_dir / p).read_bytes()))
