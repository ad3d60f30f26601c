"""CIFAR-10-LT and CIFAR-100-LT (Cui et al., CVPR 2019; Cao et al., NeurIPS 2019).

The train set of torchvision's CIFAR is subsampled to the exponential long-tail profile
(class 0 keeps all 5,000 or 500 images, the last class ``1 / imbalance_ratio`` of them);
the standard balanced test set is the test split, as in the papers.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar

from torch import Tensor
from torch.utils.data import Dataset, Subset

from lightning_focal.data._loaders import SeededSubset, SplitsDataModule, check_loader_args
from lightning_focal.data.class_counts import counts_from_targets
from lightning_focal.data.longtail import _check_longtail_args, longtail_counts, longtail_indices

if TYPE_CHECKING:
    from collections.abc import Callable

    from torchvision.datasets import CIFAR10

__all__ = ["CIFAR10LTDataModule", "CIFAR100LTDataModule"]


class _CIFARLTDataModule(SplitsDataModule):
    """Shared body of :class:`CIFAR10LTDataModule` and :class:`CIFAR100LTDataModule`."""

    _dataset_name: ClassVar[str]
    _num_classes: ClassVar[int]
    _mean: ClassVar[tuple[float, float, float]]
    _std: ClassVar[tuple[float, float, float]]
    # workers that decode and augment images are costly to start again every epoch
    _persistent_workers = True

    def __init__(
        self,
        data_dir: str = "data/",
        download: bool = True,
        batch_size: int = 128,
        num_workers: int = 0,
        imbalance_ratio: float = 100.0,
        profile: str = "exp",
        seed: int = 0,
        val_per_class: int | None = 50,
    ) -> None:
        super().__init__()
        check_loader_args(batch_size, num_workers)
        _check_longtail_args(imbalance_ratio, profile)
        if val_per_class is not None and val_per_class < 1:
            raise ValueError(f"val_per_class must be at least 1 or None, got {val_per_class}")
        self.save_hyperparameters()
        self.train_set: Subset | None = None
        self.val_set: Dataset | None = None
        self.test_set: CIFAR10 | None = None
        self._train_full: CIFAR10 | None = None
        self._train_indices: list[int] | None = None

    @property
    def num_classes(self) -> int:
        """Number of classes: 10 or 100."""
        return self._num_classes

    @property
    def class_names(self) -> list[str]:
        """Class names from the dataset's metadata (loads the train set if needed)."""
        return list(self._load_train()[0].classes)

    def _dataset_cls(self) -> type[CIFAR10]:
        import torchvision.datasets

        return getattr(torchvision.datasets, self._dataset_name)

    def _transform(self, training: bool) -> Callable[[Any], Tensor]:
        from torchvision import transforms as T

        augment = [T.RandomCrop(32, padding=4), T.RandomHorizontalFlip()] if training else []
        return T.Compose([*augment, T.ToTensor(), T.Normalize(self._mean, self._std)])

    def prepare_data(self) -> None:
        """Download both splits when ``download=True`` (Lightning runs this on one process)."""
        if self.hparams.download:
            cls = self._dataset_cls()
            cls(self.hparams.data_dir, train=True, download=True)
            cls(self.hparams.data_dir, train=False, download=True)

    def _load_train(self) -> tuple[CIFAR10, list[int]]:
        """The full train set (no transform yet) and the long-tail indices into it; cached."""
        if self._train_full is None or self._train_indices is None:
            hp = self.hparams
            full = self._dataset_cls()(hp.data_dir, train=True, download=False)
            available = counts_from_targets(full.targets, self._num_classes)
            counts = longtail_counts(
                int(available.min()), self._num_classes, hp.imbalance_ratio, hp.profile
            )
            self._train_indices = longtail_indices(full.targets, counts, seed=hp.seed)
            self._train_full = full
        return self._train_full, self._train_indices

    def class_counts(self) -> Tensor:
        """Images per class of the long-tailed train split, int64 ``(C,)``.

        Counted from the subsampled targets; loads the train set if ``setup`` has not run.
        """
        full, indices = self._load_train()
        return counts_from_targets([full.targets[i] for i in indices], self._num_classes)

    def setup(self, stage: str | None = None) -> None:
        """Load the splits (once; later calls return). No download happens here.

        Args:
            stage: any Lightning stage or ``None``; every stage builds every split.
        """
        if self.train_set is not None:
            return
        hp = self.hparams
        full, indices = self._load_train()
        full.transform = self._transform(training=True)
        test = self._dataset_cls()(
            hp.data_dir, train=False, transform=self._transform(training=False), download=False
        )
        if hp.val_per_class is None:
            val: Dataset = test
        else:
            smallest = int(counts_from_targets(test.targets, self._num_classes).min())
            if hp.val_per_class > smallest:
                raise ValueError(
                    f"val_per_class={hp.val_per_class} exceeds the {smallest} test images of "
                    f"the smallest class"
                )
            val_counts = [hp.val_per_class] * self._num_classes
            val = Subset(test, longtail_indices(test.targets, val_counts, seed=hp.seed))
        # the random crop and flip of item i in epoch e come from (seed, e, i): resumable
        self.train_set = SeededSubset(full, indices, seed=hp.seed)
        self.val_set = val
        self.test_set = test


