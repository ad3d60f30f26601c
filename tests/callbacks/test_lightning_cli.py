"""The callbacks and schedules built from LightningCLI YAML (plain typed constructor args)."""

from __future__ import annotations

import pytest
import torch
from lightning.pytorch.cli import LightningCLI

pytest.importorskip("jsonargparse")

CONFIG = """
seed_everything: 0
model:
  class_path: lightning_focal.demos.BoringFocalClassifier
  init_args:
    gamma: 2.0
data:
  class_path: lightning_focal.demos.ImbalancedBlobsDataModule
  init_args:
    counts: [96, 24, 8]
trainer:
  accelerator: cpu
  max_steps: 4
  logger: false
  enable_checkpointing: false
  enable_progress_bar: false
  num_sanity_val_steps: 0
  default_root_dir: {root}
  callbacks:
    - class_path: lightning_focal.callbacks.GammaWarmup
      init_args:
        schedule:
          class_path: lightning_focal.schedules.LinearRamp
          init_args: {{start: 0.0, end: 2.0, steps: 8}}
    - class_path: lightning_focal.callbacks.ClassBalancedAlpha
      init_args: {{method: inverse}}
"""


def test_yaml_configured_fit(tmp_path):
    path = tmp_path / "config.yaml"
    path.write_text(CONFIG.format(root=tmp_path))
    cli = LightningCLI(args=["fit", "--config", str(path)], save_config_kwargs={"overwrite": True})
    loss = cli.model.focal_loss
    assert float(loss.gamma) == pytest.approx(0.75)  # γ at step 3 of an 8-step warmup
    w = torch.tensor([1 / 96, 1 / 24, 1 / 8])
    assert loss.alpha.tolist() == pytest.approx((w * 3 / w.sum()).tolist(), rel=1e-6)
    names = [type(cb).__name__ for cb in cli.trainer.callbacks]
    assert "GammaWarmup" in names and "ClassBalancedAlpha" in names
