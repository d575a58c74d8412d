"""The ``--select`` grammar: user text parsed once with :mod:`ast` into a small typed tree.

Nothing here evaluates anything.  The text is tokenized first (so the error can name the
offending token: ``'.__class__'``, ``'@'``, ``':='``...), ``&``/``|`` are read as ``and``/``or``
with their precedence (as pandas ``eval`` did: ``a < 1 & b > 2`` means ``(a < 1) and (b > 2)``),
then :func:`ast.parse` gives the syntax tree and every node is converted to one of the node
classes below through an allow-list.  Anything else - attribute access, subscripts, calls to
anything but :data:`FUNCTIONS`, lambdas, comprehensions, conditional expressions, dunder names,
starred arguments, f-strings, bytes, walrus, keyword arguments - is a :class:`SelectError`
naming it.  ``select.evaluate`` walks only these classes.

Accepted (docs/output.md, *Row selection*): column names, numbers, strings, ``True``/``False``/
``None``/``inf``/``nan``; ``+ - * / // % **`` and unary ``-``/``+``; ``== != < <= > >=``
(chained too); ``and or not`` (also written ``& | ~``); ``x in [..]`` / ``x not in [..]`` over a
list or tuple of literals; the functions in :data:`FUNCTIONS` with positional arguments.
"""

from __future__ import annotations

import ast
import io
import keyword
import tokenize
from dataclasses import dataclass
from functools import lru_cache

from ..argument_error import ArgumentError, literal

# name -> number of arguments (numpy's functions of the same name; pandas.eval's list)
FUNCTIONS = {
    **dict.fromkeys(
        [
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
            "sinh",
            "cosh",
            "tanh",
            "arcsinh",
            "arccosh",
            "arctanh",
        ],
        1,
    ),
    "arctan2": 2,
}
CONSTANTS = {"True": True, "False": False, "None": None, "inf": float("inf"), "nan": float("nan")}
KEYWORDS = {"and", "or", "not", "in", "True", "False", "None"}
OPERATORS = {"(", ")", "[", "]", ",", "+", "-", "*", "/", "//", "%", "**", "<", "<=", ">", ">=", "==", "!="}
OPERATORS |= {"&", "|", "~"}
MAX_CHARS = 10_000  # a selection longer than this is not typed by hand
MAX_NODES = 2_000
MAX_DEPTH = 200  # the evaluator recurses once per level
# what a refused token is, for the message
TOKEN_WHAT = {
    ".": "attribute access",
    "@": "'@' (local variables / matrix product)",
    ":=": "assignment",
    "=": "assignment or keyword argument",
    ":": "slices, lambdas and dicts",
    "{": "dicts and sets",
    "}": "dicts and sets",
    ";": "statements",
    "^": "bitwise xor",
    "<<": "shifts",
    ">>": "shifts",
    "...": "Ellipsis",
    "->": "annotations",
}
NODE_WHAT = {
    ast.Attribute: "attribute access",
    ast.Subscript: "subscripts",
    ast.Lambda: "lambdas",
    ast.IfExp: "conditional expressions",
    ast.ListComp: "comprehensions",
    ast.SetComp: "comprehensions",
    ast.DictComp: "comprehensions",
    ast.GeneratorExp: "comprehensions",
    ast.Starred: "starred arguments",
    ast.JoinedStr: "f-strings",
    ast.NamedExpr: "assignment",
    ast.Dict: "dicts",
    ast.Set: "sets",
    ast.Slice: "slices",
    ast.Await: "await",
    ast.Yield: "yield",
}


class SelectError(ArgumentError):
    """A --select expression that cannot be used; one line: the argument, then ``detail`` (what
    follows it, e.g. ``" a >: syntax error ..."``)."""

    def __init__(self, detail: str):
        super().__init__("{select}" + literal(detail), "select")


