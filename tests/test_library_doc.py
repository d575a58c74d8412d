"""docs/library.md as a user runs it: its ```python cells, in order, in one namespace, in an empty
directory, on the demo field mergerscan draws itself (no network)."""

from __future__ import annotations

import re

from conftest import REPO

DOC = REPO / "docs" / "library.md"


def python_cells(text: str) -> list[str]:
    return re.findall(r"^```python\n(.*?)^```", text, flags=re.S | re.M)


def test_the_cells_are_found():
    cells = python_cells(DOC.read_text())
    assert len(cells) == 5
    assert all("mergerscan." in c or "engine.predict" in c for c in cells)


def test_library_doc_runs(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    namespace: dict = {"__name__": "library_doc"}
    for i, cell in enumerate(python_cells(DOC.read_text())):
        exec(compile(cell, f"{DOC.name}[cell {i + 1}]", "exec"), namespace)  # our own doc, not user text
    summary, scores, matched = namespace["summary"], namespace["scores"], namespace["matched"]
    n = len(namespace["catalog"])
    assert summary.rows == n and (tmp_path / "run" / "mergers.fits").is_file()
    assert len(scores) == 12 and set(scores["status"]) <= {"ok", "edge", "no_image", "out_of_domain"}
    inside = matched["status"].isin(["ok", "edge"]).sum()
    assert 0 < len(matched) <= n and inside > 0
    assert namespace["client"].status == "closed"
