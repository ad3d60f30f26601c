"""class_balanced_weights against hand computations."""

from __future__ import annotations

import math

import pytest
import torch
from torch.testing import assert_close

from lightning_focal.losses import SigmoidFocalLoss, SoftmaxFocalLoss, class_balanced_weights

COUNTS = [100, 10, 1]


def normalised(raw):
    """Scale to sum to the number of classes."""
    return torch.tensor([w * len(raw) / sum(raw) for w in raw], dtype=torch.float32)


def test_inverse_frequency_by_hand():
    # 1/n = 0.01, 0.1, 1 (sum 1.11); times 3/1.11
    expected = torch.tensor([0.03 / 1.11, 0.3 / 1.11, 3 / 1.11])
    assert_close(class_balanced_weights(COUNTS, method="inverse"), expected)


def test_inverse_sqrt_frequency_by_hand():
    raw = [0.1, 1 / math.sqrt(10), 1.0]
    assert_close(class_balanced_weights(COUNTS, method="inverse_sqrt"), normalised(raw))


@pytest.mark.parametrize("beta", [0.9, 0.999, 0.9999])
def test_effective_number_by_hand(beta):
    raw = [(1 - beta) / (1 - beta**n) for n in COUNTS]
    assert_close(class_balanced_weights(COUNTS, beta=beta), normalised(raw))


def test_effective_number_at_beta_0_9_numbers():
    # (1-β)/(1-β^n): 0.1/(1-0.9^100) = 0.1000027, 0.1/(1-0.9^10) = 0.1535365, 0.1/0.1 = 1
    weights = class_balanced_weights(COUNTS, beta=0.9)
    assert_close(weights, torch.tensor([0.2393, 0.3674, 2.3932]), atol=1e-4, rtol=0)


def test_default_method_is_effective_number_with_beta_0_999():
    assert_close(
        class_balanced_weights(COUNTS), class_balanced_weights(COUNTS, "effective_number", 0.999)
    )


@pytest.mark.parametrize("method", ["effective_number", "inverse", "inverse_sqrt"])
@pytest.mark.parametrize("counts", [[5], [3, 3, 3, 3], [1, 2, 3, 5000, 7], torch.tensor([4, 40])])
def test_weights_sum_to_num_classes_and_rare_classes_weigh_more(method, counts):
    weights = class_balanced_weights(counts, method=method)
    n = torch.as_tensor(counts).flatten()
    assert weights.dtype == torch.float32 and weights.shape == (n.numel(),)
    assert_close(weights.sum(), torch.tensor(float(n.numel())))
    order = torch.argsort(n)
    assert torch.all(weights[order][1:] <= weights[order][:-1] * (1 + 1e-6))
    equal_counts = n[:, None] == n[None, :]
    assert torch.all((weights[:, None] == weights[None, :])[equal_counts])


def test_beta_zero_gives_equal_weights():
    assert_close(class_balanced_weights(COUNTS, beta=0.0), torch.ones(3))


def test_beta_near_one_approaches_inverse():
    assert_close(
        class_balanced_weights(COUNTS, beta=1 - 1e-9),
        class_balanced_weights(COUNTS, method="inverse"),
        rtol=1e-5,
        atol=1e-6,
    )


@pytest.mark.parametrize("method", ["effective_number", "inverse", "inverse_sqrt"])
def test_empty_class_counts_as_one(method):
    assert_close(
        class_balanced_weights([0, 10, 5], method=method),
        class_balanced_weights([1, 10, 5], method=method),
    )


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        (dict(counts=[10, 5], beta=1.0), r"beta must be in \[0, 1\)"),
        (dict(counts=[10, 5], beta=1.5), r"beta must be in \[0, 1\)"),
        (dict(counts=[10, 5], beta=-0.1), r"beta must be in \[0, 1\)"),
        (dict(counts=[10, -1]), "class counts must be finite and >= 0"),
        (dict(counts=[10.0, float("nan")]), "class counts must be finite"),
        (dict(counts=[10.0, float("inf")]), "class counts must be finite"),
        (dict(counts=[]), "counts is empty"),
        (dict(counts=[10, 5], method="balanced"), "unknown class-weight method 'balanced'"),
    ],
)
def test_bad_arguments_raise(kwargs, match):
    with pytest.raises(ValueError, match=match):
        class_balanced_weights(**kwargs)


def test_alpha_from_class_weights():
    weights = torch.tensor([1.0, 3.0, 0.0])
    assert_close(
        SigmoidFocalLoss().alpha_from_class_weights(weights), torch.tensor([0.5, 0.75, 0.0])
    )
    assert_close(SoftmaxFocalLoss().alpha_from_class_weights(weights), weights)
