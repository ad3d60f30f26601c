"""The shared loader plumbing: argument checks, resumable seeded loaders, the split datamodule base."""

from __future__ import annotations

import pytest
import torch
from lightning.pytorch.utilities.model_helpers import is_overridden
from torch.utils.data import DataLoader, DistributedSampler, SequentialSampler, TensorDataset

from lightning_focal.data import (
    CIFAR10LTDataModule,
    CocoDetectionDataModule,
    DigitsLTDataModule,
    ImageFolderDataModule,
    ShapesDataModule,
)
from lightning_focal.data._loaders import (
    ORDER_STREAM,
    EpochDataset,
    ResumableDataLoader,
    ResumableSampler,
    SplitsDataModule,
    check_loader_args,
    mix_seed,
    seeded_dataloader,
)

NUM_TRAIN = 10


def _order(loader) -> list[int]:
    return [int(i) for (batch,) in loader for i in batch]


def _reference_order(seed: int, epoch: int = 0, n: int = NUM_TRAIN) -> list[int]:
    """The documented order: ``randperm`` seeded with ``mix_seed(seed, ORDER_STREAM, epoch)``."""
    generator = torch.Generator().manual_seed(mix_seed(seed, ORDER_STREAM, epoch))
    return torch.randperm(n, generator=generator).tolist()


class _Toy(SplitsDataModule):
    def __init__(self, batch_size: int = 3, num_workers: int = 0, seed: int = 0) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.train_set: TensorDataset | None = None
        self.val_set: TensorDataset | None = None
        self.test_set: TensorDataset | None = None

    def setup(self, stage: str | None = None) -> None:
        self.train_set = TensorDataset(torch.arange(NUM_TRAIN))
        self.val_set = TensorDataset(torch.arange(100, 104))
        self.test_set = TensorDataset(torch.arange(200, 205))


def _first(batch: list) -> str:
    return "collated"


class _Custom(_Toy):
    _persistent_workers = True
    _collate_fn = staticmethod(_first)

    def _missing_split_message(self, split: str) -> str:
        return f"no {split} split here"


