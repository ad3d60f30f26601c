from __future__ import annotations

import pytest
import torch
from _trainer_utils import GammaRecorder, fast_trainer
from lightning.fabric.utilities.exceptions import MisconfigurationException
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.demos.boring_classes import BoringModel

from lightning_focal.callbacks import GammaWarmup
from lightning_focal.demos import BoringFocalClassifier, ImbalancedBlobsDataModule
from lightning_focal.schedules import CosineRamp, LinearRamp, MultiStepGamma

# 128 training samples in batches of 16: 8 optimiser steps per epoch.
COUNTS = (96, 24, 8)


def test_gamma_follows_schedule_step_by_step(tmp_path):
    schedule = LinearRamp(start=0.0, end=2.0, steps=10, delay=2)
    recorder = GammaRecorder()
    trainer = fast_trainer(tmp_path, max_epochs=2, callbacks=[GammaWarmup(schedule), recorder])
    trainer.fit(BoringFocalClassifier(), ImbalancedBlobsDataModule(COUNTS))
    steps = [step for step, _ in recorder.seen]
    assert steps == list(range(16))
    assert [g[0] for _, g in recorder.seen] == pytest.approx([schedule(t) for t in steps])
    assert recorder.seen[0][1][0] == 0.0 and recorder.seen[-1][1][0] == 2.0


def test_fraction_of_estimated_stepping_batches(tmp_path):
    schedule = CosineRamp(start=0.5, end=3.0, fraction=0.5)
    recorder = GammaRecorder()
    trainer = fast_trainer(tmp_path, max_epochs=2, callbacks=[GammaWarmup(schedule), recorder])
    trainer.fit(BoringFocalClassifier(), ImbalancedBlobsDataModule(COUNTS))
    assert [g[0] for _, g in recorder.seen] == pytest.approx([schedule(t, 16) for t in range(16)])
    assert recorder.seen[8][1][0] == pytest.approx(3.0)


def test_gradient_accumulation_counts_optimizer_steps(tmp_path):
    schedule = LinearRamp(start=0.0, end=1.0, steps=4)
    recorder = GammaRecorder()
    trainer = fast_trainer(
        tmp_path,
        max_epochs=1,
        accumulate_grad_batches=2,
        callbacks=[GammaWarmup(schedule), recorder],
    )
    trainer.fit(BoringFocalClassifier(), ImbalancedBlobsDataModule(COUNTS))
    gammas = [g[0] for _, g in recorder.seen]
    # 8 micro-batches, 4 optimiser steps: each γ is held for the two micro-batches of a step.
    assert gammas == pytest.approx([0.0, 0.0, 0.25, 0.25, 0.5, 0.5, 0.75, 0.75])


def test_epoch_interval_and_per_class_values(tmp_path):
    schedule = MultiStepGamma(values=[[0.0, 1.0, 2.0], [1.0, 2.0, 3.0]], milestones=[1])
    recorder = GammaRecorder()
    trainer = fast_trainer(
        tmp_path, max_epochs=2, callbacks=[GammaWarmup(schedule, interval="epoch"), recorder]
    )
    trainer.fit(BoringFocalClassifier(), ImbalancedBlobsDataModule(COUNTS))
    assert recorder.seen[0][1] == [0.0, 1.0, 2.0]
    assert recorder.seen[-1][1] == [1.0, 2.0, 3.0]


def test_resume_mid_warmup_matches_uninterrupted_run(tmp_path):
    def run(root, max_epochs, ckpt_path=None, checkpoint=False):
        recorder = GammaRecorder()
        callbacks = [GammaWarmup(LinearRamp(start=0.0, end=2.0, steps=20)), recorder]
        if checkpoint:
            callbacks.append(ModelCheckpoint(dirpath=root, save_last=True))
        trainer = fast_trainer(
            root, max_epochs=max_epochs, callbacks=callbacks, enable_checkpointing=checkpoint
        )
        torch.manual_seed(0)
        trainer.fit(BoringFocalClassifier(), ImbalancedBlobsDataModule(COUNTS), ckpt_path=ckpt_path)
        return recorder.seen

    full = run(tmp_path / "full", max_epochs=3)
    first = run(tmp_path / "part", max_epochs=1, checkpoint=True)
    ckpt = tmp_path / "part" / "last.ckpt"
    state = torch.load(ckpt, weights_only=True)
    assert state["global_step"] == 8
    assert state["state_dict"]["focal_loss.gamma"].item() == pytest.approx(full[7][1][0])
    resumed = run(tmp_path / "part", max_epochs=3, ckpt_path=str(ckpt))
    assert first == full[:8]
    assert resumed == full[8:]  # exactly the same (step, γ) pairs, with no γ reset


def test_checkpoint_state_is_primitive(tmp_path):
    trainer = fast_trainer(
        tmp_path,
        max_steps=3,
        enable_checkpointing=True,
        callbacks=[
            GammaWarmup(LinearRamp(start=0.0, end=1.0, steps=10)),
            ModelCheckpoint(dirpath=tmp_path, save_last=True),
        ],
    )
    trainer.fit(BoringFocalClassifier(), ImbalancedBlobsDataModule(COUNTS))
    state = torch.load(tmp_path / "last.ckpt", weights_only=True)
    (key,) = [k for k in state["callbacks"] if k.startswith("GammaWarmup")]
    assert state["callbacks"][key] == {
        "last_step": 2,
        "last_gamma": pytest.approx(0.2),
        "interval": "step",
    }


def test_gamma_logged(tmp_path):
    trainer = fast_trainer(
        tmp_path, max_steps=5, callbacks=[GammaWarmup(LinearRamp(start=0.0, end=2.0, steps=10))]
    )
    trainer.fit(BoringFocalClassifier(), ImbalancedBlobsDataModule(COUNTS))
    assert float(trainer.callback_metrics["focal/gamma"]) == pytest.approx(0.8)


def test_errors(tmp_path):
    with pytest.raises(TypeError, match="GammaSchedule"):
        GammaWarmup(2.0)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="interval"):
        GammaWarmup(LinearRamp(steps=3), interval="batch")
    trainer = fast_trainer(tmp_path, max_steps=2, callbacks=[GammaWarmup(LinearRamp(steps=3))])
    with pytest.raises(MisconfigurationException, match="found no FocalLoss in BoringModel"):
        trainer.fit(BoringModel())
    # Infinite training: a schedule given as a fraction of it cannot be resolved.
    trainer = fast_trainer(
        tmp_path, max_steps=-1, max_epochs=-1, callbacks=[GammaWarmup(LinearRamp(fraction=0.5))]
    )
    with pytest.raises(MisconfigurationException, match="invalid schedule"):
        trainer.fit(BoringFocalClassifier(), ImbalancedBlobsDataModule(COUNTS))
