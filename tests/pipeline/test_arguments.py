"""ProcessArguments and the command line that builds it: the defaults are the dataclass's (one
place), the dataclass reads no environment (the CLI reads the site default), errors name the
argument in Python and the flag on the command line, ``mergerscan process`` is process-catalog,
and the verbs share their flag spellings (every verb's parser walked; hidden aliases read)."""

from __future__ import annotations

import argparse
from dataclasses import fields

import pandas as pd
import pytest

from conftest import assert_fits_equals_parquet, read_out
from mergerscan.cli import main as mergerscan
from mergerscan.cutouts import defaults
from mergerscan.cutouts.source_choice import CutoutService, FramesDir, ServiceOptions
from mergerscan.demo import make_demo_field
from mergerscan.exit_codes import EXIT_BAD_INPUT, EXIT_OK
from mergerscan.pipeline.arguments import ArgumentError, ProcessArguments, default_of
from mergerscan.pipeline.cli import arguments_from, build_parser
from mergerscan.pipeline.cli import main as process_catalog
from mergerscan.pipeline.slurm import SlurmOptions
from mergerscan.verb_flags import catalog_file, engine_file


@pytest.fixture
def site(tmp_path, monkeypatch):
    """No site default anywhere: an empty config dir and no $MERGERSCAN_DEFAULT_SOURCE."""
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))
    monkeypatch.delenv(defaults.ENV, raising=False)


@pytest.fixture
def cat(tmp_path):
    path = tmp_path / "cat.csv"
    pd.DataFrame({"id": [1, 2], "ra": [150.0, 150.1], "dec": [2.0, 2.1]}).to_csv(path, index=False)
    return path


SLURM_DESTS = {"slurm_directive": "directives"}
# a flag whose default is derived from another flag: --backend is onnxruntime-cuda with --gpus 1,
# else the field's default (checked below, where no flag builds exactly the dataclass's defaults)
DERIVED = {"backend"}


def test_every_flag_default_is_the_dataclass_default(site, cat):
    parser = build_parser()
    names = {f.name for f in fields(ProcessArguments)}
    checked = []
    for action in parser._actions:
        if action.dest in DERIVED or action.default is argparse.SUPPRESS:
            continue
        if action.dest in names:
            assert parser.get_default(action.dest) == default_of(ProcessArguments, action.dest), action.dest
            checked.append(action.dest)
        elif action.dest.startswith("slurm_"):
            name = SLURM_DESTS.get(action.dest, action.dest.removeprefix("slurm_"))
            assert parser.get_default(action.dest) == default_of(SlurmOptions, name), action.dest
            checked.append(action.dest)
    assert {"workers", "threads_per_worker", "partition_rows", "prevalence", "slurm_cores", "progress"} <= set(checked)
    # and no flag given at all builds exactly the dataclass's defaults, field by field
    from_cli = arguments_from(parser.parse_args([str(cat)]), [str(cat)])
    from_python = ProcessArguments(catalog=str(cat), output=from_cli.output)
    for f in fields(ProcessArguments):
        if f.name != "command":
            assert getattr(from_cli, f.name) == getattr(from_python, f.name), f.name


def test_process_arguments_read_no_environment_the_cli_does(site, cat, tmp_path, monkeypatch):
    frames = tmp_path / "frames"
    frames.mkdir()
    monkeypatch.setenv(defaults.ENV, "--frames /no/such/dir --junk")
    a = ProcessArguments(catalog=str(cat), output=str(tmp_path / "o"))
    assert a.chosen_source == CutoutService(defaults.SKYSERVER, ServiceOptions(**defaults.SKYSERVER_OPTIONS))
    assert a.images is a.frames is a.cutout_service is None and a.default_source is None  # as given
    r = a.resolved()
    assert r.cutout_service == defaults.SKYSERVER and r.default_source.origin == "built-in"
    assert r.threads_per_worker >= 1 and a.threads_per_worker == 0  # derived in the copy only
    # the command line honours the variable: junk is a one-line error naming it, a directory is used
    assert process_catalog([str(cat), "-o", str(tmp_path / "o"), "--no-progress"]) == EXIT_BAD_INPUT
    monkeypatch.setenv(defaults.ENV, f"--frames {frames}")
    cli = arguments_from(build_parser().parse_args([str(cat)]), [str(cat)])
    assert cli.default_source.origin == f"${defaults.ENV}" and cli.chosen_source == FramesDir(str(frames))
    assert cli.source.kind == "frames" and cli.resolved().frames == str(frames)


def test_argument_error_names_the_argument_and_the_cli_the_flag(site, cat, tmp_path, capsys):
    missing = tmp_path / "nowhere"
    with pytest.raises(ArgumentError) as e:
        ProcessArguments(catalog=str(cat), output=str(tmp_path / "o"), images=str(missing))
    assert e.value.argument == "images" and str(e.value) == f"images {missing}: not a directory"
    with pytest.raises(ArgumentError) as e:
        ProcessArguments(catalog=str(cat), output=str(tmp_path / "o"), workers=0)
    assert e.value.argument == "workers" and str(e.value) == "workers must be >= 1 and threads_per_worker >= 0"
    for argv, line in (
        (["--images", str(missing)], f"--images {missing}: not a directory"),
        (["--workers", "0"], "--workers must be >= 1 and --threads >= 0"),
        (["--images", str(tmp_path), "--service-retries", "2"], "--service-* options go with --cutout-service URL"),
    ):
        capsys.readouterr()
        assert process_catalog([str(cat), "-o", str(tmp_path / "o"), *argv]) == EXIT_BAD_INPUT
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith(f"process-catalog: error: {line}"), err


