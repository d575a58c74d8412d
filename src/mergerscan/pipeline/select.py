"""``--select "EXPR"``: score only the rows for which an expression over catalog columns is true.

The expression is parsed once, at argument validation, into the allow-listed tree of
:mod:`.select_grammar` (never evaluated as Python: no ``eval``, no pandas engine).  At the start
every name it uses must be a catalog column (case-insensitively) and it must give one true/false
per row on the first rows; then it is evaluated per input chunk (split stage) or per HATS pixel
(scoring task), reading only the columns it names, by :func:`evaluate`, which walks only the
tree's node classes.  Unselected rows are **kept** in the output with status ``not_selected``
(no image fetched, no score): every input row still appears once, and the summary counts them
(``rows = scored + flagged + not_selected + out_of_domain``).  The catalog rules of ``--domain``
(:mod:`.domain`) are evaluated at the same place, for the same reason: a row they reject costs no fetch.

Missing values (null, NaN): a comparison or ``in`` with a missing operand is false (``!=`` and
``not in`` too), so a row whose compared value is missing is not selected by it; arithmetic on a
missing value is missing; a nullable boolean column's missing values are false.
"""

from __future__ import annotations

import operator
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa

from ..argument_error import literal
from ..catalogs.columns import require_column
from ..catalogs.read import CatalogError
from .domain import CatalogRules, mark_domain
from .select_grammar import (
    Arith,
    Call,
    Column,
    Compare,
    IsIn,
    Literal,
    Logic,
    Node,
    SelectError,
    Unary,
    names,
    parse,
    shown,
)

__all__ = ["SelectError", "evaluate", "expression_names", "mark_selected", "resolve"]
SAMPLE_ROWS = 1000


def expression_names(expr: str) -> list[str]:
    """Column names used by ``expr``; SelectError (one line) for anything outside the grammar."""
    return names(parse(expr))


def resolve(expr: str, available: list[str], path: str) -> dict:
    """``{name as written: column in the file's spelling}``; CatalogError naming an unknown column."""
    out = {n: require_column(available, n, path, "select") for n in expression_names(expr)}
    if not out:
        raise SelectError(f" {shown(expr)}: names no column")
    return out


# ---------------------------------------------------------------- values
class SelectTypeError(TypeError):
    """An operation the operands' types do not allow (e.g. a number compared with text)."""


@dataclass(frozen=True)
class Value:
    """A column, a literal or an intermediate result: ``data`` (a numpy array, or a Python scalar
    for literals) with its ``kind`` (bool, int, float, str) and where it is ``missing``."""

    data: Any  # a numpy array (a column, a result) or a Python scalar (a literal)
    kind: str
    missing: np.ndarray | bool = False


def column_value(s: pd.Series, name: str) -> Value:
    """A catalog column as a Value; numbers keep their numpy dtype (as pandas compared them)."""
    missing = s.isna().to_numpy(bool)
    dt = s.dtype
    if pd.api.types.is_bool_dtype(dt):
        return Value(s.to_numpy(bool, na_value=False), "bool", missing)
    if pd.api.types.is_integer_dtype(dt):
        np_dt = getattr(dt, "numpy_dtype", dt)
        return Value(s.to_numpy(np_dt, na_value=0), "int", missing)
    if isinstance(dt, pd.ArrowDtype) and pa.types.is_decimal(dt.pyarrow_dtype):  # a decimal column: compared as float64
        return Value(s.to_numpy(np.float64, na_value=np.nan), "float", missing)
    if pd.api.types.is_float_dtype(dt):
        return Value(s.to_numpy(getattr(dt, "numpy_dtype", dt), na_value=np.nan), "float", missing)
    if pd.api.types.is_string_dtype(dt) or pd.api.types.is_object_dtype(dt):
        values = s.to_numpy(object)
        values = np.array([v.decode("utf-8", "replace") if isinstance(v, bytes) else v for v in values], object)
        present = values[~missing]
        if all(isinstance(v, str) for v in present):
            return Value(np.where(missing, "", values).astype(object), "str", missing)
        if all(isinstance(v, (bool, np.bool_)) for v in present):  # a boolean column with nulls
            return Value(np.where(missing, False, values).astype(bool), "bool", missing)
        if all(isinstance(v, (int, float, Decimal)) and not isinstance(v, bool) for v in present):
            return Value(np.array([np.nan if m else float(v) for v, m in zip(values, missing)]), "float", missing)
    raise SelectTypeError(f"column {name!r} ({dt}) is not a number, text or true/false column")


