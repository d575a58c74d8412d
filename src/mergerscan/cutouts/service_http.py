"""HTTP plumbing of the cutout-service source (:mod:`mergerscan.cutouts.service`): limits, the
per-process request-rate limiter, one failed attempt (:class:`Fail`), the URL check
(:func:`check_url`) and the deadline of one exchange (:class:`Deadline`, :func:`connect`).

A socket timeout bounds one read, and restarts with every byte: a server trickling its status
line a byte at a time would hold a request for ever.  So each exchange has a watchdog that shuts
the socket down at its deadline (the blocked read returns at once), the host name is resolved on
a helper thread waited for no longer than the deadline, and connect and the TLS handshake run on
a socket the watchdog already holds."""

from __future__ import annotations

import contextlib
import http.client
import ipaddress
import re
import socket
import ssl
import threading
import time
from email.utils import parsedate_to_datetime
from urllib.parse import SplitResult, urlsplit

from .redact import redact_url

SCHEMES = ("http", "https")
REDIRECTS = (301, 302, 303, 307, 308)
MAX_REDIRECTS = 5
RETRY_AFTER_MAX = 10.0  # s; a longer Retry-After gives the row up
BACKOFF_MAX = 30.0  # s; cap of one backoff sleep
DRAIN_MAX = 64 * 1024  # bytes of a redirect body read to keep the connection
CHUNK = 64 * 1024
HEADERS = {"User-Agent": "mergerscan (cutout fetch)", "Accept": "image/jpeg, image/*;q=0.8"}
# a dropped keep-alive connection shows up as one of these on the next request
STALE = (http.client.BadStatusLine, ConnectionResetError, BrokenPipeError, ConnectionAbortedError)
UNREACHABLE_ROWS = 8
NETWORK = ("connection", "dns", "tls", "timeout")


class RateLimit:
    """At most ``rate`` request starts per second (evenly spaced), shared by threads."""

    def __init__(self, rate: float):
        self.interval, self.next, self.lock = 1.0 / rate, 0.0, threading.Lock()

    def wait(self) -> None:
        with self.lock:
            now = time.monotonic()
            t = max(now, self.next)
            self.next = t + self.interval
        if t > now:
            time.sleep(t - now)


_LIMITS: dict = {}
_LIMITS_LOCK = threading.Lock()


def limit_for(netloc: str, rate: float) -> RateLimit:
    with _LIMITS_LOCK:
        return _LIMITS.setdefault((netloc, float(rate)), RateLimit(rate))


class Fail(Exception):
    """One attempt failed for ``reason``; ``retry``: another attempt may help."""

    def __init__(self, reason: str, retry: bool = False, after: float | None = None, detail: str | None = None):
        super().__init__(reason)
        self.reason, self.retry, self.after = reason, retry, after
        self.detail = detail or reason.replace("_", " ")


def io_fail(e: BaseException, where: str = "") -> Fail:
    if isinstance(e, TimeoutError):  # socket.timeout is TimeoutError (3.10+)
        return Fail("timeout", retry=True, detail=f"timeout from {where}")
    if isinstance(e, socket.gaierror):  # no DNS: typically no network at all
        return Fail("dns", retry=True, detail=f"no DNS answer for {where}")
    if isinstance(e, ssl.SSLCertVerificationError):
        return Fail("tls", detail=f"TLS certificate not accepted by {where}")
    if isinstance(e, ConnectionRefusedError):
        return Fail("connection", retry=True, detail=f"connection refused by {where}")
    text = getattr(e, "strerror", None) or str(e) or type(e).__name__
    return Fail("connection", retry=True, detail=f"connection to {where} failed: {text}")


def retry_after(value: str | None) -> float | None:
    """Seconds from a Retry-After header (delta-seconds or HTTP-date); None if absent/bad."""
    if not value:
        return None
    v = value.strip()
    if v.isdigit():
        return float(v)
    try:
        return max(0.0, parsedate_to_datetime(v).timestamp() - time.time())
    except (TypeError, ValueError, IndexError, OverflowError):
        return None


def host_port(parts) -> str:
    """host:port for messages - never the userinfo of the URL (credentials)."""
    port = parts.port or (443 if parts.scheme.lower() == "https" else 80)
    host = parts.hostname or "?"
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


_HOST = re.compile(r"[A-Za-z0-9_](?:[A-Za-z0-9_.-]*[A-Za-z0-9_])?\.?")
_UNSENDABLE = re.compile(r"[\x00-\x20\x7f]")  # http.client refuses these in a request target


def ascii_host(host: str) -> str:
    """A host name as sent (IDNA for a non-ASCII one); '' if it has no such form."""
    try:
        return host.encode("idna").decode("ascii")
    except UnicodeError:
        return ""


