"""Softmax focal loss for multi-class classification and segmentation: the function
:func:`softmax_focal_loss` and the module :class:`SoftmaxFocalLoss` side by side."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any, ClassVar

import torch
from torch import Tensor

from ._base import AlphaArg, FocalLossBase, GammaArg
from ._common import (
    Policy,
    _fail_unless,
    _tracing,
    as_class_tensor,
    cached_scalar,
    check_class_indices,
    check_device,
    check_logits,
    check_per_class_length,
    check_reduction,
    check_weight_values,
    composite_needed,
    compute_dtype,
    gamma_arg,
    static_gamma,
)
from ._softmax_kernel import (
    SmallSoftmaxFocalFunction,
    SoftmaxFocalFunction,
    fast_loss_kernel,
    softmax_focal_elementwise,
)

__all__ = ["SoftmaxFocalLoss", "adjust_logits", "softmax_focal_loss"]

_WHERE = "softmax focal loss takes per-class values along dim 1"


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
    logit_adjustment: float | Tensor = 0.0,
    class_priors: Sequence[float] | Tensor | None = None,
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
    probabilities. Every autograd feature of ``cross_entropy`` works: second-order
    gradients, ``torch.func.grad``/``vmap``/``jacrev``, and gradients for ``gamma`` and
    ``alpha`` tensors that require grad.

    With ``logit_adjustment=τ`` the loss is computed on ``input + τ·log π`` (π:
    ``class_priors``), the logit-adjusted loss of Menon et al. (2021): at ``gamma=0`` it is
    ``F.cross_entropy(input + τ·log π, target)`` (balanced softmax at τ=1), at γ > 0
    logit-adjusted focal loss. It only changes the loss: predict with the plain logits.

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
        logit_adjustment: τ of the logit adjustment; 0 (the default) for none.
        class_priors: per-class priors π of length C (class frequencies, or counts: they are
            normalised), each > 0; needed when ``logit_adjustment`` is not 0.

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
        >>> counts = torch.tensor([90.0, 9.0, 1.0])
        >>> la = softmax_focal_loss(logits, target, gamma=0.0, logit_adjustment=1.0, class_priors=counts)
        >>> torch.allclose(la, F.cross_entropy(logits + (counts / counts.sum()).log(), target))
        True
    """
    if isinstance(logit_adjustment, Tensor) or logit_adjustment != 0.0:
        input = adjust_logits(input, logit_adjustment, class_priors)
    if (
        type(gamma) is float
        and alpha is None
        and label_smoothing == 0.0
        and poly1 == 0.0
        and 0.0 <= gamma < math.inf
        and isinstance(input, Tensor)
    ):
        out = _lean_call(input, target, gamma, _int_gamma(gamma), ignore_index, reduction)
        if out is not None:
            return out
    check_reduction(reduction)
    smoothing = float(label_smoothing)
    if not 0.0 <= smoothing <= 1.0:
        raise ValueError(f"label_smoothing must be in [0, 1], got {label_smoothing}")
    x, t, unbatched, is_index, masked = _check_inputs(input, target, ignore_index)
    dtype = compute_dtype(x.dtype)
    num_classes = x.shape[1]
    g, policy = gamma_arg(gamma, num_classes, x.device, dtype, _WHERE)
    a = None if alpha is None else _alpha_tensor(alpha, num_classes, x.device, dtype)
    # a Python γ needs no read of its tensor to find the product forms
    gint = _int_gamma(gamma) if type(gamma) is float else lambda: static_gamma(g, policy)
    return _softmax_focal_loss(
        x, t, g, policy, a, ignore_index, reduction, smoothing, float(poly1), is_index,
        masked, unbatched, gint,
    )  # fmt: skip


