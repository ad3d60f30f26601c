"""``CalibrationGamma``: adapt γ between epochs from validation calibration."""

from __future__ import annotations

from typing import Any

import lightning.pytorch as pl
from lightning.fabric.utilities.exceptions import MisconfigurationException
from lightning.pytorch.callbacks import Callback
from torch import Tensor
from torchmetrics import MeanMetric
from torchmetrics.classification import BinaryCalibrationError
from typing_extensions import override

from ._common import require_focal_losses
from .gamma_warmup import GammaWarmup

__all__ = ["CalibrationGamma"]


class CalibrationGamma(Callback):
    r"""Raise γ when validation predictions are over-confident, lower it when under-confident.

    The rule, applied after each validation epoch (not the sanity check): with the
    confidence gap ``g = mean(confidence) - accuracy`` over the validation set (confidence
    = max softmax probability, or max(p, 1-p) per sigmoid output),

    * ``g > tolerance`` (over-confident): ``γ <- min(γ + step, max_gamma)``;
    * ``g < -tolerance`` (under-confident): ``γ <- max(γ - step, min_gamma)``;
    * otherwise γ stays.

    Focal loss with a larger γ lowers confidence (Mukhoti et al., 2020), so the loop drives
    the gap towards 0 within the bounds. Logs ``focal/ece`` (expected calibration error, L1,
    ``n_bins`` bins, from torchmetrics), ``focal/calibration_gap`` and ``focal/gamma`` per
    epoch; all metrics are synced across DDP ranks. Per-class γ moves by the same step.
    Do not combine with :class:`GammaWarmup`: both would own γ.

    Args:
        step: change of γ per epoch, > 0.
        min_gamma: lower bound, >= 0.
        max_gamma: upper bound, >= min_gamma.
        tolerance: dead band of the gap, >= 0.
        n_bins: bins of the ECE.

    Example:
        >>> cb = CalibrationGamma(step=0.5, min_gamma=0.0, max_gamma=5.0)
        >>> cb.next_gamma(2.0, gap=0.10), cb.next_gamma(2.0, gap=-0.10), cb.next_gamma(4.8, gap=0.2)
        (2.5, 1.5, 5.0)
    """

    def __init__(
        self,
        step: float = 0.5,
        min_gamma: float = 0.0,
        max_gamma: float = 5.0,
        tolerance: float = 0.01,
        n_bins: int = 15,
    ) -> None:
        if step <= 0:
            raise ValueError(f"step must be > 0, got {step}")
        if min_gamma < 0 or max_gamma < min_gamma:
            raise ValueError(f"need 0 <= min_gamma <= max_gamma, got {min_gamma}, {max_gamma}")
        if tolerance < 0:
            raise ValueError(f"tolerance must be >= 0, got {tolerance}")
        self.step = step
        self.min_gamma = min_gamma
        self.max_gamma = max_gamma
        self.tolerance = tolerance
        self.n_bins = n_bins
        self.gamma_history: list[float] = []
        self._handles: list[Any] = []
        self._ece = BinaryCalibrationError(n_bins=n_bins, norm="l1")
        self._gap = MeanMetric()

    def next_gamma(self, gamma: float, gap: float) -> float:
        """The rule: γ after an epoch whose confidence gap was ``gap``."""
        if gap > self.tolerance:
            gamma = gamma + self.step
        elif gap < -self.tolerance:
            gamma = gamma - self.step
        return float(min(max(gamma, self.min_gamma), self.max_gamma))

    @override
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if stage != "fit":
            return
        if any(isinstance(cb, GammaWarmup) for cb in trainer.callbacks):
            raise MisconfigurationException("CalibrationGamma and GammaWarmup both set γ; use one")
        losses = require_focal_losses(pl_module, "CalibrationGamma")
        if any(loss.gamma_policy is not None for loss in losses.values()):
            raise MisconfigurationException(
                "CalibrationGamma cannot adapt a sample-dependent γ policy"
            )

    def _hook(self, module, args: tuple, kwargs: dict, output: Tensor) -> None:
        if module.training or len(args) < 2:
            return
        conf, correct = module.confidence(args[0], args[1].detach(), kwargs.get("weight"))
        if conf.numel() == 0:
            return
        # ECE of the top-label confidence: a binary calibration error of "was it right".
        self._ece.update(conf, correct.long())
        self._gap.update(conf - correct.float())

    @override
    def on_validation_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._ece.to(pl_module.device)
        self._gap.to(pl_module.device)
        self._ece.reset()
        self._gap.reset()
        if not trainer.sanity_checking:
            for loss in require_focal_losses(pl_module, "CalibrationGamma").values():
                self._handles.append(loss.register_forward_hook(self._hook, with_kwargs=True))

    @override
    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()

    @override
    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.sanity_checking or not self._handles:
            return
        losses = require_focal_losses(pl_module, "CalibrationGamma")
        if self._gap.update_count == 0:
            return
        ece = self._ece.compute()
        gap = float(self._gap.compute())
        first = next(iter(losses.values()))
        current = float(first.gamma.float().mean())
        new = self.next_gamma(current, gap)
        delta = new - current
        for loss in losses.values():
            loss.gamma = (loss.gamma.float() + delta).clamp(self.min_gamma, self.max_gamma)
        self.gamma_history.append(new)
        pl_module.log("focal/ece", ece, on_epoch=True)
        pl_module.log("focal/calibration_gap", gap, on_epoch=True)
        pl_module.log("focal/gamma", new, on_epoch=True)

    @override
    def state_dict(self) -> dict[str, Any]:
        return {"gamma_history": list(self.gamma_history)}

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.gamma_history = list(state_dict.get("gamma_history", []))
