"""HTTP plumbing of the cutout-service source (:mod:`mergerscan.cutouts.service`): limits, the
per-process request-rate limiter, one failed attempt (:class:`Fail`) and URL checks."""

from __future__ import annotations

import http.client
import socket
import ssl
import threading
import time
from email.utils import parsedate_to_datetime
from urllib.parse import urlsplit

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


def valid_url(url: str):
    parts = urlsplit(url)
    try:
        ok = parts.scheme.lower() in SCHEMES and bool(parts.hostname) and (parts.port or 1) > 0
    except ValueError:  # bad port
        ok = False
    return parts if ok else None
