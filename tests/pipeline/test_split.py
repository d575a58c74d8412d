"""The split (pipeline/split.py) without Dask: scan -> plan -> gather -> read back, against the
plain per-row partition assignment over the whole catalog."""

from __future__ import annotations

import os

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from mergerscan.catalogs.read import CatalogReader
from mergerscan.pipeline import split
from mergerscan.pipeline.plan import ORDER29, Plan, assign_partitions, healpix29, make_partitions
from mergerscan.pipeline.resume import ResumePlan
from mergerscan.run_layout import RunLayout, WorkLayout

HIST_ORDER = 5


def _catalog(n=6000, seed=3) -> pd.DataFrame:
    """Uniform sky in random order + a dense clump (sub-partitions) + bad coordinates; a kept
    int column with nulls in some chunks only and a string column."""
    rng = np.random.default_rng(seed)
    ra, dec = rng.uniform(0, 360, n), np.degrees(np.arcsin(rng.uniform(-1, 1, n)))
    k = n // 4
    clump = rng.choice(n, k, replace=False)
    ra[clump], dec[clump] = rng.normal(40, 0.01, k), rng.normal(-20, 0.01, k)
    dec[[5, 17, n - 7]] = [np.nan, 95.0, -91.0]
    nchild = pd.array([None if (i > n // 2 and i % 11 == 0) else 2**62 + i for i in range(n)], "Int64")
    return pd.DataFrame(
        {
            "objid": 10**17 + np.arange(n, dtype=np.int64) * 3,
            "ra": ra,
            "dec": dec,
            "nchild": nchild,
            "name": [f"g{i}" for i in range(n)],
        }
    )


def _split(tmp_path, df, chunk_rows=700, partition_rows=300, bucket_rows=1000):
    path = tmp_path / "cat.parquet"
    pq.write_table(pa.Table.from_pandas(df, preserve_index=False), path, row_group_size=350)
    r = CatalogReader(path, chunk_rows=chunk_rows)
    chunks = r.chunk_ranges()
    cols = {"id": "objid", "ra": "ra", "dec": "dec"}
    spec = split.ScanSpec(
        catalog=str(path), source_catalog=str(path), columns=cols, keep=["nchild", "name"], hist_order=HIST_ORDER
    )
    work = RunLayout(tmp_path).work.dir
    hist, ranges = split.Histogram(), []
    for i, c in enumerate(chunks):
        s = split.scan_chunk(spec, i, c, str(work))
        hist.add(s)
        ranges.append(s["range"])
    parts = make_partitions(*hist.result(), HIST_ORDER, partition_rows)
    plan = Plan(
        catalog=str(path),
        source_catalog=str(path),
        nrows=len(df),
        columns=cols,
        keep=["nchild", "name"],
        id_kind="int",
        chunks=chunks,
        hist_order=HIST_ORDER,
        partitions=parts,
        split=split.plan_split(parts, ranges, bucket_rows),
    )
    return plan, work


def test_split_gives_each_partition_exactly_its_rows_in_input_order(tmp_path):
    df = _catalog()
    plan, work = _split(tmp_path, df)
    assert len(plan.chunks) == 9 and len(os.listdir(WorkLayout(work).runs_dir)) == 9  # one run per chunk
    assert any(p.nsub > 1 for p in plan.partitions) and any(p.order < 0 for p in plan.partitions)
    resume = ResumePlan(tmp_path)
    assert resume.missing_buckets(plan) == list(range(len(plan.split["buckets"])))
    for b in range(len(plan.split["buckets"])):
        split.gather_bucket(plan, b, str(work))
    assert resume.missing_buckets(plan) == []
    split.remove_runs(work)
    assert sorted(os.listdir(work / "split")) == [f"bucket-{b:06d}.arrow" for b in range(len(plan.split["buckets"]))]
    # the reference: every row assigned on its own, over the whole catalog
    ra, dec = df["ra"].to_numpy(), df["dec"].to_numpy()
    valid = np.isfinite(ra) & np.isfinite(dec) & (dec >= -90) & (dec <= 90)
    want = assign_partitions(healpix29(ra, dec, valid), np.arange(len(df)), plan.partitions)
    seen = []
    for p in plan.partitions:
        got = split.read_partition(work, plan, p, ["nchild"])
        rows = np.flatnonzero(want == p.pid)
        assert got["_input_row"].tolist() == rows.tolist(), p
        assert got["objid"].tolist() == df["objid"].iloc[rows].tolist()  # exact int64
        assert got["name"].tolist() == df["name"].iloc[rows].tolist()
        assert str(got["nchild"].dtype) == "Int64" if len(got) else True
        assert got["nchild"].tolist() == df["nchild"].iloc[rows].tolist()
        seen += got["_input_row"].tolist()
    assert sorted(seen) == list(range(len(df)))  # each row once


def test_buckets_cover_the_partitions_in_order():
    rng = np.random.default_rng(0)
    ra, dec = rng.uniform(0, 360, 20000), np.degrees(np.arcsin(rng.uniform(-1, 1, 20000)))
    ra[:5000], dec[:5000] = rng.normal(10, 0.001, 5000), rng.normal(10, 0.001, 5000)
    valid = np.ones(20000, bool)
    valid[:7] = False
    hpx = healpix29(ra, dec, valid)
    pix, cnt = np.unique(hpx[valid] >> (2 * (ORDER29 - 6)), return_counts=True)
    parts = make_partitions(pix, cnt, 7, 6, max_rows=200)
    buckets = split.make_buckets(parts, 1000)
    pids = [pid for _, _, a, b in buckets for pid in range(a, b)]
    assert pids == list(range(len(parts)))  # every partition once, in order
    for lo, hi, a, b in buckets:
        members = parts[a:b]
        assert (lo < 0) == all(p.order < 0 for p in members)  # bad coordinates on their own
        if len({(p.order, p.pixel) for p in members}) > 1:  # several pixels: bounded rows
            assert sum(p.rows for p in members) <= 1000
        for p in members:
            plo, phi = split._unit_range(p)
            assert lo <= plo and phi <= hi
    dense = [bk for bk in buckets if bk[3] - bk[2] > 1 and len({parts[i].pixel for i in range(bk[2], bk[3])}) == 1]
    assert len(dense) > 1  # the 5,000-row pixel: cut in buckets


def test_histogram_sums_like_unique():
    rng = np.random.default_rng(1)
    h = split.Histogram()
    allp = []
    for _ in range(30):
        p = np.unique(rng.integers(0, 50000, 60000))
        h.add({"pixels": p, "counts": np.ones(len(p), np.int64), "n_invalid": 2})
        allp.append(p)
    pix, cnt, n_invalid = h.result()
    ref_p, ref_c = np.unique(np.concatenate(allp), return_counts=True)
    assert np.array_equal(pix, ref_p) and np.array_equal(cnt, ref_c) and n_invalid == 60


def test_torn_run_is_made_again(tmp_path):
    """Runs are not fsync'ed: one torn by a crash must be re-made, not trusted."""
    df = _catalog(2000)
    plan, work = _split(tmp_path, df)
    run = WorkLayout(work).run_file(1)
    good = run.read_bytes()
    run.write_bytes(good[: len(good) // 2])
    spec = split.ScanSpec(
        catalog=plan.catalog, source_catalog=plan.catalog, columns=plan.columns, keep=plan.keep, hist_order=HIST_ORDER
    )
    s = split.scan_chunk(spec, 1, plan.chunks[1], str(work))
    assert run.read_bytes() == good and s["rows"] == plan.chunks[1][1] - plan.chunks[1][0]


def test_parquet_chunks_follow_row_groups(tmp_path):
    t = pa.table({"x": np.arange(1000)})
    pq.write_table(t, tmp_path / "a.parquet", row_group_size=300)  # groups 300, 300, 300, 100
    assert CatalogReader(tmp_path / "a.parquet", chunk_rows=200).chunk_ranges() == [
        (0, 300),
        (300, 600),
        (600, 900),
        (900, 1000),
    ]
    assert CatalogReader(tmp_path / "a.parquet", chunk_rows=500).chunk_ranges() == [(0, 600), (600, 1000)]


def test_a_sub_partition_with_no_rows_reads_empty(tmp_path):
    """Sub-partitions take rows by input_row % nsub: bad coordinates in rows 0, 3, 6 cut into 3
    sub-partitions leave two of them empty; they read back empty and no row is lost."""
    df = _catalog(40)
    df.loc[[5, 17, 33], "dec"] = 0.0
    df.loc[[0, 3, 6], "dec"] = np.nan
    plan, work = _split(tmp_path, df, chunk_rows=10, partition_rows=1, bucket_rows=5)
    bad = [p for p in plan.partitions if p.order < 0]
    assert len(bad) == 3
    for b in range(len(plan.split["buckets"])):
        split.gather_bucket(plan, b, str(work))
    got = [split.read_partition(work, plan, p) for p in bad]
    assert got[0]["_input_row"].tolist() == [0, 3, 6] and got[1].empty and got[2].empty
    assert sum(len(split.read_partition(work, plan, p)) for p in plan.partitions) == len(df)
