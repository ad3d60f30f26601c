"""Factories of the app's detectors: torchvision ``RetinaNet`` and ``FCOS`` on a timm FPN backbone.

timm-style: a function in, a plain torchvision model out (no weights, no loss of this
package). :class:`~lightning_focal.models.DenseDetector` (or
:func:`~lightning_focal.detection.with_focal_loss`) gives it the focal loss. Each model
remembers the call that built it (``model.factory_node``, a ``_target_`` node of plain
values), so that ``DenseDetector.load_from_checkpoint`` can build it again.

The prior of the classification bias is set here and only here: ``prior_probability``
π gives the ``cls_logits`` bias -log((1-π)/π), torchvision's own initialisation;
``None`` or 0 gives a zero bias (a run without the prior).
"""

from __future__ import annotations

import functools
import inspect
import math
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

from torch import nn
from torchvision.models.detection import FCOS, RetinaNet
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.retinanet import RetinaNetHead

from ._backbone import TimmFPNBackbone
from ._detection_heads import FCOSNormHead, _group_norm

__all__ = ["FACTORY_NODE", "fcos", "retinanet"]

FACTORY_NODE = "factory_node"
"""The attribute that holds the ``_target_`` node a factory built the model from."""

Factory = TypeVar("Factory", bound=Callable[..., nn.Module])


def _plain(value: Any) -> Any:
    # Hydra passes ListConfig; the node goes into checkpoints (torch.load(weights_only=True))
    if type(value).__module__.startswith("omegaconf"):
        from omegaconf import OmegaConf

        return OmegaConf.to_container(value, resolve=True)
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def _records_node(factory: Factory) -> Factory:
    signature = inspect.signature(factory)

    @functools.wraps(factory)
    def build(*args: Any, **kwargs: Any) -> nn.Module:
        bound = signature.bind(*args, **kwargs)
        bound.apply_defaults()
        model = factory(*bound.args, **bound.kwargs)
        node = {"_target_": f"lightning_focal.models.{factory.__name__}"}
        node.update((name, _plain(value)) for name, value in bound.arguments.items())
        setattr(model, FACTORY_NODE, node)
        return model

    return build  # type: ignore[return-value]


def _check(num_classes: int, image_size: int, prior_probability: float | None) -> None:
    if num_classes < 1:
        raise ValueError(f"num_classes must be >= 1, got {num_classes}")
    if image_size < 1:
        raise ValueError(f"image_size must be >= 1, got {image_size}")
    if prior_probability is not None and not 0 <= prior_probability < 1:
        raise ValueError(
            f"prior_probability must be in [0, 1) (0 or None: bias 0, no prior), "
            f"got {prior_probability}"
        )


def _set_prior(cls_logits: nn.Conv2d, prior_probability: float | None) -> None:
    if not prior_probability:
        nn.init.zeros_(cls_logits.bias)
    else:  # torchvision's own initialisation, for any π
        nn.init.constant_(cls_logits.bias, -math.log((1 - prior_probability) / prior_probability))


def _transform_kwargs(backbone: TimmFPNBackbone, image_size: int) -> dict[str, Any]:
    return {
        "min_size": image_size,
        "max_size": image_size,
        "image_mean": backbone.image_mean,
        "image_std": backbone.image_std,
    }


def _anchor_generator(
    strides: Sequence[int],
    anchor_sizes: Sequence[int] | None,
    aspect_ratios: Sequence[float],
    anchor_scales: Sequence[float] | None,
) -> AnchorGenerator:
    sizes = [int(s) for s in anchor_sizes] if anchor_sizes is not None else [4 * s for s in strides]
    if len(sizes) != len(strides):
        raise ValueError(
            f"anchor_sizes has {len(sizes)} entries, the pyramid has {len(strides)} levels "
            f"(strides {list(strides)})"
        )
    scales = (
        [float(k) for k in anchor_scales]
        if anchor_scales is not None
        else [1.0, 2 ** (1 / 3), 2 ** (2 / 3)]
    )
    ratios = tuple(float(r) for r in aspect_ratios)
    if not scales or not ratios:
        raise ValueError("anchor_scales and aspect_ratios need at least one value each")
    return AnchorGenerator(
        tuple(tuple(int(size * k) for k in scales) for size in sizes), (ratios,) * len(sizes)
    )


