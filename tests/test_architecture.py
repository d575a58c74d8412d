"""The shape of the house, checked from the source text: no import cycles (between modules, or
between subpackages), nothing running back up the flow, and rooms small enough to hold one job."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "mergerscan"
MAX_LINES = 400


def module_name(path: Path) -> str:
    parts = list(path.relative_to(SRC.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def imports_of(path: Path) -> set[str]:
    """Every mergerscan module ``path`` imports, at module level or inside functions (a lazy
    import is still a dependency)."""
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith("mergerscan")}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if not target.startswith("mergerscan"):
                continue
            for a in node.names:  # `from . import x` may name a module
                found.add(f"{target}.{a.name}" if f"{target}.{a.name}" in MODULES else target)
    return {m for m in found if m in MODULES and m != name}


FILES = sorted(SRC.rglob("*.py"))
MODULES = {module_name(f): f for f in FILES}
GRAPH = {module_name(f): imports_of(f) for f in FILES}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(n: str) -> list[str] | None:
        state[n] = 1
        stack.append(n)
        for m in sorted(graph.get(n, ())):
            if state.get(m) == 1:
                return stack[stack.index(m) :] + [m]
            if not state.get(m) and (c := visit(m)):
                return c
        stack.pop()
        state[n] = 2
        return None

    for n in sorted(graph):
        if not state.get(n) and (c := visit(n)):
            return c
    return None


def room(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 2 or (len(parts) == 2 and (SRC / parts[1]).is_dir()) else "(top)"


def test_no_import_cycle_between_modules():
    # a package's __init__ re-exporting its own modules is not a cycle of the flow
    graph = {
        m: {d for d in deps if not (m.startswith(d + ".") and MODULES[d].name == "__init__.py")}
        for m, deps in GRAPH.items()
    }
    assert find_cycle(graph) is None, f"import cycle: {' -> '.join(find_cycle(graph) or [])}"


def test_no_import_cycle_between_subpackages():
    rooms: dict[str, set[str]] = {}
    for m, deps in GRAPH.items():
        rooms.setdefault(room(m), set()).update(room(d) for d in deps if room(d) != room(m))
    rooms.pop("(top)", None)  # cli.py and the leaf helpers (atomic.py)
    for deps in rooms.values():
        deps.discard("(top)")
    assert find_cycle(rooms) is None, f"subpackage cycle: {' -> '.join(find_cycle(rooms) or [])}"


@pytest.mark.parametrize(
    "upstream,downstream",
    [
        ("engines", "training"),
        ("engines", "pipeline"),
        ("cutouts", "engines"),
        ("cutouts", "pipeline"),
        ("catalogs", "pipeline"),
        ("engines", "report"),
        ("cutouts", "report"),
        ("catalogs", "report"),
        # the report reads a run directory through run_layout /
        # run_summary, never the pipeline that wrote it
        ("report", "pipeline"),
        ("training", "pipeline"),
    ],
)
def test_nothing_runs_back_up_the_flow(upstream, downstream):
    bad = sorted(
        f"{m} imports {d}" for m, deps in GRAPH.items() if room(m) == upstream for d in deps if room(d) == downstream
    )
    assert not bad, bad


def test_no_module_over_the_size_of_one_job():
    long = {module_name(f): n for f in FILES if (n := len(f.read_text().splitlines())) > MAX_LINES}
    assert not long, f"modules over {MAX_LINES} lines: {long}"


def test_the_checker_sees_a_cycle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None
