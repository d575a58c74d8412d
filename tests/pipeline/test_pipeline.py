"""process-catalog end to end on catalogs and stamps the tests make themselves (no ../shared)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import fitsio
import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest

from conftest import (
    SCIENCE,
    cli_process,
    make_stamps,
    read_out,
    run_arguments,
    two_patch_catalog,
    write_fits_catalog,
)
from mergerscan.pipeline.arguments import ArgumentError, ProcessArguments
from mergerscan.pipeline.faults import environment
from mergerscan.pipeline.plan import ORDER29, assign_partitions, healpix29, make_partitions
from mergerscan.pipeline.resume import FingerprintMismatch
from mergerscan.pipeline.run import run
from mergerscan.run_layout import RunLayout
from mergerscan.run_summary import RunSummary, SummaryError


@pytest.fixture(scope="module")
def small_field(tmp_path_factory, cheap_engine):
    """300 objects on two patches of sky plus a few bad rows, and the engine that scores them here
    (d / "engine.onnx": conftest's cheap engine; what these tests check does not depend on the model)."""
    d = tmp_path_factory.mktemp("field")
    shutil.copy(cheap_engine, d / "engine.onnx")
    df = two_patch_catalog(300, seed=42, width=0.5, id_step=7)
    df.loc[3, "DEdeg"] = np.nan  # bad coordinates
    df.loc[4, "DEdeg"] = 95.0
    df.loc[5, "RAdeg"] = -1.0
    for c in ("objID", "RAdeg", "DEdeg"):  # duplicated object (per column: a row
        df.loc[11, c] = df.loc[10, c]  # Series would pass objID through float64)
    objid = df["objID"].to_numpy()
    make_stamps(d / "stamps", [o for k, o in enumerate(objid) if k not in (20, 21)])  # 20, 21: no image
    (d / "stamps" / f"{objid[22]}.jpg").write_bytes((d / "stamps" / f"{objid[23]}.jpg").read_bytes()[:300])  # truncated
    write_fits_catalog(d / "cat.fits", df)
    return d, df


def args_for(d, out, **kw):
    base = dict(images=d / "stamps", partition_rows=40, keep_columns=["mag_r"], engine=d / "engine.onnx")
    return run_arguments(kw.pop("catalog", d / "cat.fits"), out, **{**base, **kw})


@pytest.fixture(scope="module")
def reference_run(small_field, dask_client, tmp_path_factory):
    """One undisturbed run of args_for(small_field): (output directory, summary).  Tests compare
    with it; a test that runs again in it works on a copy (:func:`copy_run`)."""
    d, _ = small_field
    out = tmp_path_factory.mktemp("reference") / "out"
    return out, run(args_for(d, out), client=dask_client)


def copy_run(src: Path, dst: Path) -> Path:
    """A copy of a finished run, modification times and all (resume decisions see the same files)."""
    shutil.copytree(src, dst, symlinks=True)
    return dst


def test_partitions_bounded_and_cover_every_row():
    rng = np.random.default_rng(0)
    ra, dec = rng.uniform(0, 360, 20000), np.degrees(np.arcsin(rng.uniform(-1, 1, 20000)))
    ra[:3000] = rng.normal(180, 0.01, 3000)  # a dense clump
    dec[:3000] = rng.normal(0, 0.01, 3000)
    dec[5] = np.nan
    valid = np.isfinite(dec)
    hpx = healpix29(ra, dec, valid)
    pix, counts = np.unique(hpx[valid] >> (2 * (ORDER29 - 6)), return_counts=True)
    parts = make_partitions(pix, counts, int((~valid).sum()), 6, max_rows=500)
    pid = assign_partitions(hpx, np.arange(len(ra)), parts)
    sizes = np.bincount(pid, minlength=len(parts))
    assert sizes.sum() == len(ra) and (pid >= 0).all()
    assert sizes.max() <= 500 + 1  # sub-partitions split by row number
    assert {p.order for p in parts} >= {-1, 6}  # invalid rows have their own partition
    assert len({p.name for p in parts}) == len(parts)


def test_end_to_end_rows_conserved_and_flagged(small_field, reference_run):
    _, df = small_field
    out, s = reference_run
    got = read_out(out)
    assert len(got) == len(df) == s["rows"]
    assert got["input_row"].tolist() == list(range(len(df)))
    assert got["objid"].dtype == np.int64 and got["objid"].tolist() == df["objID"].tolist()
    st = dict(zip(got["input_row"], got["status"]))
    assert st[3] == st[4] == st[5] == "bad_coords"
    assert st[11] == "duplicate_id" and st[10] == "ok"
    assert st[20] == st[21] == "no_image" and st[22] == "bad_image"
    ok = got["status"] == "ok"
    assert ok.sum() == len(df) - 7
    assert got.loc[ok, "p_merger"].between(0, 1).all() and got.loc[~ok, "p_merger"].isna().all()
    text = RunLayout(out).summary.read_text()  # the typed summary is the file, exactly
    assert isinstance(s, RunSummary) and s.to_json() == text and RunSummary.from_json(text).to_json() == text
    assert np.allclose(got["mag_r"], df["mag_r"])
    assert s["status"]["ok"] == ok.sum() and s["flagged"] == 7
    fits = fitsio.read(str(out / "mergers.fits"))
    assert len(fits) == len(df) and sorted(fits["objid"].tolist()) == sorted(df["objID"].tolist())


def test_rerun_resumes_and_is_identical(small_field, reference_run, dask_client, tmp_path):
    d, _ = small_field
    out = copy_run(reference_run[0], tmp_path / "out")
    files = sorted((out / "parquet").rglob("*.parquet"))
    before = {f: f.read_bytes() for f in files}
    markers = {f: f.stat().st_mtime_ns for f in (out / "_work" / "scored").glob("*.json")}
    # partitions with rows flagged no_image (20, 21) are retried (the images may have been added since):
    # rewritten byte for byte; every other partition is done and not recomputed
    retried = {f"{r.name}.json" for r in (out / "_work" / "retry").glob("part-*")}
    assert len(retried) >= 1
    run(args_for(d, out), client=dask_client)
    assert {f: f.stat().st_mtime_ns for f in (out / "_work" / "scored").glob("*.json") if f.name not in retried} == {
        f: t for f, t in markers.items() if f.name not in retried
    }
    assert {f: f.read_bytes() for f in files} == before
    # delete two partitions + markers: they are recomputed byte for byte
    for m in sorted((out / "_work" / "scored").glob("*.json"))[:2]:
        m.unlink()
    run(args_for(d, out), client=dask_client)
    assert {f: f.read_bytes() for f in files} == before


def test_a_retry_marker_written_by_main_resumes(small_field, reference_run, dask_client, tmp_path):
    """A retry marker is the JSON mergerscan has always written (the literal text below, as main
    wrote it): this run's markers are that text, byte for byte; one written so is read back as a
    RetryMarker, and a re-run resumes from it (the partition retried, the output and the marker
    rewritten with the same bytes)."""
    from mergerscan.pipeline.result import RetryMarker
    from mergerscan.pipeline.resume import RETRY, ResumePlan

    d, _ = small_field
    out = copy_run(reference_run[0], tmp_path / "out")
    work, resume = RunLayout(out).work, ResumePlan(out)
    retried = [r for r in resume.results(resume.existing_plan().partitions) if r.retry]
    assert retried and all(
        set(r.status) & {"no_image", "fetch_failed", "out_of_memory"} == {"no_image"} for r in retried
    )
    counts = {r.pid: r.status["no_image"] for r in retried}
    main = {pid: '{"rows": N, "status": {"no_image": N}}'.replace("N", str(n)) for pid, n in counts.items()}
    assert {pid: work.retry_marker(pid).read_text() for pid in main} == main
    for pid, text in main.items():  # as the old code left them
        work.retry_marker(pid).write_text(text)
        n = counts[pid]
        assert resume.retry_of(pid) == RetryMarker({"no_image": n}, n) == RetryMarker.of({"no_image": n})
        assert json.dumps(RetryMarker.from_dict(json.loads(text)).to_dict(), sort_keys=True) == text
    todo = resume.remaining(resume.existing_plan().partitions)
    assert [(t.part.pid, t.why) for t in todo] == [(pid, RETRY) for pid in main]
    files = sorted((out / "parquet").rglob("*.parquet"))
    before = {f: f.read_bytes() for f in files}
    run(args_for(d, out), client=dask_client)
    assert {f: f.read_bytes() for f in files} == before
    assert {pid: work.retry_marker(pid).read_text() for pid in main} == main


def test_resume_plan_says_what_is_left_and_why(small_field, reference_run, tmp_path):
    """ResumePlan over a finished run: every done marker is a PartitionResult, byte for byte; the
    partitions holding no_image rows (transient) remain as retries naming them, a partition whose
    marker is gone remains as never scored; only transient rows are scored again; the OOM ladder."""
    from mergerscan.pipeline.result import PartitionResult
    from mergerscan.pipeline.resume import NEVER_SCORED, RETRY, ResumePlan, after_out_of_memory
    from mergerscan.pipeline.task import PartitionTask

    d, _ = small_field
    out = copy_run(reference_run[0], tmp_path / "out")
    resume = ResumePlan(out)
    plan = resume.existing_plan()
    for f in sorted(RunLayout(out).work.scored_dir.glob("*.json")):
        text = f.read_text()
        assert json.dumps(PartitionResult.from_dict(json.loads(text)).to_dict(), sort_keys=True) == text, f.name
    results = resume.results(plan.partitions)
    assert sum(r.rows for r in results) == 300 and resume.unscored(plan.partitions) == []
    (RunLayout(out).work.scored_dir / "notes.txt").write_text("not a marker")  # what the report lists: markers only
    assert RunLayout(out).work.done_markers() == [RunLayout(out).work.marker(p.pid) for p in plan.partitions]
    todo = resume.remaining(plan.partitions)
    assert (
        todo and {t.why for t in todo} == {RETRY} and [t.part.pid for t in todo] == [r.pid for r in results if r.retry]
    )
    assert sum(t.statuses.get("no_image", 0) for t in todo) == 2 and all(set(t.statuses) == {"no_image"} for t in todo)
    done = next(p for p in plan.partitions if p.pid not in {t.part.pid for t in todo})
    RunLayout(out).work.marker(done.pid).unlink()
    assert resume.scored(done.pid) is None and resume.unscored(plan.partitions) == [done]
    assert [(t.part.pid, t.why) for t in resume.remaining([done, todo[0].part])] == [
        (done.pid, NEVER_SCORED),
        (todo[0].part.pid, RETRY),
    ]
    before = np.array(["ok", "edge", "no_image", "bad_image", "fetch_failed", "out_of_memory", "bad_coords"], object)
    assert resume.keep_rows(before).tolist() == [True, True, False, True, False, False, True]
    assert resume.kept_examples({"no_image": "a", "bad_image": "b"}) == {"bad_image": "b"}
    task = PartitionTask(output=str(out), source=args_for(d, out).source, engine_path=None, batch_size=128)
    ladder = [after_out_of_memory(task, level)[0] for level in range(3)]
    assert [(t.batch_size, t.flag_status) for t in ladder] == [(16, None), (1, None), (1, "out_of_memory")]


def test_shared_batches_give_the_same_catalog(small_field, reference_run, dask_client, tmp_path):
    """--shared-batch (the GPU default): partitions of a worker share merged engine calls; the
    catalog is the same as with one engine call per partition batch."""
    d, _ = small_field
    a = read_out(reference_run[0])
    b = (
        read_out(tmp_path / "b")
        if run(args_for(d, tmp_path / "b", shared_batch=True, batch_size=8), client=dask_client)
        else None
    )
    assert a["status"].tolist() == b["status"].tolist() and a["objid"].tolist() == b["objid"].tolist()
    np.testing.assert_allclose(a["p_merger"], b["p_merger"], atol=1e-5)


def test_kept_nullable_int_column_has_one_type_in_every_partition(dask_client, tmp_path):
    """A Parquet int64 column with nulls in only some rows stays int64 (nulls kept, TNULL in the
    FITS table) instead of becoming float64 in the partitions that happen to hold a null - which
    made the partitions' schemas differ and finalize fail; big values stay exact."""
    import pyarrow as pa

    n = 240
    rng = np.random.default_rng(1)
    ra = np.concatenate([rng.uniform(10, 10.3, n // 2), rng.uniform(200, 200.3, n // 2)])
    dec = np.concatenate([rng.uniform(0, 0.3, n // 2), rng.uniform(30, 30.3, n // 2)])
    big = [None if (i >= n // 2 and i % 7 == 0) else 2**62 + i for i in range(n)]
    pq.write_table(
        pa.table(
            {"objid": np.arange(n, dtype=np.int64) + 1, "ra": ra, "dec": dec, "nchild": pa.array(big, pa.int64())}
        ),
        tmp_path / "cat.parquet",
        row_group_size=50,
    )
    (tmp_path / "none").mkdir()
    out = tmp_path / "out"
    run(
        ProcessArguments(
            catalog=str(tmp_path / "cat.parquet"),
            output=str(out),
            images=str(tmp_path / "none"),
            partition_rows=40,
            chunk_rows=50,
            keep_columns=["nchild"],
            progress=False,
            command="test",
            report=False,
        ),
        client=dask_client,
    )
    t = pq.read_table(out / "parquet" / "dataset")
    assert t.schema.field("nchild").type == pa.int64() and t.column("nchild").null_count == big.count(None)
    got = dict(zip(t.column("input_row").to_pylist(), t.column("nchild").to_pylist()))
    assert [got[i] for i in range(n)] == big
    fits = fitsio.read(str(out / "mergers.fits"))
    hdr = fitsio.read_header(str(out / "mergers.fits"), 1)
    k = next(i for i in range(1, 40) if hdr.get(f"TTYPE{i}") == "nchild")
    assert fits["nchild"].dtype.kind == "i" and hdr[f"TNULL{k}"] == np.iinfo(np.int64).min


def test_different_engine_or_input_refuses_to_resume(small_field, reference_run, dask_client, tmp_path):
    d, df = small_field
    out = copy_run(reference_run[0], tmp_path / "out")
    with pytest.raises(FingerprintMismatch, match="partition_rows"):
        run(args_for(d, out, partition_rows=41), client=dask_client)
    # another precision moves scores by up to a few percent: never mixed into one output
    with pytest.raises(FingerprintMismatch, match="precision"):
        run(args_for(d, out, backend="torch:bf16"), client=dask_client)
    s = run(args_for(d, out, partition_rows=41, overwrite=True), client=dask_client)
    assert s["rows"] == len(df)


@pytest.mark.parametrize("fmt", ["parquet", "csv"])
def test_parquet_and_csv_inputs(small_field, reference_run, dask_client, tmp_path, fmt):
    d, df = small_field
    path = tmp_path / f"cat.{fmt}"
    if fmt == "csv":
        df.to_csv(path, index=False)
    else:
        df.to_parquet(path, row_group_size=64)
    out = tmp_path / "out"
    run(args_for(d, out, catalog=str(path), chunk_rows=100), client=dask_client)
    got = read_out(out)
    assert got["objid"].tolist() == df["objID"].tolist()
    assert np.allclose(read_out(reference_run[0])["p_merger"], got["p_merger"], equal_nan=True)


def test_csv_with_string_ids(small_field, reference_run, dask_client, tmp_path):
    """A CSV whose id column holds names (pandas 3 reads them as its ``str`` dtype, not object),
    like ../shared's catalog.csv with ids M0001...: stamps named by them, ids kept as text."""
    d, df = small_field
    names = [f"G{k:04d}" for k in range(len(df))]
    names[11] = names[10]  # the fixture's duplicated object
    stamps = tmp_path / "named"
    stamps.mkdir()
    for name, o in zip(names, df["objID"]):
        if (d / "stamps" / f"{o}.jpg").exists() and not (stamps / f"{name}.jpg").exists():
            (stamps / f"{name}.jpg").symlink_to(d / "stamps" / f"{o}.jpg")
    path = tmp_path / "named.csv"
    df.drop(columns="objID").assign(name=names).to_csv(path, index=False)
    out = tmp_path / "out"
    run(args_for(d, out, catalog=str(path), images=str(stamps), id_column="name"), client=dask_client)
    got = read_out(out)
    assert got["id"].tolist() == names  # text ids come out as "id", integers as "objid"
    want = read_out(reference_run[0])
    assert got["status"].tolist() == want["status"].tolist()
    assert np.allclose(want["p_merger"], got["p_merger"], equal_nan=True)
    fits = fitsio.read(str(out / "mergers.fits"), columns=["id", "input_row"])
    assert fits["id"][np.argsort(fits["input_row"])].tolist() == names


def test_path_column_names_the_stamp_files(small_field, reference_run, dask_client, tmp_path):
    """--path-column: relative to --images DIR, absolute, or empty (then DIR/<id>.jpg); carried
    through to the output.  Scores equal the run that finds the same files by id."""
    d, df = small_field
    imgs, elsewhere = tmp_path / "imgs", tmp_path / "elsewhere"
    (imgs / "sub").mkdir(parents=True)
    elsewhere.mkdir()
    files = []
    for k, o in enumerate(df["objID"]):
        src = d / "stamps" / f"{o}.jpg"
        if not src.exists():  # the fixture's missing stamps
            files.append(f"sub/none{k}.jpg")
        elif k % 3 == 0:
            (imgs / "sub" / f"rel{k}.jpg").symlink_to(src)
            files.append(f"sub/rel{k}.jpg")  # relative to DIR
        elif k % 3 == 1:
            (elsewhere / f"abs{k}.jpg").symlink_to(src)
            files.append(str(elsewhere / f"abs{k}.jpg"))  # absolute
        else:
            (imgs / f"{o}.jpg").symlink_to(src)
            files.append(None)  # empty: DIR/<id>.jpg
    path = tmp_path / "files.parquet"
    df.assign(File=files).to_parquet(path)
    out = tmp_path / "out"
    run(args_for(d, out, catalog=str(path), images=str(imgs), path_column="file"), client=dask_client)
    got = read_out(out)
    assert [f if isinstance(f, str) else None for f in got["File"]] == files
    want = read_out(reference_run[0])
    assert got["status"].tolist() == want["status"].tolist()
    assert np.allclose(want["p_merger"], got["p_merger"], equal_nan=True)


def test_error_path_column(small_field, tmp_path):
    d, _ = small_field
    _assert_one_line_error(_images_cli(d, d / "cat.fits", tmp_path, "--path-column", "nosuch"), "cat.fits", "nosuch")
    _assert_one_line_error(
        _cli(d / "cat.fits", "--frames", d / "stamps", "--path-column", "mag_r", "-o", tmp_path / "o"), "--path-column"
    )


# ---------------------------------------------------------------- bad input: one-line errors
def _cli(*argv, timeout=120):
    return cli_process(*argv, timeout=timeout)  # fails on a printed traceback


def _images_cli(d: Path, catalog: Path, tmp_path: Path, *options):
    """process-catalog CATALOG on the small field's stamps, into tmp_path / "o"."""
    return _cli(catalog, "--images", d / "stamps", *options, "-o", tmp_path / "o")


def _assert_one_line_error(r, *needles):
    assert r.returncode == 2, r.stderr
    lines = [line for line in r.stderr.strip().splitlines() if line.strip()]
    assert len(lines) == 1, r.stderr
    for n in needles:
        assert n in lines[0], lines[0]


def test_error_truncated_fits(small_field, tmp_path):
    d, _ = small_field
    bad = tmp_path / "trunc.fits"
    bad.write_bytes((d / "cat.fits").read_bytes()[:4000])
    _assert_one_line_error(_images_cli(d, bad, tmp_path), "trunc.fits")


def test_error_missing_ra_column(small_field, tmp_path):
    d, df = small_field
    p = tmp_path / "nora.fits"
    write_fits_catalog(p, df.drop(columns="RAdeg"))
    _assert_one_line_error(_images_cli(d, p, tmp_path), "nora.fits", "ra")


def test_error_non_numeric_dec(small_field, tmp_path):
    d, df = small_field
    p = tmp_path / "strdec.csv"
    df.assign(DEdeg=["x"] + [str(v) for v in df["DEdeg"][1:]]).to_csv(p, index=False)
    _assert_one_line_error(_images_cli(d, p, tmp_path), "strdec.csv", "DEdeg")


def test_error_empty_catalog(small_field, tmp_path):
    d, df = small_field
    p = tmp_path / "empty.fits"
    write_fits_catalog(p, df.iloc[:0])
    _assert_one_line_error(_images_cli(d, p, tmp_path), "empty.fits", "no rows")


def test_error_explicit_column_absent(small_field, tmp_path):
    d, _ = small_field
    _assert_one_line_error(_images_cli(d, d / "cat.fits", tmp_path, "--ra-column", "alpha"), "cat.fits", "alpha")


def test_run_layout_is_the_on_disk_format():
    """The file names of a run (old runs resume, the report and other tools read them): pinned."""
    from mergerscan.pipeline.plan import Partition

    o = RunLayout("/o")
    w = o.work
    got = [
        o.fits,
        o.summary,
        o.report_index,
        o.catalog_dir,
        w.plan,
        w.fingerprint,
        w.content_cache,
        w.staged_csv,
        w.run_file(3),
        w.bucket_file(4),
        w.marker(5),
        w.retry_marker(5),
        w.piece(6),
        w.slurm_logs,
    ]
    assert [str(p) for p in got] == [
        "/o/mergers.fits",
        "/o/summary.json",
        "/o/report/index.html",
        "/o/parquet",
        "/o/_work/plan.json",
        "/o/_work/fingerprint.json",
        "/o/_work/content-cache.json",
        "/o/_work/input.parquet",
        "/o/_work/split/runs/chunk-000003.arrow",
        "/o/_work/split/bucket-000004.arrow",
        "/o/_work/scored/part-000005.json",
        "/o/_work/retry/part-000005",
        "/o/_work/pieces/part-000006.parquet",
        "/o/_work/slurm-logs",
    ]
    assert str(o.dataset_file(Partition(6, 5, 1234, sub=1, nsub=3))) == "/o/_work/pieces/part-000006.parquet"
    assert str(o.dataset_file(Partition(2, 5, 21234))) == "/o/parquet/dataset/Norder=5/Dir=20000/Npix=21234.parquet"
    assert str(o.dataset_file(Partition(9, -1, 0, sub=2, nsub=3))) == "/o/parquet/bad_coords/part-0002.parquet"
    assert [p.name for p in o.outputs()] == ["_work", "parquet", "mergers.fits", "summary.json", "report", "similar"]
    assert (str(o.similar_index), str(o.similar_provenance)) == ("/o/similar/index.faiss", "/o/similar/index.json")
    assert str(o.similar_page("../x y/588018055654998067")) == "/o/similar/like-x_y_588018055654998067.html"


def test_run_summary_reading_rules():
    """summary.json -> RunSummary: unknown keys kept (written back after the known ones), missing
    keys default, a wrong type refused in one line; a read-only mapping of the file's keys."""
    s = RunSummary(rows=10, scored=8, flagged=2, status={"ok": 8, "no_image": 2}, select="mag < 17", not_selected=0)
    d = s.to_dict()
    assert list(d)[:5] == ["rows", "scored", "flagged", "select", "not_selected"] and "fetch_failures" not in d
    assert s["rows"] == 10 and s.get("fetch_failures") is None and "select" in s and dict(s) == d
    newer = RunSummary.from_json(json.dumps({**d, "gpu_seconds": 3.5}, indent=1))
    assert newer.extra == {"gpu_seconds": 3.5} and list(newer.to_dict())[-1] == "gpu_seconds"
    assert RunSummary.from_json(newer.to_json()) == newer
    old = RunSummary.from_dict({"rows": 3, "threshold": 0.4, "source": {"kind": "stamps", "location": "/s"}})
    assert old.scored == 0 and old.failures == [] and old.source.location == "/s" and old.select is None
    s.report = "/out/report/index.html"  # built after summary.json: in the object only
    assert s["report"] == s.report and "report" not in json.loads(s.to_json())
    with pytest.raises(SummaryError, match="rows"):
        RunSummary.from_dict({"rows": "many"})
    with pytest.raises(SummaryError, match="not JSON"):
        RunSummary.from_json("{")


def test_error_bad_fault_hook(monkeypatch):
    """A fault hook (tests only: named in the environment, faults.py) that cannot be used is refused
    in one line naming it; no hook in the environment calls nothing."""
    from mergerscan.pipeline.faults import ENV, FaultHookError, fault_point, resolve

    monkeypatch.delenv(ENV, raising=False)
    fault_point("score", 0, 8)  # production: no hook, nothing happens
    for spec, why in (
        ("nomodule", "module:function"),
        ("mergerscan.pipeline.faults:nothing", "AttributeError"),
        ("mergerscan.nowhere:f", "ModuleNotFoundError"),
    ):
        with pytest.raises(FaultHookError, match=why):
            resolve(spec)
        monkeypatch.setenv(ENV, spec)
        with pytest.raises(FaultHookError, match=f"{ENV}=.*{why}"):
            fault_point("score", 0, 8)


def test_error_unknown_keep_column_and_two_sources(small_field, tmp_path):
    d, _ = small_field
    _assert_one_line_error(
        _cli(d / "cat.fits", "--images", d / "stamps", "--keep-columns", "nope", "-o", tmp_path / "o"), "nope"
    )
    _assert_one_line_error(
        _cli(d / "cat.fits", "--images", d / "stamps", "--frames", d, "-o", tmp_path / "o2"), "exactly one"
    )
    with pytest.raises(ArgumentError, match="http"):
        ProcessArguments(catalog=str(d / "cat.fits"), output=str(tmp_path / "x"), cutout_service="file:///etc/passwd")


# ---------------------------------------------------------------- killed mid-run, then resumed
def test_killed_run_resumes_without_duplicates(small_field, dask_client, tmp_path):
    d, df = small_field
    ref, out = tmp_path / "ref", tmp_path / "out"
    # the undisturbed run, partitioned alike: duplicate_id is decided within a partition
    run(args_for(d, ref, partition_rows=20, batch_size=8), client=dask_client)
    common = _small_run_options(d, "--no-report", "--batch-size", "8", "--engine", d / "engine.onnx")
    scored = out / "_work" / "scored"
    # every partition takes >= 0.4 s, so that the kill lands mid-run however fast the engine is
    _kill_cli_when(
        d / "cat.fits", out, common, environment("sleep", "score:-1:0.4"), lambda: len(list(scored.glob("*.json"))) >= 3
    )
    n_done = len(list(scored.glob("*.json")))
    total = len(list((ref / "_work" / "scored").glob("*.json")))
    assert 0 < n_done < total, "the kill must land mid-run"
    assert not (out / "mergers.fits").exists()
    r = _cli(d / "cat.fits", "-o", out, *common, timeout=600)
    assert r.returncode == 0, r.stderr
    a, b = read_out(ref), read_out(out)
    assert len(b) == len(df) and b["input_row"].is_unique
    pd.testing.assert_frame_equal(a[SCIENCE + ["mag_r"]], b[SCIENCE + ["mag_r"]])
    fa, fb = fitsio.read(str(ref / "mergers.fits")), fitsio.read(str(out / "mergers.fits"))
    assert np.array_equal(fa["objid"], fb["objid"]) and np.allclose(fa["p_merger"], fb["p_merger"], equal_nan=True)


def test_a_network_source_on_slurm_compute_nodes_is_said(small_field, dask_client, tmp_path, capsys):
    """A source that needs the network (a cutout service) read on SLURM compute nodes (--plan and
    --shard of the array jobs, --cluster slurm) gets one line saying so, with the URL redacted; a
    local run, or a source on disk, none."""
    from mergerscan.pipeline.run import compute_node_network_note

    d, _ = small_field
    url = "http://user:secret@127.0.0.1:9/ImgCutout"
    service = dict(images=None, cutout_service=url)
    args = args_for(d, tmp_path / "o", mode="plan", **service)
    note = compute_node_network_note(args.resolved())
    assert note and "over the network" in note and "compute nodes" in note and "secret" not in note
    assert compute_node_network_note(args_for(d, tmp_path / "o", **service).resolved()) is None  # local
    assert compute_node_network_note(args_for(d, tmp_path / "o", mode="plan").resolved()) is None  # stamps
    capsys.readouterr()
    run(args, client=dask_client)  # --plan fetches nothing: the line comes before it plans
    assert note in capsys.readouterr().err.splitlines()


def test_array_mode_plan_shards_finalize_matches_single_run(small_field, reference_run, dask_client, tmp_path):
    d, df = small_field
    ref, out = reference_run[0], tmp_path / "out"
    p = run(args_for(d, out, mode="plan"), client=dask_client)
    assert p["partitions"] > 2 and (out / "_work" / "plan.json").is_file()
    with pytest.raises(ArgumentError, match="not scored yet"):
        run(args_for(d, out, mode="finalize"), client=dask_client)
    for i in range(3):
        run(args_for(d, out, mode="shard", shard=(i, 3)), client=dask_client)
    s = run(args_for(d, out, mode="finalize"), client=dask_client)
    assert s["rows"] == len(df)
    a, b = read_out(ref), read_out(out)
    pd.testing.assert_frame_equal(a[SCIENCE], b[SCIENCE])


def test_error_csv_column_changes_type_late(small_field, tmp_path):
    """A bad value far down a CSV (after the first chunk) is still a one-line error naming the file."""
    d, df = small_field
    p = tmp_path / "late.csv"
    bad = df.copy()
    bad["mag_r"] = bad["mag_r"].astype(object)
    bad.loc[250, "mag_r"] = "bright"
    bad.to_csv(p, index=False)
    _assert_one_line_error(
        _cli(p, "--images", d / "stamps", "--chunk-rows", "100", "--keep-columns", "mag_r", "-o", tmp_path / "o"),
        "late.csv",
    )


def _small_run_options(d: Path, *more) -> list:
    """process-catalog options of the killed-run tests: the small field, 20-row partitions, one
    worker of one thread, ``more`` after them."""
    return [
        "--images",
        d / "stamps",
        "--partition-rows",
        "20",
        "--workers",
        "1",
        "--threads-per-worker",
        "1",
        "--keep-columns",
        "mag_r",
        "--no-progress",
        *more,
    ]


def _kill_cli_when(catalog: Path, out: Path, options: list, env: dict, done) -> None:
    """process-catalog CATALOG -o OUT OPTIONS in a fresh process group with ``env`` added to the
    environment, killed (SIGKILL to the whole group: client, scheduler, workers) once ``done()``
    holds, it has exited, or 300 s have passed."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "mergerscan.pipeline.cli", str(catalog), "-o", str(out), *map(str, options)],
        env=dict(os.environ, **env),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    deadline = time.time() + 300
    while time.time() < deadline and not done() and proc.poll() is None:
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


def _plan_options(d: Path) -> list:
    return _small_run_options(d, "--chunk-rows", "40", "--plan")


@pytest.fixture(scope="module")
def plan_reference(small_field, tmp_path_factory) -> Path:
    """An undisturbed ``--plan`` run (plan.json and the bucket files) of the killed-plan tests' command."""
    d, _ = small_field
    ref = tmp_path_factory.mktemp("plan-reference") / "ref"
    assert _cli(d / "cat.fits", "-o", ref, *_plan_options(d)).returncode == 0
    return ref


@pytest.mark.parametrize("stage", ["scan", "gather"])
def test_killed_plan_rerun_finishes_with_the_same_plan(small_field, plan_reference, tmp_path, stage):
    """--plan killed while scanning the catalog (some runs written, no plan.json yet) or while
    gathering buckets (plan.json and some buckets written): the re-run gives the same plan.json
    and the same bucket files, byte for byte, and leaves no run or temporary behind."""
    d, _ = small_field
    ref, out = plan_reference, tmp_path / "out"
    common = _plan_options(d)
    split_ref = ref / "_work" / "split"
    buckets = sorted(f.name for f in split_ref.iterdir())
    assert len(buckets) > 3 and all(b.startswith("bucket-") for b in buckets)
    runs, split_out, plan_file = out / "_work" / "split" / "runs", out / "_work" / "split", out / "_work" / "plan.json"
    written = (
        (lambda: len(list(runs.glob("chunk-*.arrow"))))
        if stage == "scan"
        else (lambda: len(list(split_out.glob("bucket-*.arrow"))))
    )
    # every {stage} task >= 0.5 s
    _kill_cli_when(d / "cat.fits", out, common, environment("sleep", f"{stage}:-1:0.5"), lambda: written() >= 2)
    if stage == "scan":
        assert not plan_file.exists() and 2 <= written() < 300 // 40 + 1, "the kill must land mid-scan"
    else:
        assert plan_file.exists() and 2 <= written() < len(buckets), "the kill must land mid-gather"
        assert len(list(runs.glob("chunk-*.arrow"))) == 300 // 40 + 1  # runs kept until every bucket is in
    r = _cli(d / "cat.fits", "-o", out, *common)
    assert r.returncode == 0, r.stderr
    assert plan_file.read_bytes() == (ref / "_work" / "plan.json").read_bytes()
    assert sorted(f.name for f in split_out.iterdir()) == buckets  # no runs, no temporaries
    for b in buckets:
        assert (split_out / b).read_bytes() == (split_ref / b).read_bytes(), b
