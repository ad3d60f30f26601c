"""The focal heads' classification losses against torchvision's own heads, value and gradient."""

from __future__ import annotations

import pytest
import torch
from torch.nn import functional as F

pytest.importorskip("timm")
pytest.importorskip("torchvision")

from torchvision.models.detection import FCOS, RetinaNet
from torchvision.models.detection.fcos import FCOSHead
from torchvision.models.detection.retinanet import (
    RetinaNetClassificationHead,
    RetinaNetHead,
)

from lightning_focal.losses import DenseFocalLoss
from lightning_focal.models import (
    DenseDetector,
    FocalFCOSHead,
    FocalRetinaNetClassificationHead,
    fcos,
    retinanet,
)


@pytest.fixture(autouse=True)
def one_thread():
    # Two threads on two busy cores spin against each other: steps get 10-100x slower.
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def _targets() -> list[dict[str, torch.Tensor]]:
    return [
        {
            "boxes": torch.tensor(
                [[2.0, 2.0, 20.0, 20.0], [30.0, 8.0, 50.0, 40.0], [4.0, 40.0, 24.0, 60.0]]
            ),
            "labels": torch.tensor([0, 3, 1]),
        },
        {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.long)},  # no objects
        {"boxes": torch.tensor([[10.0, 10.0, 40.0, 40.0]]), "labels": torch.tensor([2])},
    ]


def _matched_idxs(num_anchors: int, generator: torch.Generator) -> list[torch.Tensor]:
    # -2: between thresholds (ignored), -1: background, >= 0: the matched box.
    return [
        torch.randint(-2, 3, (num_anchors,), generator=generator),
        torch.randint(-2, 0, (num_anchors,), generator=generator),
        torch.randint(-2, 1, (num_anchors,), generator=generator),
    ]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_retinanet_classification_loss_equals_torchvision(dtype):
    generator = torch.Generator().manual_seed(0)
    num_anchors, num_classes = 90, 4
    head = FocalRetinaNetClassificationHead(8, num_anchors=1, num_classes=num_classes)
    assert head.focal_loss.normalization == "per_image"
    logits = (
        torch.randn(3, num_anchors, num_classes, generator=generator, dtype=dtype) * 4
    ).requires_grad_()
    matched = _matched_idxs(num_anchors, generator)
    targets = _targets()

    ours = head.compute_loss(targets, {"cls_logits": logits}, matched)
    (grad_ours,) = torch.autograd.grad(ours, logits)
    reference = RetinaNetClassificationHead.compute_loss(
        head, targets, {"cls_logits": logits}, matched
    )
    (grad_reference,) = torch.autograd.grad(reference, logits)

    # float64 is held to 1e-6 only: DenseFocalLoss forms its per-image weights in float32.
    tol = {"rtol": 1e-5, "atol": 1e-6} if dtype == torch.float32 else {"rtol": 1e-6, "atol": 1e-9}
    torch.testing.assert_close(ours, reference, **tol)
    torch.testing.assert_close(grad_ours, grad_reference, **tol)
    positives = sum(int((m >= 0).sum()) for m in matched)
    assert int(head.focal_loss.last_num_positives) == positives


def test_retinanet_batch_normalization_divides_by_all_positives():
    generator = torch.Generator().manual_seed(1)
    loss = DenseFocalLoss(gamma=0.0, alpha=None, normalization="batch")
    head = FocalRetinaNetClassificationHead(8, num_anchors=1, num_classes=4, focal_loss=loss)
    logits = torch.randn(3, 50, 4, generator=generator)
    matched = _matched_idxs(50, generator)
    targets = _targets()

    value = head.compute_loss(targets, {"cls_logits": logits}, matched)

    # γ=0, no α: plain BCE over the non-ignored anchors, divided by the batch's positives.
    expected, positives = 0.0, 0
    for logits_i, matched_i, target in zip(logits, matched, targets):
        one_hot = torch.zeros_like(logits_i)
        foreground = matched_i >= 0
        one_hot[foreground, target["labels"][matched_i[foreground]]] = 1.0
        valid = matched_i != -2
        expected += F.binary_cross_entropy_with_logits(
            logits_i[valid], one_hot[valid], reduction="sum"
        )
        positives += int(foreground.sum())
    torch.testing.assert_close(value, expected / positives)


def test_gamma_below_one_keeps_gradients_finite():
    # A γ warmup passes through (0, 1), where the textbook (1-p_t)**γ has an infinite derivative.
    head = FocalRetinaNetClassificationHead(8, num_anchors=1, num_classes=4)
    head.focal_loss.set_gamma(0.5)
    logits = torch.tensor([[[30.0, -30.0, 25.0, -40.0]] * 6]).requires_grad_()
    matched = [torch.tensor([0, -1, -1, -2, 0, -1])]
    targets = [{"boxes": torch.tensor([[0.0, 0.0, 4.0, 4.0]]), "labels": torch.tensor([0])}]
    head.compute_loss(targets, {"cls_logits": logits}, matched).backward()
    assert torch.isfinite(logits.grad).all()