# ---------------------------------------------------------------- the tree (all that is evaluated)
@dataclass(frozen=True)
class Column:
    name: str  # as written in the expression (matched to the catalog case-insensitively)


@dataclass(frozen=True)
class Literal:
    value: bool | int | float | str | None


@dataclass(frozen=True)
class Unary:
    op: str  # "-", "+" or "not"
    operand: Node


@dataclass(frozen=True)
class Arith:
    op: str  # "+", "-", "*", "/", "//", "%", "**"
    left: Node
    right: Node


@dataclass(frozen=True)
class Compare:
    ops: tuple[str, ...]  # "==", "!=", "<", "<=", ">", ">=": a < b <= c is (a < b) and (b <= c)
    operands: tuple[Node, ...]


@dataclass(frozen=True)
class Logic:
    op: str  # "and" or "or"
    operands: tuple[Node, ...]


@dataclass(frozen=True)
class IsIn:
    operand: Node
    values: tuple[Literal, ...]
    negate: bool  # "not in"


@dataclass(frozen=True)
class Call:
    name: str  # a key of FUNCTIONS
    args: tuple[Node, ...]


Node = Column | Literal | Unary | Arith | Compare | Logic | IsIn | Call
NODE_TYPES = (Column, Literal, Unary, Arith, Compare, Logic, IsIn, Call)

ARITH = {ast.Add: "+", ast.Sub: "-", ast.Mult: "*", ast.Div: "/", ast.FloorDiv: "//", ast.Mod: "%", ast.Pow: "**"}
COMPARE = {ast.Eq: "==", ast.NotEq: "!=", ast.Lt: "<", ast.LtE: "<=", ast.Gt: ">", ast.GtE: ">="}
UNARY = {ast.USub: "-", ast.UAdd: "+", ast.Not: "not", ast.Invert: "not"}


# ---------------------------------------------------------------- text -> tree
@lru_cache(maxsize=64)
def parse(expr: str) -> Node:
    """The validated tree of ``expr``; :class:`SelectError` (one line, naming the offending
    token) for anything outside the grammar.  Cached: a worker parses each expression once."""
    text = " ".join(str(expr).split())  # one line, as before
    if not text:
        raise SelectError(": empty expression")
    if len(text) > MAX_CHARS:
        raise SelectError(f": expression longer than {MAX_CHARS:,} characters")
    rewritten, where = _rewrite(text, expr)
    try:
        tree = ast.parse(rewritten, mode="eval")
    except SyntaxError as exc:
        at = where[min(max((exc.offset or 1) - 1, 0), len(where) - 1)] + 1
        raise SelectError(f" {shown(expr)}: syntax error at character {at} ({exc.msg})") from None
    except (RecursionError, MemoryError, ValueError):
        raise SelectError(f" {shown(expr)}: expression nested more than {MAX_DEPTH} deep") from None
    if sum(1 for _ in ast.walk(tree)) > MAX_NODES:
        raise SelectError(f" {shown(expr)}: more than {MAX_NODES} terms")
    try:
        out = _convert(tree.body, rewritten, expr)
    except RecursionError:
        out = None
    if out is None or depth(out) > MAX_DEPTH:  # the evaluator recurses as deep: bounded here
        raise SelectError(f" {shown(expr)}: expression nested more than {MAX_DEPTH} deep")
    return out


def depth(node: Node) -> int:
    """Levels of the tree (iterative: any depth is measured without recursion)."""
    deepest, stack = 0, [(node, 1)]
    while stack:
        n, d = stack.pop()
        deepest = max(deepest, d)
        stack += [(c, d + 1) for c in children(n)]
    return deepest


def shown(expr: str, limit: int = 160) -> str:
    """The expression as quoted in a message: one line, cut to ``limit`` characters."""
    text = repr(" ".join(str(expr).split()))
    return text if len(text) <= limit else f"{text[: limit - 20]}...' ({len(expr):,} characters)"


