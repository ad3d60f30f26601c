"""``FocalPlots``: save the γ curve, per-class recall and a reliability diagram as PNGs."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import lightning.pytorch as pl
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.utilities import rank_zero_info, rank_zero_only
from typing_extensions import override

from ..mixin import find_focal_losses

__all__ = ["FocalPlots"]


class FocalPlots(Callback):
    """Record γ while training; after testing, draw the figures and log them to wandb.

    Files: ``gamma.png`` (γ per optimiser step, from step 0), ``per_class_recall.png`` (from
    the logged ``test/recall/<class>`` with training counts from
    ``datamodule.class_counts()``) and ``reliability.png`` (from the module's
    ``test_summary["reliability"]``), written to ``output_dir`` (default: the trainer's log
    dir) on rank 0. A ``WandbLogger`` among the trainer's loggers also gets them as images.

    γ is read in ``on_train_batch_end``, as the step's loss used it, so the curve does not
    depend on whether ``GammaWarmup`` runs before or after this callback; the curve is kept
    in the checkpoint, so a resumed run still plots it from step 0. A γ that never changed
    (no schedule) gives no ``gamma.png``: a flat line says nothing the config does not.

    Example:
        >>> FocalPlots(output_dir="plots").output_dir
        'plots'
    """

    def __init__(self, output_dir: str | None = None) -> None:
        self.output_dir = output_dir
        self.steps: list[int] = []
        self.gammas: list[float] = []
        self.written: list[Path] = []
        self._step: int | None = None
        self._resumed: dict[str, Any] | None = None

    @override
    def on_train_batch_start(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        # global_step has moved on by on_train_batch_end
        self._step = trainer.global_step

    @override
    def on_train_batch_end(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
    ) -> None:
        # whatever sets γ (GammaWarmup in on_train_batch_start, CalibrationGamma between
        # epochs) has done so before the loss ran, in whichever order the callbacks are
        losses = [loss for loss in find_focal_losses(pl_module).values() if loss.gamma is not None]
        step = self._step
        if losses and step is not None and (not self.steps or self.steps[-1] != step):
            self.steps.append(step)
            self.gammas.append(float(losses[0].gamma.float().mean()))

    @override
    def state_dict(self) -> dict[str, Any]:
        return {"steps": list(self.steps), "gammas": list(self.gammas)}

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        # applied when training resumes, not when trainer.test(ckpt_path=best) loads an
        # earlier checkpoint: that would cut the curve back to the best step
        self._resumed = state_dict

    @override
    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._resumed is not None:
            self.steps = [int(s) for s in self._resumed.get("steps", [])]
            self.gammas = [float(g) for g in self._resumed.get("gammas", [])]
            self._resumed = None

    @override
    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        self._resumed = None  # what test/validate(ckpt_path=...) loaded is not a later fit's

    def _dir(self, trainer: pl.Trainer) -> Path:
        return Path(self.output_dir or trainer.log_dir or trainer.default_root_dir) / "plots"

    @override
    @rank_zero_only
    def on_test_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        from ..plots import plot_gamma_curve, plot_per_class_recall, plot_reliability

        out = self._dir(trainer)
        if self.steps and min(self.gammas) == max(self.gammas):
            rank_zero_info(
                f"FocalPlots: γ was {self.gammas[0]:g} at every step, so no gamma.png (a flat line)"
            )
        elif self.steps:
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
