"""Sigmoid focal loss for multi-label classification and dense detection."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from ._common import (
    as_class_tensor,
    check_alpha_unit_interval,
    check_gamma_values,
    check_logits,
    check_per_class_length,
    check_reduction,
    check_weight_values,
    scalar_tensor,
)
from ._sigmoid_kernel import SigmoidFocalFunction, compute_dtype, sigmoid_focal_elementwise
from .gamma_policy import SampleDependentGamma

__all__ = ["sigmoid_focal_loss"]

GammaArg = float | Sequence[float] | Tensor | SampleDependentGamma
AlphaArg = float | Sequence[float] | Tensor | None


def resolve_gamma(
    gamma: GammaArg,
    num_classes: int,
    device: torch.device,
    where: str,
    dtype: torch.dtype = torch.float32,
):
    """(gamma tensor or None, policy tuple or None) from any accepted γ argument."""
    if isinstance(gamma, SampleDependentGamma):
        return None, (tuple(gamma.thresholds), tuple(gamma.gammas))
    g = as_class_tensor("gamma", gamma, device, dtype)
    check_per_class_length("gamma", g, num_classes, where)
    check_gamma_values(g)
    return g, None


def sigmoid_focal_loss(
    inputs: Tensor,
    targets: Tensor,
    alpha: AlphaArg = 0.25,
    gamma: GammaArg = 2.0,
    reduction: str = "none",
    *,
    weight: Tensor | None = None,
    normalizer: float | Tensor | None = None,
    poly1: float = 0.0,
) -> Tensor:
    r"""Sigmoid focal loss (Lin et al., 2017), a drop-in for ``torchvision.ops.sigmoid_focal_loss``.

    .. math::
        FL = -\alpha_t (1 - p_t)^\gamma \log p_t + \varepsilon (1 - p_t)^{\gamma + 1},
        \quad p = \sigma(x),\ p_t = p\,t + (1-p)(1-t),\ \alpha_t = \alpha t + (1-\alpha)(1-t)

    Same parameter names, order, defaults and results as torchvision for every shape and
    reduction, computed by a fused kernel that writes the loss and its gradient in one
    pass (no other intermediates are kept for backward) and gives finite gradients for
    every γ ≥ 0 and any logit. Half-precision inputs are
    computed in float32 and the loss is returned in float32.

    Args:
        inputs: logits of any shape; classes on the last dimension when ``alpha`` or
            ``gamma`` is per-class (``(N, anchors, C)`` for dense detection).
        targets: same shape as ``inputs``; 0/1 labels or soft targets in [0, 1].
        alpha: weight of positives, negatives get ``1 - alpha``: a float in [0, 1], a
            per-class 1-D tensor/sequence of length C, or ``None`` / a negative float for no α.
        gamma: focusing exponent >= 0: a float, a per-class 1-D tensor of length C, or a
            :class:`SampleDependentGamma` policy.
        reduction: ``"none"`` | ``"mean"`` | ``"sum"``.
        weight: optional per-element weight or bool mask broadcastable to ``inputs``
            (zeros drop ignored anchors). With ``"mean"`` the sum is divided by the summed
            (broadcast) weight, so ignored elements leave the denominator.
        normalizer: divides the summed loss (e.g. the number of positive anchors); needs
            ``reduction="sum"``. Clamp it yourself if it can be 0.
        poly1: ε of Poly-1 focal loss (Leng et al., 2022); not weighted by α.

    Returns:
        The elementwise loss (``"none"``) or a 0-d tensor.

    Example:
        >>> import torch
        >>> from lightning_focal import sigmoid_focal_loss
        >>> logits = torch.tensor([[2.0, -1.0], [-3.0, 0.5]])
        >>> targets = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
        >>> sigmoid_focal_loss(logits, targets, reduction="sum")
        tensor(0.0344)
        >>> sigmoid_focal_loss(logits, targets, alpha=None, gamma=0.0, reduction="mean")
        tensor(0.2407)
    """
    check_logits("inputs", inputs)
    if not isinstance(targets, Tensor):
        raise TypeError(f"targets must be a torch.Tensor, got {type(targets).__name__}")
    if targets.shape != inputs.shape:
        raise ValueError(
            f"targets shape {tuple(targets.shape)} does not match inputs shape {tuple(inputs.shape)}"
        )
    check_reduction(reduction)
    num_classes = inputs.shape[-1] if inputs.dim() > 0 else 1
    where = "sigmoid focal loss broadcasts per-class values on the last dimension"
    dtype = compute_dtype(inputs.dtype)
    g, policy = resolve_gamma(gamma, num_classes, inputs.device, where, dtype)

    a: Tensor | None = None
    if alpha is not None:
        a = as_class_tensor("alpha", alpha, inputs.device, dtype)
        if a.dim() == 0 and not isinstance(alpha, Tensor) and float(alpha) < 0:
            a = None  # torchvision: alpha < 0 switches α off
        else:
            check_per_class_length("alpha", a, num_classes, where)
            check_alpha_unit_interval(a)

    w: Tensor | None = None
    if weight is not None:
        if not isinstance(weight, Tensor):
            raise TypeError(f"weight must be a tensor or None, got {type(weight).__name__}")
        try:
            shape = torch.broadcast_shapes(weight.shape, inputs.shape)
        except RuntimeError:
            shape = None
        if shape != inputs.shape:
            raise ValueError(
                f"weight shape {tuple(weight.shape)} does not broadcast to inputs shape "
                f"{tuple(inputs.shape)}"
            )
        w = weight.to(compute_dtype(inputs.dtype))
        if weight.dtype != torch.bool:
            check_weight_values("weight", w)

    denom: Tensor | None = None
    if normalizer is not None:
        if reduction != "sum":
            raise ValueError(
                f"normalizer divides the summed loss; use reduction='sum' (got {reduction!r})"
            )
        if isinstance(normalizer, Tensor):
            denom = normalizer.detach().to(device=inputs.device, dtype=dtype).reshape(())
        else:
            if not float(normalizer) > 0:
                raise ValueError(f"normalizer must be > 0, got {normalizer}")
            denom = scalar_tensor(float(normalizer), dtype, inputs.device)
    elif reduction == "mean":
        if w is None:
            denom = scalar_tensor(float(inputs.numel()), dtype, inputs.device)
        else:
            denom = w.expand(inputs.shape).sum()

    eps = float(poly1)
    reduce = reduction != "none"
    if torch.compiler.is_compiling() or targets.requires_grad:
        loss = sigmoid_focal_elementwise(inputs, targets, a, g, w, eps, policy)
        if reduce:
            loss = loss.sum()
        return loss if denom is None else loss / denom
    return SigmoidFocalFunction.apply(inputs, targets, a, g, w, eps, policy, reduce, denom)
