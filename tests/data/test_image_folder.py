"""ImageFolderDataModule on a tiny tree of PNGs written into tmp_path."""

from __future__ import annotations

import importlib
import sys
from pathlib import Path

import pytest
import torch
from PIL import Image

from lightning_focal.data import ImageFolderDataModule, longtail_counts

CLASSES = ("cat", "dog", "eel")


def _write_tree(root: Path, sizes: dict[str, tuple[int, ...]]) -> None:
    """``sizes[split][k]`` PNGs of class ``CLASSES[k]`` under ``root/split``."""
    generator = torch.Generator().manual_seed(0)
    for split, per_class in sizes.items():
        for name, count in zip(CLASSES, per_class):
            folder = root / split / name
            folder.mkdir(parents=True)
            for i in range(count):
                pixels = torch.randint(0, 256, (12, 10, 3), generator=generator, dtype=torch.uint8)
                Image.fromarray(pixels.numpy()).save(folder / f"{i}.png")


@pytest.fixture(scope="module")
def tree(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("folders")
    _write_tree(root, {"train": (20, 16, 12), "val": (2, 2, 2), "test": (3, 3, 3)})
    return root


def test_full_train_counts(tree: Path) -> None:
    dm = ImageFolderDataModule(str(tree), image_size=16, batch_size=4)
    assert dm.class_names == list(CLASSES) and dm.num_classes == 3
    assert dm.class_counts().tolist() == [20, 16, 12]
    assert dm.class_counts().dtype == torch.int64


def test_longtail_subsampling_counts(tree: Path) -> None:
    dm = ImageFolderDataModule(str(tree), image_size=16, imbalance_ratio=4.0, seed=1)
    expected = longtail_counts(12, 3, 4.0)
    assert expected == [12, 6, 3]
    assert dm.class_counts().tolist() == expected
    dm.setup("fit")
    targets = [dm.train_set.dataset.targets[i] for i in dm.train_set.indices]
    assert torch.bincount(torch.tensor(targets), minlength=3).tolist() == expected
    # val and test are never subsampled.
    assert len(dm.val_set) == 6


def test_longtail_subsampling_is_seeded(tree: Path) -> None:
    def picked(seed: int) -> list[int]:
        dm = ImageFolderDataModule(str(tree), imbalance_ratio=4.0, seed=seed)
        dm.setup("fit")
        return list(dm.train_set.indices)

    assert picked(0) == picked(0)
    assert picked(0) != picked(1)


def test_class_counts_does_not_need_timm(tree: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "timm", None)
    dm = ImageFolderDataModule(str(tree), imbalance_ratio=2.0)
    assert dm.class_counts().tolist() == [12, 8, 6]


def test_batches_shapes_and_normalisation(tree: Path) -> None:
    dm = ImageFolderDataModule(str(tree), image_size=16, batch_size=4)
    dm.setup("fit")
    images, targets = next(iter(dm.train_dataloader()))
    assert images.shape == (4, 3, 16, 16) and images.dtype == torch.float32
    assert targets.dtype == torch.int64
    val_images, val_targets = next(iter(dm.val_dataloader()))
    assert val_images.shape == (4, 3, 16, 16)
    assert val_targets.tolist() == [0, 0, 1, 1]
    assert dm.data_config["mean"] == (0.485, 0.456, 0.406)
    # Normalised: values leave [0, 1].
    assert float(val_images.min()) < -0.5


def test_model_name_sets_transform_config(tree: Path) -> None:
    dm = ImageFolderDataModule(str(tree), image_size=None, model_name="test_resnet")
    config = dm.data_config
    assert config["input_size"] == (3, 160, 160)
    assert config["mean"] == (0.5, 0.5, 0.5)
    overridden = ImageFolderDataModule(str(tree), image_size=24, model_name="test_resnet")
    assert overridden.data_config["input_size"] == (3, 24, 24)
    assert overridden.data_config["mean"] == (0.5, 0.5, 0.5)


def test_test_split(tree: Path) -> None:
    dm = ImageFolderDataModule(str(tree), image_size=16, batch_size=16)
    dm.setup("test")
    images, targets = next(iter(dm.test_dataloader()))
    assert images.shape == (9, 3, 16, 16)
    assert targets.tolist() == [0, 0, 0, 1, 1, 1, 2, 2, 2]


def test_val_falls_back_to_test(tmp_path: Path) -> None:
    _write_tree(tmp_path, {"train": (2, 2, 2), "test": (1, 1, 1)})
    dm = ImageFolderDataModule(str(tmp_path), image_size=16)
    with pytest.warns(UserWarning, match="validating on"):
        dm.setup("fit")
    assert len(dm.val_set) == 3
    assert Path(dm.val_set.root).name == "test"


def test_missing_folders_are_named(tmp_path: Path) -> None:
    _write_tree(tmp_path, {"train": (2, 2, 2)})
    dm = ImageFolderDataModule(str(tmp_path), image_size=16)
    with pytest.raises(FileNotFoundError, match=r"val.*not found.*test"):
        dm.setup("fit")
    with pytest.raises(FileNotFoundError, match=r"test folder .*test not found"):
        dm.setup("test")
    with pytest.raises(FileNotFoundError, match="train folder"):
        ImageFolderDataModule(str(tmp_path / "nowhere")).class_counts()


def test_mismatched_classes_raise(tmp_path: Path) -> None:
    _write_tree(tmp_path, {"train": (2, 2, 2), "val": (1, 1, 0)})
    (tmp_path / "val" / "eel").rmdir()
    dm = ImageFolderDataModule(str(tmp_path), image_size=16)
    with pytest.raises(ValueError, match="differ"):
        dm.setup("fit")


def test_rejects_bad_arguments() -> None:
    with pytest.raises(ValueError, match="model_name"):
        ImageFolderDataModule("x", image_size=None)
    with pytest.raises(ValueError, match="imbalance_ratio"):
        ImageFolderDataModule("x", imbalance_ratio=0.5)


def test_package_import_is_light(monkeypatch: pytest.MonkeyPatch) -> None:
    import lightning_focal

    # Re-import the package with the heavy optional modules made unimportable; monkeypatch
    # puts the original modules back afterwards.
    monkeypatch.setattr(lightning_focal, "data", lightning_focal.data)
    for name in [m for m in sys.modules if m.split(".")[:2] == ["lightning_focal", "data"]]:
        monkeypatch.delitem(sys.modules, name)
    for heavy in ("timm", "hydra", "wandb", "sklearn"):
        monkeypatch.setitem(sys.modules, heavy, None)
    fresh = importlib.import_module("lightning_focal.data")
    assert fresh.ImageFolderDataModule is not ImageFolderDataModule


def test_train_augmentation_is_a_pure_function_of_seed_epoch_and_index(tree: Path) -> None:
    # timm's random resized crop and flip draw from torch's and Python's global generators;
    # the train split seeds them per (seed, epoch, index) and puts them back
    import random

    dm = ImageFolderDataModule(str(tree), image_size=16, seed=3)
    dm.setup("fit")
    assert dm.train_set.indices == list(range(48))  # not subsampled: all of them, in order
    random.seed(0)
    torch.manual_seed(0)
    python_state, torch_state = random.getstate(), torch.get_rng_state()
    views = [dm.train_set[(epoch, 5)][0] for epoch in range(6)]
    assert random.getstate() == python_state and torch.equal(torch.get_rng_state(), torch_state)
    assert not all(torch.equal(views[0], v) for v in views[1:])
    random.seed(1)
    torch.manual_seed(1)
    assert torch.equal(dm.train_set[(4, 5)][0], views[4])
