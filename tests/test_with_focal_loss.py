"""``lightning_focal.detection.with_focal_loss`` on detectors a user built, against torchvision.

(Named after the function: ``tests/models/test_detection.py`` already holds the basename
``test_detection``, and pytest's default import mode refuses two test modules of one name.)
"""

from __future__ import annotations

import copy
from typing import Any

import pytest
import torch
from torch import nn
from torch.nn import functional as F

pytest.importorskip("torchvision")

import lightning.pytorch as pl
from _detection_utils import (
    NUM_CLASSES,
    detection_loader,
    images_and_targets,
    small_fcos,
    small_retinanet,
)
from _trainer_utils import fast_trainer
from lightning.pytorch.callbacks import Callback
from torchvision.models.detection import (
    FCOS,
    RetinaNet,
    fasterrcnn_mobilenet_v3_large_320_fpn,
    fcos_resnet50_fpn,
    retinanet_resnet50_fpn,
)
from torchvision.models.detection.retinanet import RetinaNetClassificationHead

from lightning_focal import DenseFocalLoss, FocalLossMixin, SigmoidFocalLoss
from lightning_focal.callbacks import FocalBiasInit, GammaWarmup
from lightning_focal.callbacks.focal_bias_init import prior_bias
from lightning_focal.detection import focal_loss_of, with_focal_loss
from lightning_focal.mixin import find_focal_losses
from lightning_focal.schedules import LinearRamp


def resnet50_retinanet() -> RetinaNet:
    return retinanet_resnet50_fpn(
        weights=None, weights_backbone=None, num_classes=NUM_CLASSES, min_size=64, max_size=64
    )


def resnet50_fcos() -> FCOS:
    return fcos_resnet50_fpn(
        weights=None, weights_backbone=None, num_classes=NUM_CLASSES, min_size=64, max_size=64
    )


def losses_and_grads(
    model: nn.Module, dtype: torch.dtype = torch.float32
) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    images, targets = images_and_targets()
    model.to(dtype)
    images = [image.to(dtype) for image in images]
    model.train()
    model.zero_grad()
    losses = model(images, targets)
    sum(losses.values()).backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    return {k: v.detach() for k, v in losses.items()}, grads


@pytest.mark.parametrize(
    "build",
    [
        small_retinanet,
        small_fcos,
        # ~10 s each in float64 on a busy 2-core CPU
        pytest.param(resnet50_retinanet, marks=pytest.mark.slow),
        pytest.param(resnet50_fcos, marks=pytest.mark.slow),
    ],
)
def test_losses_and_gradients_equal_torchvision(build):
    torch.manual_seed(0)
    reference = build()
    model = copy.deepcopy(reference)
    normalization = "per_image" if isinstance(model, RetinaNet) else "batch"
    loss = DenseFocalLoss(gamma=2.0, alpha=0.25, normalization=normalization)
    assert with_focal_loss(model, loss) is model

    # float64: in float32 the two losses' different summation orders leave ~1e-5 relative
    # noise in resnet50's gradients and larger in the (ideally zero) gradients of conv biases
    # before a BatchNorm
    expected, expected_grads = losses_and_grads(reference, torch.float64)
    got, grads = losses_and_grads(model, torch.float64)

    assert set(got) == set(expected)
    assert int(loss.last_num_positives) > 0  # the classification term saw positives
    for key in expected:
        torch.testing.assert_close(got[key], expected[key], rtol=1e-10, atol=1e-12)
    assert set(grads) == set(expected_grads)
    for key in expected_grads:
        torch.testing.assert_close(grads[key], expected_grads[key], rtol=1e-7, atol=1e-12)


