"""What one partition task did: :class:`PartitionResult`, stored as the partition's done marker,
and :class:`RetryMarker`, what its retry marker says a re-run scores again.

The marker (``OUT/_work/scored/part-NNNNNN.json``, written by :class:`resume.ResumePlan`) is this
object's :meth:`PartitionResult.to_dict`, key for key as the pipeline has always written it (so a
run started by an earlier version resumes and finalizes): the optional keys appear only when they
say something (``fetch_failures`` when a service failed rows, ``domain_rules`` with
``beyond_image_threshold`` when a domain check set rows aside, ``no_domain_score`` when the backend
gave no image check, ``retry`` when a re-run will score rows again).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class PartitionResult:
    """One partition's summary: rows, status counts, examples, coordinates, timings, domain counts."""

    pid: int
    rows: int
    status: dict[str, int]  # status -> rows (catalogs.schema.Status values)
    name: str = ""
    mergers: int = 0
    seconds: float = 0.0
    fetch_seconds: float = 0.0
    infer_seconds: float = 0.0
    batch_size: int = 0
    started: float = 0.0
    finished: float = 0.0
    file: str | None = None  # the partition's output file, relative to the run directory
    examples: dict[str, str] = field(default_factory=dict)  # status -> one example (failures.note)
    coords: list[float] | None = None  # [ra_min, ra_max, dec_min, dec_max] (failures.coord_range)
    fetch_failures: dict[str, int] = field(default_factory=dict)  # a service's reasons -> rows
    domain_rules: dict[str, int] = field(default_factory=dict)  # why rows are out of the domain -> rows
    beyond_image_threshold: int = 0  # scored rows beyond the image check
    no_domain_score: int = 0  # scored rows for which the backend gave no domain_score
    retry: bool = False  # rows failed in a way a re-run retries (resume.ResumePlan)

    def to_dict(self) -> dict[str, Any]:
        """The marker's content (written with sorted keys: the order here does not matter)."""
        d: dict[str, Any] = {
            "pid": self.pid,
            "name": self.name,
            "rows": self.rows,
            "status": dict(self.status),
            "mergers": self.mergers,
            "seconds": self.seconds,
            "fetch_seconds": self.fetch_seconds,
            "infer_seconds": self.infer_seconds,
            "batch_size": self.batch_size,
            "finished": self.finished,
            "started": self.started,
            "file": self.file,
            "examples": dict(self.examples),
            "coords": self.coords,
        }
        if self.fetch_failures:
            d["fetch_failures"] = dict(self.fetch_failures)
        if self.domain_rules:
            d["domain_rules"] = dict(self.domain_rules)
            d["beyond_image_threshold"] = self.beyond_image_threshold
        if self.no_domain_score:
            d["no_domain_score"] = self.no_domain_score
        if self.retry:
            d["retry"] = True
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> PartitionResult:
        """A marker read back; a key it lacks takes its default (a marker without optional keys)."""
        return cls(
            pid=int(d["pid"]),
            rows=int(d["rows"]),
            status={str(k): int(v) for k, v in (d.get("status") or {}).items()},
            name=str(d.get("name", "")),
            mergers=int(d.get("mergers", 0)),
            seconds=float(d.get("seconds", 0.0)),
            fetch_seconds=float(d.get("fetch_seconds", 0.0)),
            infer_seconds=float(d.get("infer_seconds", 0.0)),
            batch_size=int(d.get("batch_size", 0)),
            started=float(d.get("started", 0.0)),
            finished=float(d.get("finished", 0.0)),
            file=d.get("file"),
            examples={str(k): str(v) for k, v in (d.get("examples") or {}).items()},
            coords=list(d["coords"]) if d.get("coords") is not None else None,
            fetch_failures={str(k): int(v) for k, v in (d.get("fetch_failures") or {}).items()},
            domain_rules={str(k): int(v) for k, v in (d.get("domain_rules") or {}).items()},
            beyond_image_threshold=int(d.get("beyond_image_threshold", 0)),
            no_domain_score=int(d.get("no_domain_score", 0)),
            retry=bool(d.get("retry", False)),
        )


@dataclass(frozen=True)
class RetryMarker:
    """A retry marker's content (``OUT/_work/retry/part-NNNNNN``, written by :class:`resume.ResumePlan`
    beside the done marker while the partition holds rows whose status is transient): those
    statuses and their rows.  :meth:`to_dict` is the JSON the pipeline has always written."""

    status: dict[str, int]  # transient status -> rows (catalogs.schema.TRANSIENT)
    rows: int

    @classmethod
    def of(cls, status: Mapping[str, int]) -> RetryMarker:
        """The marker for these transient status counts (``rows``: their sum)."""
        counts = {str(k): int(v) for k, v in status.items()}
        return cls(counts, sum(counts.values()))

    def to_dict(self) -> dict[str, Any]:
        return {"status": dict(self.status), "rows": self.rows}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> RetryMarker:
        """A marker read back; ``rows`` defaults to the statuses' sum."""
        status = {str(k): int(v) for k, v in (d.get("status") or {}).items()}
        return cls(status, int(d.get("rows", sum(status.values()))))
