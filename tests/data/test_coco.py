"""CocoDetectionDataModule on a small COCO-format dataset written to ``tmp_path``."""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Any

import pytest
import torch
from PIL import Image

from lightning_focal.data import (
    ClassCountsProvider,
    CocoDetectionDataModule,
    CocoDetectionDataset,
)

# (file name, width, height, RGB fill)
IMAGES = [
    ("a.png", 100, 50, (255, 0, 0)),
    ("b.png", 80, 80, (0, 255, 0)),
    ("c.png", 60, 120, (0, 0, 255)),
    ("empty.png", 40, 40, (128, 128, 128)),
]
# category ids 1, 5, 9 (listed out of order) become labels 0, 1, 2
CATEGORIES = [{"id": 9, "name": "nine"}, {"id": 1, "name": "one"}, {"id": 5, "name": "five"}]
ANNOTATIONS = [
    {"id": 1, "image_id": 10, "category_id": 5, "bbox": [10, 5, 20, 10], "iscrowd": 0},
    {"id": 2, "image_id": 10, "category_id": 9, "bbox": [0, 0, 50, 25], "iscrowd": 0},
    {"id": 3, "image_id": 11, "category_id": 1, "bbox": [8, 16, 40, 24], "iscrowd": 0},
    {"id": 4, "image_id": 11, "category_id": 1, "bbox": [40, 40, 20, 20], "iscrowd": 1},
    {"id": 5, "image_id": 12, "category_id": 9, "bbox": [30, 60, 40, 80], "iscrowd": 0},
    {"id": 6, "image_id": 12, "category_id": 5, "bbox": [1, 1, 0.5, 30], "iscrowd": 0},
]
SIZE = 64


