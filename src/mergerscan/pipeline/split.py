"""The split: input chunks -> sorted runs -> one Arrow IPC file per *bucket* of sky partitions.

The catalog is read once.  File count grows with chunks + buckets, never chunks x partitions:

1. :func:`scan_chunk` (one task per input chunk; the only read of the catalog): the needed
   columns, the HEALPix order-29 index computed once per row, the rows sorted on the sky
   (by pixel at ``hist_order``, then input row) and written as one uncompressed Arrow IPC *run* file; returns the
   chunk's histogram for planning (an existing run is re-summarised from its index column).
2. the plan (driver): partitions (:func:`plan.make_partitions`), then :func:`make_buckets` groups
   consecutive partitions into buckets of about ``bucket_rows`` rows.  A partition is a nested
   HEALPix pixel, i.e. a contiguous range of healpix29, so a bucket is one too.
3. :func:`gather_bucket` (one task per bucket): in every sorted run the bucket's rows are one
   contiguous slice, found by binary search on the memory-mapped index column, so a bucket reads
   only its own bytes; its rows, assigned to partitions, are written as one Arrow IPC file with
   one record batch per partition (and the pid -> batch index in the file's schema metadata).
   IPC rather than Parquet: writing a batch costs microseconds (a Parquet row group ~1 ms, 3 s per
   10 M rows at 5,000-row partitions), reading one is a memory-mapped look-up, and ra/dec doubles
   hardly compress anyway.
4. the runs are removed (:func:`remove_runs`) once every bucket exists.

A scoring task reads its partition as one record batch (:func:`read_partition`).  Every file is
written atomically (temporary name, rename), so a killed split resumes: finished runs and
buckets are kept and the same plan comes out.
"""

from __future__ import annotations

import bisect
import contextlib
import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from ..atomic import atomic_path
from ..catalogs.read import arrow_to_pandas
from ..catalogs.validate import coord_status
from ..run_layout import WorkLayout
from .domain import CatalogRules
from .faults import fault_point
from .plan import ORDER29, Partition, Plan, assign_partitions, healpix29, read_positions
from .select import mark_selected

SPLIT_FORMAT = 2  # 1 was one Parquet file per (partition, chunk) under split/part-*/
INDEX_KEY = b"mergerscan.partitions"


def _sky_order(hpx: np.ndarray, hist_order: int) -> np.ndarray:
    """Row order by HEALPix pixel at ``hist_order`` (invalid rows first), input order within a
    pixel.  Every partition and bucket boundary is a pixel boundary at that order or coarser, so
    this is as good as sorting on healpix29 for the split, and sorting unique int64 keys
    (pixel << 32 | row) is twice as fast as a stable argsort."""
    key = (hpx >> (2 * (ORDER29 - hist_order))) << 32 | np.arange(len(hpx), dtype=np.int64)
    key.sort()
    return key & 0xFFFFFFFF


def _search(hpx: np.ndarray, bounds) -> np.ndarray:
    """Positions of pixel-aligned healpix29 ``bounds`` in a run in :func:`_sky_order`: "hpx < b" is
    monotone along such a run (true, then false), which is all a binary search needs."""
    return np.searchsorted(hpx, bounds)


def _summary(hpx: np.ndarray, hist_order: int, chunk_id: int) -> dict:
    """Histogram at ``hist_order`` of a healpix29 column in :func:`_sky_order` (-1 = invalid)."""
    shift = 2 * (ORDER29 - hist_order)
    n_invalid = int(_search(hpx, 0))
    pix = hpx[n_invalid:] >> shift
    starts = np.flatnonzero(np.r_[True, pix[1:] != pix[:-1]]) if len(pix) else np.zeros(0, np.int64)
    counts = np.diff(np.r_[starts, len(pix)])
    # bounds of the run's valid healpix29 (pixel-aligned: rows are not sorted inside a pixel)
    lo, hi = (int(pix[0]) << shift, ((int(pix[-1]) + 1) << shift) - 1) if len(pix) else (-1, -1)
    return {
        "pixels": pix[starts],
        "counts": counts.astype(np.int64),
        "n_invalid": n_invalid,
        "range": [lo, hi, n_invalid],
        "rows": len(hpx),
        "chunk": chunk_id,
    }


