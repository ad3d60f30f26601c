"""The classification metrics the app logs: accuracy, balanced accuracy, per-class recall, ECE.

Also the two calibration metrics built here: :class:`MulticlassCalibrationGap` (the signed
gap that ``CalibrationGamma`` monitors) and :class:`ReliabilityBins` (the reliability diagram
``FocalPlots`` draws), both synced across DDP ranks by torchmetrics from declared state.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor
from torchmetrics import MeanMetric, Metric, MetricCollection
from torchmetrics.classification import (
    MulticlassAccuracy,
    MulticlassCalibrationError,
    MulticlassRecall,
)
from torchmetrics.wrappers import ClasswiseWrapper

__all__ = [
    "MulticlassCalibrationGap",
    "ReliabilityBins",
    "classification_metrics",
    "per_class_recall_metric",
    "reliability_bins",
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


def _reliability_bins_update(
    confidence: Tensor, correct: Tensor, n_bins: int
) -> tuple[Tensor, Tensor, Tensor]:
    edges = torch.linspace(0, 1, n_bins + 1, device=confidence.device)
    confidence = confidence.float()
    index = torch.bucketize(confidence.clamp(0, 1), edges[1:-1], right=True)
    count = torch.bincount(index, minlength=n_bins).float()
    conf_sum = torch.bincount(index, weights=confidence, minlength=n_bins)
    acc_sum = torch.bincount(index, weights=correct.float(), minlength=n_bins)
    return count, conf_sum, acc_sum


def _reliability_bins_compute(
    count: Tensor, conf_sum: Tensor, acc_sum: Tensor, n_bins: int
) -> dict[str, list[float]]:
    safe = count.clamp_min(1)
    return {
        "confidence": (conf_sum / safe).tolist(),
        "accuracy": (acc_sum / safe).tolist(),
        "count": count.tolist(),
        "edges": torch.linspace(0, 1, n_bins + 1).tolist(),
    }


def reliability_bins(
    confidence: Tensor, correct: Tensor, n_bins: int = 15
) -> dict[str, list[float]]:
    """Per-bin mean confidence, accuracy and count of top-label predictions.

    ``n_bins`` equal bins of [0, 1], each right-closed except the first; an empty bin reports
    confidence and accuracy 0. The output is what :func:`lightning_focal.plots.plot_reliability`
    draws: lists ``confidence``, ``accuracy``, ``count`` (``n_bins`` each) and ``edges``
    (``n_bins + 1``).

    Example:
        >>> bins = reliability_bins(torch.tensor([0.95, 0.95, 0.25]), torch.tensor([1, 0, 1]), n_bins=2)
        >>> bins["accuracy"], bins["count"]
        ([1.0, 0.5], [1.0, 2.0])
    """
    return _reliability_bins_compute(*_reliability_bins_update(confidence, correct, n_bins), n_bins)


class ReliabilityBins(Metric):
    """:func:`reliability_bins` of top-label predictions, accumulated over batches and ranks.

    ``update(preds, target)``: ``preds`` (N, C) logits or probabilities (softmaxed unless all
    in [0, 1]), ``target`` (N,) class indices. The state is three ``n_bins`` vectors (count,
    sum of confidence, sum of correct) summed across ranks, so it stays the same size however
    many samples are seen. ``compute()`` returns the dict of :func:`reliability_bins`.

    Args:
        n_bins: equal-width confidence bins of [0, 1].

    Example:
        >>> metric = ReliabilityBins(n_bins=2)
        >>> metric.update(torch.tensor([[0.95, 0.05], [0.95, 0.05]]), torch.tensor([0, 1]))
        >>> metric.update(torch.tensor([[0.25, 0.75]]), torch.tensor([1]))
        >>> bins = metric.compute()
        >>> bins["accuracy"], bins["count"], bins["edges"]
        ([0.0, 0.6666666865348816], [0.0, 3.0], [0.0, 0.5, 1.0])
    """

    full_state_update = False

    def __init__(self, n_bins: int = 15, **kwargs) -> None:
        super().__init__(**kwargs)
        if not isinstance(n_bins, int) or n_bins < 1:
            raise ValueError(f"n_bins must be a positive int, got {n_bins!r}")
        self.n_bins = n_bins
        for name in ("count", "conf_sum", "acc_sum"):
            self.add_state(name, default=torch.zeros(n_bins), dist_reduce_fx="sum")

    def update(self, preds: Tensor, target: Tensor) -> None:
        count, conf_sum, acc_sum = _reliability_bins_update(
            *_top_label_format(preds, target), self.n_bins
        )
        self.count += count
        self.conf_sum += conf_sum
        self.acc_sum += acc_sum

    def compute(self) -> dict[str, list[float]]:
        return _reliability_bins_compute(self.count, self.conf_sum, self.acc_sum, self.n_bins)


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
