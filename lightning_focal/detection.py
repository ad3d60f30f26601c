"""Focal loss for the torchvision detectors you build yourself: :func:`with_focal_loss`.

One call gives a torchvision ``RetinaNet`` or ``FCOS`` (``retinanet_resnet50_fpn``,
``fcos_resnet50_fpn``, or one on your own backbone) a :class:`~lightning_focal.DenseFocalLoss`
as its classification loss. Everything else about the model stays as you built it.
"""

from __future__ import annotations

from typing import Any, TypeVar

import torch
from torch import nn
from torchvision.models.detection import FCOS, RetinaNet
from torchvision.models.detection.fcos import FCOSClassificationHead, FCOSHead
from torchvision.models.detection.retinanet import RetinaNetClassificationHead, RetinaNetHead

from .losses.dense_focal import DenseFocalLoss
from .models._detection_heads import (
    FocalFCOSClassificationHead,
    FocalFCOSHead,
    FocalRetinaNetClassificationHead,
)

__all__ = ["SUPPORTED_DETECTORS", "focal_loss_of", "with_focal_loss"]

SUPPORTED_DETECTORS = (
    "torchvision.models.detection.RetinaNet",
    "torchvision.models.detection.FCOS",
)

Detector = TypeVar("Detector", RetinaNet, FCOS)

# torchvision head class -> (the focal class that replaces its compute_loss, whose
# compute_loss that class replaces). A user's subclass of the torchvision class gets a
# subclass of both, made once and cached.
_FOCAL_CLASSES: dict[type, tuple[type, Any]] = {
    RetinaNetClassificationHead: (
        FocalRetinaNetClassificationHead,
        RetinaNetClassificationHead.compute_loss,
    ),
    FCOSHead: (FocalFCOSHead, FCOSHead.compute_loss),
    FCOSClassificationHead: (FocalFCOSClassificationHead, None),
}
_SUBCLASSES: dict[tuple[type, type], type] = {}


def with_focal_loss(model: Detector, loss: DenseFocalLoss | None = None) -> Detector:
    """Make ``loss`` the classification loss of a torchvision ``RetinaNet`` or ``FCOS``, in place.

    The model is modified in place and returned. Its classification head's ``compute_loss``
    (for FCOS: the head's) is replaced by the package's, which builds the targets, drops
    RetinaNet's anchors between the IoU thresholds and calls ``loss``; the matching, the
    box-regression and centre-ness losses, the forward pass, the post-processing and every
    parameter and buffer stay the model's (same state-dict keys and values). ``loss`` becomes
    the submodule ``model.head.classification_head.focal_loss``, so it follows ``.to()``, its
    γ and α are saved in the state dict, and ``GammaWarmup``, ``ClassBalancedAlpha``, the
    :class:`~lightning_focal.FocalLossMixin` diagnostics and the loss-CDF callback find it.
    ``FocalBiasInit`` finds the head's ``cls_logits`` conv without being told. A state dict
    without the loss's keys (torchvision's COCO weights, a checkpoint of the plain model)
    still loads strictly; the loss then keeps its γ and α.

    With ``DenseFocalLoss(gamma=2, alpha=0.25)`` and the normalisation torchvision uses —
    ``"per_image"`` for RetinaNet (each image's loss over its own positives), ``"batch"``
    for FCOS (the batch's loss over its positives; one process) — every loss term equals
    torchvision's. That is the default when ``loss`` is ``None``. Calling it again swaps in
    another loss.

    How: the heads' classes become the package's focal subclasses of them (an instance's
    ``__class__`` is reassigned; no module is rebuilt). Heads of a subclass of torchvision's
    class get a subclass of both, so your ``forward`` is kept; a head that overrides
    ``compute_loss`` itself is refused, since the replacement would silently drop it.
    ``torch.save(model)`` of such a subclassed head cannot be unpickled in another
    process; save the ``state_dict`` (as Lightning does).

    Args:
        model: a ``torchvision.models.detection.RetinaNet`` or ``FCOS`` (or a subclass).
        loss: the classification loss; its ``num_classes`` is set to the head's when unset,
            and per-class γ or α must have one value per class.

    Returns:
        ``model``, with the focal classification loss.

    Raises:
        TypeError: for another model or head type, or a loss that is not a ``DenseFocalLoss``.
        ValueError: when the loss's classes do not match the head's.

    Example:
        >>> import torch
        >>> from torchvision.models.detection import retinanet_resnet50_fpn
        >>> from lightning_focal import DenseFocalLoss
        >>> model = retinanet_resnet50_fpn(weights=None, weights_backbone=None, num_classes=3,
        ...                                min_size=64, max_size=64)
        >>> keys = list(model.state_dict())
        >>> loss = DenseFocalLoss(gamma=1.0, alpha=[0.25, 0.5, 0.75], normalization="per_image")
        >>> model = with_focal_loss(model, loss)
        >>> focal_loss_of(model) is loss, type(model.head.classification_head).__name__
        (True, 'FocalRetinaNetClassificationHead')
        >>> [k for k in model.state_dict() if k not in keys]
        ['head.classification_head.focal_loss.gamma', 'head.classification_head.focal_loss.alpha', 'head.classification_head.focal_loss.normalizer_ema']
        >>> target = {"boxes": torch.tensor([[8.0, 8.0, 40.0, 40.0]]), "labels": torch.tensor([1])}
        >>> sorted(model([torch.rand(3, 64, 64)], [target]))
        ['bbox_regression', 'classification']
        >>> int(loss.last_num_positives) > 0
        True
    """
    if not isinstance(model, (RetinaNet, FCOS)):
        raise TypeError(
            f"with_focal_loss supports {' and '.join(SUPPORTED_DETECTORS)} (and their "
            f"subclasses), got {type(model).__module__}.{type(model).__qualname__}"
        )
    is_retinanet = isinstance(model, RetinaNet)
    if loss is None:
        loss = DenseFocalLoss(2.0, 0.25, normalization="per_image" if is_retinanet else "batch")
    if not isinstance(loss, DenseFocalLoss):
        raise TypeError(
            "with_focal_loss takes a lightning_focal.DenseFocalLoss (it is called with "
            f"(N, anchors, C) logits and normalised by the positives), got {type(loss).__name__}"
        )
    head = getattr(model, "head", None)
    expected_head = RetinaNetHead if is_retinanet else FCOSHead
    if not isinstance(head, expected_head):
        raise TypeError(
            f"with_focal_loss needs the {type(model).__name__}'s head to be a torchvision "
            f"{expected_head.__name__}, got {type(head).__name__}"
        )
    classification_head = head.classification_head
    expected = RetinaNetClassificationHead if is_retinanet else FCOSClassificationHead
    if not isinstance(classification_head, expected):
        raise TypeError(
            f"with_focal_loss needs head.classification_head to be a torchvision "
            f"{expected.__name__}, got {type(classification_head).__name__}"
        )
    _check_classes(loss, int(classification_head.num_classes))

    # Every check first: nothing changes unless all the swaps can be made.
    swaps = [(classification_head, _focal_class(type(classification_head), expected))]
    if not is_retinanet:
        swaps.append((head, _focal_class(type(head), FCOSHead)))
    for module, focal_class in swaps:
        module.__class__ = focal_class
    device = classification_head.cls_logits.weight.device
    classification_head.focal_loss = loss.to(device)
    if not getattr(loss, "_keeps_state_when_absent", False):
        loss.register_load_state_dict_pre_hook(_keep_loss_state_when_absent)
        loss._keeps_state_when_absent = True
    return model


