"""The output schema: columns, dtypes, units, UCDs and the status codes.

``p_merger`` is non-null exactly when ``status`` is one of ``SCORED``; every other status says
why a row has no score.  Nothing is dropped: every input row appears once, with a status.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum
from pathlib import Path


class Status(str, Enum):
    """A row's status: why it has a score or why not.  Members are ``str`` (``Status.OK == "ok"``),
    so arrays, JSON and the Parquet/FITS columns hold the plain strings; code compares against the
    members.  (``enum.StrEnum`` needs Python 3.11: this is the same for 3.10.)"""

    OK = "ok"
    EDGE = "edge"
    BAD_COORDS = "bad_coords"
    NO_ID = "no_id"
    DUPLICATE_ID = "duplicate_id"
    NO_IMAGE = "no_image"
    BAD_IMAGE = "bad_image"
    SMALL_IMAGE = "small_image"
    IMAGE_TOO_LARGE = "image_too_large"
    BLANK_IMAGE = "blank_image"
    OUTSIDE_FOOTPRINT = "outside_footprint"
    CORRUPT_FRAME = "corrupt_frame"
    FETCH_FAILED = "fetch_failed"
    NOT_SELECTED = "not_selected"
    OUT_OF_DOMAIN = "out_of_domain"
    INFERENCE_FAILED = "inference_failed"
    OUT_OF_MEMORY = "out_of_memory"

    def __str__(self) -> str:  # "ok", not "Status.OK", in messages and f-strings
        return str(self.value)

    def __format__(self, spec: str) -> str:
        return format(str(self.value), spec)


# status -> meaning, in markdown (the run report shows it without the backticks); docs/output.md's
# status table is rendered from it (:func:`update_docs`)
STATUS = {
    Status.OK: "scored",
    Status.EDGE: "scored; part of the stamp lies on no readable frame (`--frames` fills each stamp from every frame that "
    "covers it: these pixels are off the survey, in a gap, or on a missing or unreadable frame) and was filled with "
    "sky (0): more than none and less than 75 % of the stamp (75 % or more is `blank_image`)",
    Status.BAD_COORDS: "ra/dec missing, NaN or out of range (ra not in [0, 360), dec not in [-90, 90])",
    Status.NO_ID: "the id is missing: null, NaN or blank text (the row is kept, its id as it was; not scored)",
    Status.DUPLICATE_ID: "the same id already appeared earlier in the same sky partition (the first occurrence is scored)",
    Status.NO_IMAGE: "no image file for this object (`--images`), including an id or `--path-column` value that no "
    "file can have (over 255 bytes, a NUL byte, characters the filesystem cannot encode) and an id that is `.`, "
    "`..` or holds a path separator (an id never names a file outside DIR)",
    Status.BAD_IMAGE: "the image exists but cannot be decoded, is damaged (any libjpeg-turbo warning: corrupt data, a "
    "zeroed block, data cut short even with the end marker kept; or flat grey-128 fill), is not a "
    "square RGB image (an RGBA or palette PNG counts as RGB when every pixel is opaque), is not a "
    "regular file (FIFO, device, directory), or holds no display values (FITS outside 0..255)",
    Status.SMALL_IMAGE: "the image is smaller than a quarter of the stamp a side (64 px for 256 px stamps): upsampling "
    "would invent the galaxy",
    Status.IMAGE_TOO_LARGE: "the image header declares more than 4x the stamp a side (1024 px), or the file is over "
    "32 MiB: never decoded",
    Status.BLANK_IMAGE: "the stamp is blank: over 10 % NaN/inf pixels, at least 75 % flat (one colour per 8x8 tile; "
    "frames: 75 % without data), or constant",
    Status.OUTSIDE_FOOTPRINT: "no survey frame covers this position (`--frames`)",
    Status.CORRUPT_FRAME: "every frame covering this position is unreadable (e.g. corrupt bz2)",
    Status.FETCH_FAILED: "the cutout service failed after retries (HTTP error, timeout, oversize or bad body, bad "
    "redirect); `summary.json` `fetch_failures` counts the reasons and the printed summary names "
    "the leading one and the service",
    Status.NOT_SELECTED: "left out by `--select EXPR` (kept with its columns; not fetched, not scored)",
    Status.OUT_OF_DOMAIN: "outside the engine's training selection by the catalog's own columns (e.g. SDSS `type` not a "
    "galaxy, `petroMag_r` fainter than the card's limit, `z` outside its range; `summary.json` `domain_rules` counts "
    "which rule): not fetched, not scored. A missing value decides nothing. `--domain off` scores these rows",
    Status.INFERENCE_FAILED: "the engine raised on this row's batch",
    Status.OUT_OF_MEMORY: "ran out of memory: a MemoryError even for the row alone, or the worker scoring its partition "
    "was killed repeatedly (the Dask nanny's memory limit, the kernel's OOM killer) even when "
    "retried with smaller batches. Re-running the same command (with more memory per worker) "
    "scores these partitions again; nothing else is recomputed",
}
SCORED = (Status.OK, Status.EDGE)


def is_merger(p_merger, threshold: float, in_domain):
    """The ``is_merger`` column, computed here only: ``p_merger >= threshold`` (NaN: false) and in the domain."""
    import numpy as np

    return (np.nan_to_num(np.asarray(p_merger, np.float64), nan=-1.0) >= threshold) & np.asarray(in_domain, bool)


# failures that a re-run of the same command retries (the rest are kept as they are): the policy
# itself is pipeline.resume.ResumePlan's (which partitions a re-run opens again, which rows it re-scores)
TRANSIENT = (Status.FETCH_FAILED, Status.NO_IMAGE, Status.OUT_OF_MEMORY)
STATUS_WIDTH = max(len(s) for s in STATUS)


@dataclass(frozen=True)
class Column:
    """One output column: its documented type, unit, UCD, the description the Parquet (VOTable
    FIELD) and FITS (TCOMMn) metadata carry, and the longer meaning docs/output.md gives (markdown)."""

    type: str
    unit: str | None
    ucd: str | None
    description: str
    meaning: str


# the science columns written by the pipeline (after the kept input columns), in output order;
# the id column is ``objid`` for integer ids and ``id`` for text ids (one entry: ID_COLUMNS)
OUTPUT_COLUMNS = {
    "objid": Column(
        "int64 / uint64 / string",
        None,
        "meta.id;meta.main",
        "object identifier from the input catalog",
        "the input catalog's id, exactly as it went in: `objid` for integer ids, `id` for text ids (see *Ids* below)",
    ),
    "ra": Column(
        "float64",
        "deg",
        "pos.eq.ra;meta.main",
        "right ascension (J2000) from the input catalog",
        "the input right ascension",
    ),
    "dec": Column(
        "float64", "deg", "pos.eq.dec;meta.main", "declination (J2000) from the input catalog", "the input declination"
    ),
    "p_merger": Column(
        "float32",
        None,
        "stat.probability;src.morph",
        "calibrated probability of being a merger",
        "calibrated probability of being a merger (temperature fitted on validation); NaN when not scored",
    ),
    "p_merger_lo": Column(
        "float32",
        None,
        "stat.probability;stat.min",
        "lower end of the 95 % interval on p_merger (validation evidence)",
        "lower end of a 95 % interval on the merger fraction of the validation galaxies the engine scored like "
        "this row (engine card's validation curve at the run's view count: those within 1 in logit, at least "
        "50; Wilson interval, widened to contain `p_merger`), at the engine's calibration prevalence like "
        "`p_merger`: narrow where many validation galaxies scored alike and agree, wide where few did or their "
        "labels are mixed. NaN where `p_merger` is NaN (the status says why) or the card has no validation "
        "curve (header `PINTVL` says which)",
    ),
    "p_merger_hi": Column(
        "float32",
        None,
        "stat.probability;stat.max",
        "upper end of the 95 % interval on p_merger (validation evidence)",
        "upper end of the interval of `p_merger_lo`; `p_merger_lo <= p_merger <= p_merger_hi` where all three "
        "exist. A row whose interval lies wholly above the threshold (`p_merger_lo >= THRESH`) is a confident "
        "merger, wholly below a confident non-merger; one that straddles it is where the errors are",
    ),
    "is_merger": Column(
        "bool",
        None,
        "meta.code.class",
        "p_merger >= the engine's threshold and in_domain",
        "`p_merger >= threshold` (the engine's threshold, chosen on validation; in the header as `THRESH`) "
        "**and** `in_domain`: a row outside the training domain is never flagged a merger",
    ),
    "in_domain": Column(
        "bool",
        None,
        "meta.code.qual",
        "false: outside the engine's training domain by a check that was applied",
        "false where a domain check that was applied puts the row outside what the engine was trained on: "
        "status `out_of_domain` (catalog rules), or `domain_score` above the image check's threshold (header "
        "`DOMTHR`) or `saturated_core` above its limit (header `DOMSAT`; such rows keep their `p_merger`); true otherwise, also where nothing could decide. "
        "All true with `--domain off` (header `DOMAIN`)",
    ),
    "domain_score": Column(
        "float32",
        None,
        "stat.value",
        "distance of the stamp from the training galaxies (larger = farther)",
        "the engine's image-level distance of the stamp from its training galaxies (larger = farther; "
        "dimensionless, the engine card's `domain.image.score` says which statistic); NaN where not scored or "
        "where the engine has no image check. Computed even with `--domain off`, then not applied",
    ),
    "saturated_core": Column(
        "int16",
        "pix",
        "instr.saturation",
        "saturated pixels in the stamp's central 13 x 13 px",
        "pixels of the stamp's central 13 x 13 px box whose brightest channel is >= 250: a bright star's core "
        "saturates the survey stretch, a training galaxy's almost never does. Above the engine card's "
        "`domain.image.max_saturated_core` (header `DOMSAT`) the row is not `in_domain`; null where not scored",
    ),
    "embedding": Column(
        "float32[N]",
        None,
        "src.morph;stat.fit",
        "engine representation: first N PCA components of the pooled penultimate features",
        "only with `--embeddings [N]`: the engine's representation of the stamp, the first N (default 32) "
        "coordinates on the principal components of its pooled penultimate features (the PCA fitted on the "
        "training galaxies and stored in the engine file, computed in the same engine call as `p_merger`, "
        "averaged over the views); a fixed-size list in Parquet (field metadata: dimension, engine, k, "
        "explained variance, fitted_on), a vector column `NE` in FITS; null (FITS: NaN) where not scored",
    ),
    "status": Column(
        "string",
        None,
        "meta.code.status",
        "'ok' or why the row has no score (see docs)",
        "`ok`, or why the row has no score (below)",
    ),
    "input_row": Column(
        "int64",
        None,
        "meta.record",
        "0-based row number in the input catalog",
        "0-based row of the input catalog (sort by it to restore input order)",
    ),
    "_healpix_29": Column(
        "int64",
        None,
        "pos.healpix",
        "HEALPix nested index at order 29 (the HATS spatial index)",
        "nested HEALPix index at order 29, the HATS spatial index; -1 for bad coordinates",
    ),
}
ID_COLUMNS = ("objid", "id")
# every name an output column may have (both id spellings); a run uses one id spelling (id_output_name)
OUTPUT_NAMES = (*OUTPUT_COLUMNS, "id")
# output columns a run has only when asked (``embedding``: --embeddings); the rest are always there
OPTIONAL_COLUMNS = ("embedding",)


def id_output_name(id_kind: str) -> str:
    """The output id column of a run: ``objid`` for integer ids (int64, uint64), ``id`` for text."""
    return "objid" if id_kind in ("int", "uint") else "id"


def run_output_names(id_name: str | None, optional: tuple | list = ()) -> tuple[str, ...]:
    """The output columns of a run whose id column is ``id_name`` (None: both spellings), with
    the optional columns it writes (``optional``, e.g. ``("embedding",)`` with --embeddings)."""
    names = tuple(n for n in OUTPUT_NAMES if n not in OPTIONAL_COLUMNS or n in optional)
    if id_name is None:
        return names
    return tuple(id_name if n == "objid" else n for n in names if n != "id")


CARRIED = Column(
    "as input",
    None,
    None,
    "column carried through from the input catalog",
    "carried through unchanged (renamed `in_<name>` if it clashes; see *Column names* below)",
)


def carried_ids(names: list[str]) -> set[str]:
    """Which of an output table's ``objid``/``id`` columns are kept input columns: the run's own id
    column comes first (``output_table``), so any later one (a kept ``objid`` in a run whose id
    column is ``id``, or the other way round) is carried."""
    ids = [n for n in names if n in ID_COLUMNS]
    return set(ids[1:])


def column(name: str, carried: frozenset | set = frozenset()) -> Column:
    """The schema of an output column; any other name, or one in ``carried`` (a kept ``objid`` in
    a run whose id column is ``id``), is a carried-through input column."""
    if name in carried or name not in OUTPUT_NAMES:
        return CARRIED
    return OUTPUT_COLUMNS["objid" if name in ID_COLUMNS else name]


# ---------------------------------------------------------------- output column names
# Internal columns of the split shards (never written to the output).
INTERNAL_COLUMNS = ("_input_row", "_healpix29", "_pid", "_selected", "_domain")
FITS_NAME_MAX = 68  # a TTYPEn value is at most 68 characters
FITS_MAX_COLUMNS = 999  # TFIELDS <= 999


def output_names(carried: list[str], id_name: str | None = None, optional: tuple | list = ()) -> dict[str, str]:
    """{input name: output name} for the carried-through columns, the same in Parquet and FITS
    (FITS may further need :func:`fits_names`).  The one collision rule: a kept column whose name
    equals, in any case, one of this run's output columns (``P_MERGER``, ``Status``, ``RA``..., and
    the run's id column ``id_name``: ``objid`` or ``id``; None, for plans written before the run's
    id was passed here, reserves both) or an earlier kept column's output name (``z`` after ``Z``)
    gets the prefix ``in_``, repeated until it collides with nothing (``in_status`` kept too ->
    ``in_in_status``).  Output names are therefore unique case-insensitively, as FITS needs.  Blanks
    around a name are padding (a CSV written with ", "): `` mag`` is carried as ``mag``.  An optional
    column (``optional``) is reserved only in runs that write it."""
    taken = {r.lower() for r in run_output_names(id_name, optional)}
    plain = {(str(c).strip() or str(c)).lower() for c in carried}
    out = {}
    for c in carried:
        name = str(c).strip() or str(c)
        if name.lower() in taken:
            name = "in_" + name
            while name.lower() in taken or name.lower() in plain:
                name = "in_" + name
        taken.add(name.lower())
        out[c] = name
    return out


def fits_name(name: str) -> str:
    """A legal FITS column name: ASCII letters, digits and '_' (anything else becomes '_'),
    at most 68 characters."""
    import re

    legal = re.sub(r"[^A-Za-z0-9_]", "_", name)[:FITS_NAME_MAX]
    return legal or "col"


def fits_names(names: list[str]) -> dict[str, str]:
    """{output (Parquet) name: FITS name}.  Names that are not legal FITS names (non-ASCII,
    spaces, punctuation, > 68 characters) are made legal by :func:`fits_name`; names that then
    coincide case-insensitively (``mag`` and ``MAG``, ``g-r`` and ``g_r``) get ``_2``, ``_3``...
    in input order.  The FITS header records the original of each changed name (TCOMMn)."""
    out, seen = {}, set()
    for n in names:
        base = fits_name(n)
        cand, k = base, 1
        while cand.lower() in seen:
            k += 1
            suffix = f"_{k}"
            cand = base[: FITS_NAME_MAX - len(suffix)] + suffix
        seen.add(cand.lower())
        out[n] = cand
    return out


# ---------------------------------------------------------------- docs/output.md
# docs/output.md's columns and status tables are rendered from this module between markers
# (``<!-- begin columns table ... -->`` ... ``<!-- end columns table -->``); the prose around them is
# hand-written.  ``python -m mergerscan.catalogs.schema [--check] [docs/output.md]``
DOC_TABLES = ("columns", "status")
DOCS_COMMAND = "python -m mergerscan.catalogs.schema docs/output.md"


def markdown_table(table: str) -> str:
    """The ``columns`` or ``status`` table of docs/output.md, from the schema."""
    if table == "columns":
        rows = ["| column | type | unit | UCD | meaning |", "|---|---|---|---|---|"]
        rows += [
            f"| `{name}` | {c.type} | {c.unit or ''} | {f'`{c.ucd}`' if c.ucd else ''} | {c.meaning} |"
            for name, c in OUTPUT_COLUMNS.items()
        ]
        rows.append(f"| `--keep-columns` | {CARRIED.type} | | | {CARRIED.meaning} |")
    elif table == "status":
        rows = ["| status | meaning |", "|---|---|"] + [f"| `{k}` | {v} |" for k, v in STATUS.items()]
    else:
        raise ValueError(f"no table {table!r} (tables: {', '.join(DOC_TABLES)})")
    return "\n".join(rows)


def render_docs(text: str) -> str:
    """``text`` (docs/output.md) with each generated table replaced by the schema's; ValueError
    naming the table whose markers are missing."""
    import re

    for table in DOC_TABLES:
        begin = re.search(rf"<!-- begin {table} table\b[^>]*-->\n", text)
        end = re.search(rf"<!-- end {table} table -->", text)
        if begin is None or end is None or end.start() < begin.end():
            raise ValueError(
                f"no generated {table} table: expected '<!-- begin {table} table ... -->' "
                f"... '<!-- end {table} table -->'"
            )
        marker = f"<!-- begin {table} table: generated from src/mergerscan/catalogs/schema.py by {DOCS_COMMAND} -->\n"
        text = text[: begin.start()] + marker + markdown_table(table) + "\n" + text[end.start() :]
    return text


def main(argv: list[str] | None = None) -> int:
    """Rewrite the generated tables of docs/output.md (``--check``: exit 1 if they are out of date)."""
    import argparse

    from ..atomic import atomic_write_text

    p = argparse.ArgumentParser(prog="python -m mergerscan.catalogs.schema", description=main.__doc__)
    p.add_argument("docs", nargs="?", default="docs/output.md", help="the file (default: docs/output.md)")
    p.add_argument("--check", action="store_true", help="only report whether it is up to date")
    a = p.parse_args(argv)
    try:
        old = Path(a.docs).read_text(encoding="utf-8")
        new = render_docs(old)
    except (OSError, ValueError) as exc:
        p.error(f"{a.docs}: {exc}")
    if new == old:
        return 0
    if a.check:
        print(f"{a.docs}: the generated tables are out of date with the schema; run {DOCS_COMMAND}")
        return 1
    atomic_write_text(a.docs, new)
    print(f"{a.docs}: tables rewritten from the schema")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