@pytest.mark.parametrize("build", [resnet50_retinanet, resnet50_fcos])
def test_resnet50_builders_losses_equal_torchvision(build):
    torch.manual_seed(0)
    reference = build().train()
    model = with_focal_loss(copy.deepcopy(reference))
    images, targets = images_and_targets()
    with torch.no_grad():
        expected, got = reference(images, targets), model(images, targets)
    assert set(got) == set(expected)
    for key in expected:
        torch.testing.assert_close(got[key], expected[key], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("build", [small_retinanet, small_fcos])
def test_default_loss_is_torchvisions(build):
    torch.manual_seed(0)
    reference = build()
    model = with_focal_loss(copy.deepcopy(reference))
    expected, _ = losses_and_grads(reference)
    got, _ = losses_and_grads(model)
    for key in expected:
        torch.testing.assert_close(got[key], expected[key], rtol=1e-5, atol=1e-6)
    loss = focal_loss_of(model)
    assert (float(loss.gamma), float(loss.alpha)) == (2.0, 0.25)
    assert loss.normalization == ("per_image" if build is small_retinanet else "batch")


@pytest.mark.parametrize("build", [small_retinanet, small_fcos])
def test_weights_untouched_and_loss_registered(build):
    torch.manual_seed(0)
    model = build()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    loss = DenseFocalLoss(gamma=1.0, alpha=[0.1, 0.2, 0.3, 0.4])
    with_focal_loss(model, loss)
    after = model.state_dict()
    for key, value in before.items():
        assert torch.equal(after[key], value), key
    prefix = "head.classification_head.focal_loss."
    assert sorted(set(after) - set(before)) == sorted(
        prefix + n for n in ("gamma", "alpha", "normalizer_ema")
    )
    assert find_focal_losses(model) == {"head.classification_head.focal_loss": loss}
    assert loss.num_classes == NUM_CLASSES
    model.to(torch.float64)
    assert loss.alpha.dtype == torch.float64


def test_a_state_dict_without_the_loss_loads_strictly_and_one_with_it_restores_gamma():
    torch.manual_seed(0)
    plain = small_retinanet()
    model = with_focal_loss(copy.deepcopy(plain), DenseFocalLoss(gamma=0.5))
    model.load_state_dict(plain.state_dict())  # torchvision's weights: strict, loss kept
    assert float(focal_loss_of(model).gamma) == 0.5

    other = with_focal_loss(copy.deepcopy(plain), DenseFocalLoss(gamma=2.0, alpha=None))
    other.load_state_dict(model.state_dict())
    assert float(focal_loss_of(other).gamma) == 0.5 and float(focal_loss_of(other).alpha) == 0.25

    partial = plain.state_dict()
    partial["head.classification_head.focal_loss.gamma"] = torch.tensor(1.0)
    with pytest.raises(RuntimeError, match=r"focal_loss\.normalizer_ema"):
        other.load_state_dict(partial)  # some of the loss's keys: checked as usual


class Capture:
    """The focal loss's inputs on its last call."""

    def __init__(self, loss: nn.Module) -> None:
        loss.register_forward_hook(self, with_kwargs=True)

    def __call__(self, module, args, kwargs, output) -> None:
        self.logits, self.target = args[0].detach(), args[1]
        self.weight, self.output = kwargs.get("weight"), output.detach()


@pytest.mark.parametrize("build", [small_retinanet, small_fcos])
def test_loss_options_are_honoured(build):
    # γ=0, per-class α and "batch" normalisation: α_t-weighted BCE over the kept anchors
    # divided by the batch's positives, from the very logits and targets the head passed.
    torch.manual_seed(0)
    alpha = torch.tensor([0.1, 0.3, 0.6, 0.9])
    loss = DenseFocalLoss(gamma=0.0, alpha=alpha, normalization="batch")
    model = with_focal_loss(build(), loss)
    seen = Capture(loss)
    got, _ = losses_and_grads(model)

    x, t = seen.logits, seen.target
    keep = torch.ones(x.shape[:2]) if seen.weight is None else seen.weight
    alpha_t = alpha * t + (1 - alpha) * (1 - t)
    bce = F.binary_cross_entropy_with_logits(x, t, reduction="none")
    positives = ((t > 0).any(-1) & (keep > 0)).sum().clamp_min(1)
    expected = (alpha_t * bce * keep.unsqueeze(-1)).sum() / positives
    torch.testing.assert_close(got["classification"], expected)
    if build is small_retinanet:
        assert (keep == 0).any()  # RetinaNet's anchors between the IoU thresholds are dropped


def test_gamma_below_one_keeps_gradients_finite_where_torchvision_does_not():
    torch.manual_seed(0)
    model = small_retinanet()
    with torch.no_grad():
        model.head.classification_head.cls_logits.bias.fill_(20.0)  # p = 1 for every anchor
    with_focal_loss(model, DenseFocalLoss(gamma=0.5, normalization="per_image"))
    _, grads = losses_and_grads(model)
    assert all(torch.isfinite(g).all() for g in grads.values())


def test_other_models_and_losses_are_refused():
    with pytest.raises(
        TypeError, match=r"RetinaNet and torchvision.models.detection.FCOS.*FasterRCNN"
    ):
        with_focal_loss(fasterrcnn_mobilenet_v3_large_320_fpn(weights=None, weights_backbone=None))
    with pytest.raises(TypeError, match="supports"):
        with_focal_loss(nn.Linear(2, 2))  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="DenseFocalLoss"):
        with_focal_loss(small_fcos(), SigmoidFocalLoss())  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="num_classes=3, the detector's head 4"):
        with_focal_loss(small_fcos(), DenseFocalLoss(num_classes=3))
    with pytest.raises(ValueError, match="per-class alpha has 2 values"):
        with_focal_loss(small_retinanet(), DenseFocalLoss(alpha=[0.25, 0.5]))
    model = small_fcos()
    model.head = nn.Identity()
    with pytest.raises(TypeError, match="FCOSHead"):
        with_focal_loss(model)
    with pytest.raises(TypeError, match="no focal classification loss"):
        focal_loss_of(small_fcos())


