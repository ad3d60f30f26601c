"""FocalPlots: the γ curve is the γ each step's loss used, from step 0; a flat γ draws nothing."""

from __future__ import annotations

import logging

import pytest
from _trainer_utils import fast_trainer
from lightning.pytorch.callbacks import ModelCheckpoint

from lightning_focal.callbacks import FocalPlots, GammaWarmup
from lightning_focal.demos import BoringFocalClassifier, ImbalancedBlobsDataModule
from lightning_focal.schedules import ConstantGamma, LinearRamp

# 128 training samples in batches of 16: 8 optimiser steps per epoch.
COUNTS = (96, 24, 8)


class GammaProbeClassifier(BoringFocalClassifier):
    """Records γ as the loss sees it in each training step, and has a test loop."""

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self.gamma_in_loss: list[tuple[int, float]] = []

    def training_step(self, batch, batch_idx):
        self.gamma_in_loss.append((self.trainer.global_step, float(self.focal_loss.gamma)))
        return super().training_step(batch, batch_idx)

    def test_step(self, batch, batch_idx) -> None:
        x, y = batch
        self.log("test/acc", (self(x).argmax(1) == y).float().mean())


@pytest.mark.parametrize("plots_first", [True, False], ids=["plots-first", "warmup-first"])
def test_gamma_curve_is_the_schedule_from_step_zero_in_any_callback_order(tmp_path, plots_first):
    # γ=2 at init: the old curve started with it at step 0 when FocalPlots ran first
    schedule = LinearRamp(start=0.0, end=2.0, steps=8)
    plots, warmup = FocalPlots(output_dir=str(tmp_path)), GammaWarmup(schedule)
    callbacks = [plots, warmup] if plots_first else [warmup, plots]
    trainer = fast_trainer(tmp_path, max_steps=12, callbacks=callbacks)
    model = GammaProbeClassifier(gamma=2.0)
    datamodule = ImbalancedBlobsDataModule(COUNTS)
    trainer.fit(model, datamodule)

    assert plots.steps == list(range(12))
    assert plots.gammas == pytest.approx([schedule(t) for t in range(12)])
    assert list(zip(plots.steps, plots.gammas)) == model.gamma_in_loss  # what the loss used
    trainer.test(model, dataloaders=datamodule.val_dataloader())
    assert [p.name for p in plots.written] == ["gamma.png"]
    assert (tmp_path / "plots" / "gamma.png").stat().st_size > 1000


def test_resumed_run_plots_the_whole_curve(tmp_path):
    schedule = LinearRamp(start=0.0, end=2.0, steps=7)

    def checkpoint(where: str) -> ModelCheckpoint:
        return ModelCheckpoint(dirpath=tmp_path / where, save_last=True, save_top_k=0)

    first = FocalPlots()
    trainer = fast_trainer(
        tmp_path,
        max_steps=8,
        enable_checkpointing=True,
        callbacks=[first, GammaWarmup(schedule), checkpoint("first")],
    )
    trainer.fit(GammaProbeClassifier(), ImbalancedBlobsDataModule(COUNTS))

    resumed = FocalPlots()
    trainer = fast_trainer(
        tmp_path,
        max_steps=16,
        enable_checkpointing=True,
        callbacks=[resumed, GammaWarmup(schedule), checkpoint("resumed")],
    )
    model, datamodule = GammaProbeClassifier(), ImbalancedBlobsDataModule(COUNTS)
    trainer.fit(model, datamodule, ckpt_path=tmp_path / "first" / "last.ckpt")
    assert model.gamma_in_loss[0][0] == 8  # it did resume
    assert resumed.steps == list(range(16))
    assert resumed.gammas == pytest.approx([schedule(t) for t in range(16)])
    # testing an earlier checkpoint restores callback state too: the curve stays whole
    trainer.test(model, datamodule.val_dataloader(), ckpt_path=tmp_path / "first" / "last.ckpt")
    assert resumed.steps == list(range(16))


def test_constant_gamma_writes_no_gamma_plot_and_says_why(tmp_path, caplog):
    plots = FocalPlots(output_dir=str(tmp_path))
    trainer = fast_trainer(
        tmp_path, max_steps=4, callbacks=[plots, GammaWarmup(ConstantGamma(gamma=1.5))]
    )
    model, datamodule = GammaProbeClassifier(), ImbalancedBlobsDataModule(COUNTS)
    trainer.fit(model, datamodule)
    assert plots.gammas == [1.5] * 4
    with caplog.at_level(logging.INFO):
        trainer.test(model, dataloaders=datamodule.val_dataloader())
    assert plots.written == [] and not (tmp_path / "plots" / "gamma.png").exists()
    assert "γ was 1.5 at every step, so no gamma.png" in caplog.text
