"""``FocalLoss``: the module face of the two focal-loss functions."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn

from ._common import (
    as_class_tensor,
    check_alpha_unit_interval,
    check_gamma_values,
    check_reduction,
    check_weight_values,
)
from .gamma_policy import SampleDependentGamma
from .sigmoid_focal import sigmoid_focal_loss
from .softmax_focal import softmax_focal_loss

__all__ = ["FocalLoss"]

MODES = ("softmax", "sigmoid")


class FocalLoss(nn.Module):
    """Focal loss as a module whose γ and α are buffers that schedules may update in place.

    ``gamma`` and ``alpha`` are registered buffers: they follow ``.to()``, land in
    ``state_dict`` and are read by the compiled graph as inputs, so a callback that changes
    them between steps (:meth:`set_gamma`, :meth:`set_alpha`) never triggers a recompile.
    ``float(loss.gamma)`` gives the current scalar γ.

    Args:
        mode: ``"softmax"`` (classes on dim 1, like ``cross_entropy``) or ``"sigmoid"``
            (independent binary tasks, classes last, like ``torchvision.ops.sigmoid_focal_loss``).
        gamma: float, per-class sequence/tensor, or a :class:`SampleDependentGamma` policy.
        alpha: ``None`` (no α), a float in [0, 1] (sigmoid only) or per-class weights.
        reduction: ``"mean"`` (default), ``"sum"`` or ``"none"``.
        ignore_index: softmax only, as in ``cross_entropy``.
        label_smoothing: softmax only, as in ``cross_entropy``.
        poly1: ε of Poly-1 focal loss.
        num_classes: optional; validates the length of per-class values early.

    Example:
        >>> import torch
        >>> from lightning_focal import FocalLoss
        >>> criterion = FocalLoss("softmax", gamma=2.0)
        >>> logits, target = torch.tensor([[2.0, 0.0, -1.0]]), torch.tensor([0])
        >>> criterion(logits, target)
        tensor(0.0041)
        >>> criterion.set_gamma(0.0); float(criterion.gamma)
        0.0
        >>> criterion(logits, target)
        tensor(0.1698)
    """

    gamma: Tensor | None
    alpha: Tensor | None

    def __init__(
        self,
        mode: str = "softmax",
        gamma: float | Sequence[float] | Tensor | SampleDependentGamma = 2.0,
        alpha: float | Sequence[float] | Tensor | None = None,
        reduction: str = "mean",
        *,
        ignore_index: int = -100,
        label_smoothing: float = 0.0,
        poly1: float = 0.0,
        num_classes: int | None = None,
    ) -> None:
        super().__init__()
        if mode not in MODES:
            raise ValueError(f"unknown focal loss mode {mode!r}; expected one of {MODES}")
        check_reduction(reduction)
        if mode == "sigmoid" and (ignore_index != -100 or label_smoothing != 0.0):
            raise ValueError(
                "ignore_index and label_smoothing apply to mode='softmax'; for sigmoid pass a "
                "weight mask to forward()"
            )
        if not 0.0 <= label_smoothing <= 1.0:
            raise ValueError(f"label_smoothing must be in [0, 1], got {label_smoothing}")
        self.mode = mode
        self.reduction = reduction
        self.ignore_index = int(ignore_index)
        self.label_smoothing = float(label_smoothing)
        self.poly1 = float(poly1)
        self.num_classes = num_classes
        self.gamma_policy: SampleDependentGamma | None = None
        self.register_buffer("gamma", None)
        self.register_buffer("alpha", None)
        self.set_gamma(gamma)
        self.set_alpha(alpha)

    def _check_length(self, name: str, value: Tensor) -> None:
        if self.num_classes is not None and value.dim() == 1 and value.numel() != self.num_classes:
            raise ValueError(
                f"{name} has {value.numel()} per-class values, expected num_classes={self.num_classes}"
            )

    def _device(self) -> torch.device:
        for buf in (self.gamma, self.alpha):
            if buf is not None:
                return buf.device
        return torch.device("cpu")

    def _dtype(self) -> torch.dtype:
        # a buffer that changes shape keeps the dtype the module was moved to
        for buf in (self.gamma, self.alpha):
            if buf is not None:
                return buf.dtype
        return torch.float32

    @torch.no_grad()
    def set_gamma(self, gamma: float | Sequence[float] | Tensor | SampleDependentGamma) -> None:
        """Set γ: in place when the shape is unchanged, so compiled graphs stay valid."""
        if isinstance(gamma, SampleDependentGamma):
            self.gamma_policy = gamma
            self.gamma = None
            return
        value = as_class_tensor("gamma", gamma, self._device(), self._dtype())
        check_gamma_values(value)
        self._check_length("gamma", value)
        self.gamma_policy = None
        if self.gamma is not None and self.gamma.shape == value.shape:
            self.gamma.copy_(value)
        else:
            self.gamma = value.clone()

    @torch.no_grad()
    def set_alpha(self, alpha: float | Sequence[float] | Tensor | None) -> None:
        """Set α (``None`` switches it off): in place when the shape is unchanged."""
        if alpha is None:
            self.alpha = None
            return
        value = as_class_tensor("alpha", alpha, self._device(), self._dtype())
        if self.mode == "softmax":
            if value.dim() != 1:
                raise ValueError("alpha for softmax focal loss must be per-class (a 1-D sequence)")
            check_weight_values("alpha", value)
        else:
            check_alpha_unit_interval(value)
        self._check_length("alpha", value)
        if self.alpha is not None and self.alpha.shape == value.shape:
            self.alpha.copy_(value)
        else:
            self.alpha = value.clone()

    def _gamma_arg(self) -> Tensor | SampleDependentGamma:
        if self.gamma_policy is not None:
            return self.gamma_policy
        assert self.gamma is not None
        return self.gamma

    def forward(
        self,
        input: Tensor,
        target: Tensor,
        *,
        weight: Tensor | None = None,
        normalizer: float | Tensor | None = None,
    ) -> Tensor:
        """The loss of ``input`` logits against ``target``; ``weight``/``normalizer`` are sigmoid-only."""
        if self.mode == "softmax":
            if weight is not None or normalizer is not None:
                raise TypeError(
                    "weight and normalizer apply to mode='sigmoid'; use alpha/ignore_index"
                )
            return softmax_focal_loss(
                input,
                target,
                self._gamma_arg(),
                self.alpha,
                ignore_index=self.ignore_index,
                reduction=self.reduction,
                label_smoothing=self.label_smoothing,
                poly1=self.poly1,
            )
        reduction = "sum" if normalizer is not None else self.reduction
        return sigmoid_focal_loss(
            input,
            target,
            alpha=self.alpha,
            gamma=self._gamma_arg(),
            reduction=reduction,
            weight=weight,
            normalizer=normalizer,
            poly1=self.poly1,
        )

    def _load_from_state_dict(self, state_dict: dict[str, Any], prefix: str, *args: Any) -> None:
        # α and γ may change shape (scalar -> per-class) or appear (None -> tensor) during a
        # run; adopt the checkpoint's so that it loads into a freshly built module.
        for name in ("gamma", "alpha"):
            key = prefix + name
            if key in state_dict:
                incoming = state_dict[key]
                current = getattr(self, name)
                if current is None or current.shape != incoming.shape:
                    setattr(self, name, torch.empty_like(incoming, device=self._device()))
                    if name == "gamma":
                        self.gamma_policy = None
        super()._load_from_state_dict(state_dict, prefix, *args)

    def extra_repr(self) -> str:
        gamma = self.gamma_policy if self.gamma_policy is not None else self.gamma
        return (
            f"mode={self.mode!r}, gamma={gamma}, alpha={self.alpha}, reduction={self.reduction!r}"
        )
