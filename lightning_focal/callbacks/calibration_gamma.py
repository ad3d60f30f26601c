"""``CalibrationGamma``: adapt γ between epochs from a logged calibration gap."""

from __future__ import annotations

from typing import Any

import lightning.pytorch as pl
from lightning.fabric.utilities.exceptions import MisconfigurationException
from lightning.pytorch.callbacks import Callback
from typing_extensions import override

from ._common import require_focal_losses
from .gamma_warmup import GammaWarmup

__all__ = ["CalibrationGamma"]


class CalibrationGamma(Callback):
    r"""Raise γ when validation predictions are over-confident, lower it when under-confident.

    Like ``EarlyStopping(monitor=...)``, it reads a metric the module logs: ``monitor`` names
    the signed gap ``g = mean(confidence) - accuracy`` over the validation set (confidence =
    top-label probability), found in ``trainer.callback_metrics`` when validation ends
    (not after the sanity check). :class:`~lightning_focal.models.TimmClassifier` logs it as
    ``val/calibration_gap`` (:class:`~lightning_focal.metrics.MulticlassCalibrationGap`,
    beside the ECE ``val/ece``); any module that logs such a gap can use the callback. Then

    * ``g > tolerance`` (over-confident): ``γ <- min(γ + step, max_gamma)``;
    * ``g < -tolerance`` (under-confident): ``γ <- max(γ - step, min_gamma)``;
    * otherwise γ stays.

    Focal loss with a larger γ lowers confidence (Mukhoti et al., 2020), so the loop drives
    the gap towards 0 within the bounds. Per-class γ moves by the same step. It sets γ, so it
    logs ``focal/gamma`` to the trainer's loggers after each update (as
    ``LearningRateMonitor`` does: ``self.log`` is not allowed in ``on_validation_end``).
    Every rank reads the same synced metric, so every rank sets the same γ. Do not combine
    with :class:`GammaWarmup`: both would own γ.

    Args:
        monitor: key of the signed confidence gap in ``trainer.callback_metrics``.
        step: change of γ per validation, > 0.
        min_gamma: lower bound, >= 0.
        max_gamma: upper bound, >= min_gamma.
        tolerance: dead band of the gap, >= 0.

    Example:
        >>> cb = CalibrationGamma(monitor="val/calibration_gap", step=0.5, max_gamma=5.0)
        >>> cb.next_gamma(2.0, gap=0.10), cb.next_gamma(2.0, gap=-0.10), cb.next_gamma(4.8, gap=0.2)
        (2.5, 1.5, 5.0)
    """

    def __init__(
        self,
        monitor: str = "val/calibration_gap",
        step: float = 0.5,
        min_gamma: float = 0.0,
        max_gamma: float = 5.0,
        tolerance: float = 0.01,
    ) -> None:
        if step <= 0:
            raise ValueError(f"step must be > 0, got {step}")
        if min_gamma < 0 or max_gamma < min_gamma:
            raise ValueError(f"need 0 <= min_gamma <= max_gamma, got {min_gamma}, {max_gamma}")
        if tolerance < 0:
            raise ValueError(f"tolerance must be >= 0, got {tolerance}")
        self.monitor = monitor
        self.step = step
        self.min_gamma = min_gamma
        self.max_gamma = max_gamma
        self.tolerance = tolerance
        self.gamma_history: list[float] = []

    def next_gamma(self, gamma: float, gap: float) -> float:
        """The rule: γ after a validation whose confidence gap was ``gap``."""
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

    def _read_gap(self, trainer: pl.Trainer) -> float:
        metrics = trainer.callback_metrics
        if self.monitor not in metrics:
            raise MisconfigurationException(
                f"CalibrationGamma(monitor={self.monitor!r}) found no such metric; log it in the"
                f" module's validation (e.g. a torchmetrics MeanMetric of confidence - correct)."
                f" Available metrics are: {', '.join(sorted(metrics)) or 'none'}"
            )
        return float(metrics[self.monitor])

    @override
    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.sanity_checking or trainer.state.fn != "fit":
            return
        gap = self._read_gap(trainer)
        losses = require_focal_losses(pl_module, "CalibrationGamma")
        current = float(next(iter(losses.values())).gamma.float().mean())
        new = self.next_gamma(current, gap)
        delta = new - current
        for loss in losses.values():
            loss.gamma = (loss.gamma.float() + delta).clamp(self.min_gamma, self.max_gamma)
        self.gamma_history.append(new)
        step = trainer.fit_loop.epoch_loop._batches_that_stepped
        for logger in trainer.loggers:
            logger.log_metrics({"focal/gamma": new}, step=step)

    @override
    def state_dict(self) -> dict[str, Any]:
        return {"gamma_history": list(self.gamma_history)}

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.gamma_history = list(state_dict.get("gamma_history", []))