def _lean_call(
    input: Tensor, target: Any, gamma: float | Tensor, gint: int | None, ignore_index: int,
    reduction: str,
) -> Tensor | None:  # fmt: skip
    """The loss of the usual call by the shortest route, or None where it does not apply.

    The usual call: (N, C) CPU logits, int64 class indices (N,), a scalar γ (a checked
    float, or a module's 0-d CPU buffer; ``gint``: its :func:`static_gamma`), no α, no ε,
    no label smoothing, ``ignore_index`` outside the classes, the mean or the sum, run
    eagerly and outside any tracing. Every
    such call passes every check of the general route, which gives the same result
    (``test_the_usual_call_takes_the_lean_route``); on a small batch the checks and
    branches of that route cost as much as the arithmetic (measured at (64, 10): 18 µs of
    ~95 µs for forward and backward, against 56 µs for ``cross_entropy``).
    """
    shape = input.shape
    if not (
        len(shape) == 2
        and isinstance(target, Tensor)
        and target.dtype == torch.int64
        and target.shape == shape[:1]
        and (reduction == "mean" or reduction == "sum")
        and input.is_floating_point()
        and input.is_cpu
        and target.is_cpu
        and shape[0] > 0
        and not 0 <= ignore_index < shape[1]
        and not _tracing()
    ):
        return None
    if fast_loss_kernel.compiles(input.numel()):
        return None
    fast_loss_kernel.note_eager(input.numel())
    dtype = torch.float64 if input.dtype == torch.float64 else torch.float32
    if not isinstance(gamma, Tensor):
        gamma = cached_scalar(gamma, dtype, _CPU)
    elif gamma.dtype != dtype:
        gamma = gamma.to(dtype)
    config = (0.0, None, ignore_index, reduction, None, gint)
    return SmallSoftmaxFocalFunction.apply(input, target, None, gamma, config)


_CPU = torch.device("cpu")


def _int_gamma(value: float) -> int | None:
    """What :func:`static_gamma` gives for a γ held as a Python float."""
    return int(value) if value in (0.0, 1.0, 2.0, 3.0, 4.0) else None


def _check_inputs(input: Any, target: Any, ignore_index: int) -> tuple:
    """(input with a batch dim, target likewise, unbatched, class indices?, may hold
    ignore_index? (None: not read yet)) after checking shapes, dtypes and, where reading
    them is not left to a gather, class indices."""
    if not isinstance(input, Tensor) or not input.is_floating_point():
        check_logits("input", input)  # raises
    if not isinstance(target, Tensor):
        raise TypeError(f"target must be a torch.Tensor, got {type(target).__name__}")
    ndim = input.dim()
    if ndim == 0:
        raise ValueError("input must have a class dimension, got a 0-d tensor")
    unbatched = ndim == 1
    x = input.unsqueeze(0) if unbatched else input
    t = target.unsqueeze(0) if unbatched else target
    is_index = not target.is_floating_point()
    masked = False
    x_shape, t_shape = x.shape, t.shape
    if is_index:
        if target.dtype == torch.bool:
            raise TypeError(
                "target must hold class indices (integer) or probabilities (float), got bool"
            )
        if t_shape[0] != x_shape[0] or t_shape[1:] != x_shape[2:]:
            expected = (x_shape[0], *x_shape[2:])
            raise ValueError(
                f"class-index target must have shape {expected} for input shape "
                f"{tuple(input.shape)}, got {tuple(target.shape)}"
            )
        if t.dtype != torch.int64:
            t = t.long()
        if t.is_cpu and not 0 <= ignore_index < x_shape[1]:
            # a gather checks the range at no cost: the eager path lets its own do it, the
            # others call check_class_indices (masked None: not read yet)
            masked = None
        else:
            masked = check_class_indices(t, x_shape[1], ignore_index)
    elif t_shape != x_shape:
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
    if not (t.is_cpu and x.is_cpu) and t.device != x.device:
        check_device("target", t, x.device)
    return x, t, unbatched, is_index, masked


def _alpha_tensor(alpha: Any, num_classes: int | None, device, dtype) -> Tensor:
    """Per-class α (``cross_entropy``'s ``weight``): 1-D, finite, >= 0."""
    a = as_class_tensor("alpha", alpha, device, dtype)
    if a.dim() != 1:
        raise ValueError(
            "alpha for softmax focal loss must be a per-class tensor of length C (a constant "
            "factor would cancel in the mean)"
        )
    if num_classes is not None:
        check_per_class_length("alpha", a, num_classes, _WHERE)
    check_weight_values("alpha", a)
    return a


