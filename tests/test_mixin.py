from __future__ import annotations

import csv
import warnings

import lightning.pytorch as pl
import pytest
import torch
import torch.nn.functional as F
from _trainer_utils import fast_trainer
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.loggers import CSVLogger

from lightning_focal import (
    FocalLossBase,
    SampleDependentGamma,
    SigmoidFocalLoss,
    SoftmaxFocalLoss,
)
from lightning_focal.callbacks import ClassBalancedAlpha, GammaWarmup
from lightning_focal.demos import BoringFocalClassifier, ImbalancedBlobsDataModule
from lightning_focal.mixin import FocalLossMixin, find_focal_losses
from lightning_focal.schedules import LinearRamp


def loss_settings(loss: FocalLossBase) -> dict:
    """What defines a focal loss: its family, settings and γ/α values (what the mixin
    used to record in the hyperparameters)."""
    return {
        "type": type(loss),
        "gamma": None if loss.gamma is None else loss.gamma.tolist(),
        "gamma_policy": loss.gamma_policy,
        "alpha": None if loss.alpha is None else loss.alpha.tolist(),
        "reduction": loss.reduction,
        "ignore_index": getattr(loss, "ignore_index", None),
        "label_smoothing": getattr(loss, "label_smoothing", None),
        "poly1": loss.poly1,
        "num_classes": loss.num_classes,
    }


def test_configure_registers_the_loss_and_no_hparams():
    model = BoringFocalClassifier(gamma=1.5)
    assert isinstance(model.focal_loss, SoftmaxFocalLoss)
    assert find_focal_losses(model) == {"focal_loss": model.focal_loss}
    assert loss_settings(model.focal_loss) == {
        "type": SoftmaxFocalLoss,
        "gamma": 1.5,
        "gamma_policy": None,
        "alpha": None,
        "reduction": "mean",
        "ignore_index": -100,
        "label_smoothing": 0.0,
        "poly1": 0.0,
        "num_classes": 3,
    }
    # the loss is built by the module's own __init__: the mixin adds no hyperparameters
    assert "focal_loss" not in model.hparams and "focal_losses" not in model.hparams
    assert model.configure_callbacks() == []  # the mixin adds no callbacks behind the user's back


def test_several_losses_and_policy_gamma():
    class TwoHeads(BoringFocalClassifier):
        def __init__(self):
            super().__init__()
            self.configure_focal_loss(
                SigmoidFocalLoss(gamma=SampleDependentGamma((0.2,), (5.0, 3.0))), name="box_loss"
            )

    model = TwoHeads()
    assert sorted(find_focal_losses(model)) == ["box_loss", "focal_loss"]
    assert isinstance(model.box_loss, SigmoidFocalLoss)
    assert model.box_loss.gamma is None
    assert model.box_loss.gamma_policy == SampleDependentGamma((0.2,), (5.0, 3.0))
    assert "focal_losses" not in model.hparams


