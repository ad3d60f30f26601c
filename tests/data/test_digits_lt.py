"""DigitsLTDataModule: splits, long-tail counts, determinism, noise and loaders."""

from __future__ import annotations

import lightning as L
import pytest
import torch
from _trainer_utils import fast_trainer
from sklearn.datasets import load_digits
from torch import nn

from lightning_focal.data import ClassCountsProvider, DigitsLTDataModule, longtail_counts


def _plan(dm: DigitsLTDataModule):
    return dm._get_plan()


@pytest.fixture(scope="module")
def digits_dm() -> DigitsLTDataModule:
    dm = DigitsLTDataModule(batch_size=32)
    dm.setup("fit")
    return dm


def test_train_counts_follow_profile(digits_dm: DigitsLTDataModule) -> None:
    # Smallest class: digit 8 with 174 images, minus 50 test and 20 val.
    expected = longtail_counts(174 - 70, 10, 100.0)
    assert expected == [104, 62, 37, 22, 13, 8, 4, 2, 1, 1]
    assert digits_dm.class_counts().tolist() == expected


def test_class_counts_is_bincount_of_train_targets(digits_dm: DigitsLTDataModule) -> None:
    counts = digits_dm.class_counts()
    assert counts.dtype == torch.int64 and counts.shape == (10,)
    train_targets = digits_dm.train_set.tensors[1]
    assert torch.equal(counts, torch.bincount(train_targets, minlength=10))
    assert isinstance(digits_dm, ClassCountsProvider)


def test_split_targets_match_sklearn_labels(digits_dm: DigitsLTDataModule) -> None:
    labels = torch.as_tensor(load_digits().target)
    plan = _plan(digits_dm)
    assert torch.equal(digits_dm.train_set.tensors[1], labels[plan.train_indices])
    assert torch.equal(digits_dm.test_set.tensors[1], labels[plan.test_indices])


def test_test_and_val_balanced_and_disjoint(digits_dm: DigitsLTDataModule) -> None:
    plan = _plan(digits_dm)
    test_targets = digits_dm.test_set.tensors[1]
    val_targets = digits_dm.val_set.tensors[1]
    assert torch.bincount(test_targets, minlength=10).tolist() == [50] * 10
    assert torch.bincount(val_targets, minlength=10).tolist() == [20] * 10
    train, val, test = (
        set(t.tolist()) for t in (plan.train_indices, plan.val_indices, plan.test_indices)
    )
    assert len(test) == 500 and len(val) == 200
    assert not train & test and not train & val and not val & test


def test_step_profile_and_ratio() -> None:
    dm = DigitsLTDataModule(
        imbalance_ratio=4.0, profile="step", test_per_class=30, val_per_class=10
    )
    assert dm.class_counts().tolist() == [134] * 5 + [33] * 5


def test_shapes_and_dtypes() -> None:
    dm = DigitsLTDataModule(batch_size=8, image_size=16, in_chans=1)
    dm.setup("fit")
    for loader in (dm.train_dataloader(), dm.val_dataloader(), dm.test_dataloader()):
        images, targets = next(iter(loader))
        assert images.shape == (8, 1, 16, 16) and images.dtype == torch.float32
        assert targets.shape == (8,) and targets.dtype == torch.int64
    assert dm.num_classes == 10
    assert dm.class_names == [str(c) for c in range(10)]


def test_channels_are_replicas(digits_dm: DigitsLTDataModule) -> None:
    images = torch.stack(
        [digits_dm.train_set[i][0] for i in range(4)] + list(digits_dm.test_set.tensors[0][:4])
    )
    assert images.shape[1:] == (3, 32, 32)
    assert torch.equal(images[:, 0], images[:, 1]) and torch.equal(images[:, 0], images[:, 2])


def test_clean_images_are_standardised_on_train() -> None:
    dm = DigitsLTDataModule(image_size=8, in_chans=1, noise_std=0.0)
    dm.setup()
    pixels = dm.train_set.tensors[0]
    # One mean and std over every train pixel (not per pixel: see the module's note).
    assert abs(float(pixels.mean())) < 1e-5
    assert abs(float(pixels.std(unbiased=False)) - 1.0) < 1e-4
    # image_size=8 means no resampling: the raw digit is recoverable up to one affine map.
    raw = torch.as_tensor(load_digits().images, dtype=torch.float32)[_plan(dm).train_indices]
    scale = raw.std(unbiased=False)
    torch.testing.assert_close(pixels, (raw - raw.mean()) / scale, atol=1e-5, rtol=1e-5)
    # Held-out pixels stay in a sane range (per-pixel statistics blew them up to ~85).
    assert float(dm.test_set.tensors[0].abs().max()) < 5.0


