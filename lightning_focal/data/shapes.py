"""Synthetic dense-detection data: a few filled shapes on cluttered, noisy backgrounds.

Focal loss was made for dense detection, where a handful of objects sit among tens of
thousands of background locations. ``shapes`` gives that setting offline and in seconds:
small images with one to three labelled objects (filled squares, disks, triangles, with
imbalanced class frequencies), unlabelled look-alike distractors (hollow outlines of the
same shapes, crosses) and a background with gradients, faint lines and blobs and pixel
noise, so that a detector must learn what is *not* an object.

Every item is a pure function of ``(seed, index)``: it is drawn with its own
``torch.Generator``, so any worker or DDP rank produces the same item and nothing but the
parameters is stored. The layout of an item (which shapes, where, what colour) is drawn
first from the item's generator as one fixed-length block of uniforms, and only then is the
image drawn; so labels and boxes, and :meth:`ShapesDataset.class_counts`, come without
drawing a pixel.
"""

from __future__ import annotations

import bisect
import functools
import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.data import Dataset

from lightning_focal.data._loaders import SplitsDataModule, check_loader_args, mix_seed
from lightning_focal.data.detection_utils import detection_collate

__all__ = ["PlacedShape", "ShapesDataModule", "ShapesDataset", "ShapesLayout"]

_SHAPES = ("square", "disk", "triangle", "diamond")
_MIN_CONTRAST = 0.4  # one colour channel differs this much from the background gradient
_GAP = 1  # free pixels kept between any two shapes, so that every box stays tight
_PLACEMENT_TRIES = 20
_HEADER = 10  # n_objects, n_distractors, n_clutter, base rgb, gradient angle, gradient rgb
_SHAPE_SLOT = 7 + 2 * _PLACEMENT_TRIES  # kind, size, rotation, channel, rgb, tries (x, y)
_CLUTTER_SLOT = 8  # kind, x, y, angle or width, rgb amplitude, spare


@dataclass(frozen=True)
class PlacedShape:
    """One shape of a :class:`ShapesLayout`, in integer pixel coordinates.

    The shape fills exactly the square box ``(x0, y0, x0 + size, y0 + size)`` (``xyxy``,
    pixel edges): every border row and column of the box holds at least one of its pixels.

    Attributes:
        kind: ``"square"``, ``"disk"``, ``"triangle"`` or ``"diamond"`` for objects;
            ``"hollow_<shape>"`` or ``"cross"`` for distractors.
        label: class index of an object; -1 for a distractor.
        x0: left column of the box.
        y0: top row of the box.
        size: side of the box in pixels.
        rotation: quarter turns of the shape (seen only on triangles).
        colour: RGB in ``[0, 1]``.

    Example:
        >>> from lightning_focal.data import PlacedShape
        >>> PlacedShape("disk", 1, x0=3, y0=5, size=10, rotation=0, colour=(1.0, 0.0, 0.0)).box
        (3, 5, 13, 15)
    """

    kind: str
    label: int
    x0: int
    y0: int
    size: int
    rotation: int
    colour: tuple[float, float, float]

    @property
    def box(self) -> tuple[int, int, int, int]:
        """The tight box ``(x0, y0, x1, y1)`` in pixel edges."""
        return (self.x0, self.y0, self.x0 + self.size, self.y0 + self.size)


@dataclass(frozen=True)
class ShapesLayout:
    """What an item of :class:`ShapesDataset` shows, before any pixel is drawn.

    Attributes:
        objects: the labelled shapes, in drawing order.
        distractors: the unlabelled look-alikes; they never overlap an object.
        background: base RGB, gradient angle (radians) and gradient RGB amplitude.
        clutter: one tuple per faint line or blob (kind, x, y, angle or width, RGB amplitude).

    Example:
        >>> from lightning_focal.data import ShapesDataset
        >>> layout = ShapesDataset(num_images=8, seed=0).layout(1)
        >>> layout.labels, layout.boxes
        (tensor([1, 1, 0]), tensor([[52., 37., 60., 45.],
                [15., 12., 34., 31.],
                [24., 43., 39., 58.]]))
        >>> [shape.kind for shape in layout.distractors]
        ['hollow_triangle', 'cross']
    """

    objects: tuple[PlacedShape, ...]
    distractors: tuple[PlacedShape, ...]
    background: tuple[float, ...]
    clutter: tuple[tuple[float, ...], ...]

    @property
    def labels(self) -> Tensor:
        """Class indices of the objects, int64 ``(n,)``."""
        return torch.tensor([shape.label for shape in self.objects], dtype=torch.int64)

    @property
    def boxes(self) -> Tensor:
        """Tight boxes of the objects, float32 ``(n, 4)`` in absolute pixel ``xyxy``."""
        return torch.tensor([shape.box for shape in self.objects], dtype=torch.float32).view(-1, 4)


