"""The image source used when a command line names none.

Built in: SDSS SkyServer's ImgCutout JPEG service (the training stamps came from it), asked for
the engine's stamp size and pixel scale (256 px at 0.396"/px for the packaged engine), politely:
``SKYSERVER_OPTIONS`` (4 requests at a time, at most 8 requests/s per worker process).

Read by the command line only (``process-catalog``: :func:`default_source`); the arguments
dataclass never reads the environment, and with no source means :func:`builtin_default`.

A site sets its own default once, as source flags in the same spelling as on the command line,
in ``$MERGERSCAN_DEFAULT_SOURCE`` (wins) or in ``~/.config/mergerscan/default-source``
(``$XDG_CONFIG_HOME`` is honoured), e.g. ``--frames /data/sdss/frames`` on a cluster with an
SDSS frame mirror, or ``--cutout-service https://mirror.example/getjpeg --service-rate 20``.
"""

from __future__ import annotations

import argparse
import difflib
import os
import shlex
from dataclasses import dataclass
from pathlib import Path

from .redact import redact_command, redact_url
from .source_choice import CutoutService, FramesDir, ImageSource, ServiceOptions, StampsDir

SKYSERVER = "https://skyserver.sdss.org/dr17/SkyServerWS/ImgCutout/getjpeg"
SKYSERVER_OPTIONS: dict = {"max_concurrency": 4, "max_rate": 8.0}
ENV = "MERGERSCAN_DEFAULT_SOURCE"
LARGE_FOR_SERVICE = 100_000  # rows; above this a web service is the slow way: hint towards --frames


def config_file() -> Path:
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "mergerscan" / "default-source"


@dataclass(frozen=True)
class DefaultSource:
    """The image source of a run that names none, and where that choice came from."""

    source: ImageSource
    origin: str = "built-in"  # "built-in", "$MERGERSCAN_DEFAULT_SOURCE" or the config file's path


def builtin_default() -> DefaultSource:
    """SDSS SkyServer's ImgCutout, politely (what a run with no source and no site default reads)."""
    return DefaultSource(CutoutService(SKYSERVER, ServiceOptions(**SKYSERVER_OPTIONS)))


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="default image source", add_help=False, exit_on_error=False, allow_abbrev=False)
    for opt in ("--images", "--frames", "--cutout-service"):
        p.add_argument(opt)
    for opt, t in (
        ("--service-timeout", float),
        ("--service-retries", int),
        ("--service-concurrency", int),
        ("--service-rate", float),
    ):
        p.add_argument(opt, type=t)
    return p


SERVICE_FLAGS = {
    "service_timeout": "timeout",
    "service_retries": "retries",
    "service_concurrency": "max_concurrency",
    "service_rate": "max_rate",
}


def parse_flags(text: str, origin: str) -> DefaultSource:
    """Source flags (``--frames DIR`` ...) -> DefaultSource; ValueError (one line) naming ``origin``."""
    try:
        ns, rest = _parser().parse_known_args(shlex.split(text, comments=True))
    except (argparse.ArgumentError, ValueError) as exc:
        raise ValueError(f"default image source in {origin}: {exc}") from None
    if rest:
        flags = [f for a in _parser()._actions for f in a.option_strings]
        near = difflib.get_close_matches(rest[0].split("=")[0], flags, n=1)
        hint = f"; did you mean {near[0]}?" if near else ""
        raise ValueError(
            f"default image source in {origin}: unknown {redact_command(rest)!r}{hint} "
            "(expected --images DIR, --frames DIR or --cutout-service URL [--service-...])"
        )
    given = [v for v in (ns.images, ns.frames, ns.cutout_service) if v]
    if len(given) != 1:
        raise ValueError(f"default image source in {origin}: give exactly one of --images, --frames, --cutout-service")
    opts = ServiceOptions(**{SERVICE_FLAGS[k]: v for k, v in vars(ns).items() if k in SERVICE_FLAGS})
    if ns.cutout_service:
        return DefaultSource(CutoutService(ns.cutout_service, opts), origin)
    return DefaultSource(StampsDir(ns.images) if ns.images else FramesDir(ns.frames), origin)


def default_source() -> DefaultSource:
    """``$MERGERSCAN_DEFAULT_SOURCE``, else the config file, else SDSS SkyServer (the command line's)."""
    text = os.environ.get(ENV, "").strip()
    if text:
        return parse_flags(text, f"${ENV}")
    cfg = config_file()
    if cfg.is_file():
        text = cfg.read_text().strip()
        if text:
            return parse_flags(text, str(cfg))
    return builtin_default()


def startup_line(default: DefaultSource) -> str:
    src = default.source
    if isinstance(src, CutoutService):
        what = f"cutout service {redact_url(src.url)}"
    else:
        what = f"{'frames' if isinstance(src, FramesDir) else 'stamps'} {getattr(src, 'directory', '')}"
    if default.origin == "built-in" and isinstance(src, CutoutService):
        o = src.options
        return (
            f"process-catalog: no image source given: using SDSS SkyServer ImgCutout {redact_url(src.url)} "
            f"({o.max_concurrency} requests at a time, <= {o.max_rate:g}/s per worker); set a site "
            f"default in ${ENV} or {config_file()}"
        )
    return f"process-catalog: no image source given: using {what} (default from {default.origin})"


def large_catalog_hint(nrows: int, rate: float | None, workers: int) -> str | None:
    """One line towards --frames when a web service would take long (> LARGE_FOR_SERVICE rows)."""
    if nrows <= LARGE_FOR_SERVICE:
        return None
    eta = f" (about {nrows / (rate * workers) / 3600:.1f} h at {rate * workers:g} requests/s)" if rate else ""
    return (
        f"process-catalog: hint: {nrows:,} rows is a lot for a web cutout service{eta}; with a local "
        f"copy of the SDSS frames, --frames DIR cuts stamps far faster"
    )