def test_upsampling_is_bilinear() -> None:
    small = DigitsLTDataModule(image_size=8, in_chans=1, noise_std=1.0)
    big = DigitsLTDataModule(image_size=32, in_chans=1, noise_std=1.0)
    small.setup()
    big.setup()
    expected = torch.nn.functional.interpolate(
        small.test_set.tensors[0], size=(32, 32), mode="bilinear", align_corners=False
    )
    torch.testing.assert_close(big.test_set.tensors[0], expected)


def test_deterministic_for_a_seed() -> None:
    first, second = DigitsLTDataModule(seed=3), DigitsLTDataModule(seed=3)
    first.setup("fit")
    second.setup("fit")
    for a, b in ((first.train_set, second.train_set), (first.test_set, second.test_set)):
        assert torch.equal(a.tensors[0], b.tensors[0]) and torch.equal(a.tensors[1], b.tensors[1])
    batches = [next(iter(dm.train_dataloader()))[1] for dm in (first, second)]
    assert torch.equal(batches[0], batches[1])


def test_seeds_differ(digits_dm: DigitsLTDataModule) -> None:
    other = DigitsLTDataModule(seed=1)
    other.setup("fit")
    assert not torch.equal(_plan(digits_dm).train_indices, _plan(other).train_indices)
    assert not torch.equal(_plan(digits_dm).test_indices, _plan(other).test_indices)
    # Same profile whatever the seed.
    assert torch.equal(digits_dm.class_counts(), other.class_counts())


def test_noise_is_fixed_and_scaled() -> None:
    clean = DigitsLTDataModule(noise_std=0.0)
    noisy = DigitsLTDataModule(noise_std=1.0)
    noisier = DigitsLTDataModule(noise_std=2.0)
    for dm in (clean, noisy, noisier):
        dm.setup("fit")
    x0, x1, x2 = (dm.test_set.tensors[0] for dm in (clean, noisy, noisier))
    assert not torch.allclose(x0, x1)
    # The noise is one fixed draw per image; noise_std only scales it.
    torch.testing.assert_close(x2 - x0, 2 * (x1 - x0), atol=1e-4, rtol=1e-4)
    # Same splits whatever the noise.
    assert torch.equal(clean.test_set.tensors[1], noisy.test_set.tensors[1])
    # Validation and test images are the same tensors every time; training images get
    # new noise every epoch (an augmentation), around the clean image.
    assert torch.equal(noisy.val_set[5][0], noisy.val_set[5][0])
    first, second = noisy.train_set[(0, 5)][0], noisy.train_set[(1, 5)][0]
    assert not torch.equal(first, second)
    clean_image = clean.train_set[5][0]
    assert torch.equal(clean.train_set[5][0], clean_image)
    assert 0.3 < float((first - clean_image).std()) < 1.5


def test_noise_has_unit_std_on_standardised_pixels() -> None:
    clean = DigitsLTDataModule(image_size=8, in_chans=1, noise_std=0.0)
    noisy = DigitsLTDataModule(image_size=8, in_chans=1, noise_std=1.0)
    clean.setup()
    noisy.setup()
    difference = noisy.test_set.tensors[0] - clean.test_set.tensors[0]
    assert abs(float(difference.std()) - 1.0) < 0.05
    assert abs(float(difference.mean())) < 0.05


