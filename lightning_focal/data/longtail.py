"""Long-tailed class profiles and the seeded subsampling that applies them.

The exponential profile is the one that defines CIFAR-10-LT and CIFAR-100-LT (Cui et al.,
CVPR 2019; Cao et al., NeurIPS 2019): class ``c`` of ``C`` keeps

.. math::

    n_c = \\lfloor n_{max} \\cdot (1 / \\rho)^{c / (C - 1)} \\rfloor

images, so class 0 keeps ``n_max`` and the last class ``n_max / rho``. The step profile
keeps ``n_max`` for the first ``C // 2`` classes and ``n_max / rho`` for the others.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor

__all__ = ["PROFILES", "longtail_counts", "longtail_indices"]

PROFILES = ("exp", "step")

# Forgives the last-bit error of the power, so that an exact product such as
# 5000 * 0.01 is floored to 50 and not to 49.
_FLOOR_TOLERANCE = 1e-9


def longtail_counts(
    n_max: int, num_classes: int, imbalance_ratio: float, profile: str = "exp"
) -> list[int]:
    """Number of samples each class keeps under a long-tailed profile.

    ``"exp"``: :math:`n_c = \\lfloor n_{max} \\rho^{-c/(C-1)} \\rfloor`, the CIFAR-LT
    profile. ``"step"``: the first ``num_classes // 2`` classes keep ``n_max``, the rest
    :math:`\\lfloor n_{max} / \\rho \\rfloor`. Every class keeps at least one sample; class
    0 is always the head. ``imbalance_ratio=1`` gives a balanced set.

    Args:
        n_max: samples of the head class (class 0), at least 1.
        num_classes: number of classes ``C``, at least 1.
        imbalance_ratio: :math:`\\rho = n_{max} / n_{min}`, at least 1.
        profile: ``"exp"`` or ``"step"``.

    Returns:
        A list of ``num_classes`` non-increasing counts.

    Raises:
        ValueError: for ``imbalance_ratio < 1``, ``num_classes < 1``, ``n_max < 1`` or an
            unknown profile.

    Example:
        >>> from lightning_focal.data import longtail_counts
        >>> longtail_counts(5000, 10, 100.0)
        [5000, 2997, 1796, 1077, 645, 387, 232, 139, 83, 50]
        >>> longtail_counts(100, 4, 10.0, profile="step")
        [100, 100, 10, 10]
    """
    if profile not in PROFILES:
        raise ValueError(f"unknown long-tail profile {profile!r}; expected one of {PROFILES}")
    if num_classes < 1:
        raise ValueError(f"num_classes must be at least 1, got {num_classes}")
    if n_max < 1:
        raise ValueError(f"n_max must be at least 1, got {n_max}")
    if not imbalance_ratio >= 1.0:
        raise ValueError(f"imbalance_ratio must be at least 1, got {imbalance_ratio}")
    if num_classes == 1:
        return [int(n_max)]
    if profile == "exp":
        fractions = [(1.0 / imbalance_ratio) ** (c / (num_classes - 1)) for c in range(num_classes)]
    else:
        head = num_classes // 2
        fractions = [1.0 if c < head else 1.0 / imbalance_ratio for c in range(num_classes)]
    return [max(1, math.floor(n_max * f + _FLOOR_TOLERANCE)) for f in fractions]


def _check_longtail_args(imbalance_ratio: float | None, profile: str) -> None:
    """Raise ``ValueError`` for ``imbalance_ratio < 1`` (``None`` passes) or an unknown profile."""
    if imbalance_ratio is not None and not imbalance_ratio >= 1.0:
        raise ValueError(f"imbalance_ratio must be at least 1, got {imbalance_ratio}")
    if profile not in PROFILES:
        raise ValueError(f"unknown long-tail profile {profile!r}; expected one of {PROFILES}")


def longtail_indices(
    targets: Sequence[int] | Tensor, counts: Sequence[int], seed: int
) -> list[int]:
    """Indices of a seeded subsample that keeps ``counts[c]`` samples of each class ``c``.

    For each class in turn, the indices of its samples (in dataset order) are permuted with
    one ``torch.Generator`` seeded with ``seed`` and the first ``counts[c]`` are kept, so the
    result depends only on ``targets``, ``counts`` and ``seed``. Classes with a count of 0
    are dropped.

    Args:
        targets: class index of every sample, shape ``(N,)``, values in
            ``[0, len(counts))``.
        counts: samples to keep per class; ``counts[c]`` may not exceed the samples of
            class ``c``.
        seed: seed of the permutations.

    Returns:
        The kept indices into ``targets``, sorted ascending (dataset order is kept).

    Raises:
        ValueError: for targets that are not 1-D, out of range, or for a class with fewer
            samples than its count.

    Example:
        >>> from lightning_focal.data import longtail_indices
        >>> targets = [0, 0, 0, 0, 1, 1, 1, 1]
        >>> picked = longtail_indices(targets, counts=[3, 1], seed=0)
        >>> [targets[i] for i in picked]
        [0, 0, 0, 1]
        >>> picked == longtail_indices(targets, counts=[3, 1], seed=0)
        True
    """
    targets_t = torch.as_tensor(targets, dtype=torch.long)
    if targets_t.ndim != 1:
        raise ValueError(f"targets must be 1-D class indices, got shape {tuple(targets_t.shape)}")
    num_classes = len(counts)
    if targets_t.numel() and (targets_t.min() < 0 or targets_t.max() >= num_classes):
        raise ValueError(
            f"targets must lie in [0, {num_classes}) for {num_classes} counts, got values in "
            f"[{int(targets_t.min())}, {int(targets_t.max())}]"
        )
    generator = torch.Generator().manual_seed(seed)
    kept: list[Tensor] = []
    for c, count in enumerate(counts):
        class_indices = torch.nonzero(targets_t == c).flatten()
        if count < 0 or count > class_indices.numel():
            raise ValueError(f"class {c} has {class_indices.numel()} samples, cannot keep {count}")
        order = torch.randperm(class_indices.numel(), generator=generator)
        kept.append(class_indices[order[:count]])
    if not kept:
        return []
    return sorted(torch.cat(kept).tolist())
