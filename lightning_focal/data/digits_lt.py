"""Long-tailed, noisy scikit-learn digits: a classification benchmark that runs offline in seconds.

scikit-learn ships the 1,797 8x8 digit images of ``load_digits`` with the package, so this
datamodule needs no download. Clean digits are too easy for losses to differ (a model fits
the one to three tail images exactly); additive Gaussian pixel noise makes the classes
overlap, and then class weighting and focusing show their effect.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.data import TensorDataset

from lightning_focal.data._loaders import (
    NOISE_STREAM,
    EpochDataset,
    SplitsDataModule,
    check_loader_args,
    mix_seed,
)
from lightning_focal.data.class_counts import counts_from_targets
from lightning_focal.data.longtail import _check_longtail_args, longtail_counts, longtail_indices

__all__ = ["DigitsLTDataModule", "NoisyDigits"]

_NUM_CLASSES = 10
_SMALLEST_CLASS = 174  # class 8 of load_digits; the others have 177 to 183 images


@dataclass(frozen=True)
class _DigitsPlan:
    images: Tensor  # (N, 8, 8) float32, raw intensities 0..16
    targets: Tensor  # (N,) int64
    train_indices: Tensor
    val_indices: Tensor
    test_indices: Tensor


class DigitsLTDataModule(SplitsDataModule):
    """scikit-learn's digits, made long-tailed and noisy, as a ``LightningDataModule``.

    Splits, all drawn from one generator seeded with ``seed`` and disjoint by index:

    1. test: ``test_per_class`` images of every class (balanced), taken out first;
    2. val: the next ``val_per_class`` images of every class (balanced);
    3. train: the rest is the pool; class ``c`` keeps ``longtail_counts(n_max, 10,
       imbalance_ratio, profile)[c]`` of its pool images, with ``n_max`` the smallest
       class's pool size (104 with the defaults), so digit 0 is the head and 9 the tail.

    Images are standardised with the mean and standard deviation of all train pixels,
    then get additive Gaussian noise of standard deviation ``noise_std`` on the
    standardised 8x8 pixels, then are upsampled bilinearly to ``image_size`` and replicated
    to ``in_chans`` channels. Training images get new noise every epoch
    (:class:`NoisyDigits`, an augmentation: a fixed draw would be memorised), a pure
    function of ``(seed, epoch, index)``; validation and test images get one draw from a
    generator seeded with ``seed``, so evaluation is deterministic and the same on every
    DDP rank.

    All tensors are held in memory. ``train_dataloader``'s order is a pure function of
    ``(seed, epoch)`` and resumes mid-epoch (see
    :class:`~lightning_focal.data._loaders.SplitsDataModule`; under DDP each rank takes
    its share). val and test are not shuffled.

    Args:
        batch_size: samples per batch.
        num_workers: ``DataLoader`` workers.
        seed: seed of the splits, the subsampling, the noise and the train shuffle.
        imbalance_ratio: head count over tail count of the train split, at least 1.
        profile: long-tail profile, ``"exp"`` or ``"step"``.
        image_size: side of the upsampled square images.
        in_chans: channels; the grey image is replicated.
        noise_std: standard deviation of the pixel noise on standardised pixels; 0 for
            clean images.
        test_per_class: balanced test images per class.
        val_per_class: balanced validation images per class.

    Example:
        >>> from lightning_focal.data import DigitsLTDataModule
        >>> dm = DigitsLTDataModule(batch_size=16)
        >>> dm.class_counts()
        tensor([104,  62,  37,  22,  13,   8,   4,   2,   1,   1])
        >>> dm.setup("fit")
        >>> images, targets = next(iter(dm.train_dataloader()))
        >>> images.shape, targets.dtype
        (torch.Size([16, 3, 32, 32]), torch.int64)
        >>> len(dm.val_set), len(dm.test_set)
        (200, 500)
    """

    def __init__(
        self,
        batch_size: int = 64,
        num_workers: int = 0,
        seed: int = 0,
        imbalance_ratio: float = 100.0,
        profile: str = "exp",
        image_size: int = 32,
        in_chans: int = 3,
        noise_std: float = 1.0,
        test_per_class: int = 50,
        val_per_class: int = 20,
    ) -> None:
        super().__init__()
        check_loader_args(batch_size, num_workers)
        _check_longtail_args(imbalance_ratio, profile)
        if image_size < 1 or in_chans < 1:
            raise ValueError(
                f"image_size and in_chans must be at least 1, got {image_size} and {in_chans}"
            )
        if not noise_std >= 0.0:
            raise ValueError(f"noise_std must be non-negative, got {noise_std}")
        if test_per_class < 0 or val_per_class < 0:
            raise ValueError(
                f"test_per_class and val_per_class must be non-negative, got {test_per_class} "
                f"and {val_per_class}"
            )
        if test_per_class + val_per_class >= _SMALLEST_CLASS:
            raise ValueError(
                f"test_per_class + val_per_class = {test_per_class + val_per_class} leaves no "
                f"training images for the smallest digit class ({_SMALLEST_CLASS} images)"
            )
        self.save_hyperparameters()
        self.train_set: TensorDataset | None = None
        self.val_set: TensorDataset | None = None
        self.test_set: TensorDataset | None = None
        self._plan: _DigitsPlan | None = None

    @property
    def num_classes(self) -> int:
        """Number of classes: 10.

        Example:
            >>> DigitsLTDataModule().num_classes
            10
        """
        return _NUM_CLASSES

    @property
    def class_names(self) -> list[str]:
        """Names of the classes, the digits as strings, index = class.

        Example:
            >>> DigitsLTDataModule().class_names[:3]
            ['0', '1', '2']
        """
        return [str(c) for c in range(_NUM_CLASSES)]

    def _get_plan(self) -> _DigitsPlan:
        """Load the digits and draw the split indices (cheap; cached)."""
        if self._plan is not None:
            return self._plan
        from sklearn.datasets import load_digits

        digits = load_digits()
        images = torch.as_tensor(digits.images, dtype=torch.float32)
        targets = torch.as_tensor(digits.target, dtype=torch.int64)
        hp = self.hparams
        generator = torch.Generator().manual_seed(hp.seed)
        test, val, pool = [], [], []
        for c in range(_NUM_CLASSES):
            class_indices = torch.nonzero(targets == c).flatten()
            shuffled = class_indices[torch.randperm(class_indices.numel(), generator=generator)]
            test.append(shuffled[: hp.test_per_class])
            val.append(shuffled[hp.test_per_class : hp.test_per_class + hp.val_per_class])
            pool.append(shuffled[hp.test_per_class + hp.val_per_class :])
        pool_indices = torch.cat(pool).sort().values
        n_max = min(p.numel() for p in pool)
        counts = longtail_counts(n_max, _NUM_CLASSES, hp.imbalance_ratio, hp.profile)
        kept = longtail_indices(targets[pool_indices], counts, seed=hp.seed)
        self._plan = _DigitsPlan(
            images=images,
            targets=targets,
            train_indices=pool_indices[kept],
            val_indices=torch.cat(val).sort().values,
            test_indices=torch.cat(test).sort().values,
        )
        return self._plan

    def class_counts(self) -> Tensor:
        """Images per class of the train split (int64, shape ``(10,)``); needs no ``setup``.

        Example:
            >>> DigitsLTDataModule(imbalance_ratio=10.0).class_counts()
            tensor([104,  80,  62,  48,  37,  28,  22,  17,  13,  10])
        """
        plan = self._get_plan()
        return counts_from_targets(plan.targets[plan.train_indices], _NUM_CLASSES)

    def prepare_data(self) -> None:
        """Nothing to do: the digits ship with scikit-learn."""

    def setup(self, stage: str | None = None) -> None:
        """Build all three splits as in-memory ``TensorDataset``\\ s (once; later calls return).

        Args:
            stage: ``"fit"``, ``"validate"``, ``"test"``, ``"predict"`` or ``None``; every
                stage builds every split, which takes a few milliseconds.
        """
        if self.train_set is not None:
            return
        plan = self._get_plan()
        hp = self.hparams
        train_images = plan.images[plan.train_indices]
        # One mean and std over all train pixels: per-pixel statistics of a few hundred
        # long-tailed images are near 0 at the border, which blows up held-out pixels.
        mean = train_images.mean()
        std = train_images.std(unbiased=False).clamp_min(1e-6)
        standardised = (plan.images - mean) / std
        noise_generator = torch.Generator().manual_seed(hp.seed)
        noise = torch.randn(plan.images.shape, generator=noise_generator) * hp.noise_std
        held_out = standardised + noise

        def dataset(indices: Tensor) -> TensorDataset:
            return TensorDataset(
                _upsample(held_out[indices], hp.image_size, hp.in_chans), plan.targets[indices]
            )

        self.train_set = NoisyDigits(
            standardised[plan.train_indices],
            plan.targets[plan.train_indices],
            hp.noise_std,
            hp.image_size,
            hp.in_chans,
            seed=hp.seed,
        )
        self.val_set = dataset(plan.val_indices)
        self.test_set = dataset(plan.test_indices)


def _upsample(images: Tensor, image_size: int, in_chans: int) -> Tensor:
    """(N, 8, 8) -> (N, in_chans, image_size, image_size), bilinear."""
    images = images.unsqueeze(1)
    if image_size != images.shape[-1]:
        images = F.interpolate(
            images, size=(image_size, image_size), mode="bilinear", align_corners=False
        )
    return images.repeat(1, in_chans, 1, 1)


class NoisyDigits(EpochDataset[tuple[Tensor, Tensor]]):
    """Training digits with new Gaussian pixel noise every epoch (an augmentation).

    A fixed noise draw is memorised like the clean images (the 1-3 tail images are fit
    exactly and every loss ends at the same accuracy); new noise keeps the tail hard. The
    noise of item ``index`` in ``epoch`` comes from a generator seeded with
    ``mix_seed(seed, NOISE_STREAM, epoch, index)``: the same in every worker and rank and
    in a resumed run, and a new draw every epoch (``ds[(epoch, index)]``; ``ds[index]`` is
    epoch 0). ``tensors`` holds the clean standardised 8x8 images and the targets.

    Example:
        >>> ds = NoisyDigits(torch.zeros(2, 8, 8), torch.tensor([0, 1]), 1.0, 16, 3, seed=0)
        >>> x, y = ds[1]; tuple(x.shape), int(y)
        ((3, 16, 16), 1)
        >>> torch.equal(ds[(2, 1)][0], ds[(2, 1)][0]), torch.equal(ds[(2, 1)][0], ds[(3, 1)][0])
        (True, False)
    """

    def __init__(
        self,
        images: Tensor,
        targets: Tensor,
        noise_std: float,
        image_size: int,
        in_chans: int,
        seed: int = 0,
    ) -> None:
        self.tensors = (images, targets)
        self.targets = targets
        self.noise_std = noise_std
        self.image_size = image_size
        self.in_chans = in_chans
        self.seed = seed

    def __len__(self) -> int:
        return len(self.targets)

    def item(self, index: int, epoch: int) -> tuple[Tensor, Tensor]:
        """Image ``index`` with the noise of ``epoch``, upsampled, and its target."""
        image = self.tensors[0][index]
        if self.noise_std > 0:
            generator = torch.Generator().manual_seed(
                mix_seed(self.seed, NOISE_STREAM, epoch, index)
            )
            image = image + torch.randn(image.shape, generator=generator) * self.noise_std
        return _upsample(image.unsqueeze(0), self.image_size, self.in_chans)[0], self.targets[index]
