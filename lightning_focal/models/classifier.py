"""``TimmClassifier``: any timm image classifier trained with focal loss through the mixin."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import lightning.pytorch as pl
import torch
from torch import Tensor

from ..losses import SoftmaxFocalLoss
from ..metrics import (
    ReliabilityBins,
    classification_metrics,
    per_class_recall_metric,
    reliability_bins,
)
from ..mixin import FocalLossMixin
from ._loss import focal_loss_from, focal_loss_node
from ._optim import optimizers_from

__all__ = ["TimmClassifier", "reliability_bins"]


class TimmClassifier(FocalLossMixin, pl.LightningModule):
    """A ``timm.create_model`` classifier trained with (focal) loss, with the app's metrics.

    γ=0 gives exactly cross-entropy through the same code path, so CE and focal runs differ
    only in their settings. Logs ``train/loss``, ``val/loss``, ``val/acc``,
    ``val/balanced_acc`` (macro recall), ``val/ece``, ``val/calibration_gap`` (mean confidence
    minus accuracy, which ``CalibrationGamma`` monitors), ``test/...`` likewise, and per-class
    recall ``test/recall/<class>``. After testing, ``test_summary["reliability"]`` holds the
    reliability bins of :class:`~lightning_focal.metrics.ReliabilityBins` for ``FocalPlots``.

    Args:
        model_name: any ``timm.create_model`` name (``test_resnet`` is tiny, for CPUs).
        num_classes: classes of the head.
        pretrained: load timm's pretrained weights (needs internet the first time).
        in_chans: input channels.
        loss: the loss, whole: a :class:`~lightning_focal.SoftmaxFocalLoss` (γ as a float,
            per class or a sample-dependent policy, α, ``label_smoothing``, ``poly1``, ...)
            or its ``_target_`` node (``{"_target_": "lightning_focal.SoftmaxFocalLoss",
            "gamma": 2.0, ...}``, what the app's ``loss`` config is); ``None`` for
            ``SoftmaxFocalLoss(gamma=2.0)``. It gets the model's ``num_classes``. The
            hyperparameters record it as a node, so ``load_from_checkpoint`` rebuilds it.
        optimizer: callable taking the parameters (Hydra ``_partial_: true``); AdamW(1e-3) if None.
        scheduler: optional callable taking the optimizer; stepped every optimiser step.
        class_names: names for per-class metrics.
        model_kwargs: extra keyword arguments of ``timm.create_model``.

    Example:
        >>> from lightning_focal import SoftmaxFocalLoss
        >>> model = TimmClassifier("test_resnet", num_classes=4, loss=SoftmaxFocalLoss(poly1=1.0))
        >>> model(torch.zeros(2, 3, 32, 32)).shape
        torch.Size([2, 4])
        >>> model.hparams.loss["poly1"], model.hparams.loss["num_classes"]
        (1.0, 4)
    """

    def __init__(
        self,
        model_name: str = "test_resnet",
        num_classes: int = 10,
        pretrained: bool = False,
        in_chans: int = 3,
        loss: SoftmaxFocalLoss | Mapping[str, Any] | None = None,
        optimizer: Callable[..., torch.optim.Optimizer] | None = None,
        scheduler: Callable[..., Any] | None = None,
        class_names: Sequence[str] | None = None,
        model_kwargs: dict[str, Any] | None = None,
    ) -> None:
        super().__init__()
        self.save_hyperparameters(ignore=["loss", "optimizer", "scheduler"])
        import timm  # the train extra; not imported by `import lightning_focal`

        self.net = timm.create_model(
            model_name,
            pretrained=pretrained,
            num_classes=num_classes,
            in_chans=in_chans,
            **(model_kwargs or {}),
        )
        self.optimizer_factory = optimizer
        self.scheduler_factory = scheduler
        self.class_names = (
            list(class_names) if class_names is not None else [str(c) for c in range(num_classes)]
        )
        loss = focal_loss_from(
            loss, SoftmaxFocalLoss, num_classes, SoftmaxFocalLoss(gamma=2.0), type(self).__name__
        )
        if loss.reduction == "none":
            raise ValueError(
                f"{type(self).__name__} trains on a scalar loss: loss.reduction='none'"
            )
        # the loss as a plain node, never the module: load_from_checkpoint and LightningCLI
        # pass hyperparameters back as init arguments
        self.save_hyperparameters(
            {**self.hparams, "loss": focal_loss_node(loss, type(self).__name__)}
        )
        self.configure_focal_loss(loss)
        self.val_metrics = classification_metrics(num_classes, "val/")
        self.test_metrics = classification_metrics(num_classes, "test/")
        self.test_recall = per_class_recall_metric(num_classes, self.class_names, "test/")
        self.test_reliability = ReliabilityBins(n_bins=15)
        self.test_summary: dict[str, Any] = {}

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)

    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        x, y = batch
        loss = self.focal_loss(self(x), y)
        self.log("train/loss", loss, prog_bar=True, batch_size=x.shape[0])
        return loss

    def validation_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        x, y = batch
        logits = self(x)
        self.log("val/loss", self.focal_loss(logits, y), sync_dist=True, batch_size=x.shape[0])
        self.val_metrics.update(logits, y)
        self.log_dict(self.val_metrics, prog_bar=True, batch_size=x.shape[0])

    def test_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        x, y = batch
        logits = self(x)
        self.log("test/loss", self.focal_loss(logits, y), sync_dist=True, batch_size=x.shape[0])
        self.test_metrics.update(logits, y)
        self.test_recall.update(logits, y)
        self.log_dict(self.test_metrics, batch_size=x.shape[0])
        self.test_reliability.update(torch.softmax(logits.float(), dim=1), y)

    def on_test_epoch_end(self) -> None:
        # compute() already synced the recall across ranks: sync_dist's mean of equal values
        # changes nothing, and without it Lightning warns once per class under DDP
        self.log_dict(self.test_recall.compute(), sync_dist=True)
        self.test_recall.reset()
        self.test_summary = {
            "reliability": self.test_reliability.compute(),  # synced across ranks
            "class_names": self.class_names,
        }
        self.test_reliability.reset()

    def configure_optimizers(self) -> Any:
        return optimizers_from(self.parameters(), self.optimizer_factory, self.scheduler_factory)
