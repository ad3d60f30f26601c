from __future__ import annotations

import csv

import pytest
import torch
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
from lightning_focal.mixin import find_focal_losses
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
