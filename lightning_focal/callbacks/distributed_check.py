"""``DistributedConsistencyCheck``: prove that every DDP rank trains with the same γ and α."""

from __future__ import annotations

from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import Callback
from typing_extensions import override

from ..losses import DenseFocalLoss
from ..mixin import find_focal_losses

__all__ = ["DistributedConsistencyCheck"]


class DistributedConsistencyCheck(Callback):
    """All-gather γ, α (and class priors) of every focal loss after each training step and
    compare ranks.

    Logs ``ddp/focal_spread`` (largest max-min over ranks of any γ or α entry; 0 when the
    ranks agree) and raises ``RuntimeError`` when it exceeds ``atol``. On one process it
    logs 0. For a :class:`~lightning_focal.losses.DenseFocalLoss` it also gathers each
    rank's positive count and normaliser of the step and logs ``ddp/positives_mean`` (the
    mean over ranks of the local positives, what the ``batch`` normaliser must equal
    before its clamp to >= 1) and ``ddp/normalizer_spread`` (0 when every rank divided by
    the same number; more than ``atol`` raises too). Costs one or two small all-gathers
    per ``every_n_steps``.

    Example:
        >>> DistributedConsistencyCheck(every_n_steps=10).every_n_steps
        10
    """

    def __init__(self, every_n_steps: int = 1, atol: float = 0.0) -> None:
        if every_n_steps < 1:
            raise ValueError(f"every_n_steps must be >= 1, got {every_n_steps}")
        self.every_n_steps = every_n_steps
        self.atol = atol

    @override
    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, *args: Any
    ) -> None:
        if (trainer.global_step - 1) % self.every_n_steps:
            return
        values = [
            buf.detach().float().flatten()
            for loss in find_focal_losses(pl_module).values()
            for buf in (getattr(loss, name) for name in loss.value_buffers)
            if buf is not None
        ]
        if values:
            gathered = self._gather(trainer, torch.cat(values))
            self._check(pl_module, "ddp/focal_spread", "focal-loss γ/α/priors", gathered, trainer)
        dense = [m for m in find_focal_losses(pl_module).values() if isinstance(m, DenseFocalLoss)]
        for loss in dense[:1]:  # detectors have one classification loss
            local = torch.stack(
                [
                    loss.last_num_positives.float().reshape(()),
                    loss.last_normalizer.float().reshape(()),
                ]
            ).to(pl_module.device)
            gathered = self._gather(trainer, local)
            pl_module.log(
                "ddp/positives_mean",
                float(gathered[:, 0].mean()),
                on_step=True,
                on_epoch=False,
                batch_size=1,
            )
            self._check(
                pl_module, "ddp/normalizer_spread", "the focal normaliser", gathered[:, 1:], trainer
            )

    @staticmethod
    def _gather(trainer: pl.Trainer, local: torch.Tensor) -> torch.Tensor:
        """``(world_size, *local.shape)`` (``(1, ...)`` on one process)."""
        gathered = trainer.strategy.all_gather(local)
        return gathered.unsqueeze(0) if gathered.dim() == local.dim() else gathered

    def _check(
        self,
        pl_module: pl.LightningModule,
        key: str,
        what: str,
        gathered: torch.Tensor,
        trainer: pl.Trainer,
    ) -> None:
        spread = float((gathered.max(dim=0).values - gathered.min(dim=0).values).max())
        pl_module.log(key, spread, on_step=True, on_epoch=False, batch_size=1)
        if spread > self.atol:
            raise RuntimeError(
                f"DDP ranks disagree on {what} by {spread} at step {trainer.global_step}: "
                f"{gathered.tolist()}"
            )
