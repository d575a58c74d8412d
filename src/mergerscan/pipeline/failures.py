"""Why rows were not scored, in one place: examples per status, warnings, the exit status.

Each partition task records, per status that is not scored, one example (the first it met: the
id and the reason in one line, from the image source or the pipeline) and the range of its
finite coordinates.  :func:`summarize` merges the partitions' records into the run summary:
``failures`` (the leading reasons, by count, with one example each), ``warnings`` (most rows
unscored, coordinates that look like radians or hours, a hint for the leading reason) and the
exit status of process-catalog (:data:`EXIT_NOTHING_SCORED` when no row could be scored).
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from ..catalogs.schema import SCORED, TRANSIENT, Status
from ..cutouts.redact import redact_text
from ..exit_codes import EXIT_NOTHING_SCORED, EXIT_OK
from .result import PartitionResult

# what to check when this reason leads
HINTS = {
    Status.NO_IMAGE: "stamp files are looked up as DIR/<id>.jpg|png|fits by the id column{id}: check --id-column, "
    "or name the files with --path-column",
    Status.OUTSIDE_FOOTPRINT: "no frame covers these positions: check that ra/dec are degrees (J2000) and that "
    "--frames points at the frames of this part of the sky",
    Status.FETCH_FAILED: "the cutout service could not be reached or answered errors: check the URL and the network "
    "(a re-run of the same command retries these rows)",
    Status.BAD_COORDS: "ra/dec are missing or out of range: check --ra-column/--dec-column (degrees, J2000)",
    Status.CORRUPT_FRAME: "the frames covering these positions are unreadable: check the files",
    Status.OUT_OF_DOMAIN: "most rows are outside the engine's training domain by their catalog columns (summary.json "
    "domain_rules says which rule); --domain off scores them anyway, --domain-limit widens a limit",
    Status.OUT_OF_MEMORY: "give each worker more memory (--memory-limit) or a smaller --batch-size, then re-run",
}


def note(examples: dict, status: str, text: str) -> None:
    """Keep the first example of ``status`` (one line, bounded, credentials redacted: it is stored;
    printable: an id holding a NUL, a control character or a lone surrogate is shown escaped, so
    printing the summary never fails)."""
    if status not in examples:  # scored statuses too: an `edge` example says how much is sky
        line = redact_text(" ".join(str(text).split()))[:300]
        examples[status] = "".join(c if c.isprintable() else ascii(c)[1:-1] for c in line)


def plain(value) -> str:
    """A catalog value as a user writes it: ``150.01`` (not ``np.float64(150.01)``), ``null``."""
    if value is None or value is pd.NA or value is pd.NaT:
        return "null"
    if isinstance(value, (bool, np.bool_)):
        return str(bool(value))
    if isinstance(value, (int, np.integer)):
        return str(int(value))
    if isinstance(value, (float, np.floating)):
        return repr(float(value))
    if isinstance(value, bytes):
        return value.decode("utf-8", "backslashreplace")
    return str(value)


def coord_range(ra: np.ndarray, dec: np.ndarray) -> list | None:
    """[ra_min, ra_max, dec_min, dec_max] over the finite values (None if none)."""
    ra, dec = np.asarray(ra, np.float64), np.asarray(dec, np.float64)
    ok = np.isfinite(ra) & np.isfinite(dec)
    if not ok.any():
        return None
    return [float(ra[ok].min()), float(ra[ok].max()), float(dec[ok].min()), float(dec[ok].max())]


def merge_ranges(ranges) -> list | None:
    rs = [r for r in ranges if r]
    if not rs:
        return None
    return [min(r[0] for r in rs), max(r[1] for r in rs), min(r[2] for r in rs), max(r[3] for r in rs)]


def coordinate_warning(r: list | None) -> str | None:
    if r is None:
        return None
    ra_lo, ra_hi, dec_lo, dec_hi = r
    if max(abs(ra_lo), abs(ra_hi)) <= 2 * math.pi and max(abs(dec_lo), abs(dec_hi)) <= math.pi / 2:
        return (
            f"every |ra| <= 2pi and |dec| <= pi/2 (ra {ra_lo:.4g}..{ra_hi:.4g}, dec {dec_lo:.4g}..{dec_hi:.4g}): "
            "are the coordinates in radians? process-catalog needs degrees"
        )
    if ra_lo >= 0 and ra_hi <= 24:
        return (
            f"every ra is within 0..24 (ra {ra_lo:.4g}..{ra_hi:.4g}): if ra is in hours, multiply it by 15; "
            "process-catalog needs degrees"
        )
    return None


def summarize(
    markers: list[PartitionResult], rows: int, scored: int, status: dict, id_column: str | None = None
) -> dict:
    """``failures``, ``warnings`` and ``exit_status`` of the run summary from the partitions' results."""
    examples: dict = {}
    for m in markers:
        for k, v in m.examples.items():
            examples.setdefault(k, v)
    failures = [
        {"status": k, "count": int(v), "example": examples.get(k, "")}
        for k, v in sorted(status.items(), key=lambda kv: (-kv[1], kv[0]))
        if k not in SCORED and v
    ]
    warnings = []
    if rows and scored == 0:
        warnings.append(f"no row could be scored (all {rows} flagged)")
    elif rows and rows - scored > rows / 2:
        warnings.append(f"most rows were not scored ({rows - scored} of {rows})")
    cw = coordinate_warning(merge_ranges(m.coords for m in markers))
    if cw:
        warnings.append(cw)
    if failures and rows - scored > rows / 2:
        lead = failures[0]["status"]
        if lead in HINTS:
            warnings.append(HINTS[lead].format(id=f" ({id_column!r})" if id_column else ""))
    retry = sum(f["count"] for f in failures if f["status"] in TRANSIENT)
    return {
        "failures": failures,
        "scored_notes": {k: examples[k] for k in SCORED if status.get(k) and examples.get(k)} or None,
        "warnings": warnings,
        "retryable": retry,
        "exit_status": EXIT_NOTHING_SCORED if rows and scored == 0 else EXIT_OK,
    }


def format_failures(s: dict) -> list[str]:
    """Lines of the printed summary: the leading reasons with an example, then the warnings."""
    lines = []
    fails = s.get("failures") or []
    if fails:
        lines.append("  not scored, by reason:")
        for f in fails[:6]:
            lines.append(f"    {f['status']} {f['count']}" + (f": {f['example']}" if f.get("example") else ""))
        if len(fails) > 6:
            lines.append(f"    ... {len(fails) - 6} more reasons in summary.json")
    if s.get("retryable"):
        lines.append(
            f"  re-running the same command retries the {s['retryable']} row(s) flagged "
            f"{'/'.join(t for t in TRANSIENT if any(f['status'] == t for f in fails))}"
        )
    lines += [f"warning: {w}" for w in s.get("warnings") or []]
    return lines