def _read_ipc(path: Path):
    """An IPC file as a zero-copy table over a memory map: slicing it reads only the touched pages."""
    import pyarrow as pa

    return pa.ipc.open_file(pa.memory_map(str(path))).read_all()


def _write_ipc(path: Path, table, batches=None, sync: bool = True):
    """Atomically: ``table`` as one record batch, or as the given ``(offset, length)`` batches."""
    import pyarrow as pa

    with (
        atomic_path(path, fsync=sync) as tmp,
        pa.OSFile(str(tmp), "wb") as sink,
        pa.ipc.new_file(sink, table.schema) as writer,
    ):
        for off, n in batches if batches is not None else [(0, len(table))]:
            writer.write_table(table.slice(off, n), max_chunksize=max(1, n))


@dataclass(frozen=True)
class ScanSpec:
    """What every scan task reads: the catalog to read (the input, or its staged CSV) and the plan
    fields evaluated once per row while scanning: ``--select`` (unselected rows get
    ``_selected=False``) and the catalog rules of ``--domain`` (``_domain``)."""

    catalog: str
    source_catalog: str  # the user's file, named in error messages
    columns: dict[str, str]
    keep: list[str]
    hist_order: int
    select: str | None = None
    select_columns: dict[str, str] = field(default_factory=dict)
    domain: CatalogRules = field(default_factory=CatalogRules)


def scan_chunk(spec: ScanSpec, chunk_id: int, rows: tuple[int, int], work: str) -> dict:
    """Task: input rows [start, stop) = ``rows`` -> sorted run file; returns its histogram."""
    import pyarrow as pa

    path = WorkLayout(work).run_file(chunk_id)
    if path.is_file():  # finished before a kill: keep it
        try:
            hpx = _read_ipc(path).column("_healpix29").to_numpy()
            if len(hpx) == rows[1] - rows[0]:
                return _summary(hpx, spec.hist_order, chunk_id)
        except (OSError, ValueError):  # torn by a crash (runs are not fsync'ed)
            pass
    fault_point("scan", chunk_id)
    start, stop = rows
    c = spec.columns
    df = read_positions(
        spec.catalog,
        start,
        stop,
        c,
        [*spec.keep, *spec.select_columns.values(), *spec.domain.columns],
        label=spec.source_catalog,
    )
    df = mark_selected(spec, df, start)  # the spec carries the plan fields it reads
    ra = df[c["ra"]].to_numpy(np.float64)
    dec = df[c["dec"]].to_numpy(np.float64)
    hpx = healpix29(ra, dec, coord_status(ra, dec))
    order = _sky_order(hpx, spec.hist_order)
    table = pa.Table.from_pandas(df, preserve_index=False)
    table = table.append_column("_input_row", pa.array(np.arange(start, start + len(df), dtype=np.int64)))
    table = table.append_column("_healpix29", pa.array(hpx)).take(order)
    # not fsync'ed: a run is temporary, and one torn by a crash is re-made above
    _write_ipc(path, table, sync=False)
    return _summary(hpx[order], spec.hist_order, chunk_id)


