"""Plumbing shared by the datamodules: loader argument checks and seeded split loaders."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, ClassVar

import lightning as L
import torch
from torch.utils.data import DataLoader, Dataset

__all__ = ["SplitsDataModule", "check_loader_args", "seeded_dataloader"]


def check_loader_args(batch_size: int, num_workers: int) -> None:
    """Raise ``ValueError`` unless ``batch_size >= 1`` and ``num_workers >= 0``.

    Example:
        >>> check_loader_args(batch_size=0, num_workers=0)
        Traceback (most recent call last):
        ...
        ValueError: batch_size must be at least 1, got 0
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    if num_workers < 0:
        raise ValueError(f"num_workers must be non-negative, got {num_workers}")


def seeded_dataloader(
    dataset: Dataset,
    batch_size: int,
    shuffle: bool,
    num_workers: int = 0,
    seed: int = 0,
    *,
    persistent_workers: bool = False,
    collate_fn: Callable[[list[Any]], Any] | None = None,
) -> DataLoader:
    """A plain ``DataLoader`` whose shuffled order comes from a generator seeded with ``seed``.

    Every loader made with the same ``seed`` yields the same batches. It stays a plain
    ``DataLoader`` over the default sampler, which Lightning swaps for a
    ``DistributedSampler`` under DDP.

    Args:
        dataset: map-style dataset.
        batch_size: samples per batch.
        shuffle: shuffle (train) or keep the dataset's order (val, test).
        num_workers: ``DataLoader`` worker processes.
        seed: seed of the shuffle; unused without ``shuffle``.
        persistent_workers: keep the workers alive between epochs (only with
            ``num_workers > 0``; ``DataLoader`` rejects it otherwise).
        collate_fn: batch collation; ``None`` for PyTorch's default.

    Example:
        >>> [batch.tolist() for batch in seeded_dataloader(range(6), 3, shuffle=True, seed=1)]
        [[0, 4, 5], [1, 2, 3]]
        >>> [batch.tolist() for batch in seeded_dataloader(range(6), 3, shuffle=True, seed=1)]
        [[0, 4, 5], [1, 2, 3]]
    """
    return DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=shuffle,
        num_workers=num_workers,
        persistent_workers=persistent_workers and num_workers > 0,
        generator=torch.Generator().manual_seed(seed) if shuffle else None,
        collate_fn=collate_fn,
    )


class SplitsDataModule(L.LightningDataModule):
    """Base of the datamodules whose ``setup`` fills ``train_set``, ``val_set`` and ``test_set``.

    The subclass saves ``batch_size``, ``num_workers`` and ``seed`` as hyperparameters and
    sets the three splits to ``None`` in ``__init__``. ``train_dataloader`` shuffles with a
    generator seeded with ``seed`` (see :func:`seeded_dataloader`); val and test keep the
    dataset's order. A loader asked for before its split exists raises ``RuntimeError``.

    Attributes:
        _persistent_workers: keep the loader workers alive between epochs.
        _collate_fn: batch collation (wrap a function in ``staticmethod``); ``None`` for
            PyTorch's default.
    """

    train_set: Dataset | None
    val_set: Dataset | None
    test_set: Dataset | None
    _persistent_workers: ClassVar[bool] = False
    _collate_fn: ClassVar[Callable[[list[Any]], Any] | None] = None

    def _missing_split_message(self, split: str) -> str:
        """The ``RuntimeError`` message for a loader asked for before its split exists."""
        return f"{type(self).__name__}: call setup() before asking for a dataloader"

    def _loader(self, dataset: Dataset | None, split: str, shuffle: bool) -> DataLoader:
        if dataset is None:
            raise RuntimeError(self._missing_split_message(split))
        hp = self.hparams
        return seeded_dataloader(
            dataset,
            hp.batch_size,
            shuffle=shuffle,
            num_workers=hp.num_workers,
            seed=hp.seed,
            persistent_workers=self._persistent_workers,
            collate_fn=self._collate_fn,
        )

    def train_dataloader(self) -> DataLoader:
        """Train batches, shuffled by a generator seeded with ``seed`` (each new loader repeats)."""
        return self._loader(self.train_set, "train", shuffle=True)

    def val_dataloader(self) -> DataLoader:
        """Validation batches in the dataset's order."""
        return self._loader(self.val_set, "val", shuffle=False)

    def test_dataloader(self) -> DataLoader:
        """Test batches in the dataset's order."""
        return self._loader(self.test_set, "test", shuffle=False)
