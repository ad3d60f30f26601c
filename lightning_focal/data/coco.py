"""COCO-format detection data (the user's own): annotation JSON files plus image folders.

The annotation files are read with the standard library's ``json``; pycocotools is not
needed to load data (torchmetrics' ``MeanAveragePrecision`` needs it, or faster-coco-eval,
to evaluate). PIL is imported when the first image is read.
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor
from torch.utils.data import Dataset

from lightning_focal.data._loaders import SplitsDataModule, check_loader_args
from lightning_focal.data.detection_utils import detection_collate

__all__ = ["CocoDetectionDataModule", "CocoDetectionDataset"]

Box = tuple[float, float, float, float]


@dataclass(frozen=True)
class _CocoImage:
    image_id: int
    file_name: str
    boxes: tuple[Box, ...]  # xyxy, pixels of the stored image
    labels: tuple[int, ...]
    crowd_boxes: tuple[Box, ...]


def _load_json(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise FileNotFoundError(f"COCO annotation file {path} not found")
    try:
        with path.open(encoding="utf-8") as f:
            data = json.load(f)
    except json.JSONDecodeError as error:
        raise ValueError(f"COCO annotation file {path} is not valid JSON: {error}") from error
    if not isinstance(data, dict):
        raise ValueError(f"COCO annotation file {path} must hold a JSON object")
    missing = [key for key in ("images", "annotations", "categories") if key not in data]
    if missing:
        raise ValueError(f"COCO annotation file {path} has no {missing} entries")
    return data


def _file_categories(path: Path, data: dict[str, Any]) -> dict[int, str]:
    categories: dict[int, str] = {}
    for category in data["categories"]:
        category_id = int(category["id"])
        if category_id in categories:
            raise ValueError(f"{path}: category id {category_id} appears twice")
        categories[category_id] = str(category.get("name", category_id))
    return categories


def _parse(
    path: Path, data: dict[str, Any], label_of: Mapping[int, int]
) -> tuple[list[_CocoImage], int]:
    """Images with their boxes and labels; also the number of degenerate boxes dropped."""
    file_categories = _file_categories(path, data)
    records: dict[int, dict[str, Any]] = {}
    for image in data["images"]:
        image_id = int(image["id"])
        if image_id in records:
            raise ValueError(f"{path}: image id {image_id} appears twice")
        records[image_id] = {
            "file_name": str(image["file_name"]),
            "width": image.get("width"),
            "height": image.get("height"),
            "boxes": [],
            "labels": [],
            "crowd": [],
        }
    degenerate = 0
    for annotation in data["annotations"]:
        annotation_id = annotation.get("id", "?")
        image_id = int(annotation["image_id"])
        if image_id not in records:
            raise ValueError(
                f"{path}: annotation {annotation_id} refers to unknown image_id {image_id}"
            )
        category_id = int(annotation["category_id"])
        if category_id not in file_categories:
            raise ValueError(
                f"{path}: annotation {annotation_id} refers to unknown category_id {category_id}"
            )
        if category_id not in label_of:
            raise ValueError(
                f"{path}: category_id {category_id} of annotation {annotation_id} is not "
                f"among the training categories {sorted(label_of)}"
            )
        record = records[image_id]
        x, y, w, h = (float(v) for v in annotation["bbox"])
        x0, y0, x1, y1 = x, y, x + w, y + h
        if record["width"] is not None and record["height"] is not None:
            width, height = float(record["width"]), float(record["height"])
            x0, x1 = min(max(x0, 0.0), width), min(max(x1, 0.0), width)
            y0, y1 = min(max(y0, 0.0), height), min(max(y1, 0.0), height)
        if annotation.get("iscrowd", 0):
            record["crowd"].append((x0, y0, x1, y1))
        elif x1 - x0 <= 1.0 or y1 - y0 <= 1.0:
            degenerate += 1
        else:
            record["boxes"].append((x0, y0, x1, y1))
            record["labels"].append(label_of[category_id])
    images = [
        _CocoImage(
            image_id,
            record["file_name"],
            tuple(record["boxes"]),
            tuple(record["labels"]),
            tuple(record["crowd"]),
        )
        for image_id, record in records.items()
    ]
    return images, degenerate


def _box_tensor(boxes: tuple[Box, ...], scale_x: float, scale_y: float) -> Tensor:
    scale = torch.tensor([scale_x, scale_y, scale_x, scale_y], dtype=torch.float32)
    return torch.tensor(boxes, dtype=torch.float32).view(-1, 4) * scale


class CocoDetectionDataset(Dataset[tuple[Tensor, dict[str, Tensor]]]):
    """One split of a COCO-format dataset, resized to square images, as detection samples.

    The annotation file is read once, in the constructor, with ``json``:

    - labels: category ids are mapped to contiguous 0-based labels in sorted id order
      (ids 1, 5, 9 become labels 0, 1, 2); ``categories`` (id to name) sets the mapping,
      by default the file's own categories, so that val and test can use train's;
    - boxes: COCO ``[x, y, w, h]`` become ``xyxy``, clipped to the image's ``width`` and
      ``height`` when the file gives them; boxes of width or height <= 1 pixel after
      clipping are dropped, with one ``warnings.warn`` per file giving the count;
    - crowd annotations (``iscrowd: 1``) are not targets; with ``keep_crowd_boxes`` they
      come in a separate ``"crowd_boxes"`` entry (float32 ``(k, 4)``), for evaluators that
      ignore detections on crowd regions;
    - images without annotations are kept, with empty targets;
    - an annotation pointing to an unknown image id or category id raises ``ValueError``
      naming the file.

    Each item is read with PIL, converted to RGB and resized (bilinear) to
    ``image_size x image_size``: a plain square resize that does not keep the aspect ratio
    (no letterboxing); boxes are scaled by ``image_size / width`` and
    ``image_size / height`` of the image as stored.

    Args:
        ann_file: COCO-format annotation JSON file.
        image_dir: folder holding the images named by ``file_name``.
        image_size: side of the square output images.
        categories: category id to name, defining the labels; ``None`` for the file's own.
        keep_crowd_boxes: add ``"crowd_boxes"`` to each target.

    Raises:
        FileNotFoundError: for a missing annotation file or image folder (at construction)
            or image file (when read).
        ValueError: for a malformed file, duplicate ids, or an annotation pointing to an
            unknown image id or category id.

    Example:
        >>> import json, tempfile
        >>> from pathlib import Path
        >>> from PIL import Image
        >>> from lightning_focal.data import CocoDetectionDataset
        >>> tmp = tempfile.TemporaryDirectory()
        >>> root = Path(tmp.name)
        >>> Image.new("RGB", (200, 100)).save(root / "a.png")
        >>> coco = {"images": [{"id": 1, "file_name": "a.png", "width": 200, "height": 100}],
        ...         "categories": [{"id": 3, "name": "cat"}, {"id": 7, "name": "dog"}],
        ...         "annotations": [{"id": 1, "image_id": 1, "category_id": 7,
        ...                          "bbox": [20, 10, 50, 40], "iscrowd": 0}]}
        >>> _ = (root / "ann.json").write_text(json.dumps(coco))
        >>> dataset = CocoDetectionDataset(root / "ann.json", root, image_size=64)
        >>> image, target = dataset[0]
        >>> dataset.class_names, image.shape, target["labels"], target["boxes"]
        (['cat', 'dog'], torch.Size([3, 64, 64]), tensor([1]),
         tensor([[ 6.4000,  6.4000, 22.4000, 32.0000]]))
        >>> tmp.cleanup()
    """

    def __init__(
        self,
        ann_file: str | Path,
        image_dir: str | Path,
        image_size: int = 512,
        categories: Mapping[int, str] | None = None,
        keep_crowd_boxes: bool = False,
    ) -> None:
        if image_size < 1:
            raise ValueError(f"image_size must be at least 1, got {image_size}")
        self.ann_file = Path(ann_file)
        self.image_dir = Path(image_dir)
        self.image_size = image_size
        self.keep_crowd_boxes = keep_crowd_boxes
        data = _load_json(self.ann_file)
        if not self.image_dir.is_dir():
            raise FileNotFoundError(
                f"image folder {self.image_dir} (for annotation file {self.ann_file}) not found"
            )
        if categories is None:
            categories = _file_categories(self.ann_file, data)
        self.category_ids: list[int] = sorted(int(c) for c in categories)
        self.class_names: list[str] = [str(categories[c]) for c in self.category_ids]
        label_of = {category_id: label for label, category_id in enumerate(self.category_ids)}
        self._images, degenerate = _parse(self.ann_file, data, label_of)
        if degenerate:
            warnings.warn(
                f"{self.ann_file}: dropped {degenerate} degenerate boxes (width or height "
                f"<= 1 pixel)",
                stacklevel=2,
            )

    @property
    def num_classes(self) -> int:
        """Number of categories (no background class)."""
        return len(self.category_ids)

    @property
    def categories(self) -> dict[int, str]:
        """Category id to name, in label order."""
        return dict(zip(self.category_ids, self.class_names))

    def class_counts(self) -> Tensor:
        """Non-crowd boxes per class (those that become targets), int64 ``(num_classes,)``."""
        counts = torch.zeros(self.num_classes, dtype=torch.int64)
        for image in self._images:
            for label in image.labels:
                counts[label] += 1
        return counts

    def __len__(self) -> int:
        return len(self._images)

    def __getitem__(self, index: int) -> tuple[Tensor, dict[str, Tensor]]:
        """Image ``(3, S, S)`` float32 in ``[0, 1]`` and its target dict."""
        import numpy as np
        from PIL import Image

        record = self._images[index]
        path = self.image_dir / record.file_name
        if not path.is_file():
            raise FileNotFoundError(
                f"image file {path} (image id {record.image_id} of {self.ann_file}) not found"
            )
        with Image.open(path) as stored:
            width, height = stored.size
            resized = stored.convert("RGB").resize(
                (self.image_size, self.image_size), Image.Resampling.BILINEAR
            )
        pixels = torch.from_numpy(np.asarray(resized, dtype=np.uint8).copy())
        image = pixels.permute(2, 0, 1).to(torch.float32).div_(255.0)
        scale_x, scale_y = self.image_size / width, self.image_size / height
        target = {
            "boxes": _box_tensor(record.boxes, scale_x, scale_y),
            "labels": torch.tensor(record.labels, dtype=torch.int64),
        }
        if self.keep_crowd_boxes:
            target["crowd_boxes"] = _box_tensor(record.crowd_boxes, scale_x, scale_y)
        return image, target


class CocoDetectionDataModule(SplitsDataModule):
    """A COCO-format detection dataset (annotation JSON + image folders) as a datamodule.

    Paths are relative to ``root`` (absolute paths work too): ``root/train_ann`` with images
    in ``root/train_images``, likewise for val and, when ``test_ann`` is given, test (images
    in ``root/test_images``, ``"test"`` by default). Each split is a
    :class:`CocoDetectionDataset`; the labels of every split come from the categories of the
    train file (sorted category ids to labels 0, 1, ...), and an annotation of val or test
    with a category id unknown to train raises ``ValueError``.

    Images are resized to ``image_size x image_size`` without keeping the aspect ratio
    (boxes scaled to match), so they stack into batches of the detection contract of
    :mod:`lightning_focal.data.detection_utils`. :meth:`class_counts` counts the training
    boxes that become targets (crowd and degenerate boxes excluded) from the JSON alone; the
    train file is parsed once and kept.
    ``train_dataloader`` shuffles with a generator seeded with ``seed``; val and test keep
    the annotation file's image order.

    Args:
        root: folder the other paths are relative to.
        train_ann: train annotation file.
        val_ann: validation annotation file.
        test_ann: test annotation file, or ``None`` for no test split.
        train_images: train image folder.
        val_images: validation image folder.
        test_images: test image folder; ``None`` means ``"test"``.
        image_size: side of the square images fed to the model.
        batch_size: images per batch.
        num_workers: ``DataLoader`` workers.
        seed: seed of the train shuffle.
        keep_crowd_boxes: add each image's crowd boxes as ``"crowd_boxes"`` to its target.

    Example:
        >>> from lightning_focal.data import CocoDetectionDataModule
        >>> dm = CocoDetectionDataModule("data/coco", "annotations/instances_train2017.json",
        ...                              "annotations/instances_val2017.json",
        ...                              train_images="train2017", val_images="val2017")
        >>> dm.hparams.image_size, dm.hparams.batch_size
        (512, 8)
    """

    _collate_fn = staticmethod(detection_collate)

    def __init__(
        self,
        root: str,
        train_ann: str,
        val_ann: str,
        test_ann: str | None = None,
        train_images: str = "train",
        val_images: str = "val",
        test_images: str | None = None,
        image_size: int = 512,
        batch_size: int = 8,
        num_workers: int = 0,
        seed: int = 0,
        keep_crowd_boxes: bool = False,
    ) -> None:
        super().__init__()
        if image_size < 1:
            raise ValueError(f"image_size must be at least 1, got {image_size}")
        check_loader_args(batch_size, num_workers)
        self.save_hyperparameters()
        self.train_set: CocoDetectionDataset | None = None
        self.val_set: CocoDetectionDataset | None = None
        self.test_set: CocoDetectionDataset | None = None
        self._train: CocoDetectionDataset | None = None

    def _split(
        self, ann: str, images: str, categories: Mapping[int, str] | None
    ) -> CocoDetectionDataset:
        root = Path(self.hparams.root)
        return CocoDetectionDataset(
            root / ann,
            root / images,
            image_size=self.hparams.image_size,
            categories=categories,
            keep_crowd_boxes=self.hparams.keep_crowd_boxes,
        )

    def _train_dataset(self) -> CocoDetectionDataset:
        if self._train is None:
            hp = self.hparams
            self._train = self._split(hp.train_ann, hp.train_images, None)
        return self._train

    @property
    def num_classes(self) -> int:
        """Number of categories of the train file (no background class)."""
        return self._train_dataset().num_classes

    @property
    def class_names(self) -> list[str]:
        """Category names of the train file in sorted category-id order, index = label."""
        return list(self._train_dataset().class_names)

    def class_counts(self) -> Tensor:
        """Target boxes per class in the train split, int64 ``(num_classes,)``; reads no image."""
        return self._train_dataset().class_counts()

    def prepare_data(self) -> None:
        """Nothing to do: the data is the user's, already on disk."""

    def setup(self, stage: str | None = None) -> None:
        """Read the annotation files of the splits the stage needs (each once).

        Args:
            stage: ``"fit"`` reads train and val, ``"validate"`` val, ``"test"`` test,
                ``None`` all of them; train is always read, for the category mapping.
        """
        hp = self.hparams
        categories = self._train_dataset().categories
        if stage in ("fit", None):
            self.train_set = self._train_dataset()
        if stage in ("fit", "validate", None) and self.val_set is None:
            self.val_set = self._split(hp.val_ann, hp.val_images, categories)
        if stage in ("test", None) and self.test_set is None and hp.test_ann is not None:
            test_images = "test" if hp.test_images is None else hp.test_images
            self.test_set = self._split(hp.test_ann, test_images, categories)

    def _missing_split_message(self, split: str) -> str:
        hint = (
            " (no test_ann was given)" if split == "test" and self.hparams.test_ann is None else ""
        )
        return f"CocoDetectionDataModule: no {split} split{hint}; call setup() first"