@pytest.mark.parametrize(
    ("batch_size", "num_workers", "match"),
    [(0, 0, "batch_size must be at least 1, got 0"), (1, -1, "num_workers must be non-negative")],
)
def test_check_loader_args_rejects(batch_size: int, num_workers: int, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        check_loader_args(batch_size, num_workers)


def test_check_loader_args_accepts_the_smallest_valid_values() -> None:
    check_loader_args(1, 0)


def test_seeded_dataloader_order_is_the_seeded_permutation() -> None:
    dataset = TensorDataset(torch.arange(NUM_TRAIN))
    expected = _reference_order(5)
    assert sorted(expected) == list(range(NUM_TRAIN)) and expected != sorted(expected)
    for _ in range(2):  # a fresh loader repeats the order
        loader = seeded_dataloader(dataset, 4, shuffle=True, seed=5)
        assert _order(loader) == expected
    assert _order(seeded_dataloader(dataset, 4, shuffle=True, seed=6)) != expected
    in_order = seeded_dataloader(dataset, 4, shuffle=False, seed=5)
    assert _order(in_order) == list(range(NUM_TRAIN)) and in_order.generator is None


def test_seeded_dataloader_persistent_workers_only_with_workers() -> None:
    dataset = TensorDataset(torch.arange(NUM_TRAIN))
    assert not seeded_dataloader(dataset, 2, False, persistent_workers=True).persistent_workers
    with_workers = seeded_dataloader(dataset, 2, False, num_workers=2, persistent_workers=True)
    assert with_workers.persistent_workers
    assert not seeded_dataloader(dataset, 2, False, num_workers=2).persistent_workers


@pytest.mark.parametrize("method", ["train_dataloader", "val_dataloader", "test_dataloader"])
def test_loader_before_setup_raises(method: str) -> None:
    with pytest.raises(RuntimeError, match=r"^_Toy: call setup\(\) before asking for a dataloader"):
        getattr(_Toy(), method)()
    split = method.removesuffix("_dataloader")
    with pytest.raises(RuntimeError, match=f"^no {split} split here$"):
        getattr(_Custom(), method)()


def test_split_loaders_follow_the_hyperparameters() -> None:
    dm = _Toy(batch_size=3, seed=7)
    dm.setup()
    expected = _reference_order(7)
    train = dm.train_dataloader()
    assert isinstance(train, ResumableDataLoader) and train.batch_size == 3
    assert isinstance(train.sampler, ResumableSampler) and train.sampler.num_replicas == 1
    assert _order(train) == expected and _order(dm.train_dataloader()) == expected
    val, test = dm.val_dataloader(), dm.test_dataloader()
    assert isinstance(val.sampler, SequentialSampler)
    assert _order(val) == [100, 101, 102, 103] and _order(test) == [200, 201, 202, 203, 204]
    # no predict loader unless a subclass defines one (ImageFolderDataModule does)
    assert not is_overridden("predict_dataloader", dm)


def test_subclass_settings_reach_the_loader() -> None:
    dm = _Custom(num_workers=2)
    dm.setup()
    loader = dm.train_dataloader()
    assert loader.persistent_workers and loader.num_workers == 2
    assert loader.collate_fn([(torch.tensor(0),)]) == "collated"
    plain = _Toy(num_workers=2)
    plain.setup()
    assert not plain.train_dataloader().persistent_workers


@pytest.mark.parametrize(
    ("make", "persistent", "collate"),
    [
        (lambda: DigitsLTDataModule(), False, "default_collate"),
        (lambda: CIFAR10LTDataModule(download=False), True, "default_collate"),
        (lambda: ImageFolderDataModule("root"), True, "default_collate"),
        (lambda: ShapesDataModule(), False, "detection_collate"),
        (
            lambda: CocoDetectionDataModule("root", "train.json", "val.json"),
            False,
            "detection_collate",
        ),
    ],
)
def test_every_datamodule_keeps_its_loader_settings(make, persistent: bool, collate: str) -> None:
    dm = make()
    assert isinstance(dm, SplitsDataModule)
    # a stand-in split: only the loader settings are under test here
    dm.train_set = TensorDataset(torch.arange(NUM_TRAIN))
    dm.hparams.num_workers = 2
    loader = dm.train_dataloader()
    assert loader.persistent_workers is persistent
    assert loader.collate_fn.__name__ == collate
    assert loader.sampler.seed == loader.generator.initial_seed() == dm.hparams.seed


# ---- order as a pure function of (seed, epoch), resumable mid-epoch --------------------------


def _epoch(loader, epoch: int) -> list[int]:
    loader.sampler.set_epoch(epoch)
    return _order(loader)


def test_order_is_a_pure_function_of_seed_and_epoch() -> None:
    dataset = TensorDataset(torch.arange(NUM_TRAIN))
    loader = seeded_dataloader(dataset, 4, shuffle=True, seed=5)
    orders = [_epoch(loader, e) for e in (0, 1, 2)]
    assert orders == [_reference_order(5, e) for e in (0, 1, 2)]
    assert all(sorted(o) == list(range(NUM_TRAIN)) for o in orders) and orders[0] != orders[1]
    # a fresh loader (a new process, a resumed run) asked for epoch 2 first gives epoch 2's
    assert _epoch(seeded_dataloader(dataset, 4, shuffle=True, seed=5), 2) == orders[2]
    assert _epoch(loader, 0) == orders[0]  # going back repeats too
    # seed + epoch does not alias (DistributedSampler's seed 0 epoch 1 is seed 1 epoch 0)
    assert _reference_order(0, 1) != _reference_order(1, 0)


@pytest.mark.parametrize(
    ("n", "ranks", "drop_last"), [(10, 2, False), (11, 3, False), (11, 3, True)]
)
def test_ranks_share_an_epoch_like_distributed_sampler(n: int, ranks: int, drop_last: bool) -> None:
    order = _reference_order(3, 4, n)
    shards = [
        ResumableSampler(range(n), seed=3, num_replicas=ranks, rank=r, drop_last=drop_last)
        for r in range(ranks)
    ]
    for sampler in shards:
        sampler.set_epoch(4)
    # DistributedSampler's layout over our order: the same padding, trimming and striding
    reference = [
        DistributedSampler(range(n), ranks, r, shuffle=False, drop_last=drop_last)
        for r in range(ranks)
    ]
    assert [list(s) for s in shards] == [[order[i] for i in ref] for ref in reference]
    assert len({len(list(s)) for s in shards}) == 1
    if not drop_last:
        assert set().union(*(set(s) for s in shards)) == set(range(n))


@pytest.mark.parametrize("num_workers", [0, 2])
@pytest.mark.parametrize("stop", [1, 2, 3])
def test_a_restored_loader_continues_the_epoch(num_workers: int, stop: int) -> None:
    """3 batches an epoch; the state after ``stop`` batches continues the epoch, or the next."""
    dataset = TensorDataset(torch.arange(NUM_TRAIN))

    def make() -> DataLoader:
        return seeded_dataloader(dataset, 4, shuffle=True, seed=2, num_workers=num_workers)

    loader = make()
    loader.sampler.set_epoch(1)
    batches = iter(loader)
    head = [next(batches)[0].tolist() for _ in range(stop)]  # workers prefetch beyond this
    state = loader.state_dict()
    assert state == {"epoch": 1, "batches": stop, "num_replicas": 1}
    tail = [b[0].tolist() for b in batches]
    assert [i for batch in head + tail for i in batch] == _reference_order(2, 1)

    resumed = make()
    resumed.load_state_dict(state)
    if stop == 3:  # the epoch was over: Lightning moves on to epoch 2, which starts afresh
        resumed.sampler.set_epoch(2)
        assert _order(resumed) == _reference_order(2, 2)
    else:
        resumed.sampler.set_epoch(1)
        assert [b[0].tolist() for b in resumed] == tail
        assert resumed.state_dict()["batches"] == 3
    # only the first iteration after a restore skips
    assert _order(resumed) == _reference_order(2, resumed.sampler.epoch)


def test_a_restored_loader_over_another_sampler_skips_by_drawing() -> None:
    dataset = TensorDataset(torch.arange(NUM_TRAIN))
    loader = ResumableDataLoader(dataset, batch_size=3, sampler=SequentialSampler(dataset))
    batches = iter(loader)
    next(batches), next(batches)
    state = loader.state_dict()
    assert state["epoch"] is None and state["batches"] == 2
    resumed = ResumableDataLoader(dataset, batch_size=3, sampler=SequentialSampler(dataset))
    resumed.load_state_dict(state)
    assert _order(resumed) == [6, 7, 8, 9]


def test_a_mid_epoch_state_of_another_world_size_is_refused() -> None:
    dataset = TensorDataset(torch.arange(NUM_TRAIN))
    two_ranks = seeded_dataloader(dataset, 2, shuffle=True, num_replicas=2, rank=0)
    batches = iter(two_ranks)
    next(batches)
    one_rank = seeded_dataloader(dataset, 2, shuffle=True)
    one_rank.load_state_dict(two_ranks.state_dict())
    with pytest.raises(
        ValueError,
        match=r"on each of 2 ranks, and this run has 1: resume with trainer.devices x trainer.num_nodes = 2",
    ):
        next(iter(one_rank))
    # at an epoch's end the next epoch starts afresh on any number of ranks
    one_rank.load_state_dict({"epoch": 0, "batches": 3, "num_replicas": 2})
    one_rank.sampler.set_epoch(1)
    assert _order(one_rank) == _reference_order(0, 1)


class _Keyed(EpochDataset):
    def __len__(self) -> int:
        return NUM_TRAIN

    def item(self, index: int, epoch: int) -> torch.Tensor:
        return torch.tensor([epoch, index])


def test_an_epoch_dataset_gets_the_epoch_in_every_worker() -> None:
    for num_workers, persistent in [(0, False), (2, True)]:
        loader = seeded_dataloader(
            _Keyed(),
            4,
            shuffle=True,
            seed=1,
            num_workers=num_workers,
            persistent_workers=persistent,
        )
        for epoch in (0, 3):
            loader.sampler.set_epoch(epoch)
            items = torch.cat(list(loader))
            assert items[:, 0].tolist() == [epoch] * NUM_TRAIN
            assert items[:, 1].tolist() == _reference_order(1, epoch)
    assert seeded_dataloader(TensorDataset(torch.arange(3)), 2, True).sampler.epoch_keys is False


class _FakeTrainer:
    def __init__(self, kwargs, use_distributed_sampler: bool = True) -> None:
        self.distributed_sampler_kwargs = kwargs
        self._accelerator_connector = type(
            "C", (), {"use_distributed_sampler": use_distributed_sampler}
        )()


@pytest.mark.parametrize(
    ("trainer", "shard"),
    [
        (None, (1, 0)),
        (_FakeTrainer(None), (1, 0)),
        (_FakeTrainer({"num_replicas": 4, "rank": 3}), (4, 3)),
        (_FakeTrainer({"num_replicas": 4, "rank": 3}, use_distributed_sampler=False), (1, 0)),
    ],
)
def test_the_train_loader_takes_this_ranks_share(trainer, shard) -> None:
    dm = _Toy()
    dm.setup()
    dm.trainer = trainer
    sampler = dm.train_dataloader().sampler
    assert (sampler.num_replicas, sampler.rank) == shard
    # a DistributedSampler, so Lightning keeps it instead of swapping in its own
    assert isinstance(sampler, DistributedSampler)
    for loader in (dm.val_dataloader(), dm.test_dataloader()):
        if shard == (1, 0):
            assert isinstance(loader.sampler, SequentialSampler)
        else:  # a DistributedSampler too: Lightning keeps it (and does not warn during test())
            assert isinstance(loader.sampler, DistributedSampler)
            assert (loader.sampler.num_replicas, loader.sampler.rank) == shard


@pytest.mark.parametrize("split", ["val", "test"])
def test_evaluation_splits_are_sharded_without_repeats(split) -> None:
    # 4 val / 5 test items on 2 and 3 ranks: every item on exactly one rank, in order; with
    # Lightning's padded DistributedSampler item 200 would be evaluated twice on 2 ranks
    for replicas in (2, 3):
        seen = []
        for rank in range(replicas):
            dm = _Toy(batch_size=2)
            dm.setup()
            dm.trainer = _FakeTrainer({"num_replicas": replicas, "rank": rank})
            loader = getattr(dm, f"{split}_dataloader")()
            seen += [int(v) for (batch,) in loader for v in batch]
        dataset = getattr(dm, f"{split}_set")
        assert sorted(seen) == [int(v) for (v,) in dataset]
