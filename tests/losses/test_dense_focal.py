"""DenseFocalLoss: its three normalisations, ignored anchors, EMA, and the batch normaliser
averaged over 2 ddp_spawn CPU processes (gloo)."""

from __future__ import annotations

import lightning.pytorch as pl
import pytest
import torch
from _trainer_utils import fast_trainer
from torch.testing import assert_close
from torch.utils.data import DataLoader, TensorDataset

from lightning_focal import sigmoid_focal_loss
from lightning_focal.losses import DenseFocalLoss


def case(positives_per_image, anchors=20, classes=3, seed=0):
    """Logits ``(N, anchors, C)`` and one-hot targets with the given positives per image."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(len(positives_per_image), anchors, classes, generator=gen, dtype=torch.float64)
    t = torch.zeros_like(x)
    for i, n in enumerate(positives_per_image):
        t[i, torch.arange(n), torch.arange(n) % classes] = 1.0
    return x, t


def test_batch_divides_the_summed_loss_by_all_positives():
    x, t = case([3, 1, 0])
    loss = DenseFocalLoss(normalization="batch")(x, t)
    assert_close(loss, sigmoid_focal_loss(x, t, reduction="sum") / 4)


def test_batch_without_positives_divides_by_one():
    x, t = case([0, 0])
    loss = DenseFocalLoss(normalization="batch")
    assert_close(loss(x, t), sigmoid_focal_loss(x, t, reduction="sum"))
    assert float(loss.last_normalizer) == 1.0


def test_per_image_averages_each_images_normalised_sum():
    x, t = case([3, 1, 0])
    per_image = [
        sigmoid_focal_loss(x[i], t[i], reduction="sum") / max(1, n) for i, n in enumerate([3, 1, 0])
    ]
    assert_close(DenseFocalLoss(normalization="per_image")(x, t), torch.stack(per_image).mean())


def test_per_image_normaliser_keeps_float64_precision():
    # 1 / (positives * images) was once formed in float32: a ~3e-8 relative error in float64
    x, t = case([3, 7, 0], anchors=40)
    per_image = [
        sigmoid_focal_loss(x[i], t[i], reduction="sum") / max(1, n) for i, n in enumerate([3, 7, 0])
    ]
    loss = DenseFocalLoss(normalization="per_image").double()(x, t)
    assert_close(loss, torch.stack(per_image).mean(), rtol=1e-13, atol=0.0)


def test_mean_and_ignored_anchors():
    x, t = case([2, 2])
    keep = torch.ones(2, 20, dtype=torch.bool)
    keep[:, 10:] = False  # the band between the matcher's thresholds
    loss = DenseFocalLoss(normalization="mean")(x, t, weight=keep)
    expected = sigmoid_focal_loss(x[:, :10], t[:, :10], reduction="mean")
    assert_close(loss, expected)
    batch = DenseFocalLoss(normalization="batch")(x, t, weight=keep)
    assert_close(batch, sigmoid_focal_loss(x[:, :10], t[:, :10], reduction="sum") / 4)


def test_statistics_report_the_dense_regime():
    x, t = case([3, 1, 0], anchors=500)
    weight = torch.ones(3, 500)
    weight[0, 0] = 0.0  # an ignored anchor is no positive
    stats = DenseFocalLoss().statistics(x, t, weight)
    assert float(stats["anchors_per_image"]) == 500.0
    assert float(stats["positives_per_image"]) == pytest.approx(3 / 3)
    assert float(stats["positive_fraction"]) == pytest.approx(1 / 500)
    stats = DenseFocalLoss().statistics(x, t)
    assert float(stats["positives_per_image"]) == pytest.approx(4 / 3)


def test_ema_smooths_the_normaliser_in_training_only():
    loss = DenseFocalLoss(normalization="batch", ema_momentum=0.5)
    loss(*case([4]))
    assert float(loss.last_normalizer) == 4.0  # the first value starts the average
    loss(*case([2]))
    assert float(loss.last_normalizer) == 3.0
    loss.eval()
    loss(*case([8]))
    assert float(loss.last_normalizer) == 5.5  # uses the average, does not update it
    loss(*case([8]))
    assert float(loss.last_normalizer) == 5.5


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"normalization": "images"}, "unknown normalization"),
        ({"ema_momentum": 1.0}, "ema_momentum"),
        ({"normalization": "mean", "ema_momentum": 0.9}, "ema_momentum"),
    ],
)
def test_bad_settings(kwargs, message):
    with pytest.raises(ValueError, match=message):
        DenseFocalLoss(**kwargs)


def test_logits_must_be_three_dimensional():
    with pytest.raises(ValueError, match=r"\(N, anchors, C\)"):
        DenseFocalLoss()(torch.zeros(4, 3), torch.zeros(4, 3))


# Rank r sees these positives per image; the normaliser is the mean over ranks of the
# per-rank totals, clamped to >= 1.
POSITIVES = {0: [[3, 2]], 1: [[0, 1]]}  # totals 5 and 1: mean 3
NONE_ON_ONE = {0: [[0, 0]], 1: [[1, 0]]}  # totals 0 and 1: mean 0.5, clamped to 1


class DenseProbe(pl.LightningModule):
    def __init__(self, positives) -> None:
        super().__init__()
        self.positives = positives
        self.head = torch.nn.Linear(1, 1)
        self.loss = DenseFocalLoss(normalization="batch")

    def training_step(self, batch, batch_idx):
        x, t = case(self.positives[self.global_rank][batch_idx], seed=self.global_rank)
        x = x.float() + self.head.bias
        loss = self.loss(x, t.float())
        local = sigmoid_focal_loss(x, t.float(), reduction="sum")
        # loss * normaliser must give back this rank's own summed loss
        self.log(
            "ratio_error",
            float((loss * self.loss.last_normalizer - local).abs()),
            reduce_fx="max",
            sync_dist=True,
        )
        self.log("normalizer_min", self.loss.last_normalizer, reduce_fx="min", sync_dist=True)
        self.log("normalizer_max", self.loss.last_normalizer, reduce_fx="max", sync_dist=True)
        return loss

    def train_dataloader(self):
        return DataLoader(TensorDataset(torch.zeros(2, 1)), batch_size=1)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.0)


@pytest.mark.timeout(300)
@pytest.mark.parametrize(("positives", "expected"), [(POSITIVES, 3.0), (NONE_ON_ONE, 1.0)])
def test_batch_normaliser_is_the_mean_over_ddp_spawn_ranks(tmp_path, positives, expected):
    trainer = fast_trainer(
        tmp_path, strategy="ddp_spawn", devices=2, max_steps=1, deterministic=False
    )
    trainer.fit(DenseProbe(positives))
    metrics = {k: float(v) for k, v in trainer.callback_metrics.items()}
    assert metrics["normalizer_min"] == metrics["normalizer_max"] == pytest.approx(expected)
    assert metrics["ratio_error"] < 1e-4
