"""Tiny models and data for examples, doctests and tests (like ``lightning.pytorch.demos``)."""

from __future__ import annotations

from collections.abc import Sequence

import lightning.pytorch as pl
import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, TensorDataset

from .losses import SigmoidFocalLoss, SoftmaxFocalLoss
from .mixin import FocalLossMixin

__all__ = ["BoringFocalClassifier", "ImbalancedBlobsDataModule"]


class ImbalancedBlobsDataModule(pl.LightningDataModule):
    """Gaussian blobs in ``num_features`` dimensions with long-tailed class counts.

    ``counts[c]`` training samples of class c; a balanced validation set of
    ``val_per_class`` per class. Implements the ``class_counts()`` hook.

    Example:
        >>> dm = ImbalancedBlobsDataModule(counts=(40, 8, 2))
        >>> dm.setup("fit"); dm.class_counts()
        tensor([40,  8,  2])
    """

    def __init__(
        self,
        counts: Sequence[int] = (96, 24, 8),
        num_features: int = 8,
        val_per_class: int = 16,
        batch_size: int = 16,
        seed: int = 0,
        expose_counts: bool = True,
    ) -> None:
        super().__init__()
        self.counts = [int(c) for c in counts]
        self.num_features = num_features
        self.val_per_class = val_per_class
        self.batch_size = batch_size
        self.seed = seed
        self.num_classes = len(self.counts)
        if not expose_counts:
            self.class_counts = None  # type: ignore[assignment]

    def _make(self, counts: Sequence[int], generator: torch.Generator) -> TensorDataset:
        centers = torch.randn(
            self.num_classes, self.num_features, generator=torch.Generator().manual_seed(self.seed)
        )
        xs, ys = [], []
        for c, n in enumerate(counts):
            xs.append(centers[c] * 2.0 + torch.randn(n, self.num_features, generator=generator))
            ys.append(torch.full((n,), c, dtype=torch.long))
        return TensorDataset(torch.cat(xs), torch.cat(ys))

    def setup(self, stage: str | None = None) -> None:
        generator = torch.Generator().manual_seed(self.seed + 1)
        self.train_set = self._make(self.counts, generator)
        self.val_set = self._make([self.val_per_class] * self.num_classes, generator)

    def class_counts(self) -> Tensor:
        """Training samples per class."""
        return torch.tensor(self.counts, dtype=torch.long)

    def train_dataloader(self) -> DataLoader:
        generator = torch.Generator().manual_seed(self.seed + 2)
        return DataLoader(
            self.train_set, batch_size=self.batch_size, shuffle=True, generator=generator
        )

    def val_dataloader(self) -> DataLoader:
        return DataLoader(self.val_set, batch_size=self.batch_size)


class BoringFocalClassifier(FocalLossMixin, pl.LightningModule):
    """A small MLP classifier trained with focal loss: the three mixin lines in action.

    Example:
        >>> model = BoringFocalClassifier(num_classes=3, gamma=1.0)
        >>> float(model.focal_loss.gamma), type(model.focal_loss).__name__
        (1.0, 'SoftmaxFocalLoss')
    """

    def __init__(
        self,
        num_features: int = 8,
        num_classes: int = 3,
        gamma: float = 2.0,
        sigmoid: bool = False,
        lr: float = 0.05,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.net = nn.Sequential(nn.Linear(num_features, 16), nn.ReLU(), nn.Linear(16, num_classes))
        loss_class = SigmoidFocalLoss if sigmoid else SoftmaxFocalLoss
        self.configure_focal_loss(
            loss_class(gamma=gamma, num_classes=num_classes), bias_layer="net.2"
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)

    def _targets(self, logits: Tensor, y: Tensor) -> Tensor:
        return self.focal_loss.encode_target(y, logits.shape[-1])

    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        x, y = batch
        logits = self(x)
        loss = self.focal_loss(logits, self._targets(logits, y))
        self.log("train/loss", loss)
        return loss

    def validation_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        x, y = batch
        logits = self(x)
        self.log("val/loss", self.focal_loss(logits, self._targets(logits, y)), sync_dist=True)
        self.log("val/acc", (logits.argmax(1) == y).float().mean(), sync_dist=True)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=self.hparams.lr)
