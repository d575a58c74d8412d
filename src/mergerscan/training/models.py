"""Training's view of the architectures: they live in :mod:`mergerscan.models` (shared with the
torch engine backend); this module re-exports them and adds fine-tuning (:func:`trainable_tail`)."""

from __future__ import annotations

from ..models import ARCHS, MergerNet, MissingWeightsError, ModelInfo, create_model, list_models, model_info

ARCH_INFO: dict[str, ModelInfo] = {name: model_info(name) for name in list_models()}

__all__ = ["ARCHS", "ARCH_INFO", "MergerNet", "MissingWeightsError", "create_model", "trainable_tail"]


def trainable_tail(net: MergerNet, n_blocks: int) -> list[str]:
    """Freeze the base except its last ``n_blocks`` conv blocks; the top stays trainable.
    Returns the names of the unfrozen block prefixes."""
    starts = model_info(net.arch).blocks
    n_blocks = max(0, min(n_blocks, len(starts)))
    first = starts[len(starts) - n_blocks] if n_blocks else None
    names = [n for n, _ in net.named_parameters()]
    unfreeze_from = (
        len(names)
        if first is None
        else next(i for i, n in enumerate(names) if n.startswith(first + ".") or n.startswith(first))
    )
    for i, (n, p) in enumerate(net.named_parameters()):
        p.requires_grad = n.startswith("top.") or i >= unfreeze_from
    return list(starts[len(starts) - n_blocks :]) if n_blocks else []
