"""Issue 38's neighbour precision: on the test split, are the 10 nearest neighbours (by embedding)
of each merger mergers?  Target: mean precision >= 0.85.

Embeddings here are computed without the pipeline (the engine's own ``embedding`` output is for the
lead to re-run this on): the default engine's network rebuilt from its file
(:func:`mergerscan.engines.torch.rebuild_model`), its pooled penultimate features (the global
average pool before the head, 1280-d for EfficientNet-Lite0), raw and reduced by a PCA fitted on a
sample of the training split; also the head's hidden layer (256-d, after ReLU).  Neighbours are
searched among the test split only (exact Euclidean kNN with faiss ``IndexFlatL2``, the index
``mergerscan similar`` builds below 10^6 rows), the query itself left out.  The 95 % interval is a
bootstrap over the query mergers.

    python benchmarks/bench_neighbours.py            # writes results/neighbours-default-engine.{json,png}
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

from _common import REPO, RESULTS, need, shared_data
from mergerscan.atomic import atomic_path, atomic_write_json
from mergerscan.cutouts.preprocess import prepare_batch
from mergerscan.engines import default_engine_path
from mergerscan.training.data import build_labelled_set


def features(stamps, threads: int = 2, batch: int = 32) -> dict[str, np.ndarray]:
    """{"pooled": (N, 1280), "hidden": (N, 256), "logit": (N,)} from the default engine's network."""
    import torch

    from mergerscan.engines.torch import rebuild_model

    torch.set_num_threads(threads)
    net, info = rebuild_model(default_engine_path())
    out: dict[str, list] = {"pooled": [], "hidden": [], "logit": []}
    with torch.no_grad():
        for i in range(0, len(stamps), batch):
            x = torch.from_numpy(prepare_batch(np.asarray(stamps[i : i + batch]), info.spec))
            pooled = net.pool(net.base(x)).flatten(1)
            hidden = net.top[2](net.top[1](pooled))  # Linear -> ReLU (dropout is off in eval)
            out["pooled"].append(pooled.numpy())
            out["hidden"].append(hidden.numpy())
            out["logit"].append(net.top[4](hidden)[:, 0].numpy())
    return {k: np.concatenate(v) for k, v in out.items()}


def pca(train: np.ndarray, k: int):
    """(mean, components (k, D), explained variance fraction of the k) fitted on ``train``."""
    mu = train.mean(0)
    _, s, vt = np.linalg.svd(train - mu, full_matrices=False)
    var = s**2
    return mu, vt[:k], float(var[:k].sum() / var.sum())


def neighbour_precision(X: np.ndarray, y: np.ndarray, k: int = 10, kmax: int = 20) -> np.ndarray:
    """(queries, kmax) 0/1: is the j-th nearest neighbour (self excluded) of each merger a merger."""
    import faiss

    X = np.ascontiguousarray(X, np.float32)
    index = faiss.IndexFlatL2(X.shape[1])
    index.add(X)
    q = np.flatnonzero(y == 1)
    _, nn = index.search(X[q], kmax + 1)
    hit = []
    for qi, row in zip(q, nn):
        row = row[row != qi][:kmax]
        hit.append(y[row] == 1)
    return np.array(hit)


def summarize(hits: np.ndarray, k: int = 10, n_boot: int = 2000, seed: int = 0) -> dict:
    per = hits[:, :k].mean(1)
    rng = np.random.default_rng(seed)
    boots = [per[rng.integers(0, len(per), len(per))].mean() for _ in range(n_boot)]
    return {
        f"mean_precision_at_{k}": round(float(per.mean()), 4),
        "ci95": np.round(np.percentile(boots, [2.5, 97.5]), 4).tolist(),
        "share_of_queries_at_least_0.8": round(float((per >= 0.8).mean()), 4),
        "precision_at_k": np.round(hits.mean(0), 4).tolist(),  # j-th neighbour, j = 1..kmax
    }


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--work", default=str(REPO / "runs" / "neighbours"))
    ap.add_argument("--pca-train", type=int, default=1500, help="training galaxies the PCA is fitted on")
    ap.add_argument("--dims", type=int, nargs="+", default=[32, 16, 64])
    ap.add_argument("--threads", type=int, default=2)
    a = ap.parse_args(argv)
    work = Path(a.work)
    work.mkdir(parents=True, exist_ok=True)
    data = build_labelled_set(need(shared_data("sdss-gz-mergers")) / "catalog.csv", seed=0)
    y_all, split = data.table["label"].to_numpy(), data.table["split"].to_numpy()
    test = np.flatnonzero(split == "test")
    train = np.random.default_rng(0).choice(np.flatnonzero(split == "train"), a.pca_train, replace=False)
    cache = work / "features.npz"
    t0 = time.time()
    if cache.is_file():
        F = dict(np.load(cache))
    else:
        idx = np.concatenate([test, train])
        F = features(data.stamps[idx], a.threads) | {"index": idx}
        with atomic_path(cache) as tmp, open(tmp, "wb") as fh:
            np.savez(fh, **F)
    seconds = time.time() - t0
    nt = len(test)
    y = y_all[test]
    res: dict = {}
    for name in ("pooled", "hidden"):
        X_test, X_train = F[name][:nt], F[name][nt:]
        res[f"{name}_raw"] = {"dim": int(X_test.shape[1])} | summarize(neighbour_precision(X_test, y))
        for k in a.dims:
            mu, comp, explained = pca(X_train, k)
            Z = (X_test - mu) @ comp.T
            res[f"{name}_pca{k}"] = {"dim": k, "pca_explained_variance": round(explained, 4)} | summarize(
                neighbour_precision(Z, y)
            )
    doc = {
        "question": "10 nearest neighbours (Euclidean, self excluded) of each test-split merger, among the test split",
        "engine": str(default_engine_path().name),
        "test_objects": nt,
        "test_mergers": int(y.sum()),
        "chance": round(float(y.mean()), 4),
        "pca_fitted_on": f"{a.pca_train} training-split galaxies (seed 0), centred, not whitened",
        "feature_seconds": round(seconds, 1),
        "cpu": "2-core AMD EPYC (AVX-512), shared with about 7 other jobs",
        "results": res,
    }
    atomic_write_json(RESULTS / "neighbours-default-engine.json", doc, indent=1)
    _plot(res, RESULTS / "neighbours-default-engine.png", float(y.mean()))
    for key, r in res.items():
        print(f"{key:16s} dim {r['dim']:5d}  P@10 {r['mean_precision_at_10']:.4f}  95% {r['ci95']}")
    return 0


def _plot(res: dict, path: Path, chance: float) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    for key, r in res.items():
        ax.plot(np.arange(1, len(r["precision_at_k"]) + 1), r["precision_at_k"], marker=".", label=key)
    ax.axhline(0.85, color="k", ls=":", lw=1, label="target 0.85 (mean of the first 10)")
    ax.axhline(chance, color="grey", ls="--", lw=1, label=f"chance {chance:.2f}")
    ax.set(xlabel="j-th nearest neighbour", ylabel="fraction of mergers' j-th neighbours that are mergers")
    ax.set_title("Default engine features: neighbours of test mergers", fontsize=10)
    ax.legend(fontsize=7)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)


if __name__ == "__main__":
    sys.exit(main())