def _class_priors(value: Any, num_classes: int | None, device, dtype) -> Tensor:
    """Class priors π for the logit adjustment: 1-D, finite, > 0, normalised to sum 1."""
    p = as_class_tensor("class_priors", value, device, dtype)
    if p.dim() != 1:
        raise ValueError(
            "class_priors must be a per-class tensor of length C (class frequencies or counts)"
        )
    if num_classes is not None:
        check_per_class_length("class_priors", p, num_classes, _WHERE)
    if not _tracing():
        message = (
            "class_priors must be finite and > 0 (log π of a class with no training samples is "
            "-inf: give it a small count)"
        )
        ok = torch.all(torch.isfinite(p) & (p > 0))
        if p.device.type != "cpu":
            _fail_unless(ok, message)  # a queued device check: no host sync
        elif not bool(ok):
            raise ValueError(f"{message}, got {p.tolist()}")
    return p / p.sum()


def _shifted(x: Tensor, tau: float | Tensor, priors: Tensor) -> Tensor:
    """``x + τ·log π`` on the class dimension, π already checked and normalised."""
    shift = torch.log(priors.to(compute_dtype(x.dtype))) * tau
    if x.dim() > 2:
        shift = shift.view(-1, *([1] * (x.dim() - 2)))
    return x + shift


def adjust_logits(
    input: Tensor, tau: float | Tensor, class_priors: Sequence[float] | Tensor | None
) -> Tensor:
    """``input + τ·log π`` along the class dimension (dim 1; dim 0 of unbatched logits).

    Example:
        >>> import torch
        >>> adjust_logits(torch.zeros(1, 2), 1.0, torch.tensor([3.0, 1.0]))
        tensor([[-0.2877, -1.3863]])
    """
    x = check_logits("input", input)
    if class_priors is None:
        raise ValueError(
            f"logit_adjustment={float(tau)} needs class_priors: class frequencies or counts of "
            "length C (from a module: set `loss.class_priors`, or let the ClassBalancedAlpha "
            "callback fill them from the training counts)"
        )
    if x.dim() == 0:
        raise ValueError("input must have a class dimension, got a 0-d tensor")
    if isinstance(class_priors, Tensor) and class_priors.device != x.device:
        check_device("class_priors", class_priors, x.device)
    num_classes = x.shape[1] if x.dim() > 1 else x.shape[0]
    return _shifted(
        x, tau, _class_priors(class_priors, num_classes, x.device, compute_dtype(x.dtype))
    )


def _softmax_focal_loss(
    x: Tensor,
    t: Tensor,
    gamma: Tensor | None,
    policy: Policy,
    alpha: Tensor | None,
    ignore_index: int,
    reduction: str,
    smoothing: float,
    eps: float,
    is_index: bool,
    masked: bool | None,
    unbatched: bool,
    gint: int | Callable[[], int | None] | None,
) -> Tensor:
    """The loss from checked arguments (γ and α already on ``x``'s device and dtype).

    ``masked`` None: the class indices were not read yet (a CPU target, ``ignore_index``
    outside the classes); the eager path lets its gather check them, the others check here.
    ``gint``: :func:`static_gamma` of γ, or a function that reads it (called only where
    the eager path runs: never while tracing, where reading γ would break the graph).
    """
    reduce = reduction != "none"
    composite = composite_needed(t, gamma, alpha)
    if is_index and smoothing == 0.0 and not composite:
        numel = x.numel()
        if numel and not fast_loss_kernel.compiles(numel):
            fast_loss_kernel.note_eager(numel)
            if callable(gint):
                gint = gint()
            config = (eps, policy, ignore_index, reduction, masked, gint)
            out = SmallSoftmaxFocalFunction.apply(x, t, alpha, gamma, config)
            return out.squeeze(0) if unbatched and not reduce else out
    if masked is None:
        masked = check_class_indices(t, x.shape[1], ignore_index)
    denom: Tensor | float | None = None
    if reduction == "mean":
        per_sample = x.numel() // max(x.shape[1], 1)
        if not is_index:
            denom = float(per_sample)
        elif alpha is not None:
            valid = t != ignore_index if masked else None
            tgt = torch.where(valid, t, 0) if masked else t
            denom = alpha[tgt].sum() if valid is None else (alpha[tgt] * valid).sum()
        elif masked:
            denom = (t != ignore_index).sum().to(compute_dtype(x.dtype))
        else:
            denom = float(per_sample)
        if isinstance(denom, float) and denom == 0.0:  # empty input: 0/0 = NaN, as torch
            denom = torch.zeros((), dtype=compute_dtype(x.dtype), device=x.device)
    if composite:
        loss = softmax_focal_elementwise(
            x, t, is_index, smoothing, ignore_index, alpha, gamma, eps, policy
        )
        if reduce:
            loss = loss.sum()
        out = loss if denom is None else loss / denom
    else:
        config = (eps, policy, ignore_index, smoothing, is_index, reduce)
        out = SoftmaxFocalFunction.apply(x, t, alpha, gamma, denom, config)
    return out.squeeze(0) if unbatched and not reduce else out


