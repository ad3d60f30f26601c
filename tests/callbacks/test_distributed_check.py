"""DistributedConsistencyCheck on one process, with an all_gather that fakes a second rank."""

from __future__ import annotations

from types import SimpleNamespace

import lightning.pytorch as pl
import pytest
import torch

from lightning_focal.callbacks import DistributedConsistencyCheck
from lightning_focal.losses import DenseFocalLoss


class Detector(pl.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.cls_loss = DenseFocalLoss(normalization="batch", sync=False)
        self.logged: dict[str, float] = {}

    def log(self, name, value, **kwargs):  # type: ignore[override]
        self.logged[name] = float(value)


def same(t):
    return t


def fake_trainer(focal=same, dense=same):
    """all_gather stacks this rank's tensor with the other rank's: ``focal(tensor)`` for
    the first gather (γ, α), ``dense(tensor)`` for the second (positives, normaliser)."""
    calls = []

    def all_gather(t):
        other = (dense if calls else focal)(t.clone())
        calls.append(t)
        return torch.stack([t, other])

    return SimpleNamespace(global_step=1, strategy=SimpleNamespace(all_gather=all_gather))


def step(module: Detector, positives: list[float]) -> None:
    """One forward with ``positives`` positive anchors per image."""
    targets = torch.zeros(len(positives), 10, 2)
    for i, n in enumerate(positives):
        targets[i, : int(n), 0] = 1.0
    module.cls_loss(torch.zeros(len(positives), 10, 2), targets)


def test_logs_the_mean_of_the_ranks_positives_and_zero_spread():
    module = Detector()
    step(module, [3, 2])  # 5 positives on this rank
    module.cls_loss.last_normalizer = torch.tensor(6.0)  # as if all-reduced with a rank of 7

    def other(t):
        t[0] = 7.0  # the other rank's positives; its normaliser is the same 6
        return t

    DistributedConsistencyCheck().on_train_batch_end(fake_trainer(dense=other), module)
    assert module.logged["ddp/positives_mean"] == pytest.approx(6.0)
    assert module.logged["ddp/normalizer_spread"] == 0.0
    assert module.logged["ddp/focal_spread"] == 0.0


def test_ranks_dividing_by_different_normalisers_raise():
    module = Detector()
    step(module, [3, 2])

    def other(t):
        t[1] = t[1] + 1.0  # the other rank divided by its own count
        return t

    with pytest.raises(RuntimeError, match="normaliser"):
        DistributedConsistencyCheck().on_train_batch_end(fake_trainer(dense=other), module)


def test_ranks_with_different_gamma_raise():
    module = Detector()
    step(module, [1])

    def other(t):
        return t + 0.5

    with pytest.raises(RuntimeError, match="γ/α"):
        DistributedConsistencyCheck().on_train_batch_end(fake_trainer(focal=other), module)
