"""lightning_focal: exact, fused focal losses as a first-class part of PyTorch Lightning.

The loss core (:mod:`lightning_focal.losses`) is pure PyTorch; the Lightning glue is
imported lazily, and nothing here imports timm, wandb or hydra.

Example:
    >>> import torch
    >>> import lightning_focal as lf
    >>> lf.softmax_focal_loss(torch.zeros(2, 3), torch.tensor([0, 1]), gamma=2.0)
    tensor(0.4883)
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

from .losses import (
    FLSD53,
    DenseFocalLoss,
    FocalLossBase,
    SampleDependentGamma,
    SigmoidFocalLoss,
    SoftmaxFocalLoss,
    adjust_logits,
    class_balanced_weights,
    sigmoid_focal_loss,
    softmax_focal_loss,
)

__version__ = "0.1.0"

_LAZY = {
    "FocalLossMixin": "lightning_focal.mixin",
    **dict.fromkeys(
        (
            "CalibrationGamma",
            "ClassBalancedAlpha",
            "DistributedConsistencyCheck",
            "FocalBiasInit",
            "FocalPlots",
            "GammaWarmup",
            "LossCDF",
            "RunLengthCheck",
        ),
        "lightning_focal.callbacks",
    ),
    **dict.fromkeys(
        (
            "ConstantGamma",
            "CosineRamp",
            "ExponentialRamp",
            "GammaSchedule",
            "LinearRamp",
            "MultiStepGamma",
            "SequentialGamma",
        ),
        "lightning_focal.schedules",
    ),
}
"""The Lightning side, imported on first use so that the loss core alone stays light."""

__all__ = [
    "FLSD53",
    "CalibrationGamma",
    "ClassBalancedAlpha",
    "ConstantGamma",
    "CosineRamp",
    "DenseFocalLoss",
    "DistributedConsistencyCheck",
    "ExponentialRamp",
    "FocalBiasInit",
    "FocalLossBase",
    "FocalLossMixin",
    "FocalPlots",
    "GammaSchedule",
    "GammaWarmup",
    "LinearRamp",
    "LossCDF",
    "MultiStepGamma",
    "RunLengthCheck",
    "SampleDependentGamma",
    "SequentialGamma",
    "SigmoidFocalLoss",
    "SoftmaxFocalLoss",
    "__version__",
    "adjust_logits",
    "class_balanced_weights",
    "sigmoid_focal_loss",
    "softmax_focal_loss",
]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'lightning_focal' has no attribute {name!r}")


def __dir__() -> list[str]:
    return __all__