class SoftmaxFocalLoss(FocalLossBase):
    """:func:`softmax_focal_loss` as a module whose γ and α are buffers (see
    :class:`FocalLossBase`): ``loss.gamma = 0.5`` updates it in place.

    Args:
        gamma: float, per-class sequence/tensor, or a :class:`SampleDependentGamma` policy.
        alpha: ``None`` or per-class weights (``cross_entropy``'s ``weight``).
        reduction: ``"mean"`` (default), ``"sum"`` or ``"none"``.
        ignore_index: as in ``cross_entropy``.
        label_smoothing: as in ``cross_entropy``.
        poly1: ε of Poly-1 focal loss.
        logit_adjustment: τ: the loss is computed on ``input + τ·log π`` (logit-adjusted loss,
            Menon et al. 2021; balanced softmax at τ=1 and γ=0); 0 for none.
        class_priors: per-class priors π (frequencies or counts, normalised), a buffer like
            α: ``loss.class_priors = counts``; :class:`~lightning_focal.callbacks.ClassBalancedAlpha`
            fills them from the training counts when the loss has a ``logit_adjustment``.
        num_classes: optional; checks the length of per-class values when they are set.

    Example:
        >>> import torch
        >>> from lightning_focal import SoftmaxFocalLoss
        >>> criterion = SoftmaxFocalLoss(gamma=2.0)
        >>> logits, target = torch.tensor([[2.0, 0.0, -1.0]]), torch.tensor([0])
        >>> criterion(logits, target)
        tensor(0.0041)
        >>> criterion.gamma = 0.0
        >>> criterion(logits, target)
        tensor(0.1698)
        >>> la = SoftmaxFocalLoss(gamma=0.0, logit_adjustment=1.0, class_priors=[90, 9, 1])
        >>> la(logits, target)  # cross-entropy of logits + log π: the frequent class is easy
        tensor(0.0140)
    """

    value_buffers: ClassVar[tuple[str, ...]] = ("gamma", "alpha", "class_priors")

    takes_prior_bias = False
    """A constant bias does not change a softmax: the prior init is for sigmoid heads."""

    def __init__(
        self,
        gamma: GammaArg = 2.0,
        alpha: AlphaArg = None,
        reduction: str = "mean",
        *,
        ignore_index: int = -100,
        label_smoothing: float = 0.0,
        poly1: float = 0.0,
        logit_adjustment: float = 0.0,
        class_priors: Sequence[float] | Tensor | None = None,
        num_classes: int | None = None,
    ) -> None:
        if not 0.0 <= label_smoothing <= 1.0:
            raise ValueError(f"label_smoothing must be in [0, 1], got {label_smoothing}")
        tau = float(logit_adjustment)
        if not math.isfinite(tau):
            raise ValueError(f"logit_adjustment must be a finite τ, got {logit_adjustment}")
        self.ignore_index = int(ignore_index)
        self.label_smoothing = float(label_smoothing)
        self.logit_adjustment = tau
        super().__init__(gamma, alpha, reduction, poly1=poly1, num_classes=num_classes)
        self.register_buffer("class_priors", None)
        self.class_priors = class_priors

    def _assign(self, name: str, value: Any) -> None:
        if name != "class_priors":
            return super()._assign(name, value)
        if value is None:
            self._write(name, None)
            return
        device = value.device if isinstance(value, Tensor) else torch.device("cpu")
        if isinstance(value, Tensor):
            self._refuse_grad(name, value)
            value = value.detach()
            if not value.is_floating_point():
                value = value.double()  # integer counts
        priors = _class_priors(value, None, device, self._dtype())
        self._check_length(name, priors)
        self._write(name, priors)

    def _adjusted(self, input: Tensor) -> Tensor:
        """``input + τ·log π`` with the module's τ and priors (saying which key to set)."""
        priors = self._buffers["class_priors"]
        if priors is None:
            raise ValueError(
                f"SoftmaxFocalLoss(logit_adjustment={self.logit_adjustment}) has no class "
                "priors: set `loss.class_priors` (class frequencies or counts), or add the "
                "ClassBalancedAlpha callback (in the app: callbacks.class_balanced_alpha, as "
                "loss=la_ce sets it), which fills them from the training class counts"
            )
        x = check_logits("input", input)
        if x.dim() == 0:
            raise ValueError("input must have a class dimension, got a 0-d tensor")
        check_device("loss.class_priors", priors, x.device)
        check_per_class_length(
            "class_priors", priors, x.shape[1] if x.dim() > 1 else x.shape[0], _WHERE
        )
        # checked and normalised when they were set: no second read of their values
        return _shifted(x, self.logit_adjustment, priors)

    def _parse_alpha(self, value: Any) -> Tensor:
        device = value.device if isinstance(value, Tensor) else torch.device("cpu")
        if isinstance(value, Tensor):
            self._refuse_grad("alpha", value)
            value = value.detach()
        a = _alpha_tensor(value, None, device, self._dtype())
        self._check_length("alpha", a)
        return a

    def forward(self, input: Tensor, target: Tensor) -> Tensor:
        """The loss of ``input`` logits (classes on dim 1) against ``target``."""
        if self.logit_adjustment != 0.0:
            input = self._adjusted(input)
        buffers = self._buffers
        gamma, alpha = buffers["gamma"], buffers["alpha"]
        if (
            alpha is None
            and gamma is not None
            and not gamma.dim()
            and gamma.is_cpu
            and not gamma.requires_grad
            and self.label_smoothing == 0.0
            and self.poly1 == 0.0
            and isinstance(input, Tensor)
        ):
            out = _lean_call(
                input, target, gamma, self._static_gamma(), self.ignore_index, self.reduction
            )
            if out is not None:
                return out
        x, t, unbatched, is_index, masked = _check_inputs(input, target, self.ignore_index)
        dtype = compute_dtype(x.dtype)
        if gamma is not None:
            if gamma.dim() or not gamma.is_cpu:  # a 0-d CPU γ suits any device and length
                check_device("loss.gamma", gamma, x.device)
                check_per_class_length("gamma", gamma, x.shape[1], _WHERE)
            if gamma.dtype != dtype:
                gamma = gamma.to(dtype)
        if alpha is not None:
            check_device("loss.alpha", alpha, x.device)
            check_per_class_length("alpha", alpha, x.shape[1], _WHERE)
            if alpha.dtype != dtype:
                alpha = alpha.to(dtype)
        policy = self.gamma_policy.as_tuple() if self.gamma_policy is not None else None
        return _softmax_focal_loss(
            x, t, gamma, policy, alpha, self.ignore_index, self.reduction,
            self.label_smoothing, self.poly1, is_index, masked, unbatched,
            self._static_gamma,
        )  # fmt: skip

    def extra_repr(self) -> str:
        text = super().extra_repr()
        if self.logit_adjustment != 0.0:
            text += f", logit_adjustment={self.logit_adjustment}, class_priors={self.class_priors}"
        return text

    def encode_target(self, indices: Tensor, num_classes: int) -> Tensor:
        """The target this loss takes for class ``indices``: the indices themselves."""
        return indices

    def alpha_from_class_weights(self, weights: Tensor) -> Tensor:
        """α for per-class weights (mean 1): the weights themselves, as ``cross_entropy``'s
        ``weight``."""
        return weights

    def _statistics_sums(
        self, x: Tensor, target: Tensor, weight: Tensor | None
    ) -> dict[str, Tensor]:
        if self.logit_adjustment != 0.0:
            x = self._adjusted(x)
        if target.is_floating_point():
            target = target.argmax(dim=1)
        valid = target != self.ignore_index
        nll = torch.nn.functional.cross_entropy(
            x, target, reduction="none", ignore_index=self.ignore_index
        )
        p_t = torch.exp(-nll)
        gamma = self._gamma_at(p_t, torch.where(valid, target, 0))
        modulating = torch.pow(-torch.expm1(-nll), gamma)
        return {
            "modulating": (modulating * valid).sum(),
            "easy_fraction": ((p_t > 0.5) & valid).sum().float(),
            "count": valid.sum().float(),
        }

    def _statistics_from_sums(self, sums: dict[str, Tensor]) -> dict[str, Tensor]:
        count = sums["count"].clamp_min(1.0)
        return {
            "modulating": sums["modulating"] / count,
            "easy_fraction": sums["easy_fraction"] / count,
        }
