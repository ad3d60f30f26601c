"""``TimmFPNBackbone``: a timm feature extractor under a torchvision feature pyramid."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence

from torch import Tensor, nn
from torchvision.ops import FeaturePyramidNetwork
from torchvision.ops.feature_pyramid_network import LastLevelMaxPool, LastLevelP6P7

__all__ = ["EXTRA_LEVELS", "TimmFPNBackbone"]

EXTRA_LEVELS = ("p6p7", "pool", "none")


class TimmFPNBackbone(nn.Module):
    """Any ``timm`` model with ``features_only=True`` followed by an FPN, as torchvision detectors want.

    ``forward`` returns an ``OrderedDict`` of feature maps that all have ``out_channels``
    channels (the attribute torchvision's ``RetinaNet``/``FCOS`` read), finest first. The
    extra levels follow torchvision: ``"p6p7"`` adds P6 and P7 computed from P5 as in
    ``retinanet_resnet50_fpn`` and ``fcos_resnet50_fpn`` (``LastLevelP6P7(C, C)``),
    ``"pool"`` adds one max-pooled level as Faster R-CNN does, ``"none"`` adds nothing.

    Args:
        name: a ``timm.create_model`` name that supports ``features_only`` (``test_resnet``
            and ``test_efficientnet`` are tiny and run on a CPU).
        out_channels: channels of every pyramid level.
        pretrained: load timm's pretrained weights (needs the network the first time).
        out_indices: backbone stages fed to the FPN; default the last three (C3-C5 of a
            ResNet, strides 8, 16, 32).
        extra_levels: ``"p6p7"``, ``"pool"`` or ``"none"``.

    Attributes:
        out_channels: channels of each output level.
        strides: stride of each output level in input pixels, extra levels included.
        image_mean, image_std: the normalisation the timm model was (or would be) trained with.

    Example:
        >>> import torch
        >>> backbone = TimmFPNBackbone("test_resnet", out_channels=16)
        >>> features = backbone(torch.zeros(1, 3, 64, 64))
        >>> list(features), backbone.strides
        (['0', '1', '2', 'p6', 'p7'], [8, 16, 32, 64, 128])
        >>> [tuple(f.shape[1:]) for f in features.values()][:2]
        [(16, 8, 8), (16, 4, 4)]
    """

    def __init__(
        self,
        name: str = "test_resnet",
        out_channels: int = 64,
        pretrained: bool = False,
        out_indices: Sequence[int] | None = None,
        extra_levels: str = "p6p7",
    ) -> None:
        super().__init__()
        if extra_levels not in EXTRA_LEVELS:
            raise ValueError(
                f"unknown extra_levels {extra_levels!r}; expected one of {EXTRA_LEVELS}"
            )
        if out_channels < 1:
            raise ValueError(f"out_channels must be >= 1, got {out_channels}")
        import timm  # the train extra; `import lightning_focal` does not import timm

        indices = tuple(int(i) for i in out_indices) if out_indices is not None else (-3, -2, -1)
        self.body = timm.create_model(
            name, pretrained=pretrained, features_only=True, out_indices=indices
        )
        in_channels = list(self.body.feature_info.channels())
        strides = [int(s) for s in self.body.feature_info.reduction()]
        extra: nn.Module | None
        if extra_levels == "p6p7":
            extra = LastLevelP6P7(out_channels, out_channels)
            strides += [strides[-1] * 2, strides[-1] * 4]
        elif extra_levels == "pool":
            extra = LastLevelMaxPool()
            strides += [strides[-1] * 2]
        else:
            extra = None
        self.fpn = FeaturePyramidNetwork(in_channels, out_channels, extra_blocks=extra)
        self.out_channels = out_channels
        self.strides = strides
        cfg = getattr(self.body, "pretrained_cfg", None) or {}
        self.image_mean = [float(v) for v in cfg.get("mean", (0.485, 0.456, 0.406))]
        self.image_std = [float(v) for v in cfg.get("std", (0.229, 0.224, 0.225))]

    def forward(self, x: Tensor) -> OrderedDict[str, Tensor]:
        features = self.body(x)
        return self.fpn(OrderedDict((str(i), f) for i, f in enumerate(features)))
