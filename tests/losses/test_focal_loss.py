"""The focal-loss modules (SoftmaxFocalLoss, SigmoidFocalLoss): buffers, in-place updates, state_dict round trips, functional parity."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.testing import assert_close

from lightning_focal import (
    FLSD53,
    SigmoidFocalLoss,
    SoftmaxFocalLoss,
    sigmoid_focal_loss,
    softmax_focal_loss,
)


def softmax_batch(seed=0, num_classes=3, dtype=torch.float64):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(6, num_classes, 2, generator=gen, dtype=dtype) * 2
    target = torch.randint(0, num_classes, (6, 2), generator=gen)
    target[0, 0] = 255
    return x, target


def sigmoid_batch(seed=0, num_classes=3, dtype=torch.float64):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(2, 5, num_classes, generator=gen, dtype=dtype) * 2
    t = (torch.rand(2, 5, num_classes, generator=gen) > 0.7).to(dtype)
    return x, t


def value_and_grad(fn, x):
    x = x.detach().clone().requires_grad_(True)
    out = fn(x)
    upstream = torch.linspace(-1.5, 2.0, out.numel(), dtype=out.dtype).reshape(out.shape)
    (grad,) = torch.autograd.grad(out, x, upstream)
    return out.detach(), grad


# ---- construction and validation --------------------------------------------------------


@pytest.mark.parametrize(
    ("cls", "kwargs", "match"),
    [
        (SoftmaxFocalLoss, dict(reduction="avg"), "avg is not a valid value for reduction"),
        (SigmoidFocalLoss, dict(reduction="avg"), "avg is not a valid value for reduction"),
        (SoftmaxFocalLoss, dict(gamma=-1.0), "`gamma` must be a finite γ >= 0, got -1.0"),
        (SigmoidFocalLoss, dict(gamma=-1.0), "`gamma` must be a finite γ >= 0, got -1.0"),
        (
            SoftmaxFocalLoss,
            dict(gamma=torch.tensor([1.0, -2.0])),
            "`gamma` must be a finite γ >= 0",
        ),
        (SigmoidFocalLoss, dict(alpha=[0.2, 1.2]), r"must lie in \[0, 1\]"),
        (SoftmaxFocalLoss, dict(alpha=0.25), "alpha for softmax focal loss must be a per-class"),
        (SoftmaxFocalLoss, dict(alpha=[1.0, -1.0]), "alpha must be finite and >= 0"),
        (SoftmaxFocalLoss, dict(label_smoothing=-0.1), r"label_smoothing must be in \[0, 1\]"),
        (
            SoftmaxFocalLoss,
            dict(num_classes=3, alpha=[1.0, 1.0]),
            "alpha has 2 per-class values, expected num_classes=3",
        ),
        (
            SoftmaxFocalLoss,
            dict(num_classes=3, gamma=[1.0, 1.0]),
            "gamma has 2 per-class values, expected num_classes=3",
        ),
    ],
)
def test_bad_arguments_raise(cls, kwargs, match):
    with pytest.raises(ValueError, match=match):
        cls(**kwargs)


@pytest.mark.parametrize("kwargs", [dict(ignore_index=255), dict(label_smoothing=0.1)])
def test_sigmoid_takes_no_softmax_only_arguments(kwargs):
    with pytest.raises(TypeError, match=f"unexpected keyword argument '{next(iter(kwargs))}'"):
        SigmoidFocalLoss(**kwargs)


def test_weight_and_normalizer_are_refused_by_softmax():
    x, target = softmax_batch()
    with pytest.raises(TypeError, match="unexpected keyword argument 'weight'"):
        SoftmaxFocalLoss()(x, target, weight=torch.ones(6, 2))
    with pytest.raises(TypeError, match="unexpected keyword argument 'normalizer'"):
        SoftmaxFocalLoss()(x, target, normalizer=3.0)


# ---- buffers ----------------------------------------------------------------------------


def test_gamma_and_alpha_are_buffers_in_state_dict():
    m = SoftmaxFocalLoss(gamma=2.0, alpha=[1.0, 2.0, 3.0])
    assert dict(m.named_buffers()).keys() == {"gamma", "alpha"}
    assert list(m.parameters()) == []
    state = m.state_dict()
    assert_close(state["gamma"], torch.tensor(2.0))
    assert_close(state["alpha"], torch.tensor([1.0, 2.0, 3.0]))
    assert float(m.gamma) == 2.0
    assert "alpha" not in SoftmaxFocalLoss().state_dict()


def test_buffers_follow_dtype_and_device_moves():
    m = SigmoidFocalLoss(gamma=[1.0, 2.0, 0.5], alpha=0.25)
    m.to(torch.float64)
    assert m.gamma.dtype == torch.float64 and m.alpha.dtype == torch.float64
    m.set_gamma(0.5 * torch.ones(3))
    assert m.gamma.dtype == torch.float64  # an in-place update keeps the module's dtype
    assert_close(m.gamma, torch.full((3,), 0.5, dtype=torch.float64))
    m.set_gamma(2.0)  # a new shape: a new buffer, still float64
    m.set_alpha([0.1, 0.2, 0.3])
    assert m.gamma.dtype == torch.float64 and m.alpha.dtype == torch.float64
    m.to("meta")
    assert m.gamma.device.type == "meta" and m.alpha.device.type == "meta"


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_buffers_follow_cuda():
    m = SoftmaxFocalLoss(gamma=2.0, alpha=[1.0, 2.0, 3.0]).cuda()
    assert m.gamma.is_cuda and m.alpha.is_cuda
    x, target = softmax_batch()
    assert_close(
        m(x.cuda(), target.cuda()).cpu(), SoftmaxFocalLoss(2.0, [1.0, 2.0, 3.0])(x, target)
    )


def test_float_of_gamma_tracks_set_gamma():
    m = SoftmaxFocalLoss(gamma=2)
    assert float(m.gamma) == 2.0
    m.set_gamma(0.25)
    assert float(m.gamma) == 0.25


def test_set_gamma_and_set_alpha_update_in_place():
    m = SoftmaxFocalLoss(gamma=2.0, alpha=[1.0, 2.0, 3.0])
    gamma, alpha = m.gamma, m.alpha
    gamma_ptr, alpha_ptr = gamma.data_ptr(), alpha.data_ptr()
    m.set_gamma(0.5)
    m.set_gamma(torch.tensor(1.5))
    m.set_alpha([0.5, 0.5, 2.0])
    m.set_alpha(torch.tensor([1.0, 1.0, 1.0], dtype=torch.float64))
    assert m.gamma is gamma and m.gamma.data_ptr() == gamma_ptr
    assert m.alpha is alpha and m.alpha.data_ptr() == alpha_ptr
    assert float(m.gamma) == 1.5
    assert_close(m.alpha, torch.ones(3))


def test_set_gamma_changes_shape_and_stays_a_buffer():
    m = SoftmaxFocalLoss(gamma=2.0)
    m.set_gamma([1.0, 2.0, 3.0])
    assert m.gamma.shape == (3,)
    assert_close(m.state_dict()["gamma"], torch.tensor([1.0, 2.0, 3.0]))
    m.set_alpha([1.0, 1.0, 2.0])
    assert "alpha" in m.state_dict()
    m.set_alpha(None)
    assert m.alpha is None and "alpha" not in m.state_dict()


def test_set_gamma_rejects_bad_values_and_keeps_the_old_one():
    m = SoftmaxFocalLoss(gamma=2.0)
    with pytest.raises(ValueError, match="`gamma` must be a finite γ >= 0"):
        m.set_gamma(-0.5)
    assert float(m.gamma) == 2.0


def test_set_gamma_does_not_alias_the_callers_tensor():
    m = SoftmaxFocalLoss(gamma=[1.0, 1.0, 1.0])
    external = torch.tensor([2.0, 2.0, 2.0])
    m.set_gamma([0.0, 0.0, 0.0])
    m.set_gamma(external)
    external.fill_(9.0)
    assert_close(m.gamma, torch.full((3,), 2.0))
    fresh = SoftmaxFocalLoss(gamma=external)
    external.fill_(4.0)
    assert_close(fresh.gamma, torch.full((3,), 9.0))


# ---- state_dict round trips -------------------------------------------------------------


def round_trip(module, fresh, tmp_path):
    path = tmp_path / "loss.pt"
    torch.save(module.state_dict(), path)
    fresh.load_state_dict(torch.load(path, weights_only=True))
    return fresh


def test_round_trip_gamma_scalar_to_per_class_alpha_none(tmp_path):
    trained = SoftmaxFocalLoss(gamma=2.0, ignore_index=255)
    trained.set_gamma([0.5, 1.0, 4.0])
    fresh = round_trip(trained, SoftmaxFocalLoss(gamma=2.0, ignore_index=255), tmp_path)
    assert fresh.alpha is None
    assert_close(fresh.gamma, torch.tensor([0.5, 1.0, 4.0]))
    assert fresh.gamma_policy is None
    x, target = softmax_batch()
    assert_close(fresh(x, target), trained(x, target))
    ptr = fresh.gamma.data_ptr()
    fresh.set_gamma([1.0, 1.0, 1.0])
    assert fresh.gamma.data_ptr() == ptr


def test_round_trip_alpha_appears_during_training(tmp_path):
    trained = SoftmaxFocalLoss(gamma=2.0, ignore_index=255)
    trained.set_alpha([0.5, 1.0, 1.5])
    trained.set_gamma(1.0)
    fresh = round_trip(trained, SoftmaxFocalLoss(gamma=2.0, ignore_index=255), tmp_path)
    assert_close(fresh.alpha, torch.tensor([0.5, 1.0, 1.5]))
    assert float(fresh.gamma) == 1.0
    x, target = softmax_batch(seed=1)
    assert_close(fresh(x, target), trained(x, target))


def test_round_trip_sigmoid_inside_a_parent_module(tmp_path):
    class Head(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.linear = nn.Linear(4, 3)
            self.criterion = SigmoidFocalLoss(gamma=2.0, alpha=0.25)

    trained = Head()
    trained.criterion.set_gamma([1.0, 2.0, 3.0])
    trained.criterion.set_alpha([0.1, 0.5, 0.9])
    assert {"criterion.gamma", "criterion.alpha"} <= trained.state_dict().keys()
    fresh = round_trip(trained, Head(), tmp_path)
    assert_close(fresh.criterion.gamma, torch.tensor([1.0, 2.0, 3.0]))
    assert_close(fresh.criterion.alpha, torch.tensor([0.1, 0.5, 0.9]))
    assert_close(fresh.linear.weight, trained.linear.weight)


def test_round_trip_keeps_float64(tmp_path):
    trained = SoftmaxFocalLoss(gamma=[1.0, 2.0, 3.0]).to(torch.float64)
    fresh = round_trip(trained, SoftmaxFocalLoss(gamma=1.0), tmp_path)
    assert fresh.gamma.dtype == torch.float64


# ---- the module computes exactly what the functions compute ----------------------------


@pytest.mark.parametrize("reduction", ["none", "mean", "sum"])
@pytest.mark.parametrize(
    "kwargs",
    [
        dict(gamma=2.0, ignore_index=255),
        dict(gamma=[0.5, 1.0, 3.0], alpha=[0.5, 1.0, 2.0], ignore_index=255),
        dict(gamma=0.5, alpha=[0.5, 1.0, 2.0], label_smoothing=0.1, poly1=0.4, ignore_index=255),
        dict(gamma=FLSD53, ignore_index=255),
    ],
)
def test_softmax_module_equals_function(reduction, kwargs):
    x, target = softmax_batch(seed=2)
    module = SoftmaxFocalLoss(reduction=reduction, **kwargs)
    functional = {k: v for k, v in kwargs.items() if k not in ("gamma", "alpha")}
    alpha = None if "alpha" not in kwargs else torch.tensor(kwargs["alpha"])
    gamma = kwargs["gamma"]
    expected, expected_grad = value_and_grad(
        lambda z: softmax_focal_loss(z, target, gamma, alpha, reduction=reduction, **functional), x
    )
    actual, grad = value_and_grad(lambda z: module(z, target), x)
    assert_close(actual, expected)
    assert_close(grad, expected_grad)


@pytest.mark.parametrize("reduction", ["none", "mean", "sum"])
@pytest.mark.parametrize(
    "kwargs",
    [
        dict(gamma=2.0, alpha=0.25),
        dict(gamma=[0.5, 1.0, 3.0], alpha=[0.1, 0.5, 0.9], poly1=0.3),
        dict(gamma=FLSD53, alpha=None),
    ],
)
def test_sigmoid_module_equals_function(reduction, kwargs):
    x, t = sigmoid_batch(seed=3)
    weight = torch.tensor([1.0, 0.0, 1.0, 1.0, 0.5]).view(1, 5, 1)
    module = SigmoidFocalLoss(reduction=reduction, **kwargs)
    alpha = kwargs["alpha"]
    alpha = torch.tensor(alpha) if isinstance(alpha, list) else alpha
    for extra in (dict(), dict(weight=weight)):
        expected, expected_grad = value_and_grad(
            lambda z, e=extra: sigmoid_focal_loss(
                z, t, alpha, kwargs["gamma"], reduction, poly1=kwargs.get("poly1", 0.0), **e
            ),
            x,
        )
        actual, grad = value_and_grad(lambda z, e=extra: module(z, t, **e), x)
        assert_close(actual, expected)
        assert_close(grad, expected_grad)


@pytest.mark.parametrize("module_reduction", ["mean", "sum", "none"])
def test_sigmoid_module_normalizer_sums_and_divides(module_reduction):
    x, t = sigmoid_batch(seed=4)
    mask = torch.ones(2, 5, 3, dtype=torch.bool)
    mask[0, 1] = False
    num_pos = t.sum().clamp_min(1.0)
    module = SigmoidFocalLoss(gamma=2.0, alpha=0.25, reduction=module_reduction)
    p = torch.sigmoid(x)
    p_t = torch.where(t == 1, p, 1 - p)
    reference = (torch.where(t == 1, 0.25, 0.75) * -((1 - p_t) ** 2) * torch.log(p_t))[mask].sum()
    assert_close(module(x, t, weight=mask, normalizer=num_pos), reference / num_pos)


def test_module_on_float32_input_with_float64_buffers():
    m = SoftmaxFocalLoss(gamma=[0.5, 1.0, 3.0], alpha=[0.5, 1.0, 2.0]).to(torch.float64)
    x, target = softmax_batch(seed=5, dtype=torch.float32)
    target[target == 255] = 0
    out = m(x, target)
    assert out.dtype == torch.float32
    expected = softmax_focal_loss(
        x.double(), target, torch.tensor([0.5, 1.0, 3.0]), torch.tensor([0.5, 1.0, 2.0])
    )
    assert_close(out, expected.float())


def test_repr_names_family_and_values():
    text = repr(SigmoidFocalLoss(gamma=1.5, alpha=0.25))
    assert text.startswith("SigmoidFocalLoss(") and "1.5" in text and "0.25" in text
    assert repr(SoftmaxFocalLoss()).startswith("SoftmaxFocalLoss(")
    assert "SampleDependentGamma" in repr(SoftmaxFocalLoss(gamma=FLSD53))
