"""``ClassBalancedAlpha``: per-class α of every focal loss from the training class counts."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.fabric.utilities.exceptions import MisconfigurationException
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.utilities import rank_zero_info
from torch import Tensor
from typing_extensions import override

from ..data.class_counts import counts_from_targets
from ..losses import FocalLossBase
from ..losses.class_weights import METHODS, class_balanced_weights
from ._common import require_focal_losses

__all__ = ["ClassBalancedAlpha"]


def _num_classes(
    pl_module: pl.LightningModule, losses: Iterable[FocalLossBase], given: int | None
) -> int:
    if given is not None:
        return given
    for loss in losses:
        if loss.num_classes is not None:
            return loss.num_classes
        for buf in (loss.alpha, loss.gamma):
            if buf is not None and buf.dim() == 1:
                return buf.numel()
    for source in (pl_module, getattr(pl_module.trainer, "datamodule", None)):
        value = getattr(source, "num_classes", None)
        if isinstance(value, int):
            return value
    raise MisconfigurationException(
        "ClassBalancedAlpha cannot tell the number of classes: pass num_classes=, or give the "
        "the loss num_classes=, or give the module or datamodule a `num_classes` attribute"
    )


class ClassBalancedAlpha(Callback):
    """Set per-class α of every focal loss from the class counts of the training data.

    Counts come, in this order, from ``trainer.datamodule.class_counts()`` (the documented
    cheap hook, see :class:`lightning_focal.data.ClassCountsProvider`), from the training
    dataset's ``class_counts()`` or ``targets``, else from one pass over the training
    dataloader, whose per-rank counts are summed across DDP ranks. Weights follow
    :func:`~lightning_focal.losses.class_balanced_weights` (they sum to C); softmax losses
    take them as α, sigmoid losses as α_c = w_c/(1+w_c). The counts and weights are kept in
    the checkpoint, so a resumed run does not count again, and logged as ``focal/alpha/<c>``.

    Args:
        method: ``"effective_number"`` (Cui et al. 2019), ``"inverse"`` or ``"inverse_sqrt"``.
        beta: β of the effective number, in [0, 1).
        num_classes: number of classes, when the losses and modules cannot tell.
        target_index: where the target sits in a batch for the counting pass (index or key).
        ignore_index: class index skipped while counting.

    Example:
        >>> from lightning_focal.callbacks import ClassBalancedAlpha
        >>> ClassBalancedAlpha(method="effective_number", beta=0.999).method
        'effective_number'
    """

    def __init__(
        self,
        method: str = "effective_number",
        beta: float = 0.999,
        num_classes: int | None = None,
        target_index: int | str = 1,
        ignore_index: int = -100,
    ) -> None:
        if method not in METHODS:
            raise ValueError(f"unknown method {method!r}; expected one of {METHODS}")
        if not 0.0 <= beta < 1.0:
            raise ValueError(f"beta must be in [0, 1), got {beta}")
        self.method = method
        self.beta = beta
        self.num_classes = num_classes
        self.target_index = target_index
        self.ignore_index = ignore_index
        self.counts: list[int] | None = None
        self.weights: list[float] | None = None
        self.source: str | None = None

    # -- counting -----------------------------------------------------------------------

    def _cheap_counts(self, trainer: pl.Trainer) -> tuple[Tensor, str] | None:
        datamodule = getattr(trainer, "datamodule", None)
        if datamodule is not None and callable(getattr(datamodule, "class_counts", None)):
            return torch.as_tensor(datamodule.class_counts()), "datamodule.class_counts()"
        loader = trainer.train_dataloader
        dataset = getattr(loader, "dataset", None)
        if dataset is not None and callable(getattr(dataset, "class_counts", None)):
            return torch.as_tensor(dataset.class_counts()), "dataset.class_counts()"
        targets = getattr(dataset, "targets", None)
        if targets is not None:
            return torch.as_tensor(targets), "dataset.targets"
        return None

    def _pass_counts(self, trainer: pl.Trainer, num_classes: int) -> Tensor:
        loader = trainer.train_dataloader
        if loader is None:
            raise MisconfigurationException(
                "ClassBalancedAlpha: the trainer has no training dataloader"
            )
        counts = torch.zeros(num_classes, dtype=torch.int64)
        for batch in loader:
            try:
                target = batch[self.target_index]
            except (KeyError, IndexError, TypeError) as err:
                raise MisconfigurationException(
                    f"ClassBalancedAlpha: cannot read the target at target_index="
                    f"{self.target_index!r} of a training batch ({type(batch).__name__})"
                ) from err
            counts += counts_from_targets(target, num_classes, ignore_index=self.ignore_index)
        return counts

    def compute_counts(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, num_classes: int
    ) -> Tensor:
        """Global per-class training counts (the same on every rank)."""
        cheap = self._cheap_counts(trainer)
        if cheap is not None:
            values, self.source = cheap
            if (
                values.dim() == 1
                and values.numel() == num_classes
                and not values.is_floating_point()
            ):
                return values.long()
            return counts_from_targets(values, num_classes, ignore_index=self.ignore_index)
        self.source = "one pass over the training dataloader"
        local = self._pass_counts(trainer, num_classes).to(pl_module.device)
        total = trainer.strategy.reduce(local, reduce_op="sum")
        return total.cpu().long()

    # -- hooks ---------------------------------------------------------------------------

    @override
    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        losses = require_focal_losses(pl_module, "ClassBalancedAlpha")
        if self.weights is None:
            num_classes = _num_classes(pl_module, losses.values(), self.num_classes)
            counts = self.compute_counts(trainer, pl_module, num_classes)
            if counts.numel() != num_classes:
                raise MisconfigurationException(
                    f"ClassBalancedAlpha: class counts have {counts.numel()} entries, expected "
                    f"{num_classes} classes"
                )
            weights = class_balanced_weights(counts, self.method, self.beta)
            self.counts, self.weights = counts.tolist(), weights.tolist()
            rank_zero_info(
                f"ClassBalancedAlpha ({self.method}, from {self.source}): counts {self.counts} -> "
                f"weights {[round(w, 4) for w in self.weights]}"
            )
        weights = torch.tensor(self.weights, dtype=torch.float32)
        for loss in losses.values():
            loss.alpha = loss.alpha_from_class_weights(weights)
        self._log(trainer, pl_module, weights)

    def _log(self, trainer: pl.Trainer, pl_module: pl.LightningModule, weights: Tensor) -> None:
        for c, value in enumerate(weights.tolist()):
            pl_module.log(f"focal/alpha/{c}", value, on_step=False, on_epoch=True, batch_size=1)
        if trainer.is_global_zero:
            for logger in trainer.loggers:
                if type(logger).__name__ == "WandbLogger":
                    import wandb

                    table = wandb.Table(
                        data=[
                            [str(c), w, n]
                            for c, (w, n) in enumerate(zip(weights.tolist(), self.counts or []))
                        ],
                        columns=["class", "alpha", "count"],
                    )
                    logger.experiment.log(
                        {
                            "focal/alpha": wandb.plot.bar(
                                table, "class", "alpha", title="class-balanced α"
                            )
                        }
                    )

    @override
    def state_dict(self) -> dict[str, Any]:
        return {
            "method": self.method,
            "beta": self.beta,
            "counts": self.counts,
            "weights": self.weights,
            "source": self.source,
        }

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.counts = state_dict.get("counts")
        self.weights = state_dict.get("weights")
        self.source = state_dict.get("source")