class Histogram:
    """Sums the chunks' sparse histograms on the driver in memory bounded by the number of
    distinct pixels (<= 12 * 4**hist_order), whatever the number of chunks."""

    def __init__(self) -> None:
        self.pixels = np.zeros(0, np.int64)
        self.counts = np.zeros(0, np.int64)
        self.n_invalid = 0
        self._pending: list = []
        self._pending_len = 0

    def add(self, summary: dict):
        self._pending.append((summary["pixels"], summary["counts"]))
        self._pending_len += len(summary["pixels"])
        self.n_invalid += summary["n_invalid"]
        if self._pending_len > max(1_000_000, len(self.pixels)):
            self._compact()

    def _compact(self):
        if not self._pending:
            return
        pix = np.concatenate([self.pixels, *(p for p, _ in self._pending)])
        cnt = np.concatenate([self.counts, *(c for _, c in self._pending)])
        self.pixels, inv = np.unique(pix, return_inverse=True)
        self.counts = np.bincount(inv, weights=cnt, minlength=len(self.pixels)).astype(np.int64)
        self._pending, self._pending_len = [], 0

    def result(self):
        self._compact()
        return self.pixels, self.counts, self.n_invalid


def _unit_range(p: Partition) -> tuple[int, int]:
    """[lo, hi) of healpix29 covered by a partition (-1 for rows with bad coordinates)."""
    if p.order < 0:
        return -1, 0
    shift = 2 * (ORDER29 - p.order)
    return p.pixel << shift, (p.pixel + 1) << shift


