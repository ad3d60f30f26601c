from __future__ import annotations

import pytest
import torch
from _trainer_utils import fast_trainer
from lightning.fabric.utilities.exceptions import MisconfigurationException
from lightning.pytorch.callbacks import ModelCheckpoint

from lightning_focal.callbacks import GammaWarmup, RunLengthCheck
from lightning_focal.demos import BoringFocalClassifier, ImbalancedBlobsDataModule
from lightning_focal.schedules import LinearRamp

COUNTS = (96, 24, 8)  # 8 optimiser steps an epoch


def fit(root, max_steps, schedule, ckpt_path=None):
    callbacks = [
        RunLengthCheck(),
        GammaWarmup(schedule),
        ModelCheckpoint(dirpath=root, save_last=True),
    ]
    trainer = fast_trainer(
        root, max_steps=max_steps, callbacks=callbacks, enable_checkpointing=True
    )
    trainer.fit(BoringFocalClassifier(), ImbalancedBlobsDataModule(COUNTS), ckpt_path=ckpt_path)
    return trainer


def test_longer_resume_refused_when_the_gamma_ramp_follows_the_run_length(tmp_path):
    fit(tmp_path, 4, LinearRamp(start=0.0, end=2.0, fraction=0.5))
    last = str(tmp_path / "last.ckpt")
    assert torch.load(last, weights_only=True)["callbacks"]["RunLengthCheck"] == {"total_steps": 4}
    with pytest.raises(MisconfigurationException, match=r"would jump from 2\.0 to 1\.0 at step 4"):
        fit(tmp_path, 16, LinearRamp(start=0.0, end=2.0, fraction=0.5), ckpt_path=last)
    # the same length resumes; a ramp given in steps does not follow the length: it goes on
    assert fit(tmp_path, 4, LinearRamp(end=2.0, fraction=0.5), ckpt_path=last).global_step == 4
    assert fit(tmp_path, 16, LinearRamp(end=2.0, steps=2), ckpt_path=last).global_step == 16
