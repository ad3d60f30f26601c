"""Focal losses in pure PyTorch: fused, exact, drop-in for torch and torchvision.

Nothing here imports Lightning.
"""

from __future__ import annotations

from ._backend import get_backend, set_backend
from ._base import FocalLossBase
from .class_weights import class_balanced_weights
from .dense_focal import DenseFocalLoss
from .gamma_policy import FLSD53, SampleDependentGamma
from .sigmoid_focal import SigmoidFocalLoss, sigmoid_focal_loss
from .softmax_focal import SoftmaxFocalLoss, adjust_logits, softmax_focal_loss

__all__ = [
    "FLSD53",
    "DenseFocalLoss",
    "FocalLossBase",
    "SampleDependentGamma",
    "SigmoidFocalLoss",
    "SoftmaxFocalLoss",
    "adjust_logits",
    "class_balanced_weights",
    "get_backend",
    "set_backend",
    "sigmoid_focal_loss",
    "softmax_focal_loss",
]