def literal_value(v) -> Value:
    if v is None or (isinstance(v, float) and np.isnan(v)):  # None, nan: a missing value
        return Value(0, "none", True)
    kind = (
        "bool" if isinstance(v, bool) else "int" if isinstance(v, int) else "float" if isinstance(v, float) else "str"
    )
    return Value(v, kind, False)


NUMERIC = ("int", "float", "bool")
ARITH = {
    "+": operator.add,
    "-": operator.sub,
    "*": operator.mul,
    "/": operator.truediv,
    "//": operator.floordiv,
    "%": operator.mod,
    "**": operator.pow,
}
COMPARE = {
    "==": operator.eq,
    "!=": operator.ne,
    "<": operator.lt,
    "<=": operator.le,
    ">": operator.gt,
    ">=": operator.ge,
}


def _arith(node: Arith, env) -> Value:
    a, b = _eval(node.left, env), _eval(node.right, env)
    if "none" in (a.kind, b.kind) and {a.kind, b.kind} <= {*NUMERIC, "none"}:  # x + None: missing
        return Value(float("nan"), "float", True)
    if a.kind not in NUMERIC or b.kind not in NUMERIC:
        raise SelectTypeError(f"'{node.op}' needs numbers, not {a.kind} and {b.kind}")
    ints = a.kind != "float" and b.kind != "float"
    if not isinstance(a.data, np.ndarray) and not isinstance(b.data, np.ndarray):
        return _scalar_arith(node.op, _number(a), _number(b), ints)
    x, y = _number(a), _number(b)
    missing = a.missing | b.missing
    if ints and node.op in ("//", "%"):  # integer division by zero: missing (numpy would give 0)
        missing = missing | (np.asarray(y) == 0)
        y = np.where(np.asarray(y) == 0, 1, y)
    if ints and node.op == "**" and np.any(np.asarray(y) < 0):  # as for floats: 2 ** -1 is 0.5
        x = np.asarray(x, np.float64)
    with np.errstate(all="ignore"):
        out = ARITH[node.op](x, y)
    kind = "int" if ints and node.op != "/" and np.asarray(out).dtype.kind in "iub" else "float"
    return Value(out, kind, missing)


def _number(v: Value):
    """A number operand: true/false as the integers 1/0 (numpy would add booleans as 'or')."""
    if v.kind != "bool":
        return v.data
    return np.asarray(v.data, np.int64) if isinstance(v.data, np.ndarray) else int(bool(v.data))


def _missing(v: Value):
    """Where a compared operand is missing: null, or NaN (also a NaN made by arithmetic)."""
    if v.kind == "float":
        with np.errstate(all="ignore"):
            return v.missing | np.isnan(v.data)
    return v.missing


def _scalar_arith(op: str, x, y, ints: bool) -> Value:
    """Two literals: Python numbers stay Python numbers (compared with a column as pandas did);
    a division by zero is missing; a power is bounded (``9**9**9`` is not computed exactly)."""
    if op == "**" and ints and abs(y) > 64:
        x, ints = float(x), False
    try:
        out = ARITH[op](x, y)
    except ZeroDivisionError:
        return Value(float("nan"), "float", True)
    kind = "int" if ints and isinstance(out, int) else "float"
    return Value(float(out) if kind == "float" else out, kind, False)


def _compare(node: Compare, env) -> Value:
    vals = [_eval(o, env) for o in node.operands]
    result: np.ndarray | bool = True
    for op, a, b in zip(node.ops, vals, vals[1:]):
        if "none" in (a.kind, b.kind):  # x == None: missing, never true
            result = result & False
            continue
        if (a.kind == "str") != (b.kind == "str"):
            raise SelectTypeError(f"'{op}' between {a.kind} and {b.kind}")
        with np.errstate(all="ignore"):
            res = COMPARE[op](a.data, b.data)
        result = result & np.asarray(res, bool) & ~(_missing(a) | _missing(b))
    return Value(result, "bool", False)


def _isin(node: IsIn, env) -> Value:
    a = _eval(node.operand, env)
    values = [v.value for v in node.values if v.value is not None]
    if any(isinstance(v, str) != (a.kind == "str") for v in values):
        raise SelectTypeError(f"'in' between {a.kind} and a list of {', '.join(type(v).__name__ for v in values)}")
    hit = np.isin(np.asarray(a.data), np.array(values, dtype=object if a.kind == "str" else None))
    if not values:
        hit = np.zeros(np.shape(a.data), np.bool_)
    return Value((~hit if node.negate else hit) & ~np.asarray(_missing(a)), "bool", False)