@_records_node
def retinanet(
    num_classes: int,
    image_size: int,
    backbone: str = "test_resnet",
    pretrained_backbone: bool = False,
    fpn_channels: int = 64,
    out_indices: Sequence[int] | None = None,
    anchor_sizes: Sequence[int] | None = None,
    aspect_ratios: Sequence[float] = (0.5, 1.0, 2.0),
    anchor_scales: Sequence[float] | None = None,
    head_group_norm: bool = False,
    fg_iou_thresh: float = 0.5,
    bg_iou_thresh: float = 0.4,
    score_thresh: float = 0.05,
    nms_thresh: float = 0.5,
    detections_per_img: int = 100,
    prior_probability: float | None = 0.01,
) -> RetinaNet:
    """torchvision ``RetinaNet`` on a timm backbone + FPN (P3-P7 by default), no weights.

    Anchors: each pyramid level gets a base size (``anchor_sizes``, default 4 × its stride,
    i.e. torchvision's 32-512 for strides 8-128) times ``anchor_scales`` (default 2^0,
    2^(1/3), 2^(2/3), truncated to integers as torchvision does) at each of
    ``aspect_ratios``. Anchors with IoU >= ``fg_iou_thresh`` are positives, < ``bg_iou_thresh``
    negatives, those between are ignored. ``head_group_norm=True`` puts a ``GroupNorm``
    after each of the head's convolutions, as torchvision's ``retinanet_resnet50_fpn_v2``
    does; ``False`` is the original RetinaNet head.

    Args:
        num_classes: object classes, without a background class.
        image_size: images are resized so that their longer side is ``image_size``
            (torchvision's ``min_size = max_size = image_size``).
        backbone: ``timm.create_model`` name (``features_only=True``).
        pretrained_backbone: load timm's pretrained weights.
        fpn_channels: channels of the feature pyramid and the heads.
        out_indices: backbone stages fed to the FPN (default: the last three).
        anchor_sizes, aspect_ratios, anchor_scales: the anchors, as above.
        head_group_norm: ``GroupNorm`` in the head.
        fg_iou_thresh, bg_iou_thresh: the matcher's IoU thresholds.
        score_thresh, nms_thresh, detections_per_img: post-processing of predictions.
        prior_probability: π of the ``cls_logits`` bias -log((1-π)/π); ``None`` or 0: bias 0.

    Example:
        >>> model = retinanet(num_classes=3, image_size=64, fpn_channels=16, aspect_ratios=[1.0])
        >>> model.anchor_generator.num_anchors_per_location(), model.anchor_generator.sizes[0]
        ([3, 3, 3, 3, 3], (32, 40, 50))
        >>> round(model.head.classification_head.cls_logits.bias.tolist()[0], 3)
        -4.595
        >>> model.factory_node["_target_"], model.factory_node["num_classes"]
        ('lightning_focal.models.retinanet', 3)
    """
    _check(num_classes, image_size, prior_probability)
    features = TimmFPNBackbone(backbone, fpn_channels, pretrained_backbone, out_indices)
    anchors = _anchor_generator(features.strides, anchor_sizes, aspect_ratios, anchor_scales)
    head = RetinaNetHead(
        features.out_channels,
        anchors.num_anchors_per_location()[0],
        num_classes,
        norm_layer=_group_norm(features.out_channels) if head_group_norm else None,
    )
    _set_prior(head.classification_head.cls_logits, prior_probability)
    return RetinaNet(
        features,
        num_classes,
        anchor_generator=anchors,
        head=head,
        fg_iou_thresh=fg_iou_thresh,
        bg_iou_thresh=bg_iou_thresh,
        score_thresh=score_thresh,
        nms_thresh=nms_thresh,
        detections_per_img=detections_per_img,
        **_transform_kwargs(features, image_size),
    )


@_records_node
def fcos(
    num_classes: int,
    image_size: int,
    backbone: str = "test_resnet",
    pretrained_backbone: bool = False,
    fpn_channels: int = 64,
    out_indices: Sequence[int] | None = None,
    center_sampling_radius: float = 1.5,
    box_activation: str = "exp",
    score_thresh: float = 0.05,
    nms_thresh: float = 0.5,
    detections_per_img: int = 100,
    prior_probability: float | None = 0.01,
) -> FCOS:
    """torchvision ``FCOS`` on a timm backbone + FPN (P3-P7 by default), no weights.

    One location per pyramid cell, of the level's stride as in torchvision; a location is
    positive for a box when it lies inside it, within ``center_sampling_radius`` strides of
    its centre and on the level responsible for its size. The head is
    :class:`~lightning_focal.models.FCOSNormHead`: torchvision's, with a ``GroupNorm`` whose
    groups fit narrow heads and, for ``box_activation="exp"`` (the default), box distances
    exp(s_l·x) with a learnable scale per level as in the FCOS paper
    (:class:`~lightning_focal.models.FCOSExpRegressionHead`); ``"relu"`` is torchvision's
    relu(x), whose zero-area boxes at initialisation can stall the GIoU loss at 1.0 for a
    whole run.

    Args:
        num_classes, image_size, backbone, pretrained_backbone, fpn_channels, out_indices,
            score_thresh, nms_thresh, detections_per_img, prior_probability: as for
            :func:`retinanet`.
        center_sampling_radius: in strides.
        box_activation: ``"exp"`` or ``"relu"``.

    Example:
        >>> model = fcos(num_classes=3, image_size=64, fpn_channels=16)
        >>> model.anchor_generator.sizes, model.head.regression_head.scales.tolist()
        (((8,), (16,), (32,), (64,), (128,)), [1.0, 1.0, 1.0, 1.0, 1.0])
        >>> int(fcos(3, 64, fpn_channels=16, prior_probability=None).head.classification_head.cls_logits.bias.count_nonzero())
        0
    """
    _check(num_classes, image_size, prior_probability)
    features = TimmFPNBackbone(backbone, fpn_channels, pretrained_backbone, out_indices)
    strides = features.strides
    anchors = AnchorGenerator(tuple((s,) for s in strides), ((1.0,),) * len(strides))
    head = FCOSNormHead(
        features.out_channels,
        1,
        num_classes,
        box_activation=box_activation,
        num_levels=len(strides),
    )
    _set_prior(head.classification_head.cls_logits, prior_probability)
    return FCOS(
        features,
        num_classes,
        anchor_generator=anchors,
        head=head,
        center_sampling_radius=center_sampling_radius,
        score_thresh=score_thresh,
        nms_thresh=nms_thresh,
        detections_per_img=detections_per_img,
        **_transform_kwargs(features, image_size),
    )
