"""Helpers shared by the focal-loss callbacks."""

from __future__ import annotations

import lightning.pytorch as pl
from lightning.fabric.utilities.exceptions import MisconfigurationException

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
