"""The loss modules as people use them: attribute assignment, checkpoints, devices and bad
values refused where they enter. Each case failed before the loss layer was rebuilt."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from lightning_focal import (
    FLSD53,
    DenseFocalLoss,
    FocalLossBase,
    SigmoidFocalLoss,
    SoftmaxFocalLoss,
    sigmoid_focal_loss,
    softmax_focal_loss,
)
from lightning_focal.losses import get_backend, set_backend


def test_gamma_assignment_copies_in_place_and_validates() -> None:
    loss = SoftmaxFocalLoss(gamma=2.0)
    buffer = loss.gamma
    loss.gamma = 0.5  # kornia/MONAI users and their callbacks write exactly this
    assert loss.gamma is buffer and float(buffer) == 0.5
    loss.gamma = torch.tensor(1.5)
    assert loss.gamma is buffer and float(buffer) == 1.5
    loss.gamma = [1.0, 2.0, 3.0]
    assert loss.gamma.tolist() == [1.0, 2.0, 3.0]
    per_class = loss.gamma
    loss.gamma = [0.0, 0.5, 1.0]
    assert loss.gamma is per_class
    with pytest.raises(ValueError, match="finite γ >= 0"):
        loss.gamma = -1.0
    assert loss.gamma.tolist() == [0.0, 0.5, 1.0]  # a refused value changes nothing
    loss.gamma = FLSD53
    assert loss.gamma is None and loss.gamma_policy == FLSD53
    loss.gamma = {"thresholds": [0.2], "gammas": [5.0, 3.0]}
    assert loss.gamma_policy == FLSD53
    loss.gamma = 2.0
    assert loss.gamma_policy is None and float(loss.gamma) == 2.0


def test_alpha_assignment_follows_each_family() -> None:
    softmax = SoftmaxFocalLoss(num_classes=3)
    softmax.alpha = torch.tensor([0.5, 1.0, 2.0])
    assert softmax.alpha.tolist() == [0.5, 1.0, 2.0]
    with pytest.raises(ValueError, match="expected num_classes=3"):
        softmax.alpha = [1.0, 2.0]
    with pytest.raises(ValueError, match="must be a per-class tensor"):
        softmax.alpha = 0.25
    softmax.alpha = None
    assert softmax.alpha is None and "alpha" not in softmax.state_dict()
    sigmoid = SigmoidFocalLoss(alpha=0.25)
    sigmoid.alpha = 0.5
    assert float(sigmoid.alpha) == 0.5
    with pytest.raises(ValueError, match=r"must lie in \[0, 1\]"):
        sigmoid.alpha = 2.0


def test_tensor_that_requires_grad_is_refused_by_the_module_with_the_fix() -> None:
    loss = SoftmaxFocalLoss()
    with pytest.raises(ValueError, match="pass the tensor to the function"):
        loss.gamma = torch.tensor(2.0, requires_grad=True)


def test_assignment_does_not_recompile_a_compiled_loss() -> None:
    # the buffer keeps its identity, so a compiled graph reads the new value as an input
    loss = SigmoidFocalLoss(gamma=2.0, alpha=0.25, reduction="sum")
    gamma = loss.gamma
    for value in (0.0, 0.5, 1.0, 3.3):
        loss.gamma = value
        assert loss.gamma is gamma


def test_state_dict_round_trip_adopts_shapes() -> None:
    source = SoftmaxFocalLoss(gamma=[1.0, 2.0, 3.0], alpha=[0.2, 0.3, 0.5])
    target = SoftmaxFocalLoss()
    target.load_state_dict(source.state_dict())
    assert target.gamma.tolist() == [1.0, 2.0, 3.0]
    assert target.alpha.tolist() == pytest.approx([0.2, 0.3, 0.5])


def test_a_checkpoint_without_alpha_loads_as_no_alpha() -> None:
    # the best checkpoint of a deferred-α (DRW) run predates the switch: loading it into the
    # module that trained on (α now set) must give α None, not "Missing key(s): alpha"
    early = SoftmaxFocalLoss(gamma=2.0).state_dict()
    trained = SoftmaxFocalLoss(gamma=2.0, alpha=[0.5, 1.0, 2.0])
    trained.load_state_dict(early)
    assert trained.alpha is None
    priors = SoftmaxFocalLoss(logit_adjustment=1.0, class_priors=[3.0, 1.0])
    priors.load_state_dict(SoftmaxFocalLoss(logit_adjustment=1.0).state_dict())
    assert priors.class_priors is None
    # a state dict with none of the loss's keys (a model saved before the loss) leaves it alone
    untouched = SoftmaxFocalLoss(alpha=[1.0, 2.0])
    untouched.load_state_dict({}, strict=False)
    assert untouched.alpha.tolist() == [1.0, 2.0]


@pytest.mark.parametrize(
    ("loss", "state", "match"),
    [
        (SoftmaxFocalLoss(num_classes=3), {"gamma": torch.tensor(-1.0)}, "gamma"),
        (
            SoftmaxFocalLoss(num_classes=3),
            {"gamma": torch.tensor(2.0), "alpha": torch.ones(4)},
            "alpha",
        ),
        (
            SigmoidFocalLoss(alpha=0.25),
            {"gamma": torch.tensor(2.0), "alpha": torch.tensor(2.0)},
            "alpha",
        ),
        (
            SoftmaxFocalLoss(gamma=[1.0, 2.0, 3.0]),
            {"gamma": torch.tensor([1.0, 2.0, 3.0]), "alpha": torch.ones(2)},
            "alpha",
        ),
    ],
)
def test_bad_checkpoint_values_are_refused_at_load_naming_the_key(loss, state, match) -> None:
    before = {k: v.clone() for k, v in loss.state_dict().items()}
    module = torch.nn.ModuleDict({"head": loss})
    with pytest.raises(RuntimeError, match=rf"head\.{match}"):
        module.load_state_dict({f"head.{k}": v for k, v in state.items()}, strict=False)
    after = loss.state_dict()
    assert before.keys() == after.keys()
    for key in before:
        assert torch.equal(before[key], after[key])


def test_meta_or_other_device_alpha_is_refused_naming_both_devices() -> None:
    x, y = torch.randn(4, 3), torch.tensor([0, 1, 2, 1])
    with pytest.raises(ValueError, match="alpha is on meta but the input is on cpu"):
        softmax_focal_loss(x, y, alpha=torch.ones(3, device="meta"))
    with pytest.raises(ValueError, match="weight is on meta but the input is on cpu"):
        sigmoid_focal_loss(x, torch.zeros(4, 3), weight=torch.ones(4, 3, device="meta"))


@pytest.mark.parametrize(
    "bad", [0, 0.0, -2.0, float("nan"), float("inf"), torch.tensor(0.0), torch.tensor(-1.0)]
)
def test_normalizer_that_is_not_positive_is_refused(bad) -> None:
    x, t = torch.randn(2, 5, 3), torch.zeros(2, 5, 3)
    with pytest.raises(ValueError, match="normalizer must be finite and > 0"):
        DenseFocalLoss()(x, t, normalizer=bad)
    with pytest.raises(ValueError, match="normalizer must be finite and > 0"):
        sigmoid_focal_loss(x, t, reduction="sum", normalizer=bad)


def test_label_smoothing_keeps_ignored_rows_inert_at_any_logit() -> None:
    big = torch.finfo(torch.float32).max
    x = torch.tensor([[big, -big, 0.0], [0.5, -1.0, 2.0], [-big, big, big]], requires_grad=True)
    y = torch.tensor([-100, 2, -100])
    ours = softmax_focal_loss(x, y, gamma=0.0, label_smoothing=0.1)
    ref_x = x.detach().clone().requires_grad_()
    ref = F.cross_entropy(ref_x, y, label_smoothing=0.1)
    torch.testing.assert_close(ours, ref)
    (g,) = torch.autograd.grad(ours, x)
    (rg,) = torch.autograd.grad(ref, ref_x)
    torch.testing.assert_close(g, rg)
    assert torch.isfinite(softmax_focal_loss(x, y, gamma=2.0, label_smoothing=0.1))


def test_gamma_0_equals_bce_with_logits_at_infinite_logits() -> None:
    inf = float("inf")
    x = torch.tensor([[inf, -inf, inf, -inf, 0.0, 3.0]])
    t = torch.tensor([[1.0, 0.0, 0.0, 1.0, 1.0, 0.0]])
    ref = F.binary_cross_entropy_with_logits(x, t, reduction="none")
    previous = get_backend()
    try:
        for backend in ("eager", "auto"):
            set_backend(backend)
            ours = sigmoid_focal_loss(x, t, alpha=None, gamma=0.0)
            torch.testing.assert_close(ours, ref, equal_nan=True)
    finally:
        set_backend(previous)


def test_gamma_0_equals_cross_entropy_at_infinite_logits() -> None:
    inf = float("inf")
    x = torch.tensor([[inf, 0.0, 1.0], [-inf, 0.0, 1.0], [0.0, 1.0, 2.0]])
    y = torch.tensor([0, 1, 2])
    ref = F.cross_entropy(x, y, reduction="none")
    torch.testing.assert_close(
        softmax_focal_loss(x, y, gamma=0.0, reduction="none"), ref, equal_nan=True
    )


def test_every_family_shares_one_base_and_a_forward_that_calls_the_function() -> None:
    for cls in (SoftmaxFocalLoss, SigmoidFocalLoss, DenseFocalLoss):
        assert issubclass(cls, FocalLossBase)
    x, y = torch.randn(4, 3), torch.tensor([0, 1, 2, 1])
    torch.testing.assert_close(
        SoftmaxFocalLoss(gamma=1.5, label_smoothing=0.1)(x, y),
        softmax_focal_loss(x, y, 1.5, label_smoothing=0.1),
    )
    t = F.one_hot(y, 3).float()
    torch.testing.assert_close(
        SigmoidFocalLoss(gamma=1.5, alpha=0.3, reduction="sum")(x, t),
        sigmoid_focal_loss(x, t, 0.3, 1.5, "sum"),
    )


def test_statistics_build_no_full_size_temporaries_per_chunk() -> None:
    # a batch far beyond one chunk gives the same statistics as the sums over its halves
    loss = SigmoidFocalLoss(gamma=2.0)
    x = torch.randn(40, 5000)
    t = (torch.rand(40, 5000) < 0.01).float()
    full = loss.statistics(x, t)
    p = torch.sigmoid(x)
    p_t = torch.where(t > 0.5, p, 1 - p)
    torch.testing.assert_close(full["modulating"], ((1 - p_t) ** 2).mean(), rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(full["easy_fraction"], (p_t > 0.5).float().mean())
    assert int(full["num_positives"]) == int((t > 0.5).sum())
