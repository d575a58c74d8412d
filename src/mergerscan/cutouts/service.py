"""Image source for an HTTP cutout service in the shape of SDSS SkyServer's ImgCutout.

``GET {url}?ra=..&dec=..&scale=..&width=..&height=..`` returns a colour JPEG of
``width`` x ``height`` px at ``scale`` arcsec/px; we ask for ``spec.stamp_pixels`` at
``spec.pixel_scale``.  Standard library only (http.client), one persistent connection per
pool thread and host.  A row whose cutout cannot be had gets status ``fetch_failed`` and a
zero stamp; why is counted in ``self.stats["failures"]``.

Safety and robustness:

* only http(s) URLs, also for redirects (a redirect to ``file://`` or any other scheme fails
  the row; nothing local is ever opened); at most ``MAX_REDIRECTS`` hops;
* each HTTP request has a deadline of ``timeout`` s over DNS, connect, TLS, headers and body (a
  watchdog shuts the socket: trickled bytes cannot hold a thread longer), and each row a total deadline of
  ``total_timeout`` s (default ``2 * (retries + 1) * timeout``) over all its attempts, redirects
  and backoff sleeps;
* connection errors, timeouts, 5xx and 429 are retried ``retries`` times with exponential
  backoff and jitter (``Retry-After`` is honoured up to ``RETRY_AFTER_MAX`` s; a longer one
  ends the retries); other 4xx, oversize and undecodable bodies are not retried;
* at most ``max_concurrency`` requests in flight per source (a thread pool of that size) and, with
  ``max_rate``, at most that many requests per second per process and host (shared by every
  source in the worker process, so concurrent partitions do not add up);
* a service that cannot be reached (``UNREACHABLE_ROWS`` rows in a row failed on connection, DNS,
  TLS or timeout, none succeeded) is not asked again by that source: its remaining rows fail at
  once with the same reason instead of each waiting out its retries;
* bodies over ``max_bytes`` are aborted while streaming, whatever Content-Length says;
* the body must decode completely (a JPEG must end with its EOI marker) to a square RGB image
  (else ``fetch_failed``); then the same checks as every image source
  (:mod:`mergerscan.cutouts.quality`): a side under a quarter of ``stamp_pixels`` is
  ``small_image``, over four times ``image_too_large`` (checked from the header, not decoded),
  blank or constant ``blank_image``, JPEG grey fill (data cut short) ``bad_image``.  A square
  image of another size is resampled to ``stamp_pixels`` (PIL bilinear, antialiased when
  shrinking), assuming the service returned the requested field of view.

``examples`` keeps one failure per status, e.g. ``fetch_failed``: "ra=150.1, dec=2.2:
connection refused by 127.0.0.1:9 (4 attempts)".
"""

from __future__ import annotations

import http.client
import io
import random
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from urllib.parse import urlencode, urljoin, urlsplit

import numpy as np
import pandas as pd
from PIL import Image

from ..catalogs.schema import Status
from .base import SourceBase, SourceOptions, empty_stamps
from .preprocess import PreprocessSpec
from .quality import OPAQUE_MODES, ImageRejected, check_jpeg, check_pixels, check_size, opaque_rgb
from .service_http import (
    BACKOFF_MAX,
    CHUNK,
    DRAIN_MAX,
    HEADERS,
    MAX_REDIRECTS,
    NETWORK,
    REDIRECTS,
    RETRY_AFTER_MAX,
    STALE,
    UNREACHABLE_ROWS,
    Deadline,
    Fail,
    ascii_host,
    check_url,
    connect,
    host_port,
    io_fail,
    limit_for,
    remaining,
    retry_after,
)

__all__ = ["UNREACHABLE_ROWS", "ServiceSource"]


