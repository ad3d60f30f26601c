"""Lightning callbacks that steer focal loss (γ schedules, class-balanced α, bias prior, calibration) and draw it."""

from __future__ import annotations

from .calibration_gamma import CalibrationGamma
from .class_balanced_alpha import ClassBalancedAlpha
from .distributed_check import DistributedConsistencyCheck
from .focal_bias_init import FocalBiasInit
from .focal_plots import FocalPlots
from .gamma_warmup import GammaWarmup
from .loss_cdf import LossCDF
from .run_length_check import RunLengthCheck

__all__ = [
    "CalibrationGamma",
    "ClassBalancedAlpha",
    "DistributedConsistencyCheck",
    "FocalBiasInit",
    "FocalPlots",
    "GammaWarmup",
    "LossCDF",
    "RunLengthCheck",
]
