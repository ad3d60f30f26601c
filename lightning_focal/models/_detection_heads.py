"""torchvision RetinaNet and FCOS heads whose classification loss is a :class:`DenseFocalLoss`.

Only the classification term changes: the targets, the ignored band and the normalisers
are built exactly as torchvision builds them, and the box-regression and centre-ness
losses are torchvision's. The loss module is a submodule of the classification head
(``head.classification_head.focal_loss``), so ``GammaWarmup``, ``ClassBalancedAlpha`` and
``FocalBiasInit`` find and steer it.

These classes hold the package's one implementation of the focal classification term of a
torchvision detector. :func:`lightning_focal.detection.with_focal_loss` turns the heads of a
detector into them (same weights, class swapped in place), the app's
(:func:`~lightning_focal.models.retinanet`, :func:`~lightning_focal.models.fcos`) and a
user's alike. :class:`FCOSNormHead` and :class:`FCOSExpRegressionHead` are the FCOS head
options torchvision's ``FCOSHead`` does not take (a norm layer for narrow heads, the paper's
exp box distances); they carry no loss.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from functools import partial

import torch
from torch import Tensor, nn
from torchvision.models.detection import _utils as det_utils
from torchvision.models.detection.fcos import (
    FCOSClassificationHead,
    FCOSHead,
    FCOSRegressionHead,
)
from torchvision.models.detection.retinanet import (
    RetinaNetClassificationHead,
    RetinaNetHead,
    RetinaNetRegressionHead,
)
from torchvision.ops import generalized_box_iou_loss

from ..losses.dense_focal import DenseFocalLoss

__all__ = [
    "BOX_ACTIVATIONS",
    "FCOSExpRegressionHead",
    "FCOSNormHead",
    "FocalFCOSClassificationHead",
    "FocalFCOSHead",
    "FocalRetinaNetClassificationHead",
    "FocalRetinaNetHead",
    "one_hot_targets",
]

BOX_ACTIVATIONS = ("exp", "relu")


def one_hot_targets(cls_logits: Tensor, labels: list[Tensor], matched_idxs: Tensor) -> Tensor:
    """One-hot class targets of ``(N, anchors, C)`` logits from the matcher's output.

    Anchor a of image i gets a 1 at ``labels[i][matched_idxs[i, a]]`` when
    ``matched_idxs[i, a] >= 0`` and is all zeros otherwise (background, or an ignored
    anchor that the caller masks out), as in torchvision's heads.

    Example:
        >>> import torch
        >>> logits = torch.zeros(1, 3, 2)
        >>> one_hot_targets(logits, [torch.tensor([1])], torch.tensor([[0, -1, -2]]))[0]
        tensor([[0., 1.],
                [0., 0.],
                [0., 0.]])
    """
    target = torch.zeros_like(cls_logits)
    for i, (labels_per_image, matched) in enumerate(zip(labels, matched_idxs)):
        foreground = matched >= 0
        target[i, foreground, labels_per_image[matched[foreground]]] = 1.0
    return target


def _group_norm(channels: int) -> Callable[[int], nn.Module]:
    # torchvision's FCOS uses GroupNorm(32) (256 channels). For narrow heads take a divisor
    # of the width that leaves >= 2 channels a group: with one, a 1x1 level (P7 of a small
    # image) in a batch of one has a single value per group and GroupNorm refuses it.
    groups = math.gcd(32, channels)
    while groups > 1 and channels // groups < 2:
        groups //= 2
    return partial(nn.GroupNorm, groups)


class FocalRetinaNetClassificationHead(RetinaNetClassificationHead):
    """``RetinaNetClassificationHead`` whose ``compute_loss`` calls a :class:`DenseFocalLoss`.

    Anchors matched to a box are positives of its class, anchors below the background
    threshold are negatives, and anchors between the thresholds
    (``Matcher.BETWEEN_THRESHOLDS``) are dropped through the loss's ``weight`` mask. With
    ``DenseFocalLoss(alpha=0.25, gamma=2, normalization="per_image")`` (the default) the
    value equals torchvision's ``RetinaNetClassificationHead.compute_loss``.

    Args:
        in_channels, num_anchors, num_classes, prior_probability, norm_layer: as for
            torchvision's head.
        focal_loss: the loss; default ``DenseFocalLoss(2.0, 0.25, normalization="per_image")``.

    Example:
        >>> import torch
        >>> head = FocalRetinaNetClassificationHead(8, num_anchors=2, num_classes=3)
        >>> logits = head([torch.zeros(1, 8, 4, 4)])
        >>> logits.shape
        torch.Size([1, 32, 3])
        >>> matched = [torch.full((32,), -1)]; matched[0][0] = 0
        >>> targets = [{"labels": torch.tensor([2]), "boxes": torch.zeros(1, 4)}]
        >>> loss = head.compute_loss(targets, {"cls_logits": logits}, matched)
        >>> int(head.focal_loss.last_num_positives)
        1
    """

    def __init__(
        self,
        in_channels: int,
        num_anchors: int,
        num_classes: int,
        prior_probability: float = 0.01,
        norm_layer: Callable[..., nn.Module] | None = None,
        focal_loss: DenseFocalLoss | None = None,
    ) -> None:
        super().__init__(in_channels, num_anchors, num_classes, prior_probability, norm_layer)
        if focal_loss is None:
            focal_loss = DenseFocalLoss(
                2.0, 0.25, normalization="per_image", num_classes=num_classes
            )
        self.focal_loss = focal_loss

    def compute_loss(  # type: ignore[override]
        self,
        targets: list[dict[str, Tensor]],
        head_outputs: dict[str, Tensor],
        matched_idxs: list[Tensor],
    ) -> Tensor:
        cls_logits = head_outputs["cls_logits"]
        matched = torch.stack(matched_idxs)
        gt_classes_target = one_hot_targets(cls_logits, [t["labels"] for t in targets], matched)
        valid = (matched != self.BETWEEN_THRESHOLDS).to(cls_logits.dtype)
        return self.focal_loss(cls_logits, gt_classes_target, weight=valid)

    def focal_bias_layers(self) -> list[nn.Module]:
        """The ``cls_logits`` conv, whose bias ``FocalBiasInit`` sets to the prior."""
        return [self.cls_logits]


class FocalRetinaNetHead(RetinaNetHead):
    """``RetinaNetHead`` with a :class:`FocalRetinaNetClassificationHead`; regression unchanged.

    Example:
        >>> head = FocalRetinaNetHead(8, num_anchors=9, num_classes=3)
        >>> type(head.classification_head).__name__, type(head.regression_head).__name__
        ('FocalRetinaNetClassificationHead', 'RetinaNetRegressionHead')
    """

    def __init__(
        self,
        in_channels: int,
        num_anchors: int,
        num_classes: int,
        norm_layer: Callable[..., nn.Module] | None = None,
        focal_loss: DenseFocalLoss | None = None,
        prior_probability: float = 0.01,
    ) -> None:
        nn.Module.__init__(self)
        self.classification_head = FocalRetinaNetClassificationHead(
            in_channels,
            num_anchors,
            num_classes,
            prior_probability=prior_probability,
            norm_layer=norm_layer,
            focal_loss=focal_loss,
        )
        self.regression_head = RetinaNetRegressionHead(
            in_channels, num_anchors, norm_layer=norm_layer
        )


class FocalFCOSClassificationHead(FCOSClassificationHead):
    """``FCOSClassificationHead`` that holds the :class:`DenseFocalLoss` of FCOS.

    :meth:`compute_loss` takes the per-location class index built by
    :meth:`FocalFCOSHead.compute_loss` (-1 for background). With
    ``DenseFocalLoss(alpha=0.25, gamma=2, normalization="batch")`` (the default) and one
    process it equals torchvision's FCOS classification term: the loss summed over the
    batch divided by max(1, foreground locations in the batch).

    Args:
        in_channels, num_anchors, num_classes, num_convs, prior_probability, norm_layer: as
            for torchvision's head (``norm_layer`` defaults to torchvision's ``GroupNorm(32)``
            when ``in_channels`` >= 64, else to fewer groups of >= 2 channels each).
        focal_loss: the loss; default ``DenseFocalLoss(2.0, 0.25, normalization="batch")``.
    """

    def __init__(
        self,
        in_channels: int,
        num_anchors: int,
        num_classes: int,
        num_convs: int = 4,
        prior_probability: float = 0.01,
        norm_layer: Callable[..., nn.Module] | None = None,
        focal_loss: DenseFocalLoss | None = None,
    ) -> None:
        super().__init__(
            in_channels,
            num_anchors,
            num_classes,
            num_convs,
            prior_probability,
            norm_layer or _group_norm(in_channels),
        )
        if focal_loss is None:
            focal_loss = DenseFocalLoss(2.0, 0.25, normalization="batch", num_classes=num_classes)
        self.focal_loss = focal_loss

    def compute_loss(self, cls_logits: Tensor, gt_classes: Tensor) -> Tensor:
        """Focal loss of ``(N, locations, C)`` logits against class indices (-1 background)."""
        foreground = gt_classes >= 0
        target = torch.zeros_like(cls_logits)
        target[foreground, gt_classes[foreground]] = 1.0
        return self.focal_loss(cls_logits, target)

    def focal_bias_layers(self) -> list[nn.Module]:
        """The ``cls_logits`` conv, whose bias ``FocalBiasInit`` sets to the prior."""
        return [self.cls_logits]


class FCOSExpRegressionHead(FCOSRegressionHead):
    """``FCOSRegressionHead`` whose box distances are exp(s_l·x), as in the FCOS paper.

    torchvision's head returns relu(x), x the ``bbox_reg`` conv's output, which starts near
    0 (weights N(0, 0.01), bias 0). In seed 0 of ``benchmarks/detection.py`` two thirds of
    those outputs were exactly 0 at initialisation and 97 % of the positive locations decoded
    to a zero-area box. The GIoU loss of a zero-area box has no gradient while it lies inside
    the ground truth and only a shrinking one where it sticks out, so the outputs were pushed
    below 0 within 5 steps; there the ReLU passes no gradient at all and the box loss stayed
    at 1.0 for the whole run, in every arm. exp(s_l·x), with one learnable scale s_l per
    pyramid level (initially 1), starts every box one stride out on each side of its location
    and has a gradient wherever it is below its clamp (Tian et al., ICCV 2019, Sec. 3.1). As
    in torchvision's ``BoxCoder`` the exponent is clamped at log(1000/16). The centre-ness
    branch is torchvision's.

    Args:
        in_channels, num_anchors, num_convs: as for torchvision's head.
        num_levels: pyramid levels the head sees (one scale each).
        norm_layer: as for torchvision's head; default ``GroupNorm`` as in
            :class:`FocalFCOSClassificationHead`.

    Example:
        >>> import torch
        >>> head = FCOSExpRegressionHead(8, num_anchors=1, num_levels=2)
        >>> boxes, ctrness = head([torch.rand(1, 8, 4, 4), torch.rand(1, 8, 2, 2)])
        >>> boxes.shape, bool((boxes > 0).all()), ctrness.shape
        (torch.Size([1, 20, 4]), True, torch.Size([1, 20, 1]))
    """

    max_exponent = math.log(1000.0 / 16)

    def __init__(
        self,
        in_channels: int,
        num_anchors: int,
        num_levels: int,
        num_convs: int = 4,
        norm_layer: Callable[..., nn.Module] | None = None,
    ) -> None:
        super().__init__(
            in_channels, num_anchors, num_convs, norm_layer or _group_norm(in_channels)
        )
        if num_levels < 1:
            raise ValueError(f"num_levels must be >= 1, got {num_levels}")
        self.scales = nn.Parameter(torch.ones(num_levels))

    def forward(self, x: list[Tensor]) -> tuple[Tensor, Tensor]:
        if len(x) != len(self.scales):
            raise ValueError(f"got {len(x)} feature levels, the head has {len(self.scales)} scales")
        all_bbox_regression, all_bbox_ctrness = [], []
        for scale, features in zip(self.scales, x):
            bbox_feature = self.conv(features)
            exponent = (scale * self.bbox_reg(bbox_feature)).clamp(max=self.max_exponent)
            bbox_regression = exponent.exp()
            bbox_ctrness = self.bbox_ctrness(bbox_feature)
            # (N, A*K, H, W) -> (N, HWA, K), as torchvision orders locations.
            N, _, H, W = bbox_regression.shape
            all_bbox_regression.append(
                bbox_regression.view(N, -1, 4, H, W).permute(0, 3, 4, 1, 2).reshape(N, -1, 4)
            )
            all_bbox_ctrness.append(
                bbox_ctrness.view(N, -1, 1, H, W).permute(0, 3, 4, 1, 2).reshape(N, -1, 1)
            )
        return torch.cat(all_bbox_regression, dim=1), torch.cat(all_bbox_ctrness, dim=1)


class FCOSNormHead(FCOSHead):
    """torchvision's ``FCOSHead`` with a choice of norm layer and of box activation.

    ``FCOSHead`` builds its sub-heads with ``GroupNorm(32)``, which needs a multiple of 32
    channels, and returns relu box distances; this head takes both as arguments and is
    otherwise torchvision's (same sub-head classes, parameters, ``compute_loss``).

    Args:
        in_channels, num_anchors, num_classes, num_convs, prior_probability: as for
            torchvision's head and its ``FCOSClassificationHead``.
        norm_layer: of both sub-heads; default ``GroupNorm`` with a divisor of
            ``in_channels`` that leaves >= 2 channels a group (torchvision's 32 groups at
            >= 64 channels).
        box_activation: ``"relu"``: torchvision's ``FCOSRegressionHead``, box distances
            relu(x); ``"exp"``: :class:`FCOSExpRegressionHead`, exp(s_l·x) as in the FCOS
            paper, which cannot get stuck at zero-area boxes.
        num_levels: pyramid levels, for ``"exp"`` (one scale each; torchvision's P3-P7 is 5).

    Example:
        >>> head = FCOSNormHead(16, num_anchors=1, num_classes=3, box_activation="exp")
        >>> type(head.regression_head).__name__, head.classification_head.conv[1].num_groups
        ('FCOSExpRegressionHead', 8)
    """

    def __init__(
        self,
        in_channels: int,
        num_anchors: int,
        num_classes: int,
        num_convs: int = 4,
        norm_layer: Callable[..., nn.Module] | None = None,
        prior_probability: float = 0.01,
        box_activation: str = "relu",
        num_levels: int = 5,
    ) -> None:
        if box_activation not in BOX_ACTIVATIONS:
            raise ValueError(
                f"unknown box_activation {box_activation!r}; expected one of {BOX_ACTIVATIONS}"
            )
        # FCOSHead.__init__ would build (and randomly initialise) GroupNorm(32) sub-heads
        # only to have them replaced; build its three attributes here instead.
        nn.Module.__init__(self)
        norm_layer = norm_layer or _group_norm(in_channels)
        self.box_coder = det_utils.BoxLinearCoder(normalize_by_size=True)
        self.classification_head = FCOSClassificationHead(
            in_channels, num_anchors, num_classes, num_convs, prior_probability, norm_layer
        )
        self.regression_head = (
            FCOSExpRegressionHead(in_channels, num_anchors, num_levels, num_convs, norm_layer)
            if box_activation == "exp"
            else FCOSRegressionHead(in_channels, num_anchors, num_convs, norm_layer=norm_layer)
        )


class FocalFCOSHead(FCOSNormHead):
    """``FCOSHead`` whose classification term is the head's :class:`DenseFocalLoss`.

    The matching, the GIoU box loss and the centre-ness loss are torchvision's
    ``FCOSHead.compute_loss`` unchanged (each normalised by the local foreground count, as
    torchvision does); only ``"classification"`` comes from
    :meth:`FocalFCOSClassificationHead.compute_loss`.

    Args:
        in_channels, num_anchors, num_classes, num_convs, norm_layer, prior_probability,
            box_activation, num_levels: as for :class:`FCOSNormHead`.
        focal_loss: the classification loss (see :class:`FocalFCOSClassificationHead`).

    Example:
        >>> head = FocalFCOSHead(32, num_anchors=1, num_classes=3)
        >>> type(head.classification_head.focal_loss).__name__, head.classification_head.focal_loss.normalization
        ('DenseFocalLoss', 'batch')
        >>> type(FocalFCOSHead(32, 1, 3, box_activation="exp").regression_head).__name__
        'FCOSExpRegressionHead'
    """

    def __init__(
        self,
        in_channels: int,
        num_anchors: int,
        num_classes: int,
        num_convs: int = 4,
        norm_layer: Callable[..., nn.Module] | None = None,
        focal_loss: DenseFocalLoss | None = None,
        prior_probability: float = 0.01,
        box_activation: str = "relu",
        num_levels: int = 5,
    ) -> None:
        super().__init__(
            in_channels,
            num_anchors,
            num_classes,
            num_convs,
            norm_layer,
            prior_probability,
            box_activation,
            num_levels,
        )
        # the same parameters, drawn in the same order, as FCOSNormHead's; the class
        # swap is what with_focal_loss does to a head built elsewhere
        self.classification_head.__class__ = FocalFCOSClassificationHead
        if focal_loss is None:
            focal_loss = DenseFocalLoss(2.0, 0.25, normalization="batch", num_classes=num_classes)
        self.classification_head.focal_loss = focal_loss

    def compute_loss(
        self,
        targets: list[dict[str, Tensor]],
        head_outputs: dict[str, Tensor],
        anchors: list[Tensor],
        matched_idxs: list[Tensor],
    ) -> dict[str, Tensor]:
        cls_logits = head_outputs["cls_logits"]  # (N, HWA, C)
        bbox_regression = head_outputs["bbox_regression"]  # (N, HWA, 4)
        bbox_ctrness = head_outputs["bbox_ctrness"]  # (N, HWA, 1)

        # From here to the classification term: torchvision's FCOSHead.compute_loss.
        all_gt_classes_targets = []
        all_gt_boxes_targets = []
        for targets_per_image, matched_idxs_per_image in zip(targets, matched_idxs):
            if len(targets_per_image["labels"]) == 0:
                gt_classes_targets = targets_per_image["labels"].new_zeros(
                    (len(matched_idxs_per_image),)
                )
                gt_boxes_targets = targets_per_image["boxes"].new_zeros(
                    (len(matched_idxs_per_image), 4)
                )
            else:
                gt_classes_targets = targets_per_image["labels"][matched_idxs_per_image.clip(min=0)]
                gt_boxes_targets = targets_per_image["boxes"][matched_idxs_per_image.clip(min=0)]
            gt_classes_targets[matched_idxs_per_image < 0] = -1  # background
            all_gt_classes_targets.append(gt_classes_targets)
            all_gt_boxes_targets.append(gt_boxes_targets)

        gt_boxes = torch.stack(all_gt_boxes_targets)
        gt_classes = torch.stack(all_gt_classes_targets)
        anchors_tensor = torch.stack(anchors)

        foreground = gt_classes >= 0
        num_foreground = foreground.sum().item()

        loss_cls = self.classification_head.compute_loss(cls_logits, gt_classes)

        pred_boxes = self.box_coder.decode(bbox_regression, anchors_tensor)
        loss_bbox_reg = generalized_box_iou_loss(
            pred_boxes[foreground], gt_boxes[foreground], reduction="sum"
        )

        bbox_reg_targets = self.box_coder.encode(anchors_tensor, gt_boxes)
        if len(bbox_reg_targets) == 0:
            gt_ctrness_targets = bbox_reg_targets.new_zeros(bbox_reg_targets.size()[:-1])
        else:
            left_right = bbox_reg_targets[:, :, [0, 2]]
            top_bottom = bbox_reg_targets[:, :, [1, 3]]
            gt_ctrness_targets = torch.sqrt(
                (left_right.min(dim=-1)[0] / left_right.max(dim=-1)[0])
                * (top_bottom.min(dim=-1)[0] / top_bottom.max(dim=-1)[0])
            )
        pred_centerness = bbox_ctrness.squeeze(dim=2)
        loss_bbox_ctrness = nn.functional.binary_cross_entropy_with_logits(
            pred_centerness[foreground], gt_ctrness_targets[foreground], reduction="sum"
        )

        return {
            "classification": loss_cls,
            "bbox_regression": loss_bbox_reg / max(1, num_foreground),
            "bbox_ctrness": loss_bbox_ctrness / max(1, num_foreground),
        }
