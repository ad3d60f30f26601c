"""The models take their loss whole (``loss=``: a module or its ``_target_`` node).

Before: ``TimmClassifier`` and the detectors took γ, α, ... as separate arguments, so an
option they did not list (``poly1`` for the detectors, ``label_smoothing``) could not reach
their loss. Now every option of the loss class does, and ``load_from_checkpoint`` rebuilds
the loss from the node the model records in its hyperparameters (never the module).
"""

from __future__ import annotations

import pytest
import torch
from _trainer_utils import fast_trainer
from torch.utils.data import DataLoader, TensorDataset

from lightning_focal import FLSD53, DenseFocalLoss, SigmoidFocalLoss, SoftmaxFocalLoss
from lightning_focal.models._loss import focal_loss_from, focal_loss_node

pytest.importorskip("timm")


def settings(loss) -> dict:
    """Everything that decides what a focal-loss module computes."""
    return {
        "type": type(loss),
        "gamma": None if loss.gamma is None else loss.gamma.tolist(),
        "policy": loss.gamma_policy,
        "alpha": None if loss.alpha is None else loss.alpha.tolist(),
        **{
            k: getattr(loss, k)
            for k in (
                "reduction",
                "poly1",
                "num_classes",
                "ignore_index",
                "label_smoothing",
                "normalization",
                "sync",
                "ema_momentum",
            )
            if hasattr(loss, k)
        },
    }


@pytest.mark.parametrize(
    "loss",
    [
        SoftmaxFocalLoss(gamma=[1.0, 2.0, 3.0], alpha=[0.2, 0.3, 0.5], label_smoothing=0.1),
        SoftmaxFocalLoss(gamma=FLSD53, reduction="sum", ignore_index=3, poly1=1.0),
        SigmoidFocalLoss(gamma=0.5, alpha=0.25, reduction="sum", num_classes=3),
        DenseFocalLoss(gamma=FLSD53, alpha=None, normalization="mean", poly1=2.0),
        DenseFocalLoss(alpha=[0.1, 0.2, 0.3], ema_momentum=0.9, sync=False),
    ],
    ids=lambda loss: type(loss).__name__,
)
def test_the_node_rebuilds_the_same_loss(loss):
    node = focal_loss_node(loss, "Model")
    assert node["_target_"] == f"lightning_focal.{type(loss).__name__}"
    rebuilt = focal_loss_from(node, type(loss), 3, type(loss)(), "Model")
    assert settings(rebuilt) == {**settings(loss), "num_classes": 3}


def test_classifier_takes_every_loss_option_and_records_it_as_a_node(tmp_path):
    from lightning_focal.models.classifier import TimmClassifier

    node = {
        "_target_": "lightning_focal.SoftmaxFocalLoss",
        "gamma": {"thresholds": [0.2], "gammas": [5.0, 3.0]},
        "label_smoothing": 0.1,
        "poly1": 1.0,
    }
    model = TimmClassifier("test_resnet", num_classes=3, loss=node)
    assert model.focal_loss.gamma_policy == FLSD53 and model.focal_loss.label_smoothing == 0.1
    assert model.focal_loss.poly1 == 1.0 and model.focal_loss.num_classes == 3
    # a module given from Python: the same loss, recorded as the same node
    same = TimmClassifier(
        "test_resnet",
        num_classes=3,
        loss=SoftmaxFocalLoss(gamma=FLSD53, label_smoothing=0.1, poly1=1.0),
    )
    assert same.hparams["loss"] == model.hparams["loss"]
    assert not any(isinstance(v, torch.nn.Module) for v in model.hparams.values())

    x, y = torch.randn(8, 3, 16, 16), torch.randint(0, 3, (8,))
    trainer = fast_trainer(tmp_path, max_steps=1)
    trainer.fit(model, DataLoader(TensorDataset(x, y), batch_size=4))
    trainer.save_checkpoint(tmp_path / "model.ckpt")
    checkpoint = torch.load(tmp_path / "model.ckpt", weights_only=True)
    assert checkpoint["hyper_parameters"]["loss"]["poly1"] == 1.0
    restored = TimmClassifier.load_from_checkpoint(tmp_path / "model.ckpt")
    assert settings(restored.focal_loss) == settings(model.focal_loss)


def test_classifier_default_loss_and_refusals():
    from lightning_focal.models.classifier import TimmClassifier

    model = TimmClassifier("test_resnet", num_classes=3)
    assert type(model.focal_loss) is SoftmaxFocalLoss and float(model.focal_loss.gamma) == 2.0
    with pytest.raises(ValueError, match=r"unknown config key loss.gama: .*did you mean 'gamma'"):
        TimmClassifier(
            "test_resnet",
            num_classes=3,
            loss={"_target_": "lightning_focal.SoftmaxFocalLoss", "gama": 2},
        )
    with pytest.raises(TypeError, match="trains with a SoftmaxFocalLoss"):
        TimmClassifier("test_resnet", num_classes=3, loss=DenseFocalLoss())
    with pytest.raises(ValueError, match=r"loss\.alpha has 2 per-class values, but TimmClassifier"):
        TimmClassifier("test_resnet", num_classes=3, loss=SoftmaxFocalLoss(alpha=[1.0, 2.0]))
    with pytest.raises(
        ValueError, match=r"loss\.num_classes=4, but TimmClassifier has num_classes=3"
    ):
        TimmClassifier("test_resnet", num_classes=3, loss=SoftmaxFocalLoss(num_classes=4))
    with pytest.raises(ValueError, match="needs a _target_"):
        TimmClassifier("test_resnet", num_classes=3, loss={"gamma": 2.0})
    with pytest.raises(ValueError, match="scalar loss"):
        TimmClassifier("test_resnet", num_classes=3, loss=SoftmaxFocalLoss(reduction="none"))


def test_detector_takes_options_the_old_arguments_lacked():
    from lightning_focal.models import DenseDetector, fcos

    node = {
        "_target_": "lightning_focal.DenseFocalLoss",
        "alpha": [0.2, 0.3, 0.5],
        "poly1": 1.0,
    }
    model = DenseDetector(fcos(num_classes=3, image_size=64, fpn_channels=16), loss=node)
    assert model.focal_loss.poly1 == 1.0 and model.focal_loss.alpha.tolist() == pytest.approx(
        [0.2, 0.3, 0.5]
    )
    assert model.focal_loss.normalization == "batch"
    with pytest.raises(
        ValueError, match=r"unknown config key loss\.label_smoothing: DenseFocalLoss"
    ):
        DenseDetector(
            fcos(num_classes=3, image_size=64, fpn_channels=16),
            loss={"_target_": "lightning_focal.DenseFocalLoss", "label_smoothing": 0.1},
        )
    with pytest.raises(TypeError, match="trains with a DenseFocalLoss"):
        DenseDetector(fcos(3, image_size=64, fpn_channels=16), loss=SoftmaxFocalLoss())