def _logic(node: Logic, env) -> Value:
    vals = [_eval(o, env) for o in node.operands]
    for v in vals:
        if v.kind != "bool":
            raise SelectTypeError(f"'{node.op}' needs true/false operands, not {v.kind} (use a comparison)")
    f = np.logical_and if node.op == "and" else np.logical_or
    out = vals[0].data & ~np.asarray(vals[0].missing)
    for v in vals[1:]:
        out = f(out, v.data & ~np.asarray(v.missing))
    return Value(out, "bool", False)


def _unary(node: Unary, env) -> Value:
    a = _eval(node.operand, env)
    if node.op == "not":
        if a.kind != "bool":
            raise SelectTypeError(f"'not' needs a true/false operand, not {a.kind} (use a comparison)")
        return Value(~np.asarray(a.data & ~np.asarray(a.missing)), "bool", False)
    if a.kind not in ("int", "float"):
        raise SelectTypeError(f"unary '{node.op}' needs a number, not {a.kind}")
    return Value(-a.data if node.op == "-" else a.data, a.kind, a.missing)


def _call(node: Call, env) -> Value:
    args = [_eval(a, env) for a in node.args]
    if any(a.kind not in NUMERIC for a in args):
        raise SelectTypeError(f"{node.name}() needs numbers")
    fn = np.absolute if node.name == "abs" else getattr(np, node.name)  # name from the allow-list
    with np.errstate(all="ignore"):
        out = fn(*(_number(a) for a in args))
    kind = "int" if node.name == "abs" and args[0].kind == "int" else "float"
    missing = args[0].missing if len(args) == 1 else args[0].missing | args[1].missing
    return Value(out, kind, missing)


# the evaluator dispatches on the tree's node classes, and only on them
DISPATCH = {
    Column: lambda node, env: env[node.name],
    Literal: lambda node, env: literal_value(node.value),
    Arith: _arith,
    Compare: _compare,
    IsIn: _isin,
    Logic: _logic,
    Unary: _unary,
    Call: _call,
}


def _eval(node: Node, env: dict) -> Value:
    return DISPATCH[type(node)](node, env)


def evaluate_tree(tree: Node, env: dict[str, Value], n: int) -> np.ndarray:
    """The boolean mask of ``n`` rows; SelectTypeError when the result is not true/false."""
    v = _eval(tree, env)
    if v.kind != "bool":
        raise SelectTypeError(f"gives {v.kind}, not one true/false per row; use a comparison")
    return np.broadcast_to(np.asarray(v.data & ~np.asarray(v.missing), bool), (n,)).copy()


def evaluate(expr: str, columns: dict, df: pd.DataFrame, label: str, start: int = 0) -> np.ndarray:
    """Boolean mask of the rows of ``df`` selected by ``expr`` (missing/NaN comparisons: not selected)."""
    tree = parse(expr)
    if len(df) == 0:
        return np.zeros(0, bool)
    where = f"rows {start}..{start + len(df) - 1}"
    try:
        env = {n: column_value(df[c].reset_index(drop=True), n) for n, c in columns.items()}
        return evaluate_tree(tree, env, len(df))
    except SelectTypeError as exc:
        raise CatalogError(
            f"{literal(label)}: {{select}} {literal(shown(expr))} fails on {where} ({literal(exc)})", "select"
        ) from None
    except (
        ArithmeticError,
        ValueError,
        TypeError,
        RecursionError,
    ) as exc:  # e.g. an integer overflow: this expression's
        msg = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise CatalogError(
            f"{literal(label)}: {{select}} {literal(shown(expr))} fails on {where} ({type(exc).__name__}: {literal(msg)})",
            "select",
        ) from None


def mark_selected(plan, df: pd.DataFrame, start: int) -> pd.DataFrame:
    """Add the ``_selected`` column (--select) and the ``_domain`` column (the catalog rules of
    --domain, :mod:`.domain`) to one chunk's rows, and drop the columns read only for them.
    A no-op without either."""
    rules: CatalogRules = plan.domain
    if not plan.select and not rules.rules:
        return df
    if plan.select:
        df = df.assign(_selected=evaluate(plan.select, plan.select_columns, df, plan.source_catalog, start))
    df = mark_domain(rules, df)
    needed = {*plan.keep, *plan.columns.values()}
    read_for = [*plan.select_columns.values(), *rules.columns]
    return df.drop(columns=[c for c in dict.fromkeys(read_for) if c not in needed])
