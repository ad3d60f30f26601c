"""Pictures of detections: boxes drawn on images, and a callback that saves and logs them."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import lightning.pytorch as pl
import torch
from torch import Tensor
from typing_extensions import override

from .callbacks._common import ValidationCounter

if TYPE_CHECKING:
    from PIL import Image

__all__ = ["DetectionSamples", "draw_detections"]

# matplotlib's tab10, so class colours match the project's other plots.
PALETTE = (
    "#1f77b4",
    "#ff7f0e",
    "#2ca02c",
    "#d62728",
    "#9467bd",
    "#8c564b",
    "#e377c2",
    "#7f7f7f",
    "#bcbd22",
    "#17becf",
)


def _to_uint8(image: Tensor) -> Tensor:
    image = image.detach().cpu()
    if image.dim() != 3 or image.shape[0] not in (1, 3):
        raise ValueError(f"expected a (3, H, W) or (1, H, W) image, got shape {tuple(image.shape)}")
    if image.shape[0] == 1:
        image = image.expand(3, -1, -1)
    if image.dtype != torch.uint8:
        image = (image.float().clamp(0.0, 1.0) * 255.0).round().to(torch.uint8)
    return image.contiguous()


def _names(labels: Tensor, class_names: Sequence[str] | None) -> list[str]:
    return [
        class_names[c] if class_names is not None and 0 <= c < len(class_names) else str(c)
        for c in labels.tolist()
    ]


def _panel(image: Tensor, boxes: Tensor, labels: Tensor, texts: list[str], scale: int) -> Tensor:
    from torchvision.utils import draw_bounding_boxes

    if boxes.numel() == 0:
        return image
    colors = [PALETTE[int(c) % len(PALETTE)] for c in labels.tolist()]
    return draw_bounding_boxes(
        image, boxes.detach().cpu().float() * scale, texts, colors=colors, width=2, fill_labels=True
    )


def draw_detections(
    image: Tensor,
    boxes: Tensor,
    labels: Tensor,
    scores: Tensor | None = None,
    class_names: Sequence[str] | None = None,
    gt_boxes: Tensor | None = None,
    gt_labels: Tensor | None = None,
    *,
    min_score: float = 0.0,
    min_size: int = 256,
) -> Image.Image:
    """Predicted boxes, labelled "class score" in per-class colours, on an image.

    With ``gt_boxes`` the picture has two panels: the ground truth on the left, the
    predictions on the right. Small images are enlarged by an integer factor (nearest
    neighbour) until their longer side reaches ``min_size``, so labels stay readable.

    Args:
        image: (3, H, W) or (1, H, W), float in [0, 1] or uint8.
        boxes: (n, 4) absolute xyxy in the image's pixels.
        labels: (n,) class indices.
        scores: (n,) confidences, or ``None``.
        class_names: names by class index (default: the index).
        gt_boxes, gt_labels: optional ground truth, (m, 4) and (m,).
        min_score: predictions below it are not drawn.
        min_size: enlarge until the longer side is at least this many pixels.

    Returns:
        A ``PIL.Image.Image`` (RGB).

    Example:
        >>> import torch
        >>> picture = draw_detections(torch.zeros(3, 64, 64), torch.tensor([[4.0, 4.0, 30.0, 30.0]]),
        ...                           torch.tensor([1]), torch.tensor([0.9]), ["square", "disc"],
        ...                           gt_boxes=torch.tensor([[5.0, 5.0, 31.0, 31.0]]), gt_labels=torch.tensor([1]))
        >>> picture.size
        (516, 256)
    """
    from torchvision.transforms.functional import to_pil_image

    picture = _to_uint8(image)
    scale = max(1, math.ceil(min_size / max(picture.shape[1:])))
    if scale > 1:
        picture = picture.repeat_interleave(scale, dim=1).repeat_interleave(scale, dim=2)
    boxes, labels = boxes.reshape(-1, 4), labels.reshape(-1).long().cpu()
    if scores is not None:
        scores = scores.reshape(-1).detach().cpu().float()
        keep = scores >= min_score
        boxes, labels, scores = boxes[keep.to(boxes.device)], labels[keep], scores[keep]
        texts = [f"{name} {s:.2f}" for name, s in zip(_names(labels, class_names), scores.tolist())]
    else:
        texts = _names(labels, class_names)
    predicted = _panel(picture, boxes, labels, texts, scale)
    if gt_boxes is None:
        return to_pil_image(predicted)
    gt_labels = (
        gt_labels.reshape(-1).long().cpu()
        if gt_labels is not None
        else torch.zeros(len(gt_boxes), dtype=torch.long)
    )
    truth = _panel(
        picture, gt_boxes.reshape(-1, 4), gt_labels, _names(gt_labels, class_names), scale
    )
    gap = torch.full((3, picture.shape[1], 4), 255, dtype=torch.uint8)
    return to_pil_image(torch.cat([truth, gap, predicted], dim=2))


class DetectionSamples(ValidationCounter):
    """Draw the predictions on the first images of the first validation batch, at each validation.

    The module's ``validation_step`` should return the predictions (a list of dicts with
    ``boxes``, ``labels``, ``scores``, as :class:`~lightning_focal.models.DenseDetector`
    does); otherwise the callback runs ``pl_module(images)`` on them. Pictures (ground truth
    | predictions, see :func:`draw_detections`) are saved as PNG under ``output_dir``
    (default ``<trainer.log_dir>/detections``) and logged as ``val/detections`` to every
    logger with a ``log_image(key, images, step)`` method, such as ``WandbLogger``. Only rank 0
    draws; nothing is drawn during the sanity check.

    It counts validations, not epochs, so it draws whatever ``check_val_every_n_epoch`` or
    ``val_check_interval`` the trainer has; the count is kept in the checkpoint.

    Args:
        num_images: pictures per validation.
        every_n_validations: draw at every n-th validation (1: at each).
        output_dir: where to save the PNGs.
        min_score: predictions below this confidence are not drawn.
        class_names: names by class index (default: the module's ``class_names``).

    Example:
        >>> DetectionSamples(num_images=2).num_images
        2
    """

    def __init__(
        self,
        num_images: int = 4,
        every_n_validations: int = 1,
        output_dir: str | Path | None = None,
        min_score: float = 0.3,
        class_names: Sequence[str] | None = None,
    ) -> None:
        if num_images < 1:
            raise ValueError(f"num_images must be >= 1, got {num_images}")
        super().__init__(every_n_validations)
        self.num_images = num_images
        self.output_dir = Path(output_dir) if output_dir is not None else None
        self.min_score = min_score
        self.class_names = list(class_names) if class_names is not None else None
        self.saved: list[Path] = []
        self._directory: Path | None = None
        self._sample: tuple[Tensor, list[dict[str, Tensor]], list[dict[str, Tensor]]] | None = None

    @override
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if self.output_dir is not None:
            self._directory = self.output_dir
        else:
            # trainer.log_dir broadcasts: resolve it here, where every rank calls it.
            self._directory = Path(trainer.log_dir or trainer.default_root_dir) / "detections"

    @override
    def on_validation_batch_end(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        if (
            batch_idx != 0
            or dataloader_idx != 0
            or not trainer.is_global_zero
            or not self._due(trainer)
        ):
            return
        images, targets = batch[0], batch[1]
        images = list(images[: self.num_images])
        is_predictions = (
            isinstance(outputs, list) and bool(outputs) and isinstance(outputs[0], dict)
        )
        if not is_predictions:
            with torch.no_grad():
                outputs = pl_module(torch.stack(images) if isinstance(batch[0], Tensor) else images)
        n = len(images)
        self._sample = (
            torch.stack([im.detach().cpu() for im in images]),
            [
                {k: v.detach().cpu() for k, v in t.items() if isinstance(v, Tensor)}
                for t in targets[:n]
            ],
            [{k: v.detach().cpu() for k, v in p.items()} for p in outputs[:n]],
        )

    @override
    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._sample is None or not trainer.is_global_zero or not self._due(trainer):
            return
        images, targets, predictions = self._sample
        self._sample = None
        names = self.class_names or getattr(pl_module, "class_names", None)
        pictures = [
            draw_detections(
                image,
                pred["boxes"],
                pred["labels"],
                pred.get("scores"),
                names,
                gt_boxes=target.get("boxes"),
                gt_labels=target.get("labels"),
                min_score=self.min_score,
            )
            for image, target, pred in zip(images, targets, predictions)
        ]
        directory = self._directory or Path(trainer.default_root_dir) / "detections"
        directory.mkdir(parents=True, exist_ok=True)
        for i, picture in enumerate(pictures):
            path = (
                directory
                / f"epoch{trainer.current_epoch:03d}-step{trainer.global_step:06d}-{i}.png"
            )
            picture.save(path)
            self.saved.append(path)
        for logger in trainer.loggers:
            if callable(
                getattr(logger, "log_image", None)
            ):  # WandbLogger's log_image(key, images, step)
                logger.log_image(
                    key="val/detections",
                    images=pictures,
                    step=trainer.global_step,
                    caption=[f"ground truth | predictions (score >= {self.min_score})"]
                    * len(pictures),
                )
