"""TimmClassifier logs what CalibrationGamma monitors and the reliability bins FocalPlots draws."""

from __future__ import annotations

import pytest
import torch
from _trainer_utils import fast_trainer
from torch.utils.data import DataLoader, TensorDataset

from lightning_focal.callbacks import CalibrationGamma

pytest.importorskip("timm")


def loaders(n: int = 24, num_classes: int = 3) -> tuple[DataLoader, DataLoader]:
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(n, 3, 16, 16, generator=generator)
    y = torch.randint(0, num_classes, (n,), generator=generator)
    data = TensorDataset(x, y)
    return DataLoader(data, batch_size=8), DataLoader(data, batch_size=8)


def test_calibration_gamma_reads_the_gap_the_classifier_logs(tmp_path):
    from lightning_focal.models.classifier import TimmClassifier

    model = TimmClassifier("test_resnet", num_classes=3)  # γ=2 by default
    cb = CalibrationGamma(step=0.5, tolerance=0.0)
    trainer = fast_trainer(tmp_path, max_epochs=2, callbacks=[cb])
    train, val = loaders()
    trainer.fit(model, train, val)
    assert {"val/ece", "val/calibration_gap"} <= set(trainer.callback_metrics)
    assert len(cb.gamma_history) == 2
    assert float(model.focal_loss.gamma) == pytest.approx(cb.gamma_history[-1])


def test_test_summary_holds_the_reliability_bins_of_all_test_predictions(tmp_path):
    from test_metrics import assert_same_bins, reference_bins

    from lightning_focal.models.classifier import TimmClassifier

    model = TimmClassifier("test_resnet", num_classes=3)
    _, test = loaders()
    fast_trainer(tmp_path).test(model, test)
    assert not hasattr(model, "_test_conf")  # no hand-gathered lists
    model.eval()
    with torch.no_grad():
        probs = torch.cat([model(x).softmax(1) for x, _ in test])
    target = torch.cat([y for _, y in test])
    expected = reference_bins(probs.max(1).values, probs.argmax(1) == target)
    assert_same_bins(model.test_summary["reliability"], expected)
    assert model.test_reliability.count.sum() == 0  # reset for the next test run
