"""The vector index of a run's embedding column: built once, cached under ``OUT/similar/`` with its
provenance, rebuilt when the run's dataset changes.

Why faiss (faiss-cpu): the maintained library for k-nearest-neighbour search at survey scale (the
vector search under Zoobot's and ssl-legacysurvey's similarity tools), exact and compressed indices
behind one interface, multithreaded BLAS search, indices that write to one file and memory-map.

How it scales.  Neighbours in feature space lie anywhere on the sky, so one index per HATS pixel
would make every query visit every pixel's index (thousands of them) and merge: a global index it
is.  Up to ``exact_max_rows`` (default 10^6) the index is exact (``IndexFlatL2``: 10^6 x 32-d x 4 B
= 128 MB, a query is one matrix-vector product).  Beyond, an inverted file with product quantisation
(``IVF{nlist},PQ{m}``): ``nlist`` ~ 4 sqrt(N) coarse cells (a power of two, 65,536 at 10^8 rows)
and ``m`` = d/2 one-byte codes (16 B a row for 32-d).  At 10^8 rows of 32-d: 16 B codes + 8 B
location = 2.4 GB in memory (a flat index would be 12.8 GB + 0.8 GB), trained on a sample of at
most 2 M vectors (256 MB); a query visits ``nprobe`` = 64 of the 65,536 cells (~10^5 codes).  The
few hundred best candidates are re-ranked exactly from the stored vectors, so the distances shown
are exact.  Built in two streaming passes (sample, then add), never holding the column in memory;
assigning 10^8 vectors to 65,536 cells is ~4x10^14 flops (about an hour on 2 cores, minutes on a
cluster node), which is why it is built once (here on first use; at 10^8 rows, at finalize) and
cached.  (An HNSW coarse quantiser, ``IVF65536_HNSW32,PQ16``, would cut that assignment further.)
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass

import numpy as np

from .. import __version__
from ..atomic import atomic_path, atomic_write_json
from ..run_layout import RunLayout
from .vectors import RunVectors, SimilarError, iter_vectors

FORMAT = "mergerscan-similar-index/1"
EXACT_MAX_ROWS = 1_000_000
TRAIN_MAX = 2_000_000


def _faiss():
    try:
        import faiss
    except ImportError:
        raise SimilarError("similarity search needs faiss: pip install 'mergerscan[search]' (faiss-cpu)") from None
    return faiss


@dataclass(frozen=True)
class IndexPlan:
    kind: str  # "flat" (exact) | "ivfpq"
    factory: str  # the faiss index_factory string
    nlist: int = 0
    m: int = 0
    nprobe: int = 0


def plan_index(n: int, dim: int, exact_max_rows: int = EXACT_MAX_ROWS) -> IndexPlan:
    """The index for ``n`` vectors of ``dim``: exact up to ``exact_max_rows``, else IVF-PQ."""
    if n <= exact_max_rows:
        return IndexPlan("flat", "IDMap2,Flat")
    nlist = int(2 ** round(math.log2(max(16.0, 4 * math.sqrt(n)))))
    nlist = max(16, min(nlist, 65_536, n // 39))  # faiss wants >= 39 training points a cell
    m = max(d for d in range(1, max(1, min(64, dim // 2)) + 1) if dim % d == 0)
    return IndexPlan("ivfpq", f"IVF{nlist},PQ{m}", nlist, m, min(nlist, 64))


@dataclass
class VectorIndex:
    index: object  # a faiss index whose ids are row locations (vectors.py)
    provenance: dict

    def search(self, q: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """(squared L2 distances, locations) of the ``k`` nearest rows to each query vector."""
        faiss = _faiss()
        if self.provenance["kind"] == "ivfpq":
            faiss.extract_index_ivf(self.index).nprobe = int(self.provenance["nprobe"])
        k = min(k, int(self.index.ntotal))
        d, loc = self.index.search(np.ascontiguousarray(q, np.float32), k)
        return d, loc


def build_index(run: RunVectors, exact_max_rows: int = EXACT_MAX_ROWS, threads: int = 2, seed: int = 0) -> VectorIndex:
    """Stream the run's vectors into a new index (two passes for IVF-PQ: a sample to train it, then all)."""
    faiss = _faiss()
    faiss.omp_set_num_threads(threads)
    t0 = time.time()
    upper = run.rows()
    plan = plan_index(upper, run.dim, exact_max_rows)
    index = faiss.index_factory(run.dim, plan.factory)
    if plan.kind == "ivfpq":
        rng = np.random.default_rng(seed)
        frac = min(1.0, TRAIN_MAX / max(1, upper))
        sample = np.concatenate([v for _, v in iter_vectors(run, keep=lambda n: rng.random(n) < frac)])
        index.train(sample)
    for loc, vec in iter_vectors(run):
        index.add_with_ids(vec, loc)
    if index.ntotal == 0:
        raise SimilarError(f"{run.out}: no row has an embedding (nothing was scored?)")
    prov = {
        "format": FORMAT,
        "column": run.column,
        "dim": run.dim,
        "rows": int(index.ntotal),
        "metric": "euclidean",
        "kind": plan.kind,
        "factory": plan.factory,
        "nprobe": plan.nprobe,
        "dataset": run.fingerprint(),
        "files": len(run.files),
        "column_metadata": run.metadata,
        "built": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "build_seconds": round(time.time() - t0, 2),
        "faiss": faiss.__version__,
        "mergerscan": __version__,
    }
    return VectorIndex(index, prov)


def save_index(layout: RunLayout, vi: VectorIndex) -> None:
    faiss = _faiss()
    layout.similar_dir.mkdir(parents=True, exist_ok=True)
    with atomic_path(layout.similar_index) as tmp:
        faiss.write_index(vi.index, str(tmp))
    atomic_write_json(layout.similar_provenance, vi.provenance, indent=1)  # last: marks the index complete


def load_index(
    run: RunVectors, rebuild: bool = False, exact_max_rows: int = EXACT_MAX_ROWS
) -> tuple[VectorIndex, bool]:
    """(the run's index, whether it was built now): the cached one when its provenance matches the
    dataset and column, else a new one, saved under ``OUT/similar``."""
    layout = RunLayout(run.out)
    if not rebuild and layout.similar_provenance.is_file() and layout.similar_index.is_file():
        try:
            prov = json.loads(layout.similar_provenance.read_text())
        except ValueError:
            prov = {}
        same = prov.get("format") == FORMAT and prov.get("column") == run.column and prov.get("dim") == run.dim
        if same and prov.get("dataset") == run.fingerprint():
            return VectorIndex(_faiss().read_index(str(layout.similar_index)), prov), False
    vi = build_index(run, exact_max_rows)
    save_index(layout, vi)
    return vi, True
