"""What focal loss does to a batch: modulating factor, easy fraction, positives.

Computed without gradient from the logits and targets the loss saw; pure PyTorch.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ._sigmoid_kernel import policy_gamma

__all__ = ["focal_diagnostics"]


@torch.no_grad()
def focal_diagnostics(
    mode: str,
    logits: Tensor,
    target: Tensor,
    gamma: Tensor | None,
    *,
    policy: tuple[tuple[float, ...], tuple[float, ...]] | None = None,
    ignore_index: int = -100,
    weight: Tensor | None = None,
) -> dict[str, Tensor]:
    """Batch statistics of the focal modulation, as 0-d float32 tensors.

    ``modulating``: mean of (1-p_t)^γ over the counted elements; ``easy_fraction``: share
    with p_t > 0.5; for ``mode="sigmoid"`` also ``num_positives`` (targets > 0.5, on
    unmasked elements), ``p_positives`` and ``p_negatives`` (mean predicted p of each).
    For softmax with class probabilities, p_t is the probability of the most likely target
    class. Per-class γ is looked up for the target class (softmax) or broadcast on the last
    dimension (sigmoid).

    Example:
        >>> import torch
        >>> stats = focal_diagnostics("softmax", torch.tensor([[4.0, 0.0], [0.0, 0.0]]),
        ...                           torch.tensor([0, 1]), torch.tensor(2.0))
        >>> round(float(stats["easy_fraction"]), 2), round(float(stats["modulating"]), 4)
        (0.5, 0.1252)
    """
    x = logits.detach().float()
    if mode == "softmax":
        if x.dim() == 1:
            x, target = x.unsqueeze(0), target.unsqueeze(0)
        if target.is_floating_point():
            target = target.argmax(dim=1)
        valid = target != ignore_index
        tgt = torch.where(valid, target, 0).long()
        p_t = torch.softmax(x, dim=1).gather(1, tgt.unsqueeze(1)).squeeze(1)
        if policy is not None:
            g = policy_gamma(p_t, policy)
        elif gamma is not None and gamma.dim() == 1:
            g = gamma.float()[tgt]
        else:
            g = gamma.float() if gamma is not None else torch.zeros((), device=x.device)
        mask = valid.float()
        count = mask.sum().clamp_min(1.0)
        mod = torch.pow((1.0 - p_t).clamp_min(0.0), g)
        return {
            "modulating": (mod * mask).sum() / count,
            "easy_fraction": ((p_t > 0.5).float() * mask).sum() / count,
        }
    t = target.detach().float()
    p = torch.sigmoid(x)
    p_t = p * t + (1.0 - p) * (1.0 - t)
    g = policy_gamma(p_t, policy) if policy is not None else gamma.float()
    if weight is not None and weight.dim() == x.dim() - 1:
        weight = weight.unsqueeze(-1)
    mask = torch.ones_like(x) if weight is None else (weight.detach() > 0).float().expand_as(x)
    count = mask.sum().clamp_min(1.0)
    mod = torch.pow((1.0 - p_t).clamp_min(0.0), g)
    positive = (t > 0.5).float() * mask
    negative = (t <= 0.5).float() * mask
    num_pos = positive.sum()
    return {
        "modulating": (mod * mask).sum() / count,
        "easy_fraction": ((p_t > 0.5).float() * mask).sum() / count,
        "num_positives": num_pos,
        "p_positives": (p * positive).sum() / num_pos.clamp_min(1.0),
        "p_negatives": (p * negative).sum() / negative.sum().clamp_min(1.0),
    }
