"""Lightning models: timm classifiers and dense detectors (RetinaNet, FCOS) trained with focal loss.

``DenseDetector`` trains a torchvision detector; ``retinanet(...)`` and ``fcos(...)`` build
the app's, on a timm FPN backbone. The names load on first use, so
``import lightning_focal.models`` stays cheap; using one imports timm and torchvision (the
``train`` extra).

Example:
    >>> from lightning_focal.models import DenseDetector, retinanet
    >>> DenseDetector.__name__, retinanet.__name__
    ('DenseDetector', 'retinanet')
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

_LAZY = {
    "TimmClassifier": "lightning_focal.models.classifier",
    "DenseDetector": "lightning_focal.models.detection",
    "retinanet": "lightning_focal.models.detectors",
    "fcos": "lightning_focal.models.detectors",
    "TimmFPNBackbone": "lightning_focal.models._backbone",
    "FocalRetinaNetHead": "lightning_focal.models._detection_heads",
    "FocalRetinaNetClassificationHead": "lightning_focal.models._detection_heads",
    "FocalFCOSHead": "lightning_focal.models._detection_heads",
    "FCOSExpRegressionHead": "lightning_focal.models._detection_heads",
    "FCOSNormHead": "lightning_focal.models._detection_heads",
    "FocalFCOSClassificationHead": "lightning_focal.models._detection_heads",
}

__all__ = sorted(_LAZY)


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'lightning_focal.models' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *_LAZY])
