from __future__ import annotations

import pytest
import torch
from _trainer_utils import GammaRecorder, fast_trainer
from lightning.fabric.utilities.exceptions import MisconfigurationException
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.demos.boring_classes import BoringModel

from lightning_focal.callbacks import GammaWarmup
from lightning_focal.demos import BoringFocalClassifier, ImbalancedBlobsDataModule
from lightning_focal.schedules import (
    ConstantGamma,
    CosineRamp,
    LinearRamp,
    MultiStepGamma,
    SequentialGamma,
)

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


def test_checkpoint_holds_gamma_in_the_loss_buffer_only(tmp_path):
    # γ is a pure function of the step: the callback keeps no state, the loss buffer carries γ.
    model = BoringFocalClassifier()
    trainer = fast_trainer(
        tmp_path,
        max_steps=3,
        enable_checkpointing=True,
        callbacks=[
            GammaWarmup(LinearRamp(start=0.0, end=1.0, steps=10)),
            ModelCheckpoint(dirpath=tmp_path, save_last=True),
        ],
    )
    trainer.fit(model, ImbalancedBlobsDataModule(COUNTS))
    assert float(model.focal_loss.gamma) == pytest.approx(0.2)  # set at step 2, the last one
    state = torch.load(tmp_path / "last.ckpt", weights_only=True)
    assert state["global_step"] == 3
    assert state["state_dict"]["focal_loss.gamma"].item() == pytest.approx(0.2)
    assert not [key for key in state["callbacks"] if key.startswith("GammaWarmup")]


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
    with pytest.raises(MisconfigurationException, match="found no focal loss in BoringModel"):
        trainer.fit(BoringModel())
    # Infinite training: a schedule given as a fraction of it cannot be resolved.
    trainer = fast_trainer(
        tmp_path, max_steps=-1, max_epochs=-1, callbacks=[GammaWarmup(LinearRamp(fraction=0.5))]
    )
    with pytest.raises(MisconfigurationException, match="invalid schedule"):
        trainer.fit(BoringFocalClassifier(), ImbalancedBlobsDataModule(COUNTS))


def _warmup_warnings(record) -> list[str]:
    return [str(w.message) for w in record if str(w.message).startswith("GammaWarmup")]


def test_warns_when_the_run_ends_before_the_schedule(tmp_path):
    schedule = LinearRamp(start=0.0, end=2.0, steps=10, delay=2)
    model = BoringFocalClassifier()
    trainer = fast_trainer(tmp_path, max_steps=8, callbacks=[GammaWarmup(schedule)])
    with pytest.warns(UserWarning, match=r"GammaWarmup: LinearRamp\(.*\) reaches") as record:
        trainer.fit(model, ImbalancedBlobsDataModule(COUNTS))
    (message,) = _warmup_warnings(record)
    assert "at step 12" in message and "has 8 steps" in message
    assert "`schedule.steps`" in message and "`trainer.max_steps`" in message
    # What the warning is about: γ stopped short of its end value.
    assert float(model.focal_loss.gamma) == pytest.approx(schedule(7)) and schedule(7) < 2.0


def test_warns_when_the_last_step_is_the_span(tmp_path):
    # Steps 0..7 run; the ramp reaches γ=1 at step 8, which never runs.
    trainer = fast_trainer(tmp_path, max_steps=8, callbacks=[GammaWarmup(LinearRamp(steps=8))])
    with pytest.warns(UserWarning, match="at step 8, but the run has 8 steps"):
        trainer.fit(BoringFocalClassifier(), ImbalancedBlobsDataModule(COUNTS))


def test_warns_with_the_run_length_set_by_max_epochs(tmp_path):
    # max_steps allows 100 steps, but 2 epochs of 8 batches end the run after 16.
    schedule = CosineRamp(start=0.0, end=2.0, fraction=0.5, delay=10)  # 10 + 8 = step 18
    trainer = fast_trainer(tmp_path, max_epochs=2, max_steps=100, callbacks=[GammaWarmup(schedule)])
    with pytest.warns(UserWarning, match="at step 18, but the run has 16 steps"):
        trainer.fit(BoringFocalClassifier(), ImbalancedBlobsDataModule(COUNTS))


def test_warns_in_epochs_for_an_epoch_schedule(tmp_path):
    schedule = MultiStepGamma(values=[0.0, 1.0], milestones=[3])
    callback = GammaWarmup(schedule, interval="epoch")
    trainer = fast_trainer(tmp_path, max_epochs=2, callbacks=[callback])
    with pytest.warns(UserWarning, match=r"at epoch 3, but the run has 2 epochs.*max_epochs"):
        trainer.fit(BoringFocalClassifier(), ImbalancedBlobsDataModule(COUNTS))


def test_no_warning_when_the_run_reaches_the_end_value(tmp_path, recwarn):
    model = BoringFocalClassifier()
    schedule = SequentialGamma([LinearRamp(steps=4), ConstantGamma(1.0)], milestones=[6])
    trainer = fast_trainer(tmp_path, max_steps=7, callbacks=[GammaWarmup(schedule)])
    trainer.fit(model, ImbalancedBlobsDataModule(COUNTS))
    assert _warmup_warnings(recwarn) == []
    assert float(model.focal_loss.gamma) == 1.0


def test_unknown_run_length_of_an_iterable_dataset(tmp_path, recwarn):
    # Lightning reports estimated_stepping_batches = max_steps = -1 here: the length is unknown,
    # which a schedule in steps does not need.
    class Stream(torch.utils.data.IterableDataset):
        def __iter__(self):
            generator = torch.Generator().manual_seed(0)
            for _ in range(4):
                yield torch.randn(8, generator=generator), torch.tensor(0)

    model = BoringFocalClassifier()
    trainer = fast_trainer(tmp_path, max_epochs=1, callbacks=[GammaWarmup(LinearRamp(steps=2))])
    trainer.fit(model, torch.utils.data.DataLoader(Stream(), batch_size=2))
    assert trainer.global_step == 2 and float(model.focal_loss.gamma) == pytest.approx(1.0)
    assert _warmup_warnings(recwarn) == []
