"""A partition's rows: the statuses decided before any image is fetched, and the output table."""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import pandas as pd
import pyarrow as pa

from ..catalogs.schema import SCORED, Status, id_output_name, is_merger
from ..catalogs.validate import flag_duplicates
from .failures import note, plain
from .plan import Plan


class Scores(NamedTuple):
    """What the engine gave a partition's rows (NaN where not scored)."""

    p_merger: np.ndarray  # float32
    domain_score: np.ndarray  # float32; NaN also where the engine has no image check
    saturated_core: np.ndarray  # float32 pixel counts (engines.domain.saturated_core); NaN where not scored
    embedding: np.ndarray  # (n, N) float32, --embeddings N; (n, 0) without

    @classmethod
    def empty(cls, n: int, embeddings: int = 0) -> Scores:
        def nan() -> np.ndarray:
            return np.full(n, np.nan, np.float32)

        return cls(nan(), nan(), nan(), np.full((n, embeddings), np.nan, np.float32))


def embedding_column(e: np.ndarray, scored: np.ndarray) -> pd.arrays.ArrowExtensionArray:
    """The ``embedding`` column: a fixed-size list of float32 per row, null where not ``scored``."""
    n, dim = e.shape
    values = pa.array(np.ascontiguousarray(e, np.float32).reshape(-1), pa.float32())
    mask = pa.array(~scored) if n else None
    return pd.arrays.ArrowExtensionArray(pa.FixedSizeListArray.from_arrays(values, dim, mask=mask))


def _text_id(v):
    if v is None or (isinstance(v, float) and np.isnan(v)) or v is pd.NA:
        return None
    return v.decode("utf-8", "replace") if isinstance(v, bytes) else str(v)


def output_ids(ids: pd.Series, id_kind: str):
    """The id column exactly as it went in: int64 / uint64 (nullable where the input has nulls,
    never via float64) or text (nulls stay null, never the string 'None')."""
    if id_kind in ("int", "uint"):
        dtype = "Int64" if id_kind == "int" else "UInt64"
        return (
            pd.array(ids, dtype=dtype)
            if ids.hasnans or isinstance(ids.dtype, pd.api.extensions.ExtensionDtype)
            else ids.to_numpy(np.int64 if id_kind == "int" else np.uint64)
        )
    return np.array([_text_id(v) for v in ids.to_numpy(object)], dtype=object)


def missing_ids(ids: pd.Series) -> np.ndarray:
    """True where the id is null/NaN or blank text (flagged ``no_id``)."""
    values = ids.to_numpy(object)
    return np.array([(t := _text_id(v)) is None or not t.strip() for v in values], bool)


def triage(df: pd.DataFrame, plan: Plan, examples: dict) -> tuple[np.ndarray, np.ndarray]:
    """(status, ids as text) of a partition's rows before any fetch: bad_coords, no_id,
    duplicate_id, not_selected (--select), out_of_domain (--domain's catalog rules) - the rest ""
    (to be fetched and scored).  Notes one example of each in ``examples``."""
    n, c = len(df), plan.columns
    status = np.full(n, "", dtype=object)
    if not n:
        return status, np.zeros(0, object)
    valid = df["_healpix29"].to_numpy() >= 0
    status[~valid] = Status.BAD_COORDS
    no_id = missing_ids(df[c["id"]])
    status[no_id & valid] = Status.NO_ID
    ids = df[c["id"]].astype(str).to_numpy()
    dup = flag_duplicates(df[c["id"]]) & valid & ~no_id  # missing ids are never duplicates
    status[dup] = Status.DUPLICATE_ID
    if "_selected" in df:  # --select: the rest is kept, not fetched or scored
        status[(status == "") & ~df["_selected"].to_numpy(bool)] = Status.NOT_SELECTED
    inrow = df["_input_row"].to_numpy()
    if "_domain" in df:  # --domain's catalog rules (domain.py): kept, not fetched or scored
        code = df["_domain"].to_numpy()
        out = (status == "") & (code > 0)
        status[out] = Status.OUT_OF_DOMAIN
        for i in np.flatnonzero(out)[:1]:
            note(
                examples,
                Status.OUT_OF_DOMAIN,
                f"row {inrow[i]} (id {ids[i]}): {plan.domain.reason(int(code[i]))}",
            )
    for i in np.flatnonzero(~valid)[:1]:
        note(
            examples,
            Status.BAD_COORDS,
            f"row {inrow[i]} (id {ids[i]}): ra={plain(df[c['ra']].iloc[i])}, dec={plain(df[c['dec']].iloc[i])}",
        )
    for i in np.flatnonzero(dup)[:1]:
        note(
            examples,
            Status.DUPLICATE_ID,
            f"row {inrow[i]} (id {ids[i]}): the same id appeared earlier in this sky partition",
        )
    return status, ids