def _uniform_int(u: float, low: int, high: int) -> int:
    """An integer in ``[low, high]`` from a uniform ``u`` in ``[0, 1)``."""
    return min(low + int(u * (high - low + 1)), high)


@functools.lru_cache(maxsize=2048)
def _shape_mask(kind: str, size: int, rotation: int) -> Tensor:
    """Boolean ``(size, size)`` mask of a shape; every border row and column is touched.

    Pixel centres sit at half-integers; the tests of each shape are chosen so that the
    outermost rows and columns hold at least one pixel for any ``size >= 1``. Cached and
    shared: never write into the result.
    """
    centre = torch.arange(size, dtype=torch.float32) + 0.5 - size / 2
    dx = centre.view(1, size).abs()
    dy = centre.view(size, 1)
    half = size / 2
    base = kind.removeprefix("hollow_")
    if base == "square":
        mask = torch.ones(size, size, dtype=torch.bool)
    elif base == "disk":
        mask = dx**2 + dy**2 <= half**2
    elif base == "diamond":
        mask = dx + dy.abs() <= half
    elif base == "triangle":
        # apex row (dy + half = 0.5) keeps |dx| <= 0.5, base row keeps every column
        mask = dx <= (dy + half + 0.5) / 2
        mask = torch.rot90(mask, rotation)
    elif base == "cross":
        arm = max(1.0, size / 8)
        mask = (dx <= arm) | (dy.abs() <= arm)
    else:
        raise ValueError(f"unknown shape kind {kind!r}")
    if kind.startswith("hollow_"):
        thickness = max(1, size // 7)
        padded = F.pad(mask.float()[None, None], (thickness,) * 4, value=0.0)
        eroded = 1.0 - F.max_pool2d(1.0 - padded, 2 * thickness + 1, stride=1)
        mask = mask & (eroded[0, 0] < 0.5)
    return mask


class ShapesDataset(Dataset[tuple[Tensor, dict[str, Tensor]]]):
    """Deterministic images of filled shapes with tight boxes; item ``i`` depends on ``(seed, i)``.

    Each item is drawn with its own ``torch.Generator`` seeded from ``(seed, i)``, in this
    order:

    1. the layout, from one block of uniforms of fixed length (see :meth:`layout`):

       - ``1..max_objects`` objects (uniform), each of a class drawn with probabilities
         ``class_weights`` (class ``c`` is ``class_names[c]``: square, disk, triangle,
         diamond), a side ``min_size..max_size`` (uniform), a random rotation (triangles)
         and a random colour, one channel of which is set ``0.4`` above or below the
         background gradient at the shape's centre so that every object stands out;
       - ``0..max_distractors`` unlabelled distractors of the same sizes and colours:
         hollow outlines of the class shapes, or crosses;
       - positions: each shape takes the first of 20 uniform candidate positions whose box
         keeps a 1-pixel gap to every shape placed before it (objects first), and is
         dropped when none does, so no two shapes overlap and every box stays tight (the
         first object always fits);
       - the background: a base colour in ``[0.35, 0.65]`` per channel plus a linear
         gradient in a random direction (amplitude up to 0.15 per channel), plus
         ``0..max_clutter`` faint lines and Gaussian blobs (amplitude up to 0.15);

    2. the pixels: background, then the distractors and objects painted over it, then
       Gaussian noise of standard deviation ``noise_std``, clipped to ``[0, 1]``. The noise
       is drawn whatever ``noise_std`` is (which only scales it), so items with different
       ``noise_std`` share their layout and noise pattern.

    Boxes are the exact bounding boxes of the painted objects in pixel edges
    (``x1 = x0 + size``), float32 ``xyxy``; labels are 0-based int64.

    Args:
        num_images: number of items.
        seed: seed of the items; different seeds give unrelated items.
        image_size: side of the square images.
        num_classes: object classes, 1 to 4 (square, disk, triangle, diamond).
        class_weights: relative class frequencies, one per class; ``None`` for uniform.
        max_objects: most labelled objects per image, at least 1.
        max_distractors: most unlabelled distractors per image.
        min_size: smallest shape side in pixels.
        max_size: largest shape side in pixels, at most ``image_size``.
        noise_std: standard deviation of the pixel noise; 0 for clean images.
        max_clutter: most background lines and blobs per image.

    Example:
        >>> from lightning_focal.data import ShapesDataset
        >>> dataset = ShapesDataset(num_images=4, seed=0)
        >>> image, target = dataset[0]
        >>> image.shape, image.dtype, target["labels"], target["boxes"].shape
        (torch.Size([3, 64, 64]), torch.float32, tensor([0, 0, 2]), torch.Size([3, 4]))
        >>> torch.equal(image, ShapesDataset(num_images=4, seed=0)[0][0])
        True
        >>> dataset.class_counts()
        tensor([4, 2, 2])
    """

    def __init__(
        self,
        num_images: int,
        seed: int = 0,
        image_size: int = 64,
        num_classes: int = 3,
        class_weights: Sequence[float] | None = (0.6, 0.3, 0.1),
        max_objects: int = 3,
        max_distractors: int = 2,
        min_size: int = 8,
        max_size: int = 20,
        noise_std: float = 0.1,
        max_clutter: int = 4,
    ) -> None:
        if num_images < 0:
            raise ValueError(f"num_images must be non-negative, got {num_images}")
        if not 1 <= num_classes <= len(_SHAPES):
            raise ValueError(f"num_classes must be in [1, {len(_SHAPES)}], got {num_classes}")
        weights = (
            [1.0] * num_classes if class_weights is None else [float(w) for w in class_weights]
        )
        if len(weights) != num_classes:
            raise ValueError(
                f"class_weights has {len(weights)} entries for num_classes={num_classes}"
            )
        if any(not w >= 0.0 for w in weights) or sum(weights) <= 0.0:
            raise ValueError(
                f"class_weights must be non-negative with a positive sum, got {weights}"
            )
        if max_objects < 1:
            raise ValueError(f"max_objects must be at least 1, got {max_objects}")
        if max_distractors < 0 or max_clutter < 0:
            raise ValueError(
                f"max_distractors and max_clutter must be non-negative, got {max_distractors} "
                f"and {max_clutter}"
            )
        if not 1 <= min_size <= max_size <= image_size:
            raise ValueError(
                f"need 1 <= min_size <= max_size <= image_size, got {min_size}, {max_size}, "
                f"{image_size}"
            )
        if not noise_std >= 0.0:
            raise ValueError(f"noise_std must be non-negative, got {noise_std}")
        self.num_images = num_images
        self.seed = seed
        self.image_size = image_size
        self.num_classes = num_classes
        self.class_weights = tuple(weights)
        self.max_objects = max_objects
        self.max_distractors = max_distractors
        self.min_size = min_size
        self.max_size = max_size
        self.noise_std = float(noise_std)
        self.max_clutter = max_clutter

    @property
    def class_names(self) -> list[str]:
        """Shape names of the classes, index = label.

        Example:
            >>> ShapesDataset(num_images=1).class_names
            ['square', 'disk', 'triangle']
        """
        return list(_SHAPES[: self.num_classes])

    def __len__(self) -> int:
        return self.num_images

    def _generator(self, index: int) -> torch.Generator:
        if not 0 <= index < self.num_images:
            raise IndexError(f"index {index} out of range for {self.num_images} images")
        return torch.Generator().manual_seed(mix_seed(self.seed, index))

    def _layout_length(self) -> int:
        shapes = self.max_objects + self.max_distractors
        return _HEADER + shapes * _SHAPE_SLOT + self.max_clutter * _CLUTTER_SLOT

    def _draw_layout(self, generator: torch.Generator) -> ShapesLayout:
        values = torch.rand(self._layout_length(), generator=generator, dtype=torch.float64)
        u = values.tolist()
        n_objects = _uniform_int(u[0], 1, self.max_objects)
        n_distractors = _uniform_int(u[1], 0, self.max_distractors)
        n_clutter = _uniform_int(u[2], 0, self.max_clutter)
        base = tuple(0.35 + 0.3 * v for v in u[3:6])
        angle = 2 * math.pi * u[6]
        amplitude = tuple(0.3 * v - 0.15 for v in u[7:10])
        background = (*base, angle, *amplitude)
        cos, sin = math.cos(angle), math.sin(angle)
        cumulative = list(itertools.accumulate(self.class_weights))
        distractor_kinds = [f"hollow_{s}" for s in _SHAPES[: self.num_classes]] + ["cross"]
        side = self.image_size
        placed: list[tuple[int, int, int, int]] = []
        objects: list[PlacedShape] = []
        distractors: list[PlacedShape] = []
        # slots of a fixed size: a shape's uniforms do not depend on how many came before
        slots = [(k, True) for k in range(n_objects)]
        slots += [(self.max_objects + k, False) for k in range(n_distractors)]
        for slot, is_object in slots:
            s = u[_HEADER + slot * _SHAPE_SLOT : _HEADER + (slot + 1) * _SHAPE_SLOT]
            if is_object:
                label = min(
                    bisect.bisect_right(cumulative, s[0] * cumulative[-1]), self.num_classes - 1
                )
                kind = _SHAPES[label]
            else:
                label = -1
                kind = distractor_kinds[_uniform_int(s[0], 0, len(distractor_kinds) - 1)]
            size = _uniform_int(s[1], self.min_size, self.max_size)
            rotation = _uniform_int(s[2], 0, 3)
            position = None
            for t in range(_PLACEMENT_TRIES):
                x0 = _uniform_int(s[7 + 2 * t], 0, side - size)
                y0 = _uniform_int(s[8 + 2 * t], 0, side - size)
                if any(
                    x0 < bx1 + _GAP
                    and bx0 < x0 + size + _GAP
                    and y0 < by1 + _GAP
                    and by0 < y0 + size + _GAP
                    for bx0, by0, bx1, by1 in placed
                ):
                    continue
                position = (x0, y0)
                break
            if position is None:
                continue
            x0, y0 = position
            placed.append((x0, y0, x0 + size, y0 + size))
            # background gradient at the centre, in the coordinates used by _render
            gx = 2 * (x0 + size / 2) / side - 1
            gy = 2 * (y0 + size / 2) / side - 1
            local = [b + a * (cos * gx + sin * gy) for b, a in zip(base, amplitude)]
            colour = list(s[4:7])
            channel = _uniform_int(s[3], 0, 2)
            bg = local[channel]
            colour[channel] = bg + _MIN_CONTRAST if bg < 0.5 else bg - _MIN_CONTRAST
            shape = PlacedShape(kind, label, x0, y0, size, rotation, tuple(colour))
            (objects if is_object else distractors).append(shape)
        clutter = []
        offset = _HEADER + (self.max_objects + self.max_distractors) * _SHAPE_SLOT
        for k in range(n_clutter):
            c = u[offset + k * _CLUTTER_SLOT : offset + (k + 1) * _CLUTTER_SLOT]
            clutter.append(
                (
                    float(c[0] < 0.5),
                    c[1] * side,
                    c[2] * side,
                    c[3],
                    *(0.3 * v - 0.15 for v in c[4:7]),
                )
            )
        return ShapesLayout(tuple(objects), tuple(distractors), background, tuple(clutter))

    def layout(self, index: int) -> ShapesLayout:
        """The layout of item ``index`` (objects, distractors, background), without pixels.

        It is drawn from the item's generator exactly as :meth:`__getitem__` draws it, so
        ``layout(i).labels`` and ``layout(i).boxes`` equal the target of ``self[i]``.

        Args:
            index: item index in ``[0, len(self))``.

        Returns:
            The item's :class:`ShapesLayout`.

        Example:
            >>> dataset = ShapesDataset(num_images=4, seed=0)
            >>> torch.equal(dataset.layout(2).boxes, dataset[2][1]["boxes"])
            True
        """
        return self._draw_layout(self._generator(index))

    def class_counts(self) -> Tensor:
        """Objects per class over all items, int64 ``(num_classes,)``; draws layouts only.

        Example:
            >>> ShapesDataset(num_images=100, seed=1).class_counts()
            tensor([127,  53,  22])
        """
        counts = [0] * self.num_classes
        for index in range(self.num_images):
            for shape in self.layout(index).objects:
                counts[shape.label] += 1
        return torch.tensor(counts, dtype=torch.int64)

    def _render(self, layout: ShapesLayout, generator: torch.Generator) -> Tensor:
        side = self.image_size
        coords = torch.arange(side, dtype=torch.float32) + 0.5
        xs, ys = coords.view(1, side), coords.view(side, 1)
        base_r, base_g, base_b, angle, amp_r, amp_g, amp_b = layout.background
        gradient = math.cos(angle) * (2 * xs / side - 1) + math.sin(angle) * (2 * ys / side - 1)
        base = torch.tensor([base_r, base_g, base_b]).view(3, 1, 1)
        amplitude = torch.tensor([amp_r, amp_g, amp_b]).view(3, 1, 1)
        image = base + amplitude * gradient
        scale = side / 64
        for is_line, cx, cy, shape_u, *rgb in layout.clutter:
            # elementwise exp on a full image is parallelised by ATen even at 64x64, and thread
            # hand-offs are slow on a busy machine: lines get a triangular profile and blobs a
            # separable Gaussian (exp on two vectors)
            if is_line:
                phi = math.pi * shape_u
                distance = (xs - cx) * math.sin(phi) - (ys - cy) * math.cos(phi)
                weight = (1.0 - distance.abs() / (1.5 * scale)).clamp_(min=0.0)
            else:
                sigma = (2.0 + 4.0 * shape_u) * scale
                weight = torch.exp(-((xs - cx) ** 2) / (2 * sigma**2)) * torch.exp(
                    -((ys - cy) ** 2) / (2 * sigma**2)
                )
            image = image + torch.tensor(rgb).view(3, 1, 1) * weight
        for shape in (*layout.distractors, *layout.objects):
            x0, y0, x1, y1 = shape.box
            mask = _shape_mask(shape.kind, shape.size, shape.rotation)
            colour = torch.tensor(shape.colour, dtype=torch.float32).view(3, 1, 1)
            image[:, y0:y1, x0:x1] = torch.where(mask, colour, image[:, y0:y1, x0:x1])
        noise = torch.randn(3, side, side, generator=generator)
        return (image + self.noise_std * noise).clamp_(0.0, 1.0)

    def __getitem__(self, index: int) -> tuple[Tensor, dict[str, Tensor]]:
        """Image ``(3, S, S)`` float32 in ``[0, 1]`` and target ``{"boxes", "labels"}``."""
        generator = self._generator(index)
        layout = self._draw_layout(generator)
        image = self._render(layout, generator)
        return image, {"boxes": layout.boxes, "labels": layout.labels}


class ShapesDataModule(SplitsDataModule):
    """Synthetic dense detection (:class:`ShapesDataset`) as a ``LightningDataModule``.

    Three splits of ``num_train``, ``num_val`` and ``num_test`` images, each a
    :class:`ShapesDataset` with its own seed derived from ``seed``, so the splits share no
    image. Nothing is downloaded or stored: items are drawn on the fly (1 to 2
    milliseconds each at 64x64 on one core), identically in every worker and on every DDP rank.

    Batches follow the detection contract of :mod:`lightning_focal.data.detection_utils`:
    ``images`` float32 ``(B, 3, image_size, image_size)`` in ``[0, 1]`` and a list of target
    dicts with ``"boxes"`` (float32 ``xyxy`` pixels) and ``"labels"`` (int64, 0-based).
    ``train_dataloader`` shuffles with a generator seeded with ``seed``; val and test keep
    their order. :meth:`class_counts` draws the train layouts only (no pixels).

    Args:
        batch_size: images per batch.
        num_workers: ``DataLoader`` workers.
        seed: seed of the three splits and of the train shuffle.
        num_train: train images.
        num_val: validation images.
        num_test: test images.
        image_size: side of the square images.
        num_classes: object classes, 1 to 4 (square, disk, triangle, diamond).
        class_weights: relative class frequencies; ``None`` for uniform.
        max_objects: most labelled objects per image.
        max_distractors: most unlabelled look-alike shapes per image.
        min_size: smallest shape side in pixels.
        max_size: largest shape side in pixels.
        noise_std: standard deviation of the pixel noise.
        max_clutter: most faint background lines and blobs per image.

    Example:
        >>> from lightning_focal.data import ShapesDataModule
        >>> dm = ShapesDataModule(batch_size=4)
        >>> dm.num_classes, dm.class_names
        (3, ['square', 'disk', 'triangle'])
        >>> dm.class_counts()
        tensor([610, 320,  93])
        >>> dm.setup("fit")
        >>> images, targets = next(iter(dm.train_dataloader()))
        >>> images.shape, sorted(targets[0])
        (torch.Size([4, 3, 64, 64]), ['boxes', 'labels'])
    """

    _collate_fn = staticmethod(detection_collate)

    def __init__(
        self,
        batch_size: int = 32,
        num_workers: int = 0,
        seed: int = 0,
        num_train: int = 512,
        num_val: int = 64,
        num_test: int = 64,
        image_size: int = 64,
        num_classes: int = 3,
        class_weights: Sequence[float] | None = (0.6, 0.3, 0.1),
        max_objects: int = 3,
        max_distractors: int = 2,
        min_size: int = 8,
        max_size: int = 20,
        noise_std: float = 0.1,
        max_clutter: int = 4,
    ) -> None:
        super().__init__()
        check_loader_args(batch_size, num_workers)
        self.save_hyperparameters()
        # validates the shape parameters now rather than in setup
        self._make_dataset(num_train, split=0)
        self.train_set: ShapesDataset | None = None
        self.val_set: ShapesDataset | None = None
        self.test_set: ShapesDataset | None = None
        self._class_counts: Tensor | None = None

    def _make_dataset(self, num_images: int, split: int) -> ShapesDataset:
        hp = self.hparams
        weights = hp.class_weights
        return ShapesDataset(
            num_images=num_images,
            seed=mix_seed(hp.seed, split),
            image_size=hp.image_size,
            num_classes=hp.num_classes,
            class_weights=None if weights is None else tuple(weights),
            max_objects=hp.max_objects,
            max_distractors=hp.max_distractors,
            min_size=hp.min_size,
            max_size=hp.max_size,
            noise_std=hp.noise_std,
            max_clutter=hp.max_clutter,
        )

    @property
    def num_classes(self) -> int:
        """Number of object classes (no background class).

        Example:
            >>> ShapesDataModule(num_classes=2, class_weights=None).num_classes
            2
        """
        return self.hparams.num_classes

    @property
    def class_names(self) -> list[str]:
        """Shape names of the classes, index = label.

        Example:
            >>> ShapesDataModule().class_names
            ['square', 'disk', 'triangle']
        """
        return list(_SHAPES[: self.hparams.num_classes])

    def class_counts(self) -> Tensor:
        """Objects per class in the train split, int64 ``(num_classes,)``; needs no ``setup``.

        Computed from the train layouts (no pixels drawn; about 0.1 s for 512 images) and
        cached.

        Example:
            >>> ShapesDataModule(num_train=64).class_counts()
            tensor([83, 49,  6])
        """
        if self._class_counts is None:
            self._class_counts = self._make_dataset(self.hparams.num_train, 0).class_counts()
        return self._class_counts.clone()

    def prepare_data(self) -> None:
        """Nothing to do: the images are generated on the fly."""

    def setup(self, stage: str | None = None) -> None:
        """Create the three split datasets (instant: they hold only parameters).

        Args:
            stage: ``"fit"``, ``"validate"``, ``"test"``, ``"predict"`` or ``None``; every
                stage creates every split.
        """
        if self.train_set is not None:
            return
        hp = self.hparams
        self.train_set = self._make_dataset(hp.num_train, 0)
        self.val_set = self._make_dataset(hp.num_val, 1)
        self.test_set = self._make_dataset(hp.num_test, 2)
