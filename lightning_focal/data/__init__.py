"""Classification datamodules, long-tail profiles and the class-counts hook.

Importing this package imports neither timm, hydra nor wandb; torchvision, timm and
scikit-learn are imported inside the methods that need them.
"""

from __future__ import annotations

from lightning_focal.data._loaders import (
    EpochDataset,
    ResumableDataLoader,
    ResumableSampler,
    SeededSubset,
    seeded_dataloader,
)
from lightning_focal.data.cifar_lt import CIFAR10LTDataModule, CIFAR100LTDataModule
from lightning_focal.data.class_counts import ClassCountsProvider, counts_from_targets
from lightning_focal.data.coco import CocoDetectionDataModule, CocoDetectionDataset
from lightning_focal.data.detection_utils import detection_collate, detection_dataloader
from lightning_focal.data.digits_lt import DigitsLTDataModule
from lightning_focal.data.image_folder import ImageFolderDataModule
from lightning_focal.data.longtail import PROFILES, longtail_counts, longtail_indices
from lightning_focal.data.shapes import (
    PlacedShape,
    ShapesDataModule,
    ShapesDataset,
    ShapesLayout,
)

__all__ = [
    "PROFILES",
    "CIFAR10LTDataModule",
    "CIFAR100LTDataModule",
    "ClassCountsProvider",
    "CocoDetectionDataModule",
    "CocoDetectionDataset",
    "DigitsLTDataModule",
    "EpochDataset",
    "ImageFolderDataModule",
    "PlacedShape",
    "ResumableDataLoader",
    "ResumableSampler",
    "SeededSubset",
    "ShapesDataModule",
    "ShapesDataset",
    "ShapesLayout",
    "counts_from_targets",
    "detection_collate",
    "detection_dataloader",
    "longtail_counts",
    "longtail_indices",
    "seeded_dataloader",
]
