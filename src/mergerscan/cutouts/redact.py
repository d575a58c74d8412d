"""Credentials out of URLs and command lines before they are stored or shown (summary.json, the
report, messages on stderr, exceptions, logs).

URLs are parsed, not pattern-matched.  A URL of any scheme (``http``, ``https``, ``ftp``, ``s3``,
``file``, a site's own) is split as RFC 3986 does - ``scheme ":" "//" authority path ["?" query]
["#" fragment]`` - and

* its whole userinfo (``user:password@``) becomes ``REDACTED@``: user names are tokens too in
  many services (``https://TOKEN@host``), and a run's identity never depends on them;
* the value of every query, fragment (``#access_token=...``) or path (``;jsessionid=...``)
  parameter whose name is a secret's (:func:`secret_name`: token, key, api_key, secret,
  password, passwd, pwd, sig, signature, auth, credential, session, ...; any case, any
  separator, %-encoded too) becomes ``REDACTED``.

A command line is split into its arguments (a list, or ``shlex`` for a string) and each one is
redacted on its own (``--flag=URL``, ``KEY=VALUE`` with a secret KEY, the value after a
``--password``-like flag), so a quote, a space or an ``@`` inside a password cannot end the URL
early.  Free text (a message) has its ``scheme://`` runs redacted, and every secret this process
has redacted before (at least ``MIN_KNOWN`` characters, raw and %-decoded) replaced, which
catches a library repeating part of a URL in its own words.
"""

from __future__ import annotations

import re
import shlex
import threading
from collections.abc import Iterable, Mapping
from urllib.parse import unquote, unquote_plus

REDACTED = "REDACTED"
# a parameter name is a secret's if one of its words is one of these ...
SECRET_WORDS = frozenset(
    {
        "key",
        "apikey",
        "token",
        "secret",
        "password",
        "passwd",
        "passphrase",
        "pass",
        "pwd",
        "auth",
        "authorization",
        "sig",
        "signature",
        "credential",
        "credentials",
        "session",
        "sessionid",
        "sas",
        "jwt",
        "bearer",
        "otp",
    }
)
# ... or its letters contain one of these (accesstoken, apiKey, clientsecret, X-Goog-Credential)
SECRET_PARTS = (
    "token",
    "secret",
    "passw",
    "passphrase",
    "signature",
    "credential",
    "apikey",
    "accesskey",
    "privatekey",
    "sessionid",
)
SECRET_PARAMS = tuple(sorted(SECRET_WORDS))  # kept for older imports
MIN_KNOWN = 5  # shorter secrets are not searched for in free text (they would match ordinary words)

_SCHEME = re.compile(r"([A-Za-z][A-Za-z0-9+.\-]*):")
_IN_TEXT = re.compile(r"[A-Za-z][A-Za-z0-9+.\-]*://\S*")
_WORDS = re.compile(r"[A-Z]+(?![a-z])|[A-Z]?[a-z]+|\d+")
_PORT = re.compile(r"\d*")
_NAME = re.compile(r"-*[A-Za-z_][\w.\-]*")
_TRAILING = "'\"),.;:]>}"
_known: set[str] = set()
_known_lock = threading.Lock()


def secret_name(name: str) -> bool:
    """Whether a parameter called ``name`` holds a secret (``api_key``, ``X-Amz-Signature``, ...)."""
    raw = unquote_plus(str(name)).strip()
    words = {w.lower() for w in _WORDS.findall(raw)}
    letters = re.sub(r"[^a-z0-9]", "", raw.lower())
    return bool(words & SECRET_WORDS) or letters in SECRET_WORDS or any(p in letters for p in SECRET_PARTS)


def _remember(secret: str) -> None:
    with _known_lock:
        for s in {secret, unquote(secret), unquote_plus(secret)}:
            if len(s) >= MIN_KNOWN:
                _known.add(s)


def _params(text: str, seps: str) -> str:
    """``a=1&token=x`` with the values of secret-named parameters redacted (other text as it was)."""
    parts = re.split(f"([{re.escape(seps)}])", text)
    for i in range(0, len(parts), 2):
        name, eq, value = parts[i].partition("=")
        if eq and secret_name(name) and value != REDACTED:
            _remember(value)
            parts[i] = f"{name}={REDACTED}"
    return "".join(parts)


