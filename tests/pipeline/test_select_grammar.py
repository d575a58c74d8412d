"""--select's grammar, property-based (hypothesis): generated valid expressions give the mask a
plain numpy reference gives (and, without missing values, what pandas ``eval`` gave before), and
generated hostile expressions - attribute access, subscripts, calls, lambdas, comprehensions,
dunders, f-strings, walrus, ``@``... inserted anywhere in a valid one - and arbitrary text are
refused with a one-line SelectError before anything is evaluated.  Instrumented: a Python audit
hook records every ``exec``/``compile``-of-code/``os.system``/``subprocess``/``open`` event and the
evaluator's dispatch table records every node class it is asked to evaluate."""

from __future__ import annotations

import gc
import re
import string
import sys
import threading

import numpy as np
import pandas as pd
import pytest

hypothesis = pytest.importorskip("hypothesis", reason="pip install hypothesis (the dev extra)")
from hypothesis import HealthCheck, assume, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from mergerscan.pipeline import select as sel  # noqa: E402
from mergerscan.pipeline.select_grammar import FUNCTIONS, NODE_TYPES, SelectError, children, parse  # noqa: E402

N = 40
RNG = np.random.default_rng(3)
FRAME = pd.DataFrame(
    {
        "a": np.where(RNG.random(N) < 0.2, np.nan, RNG.uniform(-50, 50, N).round(1)),  # float64, with NaN
        "m": RNG.uniform(14, 18, N).astype(np.float32),  # float32 (compared as pandas did: weakly)
        "i": RNG.integers(-1000, 1000, N),  # int64
        "n": pd.array(np.where(RNG.random(N) < 0.2, None, RNG.integers(0, 9, N)), dtype="Int64"),
        "s": np.where(RNG.random(N) < 0.2, None, RNG.choice(["gal", "star", "qso"], N)).astype(object),
        "b": RNG.random(N) < 0.5,
    }
)
COLS = {c: c for c in FRAME}
SETTINGS = settings(max_examples=300, deadline=None, suppress_health_check=list(HealthCheck))
VALID_SETTINGS = settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck))  # evaluates each

# ---------------------------------------------------------------- instrumentation
WATCHED = ("exec", "os.system", "os.exec", "os.posix_spawn", "os.spawn", "subprocess.Popen", "open", "os.remove")
_events = threading.local()


def _hook(event, args):
    log = getattr(_events, "log", None)
    if log is not None and event.startswith(WATCHED):
        log.append(event)


sys.addaudithook(_hook)  # cannot be removed; records only while a test's block is watching


class watch:
    """Records the watched audit events and the node classes the evaluator dispatches on."""

    def __enter__(self):
        # no garbage collection inside the block: a finalizer of some unrelated object (a closed
        # cluster's, a subprocess's) may run in this thread and open a file; seen once in CI as
        # ['open', 'open'] that did not reproduce
        self._gc = gc.isenabled()
        gc.disable()
        _events.log = self.events = []
        self.dispatched: list[type] = []
        self._saved = dict(sel.DISPATCH)
        for k, f in self._saved.items():
            sel.DISPATCH[k] = lambda node, env, f=f: (self.dispatched.append(type(node)), f(node, env))[1]
        return self

    def __exit__(self, *exc):
        _events.log = None
        if self._gc:
            gc.enable()
        sel.DISPATCH.clear()
        sel.DISPATCH.update(self._saved)


def _nodes(tree):
    yield tree
    for c in children(tree):
        yield from _nodes(c)


# ---------------------------------------------------------------- valid expressions + numpy reference
def _col(name):
    v = FRAME[name]
    return v.to_numpy(), v.isna().to_numpy()


def _lit(x):
    return x, False


OPS = {"+": np.add, "-": np.subtract, "*": np.multiply, "/": np.divide}


def _arith(op, x, y):
    (a, ma), (b, mb) = x, y
    if np.isscalar(a) and np.isscalar(b) and not isinstance(a, np.generic) and not isinstance(b, np.generic):
        if op == "/" and b == 0:  # two literals: a division by zero is missing
            return float("nan"), True
        return {"+": a + b, "-": a - b, "*": a * b, "/": a / b if op == "/" else 0}[op], False
    with np.errstate(all="ignore"):
        return OPS[op](a, b), ma | mb


