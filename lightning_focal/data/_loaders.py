"""Plumbing shared by the datamodules: loader argument checks and resumable, seeded loaders.

A training run must be a pure function of its config, and a resumed run the same run: the
order of the training items is a pure function of ``(seed, epoch)``
(:class:`ResumableSampler`), random augmentation a pure function of ``(seed, epoch, index)``
(:class:`EpochDataset`), and the loader (:class:`ResumableDataLoader`) tells Lightning, in
the checkpoint, how many batches of the epoch were used, so a resume continues mid-epoch.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Iterator, Sequence, Sized
from typing import Any, ClassVar, TypeVar

import lightning as L
import numpy as np
import torch
from lightning.pytorch.overrides.distributed import UnrepeatedDistributedSampler
from torch.utils.data import BatchSampler, DataLoader, Dataset, DistributedSampler, Subset

__all__ = [
    "EpochDataset",
    "ResumableDataLoader",
    "ResumableSampler",
    "SeededSubset",
    "SplitsDataModule",
    "check_loader_args",
    "mix_seed",
    "seeded_dataloader",
]

T_co = TypeVar("T_co", covariant=True)

_MASK64 = (1 << 64) - 1
# stream tags of mix_seed, so that no two kinds of draw share a seed
ORDER_STREAM = 1
NOISE_STREAM = 2
AUGMENT_STREAM = 3


def _splitmix64(value: int) -> int:
    value = (value + 0x9E3779B97F4A7C15) & _MASK64
    value = ((value ^ (value >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    value = ((value ^ (value >> 27)) * 0x94D049BB133111EB) & _MASK64
    return value ^ (value >> 31)


def mix_seed(*values: int) -> int:
    """A 63-bit seed that depends on every value (nearby inputs give unrelated streams).

    ``torch.Generator().manual_seed(seed + epoch)`` would give seed 0 at epoch 1 the order
    of seed 1 at epoch 0; SplitMix64 over the values does not.

    Example:
        >>> mix_seed(0, 1) == mix_seed(1, 0)
        False
        >>> mix_seed(3, 4) == mix_seed(3, 4)
        True
    """
    state = 0
    for value in values:
        state = _splitmix64(state ^ (value & _MASK64))
    return state >> 1


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


class ResumableSampler(DistributedSampler):
    """This rank's training indices of an epoch: a pure function of ``(seed, epoch)``.

    The order of an epoch is ``torch.randperm(len(dataset))`` from a generator seeded with
    ``mix_seed(seed, ORDER_STREAM, epoch)`` (no shuffle: ``0..n-1``), split over
    ``num_replicas`` ranks exactly as ``DistributedSampler`` does (padded by repeating the
    head of the order, or trimmed with ``drop_last``); Lightning calls :meth:`set_epoch`
    before every epoch. It is a ``DistributedSampler`` so that Lightning keeps it under
    DDP instead of swapping in its own (which orders by ``seed + epoch`` and is not
    resumable); the datamodule passes the ranks (see :class:`SplitsDataModule`).

    :meth:`start_next_at` makes the next iteration begin at a position (how
    :class:`ResumableDataLoader` continues an epoch without reading the skipped items), and
    with ``epoch_keys`` it yields ``(epoch, index)`` pairs for an :class:`EpochDataset`.

    Args:
        dataset: the sized dataset to index.
        seed: seed of the order.
        shuffle: a new random order every epoch, else the dataset's order.
        num_replicas: ranks that share the data.
        rank: this rank, ``0 <= rank < num_replicas``.
        drop_last: drop the tail that does not split evenly instead of padding.
        epoch_keys: yield ``(epoch, index)`` instead of ``index``.

    Example:
        >>> sampler = ResumableSampler(range(6), seed=1)
        >>> list(sampler)
        [1, 2, 3, 4, 0, 5]
        >>> sampler.set_epoch(1); list(sampler)
        [0, 4, 1, 2, 5, 3]
        >>> sampler.start_next_at(4); list(sampler), list(sampler)
        ([5, 3], [0, 4, 1, 2, 5, 3])
        >>> list(ResumableSampler(range(5), seed=1, num_replicas=2, rank=1))  # padded to 6
        [0, 2, 1]
    """

    def __init__(
        self,
        dataset: Sized,
        seed: int = 0,
        shuffle: bool = True,
        num_replicas: int = 1,
        rank: int = 0,
        drop_last: bool = False,
        epoch_keys: bool = False,
    ) -> None:
        super().__init__(
            dataset,  # type: ignore[arg-type]
            num_replicas=num_replicas,
            rank=rank,
            shuffle=shuffle,
            seed=seed,
            drop_last=drop_last,
        )
        self.epoch_keys = epoch_keys
        self._start = 0

    def indices(self, epoch: int) -> list[int]:
        """This rank's indices of ``epoch``, in order.

        Example:
            >>> ResumableSampler(range(4), shuffle=False, num_replicas=2, rank=0).indices(7)
            [0, 2]
        """
        n = len(self.dataset)  # type: ignore[arg-type]
        if self.shuffle:
            generator = torch.Generator().manual_seed(mix_seed(self.seed, ORDER_STREAM, epoch))
            order = torch.randperm(n, generator=generator).tolist()
        else:
            order = list(range(n))
        if self.drop_last:
            order = order[: self.total_size]
        elif (padding := self.total_size - n) > 0:
            order += (order * math.ceil(padding / n))[:padding]
        return order[self.rank : self.total_size : self.num_replicas]

    def start_next_at(self, position: int) -> None:
        """Begin the next iteration (only that one) at ``position`` of this rank's indices.

        Example:
            >>> sampler = ResumableSampler(range(4), shuffle=False)
            >>> sampler.start_next_at(3); list(sampler)
            [3]
        """
        if not 0 <= position <= self.num_samples:
            raise ValueError(f"position must be in [0, {self.num_samples}], got {position}")
        self._start = position

    def __iter__(self) -> Iterator[Any]:
        epoch, start = self.epoch, self._start
        self._start = 0
        indices = self.indices(epoch)[start:]
        if self.epoch_keys:
            return iter([(epoch, index) for index in indices])
        return iter(indices)


class EpochDataset(Dataset[T_co]):
    """Base of training datasets whose items change every epoch (random augmentation).

    An item is a pure function of ``(epoch, index)`` and the dataset's parameters: draw
    its randomness from a generator seeded with ``mix_seed(seed, stream, epoch, index)``,
    never from a global generator, which neither a resumed run nor a DataLoader worker
    shares. :class:`ResumableSampler` with ``epoch_keys=True`` (what
    :func:`seeded_dataloader` sets up for such a dataset) yields ``(epoch, index)`` keys,
    so that the epoch reaches the item in any worker process, persistent or not; a plain
    integer key reads epoch 0. Subclasses implement ``__len__`` and :meth:`item`.

    Example:
        >>> class Noisy(EpochDataset):
        ...     def __len__(self): return 3
        ...     def item(self, index, epoch):
        ...         g = torch.Generator().manual_seed(mix_seed(0, epoch, index))
        ...         return torch.rand(1, generator=g).item()
        >>> data = Noisy()
        >>> data[(1, 2)] == data[(1, 2)], data[(1, 2)] == data[(0, 2)], data[2] == data[(0, 2)]
        (True, False, True)
    """

    def item(self, index: int, epoch: int) -> T_co:
        """Item ``index`` as drawn in ``epoch``."""
        raise NotImplementedError

    def __getitem__(self, key: int | tuple[int, int]) -> T_co:
        epoch, index = key if isinstance(key, tuple) else (0, key)
        return self.item(int(index), int(epoch))


class SeededSubset(EpochDataset[T_co], Subset[T_co]):
    """A ``Subset`` whose random transform is a pure function of ``(seed, epoch, index)``.

    For datasets whose augmentation draws from the global generators (torchvision's and
    timm's random crops and flips use torch's and Python's): item ``i`` of ``epoch`` runs
    ``dataset[indices[i]]`` with torch's CPU, Python's and NumPy's global generators seeded
    from ``mix_seed(seed, AUGMENT_STREAM, epoch, i)``, and puts their states back
    afterwards, so the rest of the program sees no change. The item is then the same in any
    worker or rank and in a resumed run. Keeps ``Subset``'s ``dataset`` and ``indices``.

    Args:
        dataset: the dataset, with its random transform.
        indices: the items of ``dataset`` to keep, in order.
        seed: seed of the augmentation.

    Example:
        >>> data = SeededSubset([10, 20, 30], [2, 0], seed=1)
        >>> len(data), data[0], data[(5, 1)]
        (2, 30, 10)
        >>> class Noisy(Dataset):  # reads torch's global generator, like torchvision transforms
        ...     def __getitem__(self, index): return torch.rand(()).item()
        >>> noisy = SeededSubset(Noisy(), range(4), seed=1)
        >>> noisy[(1, 2)] == noisy[(1, 2)], noisy[(1, 2)] == noisy[(2, 2)]
        (True, False)
    """

    def __init__(self, dataset: Dataset[T_co], indices: Sequence[int], seed: int = 0) -> None:
        Subset.__init__(self, dataset, indices)
        self.seed = seed

    def item(self, index: int, epoch: int) -> T_co:
        """``dataset[indices[index]]`` under global generators seeded from ``(seed, epoch, index)``."""
        seed = mix_seed(self.seed, AUGMENT_STREAM, epoch, index)
        python_state, numpy_state = random.getstate(), np.random.get_state()
        with torch.random.fork_rng(devices=[]):
            torch.default_generator.manual_seed(seed)
            random.seed(seed)
            np.random.seed(seed % 2**32)
            try:
                return self.dataset[self.indices[index]]
            finally:
                random.setstate(python_state)
                np.random.set_state(numpy_state)

    def __getitems__(self, keys: list[Any]) -> list[T_co]:  # type: ignore[override]
        # Subset's batched read would index ``indices`` with the (epoch, index) keys
        return [self[key] for key in keys]


class ResumableDataLoader(DataLoader):
    """A ``DataLoader`` whose position in the epoch is saved in Lightning's checkpoints.

    Lightning (>= 2.3) saves the ``state_dict()`` of a training loader that has one in the
    checkpoint (``loops.fit_loop.state_dict.combined_loader``) and hands it to
    ``load_state_dict`` on resume, before the first batch is drawn. The state is the epoch
    and the number of batches this loader has yielded in it (counted here, after any
    worker prefetch); on resume the first iteration of that same epoch skips them, through
    :meth:`ResumableSampler.start_next_at` (no item is read) or, for another sampler, by
    drawing and dropping them. A checkpoint taken at the end of an epoch is followed by
    the next epoch, which starts at its beginning. The iterator is lazy: the epoch is
    read, and the order drawn, at the first batch, after Lightning's ``set_epoch``.

    Takes ``DataLoader``'s arguments.

    Example:
        >>> loader = ResumableDataLoader(range(6), batch_size=2, sampler=ResumableSampler(range(6)))
        >>> batches = iter(loader); next(batches).tolist()
        [0, 3]
        >>> state = loader.state_dict(); state["epoch"], state["batches"]
        (0, 1)
        >>> resumed = ResumableDataLoader(range(6), batch_size=2, sampler=ResumableSampler(range(6)))
        >>> resumed.load_state_dict(state)
        >>> [b.tolist() for b in resumed], [b.tolist() for b in batches]
        ([[4, 5], [2, 1]], [[4, 5], [2, 1]])
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._position: tuple[int | None, int] = (None, 0)
        self._resume: dict[str, Any] | None = None

    def _replicas(self) -> int:
        return int(getattr(self.sampler, "num_replicas", 1))

    def state_dict(self) -> dict[str, Any]:
        """Epoch and batches yielded of the iterator that yielded last (what training used)."""
        epoch, batches = self._position
        return {"epoch": epoch, "batches": batches, "num_replicas": self._replicas()}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Continue the epoch of ``state_dict`` where it stopped, at the next iteration."""
        missing = {"epoch", "batches"} - set(state_dict)
        if missing:
            raise KeyError(f"ResumableDataLoader state lacks {sorted(missing)}: {state_dict}")
        self._resume = dict(state_dict)

    def _batches_to_skip(self, epoch: int | None) -> int:
        state, self._resume = self._resume, None
        if state is None or state["epoch"] != epoch or not state["batches"]:
            return 0  # nothing restored, or the saved epoch was over: a new one starts
        saved = state.get("num_replicas", 1)
        if saved != self._replicas():
            raise ValueError(
                f"the checkpoint stopped after {state['batches']} batches of epoch {epoch} on "
                f"each of {saved} ranks, and this run has {self._replicas()}: resume with "
                f"trainer.devices x trainer.num_nodes = {saved}, or from a checkpoint taken at "
                "the end of an epoch"
            )
        return int(state["batches"])

    def __iter__(self) -> Iterator[Any]:
        # a generator: nothing runs (no order is drawn) until the first batch is asked for
        return self._iterate()

    def _iterate(self) -> Iterator[Any]:
        epoch = getattr(self.sampler, "epoch", None)
        skip = self._batches_to_skip(epoch)
        fast = (
            skip
            and isinstance(self.sampler, ResumableSampler)
            and type(self.batch_sampler) is BatchSampler
        )
        if fast:
            self.sampler.start_next_at(min(skip * self.batch_sampler.batch_size, len(self.sampler)))
        batches = super().__iter__()
        if skip and not fast:
            for _ in range(skip):
                next(batches, None)
        count = skip
        self._position = (epoch, count)
        for batch in batches:
            count += 1
            self._position = (epoch, count)
            yield batch


def seeded_dataloader(
    dataset: Dataset,
    batch_size: int,
    shuffle: bool,
    num_workers: int = 0,
    seed: int = 0,
    *,
    persistent_workers: bool = False,
    collate_fn: Callable[[list[Any]], Any] | None = None,
    num_replicas: int = 1,
    rank: int = 0,
) -> DataLoader:
    """A loader whose batches are a pure function of ``(seed, epoch)``; resumable with ``shuffle``.

    With ``shuffle`` (training): a :class:`ResumableDataLoader` over a
    :class:`ResumableSampler` seeded with ``seed`` (yielding ``(epoch, index)`` keys to an
    :class:`EpochDataset`), this rank's share of ``num_replicas``. Without (val, test): the
    dataset's order; with ``num_replicas > 1`` this rank takes every ``num_replicas``-th item
    from ``rank`` on (Lightning's ``UnrepeatedDistributedSampler``: no item is evaluated twice,
    and ranks may run one batch fewer).

    Args:
        dataset: map-style dataset.
        batch_size: samples per batch.
        shuffle: shuffle (train) or keep the dataset's order (val, test).
        num_workers: ``DataLoader`` worker processes.
        seed: seed of the shuffle; unused without ``shuffle``.
        persistent_workers: keep the workers alive between epochs (only with
            ``num_workers > 0``; ``DataLoader`` rejects it otherwise).
        collate_fn: batch collation; ``None`` for PyTorch's default.
        num_replicas: ranks that share the data.
        rank: this rank.

    Example:
        >>> loader = seeded_dataloader(range(6), 3, shuffle=True, seed=1)
        >>> [batch.tolist() for batch in loader]
        [[1, 2, 3], [4, 0, 5]]
        >>> [batch.tolist() for batch in seeded_dataloader(range(6), 3, shuffle=True, seed=1)]
        [[1, 2, 3], [4, 0, 5]]
        >>> loader.sampler.set_epoch(1); [batch.tolist() for batch in loader]
        [[0, 4, 1], [2, 5, 3]]
    """
    common: dict[str, Any] = dict(
        batch_size=batch_size,
        num_workers=num_workers,
        persistent_workers=persistent_workers and num_workers > 0,
        collate_fn=collate_fn,
    )
    if not shuffle:
        if num_replicas == 1:
            return DataLoader(dataset, shuffle=False, **common)
        # each rank every num_replicas-th item, none repeated (DistributedSampler pads the last
        # batch with copies, which the metrics would count twice); ranks may differ by one batch,
        # which evaluation allows: nothing syncs per batch without gradients
        sampler = UnrepeatedDistributedSampler(
            dataset,
            num_replicas=num_replicas,
            rank=rank,
            shuffle=False,  # type: ignore[arg-type]
        )
        return DataLoader(dataset, sampler=sampler, **common)
    sampler = ResumableSampler(
        dataset,  # type: ignore[arg-type]
        seed=seed,
        num_replicas=num_replicas,
        rank=rank,
        epoch_keys=isinstance(dataset, EpochDataset),
    )
    # the generator only seeds the workers' base seed, keeping torch's global generator untouched
    return ResumableDataLoader(
        dataset, sampler=sampler, generator=torch.Generator().manual_seed(seed), **common
    )


class SplitsDataModule(L.LightningDataModule):
    """Base of the datamodules whose ``setup`` fills ``train_set``, ``val_set`` and ``test_set``.

    The subclass saves ``batch_size``, ``num_workers`` and ``seed`` as hyperparameters and
    sets the three splits to ``None`` in ``__init__``. ``train_dataloader`` is a
    :class:`ResumableDataLoader`: its order is a pure function of ``(seed, epoch)`` and a
    resumed run continues the epoch where the checkpoint stopped (see
    :func:`seeded_dataloader`). Under DDP it takes this rank's share itself (from
    ``trainer.distributed_sampler_kwargs``, unless ``Trainer(use_distributed_sampler=False)``),
    so that every rank's batches are resumable too. val and test keep the dataset's order,
    each item on exactly one rank (Lightning's padded ``DistributedSampler`` would count the
    last items twice and warn during ``trainer.test()``). A loader asked for before its split exists raises
    ``RuntimeError``.

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

    def _shard(self) -> tuple[int, int]:
        """``(num_replicas, rank)`` of this rank's share: the trainer's DDP ranks, else ``(1, 0)``."""
        trainer = self.trainer
        kwargs = None if trainer is None else trainer.distributed_sampler_kwargs
        # Trainer(use_distributed_sampler=False) means: give every rank all the data
        connector = getattr(trainer, "_accelerator_connector", None)
        if not kwargs or not getattr(connector, "use_distributed_sampler", True):
            return 1, 0
        return int(kwargs["num_replicas"]), int(kwargs["rank"])

    def _loader(self, dataset: Dataset | None, split: str, shuffle: bool) -> DataLoader:
        if dataset is None:
            raise RuntimeError(self._missing_split_message(split))
        hp = self.hparams
        num_replicas, rank = self._shard()
        return seeded_dataloader(
            dataset,
            hp.batch_size,
            shuffle=shuffle,
            num_workers=hp.num_workers,
            seed=hp.seed,
            persistent_workers=self._persistent_workers,
            collate_fn=self._collate_fn,
            num_replicas=num_replicas,
            rank=rank,
        )

    def train_dataloader(self) -> DataLoader:
        """Train batches: order a pure function of ``(seed, epoch)``, resumable mid-epoch."""
        return self._loader(self.train_set, "train", shuffle=True)

    def val_dataloader(self) -> DataLoader:
        """Validation batches in the dataset's order."""
        return self._loader(self.val_set, "val", shuffle=False)

    def test_dataloader(self) -> DataLoader:
        """Test batches in the dataset's order."""
        return self._loader(self.test_set, "test", shuffle=False)