def names(node: Node) -> list[str]:
    """The column names a tree uses, in order of first use."""
    out: list[str] = []

    def walk(n: Node) -> None:
        if isinstance(n, Column):
            out.append(n.name)
        for child in children(n):
            walk(child)

    walk(node)
    return list(dict.fromkeys(out))


def children(n: Node) -> tuple[Node, ...]:
    if isinstance(n, Unary):
        return (n.operand,)
    if isinstance(n, Arith):
        return (n.left, n.right)
    if isinstance(n, (Compare, Logic)):
        return n.operands
    if isinstance(n, IsIn):
        return (n.operand, *n.values)
    if isinstance(n, Call):
        return n.args
    return ()


def _refuse(expr: str, what: str) -> SelectError:
    return SelectError(
        f" {shown(expr)}: {what} is not allowed (a selection uses column names, literals, "
        f"arithmetic, comparisons, and/or/not, in [...] and the functions {', '.join(FUNCTIONS)})"
    )


def _rewrite(text: str, expr: str) -> tuple[str, list[int]]:
    """``text`` with ``&``/``|`` as ``and``/``or`` (and, for each character of the result, its
    position in ``text``); refuses tokens outside the grammar, naming them."""
    try:
        toks = [t for t in tokenize.generate_tokens(io.StringIO(text).readline)]
    except (tokenize.TokenError, SyntaxError) as exc:  # an unclosed bracket or string: Python's message
        try:
            ast.parse(text, mode="eval")  # parsing only: nothing is run
        except SyntaxError as err:
            raise SelectError(f" {shown(expr)}: syntax error at character {err.offset or 0} ({err.msg})") from None
        except (RecursionError, MemoryError, ValueError):
            pass
        raise SelectError(f" {shown(expr)}: syntax error ({exc.args[0] if exc.args else exc})") from None
    out: list[str] = []
    where: list[int] = []
    pos = 0
    for k, t in enumerate(toks):
        _check_token(t, toks[k + 1] if k + 1 < len(toks) else None, expr)
        start, end = t.start[1], t.end[1]
        if t.type in (tokenize.NEWLINE, tokenize.NL, tokenize.ENDMARKER):
            continue
        out.append(text[pos:start])
        where += range(pos, start)
        new = {"&": " and ", "|": " or "}.get(t.string, t.string) if t.type == tokenize.OP else t.string
        out.append(new)
        where += [start] * len(new) if new != t.string else range(start, end)
        pos = end
    return "".join(out), where or [0]


def _check_token(t: tokenize.TokenInfo, nxt: tokenize.TokenInfo | None, expr: str) -> None:
    s = t.string
    if t.type == tokenize.OP and s not in OPERATORS:
        token = s + (nxt.string if s == "." and nxt is not None and nxt.type == tokenize.NAME else "")
        raise _refuse(expr, f"{token!r} ({TOKEN_WHAT.get(s, 'this operator')})")
    if t.type == tokenize.NAME:
        if keyword.iskeyword(s) and s not in KEYWORDS:
            raise _refuse(expr, f"the keyword {s!r}")
        if s.startswith("__"):
            raise _refuse(expr, f"the name {s!r} (names starting with '__')")
    elif t.type == tokenize.STRING:
        prefix = s[: min(i for i in (s.find("'"), s.find('"')) if i >= 0)].lower()
        if set(prefix) - {"r", "u"}:
            raise _refuse(expr, f"the {prefix}-string {s[:20]!r}")
    elif t.type == tokenize.COMMENT:
        raise _refuse(expr, "'#' (comments)")
    elif t.type == tokenize.ERRORTOKEN and s.strip() in ("'", '"'):
        raise SelectError(f" {shown(expr)}: syntax error at character {t.start[1] + 1} (unterminated string)")
    elif t.type == tokenize.ERRORTOKEN and s.strip():
        raise _refuse(expr, f"the character {s!r}")


