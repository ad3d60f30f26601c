"""The classification metrics the app logs: accuracy, balanced accuracy, per-class recall, ECE.

Also :class:`MulticlassCalibrationGap`, the signed gap that ``CalibrationGamma`` monitors,
synced across DDP ranks by torchmetrics from declared state.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor
from torchmetrics import MeanMetric, MetricCollection
from torchmetrics.classification import (
    MulticlassAccuracy,
    MulticlassCalibrationError,
    MulticlassRecall,
)
from torchmetrics.wrappers import ClasswiseWrapper

__all__ = [
    "MulticlassCalibrationGap",
    "classification_metrics",
    "per_class_recall_metric",
]


def _top_label_format(preds: Tensor, target: Tensor) -> tuple[Tensor, Tensor]:
    """(confidence, correct) of the top label; ``preds`` (N, C) are softmaxed unless in [0, 1].

    The same convention as torchmetrics' ``MulticlassCalibrationError``.
    """
    preds = preds.detach().float()
    if not torch.all((preds >= 0) & (preds <= 1)):
        preds = preds.softmax(dim=1)
    confidence, predicted = preds.max(dim=1)
    return confidence, (predicted == target).float()


class MulticlassCalibrationGap(MeanMetric):
    r"""Signed calibration gap ``mean(confidence) - accuracy`` of top-label predictions.

    Positive: over-confident; negative: under-confident. ``update(preds, target)`` takes
    ``preds`` (N, C), logits or probabilities (softmaxed unless all in [0, 1], as
    ``MulticlassCalibrationError`` does) and ``target`` (N,) class indices. A ``MeanMetric``
    of ``confidence - correct``, so its state is a sum and a count, summed across ranks.

    Example:
        >>> gap = MulticlassCalibrationGap()
        >>> gap.update(torch.tensor([[0.9, 0.1], [0.8, 0.2]]), torch.tensor([0, 1]))
        >>> round(float(gap.compute()), 3)
        0.35
    """

    def update(self, preds: Tensor, target: Tensor) -> None:  # type: ignore[override]
        confidence, correct = _top_label_format(preds, target)
        super().update(confidence - correct)


def classification_metrics(num_classes: int, prefix: str) -> MetricCollection:
    """``acc``, ``balanced_acc``, ``ece`` and ``calibration_gap``, prefixed.

    Micro accuracy, macro recall, L1 ECE over 15 bins, and the signed
    :class:`MulticlassCalibrationGap` that ``CalibrationGamma`` monitors.

    Example:
        >>> import torch
        >>> metrics = classification_metrics(3, prefix="val/")
        >>> metrics.update(torch.tensor([[3.0, 0, 0], [3.0, 0, 0], [0, 0, 3.0]]), torch.tensor([0, 1, 2]))
        >>> {k: round(float(v), 3) for k, v in metrics.compute().items()}
        {'val/acc': 0.667, 'val/balanced_acc': 0.667, 'val/calibration_gap': 0.243, 'val/ece': 0.243}
    """
    return MetricCollection(
        {
            "acc": MulticlassAccuracy(num_classes=num_classes, average="micro"),
            "balanced_acc": MulticlassRecall(num_classes=num_classes, average="macro"),
            "ece": MulticlassCalibrationError(num_classes=num_classes, n_bins=15, norm="l1"),
            "calibration_gap": MulticlassCalibrationGap(),
        },
        prefix=prefix,
    )


def per_class_recall_metric(
    num_classes: int, class_names: Sequence[str] | None, prefix: str
) -> ClasswiseWrapper:
    """Recall of each class, logged as ``<prefix>recall/<class name>``.

    Example:
        >>> import torch
        >>> metric = per_class_recall_metric(2, ["cat", "dog"], prefix="test/")
        >>> metric.update(torch.tensor([[2.0, 0.0], [2.0, 0.0]]), torch.tensor([0, 1]))
        >>> {k: float(v) for k, v in metric.compute().items()}
        {'test/recall/cat': 1.0, 'test/recall/dog': 0.0}
    """
    labels = list(class_names) if class_names is not None else [str(c) for c in range(num_classes)]
    return ClasswiseWrapper(
        MulticlassRecall(num_classes=num_classes, average=None),
        labels=labels,
        prefix=f"{prefix}recall/",
    )