def numeric():
    base = st.one_of(
        st.sampled_from(["a", "m", "i"]).map(lambda c: (c, _col(c))),
        st.integers(-20, 20).map(lambda k: (f"({k})", _lit(k))),
        st.floats(-60, 60, allow_nan=False).map(lambda f: (f"({f!r})", _lit(f))),
    )

    def extend(inner):
        binop = st.tuples(st.sampled_from("+-*/"), inner, inner).map(
            lambda t: (f"({t[1][0]} {t[0]} {t[2][0]})", _arith(t[0], t[1][1], t[2][1]))
        )
        neg = inner.map(lambda t: (f"(-{t[0]})", (-t[1][0], t[1][1])))
        fn = st.tuples(st.sampled_from(["abs", "sqrt", "log10", "sin", "arctan"]), inner).map(
            lambda t: (f"{t[0]}({t[1][0]})", _func(t[0], t[1][1]))
        )
        return st.one_of(binop, neg, fn)

    return st.recursive(base, extend, max_leaves=4)


def _func(name, x):
    a, m = x
    with np.errstate(all="ignore"):
        return (np.absolute(a) if name == "abs" else getattr(np, name)(a)), m


CMP = {"==": np.equal, "!=": np.not_equal, "<": np.less, "<=": np.less_equal, ">": np.greater, ">=": np.greater_equal}


def _cmp(ops, operands):
    """(mask, touched): the comparison's rows, and the rows where an operand was missing or NaN."""
    out, touched = np.ones(N, bool), np.zeros(N, bool)
    for op, (a, ma), (b, mb) in zip(ops, operands, operands[1:]):
        miss = np.asarray(ma | mb, bool) | np.isnan(np.asarray(a, np.float64)) | np.isnan(np.asarray(b, np.float64))
        with np.errstate(all="ignore"):
            out &= np.asarray(CMP[op](a, b), bool) & ~miss
        touched |= miss
    if not any(isinstance(a, np.ndarray) for a, _ in operands):  # literals only: pandas read `not (1 == 1)`
        touched[:] = True  # as ~True == -2; its answer is not compared
    return out, touched


def comparison():
    chain = st.integers(1, 2).flatmap(
        lambda k: st.tuples(
            st.lists(st.sampled_from(list(CMP)), min_size=k, max_size=k),
            st.lists(numeric(), min_size=k + 1, max_size=k + 1),
        )
    )
    num = chain.map(
        lambda t: (
            "(" + " ".join(x for pair in zip([o[0] for o in t[1]], [*t[0], ""]) for x in pair).strip() + ")",
            *_cmp(t[0], [o[1] for o in t[1]]),
        )
    )
    words = st.lists(st.sampled_from(["gal", "star", "qso", "x"]), min_size=1, max_size=3)
    s = FRAME["s"].to_numpy(object)
    sm = FRAME["s"].isna().to_numpy()
    text_eq = st.tuples(st.sampled_from(["==", "!="]), st.sampled_from(["gal", "star", "none"])).map(
        lambda t: (f"(s {t[0]} {t[1]!r})", np.array([(v == t[1]) == (t[0] == "==") for v in s]) & ~sm, sm)
    )
    text_in = st.tuples(st.booleans(), words).map(
        lambda t: (f"(s {'not in' if t[0] else 'in'} {t[1]!r})", np.array([(v in t[1]) != t[0] for v in s]) & ~sm, sm)
    )
    n, nm = FRAME["n"].to_numpy(np.int64, na_value=0), FRAME["n"].isna().to_numpy()
    int_in = st.tuples(st.booleans(), st.lists(st.integers(0, 9), max_size=4)).map(
        lambda t: (f"(n {'not in' if t[0] else 'in'} {tuple(t[1])!r})", (np.isin(n, t[1]) != t[0]) & ~nm, nm)
    )
    b = st.just(("b", FRAME["b"].to_numpy(), np.zeros(N, bool)))
    return st.one_of(num, num, text_eq, text_in, int_in, b)


def boolean():
    """(text, mask, touched): a selection, the rows it selects, the rows where a compared value was
    missing or NaN (only there may the old pandas eval have disagreed)."""

    def extend(inner):
        words = st.tuples(st.sampled_from(["and", "or", "&", "|"]), inner, inner).map(
            lambda t: (
                f"({t[1][0]} {t[0]} {t[2][0]})",
                (t[1][1] & t[2][1]) if t[0] in ("and", "&") else (t[1][1] | t[2][1]),
                t[1][2] | t[2][2],
            )
        )
        neg = st.tuples(st.sampled_from(["not ", "~"]), inner).map(lambda t: (f"({t[0]}{t[1][0]})", ~t[1][1], t[1][2]))
        return st.one_of(words, neg)

    return st.recursive(comparison(), extend, max_leaves=4)


