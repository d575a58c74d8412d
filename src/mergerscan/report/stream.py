"""One streaming pass over a run's Parquet dataset: exact counts, running selections, a reservoir.

Memory is bounded by ``batch_rows`` (rows read at a time), the number of occupied sky pixels at
``SKY_ORDER`` and ``sample_rows``; never by the catalog size.  Everything is exact except the
reservoir sample (uniform, without replacement: the ``sample_rows`` rows with the smallest
random keys) and the bin edges of the per-column plots (quantiles of a pre-sample of row groups;
the counts in those bins are exact).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds
import pyarrow.parquet as pq

from ..catalogs.schema import OUTPUT_NAMES, SCORED
from ..catalogs.write import embedding_matrix, is_vector
from ..run_layout import RunLayout
from .embedding_map import EmbeddingSample

SKY_ORDER = 10  # accumulation order of the sky counts (3.4' pixels) ...
SKY_MAX_PIXELS = 1_000_000  # ... lowered while more pixels than this are occupied (wide surveys)
SCORE_BINS = np.linspace(0, 1, 101)
CORE = set(OUTPUT_NAMES)  # the output columns; the rest were carried through
HIVE = {"Norder", "Dir", "Npix"}
MAX_COLUMNS = 12  # per-column plots at most
MAX_CATEGORIES = 10
NUM_BINS = 15


def partition_files(out_dir: Path) -> list[Path]:
    """The run's Parquet files (hidden ones, e.g. being written, left out)."""
    return sorted(p for p in RunLayout(out_dir).catalog_dir.rglob("*.parquet") if not p.name.startswith("."))


def open_dataset(out_dir: Path) -> ds.Dataset:
    files = partition_files(out_dir)
    if not files:
        raise FileNotFoundError(f"{RunLayout(out_dir).catalog_dir}: no partition files")
    return ds.dataset([str(f) for f in files], format="parquet", partitioning=None)


@dataclass
class ColumnBins:
    """How one carried-through column is binned: numeric edges or categorical labels."""

    name: str
    edges: np.ndarray | None = None  # numeric: len(bins)+1; values outside go to under/over
    categories: list | None = None  # categorical: labels (+ "other" for the rest)
    discrete: bool = False  # integer column with few values: one bin per value

    @property
    def nbins(self) -> int:
        return len(self.edges) - 1 if self.edges is not None else len(self.categories or []) + 1

    def index(self, col: pa.Array) -> np.ndarray:
        """Bin index per value; -1 missing, -2 underflow, -3 overflow."""
        if self.edges is not None:
            v = np.asarray(col.to_numpy(zero_copy_only=False), np.float64)
            i = np.searchsorted(self.edges, v, side="right") - 1
            i[v == self.edges[-1]] = len(self.edges) - 2
            i[v < self.edges[0]] = -2
            i[v > self.edges[-1]] = -3
            i[~np.isfinite(v)] = -1
            return i
        s = pd.Series(col.to_numpy(zero_copy_only=False), dtype=object)
        codes = pd.Categorical(s.astype(str).str.strip(), categories=self.categories).codes.astype(np.int64)
        codes[codes < 0] = len(self.categories or [])
        codes[s.isna().to_numpy()] = -1
        return codes


def _row_group_sample(files: list[Path], columns: list[str], rows: int, seed: int = 0) -> pd.DataFrame:
    """Whole row groups picked at random across all files until ``rows`` rows (footers only otherwise)."""
    groups = []
    for f in files:
        md = pq.read_metadata(f)
        groups += [(f, g, md.row_group(g).num_rows) for g in range(md.num_row_groups)]
    rng = np.random.default_rng(seed)
    out, have = [], 0
    for k in rng.permutation(len(groups)):
        f, g, n = groups[k]
        if n == 0:
            continue
        out.append(pq.ParquetFile(f).read_row_group(g, columns=columns).to_pandas())
        have += n
        if have >= rows:
            break
    return pd.concat(out, ignore_index=True) if out else pd.DataFrame(columns=columns)


