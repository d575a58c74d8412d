"""The image sources' public names in one import (kept for the pipeline, the report and tests).

What a source is: :mod:`mergerscan.cutouts.base`; how one is added, found by kind and opened:
:mod:`mergerscan.cutouts.registry`; URL redaction: :mod:`mergerscan.cutouts.redact`.
"""

from __future__ import annotations

from .base import ImageSource, SourceBase, SourceOptions, empty_stamps
from .redact import (
    REDACTED,
    SECRET_PARAMS,
    redact_argv,
    redact_command,
    redact_options,
    redact_text,
    redact_url,
    secret_name,
)
from .registry import SourceConfig, open_source, register_source, registered_sources, source_class

__all__ = [
    "REDACTED",
    "SECRET_PARAMS",
    "ImageSource",
    "SourceBase",
    "SourceConfig",
    "SourceOptions",
    "empty_stamps",
    "open_source",
    "redact_argv",
    "redact_command",
    "redact_options",
    "redact_text",
    "redact_url",
    "register_source",
    "registered_sources",
    "secret_name",
    "source_class",
]
