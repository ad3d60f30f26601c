"""``GammaWarmup``: drive γ of every focal loss in the module from a schedule."""

from __future__ import annotations

from typing import Any

import lightning.pytorch as pl
from lightning.fabric.utilities.exceptions import MisconfigurationException
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.utilities import rank_zero_warn
from typing_extensions import override

from ..schedules import GammaSchedule
from ._common import require_focal_losses

__all__ = ["GammaWarmup"]


class GammaWarmup(Callback):
    """Set γ of every :class:`~lightning_focal.FocalLoss` in the module from ``schedule``.

    γ at optimiser step t is ``schedule(t, total)``, a pure function of t: every DDP rank
    computes the same value without communication, and a run resumed from a mid-warmup
    checkpoint sees exactly the values an uninterrupted run sees. It is written in place
    into the loss buffers in ``on_train_batch_start``, so a compiled model does not
    recompile. The callback keeps no state of its own. At the start of training it warns when
    the run ends before the schedule's :meth:`~lightning_focal.schedules.GammaSchedule.span`,
    that is, before γ reaches its final value.

    Args:
        schedule: a :class:`~lightning_focal.schedules.GammaSchedule`.
        interval: ``"step"`` counts optimiser steps (``trainer.global_step``; gradient
            accumulation does not skew it), total = ``trainer.estimated_stepping_batches``;
            ``"epoch"`` counts epochs, total = ``trainer.max_epochs``.
        log: log ``focal/gamma`` (mean over classes) on each step, unless the module's
            :class:`~lightning_focal.FocalLossMixin` diagnostics already do.

    Example:
        >>> from lightning_focal.callbacks import GammaWarmup
        >>> from lightning_focal.schedules import LinearRamp
        >>> GammaWarmup(LinearRamp(start=0.0, end=2.0, steps=100))
        GammaWarmup(schedule=LinearRamp(...), interval='step')
    """

    def __init__(self, schedule: GammaSchedule, interval: str = "step", log: bool = True) -> None:
        if not isinstance(schedule, GammaSchedule):
            raise TypeError(
                f"schedule must be a lightning_focal.schedules.GammaSchedule, got {type(schedule).__name__}"
            )
        if interval not in ("step", "epoch"):
            raise ValueError(f"interval must be 'step' or 'epoch', got {interval!r}")
        self.schedule = schedule
        self.interval = interval
        self.log = log
        self._losses: list = []

    def __repr__(self) -> str:
        return f"{type(self).__name__}(schedule={self.schedule!r}, interval={self.interval!r})"

    def _progress(self, trainer: pl.Trainer) -> tuple[int, int | None]:
        if self.interval == "step":
            # min(max_steps, epochs x optimiser steps per epoch); inf, or max_steps=-1 for an
            # iterable dataset, when the run's length is unknown
            total = trainer.estimated_stepping_batches
            return trainer.global_step, (int(total) if 0 < total < float("inf") else None)
        max_epochs = trainer.max_epochs if trainer.max_epochs and trainer.max_epochs > 0 else None
        return trainer.current_epoch, max_epochs

    def gamma_at(self, trainer: pl.Trainer) -> float | list[float]:
        """γ for the trainer's current progress."""
        step, total = self._progress(trainer)
        return self.schedule(step, total)

    @override
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if stage != "fit":
            return
        losses = require_focal_losses(pl_module, "GammaWarmup")
        policies = [n for n, loss in losses.items() if loss.gamma_policy is not None]
        if policies:
            raise MisconfigurationException(
                f"GammaWarmup cannot schedule {policies}: they use a sample-dependent γ policy"
            )

    @override
    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._losses = list(require_focal_losses(pl_module, "GammaWarmup").values())
        _, total = self._progress(trainer)
        try:
            self.schedule.validate(total)
        except ValueError as err:
            raise MisconfigurationException(f"GammaWarmup: invalid schedule: {err}") from err
        span = self.schedule.span(total)
        if total is not None and span is not None and span >= total:
            # the last batch runs at total - 1: γ would reach its final value only after the run
            unit, limit = (
                ("step", "max_steps") if self.interval == "step" else ("epoch", "max_epochs")
            )
            rank_zero_warn(
                f"GammaWarmup: {self.schedule!r} reaches its final γ at {unit} {span}, but the run "
                f"has {total} {unit}s (0 to {total - 1}), so γ never gets there. Shorten the "
                "schedule (`schedule.steps`, `schedule.fraction`, `schedule.delay` or "
                "`schedule.milestones`; in the app under `callbacks.gamma_warmup.schedule.`) "
                f"or lengthen the run (`trainer.{limit}`)."
            )

    @override
    def on_train_batch_start(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        gamma = self.gamma_at(trainer)
        for loss in self._losses:
            loss.gamma = gamma
        if self.log:
            value = sum(gamma) / len(gamma) if isinstance(gamma, list) else gamma
            pl_module.log("focal/gamma", float(value), on_step=True, on_epoch=False, batch_size=1)
