"""DetectionSamples draws at validations, counted as validations (not epochs), in the app too."""

from __future__ import annotations

import csv
import os
import subprocess
import sys
from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch
from _trainer_utils import fast_trainer
from torch.utils.data import DataLoader

from lightning_focal.plots_detection import DetectionSamples

REPO = Path(__file__).resolve().parents[1]


class FixedBoxes(pl.LightningModule):
    """Predicts one box per image; DetectionSamples draws what validation_step returns."""

    def __init__(self) -> None:
        super().__init__()
        self.weight = torch.nn.Parameter(torch.zeros(1))

    def training_step(self, batch, batch_idx):
        return (self.weight - 1.0).pow(2).sum()

    def validation_step(self, batch, batch_idx):
        images, _ = batch
        box = {
            "boxes": torch.tensor([[4.0, 4.0, 20.0, 20.0]]),
            "labels": torch.tensor([0]),
            "scores": torch.tensor([0.9]),
        }
        return [box] * len(images)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def loader(n: int = 2) -> DataLoader:
    target = {"boxes": torch.tensor([[2.0, 2.0, 18.0, 18.0]]), "labels": torch.tensor([1])}
    items = [(torch.rand(3, 32, 32), target) for _ in range(n)]
    return DataLoader(
        items,
        batch_size=2,
        collate_fn=lambda b: (torch.stack([i for i, _ in b]), [t for _, t in b]),
    )


def drawn_epochs(samples: DetectionSamples) -> list[int]:
    return sorted({int(path.name[len("epoch") :].split("-")[0]) for path in samples.saved})


def test_counts_validations_not_epochs(tmp_path):
    # validation on epochs 1, 3, 5, 7; every second validation is epochs 3 and 7 (counting
    # epochs instead drew on all four, and with every_n=5 on none of them)
    samples = DetectionSamples(num_images=1, every_n_validations=2, output_dir=tmp_path / "d")
    trainer = fast_trainer(
        tmp_path,
        max_epochs=8,
        check_val_every_n_epoch=2,
        num_sanity_val_steps=1,
        callbacks=[samples],
    )
    trainer.fit(FixedBoxes(), loader(), loader())
    assert samples.validations == 4
    assert drawn_epochs(samples) == [3, 7]
    assert samples.state_dict() == {"validations": 4}

    each = DetectionSamples(num_images=2, output_dir=tmp_path / "each")
    trainer = fast_trainer(
        tmp_path, max_epochs=1, limit_train_batches=4, val_check_interval=2, callbacks=[each]
    )
    trainer.fit(FixedBoxes(), loader(8), loader())
    # two validations inside epoch 0, two pictures each
    assert sorted(p.name for p in each.saved) == [
        "epoch000-step000002-0.png",
        "epoch000-step000002-1.png",
        "epoch000-step000004-0.png",
        "epoch000-step000004-1.png",
    ]
    with pytest.raises(ValueError, match="every_n_validations must be an integer >= 1"):
        DetectionSamples(every_n_validations=0)


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_detection_app_draws_at_every_validation(tmp_path):
    """The shipped `experiment=detection` validates every 2nd epoch: each validation draws."""
    env = {
        **os.environ,
        "LIGHTNING_FOCAL_ROOT": str(tmp_path),
        "OMP_NUM_THREADS": "1",
        "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
    }
    overrides = [
        "experiment=detection",
        "debug=fast",
        "trainer.check_val_every_n_epoch=2",  # what experiment=detection sets; debug=fast sets 1
        "trainer.max_steps=12",  # 2 batches an epoch: validations after epochs 1, 3 and 5
        "data.num_train=32",
        "test=false",
        "threads=1",
    ]
    proc = subprocess.run(
        [sys.executable, "-m", "lightning_focal.train", *overrides],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=540,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    (run,) = (tmp_path / "logs" / "detection" / "runs").iterdir()
    with open(run / "csv" / "version_0" / "metrics.csv") as metrics:
        rows = list(csv.DictReader(metrics))
    validated = sorted({int(r["epoch"]) for r in rows if r.get("val/map")})
    assert validated == [1, 3, 5]
    pictures = sorted(p.name for p in (run / "detections").glob("*.png"))
    by_epoch = {e: [p for p in pictures if p.startswith(f"epoch{e:03d}-")] for e in validated}
    assert all(len(names) == 4 for names in by_epoch.values()), pictures  # num_images: 4
    assert len(pictures) == 12
