"""The batch contract shared by the detection datamodules: collate and dataloader.

Every detection datamodule of this package yields batches ``(images, targets)``:

- ``images``: float32 ``(B, 3, H, W)`` in ``[0, 1]``; all images of one datamodule have the
  same size ``H = W = image_size``, so they are stacked into one tensor;
- ``targets``: a list of ``B`` dicts, each with ``"boxes"`` float32 ``(n, 4)`` in absolute
  pixel ``xyxy`` and ``"labels"`` int64 ``(n,)`` in ``[0, num_classes)`` (0-based, no
  background class); ``n`` may be 0. A dataset may add other keys (the COCO datamodule can
  add ``"crowd_boxes"``); they are passed through untouched.

This is the format torchvision's detection models and torchmetrics' ``MeanAveragePrecision``
take, apart from the images being one stacked tensor rather than a list.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from lightning_focal.data._loaders import seeded_dataloader

__all__ = ["detection_collate", "detection_dataloader"]

DetectionSample = tuple[Tensor, dict[str, Tensor]]


def detection_collate(
    batch: Sequence[DetectionSample],
) -> tuple[Tensor, list[dict[str, Tensor]]]:
    """Stack the images of a batch and keep the per-image targets as a list.

    Boxes differ in number from image to image, so they cannot be stacked; the images all
    have the datamodule's one size and can.

    Args:
        batch: ``(image (3, H, W), target dict)`` pairs, as a detection dataset returns them.

    Returns:
        ``images`` of shape ``(B, 3, H, W)`` and the list of the ``B`` target dicts.

    Raises:
        ValueError: for an empty batch or images of different shapes.

    Example:
        >>> import torch
        >>> from lightning_focal.data import detection_collate
        >>> one = (torch.zeros(3, 8, 8), {"boxes": torch.tensor([[1.0, 1.0, 4.0, 5.0]]),
        ...                               "labels": torch.tensor([2])})
        >>> empty = (torch.ones(3, 8, 8), {"boxes": torch.zeros(0, 4),
        ...                                "labels": torch.zeros(0, dtype=torch.int64)})
        >>> images, targets = detection_collate([one, empty])
        >>> images.shape, [t["labels"].tolist() for t in targets]
        (torch.Size([2, 3, 8, 8]), [[2], []])
    """
    if len(batch) == 0:
        raise ValueError("detection_collate got an empty batch")
    shapes = {tuple(image.shape) for image, _ in batch}
    if len(shapes) != 1:
        raise ValueError(
            f"detection_collate needs images of one size to stack them, got shapes {sorted(shapes)}"
        )
    images = torch.stack([image for image, _ in batch])
    targets = [target for _, target in batch]
    return images, targets


def detection_dataloader(
    dataset: Dataset[DetectionSample],
    batch_size: int,
    shuffle: bool,
    num_workers: int = 0,
    seed: int = 0,
) -> DataLoader:
    """A ``DataLoader`` over a detection dataset with :func:`detection_collate`.

    With ``shuffle`` the order comes from a ``torch.Generator`` seeded with ``seed``, so a
    run repeats exactly; under DDP Lightning replaces the sampler with a
    ``DistributedSampler`` (seeded by ``seed_everything``). Without ``shuffle`` the order is
    the dataset's.

    Args:
        dataset: map-style dataset of ``(image, target)`` pairs.
        batch_size: images per batch.
        shuffle: shuffle (train) or keep the order (val, test).
        num_workers: ``DataLoader`` worker processes.
        seed: seed of the shuffle.

    Returns:
        The ``DataLoader``.

    Example:
        >>> import torch
        >>> from lightning_focal.data import detection_dataloader
        >>> sample = (torch.zeros(3, 4, 4), {"boxes": torch.zeros(0, 4),
        ...                                  "labels": torch.zeros(0, dtype=torch.int64)})
        >>> loader = detection_dataloader([sample] * 5, batch_size=2, shuffle=True)
        >>> [images.shape[0] for images, _ in loader]
        [2, 2, 1]
    """
    return seeded_dataloader(
        dataset, batch_size, shuffle, num_workers, seed, collate_fn=detection_collate
    )
