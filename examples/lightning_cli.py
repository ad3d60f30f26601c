"""Focal loss in your own LightningCLI project: model, data and callbacks from YAML.

``LitClassifier`` is an ordinary one-vs-rest (sigmoid) classifier with the mixin's three
lines; the focal callbacks and the checkpointing sit under ``trainer.callbacks`` in
``examples/lightning_cli.yaml``. Every ``__init__`` argument is a command-line option, and
nothing else goes into the hyperparameters, so ``--ckpt_path`` works with every subcommand.
Runs in seconds on a CPU::

    python examples/lightning_cli.py fit --config examples/lightning_cli.yaml
    python examples/lightning_cli.py fit --config examples/lightning_cli.yaml \\
        --ckpt_path lightning_logs/version_0/checkpoints/last.ckpt --trainer.max_steps 80
    python examples/lightning_cli.py validate --config examples/lightning_cli.yaml \\
        --ckpt_path lightning_logs/version_0/checkpoints/last.ckpt
    python examples/lightning_cli.py test --config examples/lightning_cli.yaml \\
        --ckpt_path lightning_logs/version_0/checkpoints/last.ckpt
    python examples/lightning_cli.py fit --config examples/lightning_cli.yaml --print_config
"""

from __future__ import annotations

from collections.abc import Sequence

import lightning as L
import torch
import torch.nn.functional as F
from lightning.pytorch.cli import LightningCLI
from torch import Tensor, nn
from torch.utils.data import DataLoader, TensorDataset

from lightning_focal import FocalLossMixin, SigmoidFocalLoss


class LitClassifier(FocalLossMixin, L.LightningModule):
    """An MLP with one sigmoid output per class, trained with focal loss."""

    def __init__(
        self,
        num_features: int = 8,
        num_classes: int = 3,
        hidden: int = 32,
        gamma: float = 2.0,
        lr: float = 0.05,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.net = nn.Sequential(
            nn.Linear(num_features, hidden), nn.ReLU(), nn.Linear(hidden, num_classes)
        )
        self.configure_focal_loss(
            SigmoidFocalLoss(gamma=gamma, num_classes=num_classes), bias_layer="net.2"
        )  # bias_layer: the layer whose bias FocalBiasInit sets

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)

    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        x, y = batch
        loss = self.focal_loss(self(x), F.one_hot(y, self.hparams.num_classes).float())
        self.log("train/loss", loss)
        return loss

    def _evaluate(self, batch: tuple[Tensor, Tensor], stage: str) -> None:
        x, y = batch
        logits = self(x)
        loss = self.focal_loss(logits, F.one_hot(y, self.hparams.num_classes).float())
        self.log(f"{stage}/loss", loss)
        self.log(f"{stage}/acc", (logits.argmax(1) == y).float().mean())

    def validation_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        self._evaluate(batch, "val")

    def test_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        self._evaluate(batch, "test")

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=self.hparams.lr)


class BlobsDataModule(L.LightningDataModule):
    """Gaussian blobs: ``counts[c]`` training samples of class c, balanced val and test sets."""

    def __init__(
        self,
        counts: Sequence[int] = (96, 24, 8),
        num_features: int = 8,
        eval_per_class: int = 16,
        batch_size: int = 16,
        seed: int = 0,
    ) -> None:
        super().__init__()
        self.counts = list(counts)
        self.num_features = num_features
        self.eval_per_class = eval_per_class
        self.batch_size = batch_size
        self.seed = seed

    def setup(self, stage: str) -> None:
        generator = torch.Generator().manual_seed(self.seed)
        centers = 2.0 * torch.randn(len(self.counts), self.num_features, generator=generator)

        def blobs(counts: Sequence[int]) -> TensorDataset:
            y = torch.repeat_interleave(torch.arange(len(counts)), torch.tensor(counts))
            x = centers[y] + torch.randn(len(y), self.num_features, generator=generator)
            return TensorDataset(x, y)

        self.train_set = blobs(self.counts)
        self.val_set = blobs([self.eval_per_class] * len(self.counts))
        self.test_set = blobs([self.eval_per_class] * len(self.counts))

    def train_dataloader(self) -> DataLoader:
        return DataLoader(self.train_set, batch_size=self.batch_size, shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return DataLoader(self.val_set, batch_size=self.batch_size)

    def test_dataloader(self) -> DataLoader:
        return DataLoader(self.test_set, batch_size=self.batch_size)


def main(args: list[str] | None = None) -> LightningCLI:
    return LightningCLI(
        LitClassifier, BlobsDataModule, save_config_kwargs={"overwrite": True}, args=args
    )


if __name__ == "__main__":
    main()
