"""Sigmoid focal loss for multi-label classification and dense detection: the function
:func:`sigmoid_focal_loss` and the module :class:`SigmoidFocalLoss` side by side."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from ._base import AlphaArg, FocalLossBase, GammaArg
from ._common import (
    Policy,
    as_class_tensor,
    cached_scalar,
    check_alpha_unit_interval,
    check_device,
    check_logits,
    check_normalizer,
    check_per_class_length,
    check_reduction,
    check_weight_values,
    composite_needed,
    compute_dtype,
    gamma_arg,
    scalar_tensor,
)
from ._sigmoid_kernel import SigmoidFocalFunction, sigmoid_focal_elementwise

__all__ = ["SigmoidFocalLoss", "sigmoid_focal_loss"]

_WHERE = "sigmoid focal loss broadcasts per-class values on the last dimension"


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
    every γ ≥ 0 and any logit. At γ=0 without α it is ``binary_cross_entropy_with_logits``,
    ±inf logits included. Half-precision inputs are computed in float32 and the loss is
    returned in float32. Second-order gradients, ``torch.func`` transforms and gradients
    for ``alpha``, ``gamma`` and ``weight`` tensors that require grad all work.

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
            ``reduction="sum"``; must be > 0 (clamp a count that can be 0).
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
    check_reduction(reduction)
    _check_inputs(inputs, targets)
    num_classes = inputs.shape[-1] if inputs.dim() > 0 else 1
    dtype = compute_dtype(inputs.dtype)
    g, policy = gamma_arg(gamma, num_classes, inputs.device, dtype, _WHERE)
    a = _alpha_tensor(alpha, num_classes, inputs.device, dtype)
    return _sigmoid_focal_loss(
        inputs, targets, g, policy, a, reduction, weight, normalizer, float(poly1)
    )


def _check_inputs(inputs: Any, targets: Any) -> None:
    check_logits("inputs", inputs)
    if not isinstance(targets, Tensor):
        raise TypeError(f"targets must be a torch.Tensor, got {type(targets).__name__}")
    if targets.shape != inputs.shape:
        raise ValueError(
            f"targets shape {tuple(targets.shape)} does not match inputs shape {tuple(inputs.shape)}"
        )
    if targets.device != inputs.device:
        check_device("targets", targets, inputs.device)


def _alpha_tensor(alpha: Any, num_classes: int | None, device, dtype) -> Tensor | None:
    """α in [0, 1] (scalar or per-class); ``None`` or a negative float switch it off, as
    in torchvision."""
    if alpha is None:
        return None
    if isinstance(alpha, (int, float)) and not isinstance(alpha, bool):
        if alpha < 0:  # torchvision: a negative α switches it off
            return None
        if not alpha <= 1.0:
            raise ValueError(f"alpha for sigmoid focal loss must lie in [0, 1], got {alpha}")
        return cached_scalar(float(alpha), dtype, device)
    a = as_class_tensor("alpha", alpha, device, dtype)
    if num_classes is not None:
        check_per_class_length("alpha", a, num_classes, _WHERE)
    check_alpha_unit_interval(a)
    return a


def _weight_tensor(weight: Any, inputs: Tensor) -> Tensor | None:
    if weight is None:
        return None
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
    check_device("weight", weight, inputs.device)
    w = weight.to(compute_dtype(inputs.dtype))
    if weight.dtype != torch.bool:
        check_weight_values("weight", w)
    return w


def _sigmoid_focal_loss(
    inputs: Tensor,
    targets: Tensor,
    gamma: Tensor | None,
    policy: Policy,
    alpha: Tensor | None,
    reduction: str,
    weight: Tensor | None,
    normalizer: float | Tensor | None,
    eps: float,
) -> Tensor:
    """The loss from checked γ and α (on the inputs' device and dtype)."""
    w = _weight_tensor(weight, inputs)
    dtype = compute_dtype(inputs.dtype)
    denom: Tensor | None = None
    if normalizer is not None:
        if reduction != "sum":
            raise ValueError(
                f"normalizer divides the summed loss; use reduction='sum' (got {reduction!r})"
            )
        denom = check_normalizer(normalizer, inputs.device, dtype)
    elif reduction == "mean":
        if w is None:
            denom = scalar_tensor(float(inputs.numel()), dtype, inputs.device)
        else:
            denom = w.expand(inputs.shape).sum()
    reduce = reduction != "none"
    if composite_needed(targets, gamma, alpha, weight):
        loss = sigmoid_focal_elementwise(inputs, targets, alpha, gamma, w, eps, policy)
        if reduce:
            loss = loss.sum()
        return loss if denom is None else loss / denom
    return SigmoidFocalFunction.apply(inputs, targets, alpha, gamma, w, eps, policy, reduce, denom)


class SigmoidFocalLoss(FocalLossBase):
    """:func:`sigmoid_focal_loss` as a module whose γ and α are buffers (see
    :class:`FocalLossBase`): ``loss.gamma = 0.5`` updates it in place.

    Args:
        gamma: float, per-class sequence/tensor (last dim), or a
            :class:`SampleDependentGamma` policy.
        alpha: ``None`` (no α), a float in [0, 1] or per-class values in [0, 1]. ``None``
            by default (torchvision's function defaults to 0.25; RetinaNet's
            :class:`DenseFocalLoss` does too).
        reduction: ``"mean"`` (default), ``"sum"`` or ``"none"``.
        poly1: ε of Poly-1 focal loss.
        num_classes: optional; checks the length of per-class values when they are set.

    Example:
        >>> import torch
        >>> from lightning_focal import SigmoidFocalLoss
        >>> criterion = SigmoidFocalLoss(gamma=2.0, alpha=0.25, reduction="sum")
        >>> criterion(torch.tensor([[2.0, -1.0]]), torch.tensor([[1.0, 0.0]]))
        tensor(0.0174)
    """

    takes_prior_bias = True
    """Sigmoid heads are what the prior bias init (Lin et al. 2017) is for."""

    def _parse_alpha(self, value: Any) -> Tensor | None:
        device = value.device if isinstance(value, Tensor) else torch.device("cpu")
        if isinstance(value, Tensor):
            self._refuse_grad("alpha", value)
            value = value.detach()
        a = _alpha_tensor(value, None, device, self._dtype())
        if a is not None:
            self._check_length("alpha", a)
        return a

    def forward(
        self,
        input: Tensor,
        target: Tensor,
        *,
        weight: Tensor | None = None,
        normalizer: float | Tensor | None = None,
    ) -> Tensor:
        """The loss of ``input`` logits against ``target`` (same shape); ``weight`` masks
        or weighs elements, ``normalizer`` divides the sum (``reduction`` then counts as
        ``"sum"``)."""
        _check_inputs(input, target)
        reduction = "sum" if normalizer is not None else self.reduction
        gamma, alpha = self._buffers_for(input)
        policy = self.gamma_policy.as_tuple() if self.gamma_policy is not None else None
        return _sigmoid_focal_loss(
            input, target, gamma, policy, alpha, reduction, weight, normalizer, self.poly1
        )

    def _buffers_for(self, input: Tensor) -> tuple[Tensor | None, Tensor | None]:
        """γ and α checked against ``input`` and cast to its compute dtype."""
        num_classes = input.shape[-1] if input.dim() > 0 else 1
        dtype = compute_dtype(input.dtype)
        out = []
        for name in ("gamma", "alpha"):
            value = self._buffers[name]
            if value is not None:
                check_device(f"loss.{name}", value, input.device)
                check_per_class_length(name, value, num_classes, _WHERE)
                value = value.to(dtype)
            out.append(value)
        return out[0], out[1]

    def encode_target(self, indices: Tensor, num_classes: int) -> Tensor:
        """The target this loss takes for class ``indices``: one-hot rows (classes last)."""
        return torch.nn.functional.one_hot(indices, num_classes).to(torch.float32)

    def alpha_from_class_weights(self, weights: Tensor) -> Tensor:
        """α in (0, 1) for per-class weights (mean 1): α_c = w_c / (1 + w_c), so a class of
        average weight weighs its positives and negatives alike."""
        return weights / (1.0 + weights)

    def _statistics_sums(
        self, x: Tensor, target: Tensor, weight: Tensor | None
    ) -> dict[str, Tensor]:
        """Adds ``num_positives`` (targets > 0.5), ``p_positives`` and ``p_negatives``
        (mean predicted p of each) over unmasked elements."""
        positive = target > 0.5
        q = torch.sigmoid(torch.where(positive, -x, x))  # 1 - p_t (of the rounded target)
        gamma = self._gamma_at(1.0 - q, None)
        modulating = torch.pow(q, gamma)
        easy = q < 0.5
        p = torch.sigmoid(x)
        mask = None if weight is None else weight > 0
        negative = ~positive
        if mask is not None:
            modulating, easy = modulating * mask, easy & mask
            positive, negative = positive & mask, negative & mask
        return {
            "modulating": modulating.sum(),
            "easy_fraction": easy.sum().float(),
            "count": mask.sum().float() if mask is not None else torch.tensor(float(x.numel())),
            "num_positives": positive.sum().float(),
            "num_negatives": negative.sum().float(),
            "p_positives": (p * positive).sum(),
            "p_negatives": (p * negative).sum(),
        }

    def _statistics_from_sums(self, sums: dict[str, Tensor]) -> dict[str, Tensor]:
        count = sums["count"].clamp_min(1.0)
        return {
            "modulating": sums["modulating"] / count,
            "easy_fraction": sums["easy_fraction"] / count,
            "num_positives": sums["num_positives"],
            "p_positives": sums["p_positives"] / sums["num_positives"].clamp_min(1.0),
            "p_negatives": sums["p_negatives"] / sums["num_negatives"].clamp_min(1.0),
        }
