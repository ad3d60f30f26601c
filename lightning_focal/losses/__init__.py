"""Focal losses in pure PyTorch: fused, exact, drop-in for torch and torchvision.

Nothing here imports Lightning.
"""

from __future__ import annotations

from ._backend import get_backend, set_backend
from .class_weights import class_balanced_weights
from .dense_focal import DenseFocalLoss
from .focal_loss import FocalLoss
from .gamma_policy import SampleDependentGamma, flsd53
from .sigmoid_focal import sigmoid_focal_loss
from .softmax_focal import softmax_focal_loss

__all__ = [
    "DenseFocalLoss",
    "FocalLoss",
    "SampleDependentGamma",
    "class_balanced_weights",
    "flsd53",
    "get_backend",
    "set_backend",
    "sigmoid_focal_loss",
    "softmax_focal_loss",
]