def test_train_loader_shuffles_val_does_not(digits_dm: DigitsLTDataModule) -> None:
    train_targets = torch.cat([t for _, t in digits_dm.train_dataloader()])
    assert not torch.equal(train_targets, digits_dm.train_set.tensors[1])
    assert torch.equal(
        torch.sort(train_targets).values, torch.sort(digits_dm.train_set.tensors[1]).values
    )
    val_targets = torch.cat([t for _, t in digits_dm.val_dataloader()])
    assert torch.equal(val_targets, digits_dm.val_set.tensors[1])


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"imbalance_ratio": 0.9}, "imbalance_ratio"),
        ({"profile": "linear"}, "profile"),
        ({"noise_std": -1.0}, "noise_std"),
        ({"test_per_class": 150, "val_per_class": 30}, "smallest"),
        ({"batch_size": 0}, "batch_size"),
    ],
)
def test_rejects_bad_arguments(kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        DigitsLTDataModule(**kwargs)


def test_loader_before_setup_raises() -> None:
    with pytest.raises(RuntimeError, match="setup"):
        DigitsLTDataModule().train_dataloader()


class _Linear(L.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Flatten(), nn.Linear(3 * 8 * 8, 10))
        self.seen: list[torch.Tensor] = []

    def training_step(self, batch, batch_idx):
        images, targets = batch
        self.seen.append(targets)
        return nn.functional.cross_entropy(self.net(images), targets)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def test_trains_in_lightning(tmp_path) -> None:
    dm = DigitsLTDataModule(batch_size=64, image_size=8)
    model = _Linear()
    trainer = fast_trainer(tmp_path, max_epochs=1, limit_val_batches=0)
    trainer.fit(model, datamodule=dm)
    seen = torch.cat(model.seen)
    assert torch.equal(torch.bincount(seen, minlength=10), dm.class_counts())


def test_train_loader_is_resumable_and_val_is_left_to_lightning(
    digits_dm: DigitsLTDataModule,
) -> None:
    # The train loader shards itself (a DistributedSampler subclass, which Lightning keeps)
    # and keeps its position in the checkpoint; val is a plain DataLoader in order, which
    # Lightning gives a DistributedSampler under DDP.
    from torch.utils.data import DataLoader, SequentialSampler

    from lightning_focal.data._loaders import ResumableDataLoader, ResumableSampler

    train, val = digits_dm.train_dataloader(), digits_dm.val_dataloader()
    assert isinstance(train, ResumableDataLoader) and isinstance(train.sampler, ResumableSampler)
    assert train.sampler.epoch_keys  # NoisyDigits gets (epoch, index) keys
    assert type(val) is DataLoader and isinstance(val.sampler, SequentialSampler)


def test_train_noise_is_a_pure_function_of_seed_epoch_and_index(
    digits_dm: DigitsLTDataModule,
) -> None:
    import lightning.pytorch as pl

    from lightning_focal.data.digits_lt import NoisyDigits

    train = digits_dm.train_set
    assert isinstance(train, NoisyDigits)
    first = train[(1, 5)][0]
    torch.manual_seed(123)  # the global generator has no say
    assert torch.equal(train[(1, 5)][0], first)
    assert not torch.equal(train[(2, 5)][0], first) and not torch.equal(train[(1, 6)][0], first)
    # the same batches with and without worker processes, seeded or not
    loaders = []
    for num_workers in (0, 2):
        pl.seed_everything(7, workers=True)
        dm = DigitsLTDataModule(batch_size=64, image_size=8, num_workers=num_workers)
        dm.setup("fit")
        loader = dm.train_dataloader()
        loader.sampler.set_epoch(3)
        loaders.append([torch.cat([x.flatten(1), y[:, None]], 1) for x, y in loader])
    assert all(torch.equal(a, b) for a, b in zip(*loaders)) and len(loaders[0]) == 4


class _CountingModel(L.LightningModule):
    """Counts the targets each rank trains on; the rank-0 copy comes back from ddp_spawn."""

    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Linear(3 * 8 * 8, 10)
        self.register_buffer("seen", torch.zeros(10, dtype=torch.int64))

    def on_train_start(self) -> None:
        # Made here, in the rank's process: ddp_spawn would share a tensor made in __init__
        # between the ranks through shared memory.
        self.local_seen = torch.zeros(10, dtype=torch.int64)

    def training_step(self, batch, batch_idx):
        images, targets = batch
        # Not in a buffer: DDP broadcasts buffers from rank 0 before every forward.
        self.local_seen += torch.bincount(targets, minlength=10)
        return nn.functional.cross_entropy(self.net(images.flatten(1)), targets)

    def on_train_epoch_end(self) -> None:
        self.seen.copy_(self.all_gather(self.local_seen).sum(dim=0))

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


@pytest.mark.slow
def test_ddp_ranks_split_the_train_set(tmp_path) -> None:
    dm = DigitsLTDataModule(batch_size=32, image_size=8)
    model = _CountingModel()
    trainer = fast_trainer(
        tmp_path, max_epochs=1, devices=2, strategy="ddp_spawn", limit_val_batches=0
    )
    trainer.fit(model, datamodule=dm)
    # 254 train images split evenly (no DistributedSampler padding): the two ranks together
    # saw every train image exactly once, so every rank built the same data.
    assert torch.equal(model.seen, dm.class_counts())
