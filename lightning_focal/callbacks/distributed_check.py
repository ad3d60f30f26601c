"""``DistributedConsistencyCheck``: prove that every DDP rank trains with the same γ and α."""

from __future__ import annotations

from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import Callback
from typing_extensions import override

from ..mixin import find_focal_losses

__all__ = ["DistributedConsistencyCheck"]


class DistributedConsistencyCheck(Callback):
    """All-gather γ and α of every focal loss after each training step and compare ranks.

    Logs ``ddp/focal_spread`` (largest max-min over ranks of any γ or α entry; 0 when the
    ranks agree) and raises ``RuntimeError`` when it exceeds ``atol``. On one process it
    logs 0. Costs one small all-gather per ``every_n_steps``.

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
            for buf in (loss.gamma, loss.alpha)
            if buf is not None
        ]
        if not values:
            return
        local = torch.cat(values)
        gathered = trainer.strategy.all_gather(local)
        if gathered.dim() == local.dim():
            gathered = gathered.unsqueeze(0)
        spread = float((gathered.max(dim=0).values - gathered.min(dim=0).values).max())
        pl_module.log("ddp/focal_spread", spread, on_step=True, on_epoch=False, batch_size=1)
        if spread > self.atol:
            raise RuntimeError(
                f"DDP ranks disagree on focal-loss γ/α by {spread} at step {trainer.global_step}: "
                f"{gathered.tolist()}"
            )
