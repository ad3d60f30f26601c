"""Long-tail profiles, seeded subsampling and per-class counting."""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from lightning_focal.data import (
    ClassCountsProvider,
    counts_from_targets,
    longtail_counts,
    longtail_indices,
)


def test_cifar10_lt_published_counts() -> None:
    assert longtail_counts(5000, 10, 100.0) == [5000, 2997, 1796, 1077, 645, 387, 232, 139, 83, 50]


def test_cifar10_lt_ratio_10_counts() -> None:
    # Published CIFAR-10-LT, imbalance factor 10 (Cao et al., LDAM-DRW).
    assert longtail_counts(5000, 10, 10.0) == [
        5000,
        3871,
        2997,
        2320,
        1796,
        1391,
        1077,
        834,
        645,
        500,
    ]


@pytest.mark.parametrize(
    ("n_max", "num_classes", "ratio", "expected"),
    [
        # 100 * 4^(-c/2): 100, 50, 25.
        (100, 3, 4.0, [100, 50, 25]),
        # 1000 * 1000^(-c/3): 1000, 100, 10, 1.
        (1000, 4, 1000.0, [1000, 100, 10, 1]),
        # 10 * 8^(-c/3): 10, 5, 2.5 -> 2, 1.25 -> 1.
        (10, 4, 8.0, [10, 5, 2, 1]),
        # 16 * 2^(-c); in floats 16 * 32^(-2/5) is 3.9999999999999996, which must still give 4.
        (16, 6, 32.0, [16, 8, 4, 2, 1, 1]),
        # The tail would be 0.1: floored up to the minimum of one sample.
        (10, 3, 100.0, [10, 1, 1]),
        (7, 5, 1.0, [7, 7, 7, 7, 7]),
        (42, 1, 100.0, [42]),
    ],
)
def test_exp_profile_by_hand(
    n_max: int, num_classes: int, ratio: float, expected: list[int]
) -> None:
    assert longtail_counts(n_max, num_classes, ratio) == expected


def test_exp_profile_matches_formula() -> None:
    counts = longtail_counts(500, 100, 100.0)
    assert len(counts) == 100
    assert counts[0] == 500 and counts[-1] == 5
    assert all(a >= b for a, b in itertools.pairwise(counts))
    for c in (1, 17, 50, 98):
        assert counts[c] == math.floor(500 * 0.01 ** (c / 99) + 1e-9)


@pytest.mark.parametrize(
    ("num_classes", "expected"),
    [(4, [100, 100, 10, 10]), (5, [100, 100, 10, 10, 10]), (2, [100, 10])],
)
def test_step_profile(num_classes: int, expected: list[int]) -> None:
    assert longtail_counts(100, num_classes, 10.0, profile="step") == expected


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"imbalance_ratio": 0.5}, "imbalance_ratio"),
        ({"imbalance_ratio": float("nan")}, "imbalance_ratio"),
        ({"num_classes": 0}, "num_classes"),
        ({"n_max": 0}, "n_max"),
        ({"profile": "linear"}, "profile"),
    ],
)
def test_longtail_counts_rejects(kwargs: dict, match: str) -> None:
    args = {"n_max": 100, "num_classes": 10, "imbalance_ratio": 10.0, **kwargs}
    with pytest.raises(ValueError, match=match):
        longtail_counts(**args)


def test_longtail_indices_counts_and_membership() -> None:
    targets = torch.arange(3).repeat_interleave(torch.tensor([10, 6, 4]))
    targets = targets[torch.randperm(20, generator=torch.Generator().manual_seed(3))]
    picked = longtail_indices(targets, [5, 3, 1], seed=0)
    assert picked == sorted(picked)
    assert len(set(picked)) == len(picked)
    assert torch.bincount(targets[picked], minlength=3).tolist() == [5, 3, 1]


def test_longtail_indices_deterministic_and_seeded() -> None:
    targets = [c for c in range(4) for _ in range(50)]
    counts = [40, 20, 10, 5]
    first = longtail_indices(targets, counts, seed=1)
    assert first == longtail_indices(torch.tensor(targets), counts, seed=1)
    assert first != longtail_indices(targets, counts, seed=2)


def test_longtail_indices_is_first_of_seeded_permutation() -> None:
    targets = [0, 1, 0, 1, 0, 1, 0]
    generator = torch.Generator().manual_seed(5)
    class0 = torch.tensor([0, 2, 4, 6])[torch.randperm(4, generator=generator)][:2]
    class1 = torch.tensor([1, 3, 5])[torch.randperm(3, generator=generator)][:1]
    expected = sorted(torch.cat([class0, class1]).tolist())
    assert longtail_indices(targets, [2, 1], seed=5) == expected


def test_longtail_indices_rejects() -> None:
    with pytest.raises(ValueError, match="class 1 has 1 samples"):
        longtail_indices([0, 0, 1], [1, 2], seed=0)
    with pytest.raises(ValueError, match=r"\[0, 2\)"):
        longtail_indices([0, 2], [1, 1], seed=0)
    with pytest.raises(ValueError, match="1-D"):
        longtail_indices(torch.zeros(2, 2, dtype=torch.long), [1], seed=0)


def test_counts_from_targets() -> None:
    counts = counts_from_targets(torch.tensor([3, 3, 0, 1, 3]), num_classes=5)
    assert counts.dtype == torch.int64
    assert counts.tolist() == [1, 1, 0, 3, 0]
    assert counts_from_targets([], num_classes=2).tolist() == [0, 0]
    multi_hot = torch.tensor([[1.0, 0.0, 1.0], [0.0, 0.0, 1.0], [1.0, 0.0, 1.0]])
    assert counts_from_targets(multi_hot, num_classes=3).tolist() == [2, 0, 3]


@pytest.mark.parametrize(
    ("targets", "num_classes", "match"),
    [
        ([0, 5], 5, r"\[0, 5\)"),
        ([-1, 0], 5, r"\[0, 5\)"),
        ([0, 1], 0, "num_classes"),
        (torch.zeros(2, 4), 3, "columns"),
        (torch.tensor([0.0, 1.0]), 2, "integers"),
        (torch.zeros(1, 1, 1), 1, "shape"),
    ],
)
def test_counts_from_targets_rejects(targets: object, num_classes: int, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        counts_from_targets(targets, num_classes)


def test_class_counts_provider_protocol() -> None:
    class Provider:
        def class_counts(self) -> torch.Tensor:
            return torch.tensor([2, 1])

    assert isinstance(Provider(), ClassCountsProvider)
    assert not isinstance(object(), ClassCountsProvider)