def _coco(annotations: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    return {
        "images": [
            {"id": 10 + i, "file_name": name, "width": w, "height": h}
            for i, (name, w, h, _) in enumerate(IMAGES)
        ],
        "categories": CATEGORIES,
        "annotations": ANNOTATIONS if annotations is None else annotations,
    }


def _write(root: Path, ann: str, folder: str, data: dict[str, Any]) -> None:
    (root / folder).mkdir(parents=True, exist_ok=True)
    for name, width, height, fill in IMAGES:
        Image.new("RGB", (width, height), fill).save(root / folder / name)
    (root / ann).write_text(json.dumps(data))


@pytest.fixture
def coco_root(tmp_path: Path) -> Path:
    _write(tmp_path, "train.json", "train", _coco())
    _write(tmp_path, "val.json", "val", _coco())
    return tmp_path


def _datamodule(root: Path, **kwargs: Any) -> CocoDetectionDataModule:
    return CocoDetectionDataModule(
        str(root), "train.json", "val.json", image_size=SIZE, batch_size=2, **kwargs
    )


def test_labels_remapped_in_sorted_category_order(coco_root: Path) -> None:
    dm = _datamodule(coco_root)
    with pytest.warns(UserWarning, match="dropped 1 degenerate"):
        assert dm.class_names == ["one", "five", "nine"]
    assert dm.num_classes == 3
    with pytest.warns(UserWarning, match=r"val\.json: dropped 1 degenerate"):
        dm.setup("fit")
    labels = [dm.train_set[i][1]["labels"].tolist() for i in range(4)]
    assert labels == [[1, 2], [0], [2], []]


def test_boxes_converted_to_xyxy_and_scaled_with_the_resize(coco_root: Path) -> None:
    with pytest.warns(UserWarning, match="train.json: dropped 1 degenerate"):
        dataset = CocoDetectionDataset(coco_root / "train.json", coco_root / "train", SIZE)
    _, target = dataset[0]  # 100 x 50 -> 64 x 64: x * 0.64, y * 1.28
    expected = torch.tensor([[10, 5, 30, 15], [0, 0, 50, 25]], dtype=torch.float32)
    expected = expected * torch.tensor([0.64, 1.28, 0.64, 1.28])
    assert target["boxes"].dtype == torch.float32
    assert torch.allclose(target["boxes"], expected)
    _, target = dataset[2]  # 60 x 120; the box [30, 60, 70, 140] is clipped to [30, 60, 60, 120]
    expected = torch.tensor([[30 * SIZE / 60, 60 * SIZE / 120, SIZE, SIZE]])
    assert torch.allclose(target["boxes"], expected)


def test_images_resized_to_square_float_tensors(coco_root: Path) -> None:
    with pytest.warns(UserWarning):
        dataset = CocoDetectionDataset(coco_root / "train.json", coco_root / "train", SIZE)
    for index, (_, _, _, fill) in enumerate(IMAGES):
        image, _ = dataset[index]
        assert image.shape == (3, SIZE, SIZE) and image.dtype == torch.float32
        colour = torch.tensor(fill, dtype=torch.float32).view(3, 1, 1) / 255
        assert torch.allclose(image, colour.expand_as(image), atol=1e-6)


def test_crowd_dropped_or_kept_apart(coco_root: Path) -> None:
    with pytest.warns(UserWarning):
        plain = CocoDetectionDataset(coco_root / "train.json", coco_root / "train", SIZE)
        kept = CocoDetectionDataset(
            coco_root / "train.json", coco_root / "train", SIZE, keep_crowd_boxes=True
        )
    _, target = plain[1]  # 80 x 80: scale 0.8
    assert sorted(target) == ["boxes", "labels"]
    assert torch.allclose(target["boxes"], torch.tensor([[8, 16, 48, 40]]) * 0.8)
    _, target = kept[1]
    assert torch.allclose(target["crowd_boxes"], torch.tensor([[40, 40, 60, 60]]) * 0.8)
    assert target["labels"].tolist() == [0]
    assert kept[0][1]["crowd_boxes"].shape == (0, 4)


def test_image_without_annotations_kept_with_empty_target(coco_root: Path) -> None:
    with pytest.warns(UserWarning):
        dataset = CocoDetectionDataset(coco_root / "train.json", coco_root / "train", SIZE)
    assert len(dataset) == 4
    image, target = dataset[3]
    assert image.shape == (3, SIZE, SIZE)
    assert target["boxes"].shape == (0, 4) and target["boxes"].dtype == torch.float32
    assert target["labels"].shape == (0,) and target["labels"].dtype == torch.int64


def test_class_counts_from_non_crowd_training_boxes(coco_root: Path) -> None:
    dm = _datamodule(coco_root)
    with pytest.warns(UserWarning):
        counts = dm.class_counts()
    # one: 1 (its crowd box excluded); five: 1 (the degenerate one dropped); nine: 2
    assert counts.dtype == torch.int64 and counts.tolist() == [1, 1, 2]
    assert isinstance(dm, ClassCountsProvider)
    with pytest.warns(UserWarning, match=r"val\.json"):
        dm.setup("fit")
    labels = torch.cat([dm.train_set[i][1]["labels"] for i in range(len(dm.train_set))])
    assert torch.equal(counts, torch.bincount(labels, minlength=3))


def test_datamodule_batches_follow_the_contract(coco_root: Path) -> None:
    _write(coco_root, "test.json", "test", _coco())
    dm = _datamodule(coco_root, test_ann="test.json")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        dm.setup(None)
    for loader in (dm.train_dataloader(), dm.val_dataloader(), dm.test_dataloader()):
        batches = list(loader)
        assert [images.shape for images, _ in batches] == [(2, 3, SIZE, SIZE)] * 2
        for images, targets in batches:
            assert images.dtype == torch.float32 and 0 <= images.min() <= images.max() <= 1
            assert isinstance(targets, list) and len(targets) == 2
            for target in targets:
                assert target["boxes"].dtype == torch.float32
                assert target["labels"].dtype == torch.int64
    val_targets = [t for _, targets in dm.val_dataloader() for t in targets]
    assert [t["labels"].tolist() for t in val_targets] == [[1, 2], [0], [2], []]


def test_no_test_split_without_test_ann(coco_root: Path) -> None:
    dm = _datamodule(coco_root)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        dm.setup("test")
    with pytest.raises(RuntimeError, match="no test_ann"):
        dm.test_dataloader()


def test_missing_annotation_file(coco_root: Path) -> None:
    dm = CocoDetectionDataModule(str(coco_root), "nope.json", "val.json")
    with pytest.raises(FileNotFoundError, match=r"nope\.json"):
        dm.class_counts()


def test_missing_image_folder(coco_root: Path) -> None:
    dm = _datamodule(coco_root, train_images="pictures")
    with pytest.raises(FileNotFoundError, match=r"image folder .*pictures.*train\.json"):
        dm.setup("fit")


def test_missing_image_file(coco_root: Path) -> None:
    (coco_root / "train" / "b.png").unlink()
    with pytest.warns(UserWarning):
        dataset = CocoDetectionDataset(coco_root / "train.json", coco_root / "train", SIZE)
    with pytest.raises(FileNotFoundError, match=r"b\.png.*image id 11"):
        dataset[1]


def test_unknown_image_id(coco_root: Path) -> None:
    bad = [*ANNOTATIONS, {"id": 7, "image_id": 99, "category_id": 1, "bbox": [0, 0, 5, 5]}]
    (coco_root / "bad.json").write_text(json.dumps(_coco(bad)))
    with pytest.raises(ValueError, match=r"bad\.json: annotation 7 refers to unknown image_id 99"):
        CocoDetectionDataset(coco_root / "bad.json", coco_root / "train")


def test_unknown_category_id(coco_root: Path) -> None:
    bad = [*ANNOTATIONS, {"id": 8, "image_id": 10, "category_id": 7, "bbox": [0, 0, 5, 5]}]
    (coco_root / "bad.json").write_text(json.dumps(_coco(bad)))
    with pytest.raises(
        ValueError, match=r"bad\.json: annotation 8 refers to unknown category_id 7"
    ):
        CocoDetectionDataset(coco_root / "bad.json", coco_root / "train")


def test_val_category_unknown_to_train(coco_root: Path) -> None:
    val = _coco([{"id": 1, "image_id": 10, "category_id": 4, "bbox": [0, 0, 5, 5]}])
    val["categories"] = [*CATEGORIES, {"id": 4, "name": "four"}]
    (coco_root / "val.json").write_text(json.dumps(val))
    dm = _datamodule(coco_root)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(ValueError, match=r"val\.json: category_id 4 .* not among the training"):
            dm.setup("fit")


def test_malformed_file(coco_root: Path) -> None:
    (coco_root / "broken.json").write_text("{not json")
    with pytest.raises(ValueError, match=r"broken\.json is not valid JSON"):
        CocoDetectionDataset(coco_root / "broken.json", coco_root / "train")
    (coco_root / "partial.json").write_text(json.dumps({"images": []}))
    with pytest.raises(ValueError, match=r"partial\.json has no \['annotations', 'categories'\]"):
        CocoDetectionDataset(coco_root / "partial.json", coco_root / "train")