class ServiceSource(SourceBase):
    kind = "service"
    statuses = frozenset(
        {Status.FETCH_FAILED, Status.BAD_IMAGE, Status.SMALL_IMAGE, Status.IMAGE_TOO_LARGE, Status.BLANK_IMAGE}
    )
    needs_network = True

    @dataclass(frozen=True)
    class Options(SourceOptions):
        timeout: float = 10.0  # s per HTTP request (connect, headers and body)
        retries: int = 3
        backoff: float = 0.5  # s, first backoff sleep (doubling, with jitter)
        max_concurrency: int = 8  # requests in flight per source
        max_bytes: int = 2_000_000  # largest body accepted
        max_rate: float | None = None  # requests/s per worker process and host
        total_timeout: float | None = None  # s per row over all attempts (None: 2 (retries+1) timeout)

        def __post_init__(self):
            if (
                self.timeout <= 0
                or self.retries < 0
                or self.backoff < 0
                or self.max_concurrency < 1
                or self.max_bytes < 1
            ):
                raise ValueError(
                    "image source 'service': timeout, max_concurrency and max_bytes must be "
                    "positive; retries, backoff >= 0"
                )
            if self.max_rate is not None and self.max_rate <= 0:
                raise ValueError("image source 'service': max_rate must be positive (requests per second)")
            if self.total_timeout is not None and self.total_timeout <= 0:
                raise ValueError("image source 'service': total_timeout must be positive")

    def __init__(self, url: str, spec: PreprocessSpec, **options):
        self.check_location(str(url))
        super().__init__(url, spec, **options)
        o = self.options
        self._limit = limit_for(urlsplit(str(url)).netloc, o.max_rate) if o.max_rate else None
        self._down, self._down_reason = 0, None  # consecutive network failures of rows, none ok
        self.url = str(url)
        self.timeout, self.retries, self.backoff = float(o.timeout), int(o.retries), float(o.backoff)
        self.max_concurrency, self.max_bytes = int(o.max_concurrency), int(o.max_bytes)
        self.total_timeout = float(o.total_timeout) if o.total_timeout else 2 * (self.retries + 1) * self.timeout
        self.examples: dict = {}  # status -> first failure seen
        self.stats = {
            "rows": 0,
            "ok": 0,
            "requests": 0,
            "retries": 0,
            "redirects": 0,
            "bytes": 0,
            "failures": Counter(),
        }
        self._lock = threading.Lock()
        self._local = threading.local()  # per pool thread: {(scheme, netloc): connection}
        self._conns: set = set()  # every open connection, for close()
        self._rng = random.Random()
        self._pool = ThreadPoolExecutor(self.max_concurrency, thread_name_prefix="cutout-service")

    @classmethod
    def check_location(cls, location: str) -> None:
        check_url(location)  # http(s), a valid host, a port in range: else one line, redacted

    # -- protocol -------------------------------------------------------------------------
    def fetch(self, rows: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
        n = len(rows)
        stamps = empty_stamps(n, self.spec)
        status = np.full(n, Status.FETCH_FAILED, dtype=object)
        ra = rows["ra"].to_numpy(np.float64)
        dec = rows["dec"].to_numpy(np.float64)

        def one(i: int) -> None:  # each thread writes its own row
            try:
                img = self._fetch_one(float(ra[i]), float(dec[i]))
            except ImageRejected as e:  # a complete image that fails the quality check
                status[i] = e.status
                self.examples.setdefault(e.status, f"ra={ra[i]:.6f}, dec={dec[i]:.6f}: {e.reason}")
                return
            if isinstance(img, str):
                self.examples.setdefault(Status.FETCH_FAILED, f"ra={ra[i]:.6f}, dec={dec[i]:.6f}: {img}")
                return
            stamps[i] = img
            status[i] = Status.OK

        list(self._pool.map(one, range(n)))
        self._count("rows", n)
        return stamps, status

    def close(self) -> None:
        self._pool.shutdown(wait=True)
        with self._lock:
            conns, self._conns = list(self._conns), set()
        for c in conns:
            c.close()

    # -- one row --------------------------------------------------------------------------
    def query_url(self, ra: float, dec: float) -> str:
        s = self.spec.stamp_pixels
        q = urlencode(
            {
                "ra": f"{ra:.8f}",
                "dec": f"{dec:.8f}",
                "scale": repr(float(self.spec.pixel_scale)),
                "width": s,
                "height": s,
            }
        )
        base = self.url.partition("#")[0]  # a fragment is never sent: the query goes before it
        sep = "" if base.endswith(("?", "&")) else ("&" if "?" in base else "?")
        return f"{base}{sep}{q}"

    def _fetch_one(self, ra: float, dec: float) -> np.ndarray | str:
        """The stamp, or why not (one line); ImageRejected for an image that fails the quality check."""
        url = self.query_url(ra, dec)
        with self._lock:
            if self._down >= UNREACHABLE_ROWS and not self.stats["ok"]:
                self.stats["failures"][self._down_reason] += 1  # unreachable: not asked again
                return f"{self._down_reason}: the service did not answer the last {self._down} rows; not asked again"
        row_deadline = time.monotonic() + self.total_timeout
        attempts = 0
        for attempt in range(self.retries + 1):
            attempts += 1
            try:
                img = self._get(url, row_deadline)
                self._count("ok")
                with self._lock:
                    self._down = 0
                return img
            except ImageRejected as e:
                with self._lock:
                    self.stats["failures"][e.status] += 1
                raise
            except Fail as e:
                fail = e
            except Exception as e:  # unexpected: fail the row, never the partition
                fail = Fail(f"error_{type(e).__name__}", detail=f"{type(e).__name__}: {e}"[:200])
            if not fail.retry or attempt == self.retries:
                break
            delay = min(BACKOFF_MAX, self.backoff * 2**attempt) * (0.5 + self._rng.random())
            if fail.after is not None:
                if fail.after > RETRY_AFTER_MAX:
                    break
                delay = max(delay, fail.after)
            if time.monotonic() + delay >= row_deadline:  # no time left for another attempt
                fail = Fail(
                    fail.reason,
                    detail=f"{fail.detail}; gave up at the row's total time limit ({self.total_timeout:g} s)",
                )
                break
            self._count("retries")
            time.sleep(delay)
        with self._lock:
            self.stats["failures"][fail.reason] += 1
            if fail.reason in NETWORK:
                self._down, self._down_reason = self._down + 1, fail.reason
            else:
                self._down = 0
        return f"{fail.detail} ({attempts} attempt{'s' if attempts > 1 else ''})"

    def _get(self, url: str, row_deadline: float | None = None) -> np.ndarray:
        """GET following http(s) redirects; the decoded stamp or Fail."""
        for _ in range(MAX_REDIRECTS + 1):
            try:  # file://, ftp://, data:, a bad host or port ... : never followed
                parts = check_url(url)
            except ValueError as exc:
                raise Fail("bad_redirect", detail=f"redirect refused: {exc}") from None
            code, location, body = self._request(parts, row_deadline)
            if code in REDIRECTS:
                if not location:
                    raise Fail("bad_redirect")
                url = urljoin(url, location.strip())
                self._count("redirects")
                continue
            try:
                return self._decode(body, host_port(parts))
            except Fail:  # e.g. a lying Content-Length: don't reuse that stream
                self._drop((parts.scheme.lower(), parts.netloc))
                raise
        raise Fail("too_many_redirects")

    # -- HTTP -----------------------------------------------------------------------------
    def _connection(self, key, parts, fresh: bool):
        conns = self._local.__dict__.setdefault("conns", {})
        conn = conns.get(key)
        if conn is not None and not fresh:
            return conn, conn.sock is not None  # reused only if still connected
        self._drop(key)
        cls = http.client.HTTPSConnection if key[0] == "https" else http.client.HTTPConnection
        conn = cls(ascii_host(parts.hostname), parts.port, timeout=self.timeout)
        conns[key] = conn
        with self._lock:
            self._conns.add(conn)
        return conn, False

    def _drop(self, key) -> None:
        conn = self._local.__dict__.get("conns", {}).pop(key, None)
        if conn is not None:
            conn.close()
            with self._lock:
                self._conns.discard(conn)

    def _request(self, parts, row_deadline: float | None = None) -> tuple[int, str | None, bytes | None]:
        key, where = (parts.scheme.lower(), parts.netloc), host_port(parts)
        target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        for fresh in (False, True):
            if self._limit is not None:
                self._limit.wait()
            conn, reused = self._connection(key, parts, fresh)
            deadline = time.monotonic() + self.timeout
            if row_deadline is not None:
                deadline = min(deadline, row_deadline)
            resp = None
            try:  # the deadline holds over DNS, connect, TLS, status line, headers and body
                with Deadline(deadline, where) as d:
                    if conn.sock is None:
                        connect(conn, parts, d)
                    sock = conn.sock  # kept: a "Connection: close" answer clears conn.sock
                    d.watch(sock)
                    self._count("requests")
                    conn.request("GET", target, headers=HEADERS)
                    sock.settimeout(remaining(deadline))
                    resp = conn.getresponse()
                    return self._response(resp, sock, deadline, key, where)
            except Fail:
                self._drop(key)
                raise
            except (OSError, http.client.HTTPException) as e:
                self._drop(key)
                if reused and resp is None and isinstance(e, STALE):
                    continue  # server closed the idle connection: reconnect once
                raise io_fail(e, where) from None
        raise Fail("connection", retry=True)  # not reached

    def _response(self, resp, sock, deadline, key, where=""):
        code = resp.status
        if code == 200:
            return code, None, self._read_body(resp, sock, deadline)
        if code in REDIRECTS:
            try:
                self._read_body(resp, sock, deadline, limit=DRAIN_MAX)
            except Fail:
                self._drop(key)  # big redirect body: just drop the connection
            return code, resp.getheader("Location"), None
        if code == 429 or 500 <= code <= 599:
            raise Fail(
                f"http_{code}",
                retry=True,
                after=retry_after(resp.getheader("Retry-After")),
                detail=f"HTTP {code} {resp.reason} from {where}",
            )
        raise Fail(f"http_{code}", detail=f"HTTP {code} {resp.reason} from {where}")  # other 4xx, ...: no retry

    def _read_body(self, resp, sock, deadline, limit: int | None = None) -> bytes:
        """Stream the body, aborting over ``limit`` bytes or past the deadline."""
        limit = self.max_bytes if limit is None else limit
        cl = (resp.getheader("Content-Length") or "").strip()
        declared = int(cl) if cl.isdigit() else None
        if declared is not None and declared > limit:
            raise Fail("oversize", detail=f"body of {declared} bytes is over the limit {limit}")
        buf = bytearray()
        while declared is None or len(buf) < declared:
            sock.settimeout(remaining(deadline))
            chunk = resp.read1(CHUNK)  # at most one recv: the deadline stays exact
            if not chunk:
                break
            buf += chunk
            if len(buf) > limit:  # no or lying Content-Length
                raise Fail("oversize", detail=f"body over the limit of {limit} bytes")  # no or lying Content-Length
        if declared is not None and len(buf) < declared:
            raise Fail("connection", retry=True, detail="connection closed mid-body")
        resp.close()  # marks the response done, keeps the connection
        self._count("bytes", len(buf))
        return bytes(buf)

    # -- body -> stamp --------------------------------------------------------------------
    def _decode(self, body: bytes, where: str = "") -> np.ndarray:
        s = self.spec.stamp_pixels
        try:
            with Image.open(io.BytesIO(body)) as im:
                w, h = im.size  # header only: checked before decoding pixels
                if im.mode not in ("RGB", *OPAQUE_MODES) or w != h:
                    raise Fail(Status.BAD_IMAGE, detail=f"{where} sent a {w}x{h} {im.mode} image, not a square RGB one")
                check_size(w, h, s)  # small_image / image_too_large: ImageRejected
                if im.format == "JPEG" and not body.rstrip(b"\0\r\n ").endswith(b"\xff\xd9"):
                    raise Fail("bad_body", detail=f"{where} sent a truncated JPEG")  # also if LOAD_TRUNCATED_IMAGES
                # corrupt / cut-short JPEG data: ImageRejected bad_image; else decoded once, here
                arr = check_jpeg(body) if im.format == "JPEG" else None
                if arr is None and im.mode in OPAQUE_MODES:
                    arr = opaque_rgb(im)  # transparent pixels: ImageRejected bad_image
                elif arr is None:
                    im.load()
                    arr = np.asarray(im, dtype=np.uint8)
                check_pixels(arr)  # blank / JPEG grey fill, at its own size
                if w != s:
                    arr = np.asarray(
                        Image.fromarray(arr, "RGB").resize((s, s), Image.Resampling.BILINEAR), dtype=np.uint8
                    )
        except (Fail, ImageRejected):
            raise
        except Image.DecompressionBombError:  # PIL's own pixel limit, from the header
            raise ImageRejected(Status.IMAGE_TOO_LARGE, f"{where} sent an image of too many pixels") from None
        except Exception:  # not an image, truncated, corrupt
            raise Fail("bad_body", detail=f"{where} sent a body that is not an image") from None
        if arr.shape != (s, s, 3):
            raise Fail(Status.BAD_IMAGE, detail=f"{where} sent an image of shape {arr.shape}")
        return arr

    def _count(self, key: str, n: int = 1) -> None:
        with self._lock:
            self.stats[key] += n
