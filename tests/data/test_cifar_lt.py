"""CIFAR-LT datamodules on fake CIFAR files in torchvision's pickled batch format (no download)."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision.datasets
import torchvision.datasets.cifar

from lightning_focal.data import CIFAR10LTDataModule, CIFAR100LTDataModule, longtail_counts

TRAIN_PER_CLASS = 30
TEST_PER_CLASS = 10


def _dump(path: Path, entry: dict) -> None:
    # The real files were pickled by Python 2, whose str keys load as str under latin1.
    with open(path, "wb") as f:
        pickle.dump(entry, f)


def _images(count: int, rng: np.random.Generator) -> np.ndarray:
    return rng.integers(0, 256, size=(count, 3 * 32 * 32), dtype=np.uint8)


def _write_fake_cifar10(root: Path) -> None:
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    labels = rng.permutation(np.repeat(np.arange(10), TRAIN_PER_CLASS)).tolist()
    per_batch = len(labels) // 5
    for b in range(5):
        batch_labels = labels[b * per_batch : (b + 1) * per_batch]
        _dump(
            folder / f"data_batch_{b + 1}",
            {"data": _images(per_batch, rng), "labels": batch_labels},
        )
    test_labels = rng.permutation(np.repeat(np.arange(10), TEST_PER_CLASS)).tolist()
    _dump(folder / "test_batch", {"data": _images(len(test_labels), rng), "labels": test_labels})
    _dump(folder / "batches.meta", {"label_names": [f"class{c}" for c in range(10)]})


def _write_fake_cifar100(root: Path) -> None:
    folder = root / "cifar-100-python"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(1)
    train_labels = rng.permutation(np.repeat(np.arange(100), 4)).tolist()
    _dump(folder / "train", {"data": _images(len(train_labels), rng), "fine_labels": train_labels})
    test_labels = np.repeat(np.arange(100), 2).tolist()
    _dump(folder / "test", {"data": _images(len(test_labels), rng), "fine_labels": test_labels})
    _dump(folder / "meta", {"fine_label_names": [f"fine{c}" for c in range(100)]})


@pytest.fixture(autouse=True)
def _skip_md5(monkeypatch: pytest.MonkeyPatch) -> None:
    """Accept the fake files: torchvision checks every file against the real md5."""
    monkeypatch.setattr(torchvision.datasets.cifar, "check_integrity", lambda *args, **kwargs: True)


@pytest.fixture(scope="module")
def cifar10_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("cifar10")
    _write_fake_cifar10(root)
    return root


def test_cifar10_train_counts_follow_profile(cifar10_root: Path) -> None:
    dm = CIFAR10LTDataModule(
        str(cifar10_root), download=False, imbalance_ratio=10.0, val_per_class=2
    )
    expected = longtail_counts(TRAIN_PER_CLASS, 10, 10.0)
    assert expected == [30, 23, 17, 13, 10, 8, 6, 5, 3, 3]
    assert dm.class_counts().tolist() == expected
    dm.setup("fit")
    targets = torch.tensor([dm.train_set.dataset.targets[i] for i in dm.train_set.indices])
    assert torch.equal(dm.class_counts(), torch.bincount(targets, minlength=10))


def test_cifar10_splits_and_shapes(cifar10_root: Path) -> None:
    dm = CIFAR10LTDataModule(
        str(cifar10_root), download=False, batch_size=8, imbalance_ratio=10.0, val_per_class=3
    )
    dm.setup("fit")
    assert dm.num_classes == 10
    assert dm.class_names == [f"class{c}" for c in range(10)]
    assert len(dm.test_set) == 10 * TEST_PER_CLASS
    test_targets = torch.tensor(dm.test_set.targets)
    assert torch.bincount(test_targets, minlength=10).tolist() == [TEST_PER_CLASS] * 10
    val_targets = test_targets[dm.val_set.indices]
    assert torch.bincount(val_targets, minlength=10).tolist() == [3] * 10
    for loader in (dm.train_dataloader(), dm.val_dataloader(), dm.test_dataloader()):
        images, targets = next(iter(loader))
        assert images.shape == (8, 3, 32, 32) and images.dtype == torch.float32
        assert targets.dtype == torch.int64


def test_cifar10_eval_transform_is_normalisation_only(cifar10_root: Path) -> None:
    dm = CIFAR10LTDataModule(str(cifar10_root), download=False, val_per_class=None)
    dm.setup("test")
    image, _ = dm.test_set[0]
    raw = torch.as_tensor(dm.test_set.data[0]).permute(2, 0, 1).float() / 255
    mean = torch.tensor(CIFAR10LTDataModule._mean).view(3, 1, 1)
    std = torch.tensor(CIFAR10LTDataModule._std).view(3, 1, 1)
    torch.testing.assert_close(image, (raw - mean) / std)
    assert dm.val_set is dm.test_set


def test_cifar10_train_transform_augments(cifar10_root: Path) -> None:
    dm = CIFAR10LTDataModule(str(cifar10_root), download=False, val_per_class=2)
    dm.setup("fit")
    # a new crop and flip every epoch, each a pure function of (seed, epoch, index): the
    # global generators have no say and are left as they were
    torch.manual_seed(0)
    state = torch.get_rng_state()
    views = torch.stack([dm.train_set[(epoch, 0)][0] for epoch in range(8)])
    assert torch.equal(torch.get_rng_state(), state)
    assert views.shape == (8, 3, 32, 32)
    assert not all(torch.equal(views[0], v) for v in views[1:])
    torch.manual_seed(1)
    assert torch.equal(dm.train_set[(3, 0)][0], views[3])
    other_seed = CIFAR10LTDataModule(str(cifar10_root), download=False, val_per_class=2, seed=1)
    other_seed.setup("fit")
    index = other_seed.train_set.indices.index(dm.train_set.indices[0])
    assert not torch.equal(other_seed.train_set[(3, index)][0], views[3])


def test_cifar10_standard_augmentation(cifar10_root: Path) -> None:
    from torchvision import transforms as T

    dm = CIFAR10LTDataModule(str(cifar10_root), download=False, val_per_class=2)
    dm.setup("fit")
    crop, flip, to_tensor, normalize = dm.train_set.dataset.transform.transforms
    assert isinstance(crop, T.RandomCrop) and crop.size == (32, 32) and crop.padding == 4
    assert isinstance(flip, T.RandomHorizontalFlip) and flip.p == 0.5
    assert isinstance(to_tensor, T.ToTensor) and isinstance(normalize, T.Normalize)
    assert [type(t) for t in dm.test_set.transform.transforms] == [T.ToTensor, T.Normalize]


def test_cifar10_seeded_subsampling(cifar10_root: Path) -> None:
    def picked(seed: int) -> list[int]:
        dm = CIFAR10LTDataModule(str(cifar10_root), download=False, seed=seed, val_per_class=2)
        dm.setup("fit")
        return list(dm.train_set.indices)

    assert picked(0) == picked(0)
    assert picked(0) != picked(1)


def test_prepare_data_downloads_only_when_asked(
    cifar10_root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[bool] = []
    monkeypatch.setattr(
        torchvision.datasets.CIFAR10, "download", lambda self: calls.append(self.train)
    )
    CIFAR10LTDataModule(str(cifar10_root), download=False).prepare_data()
    assert calls == []
    CIFAR10LTDataModule(str(cifar10_root), download=True).prepare_data()
    assert sorted(calls) == [False, True]


def test_setup_never_downloads(cifar10_root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def fail(self: object) -> None:
        raise AssertionError("setup must not download")

    monkeypatch.setattr(torchvision.datasets.CIFAR10, "download", fail)
    dm = CIFAR10LTDataModule(str(cifar10_root), download=True, val_per_class=2)
    dm.setup("fit")
    assert len(dm.train_set) == sum(longtail_counts(TRAIN_PER_CLASS, 10, 100.0))


def test_cifar100_fine_labels(tmp_path: Path) -> None:
    _write_fake_cifar100(tmp_path)
    dm = CIFAR100LTDataModule(str(tmp_path), download=False, imbalance_ratio=4.0, val_per_class=1)
    expected = longtail_counts(4, 100, 4.0)
    assert expected[0] == 4 and expected[-1] == 1
    assert dm.class_counts().tolist() == expected
    dm.setup("fit")
    assert dm.num_classes == 100 and dm.class_names[7] == "fine7"
    assert len(dm.val_set) == 100 and len(dm.test_set) == 200


def test_val_larger_than_test_classes_raises(cifar10_root: Path) -> None:
    dm = CIFAR10LTDataModule(str(cifar10_root), download=False, val_per_class=TEST_PER_CLASS + 1)
    with pytest.raises(ValueError, match="val_per_class=11 exceeds the 10"):
        dm.setup("fit")


def test_rejects_bad_arguments() -> None:
    with pytest.raises(ValueError, match="imbalance_ratio"):
        CIFAR10LTDataModule(imbalance_ratio=0.0)
    with pytest.raises(ValueError, match="val_per_class"):
        CIFAR100LTDataModule(val_per_class=0)
