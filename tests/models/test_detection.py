"""DenseDetector over retinanet()/fcos() and users' detectors: factories, a real fit with the focal callbacks, mAP, checkpoints, pictures."""

from __future__ import annotations

import math
import subprocess
import sys
from functools import partial
from typing import Any

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

pytest.importorskip("timm")
pytest.importorskip("torchvision")

import lightning.pytorch as pl
from _detection_utils import NUM_CLASSES, detection_loader, small_fcos, small_retinanet
from _trainer_utils import fast_trainer
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.loggers import Logger
from torchvision.models.detection import FCOS, RetinaNet

from lightning_focal.callbacks import ClassBalancedAlpha, FocalBiasInit, GammaWarmup
from lightning_focal.losses import DenseFocalLoss
from lightning_focal.mixin import find_focal_losses
from lightning_focal.models import (
    DenseDetector,
    FCOSExpRegressionHead,
    TimmFPNBackbone,
    fcos,
    retinanet,
)
from lightning_focal.plots_detection import DetectionSamples, draw_detections
from lightning_focal.schedules import LinearRamp

CLASS_NAMES = ["red", "green", "blue"]


@pytest.fixture(autouse=True)
def one_thread():
    # Two threads on two busy cores spin against each other: steps get 10-100x slower.
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


class Squares(Dataset):
    """Dim noise with one or two coloured squares (colour = class); the last image is empty."""

    def __init__(self, n: int = 6, size: int = 64, seed: int = 0) -> None:
        generator = torch.Generator().manual_seed(seed)
        colours = torch.eye(3)
        self.items = []
        for i in range(n):
            image = torch.rand(3, size, size, generator=generator) * 0.2
            boxes, labels = [], []
            for _ in range(0 if i == n - 1 else 1 + i % 2):
                c = int(torch.randint(3, (1,), generator=generator))
                side = int(torch.randint(12, 24, (1,), generator=generator))
                x, y = (int(v) for v in torch.randint(0, size - side, (2,), generator=generator))
                image[:, y : y + side, x : x + side] = colours[c].view(3, 1, 1)
                boxes.append([x, y, x + side, y + side])
                labels.append(c)
            target = {
                "boxes": torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4),
                "labels": torch.tensor(labels, dtype=torch.long),
            }
            self.items.append((image, target))

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int):
        return self.items[index]


def collate(batch):
    return torch.stack([image for image, _ in batch]), [target for _, target in batch]


def loader(n: int = 6, batch_size: int = 3) -> DataLoader:
    return DataLoader(Squares(n), batch_size=batch_size, collate_fn=collate)


def trainer(tmp_path, **kwargs: Any) -> pl.Trainer:
    """The shared fast CPU trainer, logging every step, not forced deterministic."""
    return fast_trainer(tmp_path, **{"log_every_n_steps": 1, "deterministic": False, **kwargs})


class GammaSeen(Callback):
    def __init__(self) -> None:
        self.gammas: list[float] = []

    def on_train_batch_end(self, trainer, pl_module, *args: Any) -> None:
        self.gammas.append(float(pl_module.focal_loss.gamma))


class ImageLogger(Logger):
    """Stands in for lightning's WandbLogger: DetectionSamples calls its ``log_image``."""

    def __init__(self, save_dir) -> None:
        super().__init__()
        self._save_dir = str(save_dir)
        self.images: list[tuple[str, list, int | None]] = []

    @property
    def name(self) -> str:
        return "fake"

    @property
    def version(self) -> int:
        return 0

    @property
    def save_dir(self) -> str:
        return self._save_dir

    def log_metrics(self, metrics, step=None) -> None:
        pass

    def log_hyperparams(self, params, *args, **kwargs) -> None:
        pass

    def log_image(self, key: str, images: list, step: int | None = None, **kwargs: Any) -> None:
        self.images.append((key, images, step))


MODULE_ARGUMENTS = ("loss", "class_names", "optimizer", "scheduler")


