"""Hostile input to every ``mergerscan`` verb other than ``process`` (and the training room's module
command lines): a one-line error naming the file, column, row or argument, exit 2
(:data:`~mergerscan.exit_codes.EXIT_BAD_INPUT`), never a traceback, and never an input file
overwritten.  One case per class of input, each through the command line in a fresh process; where
several verbs share the code at fault (the labelled-catalog reader, the -o check, the numeric flag
types) the cases spread over the verbs rather than repeat one."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from conftest import assert_no_traceback, make_stamps
from mergerscan.engines import default_engine_path
from mergerscan.exit_codes import EXIT_BAD_INPUT

MODULES = {
    "mergerscan": "mergerscan.cli",
    "repr": "mergerscan.training.representation",
    "domain": "mergerscan.training.domain",
}


@pytest.fixture(scope="module")
def files(tmp_path_factory, cheap_engine) -> dict[str, Path]:
    """A small labelled catalog with real stamps, its broken variants, and broken runs."""
    d = tmp_path_factory.mktemp("hostile-verbs")
    ids = [f"G{i}" for i in range(8)]
    make_stamps(d / "stamps", ids, seed=3, size=64)
    good = pd.DataFrame(
        {
            "id": ids,
            "ra": [150 + 0.1 * i for i in range(8)],
            "dec": [2.0] * 8,
            "is_merger": [0, 1] * 4,
            "image": [f"stamps/{i}.jpg" for i in ids],
        }
    )
    good.to_csv(d / "good.csv", index=False)
    good.head(0).to_csv(d / "header.csv", index=False)
    good.assign(is_merger=["yes", "no"] * 4).to_csv(d / "textlabels.csv", index=False)
    good.assign(image=[f"gone/{i}.jpg" for i in ids]).to_csv(d / "nostamps.csv", index=False)
    (d / "empty.onnx").write_bytes(b"")  # parses as an empty ONNX model: no mergerscan engine
    (d / "adir").mkdir()
    (d / "run_list").mkdir()
    (d / "run_list" / "summary.json").write_text("[1, 2]")
    (d / "train_list").mkdir()
    (d / "train_list" / "metrics.json").write_text('["not", "metrics"]')
    _fake_runs(d)
    return {p.stem if p.is_file() else p.name: p for p in d.iterdir()} | {"engine": cheap_engine, "tmp": d}


def _fake_runs(d: Path) -> None:
    """process-catalog output folders with a vector column, damaged four ways."""
    for name in ("run_rand_parquet", "run_junk_summary", "run_no_summary", "run_second_parquet"):
        part = d / name / "parquet" / "dataset" / "Norder=0" / "Dir=0"
        part.mkdir(parents=True)
        if name == "run_rand_parquet":
            (part / "Npix=1.parquet").write_bytes(os.urandom(2000))
            continue
        ident = "objid" if name == "run_second_parquet" else "id"  # objid: what a run without summary.json names
        cols = {ident: ["a", "b"], "ra": [1.0, 2.0], "dec": [0.0, 0.0], "embedding": [[0.0, 1.0], [1.0, 0.0]]}
        pq.write_table(pa.table(cols), part / "Npix=1.parquet")
        if name == "run_second_parquet":  # the first file reads, a later one is damaged
            (part / "Npix=2.parquet").write_bytes(os.urandom(2000))
        if name == "run_junk_summary":
            (d / name / "summary.json").write_text('{"rows": ')  # a truncated write


def _run(program: str, argv: list[str], cwd: Path) -> subprocess.CompletedProcess:
    r = subprocess.run(
        [sys.executable, "-m", MODULES[program], *argv], capture_output=True, text=True, timeout=300, cwd=cwd
    )
    assert_no_traceback(r.stdout, r.stderr)
    return r


def _argv(template: str, files: dict[str, Path]) -> list[str]:
    names = {k: str(v) for k, v in files.items()} | {"default_engine": str(default_engine_path())}
    return [w.format(**names) for w in template.split()]


def _sha(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def _expect(r: subprocess.CompletedProcess, words: str) -> None:
    """Exit 2 and the words on the last line; one line unless argparse added its usage."""
    lines = r.stderr.strip().splitlines()
    assert r.returncode == EXIT_BAD_INPUT, r.stderr
    assert lines and words in lines[-1], r.stderr
    if not lines[-1].split(": error: ", 1)[-1].startswith("argument "):
        assert len(lines) == 1, r.stderr


# the labelled-catalog reader (training.data) that train, finetune, calibrate, operating-curve and
# the module command lines share: a header alone, labels that are text, stamps that are not there
CATALOGS = [
    ("mergerscan", "train {header} -o {tmp}/t1 --epochs 1", "header.csv: the labelled catalog has no rows"),
    ("mergerscan", "calibrate {textlabels} --engine {engine} -o {tmp}/c.onnx", "must hold 0/1 labels (row 1: 'yes')"),
    ("mergerscan", "operating-curve {nostamps} --engine {engine} -o {tmp}/c2.onnx", "G0.jpg: cannot read the stamp"),
    ("repr", "{engine} --catalog {header} -o {tmp}/r.onnx", "the labelled catalog has no rows"),
    ("domain", "{engine} --catalog {header} -o {tmp}/d.onnx", "header.csv: the catalog has no rows"),
    ("domain", "{empty} --catalog {good} -o {tmp}/e.onnx", "empty.onnx: not a mergerscan engine"),
    ("mergerscan", "doctor --engine {tmp}/gone.onnx -o {tmp}/d.json", "--engine {tmp}/gone.onnx: no such file"),
]


@pytest.mark.parametrize("program, template, words", CATALOGS)
def test_a_broken_labelled_catalog_or_engine_is_one_line(files, program, template, words):
    r = _run(program, _argv(template, files), files["tmp"])
    _expect(r, " ".join(_argv(words, files)))
    written = ("t1", "c.onnx", "c2.onnx", "r.onnx", "d.onnx", "e.onnx", "d.json")
    assert not any((files["tmp"] / n).exists() for n in written)


# -o that names an input (calibrate once wrote its engine over the catalog; doctor and bench theirs
# over the packaged engine), a directory where a file goes, a folder that cannot hold it
OUTPUTS = [
    ("mergerscan", "train {good} -o {good} --epochs 1", "-o/--output {good} is the CATALOG"),
    ("mergerscan", "finetune {good} --engine {engine} -o {engine}", "is the --engine file"),
    ("mergerscan", "calibrate {good} --engine {engine} -o {good}", "is the CATALOG"),
    ("mergerscan", "calibrate {good} --engine {engine} -o {tmp}/c.onnx --results {engine}", "is the ENGINE"),
    ("mergerscan", "operating-curve {good} --engine {engine} -o {good}", "is the CATALOG"),
    ("mergerscan", "doctor -o {default_engine}", "is the engine"),
    ("mergerscan", "bench engine --engine {engine} --n 1 -o {engine}", "is the engine"),
    ("mergerscan", "bench sources --images {stamps} --n 1 -o {stamps}", "is the --images input"),
    ("repr", "{engine} --catalog {good} -o {good}", "is the --catalog file"),
    ("domain", "{engine} --catalog {good} -o {good}", "is the --catalog file"),
    ("mergerscan", "calibrate {good} --engine {engine} -o {adir}", "{adir}: is a directory; give a file name"),
    ("mergerscan", "similar {adir} --like a --html {adir}", "is a directory"),
    ("mergerscan", "train {good} -o {good}/run --epochs 1", "-o/--output {good}/run: cannot write in {good}"),
]


@pytest.mark.parametrize("program, template, words", OUTPUTS)
def test_an_output_that_would_overwrite_an_input_or_cannot_be_written_is_refused(files, program, template, words):
    inputs = [files["good"], files["engine"], default_engine_path()]
    before = [_sha(p) for p in inputs]
    r = _run(program, _argv(template, files), files["tmp"])
    _expect(r, " ".join(_argv(words, files)))
    assert [_sha(p) for p in inputs] == before, "an input file was overwritten"


# the numeric flags' argparse types: 0, negative, nan, inf and text refused by name
NUMBERS = [
    ("mergerscan", "train {good} -o {tmp}/t2 --epochs -1", "argument --epochs: '-1' is not an integer >= 0"),
    ("mergerscan", "train {good} -o {tmp}/t2 --lr nan", "argument --lr: 'nan' is not a finite number >= 0"),
    ("mergerscan", "train {good} -o {tmp}/t2 --batch-size abc", "argument --batch-size: 'abc' is not a positive"),
    ("mergerscan", "finetune {good} -o {tmp}/t2 --threads 0", "argument --threads: '0' is not a positive integer"),
    ("mergerscan", "calibrate {good} --engine {engine} -o {tmp}/c.onnx --views 1 -2", "argument --views: '-2'"),
    ("mergerscan", "operating-curve {good} --engine {engine} --threads -1", "argument --threads: '-1'"),
    ("mergerscan", "report {adir} --top-n -1", "argument --top-n: '-1' is not an integer >= 0"),
    ("mergerscan", "similar {adir} --like a --k inf", "argument --k: 'inf' is not a positive integer"),
    ("mergerscan", "bench plan --rows 0", "argument --rows: '0' is not a positive integer"),
    ("mergerscan", "doctor --threads 0", "argument --threads: '0' is not a positive integer"),
    ("repr", "{engine} --catalog {good} -o {tmp}/r.onnx --pass-fraction inf", "argument --pass-fraction: 'inf'"),
]


@pytest.mark.parametrize("program, template, words", NUMBERS)
def test_a_number_out_of_range_is_refused_by_its_flag(files, program, template, words):
    _expect(_run(program, _argv(template, files), files["tmp"]), words)
    assert not (files["tmp"] / "t2").exists()


# runs that are not what their files claim: JSON that is no summary, Parquet that is not Parquet,
# a truncated summary, a run without its summary (the id column it names)
RUNS = [
    ("report {run_list}", "run_list/summary.json: not the summary.json of a run (summary is a JSON list"),
    ("report {train_list}", "metrics.json: not the metrics.json of a run (a JSON list, not an object)"),
    ("similar {run_rand_parquet} --like a", "Npix=1.parquet: not a readable Parquet file"),
    ("similar {run_second_parquet} --like a --no-html", "Npix=2.parquet: not a readable Parquet file"),
    ("similar {run_junk_summary} --like a --no-html", "run_junk_summary/summary.json: summary is not JSON"),
    ("similar {run_no_summary} --like a --no-html", "the output has no id column 'objid'"),
    ("similar {run_no_summary} --like-file {stamps}/G0.jpg --no-html", "summary.json names no engine file"),
    ("engine-info --engine {empty}", "engine-info: error: {empty}: not a mergerscan engine"),
    ("samp {adir}", "adir/mergers.fits: no such file (is {adir} a finished process-catalog output directory?)"),
    ("samp {good}", "good.csv: not a FITS file"),
    ("bench plan --rows 10 --process-args 'x", '--process-args "\'x": No closing quotation'),
]


@pytest.mark.parametrize("template, words", RUNS)
def test_a_damaged_run_is_one_line(files, template, words):
    _expect(_run("mergerscan", _argv(template, files), files["tmp"]), " ".join(_argv(words, files)))