@VALID_SETTINGS
@given(boolean())
def test_valid_expressions_match_a_numpy_reference(case):
    text, want, _ = case
    with watch() as w:
        tree = parse(text)
        got = sel.evaluate(text, {c: c for c in sel.expression_names(text)}, FRAME, "cat.fits")
    assert got.dtype == bool and got.tolist() == np.broadcast_to(want, (N,)).tolist(), text
    assert not w.events, (text, w.events)  # nothing executed, opened or spawned
    assert set(w.dispatched) <= set(NODE_TYPES) and all(type(x) in NODE_TYPES for x in _nodes(tree))


@VALID_SETTINGS
@given(boolean())
def test_where_nothing_compared_is_missing_the_mask_is_what_pandas_eval_gave(case):
    """The old implementation, pandas eval (python engine) - here, in the test, on the test's own
    generated text - gives the same selection on every row where no compared value is missing
    or NaN (there the rule is now: false)."""
    text, _, touched = case
    try:
        old = FRAME.eval(text, engine="python")
    except Exception:  # pandas refused it (e.g. an empty 'in ()'): nothing to compare with
        old = None
    # pandas read a comparison of two literals as a Python bool and ``not`` of it as ``~True == -2``:
    # only selections it gave as one true/false per row are compared
    assume(isinstance(old, pd.Series) and pd.api.types.is_bool_dtype(old.dtype))
    got = sel.evaluate(text, {c: c for c in sel.expression_names(text)}, FRAME, "cat.fits")
    keep = ~np.broadcast_to(touched, (N,))
    assert got[keep].tolist() == old.fillna(False).to_numpy(bool)[keep].tolist(), text


# ---------------------------------------------------------------- hostile expressions
IDENT = st.from_regex(r"[A-Za-z_][A-Za-z0-9_]{0,8}", fullmatch=True)
DUNDER = st.sampled_from(
    ["__class__", "__bases__", "__subclasses__", "__globals__", "__builtins__", "__import__", "__dict__"]
)
NOT_A_FUNCTION = IDENT.filter(
    lambda s: s not in FUNCTIONS and s not in {"and", "or", "not", "in", "True", "False", "None"}
)
HOSTILE = st.one_of(
    st.tuples(st.sampled_from(["a", "s", "()", "''", "1", "(a)"]), st.one_of(IDENT, DUNDER)).map(
        lambda t: f"{t[0]}.{t[1]}"
    ),
    st.tuples(
        st.sampled_from(["a", "s", "()", "''"]), st.one_of(IDENT, DUNDER), st.sampled_from(["()", "('/tmp/x')", "(1)"])
    ).map(lambda t: f"{t[0]}.{t[1]}{t[2]}"),
    st.tuples(st.sampled_from(["a", "s", "b"]), st.sampled_from(["[0]", "[1:2]", "[::-1]", "['x']", "[a]"])).map(
        "".join
    ),
    st.tuples(NOT_A_FUNCTION, st.sampled_from(["()", "(a)", "('os')", "(a, 1)"])).map("".join),
    DUNDER,
    DUNDER.map(lambda d: f"{d}('os')"),
    st.sampled_from(
        [
            "().__class__.__bases__[0].__subclasses__()",
            "__import__('os').system('touch pwned')",
            "ra.to_csv('/tmp/pwned')",
            "@var",
            "@a",
            "a @ a",
            "(lambda: 1)()",
            "lambda x: x",
            "[x for x in a]",
            "{x for x in a}",
            "{'k': a}",
            "{a}",
            "(x for x in a)",
            "(x := 1)",
            "f'{a}'",
            "f'{a.__class__}'",
            "b'x'",
            "1j",
            "a if b else a",
            "abs(*a)",
            "abs(**a)",
            "abs(x=a)",
            "a is None",
            "a is not None",
            "not a is b",
            "a in b",
            "a in s",
            "a in [b]",
            "a in [abs(a)]",
            "yield a",
            "await a",
            "...",
            "a; b",
            "a = 1",
            "a ^ 1",
            "a << 1",
            "a >> 1",
            "`a`",
            "$a",
            "a ? b",
            "a # comment",
            "eval('1')",
            "exec('1')",
            "open('/etc/passwd')",
            "getattr(a, 'x')",
            "globals()",
            "print(1)",
            "breakpoint()",
            "a.__class__.__mro__[-1]",
            "(1).__class__",
        ]
    ),
)


@st.composite
def hostile_expression(draw):
    """A hostile fragment put somewhere in a valid expression."""
    text = draw(boolean())[0]
    frag = draw(HOSTILE)
    where = draw(st.sampled_from(["alone", "and", "compare", "arith", "func", "replace"]))
    if where == "alone":
        return frag
    if where == "and":
        return f"{text} and {frag}" if draw(st.booleans()) else f"{frag} or {text}"
    if where == "compare":
        return f"({frag}) > 1 and {text}"
    if where == "arith":
        return f"(a + ({frag})) < 3 or {text}"
    if where == "func":
        return f"sqrt({frag}) < 3 and {text}"
    spots = [m.span() for m in re.finditer(r"(?<![\w'])[amisb](?![\w'])", text)]  # a column, not in a string
    if not spots:
        return frag
    i, j = draw(st.sampled_from(spots))
    return f"{text[:i]}({frag}){text[j:]}"


@SETTINGS
@given(hostile_expression())
def test_hostile_expressions_are_refused_before_anything_evaluates(text):
    with watch() as w, pytest.raises(SelectError) as e:
        parse(text)
    msg = e.value.render({"select": "--select"})  # as process-catalog words it
    assert msg.startswith("--select") and "\n" not in msg and "Traceback" not in msg
    assert str(e.value).startswith("select") and e.value.argument == "select"
    assert not w.events and not w.dispatched, (text, w.events, w.dispatched)


PRINTABLE = st.text(alphabet=string.printable + "äΔ\x00\udc80", max_size=60)


@SETTINGS
@given(st.one_of(PRINTABLE, st.text(max_size=40)))
def test_any_text_is_a_tree_of_allowed_nodes_or_one_line_error(text):
    with watch() as w:
        try:
            tree = parse(text)
        except SelectError as exc:
            assert "\n" not in str(exc)
        else:
            assert all(type(x) in NODE_TYPES for x in _nodes(tree))
    assert not w.events and not w.dispatched


def test_the_evaluator_dispatches_on_the_tree_classes_only():
    assert set(sel.DISPATCH) == set(NODE_TYPES)


@pytest.mark.parametrize(
    "expr",
    ["ra.__class__", "().__class__.__bases__[0].__subclasses__()", "ra.to_csv('/tmp/x')", "__import__('os')", "@var"],
)
def test_the_message_names_the_offending_token(expr):
    with pytest.raises(SelectError) as e:
        parse(expr)
    token = {"ra.__class__": "'.__class__'", "ra.to_csv('/tmp/x')": "'.to_csv'", "__import__('os')": "'__import__'"}
    want = token.get(expr, "'.__class__'" if "class" in expr else "'@'")
    assert want in str(e.value)


def test_the_instruments_see_what_they_watch():
    """The audit hook is live: code run or a file opened inside ``watch`` is recorded."""
    import os

    with watch() as w:
        exec(compile("x = 1", "<test>", "exec"), {})  # a constant of this test, not user text
        with open(os.devnull, "rb"):
            pass
        sel.evaluate("a > 0", {"a": "a"}, FRAME, "cat.fits")
    assert "exec" in w.events and "open" in w.events
    assert set(w.dispatched) == {sel.Compare, sel.Column, sel.Literal}


def test_columns_as_the_readers_give_them():
    """A boolean column with nulls (object dtype from Arrow), bytes text, an integer column with
    nulls (float64), a decimal column (Arrow decimal): each compares; missing never satisfies a
    comparison, a missing boolean is false."""
    from decimal import Decimal

    import pyarrow as pa

    from mergerscan.catalogs.read import arrow_to_pandas

    t = pa.table(
        {
            "f": pa.array([True, None, False]),
            "b": pa.array([b"x", b"y", None]),
            "i": pa.array([1, None, 3]),
            "d": pa.array([Decimal("1.50"), None, Decimal("-2.25")], pa.decimal128(5, 2)),
        }
    )
    df = arrow_to_pandas(t)
    cases = {
        "f": [True, False, False],
        "not f": [False, True, True],
        "b == 'x'": [True, False, False],
        "b != 'x'": [False, True, False],
        "i != 1": [False, False, True],
        "d > 1.4": [True, False, False],
        "d != 1.5": [False, False, True],
    }
    for expr, want in cases.items():
        cols = {n: n for n in sel.expression_names(expr)}
        assert sel.evaluate(expr, cols, df, "cat.parquet").tolist() == want, expr
