"""The hook through which callbacks learn how many training samples each class has.

A datamodule that implements :class:`ClassCountsProvider` lets a callback such as
``ClassBalancedAlpha`` set per-class weights without a pass over the data: it calls
``trainer.datamodule.class_counts()`` once.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol, runtime_checkable

import torch
from torch import Tensor

__all__ = ["ClassCountsProvider", "counts_from_targets"]


@runtime_checkable
class ClassCountsProvider(Protocol):
    """Anything that can report the per-class sample counts of its training split.

    ``class_counts()`` must be cheap (no pass over the images: from labels held in memory or
    from the subsampling plan) and give the same answer on every DDP rank, since each rank
    calls it on its own.

    The protocol is ``runtime_checkable``, so ``isinstance(dm, ClassCountsProvider)`` tells
    whether a datamodule offers the hook (it checks that the method exists, not its
    signature).

    Example:
        >>> import torch
        >>> from lightning_focal.data import ClassCountsProvider
        >>> class Toy:
        ...     def class_counts(self) -> torch.Tensor:
        ...         return torch.tensor([90, 9, 1])
        >>> isinstance(Toy(), ClassCountsProvider)
        True
        >>> isinstance(object(), ClassCountsProvider)
        False
    """

    def class_counts(self) -> Tensor:
        """Per-class counts of the TRAINING split.

        Returns:
            An int64 tensor of shape ``(C,)``: samples per class for single-label data,
            positives per class for multi-label or detection data.
        """
        ...


def counts_from_targets(targets: Sequence[int] | Tensor, num_classes: int) -> Tensor:
    """Count the samples of each class.

    ``targets`` of shape ``(N,)`` are class indices and are counted with ``bincount``
    (classes that never occur get 0). A 2-D ``(N, C)`` multi-hot tensor is read as
    multi-label targets and gives the positives per class (entries > 0 count as positive).

    Args:
        targets: class indices ``(N,)`` in ``[0, num_classes)``, or multi-hot ``(N, C)``.
        num_classes: number of classes ``C``, at least 1.

    Returns:
        An int64 tensor of shape ``(num_classes,)``.

    Raises:
        ValueError: for ``num_classes < 1``, indices outside ``[0, num_classes)``, a
            multi-hot width other than ``num_classes``, or targets of another rank.

    Example:
        >>> from lightning_focal.data import counts_from_targets
        >>> counts_from_targets([0, 2, 2, 1, 2], num_classes=4)
        tensor([1, 1, 3, 0])
        >>> counts_from_targets(torch.tensor([[1, 0, 1], [0, 0, 1]]), num_classes=3)
        tensor([1, 0, 2])
    """
    if num_classes < 1:
        raise ValueError(f"num_classes must be at least 1, got {num_classes}")
    targets_t = torch.as_tensor(targets)
    if targets_t.ndim == 2:
        if targets_t.shape[1] != num_classes:
            raise ValueError(
                f"multi-hot targets of shape {tuple(targets_t.shape)} do not have "
                f"num_classes={num_classes} columns"
            )
        return (targets_t > 0).sum(dim=0).to(torch.int64)
    if targets_t.ndim != 1:
        raise ValueError(
            f"targets must be class indices (N,) or multi-hot (N, C), got shape "
            f"{tuple(targets_t.shape)}"
        )
    if targets_t.numel() == 0:
        return torch.zeros(num_classes, dtype=torch.int64)
    if targets_t.is_floating_point() or targets_t.is_complex():
        raise ValueError(f"class-index targets must be integers, got dtype {targets_t.dtype}")
    targets_t = targets_t.to(torch.int64)
    if targets_t.numel() and (targets_t.min() < 0 or targets_t.max() >= num_classes):
        raise ValueError(
            f"targets must lie in [0, {num_classes}), got values in "
            f"[{int(targets_t.min())}, {int(targets_t.max())}]"
        )
    return torch.bincount(targets_t, minlength=num_classes)