def choose_bins(
    files: list[Path], schema: pa.Schema, presample_rows: int = 50_000, path_column: str | None = None
) -> tuple[list[ColumnBins], int]:
    """Bins for the carried-through columns but the stamp paths, from a pre-sample; (bins, pre-sample size)."""
    cols = [f for f in schema if f.name not in CORE | HIVE and f.name != path_column]
    cols = [
        f
        for f in cols
        if pa.types.is_integer(f.type)
        or pa.types.is_floating(f.type)
        or pa.types.is_boolean(f.type)
        or pa.types.is_string(f.type)
        or pa.types.is_large_string(f.type)
    ]
    if not cols:
        return [], 0
    sample = _row_group_sample(files, [f.name for f in cols], presample_rows)
    bins = []
    for f in cols:
        s = sample[f.name].dropna()
        if pa.types.is_boolean(f.type) or pa.types.is_string(f.type) or pa.types.is_large_string(f.type):
            s = s.astype(str).str.strip()
            top = s.value_counts()
            if len(top) == 0 or len(top) > 4 * MAX_CATEGORIES:  # free text, ids: not a category
                continue
            bins.append(ColumnBins(f.name, categories=sorted(top.index[:MAX_CATEGORIES].tolist())))
            continue
        v = s.to_numpy(np.float64)
        v = v[np.isfinite(v)]
        if len(v) < 10:
            continue
        u = np.unique(v)
        if pa.types.is_integer(f.type) and len(u) <= 20:
            bins.append(ColumnBins(f.name, edges=np.r_[u - 0.5, u[-1] + 0.5], discrete=True))
            continue
        nb = int(np.clip(len(v) // 25, 4, NUM_BINS))  # ~25+ objects per bin in small catalogs
        edges = np.unique(np.quantile(v, np.linspace(0.01, 0.99, nb + 1)))
        if len(edges) >= 3:
            bins.append(ColumnBins(f.name, edges=edges))
    return bins[:MAX_COLUMNS], len(sample)


def _select(cur: pd.DataFrame | None, new: pd.DataFrame, key: str, n: int) -> pd.DataFrame:
    """Keep the ``n`` rows with the smallest ``key`` (ties broken by id for determinism)."""
    both = new if cur is None else pd.concat([cur, new], ignore_index=True)
    if len(both) > 4 * n:  # cheap cut before the exact sort
        both = both.iloc[np.argpartition(both[key].to_numpy(), n)[: n + 1]]
    return both.sort_values([key, "id"], kind="stable").head(n).reset_index(drop=True)


@dataclass
class RunStats:
    """Accumulates a run's statistics batch by batch (see the module docstring)."""

    threshold: float
    bins: list[ColumnBins]
    id_column: str
    top_n: int = 24
    borderline_n: int = 12
    sample_rows: int = 200_000
    extra: list[str] = field(default_factory=list)  # carried to galleries (e.g. path)
    seed: int = 0
    domain: bool = True  # the dataset has in_domain / domain_score (runs before --domain have not)
    embedding: int = 0  # the dimension of the dataset's embedding column (--embeddings); 0: none

    def __post_init__(self):
        self.rows = 0
        self.status: dict[str, int] = {}
        self.score_hist = np.zeros(len(SCORE_BINS) - 1, np.int64)
        self.score_hist_merger = np.zeros(len(SCORE_BINS) - 1, np.int64)
        self._sky = []  # [(pixels, counts (k, 3))] not yet merged
        self.sky_pix = np.zeros(0, np.int64)
        self.sky_counts = np.zeros((0, 3), np.int64)  # rows, scored, flagged mergers
        self.sky_order = SKY_ORDER
        self.col_n = {b.name: np.zeros(b.nbins, np.int64) for b in self.bins}
        self.col_m = {b.name: np.zeros(b.nbins, np.int64) for b in self.bins}
        self.col_p = {b.name: np.zeros(b.nbins, np.float64) for b in self.bins}
        self.col_out = {b.name: np.zeros(3, np.int64) for b in self.bins}  # missing, under, over
        self.top = self.border = self.sample = self.outside = None
        self.scored = 0
        self.beyond = 0  # scored rows the image check put outside the domain (never is_merger)
        self.embedded = EmbeddingSample() if self.embedding else None  # the embedding map's sample
        self._rng = np.random.default_rng(self.seed)

    def columns(self) -> list[str]:
        return list(
            dict.fromkeys(
                [self.id_column, "ra", "dec", "p_merger", "is_merger", "status", "_healpix_29"]
                + (["in_domain", "domain_score"] if self.domain else [])
                + (["embedding"] if self.embedding else [])
                + [b.name for b in self.bins]
                + self.extra
            )
        )

    def add(self, t: pa.Table | pa.RecordBatch):
        n = t.num_rows
        if n == 0:
            return
        self.rows += n
        vc = pc.value_counts(t.column("status"))
        for v, c in zip(vc.field("values").to_pylist(), vc.field("counts").to_pylist()):
            self.status[str(v)] = self.status.get(str(v), 0) + c
        status = t.column("status").to_numpy(zero_copy_only=False)
        p = np.asarray(t.column("p_merger").to_numpy(zero_copy_only=False), np.float64)
        scored = np.isin(status, SCORED) & np.isfinite(p)
        merger = np.asarray(t.column("is_merger").to_numpy(zero_copy_only=False), bool) & scored
        inside, dscore = np.ones(n, bool), np.full(n, np.nan)
        if self.domain:
            inside = np.asarray(t.column("in_domain").to_numpy(zero_copy_only=False), bool)
            dscore = np.asarray(t.column("domain_score").to_numpy(zero_copy_only=False), np.float64)
        self.scored += int(scored.sum())
        self.beyond += int((scored & ~inside).sum())
        self.score_hist += np.histogram(p[scored], SCORE_BINS)[0]
        self.score_hist_merger += np.histogram(p[merger], SCORE_BINS)[0]
        self._add_sky(t, scored, merger)
        self._add_columns(t, scored, merger, p)
        if scored.any():
            self._add_selections(t, np.flatnonzero(scored), status, p, dscore, inside)

    def _add_sky(self, t: pa.Table | pa.RecordBatch, scored: np.ndarray, merger: np.ndarray) -> None:
        """Counts per pixel at SKY_ORDER (sparse): rows, scored, flagged mergers."""
        hp = t.column("_healpix_29").to_numpy(zero_copy_only=False).astype(np.int64)
        good = hp >= 0
        pix, inv = np.unique(hp[good] >> (2 * (29 - self.sky_order)), return_inverse=True)
        cnt = np.stack(
            [
                np.bincount(inv, minlength=len(pix)),
                np.bincount(inv, scored[good], minlength=len(pix)),
                np.bincount(inv, merger[good], minlength=len(pix)),
            ],
            1,
        ).astype(np.int64)
        self._sky.append((pix, cnt))
        if sum(len(x[0]) for x in self._sky) > SKY_MAX_PIXELS // 2:
            self._merge_sky()

    def _add_columns(self, t: pa.Table | pa.RecordBatch, scored: np.ndarray, merger: np.ndarray, p: np.ndarray) -> None:
        """Per-column merger fraction (scored rows only)."""
        for b in self.bins:
            i = b.index(t.column(b.name))[scored]
            ok = i >= 0
            self.col_n[b.name] += np.bincount(i[ok], minlength=b.nbins)
            self.col_m[b.name] += np.bincount(i[ok], merger[scored][ok], minlength=b.nbins).astype(np.int64)
            self.col_p[b.name] += np.bincount(i[ok], p[scored][ok], minlength=b.nbins)
            self.col_out[b.name] += [np.sum(i == -1), np.sum(i == -2), np.sum(i == -3)]

    def _add_selections(self, t, idx: np.ndarray, status, p, dscore, inside) -> None:
        """The running selections (top, borderline, outside the domain), the embedding map's
        sample and the reservoir, over the scored rows ``idx``."""
        ids = t.column(self.id_column).to_numpy(zero_copy_only=False)[idx]
        df = pd.DataFrame(
            {
                "id": ids.astype(str) if ids.dtype == object else ids,
                "ra": t.column("ra").to_numpy(zero_copy_only=False)[idx],
                "dec": t.column("dec").to_numpy(zero_copy_only=False)[idx],
                "p_merger": p[idx],
                "status": status[idx],
                "domain_score": dscore[idx],
                "_inside": inside[idx],
            }
        )
        for c in [b.name for b in self.bins] + self.extra:
            df[c] = t.column(c).to_numpy(zero_copy_only=False)[idx]
        if self.embedded is not None:
            vectors = embedding_matrix(t.column("embedding").take(pa.array(idx)), self.embedding)
            self.embedded.add(df[["id", "ra", "dec", "p_merger", "status", "domain_score", *self.extra]], vectors)
        df["_neg_p"] = -df["p_merger"]
        df["_dist"] = (df["p_merger"] - self.threshold).abs()
        df["_neg_d"] = -df["domain_score"].fillna(np.inf)  # beyond the threshold, no score: not ranked last
        ins, out = df[df["_inside"]], df[~df["_inside"]]  # top mergers: in the domain only
        self.top = _select(self.top, ins.nsmallest(self.top_n, "_neg_p"), "_neg_p", self.top_n)
        self.outside = _select(self.outside, out.nsmallest(self.borderline_n, "_neg_d"), "_neg_d", self.borderline_n)
        self.border = _select(self.border, df.nsmallest(self.borderline_n, "_dist"), "_dist", self.borderline_n)
        if self.sample_rows > 0:
            keep = ["p_merger"] + [b.name for b in self.bins if b.edges is not None]
            s = df[keep].assign(_key=self._rng.random(len(df)))
            s = s if self.sample is None else pd.concat([self.sample, s], ignore_index=True)
            if len(s) > self.sample_rows:
                s = s.iloc[np.argpartition(s["_key"].to_numpy(), self.sample_rows)[: self.sample_rows]]
            self.sample = s.reset_index(drop=True)

    def _merge_sky(self, shift: int = 0):
        pix = np.concatenate([self.sky_pix] + [x[0] for x in self._sky]) >> (2 * shift)
        cnt = np.concatenate([self.sky_counts] + [x[1] for x in self._sky])
        u, inv = np.unique(pix, return_inverse=True)
        self.sky_pix = u
        self.sky_counts = np.stack([np.bincount(inv, cnt[:, k], minlength=len(u)) for k in range(3)], 1).astype(
            np.int64
        )
        self._sky = []
        del pix, cnt, inv, u
        if len(self.sky_pix) > SKY_MAX_PIXELS and self.sky_order > 6:
            self.sky_order -= 1
            self._merge_sky(shift=1)

    def finish(self) -> RunStats:
        self._merge_sky()
        helpers = ["_neg_p", "_dist", "_neg_d", "_inside"]
        if self.top is not None:
            self.top = self.top.sort_values(["_neg_p", "id"]).drop(columns=helpers)
            self.border = self.border.sort_values(["p_merger", "id"], ascending=[False, True]).drop(columns=helpers)
            self.outside = self.outside.sort_values(["_neg_d", "id"]).drop(columns=helpers)
        return self


def scan(
    out_dir: Path,
    threshold: float,
    id_column: str,
    top_n: int,
    borderline_n: int,
    sample_rows: int,
    batch_rows: int,
    presample_rows: int = 50_000,
    path_column: str | None = None,
) -> tuple[RunStats, int]:
    """Stream the dataset once; returns (stats, pre-sample rows used for the bin edges).
    ``path_column``: the column of stamp paths, kept with the top/borderline rows, not binned."""
    dset = open_dataset(out_dir)
    bins, npre = choose_bins(partition_files(out_dir), dset.schema, presample_rows, path_column)
    extra = [path_column] if path_column is not None and path_column in dset.schema.names else []
    has_domain = "in_domain" in dset.schema.names and "domain_score" in dset.schema.names
    emb = dset.schema.field("embedding").type if "embedding" in dset.schema.names else None
    dim = emb.list_size if emb is not None and is_vector(emb) else 0
    st = RunStats(threshold, bins, id_column, top_n, borderline_n, sample_rows, extra, domain=has_domain, embedding=dim)
    for batch in dset.to_batches(columns=st.columns(), batch_size=batch_rows, batch_readahead=1, fragment_readahead=1):
        st.add(batch)
    return st.finish(), npre