def _fcos_inputs(generator: torch.Generator, num_locations: int, num_classes: int):
    cls_logits = (
        torch.randn(3, num_locations, num_classes, generator=generator) * 3
    ).requires_grad_()
    head_outputs = {
        "cls_logits": cls_logits,
        "bbox_regression": torch.rand(3, num_locations, 4, generator=generator) * 2,
        "bbox_ctrness": torch.randn(3, num_locations, 1, generator=generator),
    }
    centres = torch.rand(num_locations, 2, generator=generator) * 64
    anchors = torch.cat([centres - 4, centres + 4], dim=1)
    targets = _targets()
    # As FCOS matches: a location belongs to a box that contains its centre (the first one
    # here), else -1; an image without boxes gets -1 everywhere.
    matched = []
    for target in targets:
        boxes = target["boxes"]
        inside = (
            (centres[:, None, 0] > boxes[None, :, 0])
            & (centres[:, None, 0] < boxes[None, :, 2])
            & (centres[:, None, 1] > boxes[None, :, 1])
            & (centres[:, None, 1] < boxes[None, :, 3])
        )
        first = (
            inside.float().argmax(dim=1)
            if len(boxes)
            else torch.zeros(num_locations, dtype=torch.long)
        )
        matched.append(torch.where(inside.any(dim=1), first, -1))
    assert sum(int((m >= 0).sum()) for m in matched) > 10
    return targets, head_outputs, [anchors] * 3, matched


def test_fcos_losses_equal_torchvision():
    generator = torch.Generator().manual_seed(2)
    head = FocalFCOSHead(32, num_anchors=1, num_classes=4)
    assert head.classification_head.focal_loss.normalization == "batch"
    targets, head_outputs, anchors, matched = _fcos_inputs(generator, 70, 4)
    logits = head_outputs["cls_logits"]

    ours = head.compute_loss(targets, head_outputs, anchors, matched)
    (grad_ours,) = torch.autograd.grad(ours["classification"], logits)
    reference = FCOSHead.compute_loss(head, targets, head_outputs, anchors, matched)
    (grad_reference,) = torch.autograd.grad(reference["classification"], logits)

    assert set(ours) == set(reference) == {"classification", "bbox_regression", "bbox_ctrness"}
    for key in reference:
        assert torch.isfinite(reference[key])
        torch.testing.assert_close(ours[key], reference[key], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(grad_ours, grad_reference, rtol=1e-5, atol=1e-6)


def test_fcos_without_any_object_normalises_by_one():
    head = FocalFCOSHead(32, num_anchors=1, num_classes=2)
    logits = torch.randn(2, 10, 2)
    outputs = {
        "cls_logits": logits,
        "bbox_regression": torch.rand(2, 10, 4),
        "bbox_ctrness": torch.randn(2, 10, 1),
    }
    empty = {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.long)}
    anchors = [torch.tensor([[0.0, 0.0, 8.0, 8.0]]).repeat(10, 1)] * 2
    matched = [torch.full((10,), -1)] * 2
    ours = head.compute_loss([empty, empty], outputs, anchors, matched)
    reference = FCOSHead.compute_loss(head, [empty, empty], outputs, anchors, matched)
    for key in reference:
        torch.testing.assert_close(ours[key], reference[key])


def _images_and_targets() -> tuple[list[torch.Tensor], list[dict[str, torch.Tensor]]]:
    generator = torch.Generator().manual_seed(3)
    images = [torch.rand(3, 64, 64, generator=generator) for _ in range(3)]
    targets = _targets()
    return images, targets


def test_retinanet_detector_losses_equal_torchvision_retinanet():
    ours = DenseDetector(retinanet(num_classes=4, image_size=64, fpn_channels=16)).detector
    reference = RetinaNet(
        ours.backbone,
        num_classes=4,
        min_size=64,
        max_size=64,
        image_mean=ours.transform.image_mean,
        image_std=ours.transform.image_std,
        anchor_generator=ours.anchor_generator,
        head=RetinaNetHead(16, ours.anchor_generator.num_anchors_per_location()[0], 4),
    )
    missing, unexpected = reference.load_state_dict(ours.state_dict(), strict=False)
    assert not missing and all("focal_loss" in key for key in unexpected)
    images, targets = _images_and_targets()
    ours.train()
    reference.train()
    got, expected = ours(images, targets), reference(images, targets)
    assert set(got) == set(expected)
    for key in expected:
        torch.testing.assert_close(got[key], expected[key], rtol=1e-5, atol=1e-6)


def test_fcos_detector_losses_equal_torchvision_fcos():
    # torchvision's regression head: relu box outputs (the default "exp" is the FCOS paper's)
    detector = DenseDetector(
        fcos(num_classes=4, image_size=64, fpn_channels=64, box_activation="relu")
    )
    ours = detector.detector
    reference = FCOS(
        ours.backbone,
        num_classes=4,
        min_size=64,
        max_size=64,
        image_mean=ours.transform.image_mean,
        image_std=ours.transform.image_std,
        anchor_generator=ours.anchor_generator,
        head=FCOSHead(64, 1, 4),
    )
    missing, unexpected = reference.load_state_dict(ours.state_dict(), strict=False)
    assert not missing and all("focal_loss" in key for key in unexpected)
    images, targets = _images_and_targets()
    ours.train()
    reference.train()
    got, expected = ours(images, targets), reference(images, targets)
    assert set(got) == {"classification", "bbox_regression", "bbox_ctrness"} == set(expected)
    assert int(ours.head.classification_head.focal_loss.last_num_positives) > 0
    for key in expected:
        torch.testing.assert_close(got[key], expected[key], rtol=1e-5, atol=1e-6)