def test_mergerscan_process_is_process_catalog(dask_client, cheap_engine, tmp_path):
    """On the demo field (its frames and catalog): the same rows, values and FITS table."""
    field = make_demo_field(
        tmp_path / "field", n_fields=1, galaxies_per_field=4, mergers_per_field=2, stars_per_field=4
    )
    catalog = field["catalog"]
    common = ["--frames", str(tmp_path / "field"), "--engine", str(cheap_engine), "--views", "1"]
    common += ["--scheduler", dask_client.scheduler.address, "--no-progress", "--no-report"]
    assert process_catalog([str(catalog), "-o", str(tmp_path / "pc"), *common]) == EXIT_OK
    assert mergerscan(["process", str(catalog), "--output", str(tmp_path / "mp"), *common]) == EXIT_OK
    a, b = read_out(tmp_path / "pc"), read_out(tmp_path / "mp")
    pd.testing.assert_frame_equal(a, b)
    assert len(a) > 0 and (a["status"] == "ok").any()
    fa, fb = assert_fits_equals_parquet(tmp_path / "pc"), assert_fits_equals_parquet(tmp_path / "mp")
    assert fa[1].dtype == fb[1].dtype and fa[1].tobytes() == fb[1].tobytes()  # the FITS rows, byte for byte


@pytest.mark.parametrize("verb", ["train", "finetune", "calibrate", "operating-curve"])
def test_verbs_share_output_and_engine_spellings(verb):
    """-o/--output everywhere (--out still read), --engine for an engine file (the positional
    ENGINE of calibrate/operating-curve and finetune's --from still read)."""
    from mergerscan.training import cli as tcli

    ap = argparse.ArgumentParser(prog="mergerscan")
    sub = ap.add_subparsers(dest="verb")
    make = {"train": tcli.train_parser, "finetune": tcli.finetune_parser}
    make |= {"calibrate": tcli.calibrate_parser, "operating-curve": tcli.curve_parser}
    make[verb](sub)
    data = ["--data", "x.csv"] if verb in ("calibrate", "operating-curve") else []
    for spelling in ("-o", "--output", "--out"):
        assert ap.parse_args([verb, *data, spelling, "run"]).out == "run"
    if verb == "finetune":
        assert ap.parse_args([verb, "--engine", "e.onnx"]).source == "e.onnx"
        assert ap.parse_args([verb, "--from", "e.onnx"]).source == "e.onnx"
    elif verb != "train":
        for argv in (["--engine", "e.onnx"], ["e.onnx"]):
            assert engine_file(ap, ap.parse_args([verb, *data, *argv])) == "e.onnx"
    # the catalog: the positional CATALOG, or the flag of earlier versions (--catalog / --data)
    old = "--data" if data else "--catalog"
    for argv in (["x.csv"], [old, "x.csv"], ["x.csv", old, "x.csv"]):
        assert catalog_file(ap, ap.parse_args([verb, *argv, "-o", "run"])) == "x.csv"
    with pytest.raises(SystemExit) as e:  # two catalogs (or, where ENGINE was positional, two engines): exit 2
        a = ap.parse_args([verb, "x.csv", old, "y.csv", "--engine", "e.onnx"])
        catalog_file(ap, a)
        engine_file(ap, a) if hasattr(a, "engine_flag") else None
    assert e.value.code == EXIT_BAD_INPUT


def _leaf_parsers() -> dict[str, argparse.ArgumentParser]:
    """Every verb's parser: ``mergerscan VERB`` (``bench X`` included) and process-catalog's."""
    from mergerscan.cli import build_parser as mergerscan_parser

    found = {"process": build_parser("mergerscan process")}

    def walk(parser: argparse.ArgumentParser, name: str) -> None:
        subs = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
        if not subs:
            found[name] = parser
        for action in subs:
            for verb, sub in action.choices.items():
                if verb != "process":  # a placeholder: `mergerscan process` is process-catalog's parser
                    walk(sub, f"{name} {verb}".strip())

    walk(mergerscan_parser()[0], "")
    return found


# the verbs that read a catalog, write something with -o/--output, or take an engine file
CATALOG_VERBS = {"process", "train", "finetune", "calibrate", "operating-curve"}
ENGINE_VERBS = {"process", "finetune", "calibrate", "operating-curve", "engine-info", "bench engine", "doctor"}


