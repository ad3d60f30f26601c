"""Sample-dependent γ (FLSD-53): the policy itself and both losses against float64 references."""

from __future__ import annotations

import dataclasses

import pytest
import torch
import torch.nn.functional as F
from torch.testing import assert_close

from lightning_focal.losses import (
    FLSD53,
    SampleDependentGamma,
    sigmoid_focal_loss,
    softmax_focal_loss,
)

ALPHA = torch.tensor([0.5, 1.0, 2.0, 0.25], dtype=torch.float64)


def reference_gamma(p_t, thresholds=(0.2,), gammas=(5.0, 3.0)):
    """γ of each element by its p_t, written as a plain loop over the intervals."""
    gamma = torch.full_like(p_t, gammas[0])
    for lower, value in zip(thresholds, gammas[1:]):
        gamma[p_t >= lower] = value
    return gamma


def value_and_grad(fn, x):
    x = x.detach().clone().requires_grad_(True)
    out = fn(x)
    upstream = torch.linspace(-1.5, 2.0, out.numel(), dtype=out.dtype).reshape(out.shape)
    (grad,) = torch.autograd.grad(out, x, upstream)
    return out.detach(), grad


def spread_logits(shape, seed):
    """Moderate logits whose p_t fall on both sides of 0.2 (the tests check that they do)."""
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(shape, generator=gen, dtype=torch.float64) * 2.5


# ---- the policy -------------------------------------------------------------------------


def test_flsd53_is_five_below_0_2_else_three():
    policy = FLSD53
    assert policy == SampleDependentGamma((0.2,), (5.0, 3.0))
    assert policy.thresholds == (0.2,) and policy.gammas == (5.0, 3.0)
    p_t = torch.tensor([0.0, 0.1, 0.199999, 0.2, 0.200001, 0.5, 1.0])
    assert policy.gamma_for(p_t).tolist() == [5.0, 5.0, 5.0, 3.0, 3.0, 3.0, 3.0]


def test_gamma_for_several_thresholds():
    policy = SampleDependentGamma(thresholds=[0.2, 0.5], gammas=[5, 3, 1])
    assert policy.thresholds == (0.2, 0.5) and policy.gammas == (5.0, 3.0, 1.0)
    p_t = torch.tensor([[0.05, 0.2, 0.3], [0.5, 0.7, 0.49]])
    assert_close(policy.gamma_for(p_t), torch.tensor([[5.0, 3.0, 3.0], [1.0, 1.0, 3.0]]))


def test_gamma_for_carries_no_gradient():
    p_t = torch.tensor([0.1, 0.6], requires_grad=True)
    assert not FLSD53.gamma_for(p_t).requires_grad


def test_policy_is_frozen_and_hashable():
    policy = FLSD53
    with pytest.raises(dataclasses.FrozenInstanceError):
        policy.gammas = (1.0, 1.0)  # type: ignore[misc]
    # an equal policy built afresh hashes alike (what flsd53() used to hand out)
    assert hash(policy) == hash(SampleDependentGamma((0.2,), (5.0, 3.0)))


@pytest.mark.parametrize(
    ("thresholds", "gammas", "match"),
    [
        ((0.2,), (5.0,), "len\\(gammas\\) == len\\(thresholds\\) \\+ 1"),
        ((0.2, 0.5), (5.0, 3.0), "len\\(gammas\\) == len\\(thresholds\\) \\+ 1"),
        ((0.0,), (5.0, 3.0), "strictly increasing in \\(0, 1\\)"),
        ((1.0,), (5.0, 3.0), "strictly increasing in \\(0, 1\\)"),
        ((0.5, 0.2), (5.0, 3.0, 1.0), "strictly increasing"),
        ((0.2, 0.2), (5.0, 3.0, 1.0), "strictly increasing"),
        ((0.2,), (5.0, -1.0), r"`gammas\[1\]` must be a finite γ >= 0, got -1.0"),
        ((0.2,), (float("nan"), 3.0), r"`gammas\[0\]` must be a finite γ >= 0, got nan"),
        ((0.2,), (5.0, float("inf")), r"`gammas\[1\]` must be a finite γ >= 0, got inf"),
    ],
)
def test_policy_validation(thresholds, gammas, match):
    with pytest.raises(ValueError, match=match):
        SampleDependentGamma(thresholds, gammas)


# ---- the policy inside the losses -------------------------------------------------------


def softmax_reference(x, target, policy_args, alpha=None, ignore_index=-100, reduction="mean"):
    """FLSD with γ chosen from the detached p_t and then held constant, float64."""
    p = torch.softmax(x, dim=1)
    valid = target != ignore_index
    safe = torch.where(valid, target, 0)
    p_t = p.gather(1, safe.unsqueeze(1)).squeeze(1)
    gamma = reference_gamma(p_t.detach(), *policy_args)
    a_t = alpha[safe] if alpha is not None else torch.ones_like(p_t)
    loss = torch.where(valid, -a_t * (1 - p_t) ** gamma * torch.log(p_t), 0.0)
    if reduction == "none":
        return loss
    if reduction == "sum":
        return loss.sum()
    return loss.sum() / torch.where(valid, a_t, 0.0).sum()


