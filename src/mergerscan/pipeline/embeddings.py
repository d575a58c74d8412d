"""``--embeddings [N]``: each scored row's representation as the output column ``embedding``.

The engine's representation block (:mod:`mergerscan.engines.representation`) already gives, in
the same call as the logit, the PCA coordinates (k of them) of the pooled penultimate features;
the run keeps the first N.  Without the flag nothing changes: no column, no features asked for.
"""

from __future__ import annotations

import json

from .run_options import ArgumentError, literal

COLUMN = "embedding"


def provenance(n: int, info) -> dict[str, str]:
    """The ``embedding`` column's Parquet field metadata ({str: str}): dimension and the PCA's
    provenance from the engine card.  ArgumentError (one line, before anything is written) where the
    engine has no representation block or fewer than ``n`` components."""
    rep, k = info.card.representation, info.card.n_components
    if rep is None or not k:
        raise ArgumentError(
            f"{{embeddings}}: engine {literal(info.name)} ({literal(info.path)}) has no representation block (card "
            "'representation'); refit one with mergerscan.training.representation or use an engine that has it",
            "embeddings",
        )
    if n > k:
        raise ArgumentError(
            f"{{embeddings}} {n}: engine {literal(info.name)} has {k} components; choose 1..{k}", "embeddings"
        )
    ratio = [float(r) for r in rep.explained_variance_ratio or ()][:n]
    return {
        "dimension": str(n),
        "engine_name": str(info.name),
        "engine_sha256": str(info.sha256),
        "k": str(k),
        "features": str(rep.features or ""),
        "explained_variance": f"{sum(ratio):.6g}" if ratio else "",
        "explained_variance_ratio": json.dumps(ratio),
        "fitted_on": str(rep.fitted_on or ""),
        "description": f"first {n} of the engine's {k} PCA components of its pooled penultimate features "
        "(PCA fitted on the training galaxies, stored in the engine file; averaged over the views)",
    }


def summary_entry(n: int, info) -> dict | None:
    """summary.json's ``embeddings`` (None without --embeddings)."""
    if not n:
        return None
    meta = provenance(n, info)
    var = meta["explained_variance"]
    return {
        "column": COLUMN,
        "dimension": n,
        "k": int(meta["k"]),
        "explained_variance": float(var) if var else None,
        "features": meta["features"],
        "fitted_on": meta["fitted_on"],
    }


def summary_line(entry: dict) -> str:
    """The printed summary's line for a run with embeddings."""
    var = entry.get("explained_variance")
    share = f", {var:.1%} of the training features' variance" if var is not None else ""
    return f"column {entry.get('column', COLUMN)}: first {entry['dimension']} of {entry['k']} PCA components{share}"