def _convert(node: ast.AST, text: str, expr: str) -> Node:
    """One allowed ast node -> its tree node; anything else refused, naming it."""
    if isinstance(node, ast.BoolOp):
        return Logic(
            "and" if isinstance(node.op, ast.And) else "or", tuple(_convert(v, text, expr) for v in node.values)
        )
    if isinstance(node, ast.UnaryOp) and type(node.op) in UNARY:
        return Unary(UNARY[type(node.op)], _convert(node.operand, text, expr))
    if isinstance(node, ast.BinOp) and type(node.op) in ARITH:
        return Arith(ARITH[type(node.op)], _convert(node.left, text, expr), _convert(node.right, text, expr))
    if isinstance(node, ast.Compare):
        return _compare(node, text, expr)
    if isinstance(node, ast.Name):
        if node.id in CONSTANTS:
            return Literal(CONSTANTS[node.id])
        return Column(node.id)  # also a bare function name: a column called 'exp' or 'log' is usable
    if isinstance(node, ast.Constant):
        v = node.value
        if v is None or isinstance(v, (bool, int, float, str)):
            return Literal(v)
        raise _refuse(expr, f"the literal {ast.get_source_segment(text, node)!r}")
    if isinstance(node, ast.Call):
        return _call(node, text, expr)
    if isinstance(node, (ast.List, ast.Tuple)):
        raise _refuse(expr, f"the list {ast.get_source_segment(text, node)!r} outside 'in [...]'")
    what = NODE_WHAT.get(type(node), type(node).__name__)
    raise _refuse(expr, f"{ast.get_source_segment(text, node)!r} ({what})")


def _compare(node: ast.Compare, text: str, expr: str) -> Node:
    if any(isinstance(o, (ast.In, ast.NotIn)) for o in node.ops):
        if len(node.ops) != 1:
            raise _refuse(expr, "chaining 'in' with other comparisons")
        right = node.comparators[0]
        if not isinstance(right, (ast.List, ast.Tuple)):
            raise _refuse(expr, f"'in' over {ast.get_source_segment(text, right)!r} (use a list of literals)")
        values = tuple(_convert(v, text, expr) for v in right.elts)
        for v, a in zip(values, right.elts):
            if not isinstance(v, Literal) and not (
                isinstance(v, Unary) and v.op == "-" and isinstance(v.operand, Literal)
            ):
                raise _refuse(expr, f"{ast.get_source_segment(text, a)!r} in an 'in' list (literals only)")
        lits = tuple(v if isinstance(v, Literal) else _negated(v, expr) for v in values)  # type: ignore[arg-type]
        return IsIn(_convert(node.left, text, expr), lits, isinstance(node.ops[0], ast.NotIn))
    ops = []
    for o in node.ops:
        if type(o) not in COMPARE:
            raise _refuse(expr, f"the comparison {type(o).__name__}")
        ops.append(COMPARE[type(o)])
    operands = (_convert(node.left, text, expr), *(_convert(c, text, expr) for c in node.comparators))
    return Compare(tuple(ops), operands)


def _negated(v: Unary, expr: str) -> Literal:
    x = v.operand.value  # type: ignore[union-attr]
    if isinstance(x, bool) or not isinstance(x, (int, float)):
        raise _refuse(expr, f"'-' before {x!r}")
    return Literal(-x)


def _call(node: ast.Call, text: str, expr: str) -> Node:
    f = node.func
    if not isinstance(f, ast.Name) or f.id not in FUNCTIONS:
        called = ast.get_source_segment(text, f) or type(f).__name__
        raise _refuse(expr, f"calling {called!r}")
    if node.keywords:
        raise _refuse(expr, f"keyword arguments to {f.id}()")
    if len(node.args) != FUNCTIONS[f.id]:
        raise SelectError(f" {shown(expr)}: {f.id}() takes {FUNCTIONS[f.id]} argument(s), got {len(node.args)}")
    return Call(f.id, tuple(_convert(a, text, expr) for a in node.args))
