"""Shared helpers for the Lightning tests (imported by tests through conftest's sys.path)."""

from __future__ import annotations

from typing import Any

import lightning.pytorch as pl
from lightning.pytorch.callbacks import Callback

from lightning_focal import FocalLossBase


class GammaRecorder(Callback):
    """Records (global_step, γ of every focal loss) as each training batch runs."""

    def __init__(self) -> None:
        self.seen: list[tuple[int, list[float]]] = []

    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, *args: Any
    ) -> None:
        losses = [m for m in pl_module.modules() if isinstance(m, FocalLossBase)]
        self.seen.append(
            (trainer.global_step - 1, [g for m in losses for g in m.gamma.flatten().tolist()])
        )


def fast_trainer(tmp_path, **kwargs: Any) -> pl.Trainer:
    options: dict[str, Any] = dict(
        default_root_dir=tmp_path,
        accelerator="cpu",
        devices=1,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
        num_sanity_val_steps=0,
        deterministic=True,
    )
    options.update(kwargs)
    return pl.Trainer(**options)
