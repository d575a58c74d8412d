"""A file given as an engine that is not one (random bytes, text, empty, a truncated engine, an
ONNX graph without mergerscan's metadata) is refused in one line naming the file by every verb
that reads an engine, and by ``mergerscan.load_engine``; never protobuf's traceback."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from conftest import assert_no_traceback
from mergerscan.exit_codes import EXIT_BAD_INPUT


@pytest.fixture(scope="module")
def bad_engines(tmp_path_factory, cheap_engine):
    """{kind: path} of files that are not engines."""
    import onnx
    from onnx import TensorProto, helper

    d = tmp_path_factory.mktemp("bad-engines")
    whole = cheap_engine.read_bytes()
    files = {
        "random": os.urandom(4096),
        "text": b"ra,dec\n1,2\n",
        "empty": b"",
        "truncated": whole[: len(whole) // 2],
    }
    paths = {}
    for kind, data in files.items():
        (d / f"{kind}.onnx").write_bytes(data)
        paths[kind] = d / f"{kind}.onnx"
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])
    graph = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "g", [x], [x])
    graph.output[0].name = "y"
    onnx.save(helper.make_model(graph), str(d / "plain.onnx"))
    paths["plain"] = d / "plain.onnx"
    return paths


KINDS = ["random", "text", "empty", "truncated", "plain"]


@pytest.mark.parametrize("kind", KINDS)
def test_load_engine_refuses_in_python_terms(bad_engines, kind):
    import mergerscan

    with pytest.raises(ValueError) as err:
        mergerscan.load_engine(bad_engines[kind])
    assert getattr(err.value, "argument", None) == "path"
    assert str(bad_engines[kind]) in str(err.value) and "\n" not in str(err.value)


def mergerscan_cli(*argv, cwd):
    r = subprocess.run(
        [sys.executable, "-m", "mergerscan.cli", *map(str, argv)], capture_output=True, text=True, timeout=300, cwd=cwd
    )
    assert_no_traceback(r.stdout, r.stderr)
    return r


@pytest.mark.parametrize("kind", KINDS)
def test_process_refuses_each_kind(bad_engines, tmp_path, kind):
    (tmp_path / "cat.csv").write_text("ra,dec\n1,2\n")
    (tmp_path / "stamps").mkdir()
    r = mergerscan_cli(
        "process", "cat.csv", "-o", "out", "--images", "stamps", "--engine", bad_engines[kind], cwd=tmp_path
    )
    lines = r.stderr.strip().splitlines()
    assert r.returncode == EXIT_BAD_INPUT, r.stderr
    assert len(lines) == 1 and "--engine" in lines[0] and str(bad_engines[kind]) in lines[0], r.stderr
    assert not (tmp_path / "out").exists()  # refused before anything was written


@pytest.mark.parametrize(
    "verb",
    [
        ["bench", "engine"],
        ["calibrate", "cat.csv", "-o", "calibrated.onnx"],
        ["operating-curve", "cat.csv"],
        ["finetune", "cat.csv", "-o", "ft"],
    ],
    ids=lambda v: v[0],
)
def test_every_verb_that_reads_an_engine_refuses_a_truncated_one(bad_engines, tmp_path, verb):
    (tmp_path / "cat.csv").write_text("ra,dec,label\n1,2,1\n")
    r = mergerscan_cli(*verb, "--engine", bad_engines["truncated"], cwd=tmp_path)
    assert r.returncode != 0
    assert "truncated.onnx" in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr
