"""``--select "EXPR"``: score only the rows for which a pandas expression over catalog columns is true.

The expression is checked once at the start (syntax; every name it uses must be a catalog
column, case-insensitively; it must give one true/false per row on the first rows) and then
evaluated per input chunk (split stage) or per HATS pixel (scoring task), reading only the
columns it names.  Unselected rows are **kept** in the output with status ``not_selected``
(no image fetched, no score): every input row still appears once, and the summary counts them
(``rows = scored + flagged + not_selected + out_of_domain``).  The catalog rules of ``--domain``
(:mod:`.domain`) are evaluated at the same place, for the same reason: a row they reject costs no fetch.
"""

from __future__ import annotations

import ast

import numpy as np
import pandas as pd

from ..catalogs.columns import require_column
from ..catalogs.read import CatalogError
from .domain import CatalogRules, mark_domain

# names an expression may use that are not columns (pandas.eval's functions and constants)
FUNCTIONS = {
    "abs",
    "sqrt",
    "exp",
    "expm1",
    "log",
    "log1p",
    "log10",
    "sin",
    "cos",
    "tan",
    "arcsin",
    "arccos",
    "arctan",
    "arctan2",
    "sinh",
    "cosh",
    "tanh",
    "arcsinh",
    "arccosh",
    "arctanh",
}
CONSTANTS = {"True", "False", "None", "inf", "nan"}
SAMPLE_ROWS = 1000


class SelectError(ValueError):
    """A --select expression that cannot be used; one line."""


def expression_names(expr: str) -> list[str]:
    """Column names used by ``expr`` (functions and constants left out); SelectError on bad syntax."""
    text = " ".join(expr.split())  # pandas.eval takes one line; so do we
    if not text:
        raise SelectError("--select: empty expression")
    if "`" in text:
        raise SelectError("--select: backtick-quoted names are not supported; use plain column names")
    try:
        tree = ast.parse(text, mode="eval")
    except SyntaxError as exc:
        raise SelectError(f"--select {expr!r}: syntax error at character {exc.offset or 0} ({exc.msg})") from None
    funcs = {id(n.func) for n in ast.walk(tree) if isinstance(n, ast.Call)}
    names = [n.id for n in ast.walk(tree) if isinstance(n, ast.Name) and id(n) not in funcs]
    return list(dict.fromkeys(n for n in names if n not in CONSTANTS and n not in FUNCTIONS))


def resolve(expr: str, available: list[str], path: str) -> dict:
    """``{name as written: column in the file's spelling}``; CatalogError naming an unknown column."""
    out = {n: require_column(available, n, path, "--select") for n in expression_names(expr)}
    if not out:
        raise SelectError(f"--select {expr!r}: names no column")
    return out


def evaluate(expr: str, columns: dict, df: pd.DataFrame, label: str, start: int = 0) -> np.ndarray:
    """Boolean mask of the rows of ``df`` selected by ``expr`` (missing/NaN comparisons: not selected)."""
    if len(df) == 0:
        return np.zeros(0, bool)
    frame = pd.DataFrame(
        {
            n: df[c].to_numpy() if not isinstance(df[c].dtype, pd.api.extensions.ExtensionDtype) else df[c]
            for n, c in columns.items()
        },
        index=pd.RangeIndex(len(df)),
    )
    try:
        res = frame.eval(" ".join(expr.split()), engine="python")
    except Exception as exc:  # any failure is the expression's, reported in one line
        msg = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise CatalogError(
            f"{label}: --select {expr!r} fails on rows {start}..{start + len(df) - 1} ({type(exc).__name__}: {msg})"
        ) from None
    if (
        not isinstance(res, pd.Series)
        or len(res) != len(df)
        or not (
            pd.api.types.is_bool_dtype(res.dtype)
            or (
                res.dtype == object
                and res.map(lambda v: isinstance(v, (bool, np.bool_)) or v is None or v is pd.NA).all()
            )
        )
    ):
        raise CatalogError(
            f"{label}: --select {expr!r} does not give one true/false per row "
            f"(got {type(res).__name__} {getattr(res, 'dtype', '')}); use a comparison"
        )
    return res.fillna(False).to_numpy(bool)


def mark_selected(plan, df: pd.DataFrame, start: int) -> pd.DataFrame:
    """Add the ``_selected`` column (--select) and the ``_domain`` column (the catalog rules of
    --domain, :mod:`.domain`) to one chunk's rows, and drop the columns read only for them.
    A no-op without either."""
    rules = getattr(plan, "domain", None) or {}
    if not plan.select and not rules.get("rules"):
        return df
    if plan.select:
        df = df.assign(_selected=evaluate(plan.select, plan.select_columns, df, plan.source_catalog, start))
    df = mark_domain(rules, df)
    needed = {*plan.keep, *plan.columns.values()}
    read_for = [*plan.select_columns.values(), *CatalogRules.from_dict(rules).columns]
    return df.drop(columns=[c for c in dict.fromkeys(read_for) if c not in needed])