def check_url(url: str) -> SplitResult:
    """The parts of a cutout-service URL: http or https, a valid host name or IP address (IPv6 in
    brackets), a port in 1..65535, no space or control character in its path and query; else
    ValueError, one line, the URL redacted."""
    shown = redact_url(str(url))

    def bad(why: str) -> ValueError:
        return ValueError(f"{shown}: {why}")

    try:
        parts = urlsplit(str(url))
        port = parts.port
    except ValueError as exc:  # an unclosed '[', a port that is not a number or out of range
        raise bad(f"not a valid URL ({exc})") from None
    if parts.scheme.lower() not in SCHEMES:
        raise bad(
            f"only http:// and https:// URLs are supported, not {parts.scheme + ':' if parts.scheme else 'a path'}"
        )
    host = parts.hostname or ""
    if not host:
        raise bad("no host name")
    if parts.netloc.rsplit("@", 1)[-1].startswith("["):
        try:
            ipaddress.IPv6Address(host.split("%", 1)[0])
        except ValueError:
            raise bad(f"[{host}] is not an IPv6 address") from None
    else:
        name = ascii_host(host)
        if not _HOST.fullmatch(name) or ".." in name:
            raise bad(f"{host!r} is not a valid host name")
        if all(label.isdigit() for label in name.rstrip(".").split(".")):  # a number, not a name
            try:
                ipaddress.IPv4Address(name.rstrip("."))
            except ValueError:
                raise bad(f"{host!r} is not an IPv4 address") from None
    if port is not None and not 1 <= port <= 65535:
        raise bad(f"port {port} is not in 1..65535")
    if _UNSENDABLE.search(parts.path + parts.query):
        raise bad("a space or control character in its path or query (write a space as %20)")
    return parts


def remaining(deadline: float) -> float:
    """Seconds left before ``deadline`` (time.monotonic()); Fail("timeout") when none."""
    left = deadline - time.monotonic()
    if left <= 0:
        raise Fail("timeout", retry=True, detail="timeout")
    return left


class Deadline:
    """``with Deadline(deadline, where) as d:`` one exchange; ``d.watch(sock)`` hands the socket to a
    watchdog that shuts it down at the deadline, however slowly the peer trickles bytes.  Leaving
    the block after the watchdog fired raises Fail("timeout") (a read it cut short may look like a
    complete answer)."""

    def __init__(self, deadline: float, where: str):
        self.deadline, self.where, self.started = deadline, where, time.monotonic()
        self.fired, self._done, self._sock = False, False, None
        self._lock = threading.Lock()
        self._timer = threading.Timer(max(0.0, deadline - self.started), self._fire)
        self._timer.daemon = True

    def __enter__(self) -> Deadline:
        self._timer.start()
        return self

    def watch(self, sock) -> None:
        with self._lock:
            self._sock = sock
            if self.fired:
                self._shutdown()

    def _fire(self) -> None:
        with self._lock:
            if not self._done:
                self.fired = True
                self._shutdown()

    def _shutdown(self) -> None:
        if self._sock is not None:
            with contextlib.suppress(OSError):  # the TCP socket under a TLS one too: a blocked read returns
                socket.socket.shutdown(self._sock, socket.SHUT_RDWR)

    def __exit__(self, exc_type, exc, tb) -> None:
        with self._lock:
            self._done = True
            fired = self.fired
        self._timer.cancel()
        if fired and (exc is None or isinstance(exc, (OSError, http.client.HTTPException, Fail))):
            took = self.deadline - self.started
            raise Fail("timeout", retry=True, detail=f"timeout: no complete answer from {self.where} in {took:.3g} s")


def resolve(host: str, port: int, deadline: float) -> list:
    """getaddrinfo for a TCP connection, waited for until ``deadline`` (a resolver can take its
    own time, with no timeout of ours); an IP address is used as it is."""
    try:
        return socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_NUMERICHOST)
    except socket.gaierror:
        pass
    box: dict = {}

    def look() -> None:
        try:
            box["ok"] = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        except OSError as exc:
            box["error"] = exc

    t = threading.Thread(target=look, name="cutout-service-dns", daemon=True)
    t.start()
    t.join(remaining(deadline))
    if t.is_alive():
        raise Fail("timeout", retry=True, detail=f"timeout: no DNS answer for {host} in time")
    if "error" in box:
        raise box["error"]
    return box["ok"]


_TLS: list = []


def _tls_context() -> ssl.SSLContext:
    if not _TLS:  # as http.client's default (certificates and host names verified)
        ctx = ssl.create_default_context()
        ctx.set_alpn_protocols(["http/1.1"])
        _TLS.append(ctx)
    return _TLS[0]


def connect(conn: http.client.HTTPConnection, parts: SplitResult, d: Deadline) -> None:
    """Open ``conn``'s socket (and TLS) within the deadline of ``d``, watched by it."""
    port = parts.port or (443 if parts.scheme.lower() == "https" else 80)
    err: OSError | None = None
    for family, kind, proto, _, addr in resolve(conn.host, port, d.deadline):
        sock = socket.socket(family, kind, proto)
        d.watch(sock)
        try:
            sock.settimeout(remaining(d.deadline))
            sock.connect(addr)
            break
        except OSError as exc:
            sock.close()
            err = exc
    else:
        raise err or OSError(f"no address for {conn.host}")
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    if parts.scheme.lower() == "https":
        try:
            sock = _tls_context().wrap_socket(sock, server_hostname=conn.host, do_handshake_on_connect=False)
            d.watch(sock)
            sock.settimeout(remaining(d.deadline))
            sock.do_handshake()
        except BaseException:
            sock.close()
            raise
    conn.sock = sock