def _authority_end(rest: str) -> int:
    m = re.search(r"[/?#]", rest)
    return m.start() if m else len(rest)


def _odd_port(authority: str) -> bool:
    """``host:xyz`` or ``host:``: not a host and port, so a password cut short by a ``/?#`` in it."""
    hostport = authority[authority.rfind("]") + 1 :] if authority.startswith("[") else authority
    return ":" in hostport and not (_PORT.fullmatch(hostport.rsplit(":", 1)[1]) and hostport.rsplit(":", 1)[1])


def redact_url(url: str) -> str:
    """``url`` with its userinfo and secret-named parameter values replaced by ``REDACTED`` (see
    the module docstring); text that is not a URL (a path) is returned as it is."""
    text = str(url)
    m = _SCHEME.match(text)
    if not m or len(m.group(1)) == 1:  # no scheme, or a Windows drive letter
        return text
    head, rest = text[: m.end()], text[m.end() :]
    if rest.startswith("//"):
        head, rest = head + "//", rest[2:]
        end = _authority_end(rest)
        authority, tail = rest[:end], rest[end:]
        if "@" in authority:
            _remember(authority.rsplit("@", 1)[0].partition(":")[2])
            authority = f"{REDACTED}@{authority.rsplit('@', 1)[1]}"
        elif "@" in tail and _odd_port(authority):  # an unencoded / ? # inside the password
            at = tail.rindex("@")
            _remember(authority.partition(":")[2] + tail[:at])
            authority, tail = f"{REDACTED}@", tail[at + 1 :]
        rest = authority + tail
        start = len(authority)
    else:
        start = 0
    body, hash_, fragment = rest[start:].partition("#")
    path, q, query = body.partition("?")
    path = _params(path, ";/")
    query = _params(query, "&;")
    fragment = _params(fragment, "&;")
    if hash_ and "=" not in fragment and query.rsplit("&", 1)[-1].endswith(f"={REDACTED}"):
        fragment = REDACTED  # a '#' inside the value of a secret parameter cut it short
    return head + rest[:start] + path + q + query + hash_ + fragment


def redact_argv(argv: Iterable[str]) -> list[str]:
    """Each argument redacted on its own: URLs, ``--flag=URL``, ``KEY=VALUE`` with a secret KEY,
    and the value after a flag named like a secret (``--password X``)."""
    out: list[str] = []
    after_secret_flag = False
    for arg in map(str, argv):
        if after_secret_flag:
            _remember(arg)
            out.append(REDACTED)
            after_secret_flag = False
            continue
        name, eq, value = arg.partition("=")
        if eq and _NAME.fullmatch(name) and secret_name(name.lstrip("-")):
            _remember(value)
            out.append(f"{name}={REDACTED}")
        elif eq and name.startswith("-"):
            out.append(f"{name}={redact_url(value)}")
        else:
            out.append(redact_url(arg))
            after_secret_flag = arg.startswith("--") and not eq and secret_name(arg.lstrip("-"))
    return out


def redact_command(command: str | Iterable[str]) -> str:
    """A command line (a string, parsed with shlex, or its arguments) redacted argument by
    argument and quoted back (:func:`shlex.join`)."""
    if isinstance(command, str):
        try:
            argv = shlex.split(command)
        except ValueError:  # unbalanced quotes: not a shell line, treat it as text
            return redact_text(command)
    else:
        argv = list(command)
    return shlex.join(redact_argv(argv))


def redact_options(options: Mapping | Iterable) -> dict:
    """A source's options with the values of secret-named ones redacted and URL values redacted."""
    items = options.items() if isinstance(options, Mapping) else options
    out = {}
    for k, v in items:
        if secret_name(str(k)) and v is not None:
            _remember(str(v))
            out[k] = REDACTED
        else:
            out[k] = redact_url(v) if isinstance(v, str) else v
    return out


def redact_text(text: str) -> str:
    """A message with every ``scheme://...`` run in it passed through :func:`redact_url` and every
    secret redacted earlier in this process replaced."""

    def one(m: re.Match) -> str:
        run = m.group(0)
        core = run.rstrip(_TRAILING)
        return redact_url(core) + run[len(core) :]

    out = _IN_TEXT.sub(one, str(text))
    with _known_lock:
        known = sorted(_known, key=len, reverse=True)
    for s in known:
        out = out.replace(s, REDACTED)
    return out
