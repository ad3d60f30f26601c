"""The classification metrics the app logs: accuracy, balanced accuracy, per-class recall, ECE."""

from __future__ import annotations

from collections.abc import Sequence

from torchmetrics import MetricCollection
from torchmetrics.classification import (
    MulticlassAccuracy,
    MulticlassCalibrationError,
    MulticlassRecall,
)
from torchmetrics.wrappers import ClasswiseWrapper

__all__ = ["classification_metrics", "per_class_recall_metric"]


def classification_metrics(num_classes: int, prefix: str) -> MetricCollection:
    """``acc`` (micro), ``balanced_acc`` (macro recall) and ``ece`` (L1, 15 bins), prefixed.

    Example:
        >>> import torch
        >>> metrics = classification_metrics(3, prefix="val/")
        >>> metrics.update(torch.tensor([[3.0, 0, 0], [3.0, 0, 0], [0, 0, 3.0]]), torch.tensor([0, 1, 2]))
        >>> {k: round(float(v), 3) for k, v in metrics.compute().items()}
        {'val/acc': 0.667, 'val/balanced_acc': 0.667, 'val/ece': 0.243}
    """
    return MetricCollection(
        {
            "acc": MulticlassAccuracy(num_classes=num_classes, average="micro"),
            "balanced_acc": MulticlassRecall(num_classes=num_classes, average="macro"),
            "ece": MulticlassCalibrationError(num_classes=num_classes, n_bins=15, norm="l1"),
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
