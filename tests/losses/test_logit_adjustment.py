"""Logit adjustment in the softmax loss: ``x + τ·log π`` (Menon et al. 2021), balanced softmax."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch.autograd import gradcheck, gradgradcheck

from lightning_focal import SoftmaxFocalLoss, adjust_logits, softmax_focal_loss

COUNTS = torch.tensor([500.0, 120.0, 40.0, 9.0, 5.0], dtype=torch.float64)
PRIORS = COUNTS / COUNTS.sum()


def _data(shape=(16, 5), seed=0):
    g = torch.Generator().manual_seed(seed)
    x = (3 * torch.randn(*shape, generator=g, dtype=torch.float64)).requires_grad_()
    target_shape = (shape[0], *shape[2:])
    y = torch.randint(0, shape[1], target_shape, generator=g)
    return x, y


def _double_module(**kwargs) -> SoftmaxFocalLoss:
    """A float64 module whose priors were set in float64 (a float32 π is ~1e-7 off)."""
    loss = SoftmaxFocalLoss(**kwargs).double()
    loss.class_priors = COUNTS
    return loss


def _shift(x, tau):
    shift = tau * PRIORS.log()
    return shift.view(-1, *([1] * (x.dim() - 2))) if x.dim() > 2 else shift


@pytest.mark.parametrize("tau", [0.5, 1.0, 2.0])
@pytest.mark.parametrize("shape", [(16, 5), (4, 5, 3, 2), (5,)])
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_gamma_0_is_cross_entropy_of_adjusted_logits(tau, shape, reduction) -> None:
    if len(shape) == 1:
        x = torch.randn(5, dtype=torch.float64, requires_grad=True)
        y = torch.tensor(3)
    else:
        x, y = _data(shape)
    expected = F.cross_entropy(x + _shift(x, tau), y, reduction=reduction)
    (g_expected,) = torch.autograd.grad(expected.sum(), x)
    for loss in (
        softmax_focal_loss(
            x, y, gamma=0.0, reduction=reduction, logit_adjustment=tau, class_priors=COUNTS
        ),
        _double_module(gamma=0.0, reduction=reduction, logit_adjustment=tau)(x, y),
    ):
        (g,) = torch.autograd.grad(loss.sum(), x)
        torch.testing.assert_close(loss, expected, rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(g, g_expected, rtol=1e-12, atol=1e-12)


def test_gamma_0_with_weights_smoothing_and_ignored_rows() -> None:
    x, y = _data()
    y[::4] = -100
    alpha = torch.tensor([0.2, 0.5, 1.0, 2.0, 3.0], dtype=torch.float64)
    for smoothing in (0.0, 0.1):
        expected = F.cross_entropy(x + _shift(x, 1.0), y, weight=alpha, label_smoothing=smoothing)
        got = softmax_focal_loss(
            x, y, gamma=0.0, alpha=alpha, label_smoothing=smoothing,
            logit_adjustment=1.0, class_priors=PRIORS,
        )  # fmt: skip
        torch.testing.assert_close(got, expected, rtol=1e-12, atol=1e-12)
        g, g_expected = (torch.autograd.grad(v, x)[0] for v in (got, expected))
        torch.testing.assert_close(g, g_expected, rtol=1e-10, atol=1e-12)


def test_gamma_2_is_focal_loss_of_adjusted_logits() -> None:
    x, y = _data()
    got = softmax_focal_loss(x, y, gamma=2.0, logit_adjustment=1.0, class_priors=COUNTS)
    expected = softmax_focal_loss(x + _shift(x, 1.0), y, gamma=2.0)
    torch.testing.assert_close(got, expected, rtol=1e-12, atol=1e-12)
    # and the textbook formula
    log_p = torch.log_softmax(x + _shift(x, 1.0), dim=1).gather(1, y[:, None]).squeeze(1)
    textbook = (-((1 - log_p.exp()) ** 2) * log_p).mean()
    torch.testing.assert_close(got, textbook, rtol=1e-10, atol=1e-12)


def test_module_is_the_function_and_predictions_stay_plain() -> None:
    x, y = _data()
    before = x.detach().clone()
    loss = _double_module(gamma=2.0, logit_adjustment=1.0)
    torch.testing.assert_close(
        loss(x, y),
        softmax_focal_loss(x, y, gamma=2.0, logit_adjustment=1.0, class_priors=COUNTS),
    )
    assert torch.equal(x.detach(), before)  # the logits themselves are not changed
    # the module keeps normalised priors; integer counts are accepted
    torch.testing.assert_close(loss.class_priors, PRIORS)
    loss.class_priors = torch.tensor([5, 1, 1, 1, 2])
    torch.testing.assert_close(loss.class_priors.sum(), torch.tensor(1.0, dtype=torch.float64))


def test_second_order_and_functorch_through_the_adjustment() -> None:
    x, y = _data((6, 5))
    for gamma in (0.0, 0.5, 2.0):
        fn = lambda v, g=gamma: softmax_focal_loss(  # noqa: E731
            v, y, gamma=g, logit_adjustment=1.0, class_priors=PRIORS
        )
        assert gradcheck(fn, (x,))
        assert gradgradcheck(fn, (x,))
    # per-sample gradients (torch.func.vmap over grad) equal a Python loop
    per_sample = torch.func.vmap(
        torch.func.grad(
            lambda v, t: softmax_focal_loss(
                v[None], t[None], gamma=2.0, logit_adjustment=1.0, class_priors=PRIORS
            )
        )
    )(x.detach(), y)
    for i in range(x.shape[0]):
        xi = x.detach()[i : i + 1].clone().requires_grad_()
        loss = softmax_focal_loss(
            xi, y[i : i + 1], gamma=2.0, logit_adjustment=1.0, class_priors=PRIORS
        )
        torch.testing.assert_close(per_sample[i], torch.autograd.grad(loss, xi)[0][0])


def test_tau_tensor_gets_its_gradient() -> None:
    x, y = _data((6, 5))
    tau = torch.tensor(0.7, dtype=torch.float64, requires_grad=True)
    assert gradcheck(
        lambda t: softmax_focal_loss(
            x.detach(), y, gamma=2.0, logit_adjustment=t, class_priors=PRIORS
        ),
        (tau,),
    )


def test_missing_or_bad_priors_are_refused() -> None:
    x, y = _data()
    with pytest.raises(ValueError, match="needs class_priors"):
        softmax_focal_loss(x, y, logit_adjustment=1.0)
    with pytest.raises(ValueError, match=r"loss\.class_priors"):
        SoftmaxFocalLoss(logit_adjustment=1.0)(x, y)
    with pytest.raises(ValueError, match="> 0"):
        SoftmaxFocalLoss(logit_adjustment=1.0, class_priors=[3, 0, 1, 1, 1])
    with pytest.raises(ValueError, match="5 classes"):
        softmax_focal_loss(x, y, logit_adjustment=1.0, class_priors=[1.0, 2.0])
    with pytest.raises(ValueError, match="num_classes=5"):
        SoftmaxFocalLoss(logit_adjustment=1.0, num_classes=5).class_priors = [1.0, 2.0]
    with pytest.raises(ValueError, match="finite"):
        SoftmaxFocalLoss(logit_adjustment=float("inf"))
    with pytest.raises(ValueError, match="requires grad"):
        SoftmaxFocalLoss(logit_adjustment=1.0).class_priors = torch.ones(5, requires_grad=True)
    # τ = 0: no adjustment and no priors needed
    torch.testing.assert_close(SoftmaxFocalLoss(gamma=0.0).double()(x, y), F.cross_entropy(x, y))


def test_priors_round_trip_through_the_state_dict_and_bad_ones_are_named() -> None:
    source = SoftmaxFocalLoss(logit_adjustment=1.0, class_priors=COUNTS)
    target = SoftmaxFocalLoss(logit_adjustment=1.0)
    target.load_state_dict(source.state_dict())
    torch.testing.assert_close(target.class_priors, source.class_priors)
    bad = {**source.state_dict(), "class_priors": torch.tensor([0.5, -0.1, 0.2, 0.2, 0.2])}
    with pytest.raises(RuntimeError, match="invalid value for class_priors"):
        SoftmaxFocalLoss(logit_adjustment=1.0).load_state_dict(bad)


def test_adjust_logits_on_the_class_dimension() -> None:
    x = torch.zeros(2, 3, 4)
    out = adjust_logits(x, 2.0, torch.tensor([1.0, 1.0, 2.0]))
    expected = 2.0 * torch.log(torch.tensor([0.25, 0.25, 0.5]))
    torch.testing.assert_close(out[:, :, 0], expected.expand(2, 3))
    assert out.shape == x.shape
