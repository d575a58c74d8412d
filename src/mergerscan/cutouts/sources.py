"""The image-source protocol.  A source turns catalog rows into stamps; it never knows the engine.

``fetch(rows)`` receives a DataFrame with columns ``id`` (str), ``ra``, ``dec`` (float64, deg,
already validated) and, for the stamps source, optionally ``path``; it returns
``(stamps, status)``: uint8 ``(N, S, S, 3)`` stamps in the SkyServer convention described in
:mod:`mergerscan.cutouts.preprocess` (S = spec.stamp_pixels at spec.pixel_scale) and an
object array of status strings from :data:`mergerscan.catalogs.schema.STATUS`.  Rows whose
status is not scored get an all-zero stamp; a source also keeps ``examples``, the first reason
(one line) per failure status it returned, for the run summary.  Every source passes its images
through :mod:`mergerscan.cutouts.quality` (the one stamp check).  A source is created per
partition task (so its caches are bounded by the partition) and closed after it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import numpy as np
import pandas as pd

from .preprocess import PreprocessSpec


class ImageSource(Protocol):
    name: str
    examples: dict

    def fetch(self, rows: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]: ...

    def close(self) -> None: ...


@dataclass(frozen=True)
class SourceConfig:
    """What the pipeline knows about the image source: picklable, sent to workers."""
    kind: str                      # "stamps" | "frames" | "service"
    location: str                  # directory or URL
    options: tuple = ()            # extra (key, value) pairs, e.g. (("timeout", 10.0),)

    def fingerprint(self) -> str:
        return f"{self.kind}:{redact_url(self.location)}:{sorted(self.options)}"

    @property
    def shown(self) -> str:
        """The location as stored or printed: credentials in a URL redacted (:func:`redact_url`)."""
        return redact_url(self.location)


# query parameters whose values are secrets (matched case-insensitively, as substrings)
SECRET_PARAMS = ("token", "key", "secret", "password", "passwd", "pwd", "auth", "signature", "sig",
                 "credential", "session", "sas")
REDACTED = "REDACTED"


def redact_url(url: str) -> str:
    """``url`` with its credentials replaced by REDACTED: the password of ``user:pass@`` (the user
    name too), and the values of query parameters named like secrets (``token``, ``api_key``,
    ``access_token``, ``X-Amz-Signature``, ``sig``, ...).  Anything that is not an http(s) URL is
    returned as it is."""
    from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

    text = str(url)
    if not text.lower().startswith(("http://", "https://")):
        return text
    try:
        parts = urlsplit(text)
        netloc = parts.netloc
        if "@" in netloc:
            netloc = f"{REDACTED}@{netloc.rsplit('@', 1)[1]}"
        query = parts.query
        if query:
            pairs = parse_qsl(query, keep_blank_values=True)
            pairs = [(k, REDACTED if any(w in k.lower() for w in SECRET_PARAMS) else v) for k, v in pairs]
            query = urlencode(pairs, safe="*:/")
        return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))
    except ValueError:
        return f"{text.split(':', 1)[0]}://{REDACTED}"


def redact_text(text: str) -> str:
    """Every http(s) URL inside ``text`` (a command line, a message) passed through :func:`redact_url`."""
    import re
    return re.sub(r"https?://[^\s'\"]+", lambda m: redact_url(m.group(0)), str(text), flags=re.IGNORECASE)


def open_source(config: SourceConfig, spec: PreprocessSpec) -> ImageSource:
    opts = dict(config.options)
    if config.kind == "stamps":
        from .stamps import StampSource
        return StampSource(config.location, spec, **opts)
    if config.kind == "frames":
        from .frames import FrameSource
        return FrameSource(config.location, spec, **opts)
    if config.kind == "service":
        from .service import ServiceSource
        return ServiceSource(config.location, spec, **opts)
    raise ValueError(f"unknown image source kind {config.kind!r}")


def empty_stamps(n: int, spec: PreprocessSpec) -> np.ndarray:
    return np.zeros((n, spec.stamp_pixels, spec.stamp_pixels, 3), np.uint8)