def small(factory, **kwargs: Any) -> DenseDetector:
    """DenseDetector over ``factory(num_classes=3, image_size=64, fpn_channels=16, ...)``."""
    module = {"class_names": CLASS_NAMES}
    module.update({k: kwargs.pop(k) for k in MODULE_ARGUMENTS if k in kwargs})
    options: dict[str, Any] = dict(fpn_channels=16)
    options.update(kwargs)
    return DenseDetector(factory(num_classes=3, image_size=64, **options), **module)


# -- backbone ------------------------------------------------------------------------------


def test_timm_fpn_backbone_levels_and_channels():
    backbone = TimmFPNBackbone("test_resnet", out_channels=16)
    features = backbone(torch.rand(2, 3, 64, 64))
    assert backbone.out_channels == 16
    assert list(features) == ["0", "1", "2", "p6", "p7"]
    assert backbone.strides == [8, 16, 32, 64, 128]
    assert [f.shape[-1] for f in features.values()] == [8, 4, 2, 1, 1]
    assert all(f.shape[:2] == (2, 16) for f in features.values())

    plain = TimmFPNBackbone(
        "test_efficientnet", out_channels=8, out_indices=[1, 2], extra_levels="none"
    ).eval()
    assert plain.strides == [4, 8]
    assert [f.shape[1:] for f in plain(torch.rand(1, 3, 32, 32)).values()] == [(8, 8, 8), (8, 4, 4)]
    with pytest.raises(ValueError, match="extra_levels"):
        TimmFPNBackbone(extra_levels="p8")


