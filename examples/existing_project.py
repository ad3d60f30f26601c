"""Adding focal loss to an existing LightningModule: before and after.

``PlainClassifier`` is an ordinary Lightning classifier. ``FocalClassifier`` is the same
model with the three changed lines marked ``# (1)``, ``# (2)`` and ``# (3)``; the
callbacks go to the Trainer, as any other callback does. Runs in seconds on a CPU:

    python examples/existing_project.py --max-epochs 5
"""

from __future__ import annotations

import argparse

import lightning as L
import torch
import torch.nn.functional as F
from torch import nn
from torchmetrics.classification import MulticlassRecall

from lightning_focal import FocalLossMixin, SoftmaxFocalLoss
from lightning_focal.callbacks import ClassBalancedAlpha, GammaWarmup
from lightning_focal.demos import ImbalancedBlobsDataModule
from lightning_focal.schedules import LinearRamp


class PlainClassifier(L.LightningModule):
    """Before: cross-entropy."""

    def __init__(self, num_features: int = 8, num_classes: int = 3, lr: float = 0.05) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.net = nn.Sequential(nn.Linear(num_features, 32), nn.ReLU(), nn.Linear(32, num_classes))
        self.val_recall = MulticlassRecall(num_classes=num_classes, average="macro")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def compute_loss(self, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(logits, y)

    def training_step(self, batch, batch_idx):
        x, y = batch
        loss = self.compute_loss(self(x), y)
        self.log("train/loss", loss)
        return loss

    def validation_step(self, batch, batch_idx):
        x, y = batch
        self.val_recall.update(self(x), y)
        self.log("val/balanced_acc", self.val_recall, on_epoch=True)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=self.hparams.lr)


class FocalClassifier(FocalLossMixin, PlainClassifier):  # (1) the mixin as first base
    """After: focal loss with class-balanced α and a γ warmup."""

    def __init__(self, num_features: int = 8, num_classes: int = 3, lr: float = 0.05) -> None:
        super().__init__(num_features, num_classes, lr)
        self.configure_focal_loss(SoftmaxFocalLoss(gamma=2.0))  # (2)

    def compute_loss(self, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return self.focal_loss(logits, y)  # (3) replaces F.cross_entropy(logits, y)


def train(model: L.LightningModule, max_epochs: int, callbacks: list) -> float:
    L.seed_everything(0, workers=True)
    trainer = L.Trainer(
        max_epochs=max_epochs,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=callbacks,
    )
    trainer.fit(
        model, ImbalancedBlobsDataModule(counts=(400, 40, 8), num_features=8, batch_size=32)
    )
    return float(trainer.callback_metrics["val/balanced_acc"])


def main(argv: list[str] | None = None) -> dict[str, float]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--max-epochs", type=int, default=5)
    args = parser.parse_args(argv)
    plain = train(PlainClassifier(), args.max_epochs, [])
    focal = train(
        FocalClassifier(),
        args.max_epochs,
        [
            GammaWarmup(LinearRamp(start=0.0, end=2.0, fraction=0.3)),
            ClassBalancedAlpha(beta=0.999),
        ],
    )
    print(
        f"balanced accuracy  cross-entropy: {plain:.3f}  focal + class-balanced alpha: {focal:.3f}"
    )
    return {"plain": plain, "focal": focal}


if __name__ == "__main__":
    main()
