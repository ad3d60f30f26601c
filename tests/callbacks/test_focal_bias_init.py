from __future__ import annotations

import math

import pytest
import torch
from _trainer_utils import fast_trainer
from lightning.fabric.utilities.exceptions import MisconfigurationException
from lightning.pytorch.callbacks import Callback, ModelCheckpoint
from lightning.pytorch.demos.boring_classes import BoringModel

from lightning_focal.callbacks import FocalBiasInit
from lightning_focal.callbacks.focal_bias_init import prior_bias
from lightning_focal.demos import BoringFocalClassifier, ImbalancedBlobsDataModule


def test_prior_bias_value():
    assert prior_bias(0.01) == pytest.approx(-math.log(99))
    assert torch.sigmoid(torch.tensor(prior_bias(0.2))).item() == pytest.approx(0.2)
    with pytest.raises(ValueError, match="prior"):
        prior_bias(1.0)


def test_sets_prior_on_fresh_fit(tmp_path):
    model = BoringFocalClassifier(sigmoid=True, lr=0.0)  # lr 0: the bias stays as initialised
    trainer = fast_trainer(tmp_path, max_steps=1, callbacks=[FocalBiasInit(prior=0.01)])
    trainer.fit(model, ImbalancedBlobsDataModule())
    assert torch.allclose(model.net[2].bias, torch.full((3,), -math.log(99)))
    assert torch.sigmoid(model.net[2].bias).tolist() == pytest.approx([0.01] * 3)


def test_explicit_layers_override(tmp_path):
    model = BoringFocalClassifier(sigmoid=True, lr=0.0)
    trainer = fast_trainer(
        tmp_path, max_steps=1, callbacks=[FocalBiasInit(prior=0.5, layers=["net.0"])]
    )
    trainer.fit(model, ImbalancedBlobsDataModule())
    assert torch.count_nonzero(model.net[0].bias) == 0
    assert not torch.allclose(model.net[2].bias, torch.zeros(3))


def test_not_applied_on_resume(tmp_path):
    trainer = fast_trainer(
        tmp_path,
        max_steps=2,
        enable_checkpointing=True,
        callbacks=[FocalBiasInit(prior=0.01), ModelCheckpoint(dirpath=tmp_path, save_last=True)],
    )
    trainer.fit(BoringFocalClassifier(sigmoid=True, lr=0.5), ImbalancedBlobsDataModule())
    restored = torch.load(tmp_path / "last.ckpt", weights_only=True)["state_dict"]["net.2.bias"]
    assert not torch.allclose(restored, torch.full((3,), prior_bias(0.01)))  # training moved it

    class BiasAtTrainStart(Callback):
        def on_train_start(self, trainer, pl_module):
            self.bias = pl_module.net[2].bias.detach().clone()

    seen = BiasAtTrainStart()
    trainer = fast_trainer(tmp_path, max_steps=3, callbacks=[FocalBiasInit(prior=0.01), seen])
    trainer.fit(
        BoringFocalClassifier(sigmoid=True),
        ImbalancedBlobsDataModule(),
        ckpt_path=str(tmp_path / "last.ckpt"),
    )
    assert torch.equal(seen.bias, restored)


def test_clear_error_without_a_layer(tmp_path):
    trainer = fast_trainer(tmp_path, max_steps=1, callbacks=[FocalBiasInit()])
    with pytest.raises(MisconfigurationException, match="names no classification layer"):
        trainer.fit(BoringModel())
