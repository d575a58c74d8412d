"""The output schema: columns, dtypes, units, UCDs and the status codes.

``p_merger`` is non-null exactly when ``status`` is one of ``SCORED``; every other status says
why a row has no score.  Nothing is dropped: every input row appears once, with a status.
"""

from __future__ import annotations

# status -> meaning (docs/output.md is generated from this table's text)
STATUS = {
    "ok": "scored",
    "edge": "scored; the stamp ran off the frame edge and the missing pixels were filled with sky (0)",
    "bad_coords": "ra/dec missing, NaN or out of range (ra not in [0,360), dec not in [-90,90]): not scored",
    "duplicate_id": "the same id already appeared earlier in the same sky partition: not scored again",
    "no_id": "the id is missing (null, NaN or blank text): not scored; the row is kept with its id as it was",
    "no_image": "no image file for this object (stamps source): not scored",
    "bad_image": "the image exists but cannot be decoded, is damaged (JPEG data cut short: flat grey fill), "
                 "has the wrong shape or mode, is not a regular file, or holds no display values: not scored",
    "small_image": "the image is smaller than a quarter of the stamp a side (64 px for 256 px stamps): not scored",
    "image_too_large": "the image declares more than 4x the stamp a side, or the file is over 32 MiB: "
                       "not decoded, not scored",
    "blank_image": "the image is blank: over 10% NaN/inf pixels, over 75% flat (one colour per 8x8 tile), "
                   "or constant: not scored",
    "outside_footprint": "no survey frame covers this position (frames source): not scored",
    "corrupt_frame": "every frame covering this position is unreadable (e.g. corrupt bz2): not scored",
    "fetch_failed": "the cutout service failed after retries (HTTP error, timeout, oversize, bad body): not scored",
    "inference_failed": "the engine raised on this row's batch: not scored",
    "not_selected": "left out by --select EXPR (the row is kept, with its columns): not scored",
    "out_of_memory": "ran out of memory (MemoryError even alone, or the worker scoring its partition was killed "
                     "repeatedly, e.g. by the Dask nanny's memory limit, even with smaller batches): not scored; "
                     "re-running the same command scores it again",
}
SCORED = ("ok", "edge")
# failures that a re-run of the same command retries (the rest are kept as they are)
TRANSIENT = ("fetch_failed", "no_image", "out_of_memory")
STATUS_WIDTH = max(len(s) for s in STATUS)

# science columns written by the pipeline (after the kept input columns)
OUTPUT_COLUMNS = {
    # name: (dtype, unit, ucd, description)
    "objid": ("int64", None, "meta.id;meta.main", "object identifier from the input catalog"),
    "ra": ("float64", "deg", "pos.eq.ra;meta.main", "right ascension (J2000) from the input catalog"),
    "dec": ("float64", "deg", "pos.eq.dec;meta.main", "declination (J2000) from the input catalog"),
    "p_merger": ("float32", None, "stat.probability;src.morph", "calibrated probability of being a merger"),
    "is_merger": ("bool", None, "meta.code.class", "p_merger >= the engine's threshold"),
    "status": ("str", None, "meta.code.status", "'ok' or why the row has no score (see docs)"),
    "input_row": ("int64", None, "meta.record", "0-based row number in the input catalog"),
    "_healpix_29": ("int64", None, "pos.healpix", "HEALPix nested index at order 29 (the HATS spatial index)"),
}


# ---------------------------------------------------------------- output column names
# Internal columns of the split shards (never written to the output).
INTERNAL_COLUMNS = ("_input_row", "_healpix29", "_pid", "_selected")
# Names no carried column may take, compared case-insensitively (FITS column names are
# case-insensitive): both id spellings, whichever the run uses, so the rule never depends on the data.
RESERVED = tuple(OUTPUT_COLUMNS) + ("id",)
FITS_NAME_MAX = 68          # a TTYPEn value is at most 68 characters
FITS_MAX_COLUMNS = 999      # TFIELDS <= 999


def output_names(carried: list[str]) -> dict[str, str]:
    """{input name: output name} for the carried-through columns, the same in Parquet and FITS
    (FITS may further need :func:`fits_names`).  The one collision rule: a kept column whose name
    equals, in any case, an output column's name (``P_MERGER``, ``Status``, ``RA``...) or an earlier
    kept column's output name (``z`` after ``Z``) gets the prefix ``in_``, repeated until it collides
    with nothing (``in_status`` kept too -> ``in_in_status``).  Output names are therefore unique
    case-insensitively, as FITS needs."""
    taken = {r.lower() for r in RESERVED}
    plain = {str(c).lower() for c in carried}
    out = {}
    for c in carried:
        name = str(c)
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
            cand = base[:FITS_NAME_MAX - len(suffix)] + suffix
        seen.add(cand.lower())
        out[n] = cand
    return out
