"""Helpers shared by the focal-loss callbacks."""

from __future__ import annotations

from typing import Any

import lightning.pytorch as pl
from lightning.fabric.utilities.exceptions import MisconfigurationException
from lightning.pytorch.callbacks import Callback
from typing_extensions import override

from ..losses import FocalLossBase
from ..mixin import find_focal_losses


def require_focal_losses(pl_module: pl.LightningModule, owner: str) -> dict[str, FocalLossBase]:
    losses = find_focal_losses(pl_module)
    if not losses:
        raise MisconfigurationException(
            f"{owner} found no focal loss in {type(pl_module).__name__}: add one as a submodule "
            "(lightning_focal.SoftmaxFocalLoss / SigmoidFocalLoss / DenseFocalLoss), e.g. with "
            "FocalLossMixin.configure_focal_loss(...)"
        )
    return losses


class ValidationCounter(Callback):
    """Base of the callbacks that act at every n-th validation (the sanity check not counted).

    It counts validations, not epochs, so it meets whatever ``check_val_every_n_epoch`` or
    ``val_check_interval`` a run uses; the count is kept in the checkpoint, so a resumed run
    acts at the same validations.

    Example:
        >>> counter = ValidationCounter(every_n_validations=2)
        >>> counter.load_state_dict({"validations": 4}); counter.state_dict()
        {'validations': 4}
    """

    def __init__(self, every_n_validations: int = 1) -> None:
        if int(every_n_validations) != every_n_validations or every_n_validations < 1:
            raise ValueError(
                f"every_n_validations must be an integer >= 1, got {every_n_validations}"
            )
        self.every_n_validations = int(every_n_validations)
        self.validations = 0  # validations seen, the sanity check not counted

    def _due(self, trainer: pl.Trainer) -> bool:
        return (
            not trainer.sanity_checking
            and self.validations > 0
            and self.validations % self.every_n_validations == 0
        )

    @override
    def state_dict(self) -> dict[str, Any]:
        return {"validations": self.validations}

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.validations = int(state_dict.get("validations", 0))

    @override
    def on_validation_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not trainer.sanity_checking:
            self.validations += 1