class CIFAR10LTDataModule(_CIFARLTDataModule):
    """CIFAR-10-LT: long-tailed CIFAR-10 train set, balanced standard test set.

    Splits:

    - train: the standard train set subsampled to ``longtail_counts(n_max, C,
      imbalance_ratio, profile)`` with :func:`~lightning_focal.data.longtail_indices` and
      ``seed``; ``n_max`` is the per-class train size (5,000),
      so ratio 100 gives the published counts [5000, 2997, 1796, 1077, 645, 387, 232,
      139, 83, 50].
    - test: the whole standard test set (1,000 per class, balanced).
    - val: a balanced, seeded slice of the TEST set, ``val_per_class`` per class (the whole
      test set with ``None``). It overlaps test, as in the CIFAR-LT papers, which have no
      validation split: use it to monitor training, not to select the model whose test
      score you report. Taking val from train instead would shrink the head classes below
      the published profile.

    Train images get the standard augmentation (random 32x32 crop with 4 pixels of
    padding, horizontal flip), a pure function of ``(seed, epoch, index)``
    (:class:`~lightning_focal.data._loaders.SeededSubset`), so a resumed run is the same run; all images are normalised with the train set's channel mean
    and std. ``prepare_data`` downloads (only when ``download=True``); ``setup`` never does.

    Args:
        data_dir: folder that holds (or will hold) ``cifar-10-batches-py/``.
        download: download in ``prepare_data`` if the files are missing.
        batch_size: samples per batch.
        num_workers: ``DataLoader`` workers.
        imbalance_ratio: head count over tail count of the train split, at least 1.
        profile: long-tail profile, ``"exp"`` or ``"step"``.
        seed: seed of the subsampling, of the val slice and of the train shuffle.
        val_per_class: validation images per class, drawn from the test set, or ``None``.

    Example:
        >>> from lightning_focal.data import CIFAR10LTDataModule
        >>> dm = CIFAR10LTDataModule("data/", imbalance_ratio=100.0)
        >>> dm.num_classes, dm.hparams.val_per_class
        (10, 50)
    """

    _dataset_name = "CIFAR10"
    _num_classes = 10
    _mean = (0.4914, 0.4822, 0.4465)
    _std = (0.2470, 0.2435, 0.2616)


class CIFAR100LTDataModule(_CIFARLTDataModule):
    """CIFAR-100-LT: long-tailed CIFAR-100 train set (fine labels), balanced standard test set.

    Splits:

    - train: the standard train set subsampled to ``longtail_counts(n_max, C,
      imbalance_ratio, profile)`` with :func:`~lightning_focal.data.longtail_indices` and
      ``seed``; ``n_max`` is the per-class train size (500).
    - test: the whole standard test set (100 per class, balanced).
    - val: a balanced, seeded slice of the TEST set, ``val_per_class`` per class (the whole
      test set with ``None``). It overlaps test, as in the CIFAR-LT papers, which have no
      validation split: use it to monitor training, not to select the model whose test
      score you report. Taking val from train instead would shrink the head classes below
      the published profile.

    Train images get the standard augmentation (random 32x32 crop with 4 pixels of
    padding, horizontal flip), a pure function of ``(seed, epoch, index)``
    (:class:`~lightning_focal.data._loaders.SeededSubset`), so a resumed run is the same run; all images are normalised with the train set's channel mean
    and std. ``prepare_data`` downloads (only when ``download=True``); ``setup`` never does.

    Args:
        data_dir: folder that holds (or will hold) ``cifar-100-python/``.
        download: download in ``prepare_data`` if the files are missing.
        batch_size: samples per batch.
        num_workers: ``DataLoader`` workers.
        imbalance_ratio: head count over tail count of the train split, at least 1.
        profile: long-tail profile, ``"exp"`` or ``"step"``.
        seed: seed of the subsampling, of the val slice and of the train shuffle.
        val_per_class: validation images per class, drawn from the test set, or ``None``.

    Example:
        >>> from lightning_focal.data import CIFAR100LTDataModule
        >>> dm = CIFAR100LTDataModule("data/", imbalance_ratio=50.0)
        >>> dm.num_classes
        100
    """

    _dataset_name = "CIFAR100"
    _num_classes = 100
    _mean = (0.5071, 0.4865, 0.4409)
    _std = (0.2673, 0.2564, 0.2762)
