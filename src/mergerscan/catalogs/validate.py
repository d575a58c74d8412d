"""Column resolution and validation of input catalogs.

Policy (every input row reaches the output exactly once, with a status):

* **Columns.** id/ra/dec are found by case-insensitive aliases (``ID_ALIASES`` …); an explicit
  ``--id-column/--ra-column/--dec-column`` wins and must exist (case-insensitive match allowed).
  A missing column is a :class:`CatalogError`: one line naming the file and the column.
* **Types.** ra/dec must be numeric; a string column whose values parse as numbers is converted
  (empty/missing values become NaN); anything else is a :class:`CatalogError` naming the file,
  the column and the first bad row.  The id may be an integer (kept exact as int64, never via
  float) or a string.
* **Coordinates.** A row is valid when ra and dec are finite, ``0 <= ra < 360`` and
  ``-90 <= dec <= 90``.  ra is *not* wrapped modulo 360 (ra = 360 or -1 is more likely a unit or
  column mix-up than a real position).  Invalid rows are flagged ``bad_coords``, never dropped.
* **Duplicates.** Later occurrences of an id in the same sky partition are flagged
  ``duplicate_id`` by the pipeline (:func:`flag_duplicates`); the first one is scored.
* **Empty catalog** (no rows): :class:`CatalogError` "... has no rows".
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from ..argument_error import literal
from .columns import AmbiguousColumn, brief, find_column
from .read import CatalogError

ID_ALIASES = ("objid", "id", "object_id", "source_id")
RA_ALIASES = ("ra", "radeg", "ra_deg", "raj2000")
DEC_ALIASES = ("dec", "dedeg", "dec_deg", "dej2000")
_ALIASES = {"id": ID_ALIASES, "ra": RA_ALIASES, "dec": DEC_ALIASES}


def resolve_columns(
    available: list[str],
    id_column: str | None = None,
    ra_column: str | None = None,
    dec_column: str | None = None,
    path: str | Path = "catalog",
) -> dict:
    """``{"id": name, "ra": name, "dec": name}`` in the file's spelling (explicit names win)."""
    available = [str(c) for c in available]
    out = {}
    where = literal(path)
    for role, explicit in (("id", id_column), ("ra", ra_column), ("dec", dec_column)):
        argument, columns = f"{role}_column", literal(brief(available))
        try:
            if explicit:
                found = find_column(available, explicit)
                if found is None:
                    raise CatalogError(
                        f"{where}: {role} column {literal(repr(explicit))} ({{{argument}}}) not found (columns: {columns})",
                        argument,
                    )
            else:
                found = next((f for a in _ALIASES[role] if (f := find_column(available, a))), None)
                if found is None:
                    raise CatalogError(
                        f"{where}: no {role} column (looked for {', '.join(_ALIASES[role])}, any "
                        f"case; name it with {{{argument}}}; columns: {columns})",
                        argument,
                    )
        except AmbiguousColumn as exc:
            raise CatalogError(
                f"{where}: {role} column is ambiguous ({literal(', '.join(exc.matches))}); name one exactly with {{{argument}}}",
                argument,
            ) from None
        out[role] = found
    if len(set(out.values())) < 3:
        raise CatalogError(f"{path}: the same column is used twice for id/ra/dec ({out})")
    return out


def check_numeric(df: pd.DataFrame, cols: list[str], path: str | Path = "catalog", row_offset: int = 0) -> pd.DataFrame:
    """Make ``cols`` float64 in place (numeric strings are parsed, empty -> NaN) or raise
    :class:`CatalogError` naming the file, the column and the first bad row (0-based, file rows)."""
    for col in cols:
        s = df[col]
        if pd.api.types.is_bool_dtype(s.dtype):
            raise CatalogError(f"{path}: column {col!r} is boolean, not a numeric coordinate")
        if pd.api.types.is_numeric_dtype(s.dtype) and not pd.api.types.is_complex_dtype(s.dtype):
            if s.dtype != np.float64:
                df[col] = s.to_numpy(np.float64, na_value=np.nan)
            continue
        raw = s.astype(object)
        blank = raw.isna() | raw.map(lambda v: isinstance(v, (str, bytes)) and not v.strip())
        num = pd.to_numeric(raw.where(~blank, np.nan), errors="coerce")
        bad = np.flatnonzero(num.isna().to_numpy() & ~blank.to_numpy())
        if len(bad):
            value = repr(raw.iloc[bad[0]])[:40].replace("\n", " ")
            raise CatalogError(f"{path}: column {col!r} is not numeric (row {row_offset + int(bad[0])}: {value})")
        df[col] = num.to_numpy(np.float64)
    return df


def coord_status(ra, dec) -> np.ndarray:
    """True where (ra, dec) is a usable position: finite, 0 <= ra < 360, -90 <= dec <= 90."""
    ra = np.asarray(ra, dtype=np.float64)
    dec = np.asarray(dec, dtype=np.float64)
    with np.errstate(invalid="ignore"):
        return np.isfinite(ra) & np.isfinite(dec) & (ra >= 0) & (ra < 360) & (dec >= -90) & (dec <= 90)


def flag_duplicates(ids) -> np.ndarray:
    """True for every later occurrence of an id (the first stays False).  Missing ids
    (None/NaN) are never duplicates of each other."""
    # the Series itself where given: a nullable Int64's to_numpy() is float64, where 64-bit ids collide
    s = ids.reset_index(drop=True) if isinstance(ids, pd.Series) else pd.Series(np.asarray(ids))
    return (s.duplicated(keep="first") & s.notna()).to_numpy(bool)


def require_rows(nrows: int, path: str | Path = "catalog") -> None:
    if nrows <= 0:
        raise CatalogError(f"{path}: catalog has no rows")
