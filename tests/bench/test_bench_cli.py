"""``mergerscan bench engine|sources|plan`` and ``mergerscan doctor`` through their command line, on
small generated data: exit 0, the JSON written with its keys.  Figures are never asserted on
(a busy machine makes any timing meaningless); only that each point was measured."""

from __future__ import annotations

import json

from conftest import cli_process, make_stamps
from mergerscan.exit_codes import EXIT_BAD_INPUT


def mergerscan(*argv, timeout=300):
    return cli_process(*argv, program="mergerscan", timeout=timeout)


def read(path):
    return json.loads(path.read_text())


def test_bench_engine_writes_a_point_per_views_threads_and_batch(tmp_path, cheap_engine):
    make_stamps(tmp_path / "stamps", range(6))
    out = tmp_path / "r" / "engine.json"
    r = mergerscan(
        "bench", "engine", "--engine", cheap_engine, "--images", tmp_path / "stamps",
        "--n", 8, "--views", 1, "--threads", "1,2", "--batch-size", "4,8", "-o", out,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == str(out)
    doc = read(out)
    assert {"bench", "engine", "engine_name", "flops_per_image", "data", "machine", "runs"} <= set(doc)
    assert doc["bench"] == "engine" and doc["engine"] == str(cheap_engine) and doc["flops_per_image"] > 0
    assert "8 stamps from 6 files" in doc["data"]
    points = {(p["backend"], p["views"], p["threads"], p["batch"]) for p in doc["runs"]}
    assert points == {("onnxruntime", 1, t, b) for t in (1, 2) for b in (4, 8)}
    assert all(p["objects"] == 8 and p["objects_per_s"] > 0 for p in doc["runs"])
    assert {"cpu", "cores", "loadavg", "packages"} <= set(doc["machine"])


def test_bench_engine_refuses_what_it_cannot_time_in_one_line(tmp_path, cheap_engine):
    out = tmp_path / "e.json"
    for argv, names in (
        (("--views", "1,2"), "--views 2"),  # the tiny engine's card has a threshold for 1 view only
        (("--backend", "no-such-backend"), "no-such-backend"),
        (("--threads", "0"), "--threads"),
    ):
        r = mergerscan("bench", "engine", "--engine", cheap_engine, "--n", 2, *argv, "-o", out)
        assert r.returncode == EXIT_BAD_INPUT and names in r.stderr and r.stderr.count("\n") == 1, (argv, r.stderr)
        assert not out.exists()


def test_bench_engine_records_a_backend_that_cannot_run_here(tmp_path, cheap_engine):
    import torch

    if torch.cuda.is_available():
        import pytest

        pytest.skip("a CUDA device is present")
    out = tmp_path / "e.json"
    r = mergerscan("bench", "engine", "--engine", cheap_engine, "--backend", "onnxruntime,torch-cuda",
                   "--n", 2, "--views", 1, "-o", out)  # fmt: skip
    assert r.returncode == 0, r.stderr
    runs = read(out)["runs"]
    assert [p["backend"] for p in runs] == ["onnxruntime", "torch-cuda"]
    assert "objects_per_s" in runs[0] and runs[1]["skipped"]


def test_bench_sources_stamps_service_and_frames(tmp_path):
    from mergerscan.demo import make_demo_field

    make_stamps(tmp_path / "stamps", range(5))
    field = make_demo_field(
        tmp_path / "field", n_fields=1, galaxies_per_field=4, mergers_per_field=2, stars_per_field=4
    )
    frames = tmp_path / "field"
    assert field["frames"]
    out = tmp_path / "s.json"
    r = mergerscan("bench", "sources", "--images", tmp_path / "stamps", "--frames", frames, "--n", 7, "-o", out)
    assert r.returncode == 0, r.stderr
    doc = read(out)
    assert doc["bench"] == "sources" and set(doc["sources"]) == {"stamps", "service", "frames"}
    for name in ("stamps", "service"):  # every stamp served and decoded
        s = doc["sources"][name]
        assert s["objects"] == 7 and s["status_counts"] == {"ok": 7} and s["objects_per_s"] > 0, (name, s)
    f = doc["sources"]["frames"]
    assert f["objects"] == 7 and f["fields"] >= 1 and f["frames_in_memory"]["objects"] == 7
    assert sum(f["status_counts"].values()) == 7 and set(f["status_counts"]) <= {"ok", "edge"}
    assert f["frames_in_memory"]["status_counts"] == f["status_counts"]


def test_bench_sources_refuses_without_a_source_in_one_line(tmp_path):
    r = mergerscan("bench", "sources", "-o", tmp_path / "s.json")
    assert r.returncode == EXIT_BAD_INPUT and r.stderr.count("\n") == 1 and "--images" in r.stderr
    r = mergerscan("bench", "sources", "--images", tmp_path / "nowhere", "-o", tmp_path / "s.json")
    assert r.returncode == EXIT_BAD_INPUT and str(tmp_path / "nowhere") in r.stderr
    assert not (tmp_path / "s.json").exists()


def test_bench_plan_on_a_small_catalog(tmp_path):
    out = tmp_path / "p.json"
    r = mergerscan("bench", "plan", "--rows", 3000, "--tmp", tmp_path, "-o", out,
                   "--process-args", "--partition-rows 1000", timeout=600)  # fmt: skip
    assert r.returncode == 0, r.stderr
    doc = read(out)
    assert doc["bench"] == "plan" and doc["rows"] == 3000 and set(doc["formats"]) == {"parquet", "fits"}
    for fmt, f in doc["formats"].items():
        assert f["floor_s"] >= 0 and f["plan"]["seconds"] > 0 and f["plan"]["partitions"] >= 3, (fmt, f)
        assert "--partition-rows 1000" in f["plan"]["command"]
    assert [p.name for p in tmp_path.iterdir()] == ["p.json"]  # the generated catalogs are gone


def test_bench_plan_names_a_bad_format(tmp_path):
    r = mergerscan("bench", "plan", "--formats", "csv", "-o", tmp_path / "p.json")
    assert r.returncode == EXIT_BAD_INPUT and "--formats csv" in r.stderr and r.stderr.count("\n") == 1


def test_doctor_checks_the_environment(tmp_path, cheap_engine):
    out = tmp_path / "d.json"
    r = mergerscan("doctor", "-o", out)
    assert r.returncode == 0, r.stderr
    assert "backend       onnxruntime: available" in r.stdout and "loads and scores" in r.stdout
    doc = read(out)
    assert doc["ok"] is True and doc["backends"]["onnxruntime"] is None
    assert len(doc["engine"]["scores"]) == 2 and doc["engine"]["path"].endswith("default.onnx")
    assert doc["machine"]["packages"]["numpy"]
    r = mergerscan("doctor", "--engine", cheap_engine)
    assert r.returncode == 0 and "test-tiny-cnn-32px" in r.stdout


def test_doctor_says_in_one_line_when_the_engine_does_not_load(tmp_path):
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"not an onnx file")
    r = mergerscan("doctor", "--engine", bad)
    assert r.returncode == 1 and r.stderr.count("\n") == 1 and str(bad) in r.stdout + r.stderr
    assert r.stderr.startswith("mergerscan doctor: error: the engine does not load here: ")