def in_domain(
    status: np.ndarray, scores: Scores, image_threshold: float | None, max_saturated: int | None
) -> np.ndarray:
    """False where a domain check that was applied puts the row outside the engine's training
    domain: status out_of_domain (catalog rules), or scored with ``domain_score`` beyond the
    image check's threshold or ``saturated_core`` beyond its limit (None: not applied); True
    otherwise, including rows no check could decide (a NaN score)."""
    inside = status != Status.OUT_OF_DOMAIN
    scored = np.isin(status, SCORED)
    with np.errstate(invalid="ignore"):
        if image_threshold is not None:
            inside &= ~(scored & (scores.domain_score > image_threshold))
        if max_saturated is not None:
            inside &= ~(scored & (scores.saturated_core > max_saturated))
    return inside


def _scored(status: np.ndarray, scores: Scores) -> np.ndarray:
    """Rows whose embedding is written: scored (SCORED status) with a finite vector."""
    return np.isin(status, SCORED) & np.isfinite(scores.embedding).all(axis=1)


def output_table(
    df: pd.DataFrame,
    plan: Plan,
    scores: Scores,
    status: np.ndarray,
    threshold: float,
    image_threshold: float | None,
    max_saturated: int | None = None,
    interval: tuple[np.ndarray, np.ndarray] | None = None,
) -> pd.DataFrame:
    """``interval``: (p_merger_lo, p_merger_hi) of engines.uncertainty (None: all NaN)."""
    c = plan.columns
    lo, hi = interval if interval is not None else (np.full(len(df), np.nan, np.float32),) * 2
    inside = in_domain(status, scores, image_threshold, max_saturated)
    sat = scores.saturated_core
    out = {
        id_output_name(plan.id_kind): output_ids(df[c["id"]], plan.id_kind),
        "ra": df[c["ra"]].to_numpy(np.float64),
        "dec": df[c["dec"]].to_numpy(np.float64),
        "p_merger": scores.p_merger.astype(np.float32),
        "p_merger_lo": np.asarray(lo, np.float32),
        "p_merger_hi": np.asarray(hi, np.float32),
        "is_merger": is_merger(scores.p_merger, threshold, inside),
        "in_domain": inside,
        "domain_score": scores.domain_score.astype(np.float32),
        "saturated_core": pd.arrays.IntegerArray(np.nan_to_num(sat).astype(np.int16), np.isnan(sat)),
        **(
            {"embedding": embedding_column(scores.embedding, _scored(status, scores))}
            if scores.embedding.shape[1]
            else {}
        ),
        "status": status.astype(object),
        "input_row": df["_input_row"].to_numpy(np.int64),
        "_healpix_29": df["_healpix29"].to_numpy(np.int64),
    }
    names = plan.output_names
    for k in plan.carried:
        col = df[k]  # nullable (extension) dtypes stay as they are: one column type in every partition
        out[names[k]] = col.array if isinstance(col.dtype, pd.api.extensions.ExtensionDtype) else col.to_numpy()
    return pd.DataFrame(out)
