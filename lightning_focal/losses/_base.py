"""``FocalLossBase``: the γ/α buffers, their setters and state-dict handling that every
focal-loss module shares. The families (:class:`~lightning_focal.SoftmaxFocalLoss`,
:class:`~lightning_focal.SigmoidFocalLoss`) add how they read α and compute the loss."""

from __future__ import annotations

import abc
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from ._common import (
    as_class_tensor,
    check_gamma_values,
    check_reduction,
    gamma_value,
    int_value,
    static_gamma,
)
from .gamma_policy import SampleDependentGamma

__all__ = ["AlphaArg", "FocalLossBase", "GammaArg"]

GammaArg = float | Sequence[float] | Tensor | SampleDependentGamma

STATISTICS_CHUNK = 1 << 16
"""Elements per chunk of :meth:`FocalLossBase.statistics`."""
AlphaArg = float | Sequence[float] | Tensor | None


class FocalLossBase(nn.Module, abc.ABC):
    """Owns γ and α as buffers: they follow ``.to()``, land in ``state_dict`` and are read
    by a compiled graph as inputs, so changing their values never recompiles.

    Assign them as plain attributes — ``loss.gamma = 0.5``, ``loss.gamma = [1.0, 2.0, 3.0]``,
    ``loss.gamma = FLSD53``, ``loss.alpha = torch.tensor([...])``, ``loss.alpha = None``: the
    value is validated as the constructor validates it and copied into the buffer in place
    (when the shape is unchanged). Reading gives the buffer (``None`` for γ under a
    sample-dependent policy, which is then ``loss.gamma_policy``). A checkpoint's γ and α are
    validated when it is loaded, naming the key at fault.

    Subclasses define :meth:`_parse_alpha` and ``forward``.

    Example:
        >>> from lightning_focal import SoftmaxFocalLoss
        >>> loss = SoftmaxFocalLoss(gamma=2.0)
        >>> loss.gamma = 0.5
        >>> loss.gamma
        tensor(0.5000)
        >>> loss.gamma = -1.0
        Traceback (most recent call last):
          ...
        ValueError: `gamma` must be a finite γ >= 0, got -1.0
    """

    gamma: Tensor | None
    alpha: Tensor | None
    value_buffers: ClassVar[tuple[str, ...]] = ("gamma", "alpha")
    """The buffers assigned as attributes and checked at load; a family may add its own."""

    def __init__(
        self,
        gamma: GammaArg = 2.0,
        alpha: AlphaArg = None,
        reduction: str = "mean",
        *,
        poly1: float = 0.0,
        num_classes: int | None = None,
    ) -> None:
        super().__init__()
        self.reduction = check_reduction(reduction)
        self.poly1 = float(poly1)
        self.num_classes = None if num_classes is None else int_value(num_classes, "num_classes", 1)
        self.gamma_policy: SampleDependentGamma | None = None
        self.register_buffer("gamma", None)
        self.register_buffer("alpha", None)
        self.gamma = gamma
        self.alpha = alpha

    # ---- assignment ----------------------------------------------------------------------

    def __setattr__(self, name: str, value: Any) -> None:
        if name in self.value_buffers and name in self.__dict__.get("_buffers", ()):
            with torch.no_grad():
                self._assign(name, value)
            return
        super().__setattr__(name, value)

    def _assign(self, name: str, value: Any) -> None:
        """Validate ``value`` and write it into buffer ``name`` (one of :attr:`value_buffers`)."""
        if name == "gamma":
            self._assign_gamma(value)
        else:
            self._write("alpha", None if value is None else self._parse_alpha(value))

    def set_gamma(self, gamma: GammaArg) -> None:
        """``loss.gamma = gamma`` under a method name (for ``functools.partial`` and lambdas)."""
        self.gamma = gamma

    def set_alpha(self, alpha: AlphaArg) -> None:
        """``loss.alpha = alpha`` under a method name."""
        self.alpha = alpha

    def _assign_gamma(self, value: Any) -> None:
        if isinstance(value, Mapping):  # a policy from a config: {thresholds, gammas}
            value = SampleDependentGamma(**value)
        if isinstance(value, SampleDependentGamma):
            self.gamma_policy = value
            self._buffers["gamma"] = None
            return
        self._refuse_grad("gamma", value)
        if isinstance(value, Tensor):
            t = as_class_tensor("gamma", value.detach(), value.device, self._dtype())
            check_gamma_values(t)
        else:
            parsed = gamma_value(value, "gamma")
            t = as_class_tensor("gamma", parsed, torch.device("cpu"), self._dtype())
        self._check_length("gamma", t)
        self.gamma_policy = None
        self._write("gamma", t)

    @staticmethod
    def _refuse_grad(name: str, value: Any) -> None:
        if isinstance(value, Tensor) and value.requires_grad:
            raise ValueError(
                f"loss.{name} is a buffer that holds values, so a tensor that requires grad "
                f"would be detached; to learn {name}, pass the tensor to the function "
                f"(e.g. softmax_focal_loss(..., {name}=param)), which differentiates through it"
            )

    @abc.abstractmethod
    def _parse_alpha(self, value: Any) -> Tensor | None:
        """α as a validated tensor (or ``None`` for no α) in this family's convention."""

    def _check_length(self, name: str, value: Tensor) -> None:
        if value.dim() != 1:
            return
        if self.num_classes is not None and value.numel() != self.num_classes:
            raise ValueError(
                f"{name} has {value.numel()} per-class values, expected num_classes="
                f"{self.num_classes}"
            )
        for other_name in self.value_buffers:
            other = self._buffers.get(other_name)
            if (
                other_name != name
                and other is not None
                and other.dim() == 1
                and other.numel() != value.numel()
            ):
                raise ValueError(
                    f"{name} has {value.numel()} per-class values but the loss's {other_name} "
                    f"has {other.numel()}"
                )

    def _device(self) -> torch.device:
        for buf in self._buffers.values():
            if buf is not None:
                return buf.device
        return torch.device("cpu")

    def _dtype(self) -> torch.dtype:
        # a buffer that changes shape keeps the dtype the module was moved to
        for name in ("gamma", "alpha"):
            buf = self._buffers.get(name)
            if buf is not None:
                return buf.dtype
        return torch.float32

    def _write(self, name: str, value: Tensor | None) -> None:
        """Copy ``value`` into buffer ``name`` in place when the shape is unchanged."""
        current = self._buffers.get(name)
        if value is None:
            self._buffers[name] = None
        elif current is not None and current.shape == value.shape:
            current.copy_(value)
        else:
            self._buffers[name] = value.to(device=self._device(), dtype=self._dtype()).clone()

    def _static_gamma(self) -> int | None:
        """:func:`static_gamma` of the γ buffer, read again only after it changed (its
        version counter moves with every in-place write; the cache holds the buffer, so
        no other tensor can take its place): a read costs ~1 µs on the CPU every call."""
        gamma = self._buffers.get("gamma")
        if gamma is None or self.gamma_policy is not None:
            return None
        cached = self.__dict__.get("_gint_cache")
        if cached is not None and cached[0] is gamma and cached[1] == gamma._version:
            return cached[2]
        gint = static_gamma(gamma, None)
        self.__dict__["_gint_cache"] = (gamma, gamma._version, gint)
        return gint

    # ---- diagnostics ---------------------------------------------------------------------

    @torch.no_grad()
    def statistics(
        self, logits: Tensor, target: Tensor, weight: Tensor | None = None
    ) -> dict[str, Tensor]:
        """What the focal modulation does to a batch, as 0-d float32 tensors: ``modulating``
        (mean (1-p_t)^γ) and ``easy_fraction`` (share with p_t > 0.5) over the counted
        elements, plus what the family adds (:meth:`_statistics_sums`).

        Reduced over chunks of samples, so its temporaries stay cache-sized whatever the
        batch.

        Example:
            >>> import torch
            >>> from lightning_focal import SoftmaxFocalLoss
            >>> stats = SoftmaxFocalLoss(gamma=2.0).statistics(
            ...     torch.tensor([[4.0, 0.0], [0.0, 0.0]]), torch.tensor([0, 1]))
            >>> round(float(stats["easy_fraction"]), 2), round(float(stats["modulating"]), 4)
            (0.5, 0.1252)
        """
        x, t = logits.detach(), target.detach()
        if x.dim() == 1:
            x, t = x.unsqueeze(0), t.unsqueeze(0)
        w = None
        if weight is not None:
            w = weight.detach()
            w = (w.unsqueeze(-1) if w.dim() == x.dim() - 1 else w).expand(x.shape)
        step = max(1, STATISTICS_CHUNK // max(1, x[0].numel()))
        sums: dict[str, Tensor] = {}
        for i in range(0, x.shape[0], step):
            part = self._statistics_sums(
                x[i : i + step].float(), t[i : i + step], None if w is None else w[i : i + step]
            )
            sums = {k: sums[k] + v for k, v in part.items()} if sums else part
        return self._statistics_from_sums(sums)

    @abc.abstractmethod
    def _statistics_sums(
        self, x: Tensor, target: Tensor, weight: Tensor | None
    ) -> dict[str, Tensor]:
        """Sums (and counts) of one chunk of samples, added up by :meth:`statistics`."""

    @abc.abstractmethod
    def _statistics_from_sums(self, sums: dict[str, Tensor]) -> dict[str, Tensor]:
        """The statistics from the summed chunks."""

    def _gamma_at(self, p_t: Tensor, per_class: Tensor | None) -> Tensor:
        """γ for elements with probability ``p_t``; ``per_class``: the class of each (for
        a per-class γ), or ``None`` when classes lie on the last dimension."""
        if self.gamma_policy is not None:
            return self.gamma_policy.gamma_for(p_t)
        gamma = self.gamma.float()
        if gamma.dim() == 1 and per_class is not None:
            return gamma[per_class]
        return gamma

    # ---- checkpoints ---------------------------------------------------------------------

    def _load_from_state_dict(self, state_dict: dict[str, Any], prefix: str, *args: Any) -> None:
        # γ and α may change shape (scalar -> per-class) or appear (None -> tensor) during a
        # run; adopt the checkpoint's, after checking them as an assignment would.
        error_msgs: list[str] = args[-1]
        incoming = {
            n: state_dict[prefix + n] for n in self.value_buffers if prefix + n in state_dict
        }

        saved = {n: self._buffers.get(n) for n in incoming}
        saved_policy = self.gamma_policy
        device = self._device()
        # a buffer of the same shape keeps the module's dtype; a new one takes the checkpoint's
        dtypes = {
            name: current.dtype
            if current is not None and current.shape == incoming[name].shape
            else (incoming[name].dtype if incoming[name].is_floating_point() else self._dtype())
            for name, current in saved.items()
        }
        with torch.no_grad():
            for name in incoming:
                self._buffers[name] = None  # no stale length check against the old value
            for name, value in incoming.items():
                try:
                    self._assign(name, value)
                except (ValueError, TypeError) as err:
                    error_msgs.append(f"invalid value for {prefix + name}: {err}")
                    self._buffers.update(saved)
                    self.gamma_policy = saved_policy
                    return
                if self._buffers[name] is not None:
                    self._buffers[name] = self._buffers[name].to(device=device, dtype=dtypes[name])
        if incoming:
            # a checkpoint of this loss without α (or priors) had none: adopt that too (a
            # deferred α, DRW, switched on after the best checkpoint was written)
            for name in self.value_buffers:
                if name != "gamma" and name not in incoming:
                    self._buffers[name] = None
        super()._load_from_state_dict(state_dict, prefix, *args)

    def extra_repr(self) -> str:
        gamma = self.gamma_policy if self.gamma_policy is not None else self.gamma
        return f"gamma={gamma}, alpha={self.alpha}, reduction={self.reduction!r}"
