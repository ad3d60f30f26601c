"""The fused sigmoid kernel's autograd contract: the gradient written by the forward is
scaled correctly, survives a retained graph, and half precision keeps a GradScaler's scale."""

from __future__ import annotations

import pytest
import torch
from torch.testing import assert_close

from lightning_focal import sigmoid_focal_loss
from lightning_focal.losses import _sigmoid_kernel


def textbook_grad(x, t, alpha=0.25, gamma=2.0):
    """d/dx of the summed float64 textbook focal loss."""
    z = x.detach().double().requires_grad_(True)
    p = torch.sigmoid(z)
    t = t.double()
    p_t = p * t + (1 - p) * (1 - t)
    ce = -(t * torch.log(p) + (1 - t) * torch.log(1 - p))
    a_t = alpha * t + (1 - alpha) * (1 - t)
    (a_t * (1 - p_t) ** gamma * ce).sum().backward()
    return z.grad


def case(shape=(6, 5), seed=0):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(shape, generator=gen) * 3
    t = (torch.rand(shape, generator=gen) > 0.7).float()
    return x, t


@pytest.mark.parametrize(
    ("reduction", "normalizer", "divide_by"),
    [("sum", None, 1.0), ("mean", None, 30.0), ("sum", 7.0, 7.0), ("sum", torch.tensor(4.0), 4.0)],
)
def test_plain_backward_takes_the_forward_gradient_unscaled(reduction, normalizer, divide_by):
    """``loss.backward()`` (upstream 1) returns the forward's gradient, divided by the
    denominator there."""
    x, t = case()
    z = x.clone().requires_grad_(True)
    sigmoid_focal_loss(z, t, reduction=reduction, normalizer=normalizer).backward()
    assert_close(z.grad, (textbook_grad(x, t) / divide_by).float())


def test_retained_graph_gives_the_same_gradient_every_time():
    """The first backward hands out (and scales in place) the precomputed gradient; later
    ones recompute it from the saved inputs. Both must agree and accumulate."""
    x, t = case(seed=1)
    z = x.clone().requires_grad_(True)
    loss = sigmoid_focal_loss(z, t, reduction="mean")
    loss.backward(torch.tensor(3.0), retain_graph=True)
    first = z.grad.clone()
    loss.backward(torch.tensor(3.0))
    expected = (3.0 * textbook_grad(x, t) / x.numel()).float()
    assert_close(first, expected)
    assert_close(z.grad, 2 * expected)


def test_elementwise_upstream_multiplies_the_forward_gradient():
    x, t = case(seed=2)
    z = x.clone().requires_grad_(True)
    upstream = torch.linspace(-2.0, 3.0, x.numel()).reshape(x.shape)
    sigmoid_focal_loss(z, t, reduction="none").backward(upstream)
    z64 = x.double().requires_grad_(True)
    (grad64,) = torch.autograd.grad(
        sigmoid_focal_loss(z64, t.double(), reduction="none"), z64, upstream.double()
    )
    assert_close(z.grad, grad64.float())


def test_float16_gradient_is_scaled_before_rounding():
    """A GradScaler multiplies the upstream by 2**16 so that tiny fp16 gradients survive.
    Gradients of 1e-8 to 1e-10 (easy negatives at x = -6.5..-8, γ=2) round to 0 in float16
    unless the scale is applied before the cast to float16."""
    x = torch.tensor([-6.5, -7.0, -8.0, 4.0, -2.0, 0.5])
    t = torch.tensor([0.0, 0.0, 0.0, 1.0, 0.0, 1.0])
    scale = 2.0**16
    z = x.half().requires_grad_(True)
    sigmoid_focal_loss(z, t.half(), reduction="sum").backward(torch.tensor(scale))
    expected = textbook_grad(x, t) * scale
    assert (expected[:3].abs() < 2.9e-8 * scale).all()  # rounds to 0 in float16 unscaled
    assert (z.grad[:3] != 0).all()
    assert_close(z.grad, expected.to(torch.float16))


def test_no_gradient_needed_keeps_no_gradient_buffer(monkeypatch):
    """Evaluation (logits without grad) must not write a full-size gradient."""
    # the eager kernels (the default backend) write the gradient when asked `with_grad`
    calls = []
    original = _sigmoid_kernel._eager_terms

    def spy(*args):
        calls.append(args[-1])  # with_grad
        return original(*args)

    monkeypatch.setattr(_sigmoid_kernel, "_eager_terms", spy)
    x, t = case(seed=3)
    sigmoid_focal_loss(x, t, reduction="sum")
    assert calls == [False]
    calls.clear()
    sigmoid_focal_loss(x.clone().requires_grad_(True), t, reduction="sum")
    assert calls == [True]


@pytest.mark.parametrize("gamma", [0.0, 0.5, 2.0, 3.3])
def test_composite_path_gradient_at_zero_logits(gamma):
    """Exactly-zero logits (zero-initialised heads, ReLU outputs) get σ'(0) right on the
    autograd path too (targets with a gradient, or inside a user's torch.compile), where
    abs/clamp_min derivatives at 0 once gave 1 - t instead of 1/2 - t."""
    x = torch.tensor([[0.0, -0.0, 0.0], [0.0, 0.0, -0.0]])
    t = torch.tensor([[0.0, 1.0, 0.3], [1.0, 0.0, 0.7]])
    expected = textbook_grad(x, t, gamma=gamma).float()

    fused = x.clone().requires_grad_(True)
    sigmoid_focal_loss(fused, t, 0.25, gamma, "sum").backward()
    composite = x.clone().requires_grad_(True)
    sigmoid_focal_loss(composite, t.clone().requires_grad_(True), 0.25, gamma, "sum").backward()

    assert_close(fused.grad, expected)
    assert_close(composite.grad, expected)
    assert (expected.abs() > 0.01).all()  # not a case where every formula gives ~0
