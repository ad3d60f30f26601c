from __future__ import annotations

import pytest
import torch
from _trainer_utils import fast_trainer
from lightning.fabric.utilities.exceptions import MisconfigurationException
from torch.utils.data import DataLoader
from torchmetrics.classification import MulticlassCalibrationError

from lightning_focal.callbacks import CalibrationGamma, GammaWarmup
from lightning_focal.demos import BoringFocalClassifier, ImbalancedBlobsDataModule
from lightning_focal.schedules import LinearRamp


def test_rule_is_bounded_with_dead_band():
    cb = CalibrationGamma(step=1.0, min_gamma=0.5, max_gamma=3.0, tolerance=0.05)
    assert cb.next_gamma(2.0, gap=0.2) == 3.0
    assert cb.next_gamma(3.0, gap=0.2) == 3.0
    assert cb.next_gamma(1.0, gap=-0.2) == 0.5
    assert cb.next_gamma(2.0, gap=0.04) == 2.0
    assert cb.next_gamma(2.0, gap=-0.04) == 2.0


@pytest.mark.parametrize(
    "kwargs",
    [{"step": 0.0}, {"min_gamma": -1.0}, {"min_gamma": 3.0, "max_gamma": 2.0}, {"tolerance": -0.1}],
)
def test_bad_arguments(kwargs):
    with pytest.raises(ValueError):
        CalibrationGamma(**kwargs)


class Record(CalibrationGamma):
    """Also keeps each epoch's (γ before, gap, ECE)."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.epochs = []

    def on_validation_epoch_end(self, trainer, pl_module):
        before = float(pl_module.focal_loss.gamma)
        super().on_validation_epoch_end(trainer, pl_module)
        if not trainer.sanity_checking:
            self.epochs.append(
                (
                    before,
                    float(trainer.callback_metrics["focal/calibration_gap"]),
                    float(pl_module.focal_loss.gamma),
                )
            )


def test_gamma_moves_by_the_rule_and_ece_matches_torchmetrics(tmp_path):
    cb = Record(step=0.5, tolerance=0.0)
    model = BoringFocalClassifier(gamma=2.0, lr=0.2)
    dm = ImbalancedBlobsDataModule()
    trainer = fast_trainer(tmp_path, max_epochs=3, callbacks=[cb], num_sanity_val_steps=2)
    trainer.fit(model, dm)
    assert len(cb.epochs) == 3  # the sanity check did not move γ
    for before, gap, after in cb.epochs:
        assert after == pytest.approx(cb.next_gamma(before, gap))
        assert after != before or after in (
            cb.min_gamma,
            cb.max_gamma,
        )  # tolerance 0: moves unless bounded
    assert cb.epochs[0][2] != 2.0
    assert float(trainer.callback_metrics["focal/gamma"]) == pytest.approx(cb.epochs[-1][2])
    # Independent ECE of the final weights on the validation set (top-label, L1, 15 bins).
    model.eval()
    ece = MulticlassCalibrationError(num_classes=3, n_bins=15, norm="l1")
    with torch.no_grad():
        for x, y in DataLoader(dm.val_set, batch_size=64):
            ece.update(torch.softmax(model(x), dim=1), y)
    assert float(trainer.callback_metrics["focal/ece"]) == pytest.approx(
        float(ece.compute()), abs=1e-5
    )


def test_refuses_to_share_gamma_with_warmup(tmp_path):
    trainer = fast_trainer(
        tmp_path, max_steps=1, callbacks=[CalibrationGamma(), GammaWarmup(LinearRamp(steps=2))]
    )
    with pytest.raises(MisconfigurationException, match="both set γ"):
        trainer.fit(BoringFocalClassifier(), ImbalancedBlobsDataModule())