def focal_loss_of(model: nn.Module) -> DenseFocalLoss:
    """The :class:`~lightning_focal.DenseFocalLoss` that :func:`with_focal_loss` attached to ``model``.

    Example:
        >>> from torch import nn
        >>> from torchvision.models.detection import FCOS
        >>> from torchvision.models.detection.anchor_utils import AnchorGenerator
        >>> backbone = nn.Conv2d(3, 32, kernel_size=3, stride=8, padding=1)
        >>> backbone.out_channels = 32  # a one-level custom backbone
        >>> model = FCOS(backbone, num_classes=2, anchor_generator=AnchorGenerator(((8,),), ((1.0,),)))
        >>> focal_loss_of(with_focal_loss(model)).normalization
        'batch'
    """
    head = getattr(getattr(model, "head", None), "classification_head", None)
    loss = getattr(head, "focal_loss", None)
    if not isinstance(loss, DenseFocalLoss):
        raise TypeError(
            f"{type(model).__name__} has no focal classification loss; call "
            "with_focal_loss(model, loss) first"
        )
    return loss


def _focal_class(cls: type, torchvision_class: type) -> type:
    focal_class, replaced = _FOCAL_CLASSES[torchvision_class]
    if issubclass(cls, focal_class):  # attached before: keep the class, swap the loss
        return cls
    if replaced is not None and getattr(cls, "compute_loss", None) is not replaced:
        raise TypeError(
            f"{cls.__qualname__} overrides compute_loss; with_focal_loss replaces "
            f"{torchvision_class.__name__}.compute_loss and would drop your version. Compute the "
            "focal term in your compute_loss with lightning_focal.DenseFocalLoss instead"
        )
    if issubclass(focal_class, cls):  # torchvision's class, or FCOSNormHead: nothing to keep
        return focal_class
    key = (cls, focal_class)
    if key not in _SUBCLASSES:
        _SUBCLASSES[key] = type(
            f"Focal{cls.__name__}", (focal_class, cls), {"__module__": cls.__module__}
        )
    return _SUBCLASSES[key]


def _check_classes(loss: DenseFocalLoss, num_classes: int) -> None:
    if loss.num_classes is not None and loss.num_classes != num_classes:
        raise ValueError(
            f"the loss has num_classes={loss.num_classes}, the detector's head {num_classes}"
        )
    for name in ("gamma", "alpha"):
        value = getattr(loss, name)
        if value is not None and value.dim() == 1 and value.numel() != num_classes:
            raise ValueError(
                f"the loss's per-class {name} has {value.numel()} values, the detector's head "
                f"has {num_classes} classes"
            )
    loss.num_classes = num_classes


def _keep_loss_state_when_absent(
    module: nn.Module, state_dict: dict[str, torch.Tensor], prefix: str, *args: Any
) -> None:
    # A detector's state dict from before the loss was attached has none of its keys; the
    # loss keeps what it was built with instead of failing a strict load. A state dict that
    # has some of them is loaded (and checked) as usual.
    persistent = [
        (name, buffer)
        for name, buffer in module.named_buffers(recurse=False)
        if name not in module._non_persistent_buffers_set
    ]
    if persistent and not any(prefix + name in state_dict for name, _ in persistent):
        for name, buffer in persistent:
            state_dict[prefix + name] = buffer.detach().clone()