def test_import_lightning_focal_does_not_import_timm():
    code = (
        "import sys, lightning_focal, lightning_focal.models; "
        "assert 'timm' not in sys.modules, 'timm imported'; "
        "assert 'torchvision' not in sys.modules, 'torchvision imported'"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


# -- construction --------------------------------------------------------------------------


def test_factories_build_torchvision_detectors_with_the_expected_anchors():
    model = retinanet(3, 64, fpn_channels=16, aspect_ratios=[1.0], anchor_scales=[1.0, 1.5])
    assert type(model) is RetinaNet and model.transform.min_size == (64,)
    assert model.anchor_generator.num_anchors_per_location() == [2] * 5
    assert model.anchor_generator.sizes[0] == (32, 48)  # 4 x stride 8, times each scale
    assert (
        model.proposal_matcher.high_threshold == 0.5 and model.proposal_matcher.low_threshold == 0.4
    )
    assert not any(isinstance(m, nn.GroupNorm) for m in model.head.modules())
    assert not hasattr(model.head.classification_head, "focal_loss")  # plain torchvision
    default = retinanet(3, 64, fpn_channels=16)
    assert default.anchor_generator.num_anchors_per_location() == [9] * 5
    assert default.anchor_generator.aspect_ratios[0] == (0.5, 1.0, 2.0)
    normed = retinanet(3, 64, fpn_channels=16, head_group_norm=True).head
    assert sum(isinstance(m, nn.GroupNorm) for m in normed.modules()) == 8
    # the app's shapes anchors: P2-P7, 2 x the stride, square
    shapes = retinanet(
        3,
        64,
        fpn_channels=16,
        out_indices=[1, 2, 3, 4],
        anchor_sizes=[8, 16, 32, 64, 128, 256],
        aspect_ratios=[1.0],
    )
    assert shapes.backbone.strides == [4, 8, 16, 32, 64, 128]
    assert [s[0] for s in shapes.anchor_generator.sizes] == [8, 16, 32, 64, 128, 256]

    locations = fcos(3, 64, fpn_channels=16)
    assert type(locations) is FCOS and locations.center_sampling_radius == 1.5
    assert locations.anchor_generator.sizes == ((8,), (16,), (32,), (64,), (128,))
    assert locations.anchor_generator.num_anchors_per_location() == [1] * 5
    # the narrow GroupNorm torchvision's FCOSHead cannot take: 16 channels, 8 groups
    assert locations.head.classification_head.conv[1].num_groups == 8
    assert isinstance(locations.head.regression_head, FCOSExpRegressionHead)

    with pytest.raises(ValueError, match="anchor_sizes has 2 entries"):
        retinanet(3, 64, fpn_channels=16, anchor_sizes=[32, 64])
    with pytest.raises(ValueError, match="num_classes"):
        fcos(0, 64, fpn_channels=16)


@pytest.mark.parametrize("factory", [retinanet, fcos])
def test_prior_probability_sets_the_cls_bias(factory):
    def bias(**kwargs: Any) -> torch.Tensor:
        return factory(3, 64, fpn_channels=16, **kwargs).head.classification_head.cls_logits.bias

    default = bias()  # torchvision's π = 0.01
    torch.testing.assert_close(default, torch.full_like(default, -math.log(99)))
    other = bias(prior_probability=0.1)
    torch.testing.assert_close(other, torch.full_like(other, -math.log(9)))
    assert torch.count_nonzero(bias(prior_probability=None)) == 0
    assert torch.count_nonzero(bias(prior_probability=0.0)) == 0
    with pytest.raises(ValueError, match=r"prior_probability must be in \[0, 1\)"):
        bias(prior_probability=1.0)
    # the module keeps the detector's bias: one mechanism
    model = DenseDetector(factory(3, 64, fpn_channels=16, prior_probability=0.1))
    head_bias = model.detector.head.classification_head.cls_logits.bias
    torch.testing.assert_close(head_bias, torch.full_like(head_bias, -math.log(9)))


def test_dense_detector_holds_a_dense_focal_loss_in_the_head():
    retina = small(retinanet, loss=DenseFocalLoss(gamma=1.5, alpha=None, normalization="per_image"))
    head = retina.detector.head.classification_head
    assert isinstance(head.focal_loss, DenseFocalLoss) and retina.focal_loss is head.focal_loss
    assert float(retina.focal_loss.gamma) == 1.5 and retina.focal_loss.alpha is None
    assert retina.num_classes == 3 and retina.focal_loss.num_classes == 3
    assert list(find_focal_losses(retina)) == ["detector.head.classification_head.focal_loss"]
    assert retina.focal_bias_layers() == [head.cls_logits]
    # the loss and the detector are recorded as nodes (never modules); the mixin stores none
    assert retina.hparams["loss"]["normalization"] == "per_image"
    assert retina.hparams["loss"]["_target_"] == "lightning_focal.DenseFocalLoss"
    assert retina.hparams["detector"]["_target_"] == "lightning_focal.models.retinanet"
    assert retina.hparams["detector"]["aspect_ratios"] == [0.5, 1.0, 2.0]
    assert not any(isinstance(v, nn.Module) for v in retina.hparams.values())
    assert "focal_loss" not in retina.hparams
    assert small(retinanet).focal_loss.normalization == "per_image"  # torchvision's loss
    assert small(fcos).focal_loss.normalization == "batch"

    node = {"_target_": "lightning_focal.DenseFocalLoss", "gamma": [1.0, 2.0, 3.0]}
    locations = small(fcos, loss={**node, "ema_momentum": 0.9})
    assert (
        locations.focal_loss.normalization == "batch" and locations.focal_loss.ema_momentum == 0.9
    )
    assert locations.focal_loss.gamma.tolist() == [1.0, 2.0, 3.0]
    # FCOSNormHead becomes the package's (importable) focal head, not a made-up subclass
    assert type(locations.detector.head).__name__ == "FocalFCOSHead"

    with pytest.raises(ValueError, match="class_names has 1 names"):
        small(retinanet, class_names=["a"])
    with pytest.raises(ValueError, match=r"loss\.num_classes=4"):
        small(fcos, loss=DenseFocalLoss(num_classes=4))
    with pytest.raises(TypeError, match="trains a torchvision"):
        DenseDetector(nn.Linear(2, 2))
    with pytest.raises(TypeError, match="needs detector="):
        DenseDetector(None)
    with pytest.raises(ValueError, match=r"unknown config key detector\.anchor_size\b"):
        DenseDetector(
            {
                "_target_": "lightning_focal.models.retinanet",
                "num_classes": 3,
                "image_size": 64,
                "anchor_size": [8],
            }
        )


@pytest.mark.parametrize("build", [small_retinanet, small_fcos])
def test_a_users_torchvision_detector_trains_validates_and_reloads(tmp_path, build):
    torch.manual_seed(0)
    with pytest.warns(UserWarning, match="pass detector= to load_from_checkpoint"):
        model = DenseDetector(build(), loss=DenseFocalLoss(gamma=1.0, alpha=0.5))
    assert model.num_classes == NUM_CLASSES and model.hparams["detector"] is None
    assert float(model.focal_loss.gamma) == 1.0
    fit = trainer(tmp_path, max_steps=3, limit_val_batches=1)  # one epoch, then validation
    fit.fit(model, detection_loader(), detection_loader(batches=1))
    assert (
        "val/map" in fit.callback_metrics and float(fit.callback_metrics["focal/num_positives"]) > 0
    )
    fit.save_checkpoint(tmp_path / "user.ckpt")
    with pytest.raises(TypeError, match="pass detector= to load_from_checkpoint"):
        DenseDetector.load_from_checkpoint(tmp_path / "user.ckpt")
    with pytest.warns(UserWarning, match="pass detector="):
        restored = DenseDetector.load_from_checkpoint(tmp_path / "user.ckpt", detector=build())
    assert float(restored.focal_loss.gamma) == 1.0 and float(restored.focal_loss.alpha) == 0.5
    for key, value in model.state_dict().items():
        torch.testing.assert_close(restored.state_dict()[key], value)


# -- FCOS box regression --------------------------------------------------------------------


def box_loss_backward(model: DenseDetector) -> tuple[float, nn.Module]:
    """Box loss of a batch, backpropagated; returns it and the regression head."""
    images, targets = next(iter(loader()))
    losses = model.train()(images, targets)
    losses["bbox_regression"].backward()
    return float(losses["bbox_regression"]), model.detector.head.regression_head


def test_relu_box_head_stalls_once_its_outputs_are_negative_and_exp_head_does_not():
    # Seed 0 of benchmarks/detection.py: torchvision's relu outputs went <= 0 within 5 steps;
    # then every box has zero area, the GIoU loss is exactly 1 and no gradient reaches the head.
    relu = small(fcos, box_activation="relu")
    nn.init.constant_(relu.detector.head.regression_head.bbox_reg.bias, -1.0)
    loss, head = box_loss_backward(relu)
    assert loss == pytest.approx(1.0) and torch.count_nonzero(head.bbox_reg.weight.grad) == 0

    exp = small(fcos)
    nn.init.constant_(exp.detector.head.regression_head.bbox_reg.bias, -1.0)
    loss, head = box_loss_backward(exp)
    assert loss < 0.99 and torch.count_nonzero(head.bbox_reg.weight.grad) > 0
    assert torch.count_nonzero(head.scales.grad) > 0


def test_exp_box_head_starts_at_one_stride_with_a_scale_per_level():
    model = small(fcos)
    head = model.detector.head.regression_head
    assert isinstance(head, FCOSExpRegressionHead) and head.scales.tolist() == [1.0] * 5
    assert any(p is head.scales for p in model.parameters())
    features = list(model.detector.backbone(torch.rand(2, 3, 64, 64)).values())
    boxes, ctrness = head(features)
    assert boxes.shape == (2, 64 + 16 + 4 + 1 + 1, 4) and ctrness.shape == (2, 86, 1)
    # exp(x) with x ~ 0 at initialisation: every box reaches about one stride each way
    assert bool(((boxes > 0.5) & (boxes < 2.0)).all())
    with pytest.raises(ValueError, match="feature levels"):
        head(features[:3])
    with pytest.raises(ValueError, match="box_activation"):
        small(fcos, box_activation="sigmoid")
    relu = small(fcos, box_activation="relu").detector.head.regression_head
    assert type(relu).__name__ == "FCOSRegressionHead"


# -- training with the focal callbacks -----------------------------------------------------


@pytest.mark.parametrize("factory", [retinanet, fcos])
def test_fit_with_focal_callbacks(tmp_path, factory):
    # no prior from the factory: FocalBiasInit (the tool for with_focal_loss users) sets it;
    # lr 0: the bias stays put
    model = small(factory, prior_probability=None, optimizer=partial(torch.optim.AdamW, lr=0.0))
    gamma_seen = GammaSeen()
    samples = DetectionSamples(num_images=2, min_score=0.0)
    logger = ImageLogger(tmp_path)
    fit = trainer(
        tmp_path,
        max_steps=3,
        limit_val_batches=2,
        logger=logger,
        callbacks=[
            GammaWarmup(LinearRamp(start=0.0, end=2.0, steps=2)),
            ClassBalancedAlpha(),
            FocalBiasInit(prior=0.01),
            gamma_seen,
            samples,
        ],
    )
    fit.fit(model, loader(), loader())

    assert gamma_seen.gammas == [0.0, 1.0, 2.0]
    alpha = model.focal_loss.alpha
    assert alpha.shape == (3,) and bool(((alpha > 0) & (alpha < 1)).all())
    bias = model.detector.head.classification_head.cls_logits.bias
    torch.testing.assert_close(bias, torch.full_like(bias, -math.log(99)))

    metrics = fit.callback_metrics
    expected = [
        "train/loss",
        "train/loss_classification",
        "train/loss_bbox_regression",
        "val/map",
        "val/map_50",
        "val/map_75",
        "val/mar_100",
        "val/recall",
        "focal/num_positives",
        "focal/p_positives",
        "focal/p_negatives",
        "focal/gamma",
    ]
    if factory is fcos:
        expected.append("train/loss_bbox_ctrness")
    assert not [key for key in expected if key not in metrics]
    assert any(key.startswith("val/map_class/") for key in metrics)
    assert {key.rsplit("/", 1)[1] for key in metrics if key.startswith("val/map_class/")} <= set(
        CLASS_NAMES
    )
    assert float(metrics["focal/num_positives"]) > 0
    assert float(metrics["focal/gamma"]) == 2.0

    assert len(samples.saved) == 2 and all(path.exists() for path in samples.saved)
    assert samples.saved[0].parent == tmp_path / "detections" and samples.saved[0].suffix == ".png"
    assert [(key, len(images)) for key, images, _ in logger.images] == [("val/detections", 2)]


@pytest.mark.parametrize("factory", [retinanet, fcos])
def test_checkpoint_round_trip(tmp_path, factory):
    omegaconf = pytest.importorskip("omegaconf")
    config = omegaconf.OmegaConf.create(
        {
            "out_indices": [1, 2, 3],
            "loss": {
                "_target_": "lightning_focal.DenseFocalLoss",
                "gamma": [1.0, 2.0, 3.0],
                "poly1": 1.0,
                "normalization": "mean",
            },
        }
    )
    model = small(
        factory, out_indices=config.out_indices, loss=config.loss, prior_probability=None
    )  # as Hydra gives them without _convert_
    fit = trainer(tmp_path, max_steps=1, limit_val_batches=0)
    fit.fit(model, loader(3))
    fit.save_checkpoint(tmp_path / "model.ckpt")

    hparams = torch.load(tmp_path / "model.ckpt", weights_only=True)["hyper_parameters"]
    assert "optimizer" not in hparams and hparams["class_names"] == CLASS_NAMES
    assert hparams["detector"]["out_indices"] == [1, 2, 3]
    assert hparams["detector"]["prior_probability"] is None
    restored = DenseDetector.load_from_checkpoint(tmp_path / "model.ckpt")
    assert type(restored.detector) is type(model.detector)
    assert restored.detector.backbone.strides[0] == 4 and restored.class_names == CLASS_NAMES
    assert restored.focal_loss.gamma.tolist() == [1.0, 2.0, 3.0]
    # options that are no buffers come back from the loss node in the hyperparameters
    assert restored.focal_loss.poly1 == 1.0 and restored.focal_loss.normalization == "mean"
    assert hparams["loss"]["poly1"] == 1.0 and hparams["loss"]["num_classes"] == 3
    assert restored.state_dict().keys() == model.state_dict().keys()
    for key, value in model.state_dict().items():
        torch.testing.assert_close(restored.state_dict()[key], value)


class Oracle(nn.Module):
    """Returns the ground truth as predictions (score 0.9), batch by batch."""

    def __init__(self, batches) -> None:
        super().__init__()
        self.targets = [t for _, targets in batches for t in targets]
        self.seen = 0

    def forward(self, images, targets=None):
        out = []
        for target in self.targets[self.seen : self.seen + len(images)]:
            out.append({**target, "scores": torch.full((len(target["labels"]),), 0.9)})
        self.seen += len(images)
        return out


def test_validate_and_test_log_map_per_class(tmp_path):
    data = loader(6, batch_size=3)
    model = small(retinanet)
    present = {CLASS_NAMES[c] for _, targets in data for t in targets for c in t["labels"].tolist()}

    model.detector = Oracle(data)
    metrics = trainer(tmp_path).validate(model, data, verbose=False)[0]
    assert metrics["val/map"] == pytest.approx(1.0) and metrics["val/map_50"] == pytest.approx(1.0)
    assert metrics["val/recall"] == pytest.approx(1.0) == metrics["val/mar_100"]
    assert {k.rsplit("/", 1)[1] for k in metrics if k.startswith("val/map_class/")} == present
    assert all(metrics[f"val/map_class/{name}"] == pytest.approx(1.0) for name in present)

    model = DenseDetector(retinanet(4, 64, fpn_channels=16), class_names=[*CLASS_NAMES, "yellow"])
    model.detector = Oracle(data)
    metrics = trainer(tmp_path).test(model, data, verbose=False)[0]
    assert "test/map_class/yellow" not in metrics  # no ground truth: AP undefined, not 0
    assert metrics["test/map"] == pytest.approx(1.0)
    assert f"test/map_class/{sorted(present)[0]}" in metrics


def test_predict(tmp_path):
    model = small(fcos, detections_per_img=5, score_thresh=0.0)
    batches = trainer(tmp_path).predict(model, loader(3))
    assert len(batches) == 1 and len(batches[0]) == 3
    assert set(batches[0][0]) == {"boxes", "scores", "labels"} and len(batches[0][0]["boxes"]) == 5
    model.eval()
    assert len(model.predict_step([torch.rand(3, 64, 64), torch.rand(3, 64, 64)], 0)) == 2


# -- pictures ------------------------------------------------------------------------------


def test_draw_detections():
    image = torch.rand(3, 64, 48)
    boxes, labels, scores = (
        torch.tensor([[4.0, 4.0, 30.0, 30.0]]),
        torch.tensor([2]),
        torch.tensor([0.8]),
    )
    picture = draw_detections(image, boxes, labels, scores, CLASS_NAMES)
    assert picture.size == (192, 256) and picture.mode == "RGB"  # enlarged 4x (nearest)

    empty = draw_detections(image, boxes, labels, scores, CLASS_NAMES, min_score=0.9)
    bare = draw_detections(image, torch.zeros(0, 4), torch.zeros(0, dtype=torch.long))
    assert empty.tobytes() == bare.tobytes() != picture.tobytes()

    panels = draw_detections(
        image, boxes, labels, scores, CLASS_NAMES, gt_boxes=boxes, gt_labels=labels, min_size=0
    )
    assert panels.size == (2 * 48 + 4, 64)
    with pytest.raises(ValueError, match="image"):
        draw_detections(torch.rand(64, 64), boxes, labels)


def test_detection_samples_skip_sanity_check(tmp_path):
    samples = DetectionSamples(num_images=1, output_dir=tmp_path / "pictures")
    fit = trainer(
        tmp_path,
        max_epochs=1,
        limit_train_batches=1,
        limit_val_batches=1,
        num_sanity_val_steps=1,
        callbacks=[samples],
    )
    fit.fit(small(fcos), loader(3), loader(3))
    assert [path.name for path in samples.saved] == [
        "epoch000-step000001-0.png"
    ]  # not the sanity check
    assert samples.saved[0].parent == tmp_path / "pictures"

    rare = DetectionSamples(every_n_validations=2)
    trainer(
        tmp_path, max_epochs=1, limit_train_batches=1, limit_val_batches=1, callbacks=[rare]
    ).fit(small(fcos), loader(3), loader(3))
    assert rare.saved == []
    with pytest.raises(ValueError, match="every_n_validations"):
        DetectionSamples(every_n_validations=0)
