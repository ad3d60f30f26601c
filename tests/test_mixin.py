from __future__ import annotations

import pytest
import torch
from _trainer_utils import fast_trainer
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.loggers import CSVLogger

from lightning_focal import FocalLoss, SampleDependentGamma
from lightning_focal.callbacks import ClassBalancedAlpha, GammaWarmup
from lightning_focal.demos import BoringFocalClassifier, ImbalancedBlobsDataModule
from lightning_focal.mixin import find_focal_losses
from lightning_focal.schedules import LinearRamp


def test_configure_registers_loss_and_hparams():
    model = BoringFocalClassifier(gamma=1.5)
    assert isinstance(model.focal_loss, FocalLoss)
    assert model.focal_losses() == {"focal_loss": model.focal_loss}
    assert model.hparams["focal_loss"] == {
        "mode": "softmax",
        "gamma": 1.5,
        "alpha": None,
        "reduction": "mean",
        "ignore_index": -100,
        "label_smoothing": 0.0,
        "poly1": 0.0,
        "num_classes": 3,
    }
    assert model.configure_callbacks() == []  # the mixin adds no callbacks behind the user's back


def test_several_losses_and_policy_hparams():
    class TwoHeads(BoringFocalClassifier):
        def __init__(self):
            super().__init__()
            self.configure_focal_loss(
                "sigmoid", gamma=SampleDependentGamma((0.2,), (5.0, 3.0)), name="box_loss"
            )

    model = TwoHeads()
    assert sorted(find_focal_losses(model)) == ["box_loss", "focal_loss"]
    assert model.hparams["focal_losses"]["box_loss"]["gamma"] == {
        "thresholds": [0.2],
        "gammas": [5.0, 3.0],
    }


@pytest.mark.parametrize("mode", ["softmax", "sigmoid"])
def test_diagnostics_logged_on_step(tmp_path, mode):
    logger = CSVLogger(tmp_path)
    model = BoringFocalClassifier(mode=mode, gamma=0.0, lr=0.0)
    trainer = fast_trainer(tmp_path, max_steps=3, logger=logger, log_every_n_steps=1)
    trainer.fit(model, ImbalancedBlobsDataModule(batch_size=16))
    metrics = trainer.callback_metrics
    assert float(metrics["focal/gamma"]) == 0.0
    assert float(metrics["focal/modulating"]) == pytest.approx(1.0)  # (1-p_t)^0
    assert 0.0 <= float(metrics["focal/easy_fraction"]) <= 1.0
    if mode == "sigmoid":
        assert float(metrics["focal/num_positives"]) == 16.0  # one positive per one-hot row
        assert 0.0 < float(metrics["focal/p_negatives"]) < 1.0
    logged = (tmp_path / "lightning_logs" / "version_0" / "metrics.csv").read_text()
    assert "focal/modulating" in logged.splitlines()[0]


def test_easy_fraction_matches_independent_count(tmp_path):
    model = BoringFocalClassifier(gamma=2.0, lr=0.0)
    dm = ImbalancedBlobsDataModule(batch_size=128)  # one batch: the whole training set
    trainer = fast_trainer(tmp_path, max_steps=1)
    trainer.fit(model, dm)
    x, y = dm.train_set.tensors
    with torch.no_grad():
        p_t = torch.softmax(model(x), 1)[torch.arange(len(y)), y]
    assert float(trainer.callback_metrics["focal/easy_fraction"]) == pytest.approx(
        float((p_t > 0.5).float().mean())
    )
    assert float(trainer.callback_metrics["focal/modulating"]) == pytest.approx(
        float(((1 - p_t) ** 2).mean()), rel=1e-5
    )


def test_load_from_checkpoint_restores_the_loss(tmp_path):
    callbacks = [
        GammaWarmup(LinearRamp(start=0.0, end=2.0, steps=100)),
        ClassBalancedAlpha(method="inverse"),
        ModelCheckpoint(dirpath=tmp_path, save_last=True),
    ]
    model = BoringFocalClassifier(gamma=2.0)
    trainer = fast_trainer(tmp_path, max_steps=5, enable_checkpointing=True, callbacks=callbacks)
    trainer.fit(model, ImbalancedBlobsDataModule())
    loaded = BoringFocalClassifier.load_from_checkpoint(tmp_path / "last.ckpt", weights_only=True)
    assert float(loaded.focal_loss.gamma) == pytest.approx(
        0.08
    )  # mid-warmup γ, not the configured 2.0
    assert torch.equal(loaded.focal_loss.alpha, model.focal_loss.alpha)
    assert loaded.hparams["focal_loss"] == model.hparams["focal_loss"]
    x = torch.randn(4, 8)
    y = torch.tensor([0, 1, 2, 0])
    assert torch.equal(loaded.focal_loss(loaded(x), y), model.focal_loss(model(x), y))


def test_trains_under_torch_compile(tmp_path):
    model = BoringFocalClassifier(gamma=2.0)
    compiled = torch.compile(model)
    warmup = GammaWarmup(LinearRamp(start=0.0, end=2.0, steps=6))
    trainer = fast_trainer(tmp_path, max_steps=6, callbacks=[warmup])
    before = [p.detach().clone() for p in model.parameters()]
    trainer.fit(compiled, ImbalancedBlobsDataModule())
    assert float(model.focal_loss.gamma) == pytest.approx(5 / 3)
    assert torch.isfinite(trainer.callback_metrics["train/loss"])
    assert any(not torch.equal(a, b) for a, b in zip(before, model.parameters()))
