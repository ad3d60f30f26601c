from __future__ import annotations

import pytest
import torch
from _trainer_utils import fast_trainer
from lightning.fabric.utilities.exceptions import MisconfigurationException
from lightning.pytorch.callbacks import ModelCheckpoint
from torch.utils.data import DataLoader, Dataset

from lightning_focal.callbacks import ClassBalancedAlpha
from lightning_focal.data.class_counts import counts_from_targets
from lightning_focal.demos import BoringFocalClassifier, ImbalancedBlobsDataModule

COUNTS = (96, 24, 8)


def hand_effective_number(counts, beta):
    w = [(1 - beta) / (1 - beta**n) for n in counts]
    return [x * len(counts) / sum(w) for x in w]


def fit(tmp_path, callback, dm=None, **kwargs):
    model = BoringFocalClassifier(**kwargs)
    trainer = fast_trainer(tmp_path, max_steps=2, callbacks=[callback])
    trainer.fit(model, dm or ImbalancedBlobsDataModule(COUNTS))
    return model, trainer


def test_alpha_from_datamodule_hook_matches_hand_computation(tmp_path):
    callback = ClassBalancedAlpha(method="effective_number", beta=0.99)
    model, trainer = fit(tmp_path, callback)
    expected = hand_effective_number(COUNTS, 0.99)
    assert callback.source == "datamodule.class_counts()"
    assert callback.counts == list(COUNTS)
    assert model.focal_loss.alpha.tolist() == pytest.approx(expected, rel=1e-6)
    for c, value in enumerate(expected):
        assert float(trainer.callback_metrics[f"focal/alpha/{c}"]) == pytest.approx(value, rel=1e-6)


@pytest.mark.parametrize(
    ("method", "weights"),
    [("inverse", [1 / 96, 1 / 24, 1 / 8]), ("inverse_sqrt", [96**-0.5, 24**-0.5, 8**-0.5])],
)
def test_one_pass_over_the_dataloader(tmp_path, method, weights):
    # No class_counts() hook and TensorDataset has no `targets`: the callback counts batches.
    callback = ClassBalancedAlpha(method=method)
    model, _ = fit(tmp_path, callback, ImbalancedBlobsDataModule(COUNTS, expose_counts=False))
    assert callback.source == "one pass over the training dataloader"
    expected = [w * 3 / sum(weights) for w in weights]
    assert model.focal_loss.alpha.tolist() == pytest.approx(expected, rel=1e-6)


class TargetsDataset(Dataset):
    def __init__(self, counts):
        self.targets = [c for c, n in enumerate(counts) for _ in range(n)]

    def __len__(self):
        return len(self.targets)

    def __getitem__(self, i):
        return torch.randn(8), self.targets[i]


def test_targets_attribute_of_the_dataset(tmp_path):
    callback = ClassBalancedAlpha(method="inverse")
    model = BoringFocalClassifier()
    trainer = fast_trainer(tmp_path, max_steps=1, callbacks=[callback])
    trainer.fit(model, train_dataloaders=DataLoader(TargetsDataset((30, 10, 5)), batch_size=5))
    assert callback.source == "dataset.targets"
    assert callback.counts == [30, 10, 5]


def test_sigmoid_losses_get_alpha_in_unit_interval(tmp_path):
    callback = ClassBalancedAlpha(method="inverse")
    model, _ = fit(tmp_path, callback, sigmoid=True)
    w = torch.tensor([1 / 96, 1 / 24, 1 / 8])
    w = w * 3 / w.sum()
    assert model.focal_loss.alpha.tolist() == pytest.approx((w / (1 + w)).tolist(), rel=1e-6)


def test_alpha_kept_in_checkpoint_and_not_recounted(tmp_path):
    callback = ClassBalancedAlpha(beta=0.9)
    trainer = fast_trainer(
        tmp_path,
        max_steps=2,
        enable_checkpointing=True,
        callbacks=[callback, ModelCheckpoint(dirpath=tmp_path, save_last=True)],
    )
    trainer.fit(BoringFocalClassifier(), ImbalancedBlobsDataModule(COUNTS))
    state = torch.load(tmp_path / "last.ckpt", weights_only=True)
    (key,) = [k for k in state["callbacks"] if k.startswith("ClassBalancedAlpha")]
    assert state["callbacks"][key]["counts"] == list(COUNTS)
    assert state["state_dict"]["focal_loss.alpha"].tolist() == pytest.approx(
        hand_effective_number(COUNTS, 0.9)
    )
    # Resume with a datamodule whose counts differ: α must come from the checkpoint.
    resumed = ClassBalancedAlpha(beta=0.9)
    model = BoringFocalClassifier()
    trainer = fast_trainer(tmp_path, max_steps=3, callbacks=[resumed])
    trainer.fit(
        model, ImbalancedBlobsDataModule((10, 10, 10)), ckpt_path=str(tmp_path / "last.ckpt")
    )
    assert resumed.counts == list(COUNTS)
    assert model.focal_loss.alpha.tolist() == pytest.approx(hand_effective_number(COUNTS, 0.9))


def test_batch_target_kinds_are_counted():
    assert counts_from_targets(
        torch.tensor([[0, 1], [1, -100]]), 3, ignore_index=-100
    ).tolist() == [1, 2, 0]
    assert counts_from_targets(
        torch.tensor([[1.0, 0.0], [1.0, 1.0]]), 2, ignore_index=-100
    ).tolist() == [2, 1]
    with pytest.raises(ValueError, match="multi-hot"):
        counts_from_targets(torch.tensor([0.5, 0.2]), 3, ignore_index=-100)
    with pytest.raises(ValueError, match=r"must lie in \[0, 3\)"):  # no longer skipped silently
        counts_from_targets(torch.tensor([0, 7]), 3, ignore_index=-100)


def test_bad_arguments(tmp_path):
    with pytest.raises(ValueError, match="unknown method"):
        ClassBalancedAlpha(method="median")
    with pytest.raises(ValueError, match="beta"):
        ClassBalancedAlpha(beta=1.0)
    callback = ClassBalancedAlpha(target_index="label")
    with pytest.raises(MisconfigurationException, match="target_index='label'"):
        fit(tmp_path, callback, ImbalancedBlobsDataModule(COUNTS, expose_counts=False))
