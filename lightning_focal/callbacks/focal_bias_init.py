"""``FocalBiasInit``: RetinaNet's prior initialisation of the classification bias."""

from __future__ import annotations

import math
from collections.abc import Sequence

import lightning.pytorch as pl
import torch
from lightning.fabric.utilities.exceptions import MisconfigurationException
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn
from torch import nn
from typing_extensions import override

from ..mixin import find_focal_bias_layers, find_focal_losses

__all__ = ["FocalBiasInit", "prior_bias"]


def prior_bias(prior: float) -> float:
    """The bias that makes a sigmoid output ``prior``: b = -log((1-π)/π).

    Example:
        >>> round(prior_bias(0.01), 4)
        -4.5951
    """
    if not 0.0 < prior < 1.0:
        raise ValueError(f"prior must be in (0, 1), got {prior}")
    return -math.log((1.0 - prior) / prior)


class FocalBiasInit(Callback):
    """Set the bias of the final classification layer(s) to -log((1-π)/π) on a fresh fit.

    At the start of training every anchor then predicts "background" with p ≈ π, so the
    flood of easy negatives does not blow up the first steps (Lin et al., 2017). It acts in
    ``on_fit_start`` and does nothing when the fit resumes from a checkpoint
    (``trainer.ckpt_path`` set). The layers come from ``layers`` (dotted names), from the
    module's :meth:`~lightning_focal.FocalLossMixin.focal_bias_layers`, or else from the
    submodules that declare them (the heads of a detector given to
    :func:`~lightning_focal.detection.with_focal_loss`).

    Args:
        prior: π in (0, 1).
        layers: optional dotted module names; overrides what the module says.

    Example:
        >>> FocalBiasInit(prior=0.01).bias
        -4.59511985013459
    """

    def __init__(self, prior: float = 0.01, layers: Sequence[str] | None = None) -> None:
        self.bias = prior_bias(prior)
        self.prior = prior
        self.layers = list(layers) if layers is not None else None

    def resolve_layers(self, pl_module: pl.LightningModule) -> list[nn.Module]:
        """The layers whose bias is set; a clear error when there are none."""
        if self.layers is not None:
            modules = [pl_module.get_submodule(name) for name in self.layers]
        elif callable(getattr(pl_module, "focal_bias_layers", None)):
            modules = list(pl_module.focal_bias_layers())
        else:
            modules = find_focal_bias_layers(pl_module)
        if not modules:
            raise MisconfigurationException(
                f"FocalBiasInit: {type(pl_module).__name__} names no classification layer; pass "
                "bias_layer= to configure_focal_loss(...), override focal_bias_layers(), or give "
                "FocalBiasInit(layers=[...])"
            )
        for module in modules:
            if getattr(module, "bias", None) is None:
                raise MisconfigurationException(
                    f"FocalBiasInit: layer {type(module).__name__} has no bias to initialise"
                )
        return modules

    @override
    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.ckpt_path is not None:
            rank_zero_info("FocalBiasInit: resuming from a checkpoint, bias left as restored")
            return
        modules = self.resolve_layers(pl_module)
        if any(not loss.takes_prior_bias for loss in find_focal_losses(pl_module).values()):
            rank_zero_warn(
                "FocalBiasInit: a constant bias does not change a softmax; the prior init is "
                "meant for sigmoid (detection / multi-label) heads"
            )
        with torch.no_grad():
            for module in modules:
                module.bias.fill_(self.bias)
        rank_zero_info(f"FocalBiasInit: set the bias of {len(modules)} layer(s) to {self.bias:.4f}")
