from __future__ import annotations

import pytest
import torch
from _trainer_utils import fast_trainer
from lightning.fabric.utilities.exceptions import MisconfigurationException
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.loggers import Logger
from torch.utils.data import DataLoader
from torchmetrics.classification import MulticlassCalibrationError

from lightning_focal.callbacks import CalibrationGamma, GammaWarmup
from lightning_focal.demos import BoringFocalClassifier, ImbalancedBlobsDataModule
from lightning_focal.metrics import MulticlassCalibrationGap
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


class CalibratedClassifier(BoringFocalClassifier):
    """Logs its own ECE and signed calibration gap with torchmetrics, as TimmClassifier does."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.val_ece = MulticlassCalibrationError(num_classes=3, n_bins=15, norm="l1")
        self.val_gap = MulticlassCalibrationGap()

    def validation_step(self, batch, batch_idx):
        super().validation_step(batch, batch_idx)
        x, y = batch
        logits = self(x)
        self.val_ece.update(logits, y)
        self.val_gap.update(logits, y)
        self.log("val/ece", self.val_ece)
        self.log("val/calibration_gap", self.val_gap)


class MemoryLogger(Logger):
    def __init__(self):
        super().__init__()
        self.rows = []

    @property
    def name(self):
        return "memory"

    @property
    def version(self):
        return 0

    def log_metrics(self, metrics, step=None):
        self.rows.append((step, dict(metrics)))

    def log_hyperparams(self, params, *args, **kwargs):
        pass


class Record(CalibrationGamma):
    """Also keeps each validation's (γ before, monitored gap, γ after)."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.epochs = []

    def on_validation_end(self, trainer, pl_module):
        before = float(pl_module.focal_loss.gamma)
        super().on_validation_end(trainer, pl_module)
        if not trainer.sanity_checking:
            gap = float(trainer.callback_metrics[self.monitor])
            self.epochs.append((before, gap, float(pl_module.focal_loss.gamma)))


def test_gamma_follows_the_monitored_gap_that_the_module_logs(tmp_path):
    cb = Record(monitor="val/calibration_gap", step=0.5, tolerance=0.0)
    model = CalibratedClassifier(gamma=2.0, lr=0.2)
    dm = ImbalancedBlobsDataModule()
    logger = MemoryLogger()
    trainer = fast_trainer(
        tmp_path, max_epochs=3, callbacks=[cb], num_sanity_val_steps=2, logger=logger
    )
    trainer.fit(model, dm)
    assert len(cb.epochs) == 3  # the sanity check did not move γ
    for before, gap, after in cb.epochs:
        assert after == pytest.approx(cb.next_gamma(before, gap))
        assert after != before or after in (cb.min_gamma, cb.max_gamma)  # tolerance 0: moves
    assert cb.epochs[0][2] != 2.0
    assert cb.gamma_history == pytest.approx([after for _, _, after in cb.epochs])
    logged = [m["focal/gamma"] for _, m in logger.rows if "focal/gamma" in m]
    assert logged == pytest.approx(cb.gamma_history)
    # The monitored gap and the ECE are those of the final weights on the validation set,
    # computed independently: top-label, float64, ECE over 15 L1 bins.
    model.eval()
    ece = MulticlassCalibrationError(num_classes=3, n_bins=15, norm="l1")
    conf, correct = [], []
    with torch.no_grad():
        for x, y in DataLoader(dm.val_set, batch_size=64):
            probs = torch.softmax(model(x).double(), dim=1)
            ece.update(probs.float(), y)
            conf.append(probs.max(1).values)
            correct.append((probs.argmax(1) == y).double())
    gap = float(torch.cat(conf).mean() - torch.cat(correct).mean())
    assert float(trainer.callback_metrics["val/calibration_gap"]) == pytest.approx(gap, abs=1e-5)
    assert float(trainer.callback_metrics["val/ece"]) == pytest.approx(
        float(ece.compute()), abs=1e-5
    )


def test_missing_monitor_names_the_key_and_the_logged_ones(tmp_path):
    trainer = fast_trainer(tmp_path, max_epochs=1, callbacks=[CalibrationGamma()])
    with pytest.raises(MisconfigurationException, match="val/calibration_gap") as info:
        trainer.fit(BoringFocalClassifier(), ImbalancedBlobsDataModule())
    assert "val/acc" in str(info.value) and "val/loss" in str(info.value)


class HookSpy(Callback):
    """Records the owners of forward hooks on the focal loss while validation batches run."""

    def __init__(self):
        self.hooks = []

    def on_validation_batch_end(self, trainer, pl_module, *args):
        hooks = pl_module.focal_loss._forward_hooks.values()
        self.hooks.extend(type(getattr(hook, "__self__", None)) for hook in hooks)


def test_hooks_nothing_and_moves_gamma_only_while_fitting(tmp_path):
    model = CalibratedClassifier()
    cb, spy = CalibrationGamma(), HookSpy()
    trainer = fast_trainer(tmp_path, max_epochs=1, callbacks=[cb, spy])
    trainer.fit(model, ImbalancedBlobsDataModule())
    assert len(cb.gamma_history) == 1
    gamma = float(model.focal_loss.gamma)
    trainer.validate(model, ImbalancedBlobsDataModule())
    assert len(cb.gamma_history) == 1 and float(model.focal_loss.gamma) == gamma
    assert CalibrationGamma not in spy.hooks


def test_refuses_to_share_gamma_with_warmup(tmp_path):
    trainer = fast_trainer(
        tmp_path, max_steps=1, callbacks=[CalibrationGamma(), GammaWarmup(LinearRamp(steps=2))]
    )
    with pytest.raises(MisconfigurationException, match="both set γ"):
        trainer.fit(BoringFocalClassifier(), ImbalancedBlobsDataModule())
