from __future__ import annotations

import importlib.util
import re
from pathlib import Path

import lightning as L

from lightning_focal import SoftmaxFocalLoss

EXAMPLE = Path(__file__).parents[2] / "examples" / "existing_project.py"


def load_example():
    spec = importlib.util.spec_from_file_location("existing_project", EXAMPLE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_focal_version_differs_from_plain_in_three_lines():
    source = EXAMPLE.read_text()
    marked = re.findall(r"  # \((\d)\)", source)
    assert marked == ["1", "2", "3"]


def test_example_runs_and_reports(capsys):
    module = load_example()
    results = module.main(["--max-epochs", "1"])
    assert set(results) == {"plain", "focal"}
    assert all(0.0 <= v <= 1.0 for v in results.values())
    assert "balanced accuracy" in capsys.readouterr().out
    model = module.FocalClassifier()
    assert isinstance(model, L.LightningModule)
    assert isinstance(model.focal_loss, SoftmaxFocalLoss) and float(model.focal_loss.gamma) == 2.0
