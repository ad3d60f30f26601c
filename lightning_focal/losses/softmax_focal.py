"""Softmax focal loss for multi-class classification and segmentation."""

from __future__ import annotations

import torch
from torch import Tensor

from ._common import (
    as_class_tensor,
    check_class_indices,
    check_logits,
    check_per_class_length,
    check_reduction,
    check_weight_values,
    scalar_tensor,
)
from ._sigmoid_kernel import compute_dtype
from ._softmax_kernel import SoftmaxFocalFunction, softmax_focal_elementwise
from .sigmoid_focal import AlphaArg, GammaArg, resolve_gamma

__all__ = ["softmax_focal_loss"]


def softmax_focal_loss(
    input: Tensor,
    target: Tensor,
    gamma: GammaArg = 2.0,
    alpha: AlphaArg = None,
    *,
    ignore_index: int = -100,
    reduction: str = "mean",
    label_smoothing: float = 0.0,
    poly1: float = 0.0,
) -> Tensor:
    r"""Softmax focal loss with the conventions of ``torch.nn.functional.cross_entropy``.

    .. math::
        FL = -\sum_c \alpha_c\, q_c\, (1 - p_c)^{\gamma_c} \log p_c
             + \varepsilon \sum_c q_c (1 - p_c)^{\gamma_c + 1}

    where ``p = softmax(input)`` over dim 1 and ``q`` is the one-hot target, the smoothed
    target ``(1 - s)·onehot + s/C`` or the given class probabilities. With ``gamma=0`` the
    result and its gradient equal ``F.cross_entropy(input, target, weight=alpha, ...)`` for
    every shape, target kind, ``ignore_index``, ``label_smoothing`` and reduction; ``"mean"``
    divides by the summed α of the non-ignored targets for class indices (so an all-ignored
    batch gives NaN, as ``cross_entropy`` does) and by the number of samples for
    probabilities.

    Args:
        input: logits ``(N, C)``, ``(N, C, d1, ..., dk)`` or unbatched ``(C,)``.
        target: class indices ``(N)`` / ``(N, d1, ..., dk)`` or class probabilities with the
            shape of ``input``.
        gamma: focusing exponent >= 0: a float, a per-class 1-D tensor (the exponent of the
            target class) or a :class:`SampleDependentGamma` policy such as FLSD-53.
        alpha: optional per-class weights of length C, the role of ``cross_entropy``'s
            ``weight``.
        ignore_index: class index whose targets contribute neither loss nor denominator.
        reduction: ``"none"`` | ``"mean"`` | ``"sum"``.
        label_smoothing: in [0, 1], as in ``cross_entropy``.
        poly1: ε of Poly-1 focal loss (Leng et al., 2022); not weighted by α.

    Example:
        >>> import torch
        >>> import torch.nn.functional as F
        >>> from lightning_focal import softmax_focal_loss
        >>> logits = torch.tensor([[2.0, 0.0, -1.0], [0.1, 0.2, 0.3]])
        >>> target = torch.tensor([0, 2])
        >>> softmax_focal_loss(logits, target, gamma=2.0)
        tensor(0.2027)
        >>> torch.allclose(softmax_focal_loss(logits, target, gamma=0.0), F.cross_entropy(logits, target))
        True
    """
    check_logits("input", input)
    if not isinstance(target, Tensor):
        raise TypeError(f"target must be a torch.Tensor, got {type(target).__name__}")
    check_reduction(reduction)
    if not 0.0 <= float(label_smoothing) <= 1.0:
        raise ValueError(f"label_smoothing must be in [0, 1], got {label_smoothing}")
    if input.dim() == 0:
        raise ValueError("input must have a class dimension, got a 0-d tensor")

    unbatched = input.dim() == 1
    x = input.unsqueeze(0) if unbatched else input
    num_classes = x.shape[1]
    is_index = not target.is_floating_point()
    if target.dtype == torch.bool:
        raise TypeError(
            "target must hold class indices (integer) or probabilities (float), got bool"
        )
    t = target.unsqueeze(0) if unbatched else target
    if is_index:
        expected = (x.shape[0], *x.shape[2:])
        if tuple(t.shape) != expected:
            raise ValueError(
                f"class-index target must have shape {expected} for input shape "
                f"{tuple(input.shape)}, got {tuple(target.shape)}"
            )
        t = t.long()
        check_class_indices(t, num_classes, ignore_index)
    elif t.shape != x.shape:
        raise ValueError(
            f"probability target must have the input's shape {tuple(input.shape)}, "
            f"got {tuple(target.shape)}"
        )
    elif ignore_index >= 0:
        # cross_entropy refuses this too: a class number would silently ignore nothing
        raise ValueError(
            f"ignore_index={ignore_index} applies to class-index targets only; probability "
            "targets have no ignored entries (leave ignore_index negative, e.g. -100)"
        )

    where = "softmax focal loss takes per-class values along dim 1"
    dtype = compute_dtype(x.dtype)
    g, policy = resolve_gamma(gamma, num_classes, x.device, where, dtype)
    a: Tensor | None = None
    if alpha is not None:
        a = as_class_tensor("alpha", alpha, x.device, dtype)
        if a.dim() != 1:
            raise ValueError(
                f"alpha for softmax focal loss must be a per-class tensor of length {num_classes}, "
                f"got a scalar (a constant factor would cancel in the mean)"
            )
        check_per_class_length("alpha", a, num_classes, where)
        check_weight_values("alpha", a)

    denom: Tensor | None = None
    if reduction == "mean":
        if not is_index:
            denom = scalar_tensor(float(x.numel() // max(num_classes, 1)), dtype, x.device)
        else:
            valid = t != ignore_index
            if a is None:
                denom = valid.sum().to(dtype)
            else:
                denom = (a.to(dtype)[torch.where(valid, t, 0)] * valid).sum()

    eps = float(poly1)
    smoothing = float(label_smoothing)
    reduce = reduction != "none"
    a = None if a is None else a.to(dtype)
    g = None if g is None else g.to(dtype)
    if torch.compiler.is_compiling() or t.requires_grad:
        loss = softmax_focal_elementwise(x, t, is_index, smoothing, ignore_index, a, g, eps, policy)
        if reduce:
            loss = loss.sum()
        out = loss if denom is None else loss / denom
    else:
        out = SoftmaxFocalFunction.apply(
            x, t, a, g, eps, policy, ignore_index, smoothing, is_index, reduce, denom
        )
    return out.squeeze(0) if unbatched and not reduce else out