def make_buckets(partitions: list[Partition], bucket_rows: int) -> list[list[int]]:
    """Consecutive partitions in groups of about ``bucket_rows`` rows: ``[[lo, hi, pid0, pid1]]``
    (healpix29 range [lo, hi), partitions pid0 <= pid < pid1).  Sub-partitions of one pixel share
    its range, so a dense pixel may be cut into several buckets over the same range (each keeps its
    own sub-partitions); rows with bad coordinates get buckets of their own."""
    buckets: list[list[int]] = []
    units: list[list[Partition]] = []
    for p in partitions:  # pixel units: the sub-partitions of one pixel
        if units and (units[-1][0].order, units[-1][0].pixel) == (p.order, p.pixel):
            units[-1].append(p)
        else:
            units.append([p])
    cur, cur_rows = None, 0
    for unit in units:
        lo, hi = _unit_range(unit[0])
        rows = sum(p.rows for p in unit)
        if len(unit) > 1 and rows > bucket_rows:  # a dense pixel: buckets of its own
            if cur:
                buckets.append(cur)
            cur, cur_rows = None, 0
            per = max(1, bucket_rows // max(1, max(p.rows for p in unit)))
            for k in range(0, len(unit), per):
                buckets.append([lo, hi, unit[k].pid, unit[min(k + per, len(unit)) - 1].pid + 1])
            continue
        if cur and (cur_rows + rows > bucket_rows or (lo < 0) != (cur[0] < 0)):
            buckets.append(cur)
            cur, cur_rows = None, 0
        if cur is None:
            cur = [lo, hi, unit[0].pid, unit[-1].pid + 1]
        else:
            cur[1], cur[3] = hi, unit[-1].pid + 1
        cur_rows += rows
    if cur:
        buckets.append(cur)
    return buckets


def plan_split(partitions: list[Partition], run_ranges: list, bucket_rows: int) -> dict:
    """The split part of the plan: buckets and each run's healpix29 range (to skip runs that hold
    no row of a bucket; a catalog already sorted on the sky then reads each run about once)."""
    return {
        "format": SPLIT_FORMAT,
        "bucket_rows": int(bucket_rows),
        "buckets": make_buckets(partitions, bucket_rows),
        "runs": [list(r) for r in run_ranges],
    }


def _unit_bounds(partitions: list[Partition], pid0: int, pid1: int) -> tuple[int, int]:
    """[pid0, pid1) widened to whole pixel units (all sub-partitions of the pixels involved)."""
    key = lambda p: (p.order, p.pixel)
    while pid0 > 0 and key(partitions[pid0 - 1]) == key(partitions[pid0]):
        pid0 -= 1
    while pid1 < len(partitions) and key(partitions[pid1]) == key(partitions[pid1 - 1]):
        pid1 += 1
    return pid0, pid1


def gather_bucket(plan: Plan, bucket_id: int, work: str) -> int:
    """Task: bucket ``bucket_id``'s rows from every run -> one IPC file, one record batch per
    partition (rows in input order), atomically.  Returns the bucket's row count."""
    import pyarrow as pa

    layout = WorkLayout(work)
    out = layout.bucket_file(bucket_id)
    if out.is_file():
        return sum(n for _, n in json.loads(_read_ipc(out).schema.metadata[INDEX_KEY]))
    fault_point("gather", bucket_id)
    lo, hi, pid0, pid1 = plan.split["buckets"][bucket_id]
    pieces = []
    for chunk_id, (rlo, rhi, n_invalid) in enumerate(plan.split["runs"]):
        if (lo < 0 and not n_invalid) or (lo >= 0 and (rlo < 0 or rhi < lo or rlo >= hi)):
            continue  # this run holds none of the bucket's rows
        run = _read_ipc(layout.run_file(chunk_id))
        hpx = run.column("_healpix29").to_numpy()
        a, b = _search(hpx, [lo, hi])
        if b > a:
            pieces.append(run.slice(a, b - a))
    if pieces:
        table = pa.concat_tables(pieces, promote_options="permissive").combine_chunks()
    else:  # a partition that lost all its rows is not possible unless the runs changed
        raise RuntimeError(
            f"split bucket {bucket_id}: no rows in the runs; the split is damaged, re-run with --overwrite"
        )
    hpx = table.column("_healpix29").to_numpy()
    rows = table.column("_input_row").to_numpy()
    u0, u1 = _unit_bounds(plan.partitions, pid0, pid1)
    pid = assign_partitions(hpx, rows, plan.partitions[u0:u1])
    keep = np.flatnonzero((pid >= pid0) & (pid < pid1))
    keep = keep[np.lexsort((rows[keep], pid[keep]))]  # by partition, then input order
    table, pid = table.take(keep), pid[keep]
    starts = np.flatnonzero(np.r_[True, pid[1:] != pid[:-1]]) if len(pid) else np.zeros(0, np.int64)
    index = [[int(pid[s]), int(n)] for s, n in zip(starts, np.diff(np.r_[starts, len(pid)]))]
    table = table.replace_schema_metadata({**(table.schema.metadata or {}), INDEX_KEY: json.dumps(index).encode()})
    _write_ipc(out, table, [(int(s), n) for s, (_, n) in zip(starts, index)])
    return len(table)


def remove_runs(work: str | Path) -> None:
    """The runs once every bucket is written, and temporaries left by killed tasks (mergerscan's
    own files only: chunk-*.arrow, .chunk-*.tmp, .bucket-*.tmp)."""
    layout = WorkLayout(work)
    for f in layout.split_dir.glob(".bucket-*.tmp"):
        f.unlink(missing_ok=True)
    d = layout.runs_dir
    if not d.is_dir():
        return
    for f in d.iterdir():
        if f.name.startswith(("chunk-", ".chunk-")) and f.name.endswith((".arrow", ".tmp")):
            f.unlink(missing_ok=True)
    with contextlib.suppress(OSError):  # something else is in there: not ours to remove
        d.rmdir()


def bucket_of(plan: Plan, pid: int) -> int:
    starts = [b[2] for b in plan.split["buckets"]]
    return bisect.bisect_right(starts, pid) - 1


def read_partition(work: str | Path, plan: Plan, part: Partition, nullable=()) -> pd.DataFrame:
    """Partition ``part``'s rows (input columns + _input_row, _healpix29), in input order."""
    import pyarrow as pa

    f = pa.ipc.open_file(pa.memory_map(str(WorkLayout(work).bucket_file(bucket_of(plan, part.pid)))))
    index = json.loads(f.schema.metadata[INDEX_KEY])
    k = next((i for i, (p, _) in enumerate(index) if p == part.pid), None)
    if k is None:  # a sub-partition that no row fell into
        return pd.DataFrame()
    return arrow_to_pandas(pa.Table.from_batches([f.get_batch(k)], f.schema), nullable)
