"""Per-class weights from class counts (the α of a class-balanced focal loss)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

__all__ = ["METHODS", "class_balanced_weights"]

METHODS = ("effective_number", "inverse", "inverse_sqrt")


def class_balanced_weights(
    counts: Sequence[int] | Tensor,
    method: str = "effective_number",
    beta: float = 0.999,
) -> Tensor:
    r"""Per-class weights that sum to C, from the number of training samples per class.

    ``"effective_number"`` (Cui et al., CVPR 2019): :math:`w_c \propto (1-\beta)/(1-\beta^{n_c})`;
    ``"inverse"``: :math:`w_c \propto 1/n_c`; ``"inverse_sqrt"``: :math:`w_c \propto 1/\sqrt{n_c}`.
    A class with no samples gets the weight of a class with one.

    Args:
        counts: samples (or positives) per class, non-negative.
        method: one of :data:`METHODS`.
        beta: in [0, 1) for ``"effective_number"``; 0 gives equal weights, -> 1 gives inverse.

    Returns:
        float32 tensor of shape ``(C,)`` summing to C.

    Example:
        >>> class_balanced_weights([100, 10, 1], method="inverse")
        tensor([0.0270, 0.2703, 2.7027])
        >>> class_balanced_weights([100, 10, 1], beta=0.9)
        tensor([0.2393, 0.3674, 2.3932])
    """
    n = torch.as_tensor(counts, dtype=torch.float64).flatten()
    if n.numel() == 0:
        raise ValueError("counts is empty")
    if bool((n < 0).any()) or not bool(torch.isfinite(n).all()):
        raise ValueError(f"class counts must be finite and >= 0, got {n.tolist()}")
    if method not in METHODS:
        raise ValueError(f"unknown class-weight method {method!r}; expected one of {METHODS}")
    n = n.clamp_min(1.0)
    if method == "effective_number":
        if not 0.0 <= beta < 1.0:
            raise ValueError(f"beta must be in [0, 1), got {beta}")
        w = (1.0 - beta) / (1.0 - torch.pow(torch.tensor(beta, dtype=torch.float64), n))
    elif method == "inverse":
        w = 1.0 / n
    else:
        w = 1.0 / n.sqrt()
    return (w * (n.numel() / w.sum())).to(torch.float32)