class OwnLossHead(RetinaNetClassificationHead):
    def compute_loss(self, targets, head_outputs, matched_idxs):  # type: ignore[override]
        return head_outputs["cls_logits"].sum()


class ScaledHead(RetinaNetClassificationHead):
    def forward(self, x):  # type: ignore[override]
        return 2.0 * super().forward(x)


def test_user_head_subclasses():
    model = small_retinanet()
    head = model.head
    head.classification_head.__class__ = OwnLossHead
    with pytest.raises(TypeError, match="OwnLossHead overrides compute_loss"):
        with_focal_loss(model)
    assert type(head.classification_head) is OwnLossHead  # nothing changed

    head.classification_head.__class__ = ScaledHead
    with_focal_loss(model)
    cls_head = head.classification_head
    assert isinstance(cls_head, ScaledHead) and type(cls_head).__name__ == "FocalScaledHead"
    features = [torch.rand(1, 32, 4, 4)]
    torch.testing.assert_close(
        cls_head(features), 2.0 * RetinaNetClassificationHead.forward(cls_head, features)
    )
    again = with_focal_loss(model, DenseFocalLoss(gamma=1.0))  # a second call swaps the loss
    assert type(again.head.classification_head) is type(cls_head)
    assert float(focal_loss_of(again).gamma) == 1.0
    assert len(find_focal_losses(again)) == 1


def test_deepcopy_and_pickle_of_a_torchvision_head():
    model = with_focal_loss(small_fcos(), DenseFocalLoss(gamma=1.5))
    clone = copy.deepcopy(model)
    assert float(focal_loss_of(clone).gamma) == 1.5
    assert focal_loss_of(clone) is not focal_loss_of(model)
    import io

    buffer = io.BytesIO()
    torch.save(model, buffer)
    buffer.seek(0)
    loaded = torch.load(buffer, weights_only=False)
    assert type(loaded.head).__name__ == "FocalFCOSHead"


# -- a user's LightningModule ----------------------------------------------------------------


class LitDetector(FocalLossMixin, pl.LightningModule):
    """What the README recipe shows, on the small custom-backbone detector."""

    def __init__(self, build=small_retinanet, gamma: float = 2.0) -> None:
        super().__init__()
        loss = DenseFocalLoss(gamma=gamma, alpha=0.25, normalization="per_image")
        self.model = with_focal_loss(build(), loss)
        self.configure_focal_loss(loss)

    def training_step(self, batch, batch_idx):
        images, targets = batch
        losses = self.model(list(images), list(targets))
        return sum(losses.values())

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.01, momentum=0.9)


class PlainLitDetector(pl.LightningModule):
    """No mixin: the callbacks find the loss and the bias layer inside the model."""

    def __init__(self) -> None:
        super().__init__()
        self.model = with_focal_loss(small_fcos(), DenseFocalLoss(gamma=2.0))

    training_step = LitDetector.training_step
    configure_optimizers = LitDetector.configure_optimizers


class Seen(Callback):
    def __init__(self) -> None:
        self.gammas: list[float] = []
        self.bias: torch.Tensor | None = None

    def on_train_start(self, trainer, pl_module) -> None:
        self.bias = pl_module.model.head.classification_head.cls_logits.bias.detach().clone()

    def on_train_batch_end(self, trainer, pl_module, *args: Any) -> None:
        self.gammas.append(float(focal_loss_of(pl_module.model).gamma))


class MetricsSeen(Callback):
    def __init__(self) -> None:
        self.keys: set[str] = set()

    def on_train_batch_end(self, trainer, pl_module, *args: Any) -> None:
        self.keys |= set(trainer.callback_metrics)


@pytest.mark.parametrize("module_class", [LitDetector, PlainLitDetector])
def test_fit_with_gamma_warmup_bias_init_and_diagnostics(tmp_path, module_class):
    torch.manual_seed(0)
    module = module_class()
    with torch.no_grad():
        module.model.head.classification_head.cls_logits.bias.zero_()
    seen, metrics = Seen(), MetricsSeen()
    callbacks = [
        GammaWarmup(LinearRamp(start=0.0, end=2.0, steps=2)),
        FocalBiasInit(prior=0.05),
        seen,
        metrics,
    ]
    trainer = fast_trainer(tmp_path, max_steps=3, callbacks=callbacks, log_every_n_steps=1)
    trainer.fit(module, detection_loader())
    assert seen.gammas == [0.0, 1.0, 2.0]
    torch.testing.assert_close(seen.bias, torch.full_like(seen.bias, prior_bias(0.05)))
    assert "focal/gamma" in metrics.keys
    if module_class is LitDetector:
        assert {
            "focal/num_positives",
            "focal/p_positives",
            "focal/p_negatives",
            "focal/normalizer",
        } <= metrics.keys
