"""One training step and batched prediction: the arithmetic the training loop repeats."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from ..cutouts.preprocess import prepare_batch


def _set_bn_eval_where_frozen(net):
    for m in net.modules():
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
            frozen = not any(p.requires_grad for p in m.parameters(recurse=False))
            m.train(not frozen and net.training)


def _predict_logits(net, stamps, spec, batch=64, bf16=False) -> np.ndarray:
    net.eval()
    out = []
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        for i in range(0, len(stamps), batch):
            x = torch.from_numpy(prepare_batch(np.asarray(stamps[i : i + batch]), spec))
            if bf16:
                x = x.contiguous(memory_format=torch.channels_last)
            out.append(net(x).float().numpy())
    return np.concatenate(out)


def train_step(net, optimizer, x, y, pos_weight, bf16: bool = False) -> float:
    """One optimizer step on a prepared batch; the forward pass under bf16 autocast if asked
    (weights, gradients and the loss stay fp32)."""
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        z = net(x)
    loss = F.binary_cross_entropy_with_logits(z.float(), y, pos_weight=pos_weight)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    return loss.item()
