"""``DenseDetector``: one LightningModule that trains a torchvision RetinaNet or FCOS with focal loss.

The detector is built outside it — by :func:`~lightning_focal.models.retinanet` /
:func:`~lightning_focal.models.fcos` (the app's, on a timm FPN backbone) or by the user
(``torchvision.models.detection.retinanet_resnet50_fpn``, a custom backbone, ...) — and
:func:`~lightning_focal.detection.with_focal_loss` makes the given
:class:`~lightning_focal.DenseFocalLoss` its classification loss, so ``GammaWarmup``,
``ClassBalancedAlpha``, ``FocalBiasInit`` and ``LossCDF`` steer and read it.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.utilities import rank_zero_warn
from torch import Tensor, nn
from torchmetrics.detection import MeanAveragePrecision
from torchvision.models.detection import FCOS, RetinaNet

from .._config import check_arguments
from ..detection import SUPPORTED_DETECTORS, focal_loss_of, with_focal_loss
from ..losses.dense_focal import DenseFocalLoss
from ..mixin import FocalLossMixin
from ._loss import _locate, focal_loss_from, focal_loss_node
from ._optim import optimizers_from
from .detectors import FACTORY_NODE

__all__ = ["DenseDetector", "map_backend", "mean_average_precision"]

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
    """A torchvision ``RetinaNet`` or ``FCOS`` trained with a dense focal loss: loss, logging, mAP, optimiser.

    ``detector`` gets ``loss`` as its classification loss through
    :func:`~lightning_focal.detection.with_focal_loss` (``self.focal_loss``), registered as
    :meth:`FocalLossMixin.configure_focal_loss` would register it: the mixin's step
    diagnostics (``focal/num_positives``, ``focal/p_positives``, ``focal/p_negatives``,
    ``focal/gamma``, ...) are logged, the callbacks find the loss, and
    :meth:`focal_bias_layers` is the head's ``cls_logits`` conv. Its box and centre-ness
    losses, anchors, matching and post-processing stay the detector's. The prior of the
    classification bias is the detector's too (the factories' ``prior_probability``).

    Batches are ``(images, targets)``: images float (B, 3, H, W) in [0, 1] (or a list of
    (3, H, W) tensors), targets a list of dicts with ``"boxes"`` (n, 4) absolute xyxy and
    ``"labels"`` (n,) int64 in [0, num_classes). ``training_step`` logs ``train/loss`` and
    ``train/loss_<term>`` for each of torchvision's terms; validation and test log COCO mAP
    from torchmetrics as ``val/map``, ``val/map_50``, ``val/map_75``, ``val/mar_100``,
    ``val/recall`` (= mar_100) and ``val/map_class/<class name>`` for every class with a
    defined AP (likewise ``test/``). ``validation_step`` returns the predictions.

    The hyperparameters hold no module: ``detector`` is recorded as the ``_target_`` node
    its factory left on it (``model.factory_node``) and ``loss`` as its node, so
    ``DenseDetector.load_from_checkpoint(path)`` builds both again. A detector built
    another way is recorded as ``None`` (with a warning): pass
    ``load_from_checkpoint(path, detector=<the same architecture>)``.

    Args:
        detector: a ``torchvision.models.detection.RetinaNet`` or ``FCOS`` (or subclass),
            or the ``_target_`` node of a factory
            (``{"_target_": "lightning_focal.models.retinanet", "num_classes": 3, ...}``).
            Its classification head's ``num_classes`` is the module's.
        loss: the classification loss, whole: a
            :class:`~lightning_focal.DenseFocalLoss` (γ scalar, per class or a
            sample-dependent policy, α, ``poly1``, ``normalization`` — ``"per_image"`` as
            torchvision's RetinaNet, ``"batch"`` as its FCOS with positives averaged across
            DDP ranks, or ``"mean"`` —, ``ema_momentum``, ...) or its ``_target_`` node
            (what the app's ``loss`` config is); ``None`` for torchvision's loss
            (γ=2, α=0.25, ``"per_image"`` for RetinaNet, ``"batch"`` for FCOS).
        class_names: names for per-class metrics and pictures (default ``"0"``, ``"1"``, ...).
        optimizer: callable taking the parameters (Hydra ``_partial_: true``);
            ``AdamW(lr=1e-3)`` when ``None``.
        scheduler: optional callable taking the optimiser; stepped every optimiser step.

    Example:
        >>> import torch
        >>> from lightning_focal.models import retinanet
        >>> model = DenseDetector(retinanet(num_classes=3, image_size=64, fpn_channels=16),
        ...                       class_names=["a", "b", "c"])
        >>> model.num_classes, model.focal_loss.normalization, model.hparams["detector"]["_target_"]
        (3, 'per_image', 'lightning_focal.models.retinanet')
        >>> target = {"boxes": torch.tensor([[8.0, 8.0, 30.0, 30.0]]), "labels": torch.tensor([1])}
        >>> sorted(model(torch.rand(1, 3, 64, 64), [target]))
        ['bbox_regression', 'classification']
    """

    def __init__(
        self,
        detector: RetinaNet | FCOS | Mapping[str, Any],
        loss: DenseFocalLoss | Mapping[str, Any] | None = None,
        class_names: Sequence[str] | None = None,
        optimizer: Callable[[Iterable[nn.Parameter]], torch.optim.Optimizer] | None = None,
        scheduler: Callable[[torch.optim.Optimizer], Any] | None = None,
    ) -> None:
        super().__init__()
        owner = type(self).__name__
        self.save_hyperparameters(ignore=["detector", "loss", "optimizer", "scheduler"])
        detector = _build_detector(_plain(detector), owner)
        if not isinstance(detector, (RetinaNet, FCOS)):
            raise TypeError(
                f"{owner} trains a {' or '.join(SUPPORTED_DETECTORS)} (e.g. from "
                f"lightning_focal.models.retinanet or fcos), got {type(detector).__name__}"
            )
        num_classes = int(detector.head.classification_head.num_classes)
        if class_names is not None and len(class_names) != num_classes:
            raise ValueError(
                f"class_names has {len(class_names)} names, the detector has "
                f"num_classes={num_classes}"
            )
        self.num_classes = num_classes
        self.class_names = (
            [str(c) for c in class_names]
            if class_names is not None
            else [str(c) for c in range(num_classes)]
        )
        self.optimizer_factory = optimizer
        self.scheduler_factory = scheduler

        normalization = "per_image" if isinstance(detector, RetinaNet) else "batch"
        default = DenseFocalLoss(normalization=normalization)
        loss = focal_loss_from(_plain(loss), DenseFocalLoss, num_classes, default, owner)
        self.detector = with_focal_loss(detector, loss)
        node = getattr(detector, FACTORY_NODE, None)
        if node is None:
            rank_zero_warn(
                f"{owner}: the detector ({type(detector).__name__}) was not built by a "
                "lightning_focal.models factory, so the hyperparameters cannot rebuild it: "
                "pass detector= to load_from_checkpoint"
            )
        # nodes, never modules: load_from_checkpoint and LightningCLI pass hyperparameters
        # back as init arguments, and checkpoints load with torch.load(weights_only=True)
        hparams = {key: _plain(value) for key, value in self.hparams.items()}
        self.save_hyperparameters(
            {**hparams, "detector": node, "loss": focal_loss_node(loss, owner)}
        )
        self.configure_focal_loss(loss, bias_layer="detector.head.classification_head.cls_logits")
        self.val_map = mean_average_precision()
        self.test_map = mean_average_precision()

    @property
    def focal_loss(self) -> DenseFocalLoss:
        """The classification loss inside the detector's head."""
        return focal_loss_of(self.detector)

    # -- steps -----------------------------------------------------------------------------

    @staticmethod
    def _image_list(images: Tensor | Sequence[Tensor]) -> list[Tensor]:
        return list(images.unbind(0)) if isinstance(images, Tensor) else list(images)

    def forward(
        self, images: Tensor | Sequence[Tensor], targets: list[dict[str, Tensor]] | None = None
    ) -> Any:
        """torchvision's output: the loss dict in train mode, predictions in eval mode."""
        return self.detector(self._image_list(images), targets)

    def training_step(self, batch: Batch, batch_idx: int) -> Tensor:
        images, targets = batch
        losses: dict[str, Tensor] = self.detector(self._image_list(images), targets)
        loss = torch.stack(list(losses.values())).sum()
        batch_size = len(targets)
        self.log("train/loss", loss, prog_bar=True, batch_size=batch_size)
        for key, value in losses.items():
            self.log(f"train/loss_{key}", value, batch_size=batch_size)
        return loss

    def _predict(self, images: Tensor | Sequence[Tensor]) -> list[dict[str, Tensor]]:
        predictions = self.detector(self._image_list(images))
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
        return optimizers_from(self.parameters(), self.optimizer_factory, self.scheduler_factory)


def _build_detector(detector: Any, owner: str) -> Any:
    # a factory node: from the hyperparameters of a checkpoint, or a config not built by Hydra
    if detector is None:
        raise TypeError(
            f"{owner} needs detector=: a torchvision RetinaNet/FCOS or a factory node; a "
            "checkpoint of a detector not built by a lightning_focal.models factory records "
            "none, so pass detector= to load_from_checkpoint"
        )
    if not isinstance(detector, Mapping):
        return detector
    kwargs = {str(k): v for k, v in detector.items()}
    target = kwargs.pop("_target_", None)
    if target is None:
        raise ValueError(
            f"{owner}'s detector node needs a _target_ (e.g. lightning_focal.models.retinanet), "
            f"got keys {sorted(kwargs)}"
        )
    factory = _locate(target, "detector") if isinstance(target, str) else target
    check_arguments(factory, kwargs, "detector")
    return factory(**kwargs)
