"""The hook through which callbacks learn how many training samples each class has.

A datamodule that implements :class:`ClassCountsProvider` lets a callback such as
``ClassBalancedAlpha`` set per-class weights without a pass over the data: it calls
``trainer.datamodule.class_counts()`` once.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
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
            positives per class for multi-label or detection data. A module with several
            focal losses of different class counts takes a dict ``{loss name: counts}``
            (names as ``find_focal_losses`` gives them) instead.
        """
        ...


def counts_from_targets(
    targets: Sequence[int] | Tensor | Sequence[Mapping[str, Tensor]],
    num_classes: int,
    *,
    ignore_index: int | None = None,
) -> Tensor:
    """Count the samples (or positives) of each class: of a dataset or of one batch.

    - Class indices: ``(N,)``, or of any shape when ``ignore_index`` is given (a batch of
      segmentation targets, say); entries equal to ``ignore_index`` are skipped, any other
      index outside ``[0, num_classes)`` is an error.
    - Multi-hot: a float ``(..., C)`` tensor (entries > 0.5 count), or an integer ``(N, C)``
      one when ``ignore_index`` is not given (entries > 0 count): positives per class.
    - Detection targets: a list of dicts with ``"labels"``.

    Args:
        targets: as above.
        num_classes: number of classes ``C``, at least 1.
        ignore_index: class index that is not counted.

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
        >>> counts_from_targets(torch.tensor([0, 2, 2, -100]), 3, ignore_index=-100)
        tensor([1, 0, 2])
        >>> counts_from_targets([{"labels": torch.tensor([1, 1])}, {"labels": torch.tensor([0])}], 2)
        tensor([1, 2])
    """
    if num_classes < 1:
        raise ValueError(f"num_classes must be at least 1, got {num_classes}")
    if isinstance(targets, (list, tuple)) and targets and isinstance(targets[0], Mapping):
        targets = torch.cat([t["labels"].reshape(-1) for t in targets])
    targets_t = torch.as_tensor(targets).detach().cpu()
    if targets_t.numel() == 0:
        return torch.zeros(num_classes, dtype=torch.int64)
    multi_hot = targets_t.ndim >= 2 and (
        targets_t.is_floating_point() or (ignore_index is None and targets_t.ndim == 2)
    )
    if multi_hot:
        if targets_t.shape[-1] != num_classes or (ignore_index is None and targets_t.ndim != 2):
            raise ValueError(
                f"multi-hot targets of shape {tuple(targets_t.shape)} do not have "
                f"num_classes={num_classes} columns"
            )
        threshold = 0.5 if targets_t.is_floating_point() else 0
        return (targets_t.reshape(-1, num_classes) > threshold).sum(dim=0).to(torch.int64)
    if targets_t.ndim != 1 and ignore_index is None:
        raise ValueError(
            f"targets must be class indices (N,) or multi-hot (N, C), got shape "
            f"{tuple(targets_t.shape)}"
        )
    if targets_t.is_floating_point() or targets_t.is_complex():
        raise ValueError(
            f"class-index targets must be integers (float targets must be multi-hot, classes "
            f"last), got dtype {targets_t.dtype} and shape {tuple(targets_t.shape)}"
        )
    flat = targets_t.reshape(-1).to(torch.int64)
    if ignore_index is not None:
        flat = flat[flat != ignore_index]
    if flat.numel() and (flat.min() < 0 or flat.max() >= num_classes):
        raise ValueError(
            f"targets must lie in [0, {num_classes}), got values in "
            f"[{int(flat.min())}, {int(flat.max())}]"
        )
    return torch.bincount(flat, minlength=num_classes)
