"""The run summary (``OUT/summary.json``) as a typed object.

:class:`RunSummary` round-trips the file exactly: ``RunSummary.from_json(text).to_json() == text``
for every summary process-catalog writes (same keys, same order, same values).  It is also a
read-only mapping of those keys (``s["rows"]``, ``s.get("select")``), so code that read the
summary as a dict keeps working.

Reading is tolerant, on purpose: a key this version does not know is **kept** (in ``extra``,
written back after the known keys), so a summary written by a newer mergerscan survives being
read and rewritten here; a missing key takes its default (summaries written by hand, by tests,
or before a key existed).  A key with the wrong type is refused (:class:`SummaryError`).

A top-level module: the pipeline writes summaries and the report reads them (run_layout.py says why).
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field, fields
from typing import Any


class SummaryError(ValueError):
    """summary.json that cannot be a run summary; one line."""


@dataclass
class SourceSummary:
    """The image source: kind (stamps | frames | service), where (credentials redacted), options."""

    kind: str = ""
    location: str = ""
    options: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {"kind": self.kind, "location": self.location, "options": dict(self.options)}

    @classmethod
    def from_dict(cls, d: Mapping | str | None) -> SourceSummary:
        if isinstance(d, str):  # hand-written summaries name only the kind
            return cls(kind=d)
        d = d or {}
        return cls(
            kind=str(d.get("kind", "")), location=str(d.get("location", "")), options=dict(d.get("options") or {})
        )


@dataclass
class Failure:
    """One reason rows were not scored: the status, how many rows, one example (failures.py)."""

    status: str
    count: int
    example: str = ""

    def to_dict(self) -> dict:
        return {"status": self.status, "count": self.count, "example": self.example}

    @classmethod
    def from_dict(cls, d: Mapping) -> Failure:
        return cls(status=str(d["status"]), count=int(d["count"]), example=str(d.get("example", "")))


# summary.json's keys in the order process-catalog writes them; the optional ones appear only
# when set: select + not_selected (--select), fetch_failures (a service failed rows), domain +
# out_of_domain + beyond_image_threshold + domain_rules (--domain; absent in runs before it),
# embeddings (--embeddings)
KEY_ORDER = (
    "rows",
    "scored",
    "flagged",
    "select",
    "not_selected",
    "domain",
    "out_of_domain",
    "beyond_image_threshold",
    "domain_rules",
    "embeddings",
    "fetch_failures",
    "status",
    "mergers",
    "threshold",
    "operating_point",
    "partitions",
    "seconds",
    "objects_per_s",
    "engine",
    "engine_sha256",
    "mergerscan_version",
    "catalog",
    "command",
    "engine_path",
    "source",
    "id_column",
    "keep",
    "path_column",
    "fits",
    "parquet",
    "failures",
    "scored_notes",
    "warnings",
    "retryable",
    "exit_status",
)
OPTIONAL = (
    "select",
    "not_selected",
    "fetch_failures",
    "domain",
    "out_of_domain",
    "beyond_image_threshold",
    "domain_rules",
    "embeddings",
    "operating_point",
    "scored_notes",
)
# set after summary.json is written (the report is built from it); in the object, not in the file
AFTER_WRITE = ("report", "report_error")


@dataclass
class RunSummary(Mapping):
    rows: int = 0
    scored: int = 0  # ok + edge
    flagged: int = 0  # rows - scored - not_selected - out_of_domain
    status: dict[str, int] = field(default_factory=dict)  # rows per status, most frequent first
    mergers: int = 0
    threshold: float = 0.5
    # the threshold's rule, target and expected purity/completeness at a prevalence, with 95 %
    # intervals (engines.operating.OperatingPoint.to_dict); None in summaries of older runs
    operating_point: dict[str, Any] | None = None
    partitions: int = 0
    seconds: float = 0.0
    objects_per_s: float | None = None
    engine: str = ""
    engine_sha256: str = ""
    mergerscan_version: str = ""
    catalog: str = ""
    command: str = ""
    engine_path: str | None = None
    source: SourceSummary = field(default_factory=SourceSummary)
    id_column: str = "objid"  # the output id column: objid (integer ids) or id
    keep: list[str] = field(default_factory=list)
    path_column: str | None = None  # output name of the stamp-path column (the report's cutouts)
    fits: str = ""
    parquet: str = ""
    failures: list[Failure] = field(default_factory=list)  # leading reasons first
    scored_notes: dict[str, str] | None = None  # an example of a scored status that has one (edge: sky fraction)
    warnings: list[str] = field(default_factory=list)
    retryable: int = 0  # rows a re-run retries (TRANSIENT statuses)
    exit_status: int = 0
    select: str | None = None  # --select EXPR (then not_selected is set too)
    not_selected: int | None = None
    # --domain: {"mode", "catalog_rules" (applied, in words), "image_threshold" (None: not applied), "limits"}
    domain: dict[str, Any] | None = None
    out_of_domain: int | None = None  # rows with status out_of_domain (catalog rules; not scored)
    beyond_image_threshold: int | None = None  # scored rows the image check put outside (never is_merger)
    domain_rules: dict[str, int] | None = None  # {rule in words: rows}, both halves, most frequent first
    fetch_failures: dict[str, int] | None = None  # why a service failed rows, most frequent first
    # --embeddings N: the column's provenance (dimension, k, explained_variance, engine, fitted_on)
    embeddings: dict[str, Any] | None = None
    report: str | None = None  # OUT/report/index.html once built
    report_error: str | None = None  # why the report could not be built
    extra: dict[str, Any] = field(default_factory=dict)  # keys of a newer mergerscan, kept as read
    # keys of KEY_ORDER the file lacked (an older run, a hand-written summary): their values above
    # are defaults, which a reader may not want to trust (the report refuses a missing threshold)
    missing: frozenset[str] = field(default=frozenset(), compare=False, repr=False)

    # ---------------------------------------------------------------- dict / JSON
    def to_dict(self, with_report: bool = True) -> dict:
        """The summary as summary.json holds it; ``with_report``: also ``report``/``report_error``
        when set (they are not in the file: the report is built after it is written)."""
        d: dict[str, Any] = {}
        for k in KEY_ORDER:
            v = getattr(self, k)
            if k in OPTIONAL and v is None:
                continue
            if k == "source":
                v = v.to_dict()
            elif k == "failures":
                v = [f.to_dict() for f in v]
            elif isinstance(v, (dict, list)):
                v = type(v)(v)
            d[k] = v
        d.update(self.extra)
        if with_report:
            d.update({k: getattr(self, k) for k in AFTER_WRITE if getattr(self, k) is not None})
        return d

    def to_json(self) -> str:
        """The text of summary.json (indent 1, as process-catalog has always written it)."""
        return json.dumps(self.to_dict(with_report=False), indent=1)

    @classmethod
    def from_dict(cls, d: Mapping) -> RunSummary:
        known = {f.name for f in fields(cls)} - {"extra", "missing"}
        kw: dict[str, Any] = {}
        try:
            for k, v in d.items():
                if k not in known:
                    continue
                if k == "source":
                    v = SourceSummary.from_dict(v)
                elif k == "failures":
                    v = [Failure.from_dict(f) for f in v or []]
                kw[k] = v
            extra = {k: v for k, v in d.items() if k not in known}
            s = cls(**kw, extra=extra, missing=frozenset(KEY_ORDER) - d.keys())
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise SummaryError(f"not a run summary: {type(exc).__name__}: {exc}") from None
        s._check_types()
        return s

    @classmethod
    def from_json(cls, text: str) -> RunSummary:
        try:
            d = json.loads(text)
        except ValueError as exc:
            raise SummaryError(f"summary is not JSON: {exc}") from None
        if not isinstance(d, dict):
            raise SummaryError(f"summary is a JSON {type(d).__name__}, not an object")
        return cls.from_dict(d)

    def _check_types(self) -> None:
        ints = ("rows", "scored", "flagged", "mergers", "partitions", "retryable", "exit_status")
        bad = [k for k in ints if not isinstance(getattr(self, k), int) or isinstance(getattr(self, k), bool)]
        bad += [k for k in ("threshold", "seconds") if not isinstance(getattr(self, k), (int, float))]
        bad += [k for k in ("status", "extra") if not isinstance(getattr(self, k), dict)]
        bad += [k for k in ("keep", "warnings") if not isinstance(getattr(self, k), list)]
        if bad:
            raise SummaryError(f"not a run summary: {', '.join(bad)} of the wrong type")

    # ---------------------------------------------------------------- read-only mapping of the keys
    def __getitem__(self, key: str) -> Any:
        d = self.to_dict()
        return d[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self.to_dict())

    def __len__(self) -> int:
        return len(self.to_dict())
