"""RetinaNet and FCOS on a timm backbone, trained with this package's dense focal loss.

The detectors are torchvision's (``torchvision.models.detection.RetinaNet`` / ``FCOS``,
no weights) with the heads of :mod:`._detection_heads`, so ``GammaWarmup``,
``ClassBalancedAlpha`` and ``FocalBiasInit`` steer their classification loss exactly as
they steer a classifier's.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import lightning.pytorch as pl
import torch
from torch import Tensor, nn
from torchmetrics.detection import MeanAveragePrecision
from torchvision.models.detection import FCOS, RetinaNet
from torchvision.models.detection.anchor_utils import AnchorGenerator

from ..losses.dense_focal import DenseFocalLoss
from ..mixin import FocalLossMixin
from ._backbone import TimmFPNBackbone
from ._detection_heads import FocalFCOSHead, FocalRetinaNetHead, _group_norm
from ._loss import focal_loss_from, focal_loss_node

__all__ = [
    "DenseDetector",
    "FCOSDetector",
    "RetinaNetDetector",
    "map_backend",
    "mean_average_precision",
]

Batch = tuple[Tensor | Sequence[Tensor], list[dict[str, Tensor]]]
MAP_KEYS = ("map", "map_50", "map_75", "mar_100")


def map_backend() -> str:
    """``"faster_coco_eval"`` when it is installed, else ``"pycocotools"``."""
    return (
        "faster_coco_eval"
        if importlib.util.find_spec("faster_coco_eval") is not None
        else "pycocotools"
    )


def mean_average_precision() -> MeanAveragePrecision:
    """COCO box mAP with per-class AP (``class_metrics=True``) on the fastest installed backend.

    Example:
        >>> import torch
        >>> metric = mean_average_precision()
        >>> box = torch.tensor([[2.0, 2.0, 10.0, 10.0]])
        >>> metric.update([{"boxes": box, "scores": torch.tensor([0.9]), "labels": torch.tensor([1])}],
        ...               [{"boxes": box, "labels": torch.tensor([1])}])
        >>> round(float(metric.compute()["map"]), 3)
        1.0
    """
    return MeanAveragePrecision(
        box_format="xyxy", iou_type="bbox", class_metrics=True, backend=map_backend()
    )


def _plain(value: Any) -> Any:
    # Hydra passes ListConfig/DictConfig; plain containers keep checkpoints loadable with
    # torch.load(weights_only=True) and do not need omegaconf to unpickle.
    if type(value).__module__.startswith("omegaconf"):
        from omegaconf import OmegaConf

        return OmegaConf.to_container(value, resolve=True)
    return value


class DenseDetector(FocalLossMixin, pl.LightningModule):
    """Shared Lightning logic of the dense detectors: the loss, logging, mAP and optimiser.

    Subclasses build the torchvision detector in :meth:`build_detector`. The detector's
    classification head holds a :class:`~lightning_focal.losses.DenseFocalLoss`
    (``self.focal_loss``), registered as :meth:`FocalLossMixin.configure_focal_loss` would
    register it: the mixin's step diagnostics (``focal/num_positives``,
    ``focal/p_positives``, ``focal/p_negatives``, ``focal/gamma``, ...) are logged, the
    callbacks find the loss, and :meth:`focal_bias_layers` is the head's ``cls_logits`` conv.

    Batches are ``(images, targets)``: images float (B, 3, H, W) in [0, 1] (or a list of
    (3, H, W) tensors), targets a list of dicts with ``"boxes"`` (n, 4) absolute xyxy and
    ``"labels"`` (n,) int64 in [0, num_classes). ``training_step`` logs ``train/loss`` and
    ``train/loss_<term>`` for each of torchvision's terms; validation and test log COCO mAP
    from torchmetrics as ``val/map``, ``val/map_50``, ``val/map_75``, ``val/mar_100``,
    ``val/recall`` (= mar_100) and ``val/map_class/<class name>`` for every class with a
    defined AP (likewise ``test/``). ``validation_step`` returns the predictions.

    Args:
        backbone: ``timm.create_model`` name (``features_only=True``).
        num_classes: object classes, without a background class.
        image_size: images are resized so that their longer side is ``image_size``
            (torchvision's ``min_size = max_size = image_size``).
        pretrained_backbone: load timm's pretrained weights.
        fpn_channels: channels of the feature pyramid and the heads.
        out_indices: backbone stages fed to the FPN (default: the last three).
        score_thresh, nms_thresh, detections_per_img: post-processing of predictions.
        loss: the classification loss, whole: a
            :class:`~lightning_focal.DenseFocalLoss` (γ scalar, per class or a
            sample-dependent policy, α, ``poly1``, ``normalization`` — ``"per_image"`` as
            torchvision's RetinaNet, ``"batch"`` as its FCOS with positives averaged across
            DDP ranks, or ``"mean"`` —, ``ema_momentum``, ...) or its ``_target_`` node
            (``{"_target_": "lightning_focal.DenseFocalLoss", ...}``, what the app's
            ``loss`` config is); ``None`` for ``DenseFocalLoss(normalization=
            default_normalization)`` (γ=2, α=0.25). It gets the model's ``num_classes``;
            the hyperparameters record it as a node, so ``load_from_checkpoint`` rebuilds
            it. ``GammaWarmup`` and ``ClassBalancedAlpha`` drive its γ and α.
        class_names: names for per-class metrics and pictures (default ``"0"``, ``"1"``, ...).
        optimizer: callable taking the parameters (Hydra ``_partial_: true``);
            ``AdamW(lr=1e-3)`` when ``None``.
        scheduler: optional callable taking the optimiser; stepped every optimiser step.
        prior_bias_init: start the ``cls_logits`` bias at the focal-loss prior
            -log((1-π)/π), π = 0.01 (torchvision's initialisation). ``False`` sets it to 0,
            so that a run without a prior is a real baseline; ``FocalBiasInit`` sets the prior
            at fit start either way.
    """

    default_normalization = "per_image"
    """``normalization`` of the loss built for ``loss=None``."""

    def __init__(
        self,
        backbone: str,
        num_classes: int,
        image_size: int,
        pretrained_backbone: bool = False,
        fpn_channels: int = 64,
        out_indices: Sequence[int] | None = None,
        score_thresh: float = 0.05,
        nms_thresh: float = 0.5,
        detections_per_img: int = 100,
        loss: DenseFocalLoss | Mapping[str, Any] | None = None,
        class_names: Sequence[str] | None = None,
        optimizer: Callable[[Iterable[nn.Parameter]], torch.optim.Optimizer] | None = None,
        scheduler: Callable[[torch.optim.Optimizer], Any] | None = None,
        prior_bias_init: bool = False,
    ) -> None:
        super().__init__()
        self.save_hyperparameters(ignore=["loss", "optimizer", "scheduler"])
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        if image_size < 1:
            raise ValueError(f"image_size must be >= 1, got {image_size}")
        if class_names is not None and len(class_names) != num_classes:
            raise ValueError(
                f"class_names has {len(class_names)} names, expected num_classes={num_classes}"
            )
        self.num_classes = num_classes
        self.class_names = (
            [str(c) for c in class_names]
            if class_names is not None
            else [str(c) for c in range(num_classes)]
        )
        self.optimizer_factory = optimizer
        self.scheduler_factory = scheduler

        owner = type(self).__name__
        default = DenseFocalLoss(normalization=self.default_normalization)
        loss = focal_loss_from(_plain(loss), DenseFocalLoss, num_classes, default, owner)
        # the loss as a plain node, never the module: load_from_checkpoint and LightningCLI
        # pass hyperparameters back as init arguments
        hparams = {key: _plain(value) for key, value in self.hparams.items()}
        self.save_hyperparameters({**hparams, "loss": focal_loss_node(loss, owner)})
        features = TimmFPNBackbone(backbone, fpn_channels, pretrained_backbone, out_indices)
        self.model = self.build_detector(features, loss)
        cls_logits = self.model.head.classification_head.cls_logits
        if not prior_bias_init:
            nn.init.zeros_(cls_logits.bias)
        self.configure_focal_loss(loss, bias_layer="model.head.classification_head.cls_logits")
        self.val_map = mean_average_precision()
        self.test_map = mean_average_precision()

    # -- construction ---------------------------------------------------------------------

    def build_detector(self, backbone: TimmFPNBackbone, focal_loss: DenseFocalLoss) -> nn.Module:
        """The torchvision detector on ``backbone`` whose classification head holds ``focal_loss``.

        The extension point of :class:`DenseDetector`: RetinaNet and FCOS override it.
        """
        raise NotImplementedError(f"{type(self).__name__} must override build_detector()")

    def _detector_kwargs(self, backbone: TimmFPNBackbone) -> dict[str, Any]:
        hp = self.hparams
        return {
            "min_size": hp.image_size,
            "max_size": hp.image_size,
            "image_mean": backbone.image_mean,
            "image_std": backbone.image_std,
            "score_thresh": hp.score_thresh,
            "nms_thresh": hp.nms_thresh,
            "detections_per_img": hp.detections_per_img,
        }

    @property
    def focal_loss(self) -> DenseFocalLoss:
        """The classification loss inside the detector's head."""
        return self.model.head.classification_head.focal_loss

    # -- steps -----------------------------------------------------------------------------

    @staticmethod
    def _image_list(images: Tensor | Sequence[Tensor]) -> list[Tensor]:
        return list(images.unbind(0)) if isinstance(images, Tensor) else list(images)

    def forward(
        self, images: Tensor | Sequence[Tensor], targets: list[dict[str, Tensor]] | None = None
    ) -> Any:
        """torchvision's output: the loss dict in train mode, predictions in eval mode."""
        return self.model(self._image_list(images), targets)

    def training_step(self, batch: Batch, batch_idx: int) -> Tensor:
        images, targets = batch
        losses: dict[str, Tensor] = self.model(self._image_list(images), targets)
        loss = torch.stack(list(losses.values())).sum()
        batch_size = len(targets)
        self.log("train/loss", loss, prog_bar=True, batch_size=batch_size)
        for key, value in losses.items():
            self.log(f"train/loss_{key}", value, batch_size=batch_size)
        return loss

    def _predict(self, images: Tensor | Sequence[Tensor]) -> list[dict[str, Tensor]]:
        predictions = self.model(self._image_list(images))
        return [{k: v.detach() for k, v in p.items()} for p in predictions]

    def validation_step(self, batch: Batch, batch_idx: int) -> list[dict[str, Tensor]]:
        images, targets = batch
        predictions = self._predict(images)
        self.val_map.update(predictions, targets)
        return predictions

    def test_step(self, batch: Batch, batch_idx: int) -> list[dict[str, Tensor]]:
        images, targets = batch
        predictions = self._predict(images)
        self.test_map.update(predictions, targets)
        return predictions

    def predict_step(self, batch: Any, batch_idx: int) -> list[dict[str, Tensor]]:
        """Predictions for ``(images, targets)`` batches or for bare images."""
        has_targets = (
            isinstance(batch, (tuple, list))
            and len(batch) == 2
            and isinstance(batch[1], (tuple, list))
            and all(isinstance(t, dict) for t in batch[1])
        )
        return self._predict(batch[0] if has_targets else batch)

    def on_validation_epoch_end(self) -> None:
        self._log_map(self.val_map, "val")

    def on_test_epoch_end(self) -> None:
        self._log_map(self.test_map, "test")

    def _log_map(self, metric: MeanAveragePrecision, prefix: str) -> None:
        if not metric.update_called:
            return
        results = metric.compute()  # synced across ranks by torchmetrics
        metric.reset()
        # the results are equal on every rank: sync_dist's mean changes nothing, and without it
        # Lightning warns once per key under DDP
        for key in MAP_KEYS:
            self.log(f"{prefix}/{key}", results[key].float(), prog_bar=key == "map", sync_dist=True)
        self.log(f"{prefix}/recall", results["mar_100"].float(), sync_dist=True)
        classes = results["classes"].flatten().tolist()
        per_class = results["map_per_class"].flatten().tolist()
        for c, ap in zip(classes, per_class):
            # COCO gives -1 to a class without ground truth: undefined, not zero.
            if ap >= 0 and 0 <= int(c) < self.num_classes:
                self.log(
                    f"{prefix}/map_class/{self.class_names[int(c)]}", float(ap), sync_dist=True
                )

    def configure_optimizers(self) -> Any:
        factory = self.optimizer_factory or (lambda params: torch.optim.AdamW(params, lr=1e-3))
        optimizer = factory(self.parameters())
        if self.scheduler_factory is None:
            return optimizer
        return {
            "optimizer": optimizer,
            "lr_scheduler": {"scheduler": self.scheduler_factory(optimizer), "interval": "step"},
        }


class RetinaNetDetector(DenseDetector):
    """torchvision RetinaNet on a timm backbone + FPN (P3-P7), with this package's focal loss.

    Anchors: each pyramid level gets a base size (``anchor_sizes``, default 4 × its
    stride, i.e. torchvision's 32-512 for strides 8-128) times ``anchor_scales`` (default
    2^0, 2^(1/3), 2^(2/3), truncated to integers as torchvision does) at each of
    ``aspect_ratios``. Anchors with IoU >= ``fg_iou_thresh`` are positives, < ``bg_iou_thresh``
    negatives, and those between are ignored. ``head_group_norm=True`` puts a ``GroupNorm``
    after each of the head's convolutions, as torchvision's ``retinanet_resnet50_fpn_v2``
    (and FCOS) do; the default ``False`` is the original RetinaNet head. With the default
    loss settings the classification loss equals torchvision's. Other arguments: see
    :class:`DenseDetector`.

    Example:
        >>> import torch
        >>> model = RetinaNetDetector("test_resnet", num_classes=3, image_size=64, fpn_channels=16)
        >>> model.focal_loss.normalization, [type(m).__name__ for m in model.focal_bias_layers()]
        ('per_image', ['Conv2d'])
        >>> target = {"boxes": torch.tensor([[8.0, 8.0, 30.0, 30.0]]), "labels": torch.tensor([1])}
        >>> sorted(model(torch.rand(1, 3, 64, 64), [target]))
        ['bbox_regression', 'classification']
    """

    def __init__(
        self,
        backbone: str,
        num_classes: int,
        image_size: int,
        pretrained_backbone: bool = False,
        fpn_channels: int = 64,
        out_indices: Sequence[int] | None = None,
        anchor_sizes: Sequence[int] | None = None,
        aspect_ratios: Sequence[float] = (0.5, 1.0, 2.0),
        anchor_scales: Sequence[float] | None = None,
        head_group_norm: bool = False,
        fg_iou_thresh: float = 0.5,
        bg_iou_thresh: float = 0.4,
        score_thresh: float = 0.05,
        nms_thresh: float = 0.5,
        detections_per_img: int = 100,
        loss: DenseFocalLoss | Mapping[str, Any] | None = None,
        class_names: Sequence[str] | None = None,
        optimizer: Callable[[Iterable[nn.Parameter]], torch.optim.Optimizer] | None = None,
        scheduler: Callable[[torch.optim.Optimizer], Any] | None = None,
        prior_bias_init: bool = False,
    ) -> None:
        super().__init__(
            backbone,
            num_classes,
            image_size,
            pretrained_backbone=pretrained_backbone,
            fpn_channels=fpn_channels,
            out_indices=out_indices,
            score_thresh=score_thresh,
            nms_thresh=nms_thresh,
            detections_per_img=detections_per_img,
            loss=loss,
            class_names=class_names,
            optimizer=optimizer,
            scheduler=scheduler,
            prior_bias_init=prior_bias_init,
        )

    def anchor_generator(self, strides: Sequence[int]) -> AnchorGenerator:
        """Anchors for pyramid levels of the given strides, from the anchor settings."""
        hp = self.hparams
        sizes = (
            [int(s) for s in hp.anchor_sizes]
            if hp.anchor_sizes is not None
            else [4 * s for s in strides]
        )
        if len(sizes) != len(strides):
            raise ValueError(
                f"anchor_sizes has {len(sizes)} entries, the pyramid has {len(strides)} levels"
            )
        scales = (
            [float(k) for k in hp.anchor_scales]
            if hp.anchor_scales is not None
            else [1.0, 2 ** (1 / 3), 2 ** (2 / 3)]
        )
        ratios = tuple(float(r) for r in hp.aspect_ratios)
        if not scales or not ratios:
            raise ValueError("anchor_scales and aspect_ratios need at least one value each")
        return AnchorGenerator(
            tuple(tuple(int(size * k) for k in scales) for size in sizes),
            (ratios,) * len(sizes),
        )

    def build_detector(self, backbone: TimmFPNBackbone, focal_loss: DenseFocalLoss) -> nn.Module:
        anchors = self.anchor_generator(backbone.strides)
        head = FocalRetinaNetHead(
            backbone.out_channels,
            anchors.num_anchors_per_location()[0],
            self.hparams.num_classes,
            norm_layer=_group_norm(backbone.out_channels) if self.hparams.head_group_norm else None,
            focal_loss=focal_loss,
        )
        return RetinaNet(
            backbone,
            self.hparams.num_classes,
            anchor_generator=anchors,
            head=head,
            fg_iou_thresh=self.hparams.fg_iou_thresh,
            bg_iou_thresh=self.hparams.bg_iou_thresh,
            **self._detector_kwargs(backbone),
        )


class FCOSDetector(DenseDetector):
    """torchvision FCOS on a timm backbone + FPN (P3-P7), with this package's focal loss.

    One location per pyramid cell, of the level's stride as in torchvision; a location is
    positive for a box when it lies inside it, within ``center_sampling_radius`` strides of
    its centre and on the level responsible for its size. The classification loss uses
    ``normalization="batch"`` by default, which equals torchvision's in one process and
    averages the positive count across DDP ranks; the GIoU box and centre-ness losses are
    torchvision's.

    ``box_activation="exp"`` (the default) predicts the four box distances as exp(s_l·x)
    with a learnable scale per level, as the FCOS paper does
    (:class:`~lightning_focal.models._detection_heads.FCOSExpRegressionHead`);
    ``"relu"`` is torchvision's relu(x), whose zero-area boxes at initialisation can stall
    the GIoU loss at 1.0 for a whole run. With ``"relu"`` every loss term equals
    torchvision's FCOS (tested). Other arguments: see :class:`DenseDetector`.

    Example:
        >>> import torch
        >>> model = FCOSDetector("test_resnet", num_classes=3, image_size=64, fpn_channels=32)
        >>> target = {"boxes": torch.tensor([[8.0, 8.0, 30.0, 30.0]]), "labels": torch.tensor([1])}
        >>> sorted(model(torch.rand(1, 3, 64, 64), [target]))
        ['bbox_ctrness', 'bbox_regression', 'classification']
        >>> model.model.head.regression_head.scales.tolist()
        [1.0, 1.0, 1.0, 1.0, 1.0]
    """

    default_normalization = "batch"

    def __init__(
        self,
        backbone: str,
        num_classes: int,
        image_size: int,
        pretrained_backbone: bool = False,
        fpn_channels: int = 64,
        out_indices: Sequence[int] | None = None,
        center_sampling_radius: float = 1.5,
        box_activation: str = "exp",
        score_thresh: float = 0.05,
        nms_thresh: float = 0.5,
        detections_per_img: int = 100,
        loss: DenseFocalLoss | Mapping[str, Any] | None = None,
        class_names: Sequence[str] | None = None,
        optimizer: Callable[[Iterable[nn.Parameter]], torch.optim.Optimizer] | None = None,
        scheduler: Callable[[torch.optim.Optimizer], Any] | None = None,
        prior_bias_init: bool = False,
    ) -> None:
        super().__init__(
            backbone,
            num_classes,
            image_size,
            pretrained_backbone=pretrained_backbone,
            fpn_channels=fpn_channels,
            out_indices=out_indices,
            score_thresh=score_thresh,
            nms_thresh=nms_thresh,
            detections_per_img=detections_per_img,
            loss=loss,
            class_names=class_names,
            optimizer=optimizer,
            scheduler=scheduler,
            prior_bias_init=prior_bias_init,
        )

    def build_detector(self, backbone: TimmFPNBackbone, focal_loss: DenseFocalLoss) -> nn.Module:
        strides = backbone.strides
        anchors = AnchorGenerator(tuple((s,) for s in strides), ((1.0,),) * len(strides))
        head = FocalFCOSHead(
            backbone.out_channels,
            1,
            self.hparams.num_classes,
            focal_loss=focal_loss,
            box_activation=self.hparams.box_activation,
            num_levels=len(strides),
        )
        return FCOS(
            backbone,
            self.hparams.num_classes,
            anchor_generator=anchors,
            head=head,
            center_sampling_radius=self.hparams.center_sampling_radius,
            **self._detector_kwargs(backbone),
        )
