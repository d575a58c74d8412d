"""Credentials out of URLs before they are stored or shown (summary.json, the report, messages)."""

from __future__ import annotations

import re
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

# query parameters whose values are secrets (matched case-insensitively, as substrings)
SECRET_PARAMS = (
    "token",
    "key",
    "secret",
    "password",
    "passwd",
    "pwd",
    "auth",
    "signature",
    "sig",
    "credential",
    "session",
    "sas",
)
REDACTED = "REDACTED"


def redact_url(url: str) -> str:
    """``url`` with its credentials replaced by REDACTED: the password of ``user:pass@`` (the user
    name too), and the values of query parameters named like secrets (``token``, ``api_key``,
    ``access_token``, ``X-Amz-Signature``, ``sig``, ...).  Anything that is not an http(s) URL is
    returned as it is."""
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
    return re.sub(r"https?://[^\s'\"]+", lambda m: redact_url(m.group(0)), str(text), flags=re.IGNORECASE)