POLICIES = {
    "flsd53": ((0.2,), (5.0, 3.0)),
    "three_steps": ((0.2, 0.5), (5.0, 3.0, 0.5)),
}


@pytest.mark.parametrize("policy_name", POLICIES)
@pytest.mark.parametrize("reduction", ["none", "mean", "sum"])
@pytest.mark.parametrize("with_alpha", [False, True])
def test_softmax_matches_reference(policy_name, reduction, with_alpha):
    policy_args = POLICIES[policy_name]
    policy = FLSD53 if policy_name == "flsd53" else SampleDependentGamma(*policy_args)
    x = spread_logits((5, 4, 3), seed=1)
    target = torch.randint(0, 4, (5, 3), generator=torch.Generator().manual_seed(2))
    target[0, 0] = -100
    alpha = ALPHA if with_alpha else None
    p_t = torch.softmax(x, 1).gather(1, target.clamp_min(0).unsqueeze(1)).squeeze(1)
    assert bool((p_t < 0.2).any()) and bool((p_t >= 0.2).any())  # both branches are used
    expected, expected_grad = value_and_grad(
        lambda z: softmax_reference(z, target, policy_args, alpha, reduction=reduction), x
    )
    actual, grad = value_and_grad(
        lambda z: softmax_focal_loss(z, target, policy, alpha, reduction=reduction), x
    )
    assert_close(actual, expected)
    assert_close(grad, expected_grad)


def test_softmax_label_smoothing_takes_gamma_from_each_class_probability():
    """With a smoothed or soft target every class c carries γ(p_c), as documented."""
    x = spread_logits((6, 4), seed=3)
    target = torch.randint(0, 4, (6,), generator=torch.Generator().manual_seed(4))

    def reference(z):
        p = torch.softmax(z, 1)
        q = F.one_hot(target, 4).double() * 0.8 + 0.2 / 4
        gamma = reference_gamma(p.detach())
        return (-q * (1 - p) ** gamma * torch.log(p)).sum(1).mean()

    expected, expected_grad = value_and_grad(reference, x)
    actual, grad = value_and_grad(
        lambda z: softmax_focal_loss(z, target, FLSD53, label_smoothing=0.2), x
    )
    assert_close(actual, expected)
    assert_close(grad, expected_grad)


def test_softmax_one_hot_probabilities_equal_indices():
    x = spread_logits((6, 4), seed=5)
    target = torch.randint(0, 4, (6,), generator=torch.Generator().manual_seed(6))
    one_hot = F.one_hot(target, 4).double()
    a, ga = value_and_grad(lambda z: softmax_focal_loss(z, target, FLSD53), x)
    b, gb = value_and_grad(lambda z: softmax_focal_loss(z, one_hot, FLSD53), x)
    assert_close(a, b)
    assert_close(ga, gb)


@pytest.mark.parametrize("reduction", ["none", "mean", "sum"])
@pytest.mark.parametrize("alpha", [None, 0.25, "per_class"])
@pytest.mark.parametrize("poly1", [0.0, 0.5])
def test_sigmoid_matches_reference(reduction, alpha, poly1):
    x = spread_logits((3, 5, 4), seed=7)
    t = (torch.rand(3, 5, 4, generator=torch.Generator().manual_seed(8)) > 0.6).double()
    alpha = (
        torch.tensor([0.1, 0.4, 0.6, 0.9], dtype=torch.float64) if alpha == "per_class" else alpha
    )

    def reference(z):
        p = torch.sigmoid(z)
        p_t = torch.where(t == 1, p, 1 - p)
        gamma = reference_gamma(p_t.detach())
        loss = -((1 - p_t) ** gamma) * torch.log(p_t)
        if alpha is not None:
            loss = torch.where(t == 1, alpha, 1 - alpha) * loss
        loss = loss + poly1 * (1 - p_t) ** (gamma + 1)
        return {"none": loss, "mean": loss.mean(), "sum": loss.sum()}[reduction]

    expected, expected_grad = value_and_grad(reference, x)
    actual, grad = value_and_grad(
        lambda z: sigmoid_focal_loss(z, t, alpha, FLSD53, reduction, poly1=poly1), x
    )
    assert_close(actual, expected)
    assert_close(grad, expected_grad)


def test_gradcheck_both_losses():
    x = spread_logits((4, 4), seed=9).requires_grad_(True)
    target = torch.tensor([0, 1, 2, 3])
    t = F.one_hot(target, 4).double()
    # finite differences (eps 1e-6) must not step across the γ switch at p_t = 0.2
    softmax_p_t = torch.softmax(x.detach(), 1).gather(1, target[:, None])
    sigmoid_p_t = torch.where(t == 1, torch.sigmoid(x.detach()), torch.sigmoid(-x.detach()))
    for p_t in (softmax_p_t, sigmoid_p_t):
        assert torch.all((p_t - 0.2).abs() > 1e-4)
        assert bool((p_t < 0.2).any()) and bool((p_t > 0.2).any())
    assert torch.autograd.gradcheck(lambda z: softmax_focal_loss(z, target, FLSD53, ALPHA), (x,))
    assert torch.autograd.gradcheck(
        lambda z: sigmoid_focal_loss(z, t, 0.25, FLSD53, "sum", poly1=0.3), (x,)
    )
