"""``FocalPlots``: save the γ curve, per-class recall and a reliability diagram as PNGs."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import lightning.pytorch as pl
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.utilities import rank_zero_only
from typing_extensions import override

from ..mixin import find_focal_losses

__all__ = ["FocalPlots"]


class FocalPlots(Callback):
    """Record γ while training; after testing, draw the figures and log them to wandb.

    Files: ``gamma.png`` (γ per optimiser step), ``per_class_recall.png`` (from the logged
    ``test/recall/<class>`` with training counts from ``datamodule.class_counts()``) and
    ``reliability.png`` (from the module's ``test_summary["reliability"]``), written to
    ``output_dir`` (default: the trainer's log dir) on rank 0. A ``WandbLogger`` among the
    trainer's loggers also gets them as images.

    Example:
        >>> FocalPlots(output_dir="plots").output_dir
        'plots'
    """

    def __init__(self, output_dir: str | None = None) -> None:
        self.output_dir = output_dir
        self.steps: list[int] = []
        self.gammas: list[float] = []
        self.written: list[Path] = []

    @override
    def on_train_batch_start(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        losses = [loss for loss in find_focal_losses(pl_module).values() if loss.gamma is not None]
        if losses and (not self.steps or self.steps[-1] != trainer.global_step):
            self.steps.append(trainer.global_step)
            self.gammas.append(float(losses[0].gamma.float().mean()))

    def _dir(self, trainer: pl.Trainer) -> Path:
        return Path(self.output_dir or trainer.log_dir or trainer.default_root_dir) / "plots"

    @override
    @rank_zero_only
    def on_test_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        from ..plots import plot_gamma_curve, plot_per_class_recall, plot_reliability

        out = self._dir(trainer)
        if self.steps:
            self.written.append(plot_gamma_curve(self.steps, self.gammas, out / "gamma.png"))
        names = list(getattr(pl_module, "class_names", []) or [])
        metrics = trainer.callback_metrics
        recall = [
            float(metrics[f"test/recall/{n}"]) for n in names if f"test/recall/{n}" in metrics
        ]
        if names and len(recall) == len(names):
            counts = None
            datamodule = getattr(trainer, "datamodule", None)
            if datamodule is not None and callable(getattr(datamodule, "class_counts", None)):
                counts = [int(c) for c in datamodule.class_counts()]
            self.written.append(
                plot_per_class_recall(recall, names, counts, out / "per_class_recall.png")
            )
        summary = getattr(pl_module, "test_summary", {}) or {}
        if "reliability" in summary:
            self.written.append(plot_reliability(summary["reliability"], out / "reliability.png"))
        for logger in trainer.loggers:
            if type(logger).__name__ == "WandbLogger" and self.written:
                logger.log_image(
                    key="plots",
                    images=[str(p) for p in self.written],
                    caption=[p.stem for p in self.written],
                )