def test_every_verb_spells_its_shared_options_alike():
    """Walks every verb's parser: an output is -o/--output, threads --threads, an engine file
    --engine, the catalog the positional CATALOG; other spellings only as hidden aliases."""
    parsers = _leaf_parsers()
    assert {"train", "calibrate", "report", "similar", "bench plan", "doctor"} <= set(parsers)
    for verb, parser in parsers.items():
        shown = [a for a in parser._actions if a.help != argparse.SUPPRESS]
        flags = [s for a in shown for s in a.option_strings if s.startswith("--")]
        for a in shown:
            if a.option_strings and a.dest in ("out", "output"):
                assert a.option_strings == ["-o", "--output"], (verb, a.option_strings)
        assert [f for f in flags if "thread" in f] in ([], ["--threads"]), verb
        assert [f for f in flags if "engine" in f] == (["--engine"] if verb in ENGINE_VERBS else []), verb
        assert not [f for f in flags if "catalog" in f or f == "--data"], verb
        assert not [a for a in shown if not a.option_strings and a.dest == "engine"], verb
        takes_catalog = [a for a in shown if not a.option_strings and a.dest == "catalog"]
        assert len(takes_catalog) == (verb in CATALOG_VERBS), verb


@pytest.mark.parametrize(
    "verb,old,new",
    [
        ("train", ["--catalog", "c.csv", "--out", "o"], ["c.csv", "-o", "o"]),
        (
            "finetune",
            ["--from", "e.onnx", "--catalog", "c.csv", "--out", "o"],
            ["c.csv", "--engine", "e.onnx", "-o", "o"],
        ),
        ("calibrate", ["e.onnx", "--data", "c.csv", "--out", "o"], ["c.csv", "--engine", "e.onnx", "-o", "o"]),
        ("operating-curve", ["e.onnx", "--data", "c.csv", "--out", "o"], ["c.csv", "--engine", "e.onnx", "-o", "o"]),
        ("engine-info", ["e.onnx"], ["--engine", "e.onnx"]),
    ],
)
def test_hidden_aliases_read_as_the_shown_spelling(verb, old, new):
    """The spellings of earlier versions (hidden from --help) give the same catalog, engine and output."""
    from mergerscan.cli import build_parser as mergerscan_parser

    ap = mergerscan_parser()[0]

    def read(argv):
        a = ap.parse_args([verb, *argv])
        catalog = catalog_file(ap, a) if hasattr(a, "catalog_flag") else None  # before the engine: see catalog_file
        engine = engine_file(ap, a) if hasattr(a, "engine_flag") else getattr(a, "source", None)
        return catalog, engine, getattr(a, "out", None)

    assert read(old) == read(new) != (None, None, None)


def test_process_catalog_hidden_alias(cat):
    parser = build_parser()
    assert parser.parse_args([str(cat), "--threads-per-worker", "3"]).threads_per_worker == 3
    assert parser.parse_args([str(cat), "--threads", "3"]).threads_per_worker == 3


def test_engine_info_takes_engine_like_every_verb(cheap_engine, capsys):
    assert mergerscan(["engine-info", "--engine", str(cheap_engine)]) == EXIT_OK
    by_flag = capsys.readouterr().out
    assert mergerscan(["engine-info", str(cheap_engine)]) == EXIT_OK  # the earlier spelling
    assert capsys.readouterr().out == by_flag and str(cheap_engine) in by_flag


def test_every_training_flag_default_is_the_dataclass_default():
    """train / finetune: each flag fills the TrainArguments field of its dest, with that field's default."""
    from mergerscan.cli import build_parser as mergerscan_parser
    from mergerscan.training.arguments import TrainArguments

    names = {f.name for f in fields(TrainArguments)}
    parsers = mergerscan_parser()[1]
    for verb in ("train", "finetune"):
        p = parsers[verb]
        dests = {a.dest for a in p._actions if a.dest != "help"}
        assert dests - names == {"resume", "catalog_flag"} | ({"source"} if verb == "finetune" else set()), verb
        for dest in dests & names - {"catalog", "out"}:  # the two fields without a default
            assert p.get_default(dest) == default_of(TrainArguments, dest), (verb, dest)
        assert {"epochs", "batch_size", "cache", "export", "threads"} <= dests


def test_from_namespace_fills_fields_by_name_and_keeps_the_rest():
    """The one bridge from parsed flags to a typed object: by field (prefix, renames), a field no flag
    fills keeps its default, given values win, a rename of no field is refused."""
    from mergerscan.verb_flags import field_values, from_namespace

    ns = argparse.Namespace(service_timeout=3.0, service_concurrency=2, service_rate=None, verb="x")
    rename = {"max_concurrency": "service_concurrency", "max_rate": "service_rate"}
    got = from_namespace(ServiceOptions, ns, prefix="service_", rename=rename, retries=5)
    assert got == ServiceOptions(timeout=3.0, retries=5, max_concurrency=2)
    assert field_values(ServiceOptions, ns, prefix="service_") == {"timeout": 3.0}
    with pytest.raises(TypeError, match="no parameter 'concurrency'"):
        field_values(ServiceOptions, ns, rename={"concurrency": "service_concurrency"})

    def fit(engine, *, k: int = 64, cache=None):
        return engine, k, cache

    assert from_namespace(fit, argparse.Namespace(k=8, other=1), engine="e") == ("e", 8, None)
    assert default_of(fit, "k") == 64 and default_of(fit, "cache") is None
