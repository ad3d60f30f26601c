"""Any ``root/{train,val,test}/<class>/<image>`` tree as a ``LightningDataModule``, with timm transforms."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from lightning.pytorch.utilities import rank_zero_warn
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from lightning_focal.data._loaders import SeededSubset, SplitsDataModule, check_loader_args
from lightning_focal.data.class_counts import counts_from_targets
from lightning_focal.data.longtail import _check_longtail_args, longtail_counts, longtail_indices

if TYPE_CHECKING:
    from collections.abc import Callable

    from torchvision.datasets import ImageFolder

__all__ = ["ImageFolderDataModule"]


class ImageFolderDataModule(SplitsDataModule):
    """Image classification from class folders (torchvision ``ImageFolder``).

    ``root/train_dir`` must exist. The validation split is ``root/val_dir``; when that folder
    is missing (or ``val_dir`` is ``None``) validation falls back to ``root/test_dir`` with a
    warning, and when both are missing ``setup`` raises ``FileNotFoundError`` naming the
    folders. Every split must hold the same class folders as train, since ``ImageFolder``
    numbers classes by their sorted folder names.

    With ``imbalance_ratio`` set, the train split is subsampled to the long-tailed
    ``profile``: class ``c`` (in sorted folder order) keeps
    ``longtail_counts(n_max, C, imbalance_ratio, profile)[c]`` images, with ``n_max`` the
    smallest class's size, picked by :func:`~lightning_focal.data.longtail_indices` with
    ``seed``. val and test are never subsampled.

    Transforms come from timm (imported when first needed): ``resolve_data_config`` gives
    the input size, mean, std, interpolation and crop fraction, and ``create_transform``
    builds timm's training augmentation (random resized crop, flip, colour jitter; a pure
    function of ``(seed, epoch, index)`` through
    :class:`~lightning_focal.data._loaders.SeededSubset`) and its evaluation resize +
    centre crop. With ``model_name`` the configuration is the model's pretrained config (``timm.create_model(model_name, pretrained=False)``, no download);
    without it, ImageNet's mean and std. ``image_size`` overrides the input size in both
    cases; ``image_size=None`` keeps the model's own.

    Args:
        root: folder that holds the split folders.
        train_dir: train folder name under ``root``.
        val_dir: validation folder name, or ``None`` to validate on ``test_dir``.
        test_dir: test folder name, or ``None`` for no test split.
        image_size: side of the square network input; ``None`` only with ``model_name``.
        batch_size: samples per batch.
        num_workers: ``DataLoader`` workers.
        imbalance_ratio: if set (at least 1), subsample train to this head/tail ratio.
        profile: long-tail profile, ``"exp"`` or ``"step"``.
        seed: seed of the long-tail subsampling and of the train shuffle.
        model_name: timm model whose pretrained config sets the transforms.

    Example:
        >>> from lightning_focal.data import ImageFolderDataModule
        >>> dm = ImageFolderDataModule("path/to/imagenette", image_size=160, imbalance_ratio=10.0)
        >>> dm.hparams.image_size, dm.hparams.imbalance_ratio
        (160, 10.0)
    """

    # workers that decode and augment images are costly to start again every epoch
    _persistent_workers = True

    def __init__(
        self,
        root: str,
        train_dir: str = "train",
        val_dir: str | None = "val",
        test_dir: str | None = "test",
        image_size: int | None = 224,
        batch_size: int = 64,
        num_workers: int = 0,
        imbalance_ratio: float | None = None,
        profile: str = "exp",
        seed: int = 0,
        model_name: str | None = None,
    ) -> None:
        super().__init__()
        if image_size is None and model_name is None:
            raise ValueError("image_size=None needs a model_name whose config gives the size")
        if image_size is not None and image_size < 1:
            raise ValueError(f"image_size must be at least 1, got {image_size}")
        check_loader_args(batch_size, num_workers)
        _check_longtail_args(imbalance_ratio, profile)
        self.save_hyperparameters()
        self.train_set: Dataset | None = None
        self.val_set: Dataset | None = None
        self.test_set: Dataset | None = None
        self._train_scan: tuple[ImageFolder, list[int]] | None = None
        self._data_config: dict[str, Any] | None = None

    def _split_path(self, name: str | None) -> Path | None:
        """``root/name`` if it is an existing folder, else ``None``."""
        if name is None:
            return None
        path = Path(self.hparams.root) / name
        return path if path.is_dir() else None

    def _train_path(self) -> Path:
        path = self._split_path(self.hparams.train_dir)
        if path is None:
            raise FileNotFoundError(
                f"train folder {Path(self.hparams.root) / self.hparams.train_dir} not found"
            )
        return path

    @property
    def class_names(self) -> list[str]:
        """Class folder names of the train split, sorted; index = class."""
        from torchvision.datasets.folder import find_classes

        classes, _ = find_classes(str(self._train_path()))
        return classes

    @property
    def num_classes(self) -> int:
        """Number of class folders in the train split."""
        return len(self.class_names)

    @property
    def data_config(self) -> dict[str, Any]:
        """timm data config (``input_size``, ``mean``, ``std``, ``interpolation``, ``crop_pct``, ...)."""
        if self._data_config is None:
            import timm
            from timm.data import resolve_data_config

            hp = self.hparams
            args = (
                {} if hp.image_size is None else {"input_size": (3, hp.image_size, hp.image_size)}
            )
            model = None
            if hp.model_name is not None:
                model = timm.create_model(hp.model_name, pretrained=False)
            self._data_config = resolve_data_config(args, model=model)
        return self._data_config

    def _transform(self, training: bool) -> Callable[[Any], Tensor]:
        from timm.data import create_transform

        return create_transform(**self.data_config, is_training=training)

    def _folder(self, path: Path, training: bool | None) -> ImageFolder:
        """``ImageFolder`` of ``path``; ``training=None`` leaves the transform unset."""
        from torchvision.datasets import ImageFolder

        transform = None if training is None else self._transform(training)
        dataset = ImageFolder(str(path), transform=transform)
        train_classes = self.class_names
        if dataset.classes != train_classes:
            raise ValueError(
                f"class folders of {path} {dataset.classes} differ from the train split's "
                f"{train_classes}"
            )
        return dataset

    def _scan_train(self) -> tuple[ImageFolder, list[int]]:
        """The train ``ImageFolder`` (no transform yet) and the kept indices; cached.

        Only file names are listed and no image is read, and timm is not needed, so
        :meth:`class_counts` stays cheap.
        """
        if self._train_scan is None:
            hp = self.hparams
            dataset = self._folder(self._train_path(), training=None)
            indices = list(range(len(dataset.targets)))
            if hp.imbalance_ratio is not None:
                available = counts_from_targets(dataset.targets, len(dataset.classes))
                counts = longtail_counts(
                    int(available.min()), len(dataset.classes), hp.imbalance_ratio, hp.profile
                )
                indices = longtail_indices(dataset.targets, counts, seed=hp.seed)
            self._train_scan = (dataset, indices)
        return self._train_scan

    def _build_train(self) -> None:
        if self.train_set is not None:
            return
        dataset, indices = self._scan_train()
        dataset.transform = self._transform(training=True)
        # timm's random crop, flip and jitter of item i in epoch e come from (seed, e, i)
        self.train_set = SeededSubset(dataset, indices, seed=self.hparams.seed)

    def _build_val(self) -> None:
        if self.val_set is not None:
            return
        hp = self.hparams
        path = self._split_path(hp.val_dir)
        if path is None:
            test_path = self._split_path(hp.test_dir)
            val_name = Path(hp.root) / hp.val_dir if hp.val_dir is not None else None
            if test_path is None:
                test_name = Path(hp.root) / hp.test_dir if hp.test_dir is not None else None
                raise FileNotFoundError(
                    f"validation folder {val_name} not found and no test folder "
                    f"({test_name}) to fall back to"
                )
            rank_zero_warn(f"validation folder {val_name} not found; validating on {test_path}")
            path = test_path
        self.val_set = self._folder(path, training=False)

    def _build_test(self) -> None:
        if self.test_set is not None:
            return
        hp = self.hparams
        if hp.test_dir is None:
            raise FileNotFoundError("no test split: test_dir is None")
        path = self._split_path(hp.test_dir)
        if path is None:
            raise FileNotFoundError(f"test folder {Path(hp.root) / hp.test_dir} not found")
        self.test_set = self._folder(path, training=False)

    def class_counts(self) -> Tensor:
        """Images per class of the (subsampled) train split, int64 ``(C,)``, from the labels."""
        dataset, indices = self._scan_train()
        targets = [dataset.targets[i] for i in indices]
        return counts_from_targets(targets, len(dataset.classes))

    def setup(self, stage: str | None = None) -> None:
        """Scan the folders the stage needs; ``None`` builds all available splits.

        Args:
            stage: ``"fit"`` (train + val), ``"validate"`` (val), ``"test"`` or
                ``"predict"`` (test), or ``None`` (train, val and, if its folder exists, test).
        """
        if stage in ("fit", None):
            self._build_train()
            self._build_val()
        elif stage == "validate":
            self._build_val()
        has_test = self._split_path(self.hparams.test_dir) is not None
        if stage in ("test", "predict") or (stage is None and has_test):
            self._build_test()

    def predict_dataloader(self) -> DataLoader:
        """The test batches, for ``trainer.predict``."""
        return self._loader(self.test_set, "test", shuffle=False)
