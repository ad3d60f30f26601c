"""Helpers shared by the focal-loss callbacks."""

from __future__ import annotations

import lightning.pytorch as pl
from lightning.fabric.utilities.exceptions import MisconfigurationException

from ..losses import FocalLoss
from ..mixin import find_focal_losses


def require_focal_losses(pl_module: pl.LightningModule, owner: str) -> dict[str, FocalLoss]:
    losses = find_focal_losses(pl_module)
    if not losses:
        raise MisconfigurationException(
            f"{owner} found no FocalLoss in {type(pl_module).__name__}: add one with "
            "FocalLossMixin.configure_focal_loss(...) or as a submodule (lightning_focal.FocalLoss)"
        )
    return losses


def mixin_logs_gamma(pl_module: pl.LightningModule) -> bool:
    """True when the module's FocalLossMixin diagnostics already log ``focal/gamma``."""
    return bool(getattr(pl_module, "_focal_logs_gamma", False))
