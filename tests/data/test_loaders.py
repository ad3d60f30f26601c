"""The shared loader plumbing: argument checks, seeded loaders and the split datamodule base."""

from __future__ import annotations

import pytest
import torch
from lightning.pytorch.utilities.model_helpers import is_overridden
from torch.utils.data import DataLoader, RandomSampler, SequentialSampler, TensorDataset

from lightning_focal.data import (
    CIFAR10LTDataModule,
    CocoDetectionDataModule,
    DigitsLTDataModule,
    ImageFolderDataModule,
    ShapesDataModule,
)
from lightning_focal.data._loaders import SplitsDataModule, check_loader_args, seeded_dataloader

NUM_TRAIN = 10


def _order(loader) -> list[int]:
    return [int(i) for (batch,) in loader for i in batch]


def _reference_order(seed: int) -> list[int]:
    """The order of a plain shuffling ``DataLoader`` with a generator seeded with ``seed``."""
    dataset = TensorDataset(torch.arange(NUM_TRAIN))
    generator = torch.Generator().manual_seed(seed)
    return _order(DataLoader(dataset, batch_size=NUM_TRAIN, shuffle=True, generator=generator))


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
    assert isinstance(train.sampler, RandomSampler) and train.batch_size == 3
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
    assert loader.generator.initial_seed() == dm.hparams.seed