def test_configure_registers_a_loss_already_inside_the_module_where_it_is():
    class Head(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.linear = torch.nn.Linear(8, 3)
            self.criterion = SigmoidFocalLoss(gamma=1.0)

    class WithHead(BoringFocalClassifier):
        def __init__(self):
            super().__init__()
            self.head = Head()
            self.configure_focal_loss(
                self.head.criterion, name="head_loss", bias_layer="head.linear"
            )

    model = WithHead()
    assert find_focal_losses(model) == {
        "focal_loss": model.focal_loss,
        "head.criterion": model.head.criterion,
    }
    assert not hasattr(model, "head_loss")  # not attached a second time
    assert model.focal_bias_layers() == [model.net[2], model.head.linear]


def test_configure_refuses_what_is_not_a_focal_loss():
    class Plain(BoringFocalClassifier):
        def __init__(self):
            super().__init__()
            self.configure_focal_loss(torch.nn.CrossEntropyLoss(), name="ce")

    with pytest.raises(TypeError, match="takes a focal-loss module"):
        Plain()


@pytest.mark.parametrize("sigmoid", [False, True])
def test_diagnostics_logged_on_step(tmp_path, sigmoid):
    logger = CSVLogger(tmp_path)
    model = BoringFocalClassifier(sigmoid=sigmoid, gamma=0.0, lr=0.0)
    trainer = fast_trainer(tmp_path, max_steps=3, logger=logger, log_every_n_steps=1)
    trainer.fit(model, ImbalancedBlobsDataModule(batch_size=16))
    metrics = trainer.callback_metrics
    assert "focal/gamma" not in metrics  # γ is logged by what sets it (GammaWarmup, ...)
    assert float(metrics["focal/modulating"]) == pytest.approx(1.0)  # (1-p_t)^0
    assert 0.0 <= float(metrics["focal/easy_fraction"]) <= 1.0
    if sigmoid:
        assert float(metrics["focal/num_positives"]) == 16.0  # one positive per one-hot row
        assert 0.0 < float(metrics["focal/p_negatives"]) < 1.0
    logged = (tmp_path / "lightning_logs" / "version_0" / "metrics.csv").read_text()
    assert "focal/modulating" in logged.splitlines()[0]


def test_diagnostics_logged_only_on_logging_steps(tmp_path):
    logger = CSVLogger(tmp_path)
    model = BoringFocalClassifier(gamma=2.0, lr=0.0)
    trainer = fast_trainer(tmp_path, max_steps=6, logger=logger, log_every_n_steps=3)
    calls = []
    model.focal_loss.register_forward_hook(lambda *a: calls.append(trainer.global_step))
    original = model.focal_loss.statistics
    computed = []
    model.focal_loss.statistics = lambda *a, **k: (
        computed.append(trainer.global_step) or original(*a, **k)
    )
    trainer.fit(model, ImbalancedBlobsDataModule(batch_size=16))
    assert calls == [0, 1, 2, 3, 4, 5]
    assert computed == [2, 5]  # steps 3 and 6: nothing is computed on the others
    with open(tmp_path / "lightning_logs" / "version_0" / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    assert [int(row["step"]) for row in rows if row["focal/modulating"]] == [2, 5]


def test_easy_fraction_matches_independent_count(tmp_path):
    model = BoringFocalClassifier(gamma=2.0, lr=0.0)
    dm = ImbalancedBlobsDataModule(batch_size=128)  # one batch: the whole training set
    trainer = fast_trainer(tmp_path, max_steps=1, log_every_n_steps=1)
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
    # rebuilt by the module's __init__ (no focal hparams), γ/α restored from the state dict
    assert "focal_loss" not in loaded.hparams
    assert type(loaded.focal_loss) is SoftmaxFocalLoss
    assert loss_settings(loaded.focal_loss) == loss_settings(model.focal_loss)
    x = torch.randn(4, 8)
    y = torch.tensor([0, 1, 2, 0])
    assert torch.equal(loaded.focal_loss(loaded(x), y), model.focal_loss(model(x), y))


class PlainBlobsClassifier(pl.LightningModule):
    """``BoringFocalClassifier`` as it was before the mixin: same layers, cross-entropy."""

    def __init__(self, num_features: int = 8, num_classes: int = 3, lr: float = 0.05) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.net = torch.nn.Sequential(
            torch.nn.Linear(num_features, 16), torch.nn.ReLU(), torch.nn.Linear(16, num_classes)
        )

    def training_step(self, batch, batch_idx):
        x, y = batch
        return F.cross_entropy(self.net(x), y)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=self.hparams.lr)


def missing_buffer_warnings(caught: list[warnings.WarningMessage]) -> list[str]:
    return [str(w.message) for w in caught if "the loss keeps the γ/α" in str(w.message)]


def test_checkpoint_from_before_the_mixin_loads_and_resumes(tmp_path):
    old = tmp_path / "old"
    plain = PlainBlobsClassifier()
    checkpoint = ModelCheckpoint(dirpath=old, save_last=True)
    trainer = fast_trainer(old, max_steps=4, enable_checkpointing=True, callbacks=[checkpoint])
    trainer.fit(plain, ImbalancedBlobsDataModule())
    path = old / "last.ckpt"
    assert "focal_loss.gamma" not in torch.load(path, weights_only=True)["state_dict"]

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        loaded = BoringFocalClassifier.load_from_checkpoint(path, weights_only=True)
    [message] = missing_buffer_warnings(caught)
    assert "focal_loss.gamma" in message and "constructed" in message
    assert len(caught) == 1
    assert float(loaded.focal_loss.gamma) == 2.0 and loaded.focal_loss.alpha is None
    for name, tensor in plain.state_dict().items():
        assert torch.equal(loaded.state_dict()[name], tensor), name

    new = tmp_path / "new"
    callbacks = [
        GammaWarmup(LinearRamp(start=0.0, end=2.0, steps=8)),
        ModelCheckpoint(dirpath=new, save_last=True),
    ]
    trainer = fast_trainer(new, max_steps=8, enable_checkpointing=True, callbacks=callbacks)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trainer.fit(BoringFocalClassifier(), ImbalancedBlobsDataModule(), ckpt_path=path)
    assert len(missing_buffer_warnings(caught)) == 1
    assert trainer.global_step == 8
    resumed = torch.load(new / "last.ckpt", weights_only=True)
    assert resumed["global_step"] == 8
    assert float(resumed["state_dict"]["focal_loss.gamma"]) == pytest.approx(1.75)  # step 7

    # a checkpoint saved with the loss has its buffers: nothing to fill, no warning
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        again = BoringFocalClassifier.load_from_checkpoint(new / "last.ckpt", weights_only=True)
    assert missing_buffer_warnings(caught) == []
    assert float(again.focal_loss.gamma) == pytest.approx(1.75)


def test_on_load_checkpoint_lets_base_classes_migrate_first():
    class MigratingBase(pl.LightningModule):
        def on_load_checkpoint(self, checkpoint):
            state = checkpoint["state_dict"]
            state["focal_loss.gamma"] = state.pop("old_gamma")

    class Model(FocalLossMixin, MigratingBase):
        def __init__(self):
            super().__init__()
            self.configure_focal_loss(SigmoidFocalLoss(gamma=2.0, alpha=0.25))

    model = Model()
    checkpoint = {"state_dict": {"old_gamma": torch.tensor(0.5)}}
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model.on_load_checkpoint(checkpoint)
    [message] = missing_buffer_warnings(caught)
    assert "focal_loss.alpha" in message and "focal_loss.gamma" not in message
    assert float(checkpoint["state_dict"]["focal_loss.alpha"]) == 0.25
    model.load_state_dict(checkpoint["state_dict"])
    assert float(model.focal_loss.gamma) == 0.5 and float(model.focal_loss.alpha) == 0.25


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
