"""``--ema``: an exponential moving average of the weights, kept beside the live ones.

The average lives in the phase state (so it is in every checkpoint and ``--resume`` stays
bit-identical); validation, the best-epoch weights and the exported engine use it.
"""

from __future__ import annotations

import numpy as np
import torch

from .steps import _predict_logits


def clone_state(sd: dict) -> dict:
    return {k: v.detach().clone() for k, v in sd.items()}


def kept_state(net, st: dict) -> dict:
    """The weights the run validates and keeps: the moving average under --ema, else the live ones."""
    return st["ema"] if st.get("ema") is not None else net.state_dict()


def update_ema(net, st: dict, decay: float) -> None:
    """The weights' moving average after the phase's optimizer step ``st['step']`` (BN running
    statistics included).  The decay ramps up as step / (9 + step) so the average does not stay
    anchored to the phase's first weights."""
    state = net.state_dict()
    if st["ema"] is None:
        st["ema"] = clone_state(state)
    d = min(decay, st["step"] / (9 + st["step"]))
    with torch.no_grad():
        for k, v in state.items():
            if v.is_floating_point():
                st["ema"][k].mul_(d).add_(v.detach(), alpha=1.0 - d)
            else:
                st["ema"][k].copy_(v)


def val_logits(ctx, st: dict) -> np.ndarray:
    """Validation logits of :func:`kept_state` (the live weights are put back after)."""
    net, data, va = ctx["net"], ctx["data"], ctx["va"]
    if st.get("ema") is None:
        return _predict_logits(net, data.stamps[va], ctx["spec"], bf16=ctx["bf16"])
    live = clone_state(net.state_dict())
    net.load_state_dict(st["ema"])
    try:
        return _predict_logits(net, data.stamps[va], ctx["spec"], bf16=ctx["bf16"])
    finally:
        net.load_state_dict(live)
