"""Small torchvision detectors on a custom backbone, and data for them, shared by the tests."""

from __future__ import annotations

from collections import OrderedDict

import torch
from torch import nn
from torch.nn import functional as F
from torch.utils.data import DataLoader
from torchvision.models.detection import FCOS, RetinaNet
from torchvision.models.detection.anchor_utils import AnchorGenerator

NUM_CLASSES = 4


class TwoLevelBackbone(nn.Module):
    """A custom backbone: two feature levels (strides 8 and 16) as an ordered dict."""

    def __init__(self, out_channels: int = 32) -> None:
        super().__init__()
        self.out_channels = out_channels
        self.stem = nn.Sequential(
            nn.Conv2d(3, out_channels, 3, stride=4, padding=1),
            nn.BatchNorm2d(out_channels),
            nn.ReLU(),
            nn.Conv2d(out_channels, out_channels, 3, stride=2, padding=1),
        )
        self.down = nn.Conv2d(out_channels, out_channels, 3, stride=2, padding=1)

    def forward(self, x: torch.Tensor) -> OrderedDict[str, torch.Tensor]:
        p3 = self.stem(x)
        return OrderedDict([("p3", p3), ("p4", self.down(F.relu(p3)))])


def small_retinanet(num_classes: int = NUM_CLASSES) -> RetinaNet:
    anchors = AnchorGenerator(((16, 24), (32, 48)), ((0.5, 1.0, 2.0),) * 2)
    return RetinaNet(
        TwoLevelBackbone(), num_classes, min_size=64, max_size=64, anchor_generator=anchors
    )


def small_fcos(num_classes: int = NUM_CLASSES) -> FCOS:
    anchors = AnchorGenerator(((8,), (16,)), ((1.0,),) * 2)
    return FCOS(TwoLevelBackbone(), num_classes, min_size=64, max_size=64, anchor_generator=anchors)


def images_and_targets() -> tuple[list[torch.Tensor], list[dict[str, torch.Tensor]]]:
    generator = torch.Generator().manual_seed(3)
    images = [torch.rand(3, 64, 64, generator=generator) for _ in range(3)]
    targets = [
        {
            "boxes": torch.tensor(
                [[2.0, 2.0, 22.0, 22.0], [30.0, 8.0, 54.0, 40.0], [4.0, 36.0, 28.0, 60.0]]
            ),
            "labels": torch.tensor([0, 3, 1]),
        },
        {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.long)},  # no objects
        {"boxes": torch.tensor([[10.0, 10.0, 42.0, 42.0]]), "labels": torch.tensor([2])},
    ]
    return images, targets


def detection_loader(batches: int = 3, batch_size: int = 2) -> DataLoader:
    images, targets = images_and_targets()
    items = [(images[i % 3], targets[i % 3]) for i in range(batches * batch_size)]
    return DataLoader(items, batch_size=batch_size, collate_fn=lambda b: tuple(zip(*b)))
