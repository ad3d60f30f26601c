"""Sigmoid focal loss against torchvision, BCE and a float64 textbook formula."""

from __future__ import annotations

import inspect
import itertools
import math

import pytest
import torch
import torch.nn.functional as F
import torchvision.ops
from hypothesis import given, settings
from hypothesis import strategies as st
from torch.testing import assert_close

from lightning_focal import sigmoid_focal_loss

SHAPES = [(7,), (5, 4), (3, 4, 5)]
REDUCTIONS = ["none", "mean", "sum"]
ALPHAS = [0.25, 0.5, -1, None]
GAMMAS = [0.0, 0.5, 1.0, 2.0, 3.0]
TARGET_KINDS = ["hard", "soft"]


def make_case(shape, target_kind, dtype=torch.float64, seed=0, scale=3.0):
    """Moderate logits (torchvision is finite there) and hard 0/1 or soft [0, 1] targets."""
    gen = torch.Generator().manual_seed(seed)
    x = (torch.randn(shape, generator=gen, dtype=torch.float64) * scale).to(dtype)
    if target_kind == "hard":
        t = torch.randint(0, 2, shape, generator=gen).to(dtype)
    else:
        t = torch.rand(shape, generator=gen, dtype=torch.float64).to(dtype)
    return x, t


def value_and_grad(fn, x):
    """The loss and d(upstream · loss)/dx for a fixed, non-trivial upstream gradient."""
    x = x.detach().clone().requires_grad_(True)
    out = fn(x)
    upstream = torch.linspace(-1.5, 2.0, out.numel(), dtype=out.dtype).reshape(out.shape)
    (grad,) = torch.autograd.grad(out, x, upstream)
    return out.detach(), grad


def textbook(x, t, alpha, gamma, poly1=0.0):
    """-α_t (1-p_t)^γ log p_t (+ ε (1-p_t)^(γ+1)), elementwise, in float64 at moderate logits.

    ``-log p_t`` is written as the binary cross entropy, which equals it for 0/1 targets and
    is torchvision's generalisation to soft targets. ``alpha``/``gamma`` may be per-class
    tensors broadcast on the last dim.
    """
    x, t = x.double(), t.double()
    p = torch.sigmoid(x)
    p_t = p * t + (1 - p) * (1 - t)
    ce = -(t * torch.log(p) + (1 - t) * torch.log(1 - p))
    loss = (1 - p_t) ** gamma * ce
    if alpha is not None:
        loss = (alpha * t + (1 - alpha) * (1 - t)) * loss
    return loss + poly1 * (1 - p_t) ** (gamma + 1)


def reduce(loss, reduction):
    return {"none": loss, "mean": loss.mean(), "sum": loss.sum()}[reduction]


# ---- drop-in for torchvision.ops.sigmoid_focal_loss ------------------------------------


def test_signature_matches_torchvision():
    ours = list(inspect.signature(sigmoid_focal_loss).parameters.values())[:5]
    theirs = list(inspect.signature(torchvision.ops.sigmoid_focal_loss).parameters.values())
    assert [(p.name, p.default) for p in ours] == [(p.name, p.default) for p in theirs]


@pytest.mark.parametrize(
    ("shape", "reduction", "alpha", "gamma", "target_kind"),
    list(itertools.product(SHAPES, REDUCTIONS, ALPHAS, GAMMAS, TARGET_KINDS)),
)
def test_matches_torchvision(shape, reduction, alpha, gamma, target_kind):
    x, t = make_case(shape, target_kind, seed=len(shape))
    tv_alpha = -1 if alpha is None else alpha
    expected, expected_grad = value_and_grad(
        lambda z: torchvision.ops.sigmoid_focal_loss(z, t, tv_alpha, gamma, reduction), x
    )
    actual, grad = value_and_grad(lambda z: sigmoid_focal_loss(z, t, alpha, gamma, reduction), x)
    assert actual.shape == expected.shape
    assert actual.dtype == torch.float64
    assert_close(actual, expected)
    assert_close(grad, expected_grad)


@pytest.mark.parametrize(("reduction", "target_kind"), itertools.product(REDUCTIONS, TARGET_KINDS))
def test_defaults_match_torchvision_float32(reduction, target_kind):
    x, t = make_case((6, 9), target_kind, dtype=torch.float32, seed=3)
    expected, expected_grad = value_and_grad(
        lambda z: torchvision.ops.sigmoid_focal_loss(z, t, reduction=reduction), x
    )
    actual, grad = value_and_grad(lambda z: sigmoid_focal_loss(z, t, reduction=reduction), x)
    assert actual.dtype == torch.float32 and grad.dtype == torch.float32
    assert_close(actual, expected)
    assert_close(grad, expected_grad)


def test_zero_dim_input_matches_torchvision():
    x, t = torch.tensor(1.3, dtype=torch.float64), torch.tensor(1.0, dtype=torch.float64)
    expected, expected_grad = value_and_grad(lambda z: torchvision.ops.sigmoid_focal_loss(z, t), x)
    actual, grad = value_and_grad(lambda z: sigmoid_focal_loss(z, t), x)
    assert actual.shape == ()
    assert_close(actual, expected)
    assert_close(grad, expected_grad)


# ---- gamma = 0 and no alpha is binary cross entropy -------------------------------------

WEIGHT_KINDS = [None, "full", "per_class", "per_row", "mask"]


def make_weight(kind, shape, gen):
    if kind is None:
        return None
    if kind == "full":
        return torch.rand(shape, generator=gen, dtype=torch.float64) * 2
    if kind == "per_class":
        return torch.rand(shape[-1:], generator=gen, dtype=torch.float64) * 2
    if kind == "per_row":
        return torch.rand((*shape[:-1], 1), generator=gen, dtype=torch.float64) * 2
    mask = torch.rand(shape, generator=gen) > 0.3
    mask.view(-1)[0] = True
    return mask


@pytest.mark.parametrize(
    ("shape", "reduction", "weight_kind", "target_kind"),
    list(itertools.product(SHAPES, REDUCTIONS, WEIGHT_KINDS, TARGET_KINDS)),
)
def test_gamma0_matches_bce_with_logits(shape, reduction, weight_kind, target_kind):
    x, t = make_case(shape, target_kind, seed=11)
    weight = make_weight(weight_kind, shape, torch.Generator().manual_seed(5))
    bce_weight = None if weight is None else weight.to(torch.float64)

    def bce(z):
        if reduction == "mean" and weight is not None:
            # Documented difference: our "mean" divides by the summed (broadcast) weight so
            # that masked elements leave the denominator; BCE divides by the element count.
            summed = F.binary_cross_entropy_with_logits(z, t, weight=bce_weight, reduction="sum")
            return summed / bce_weight.expand(shape).sum()
        return F.binary_cross_entropy_with_logits(z, t, weight=bce_weight, reduction=reduction)

    expected, expected_grad = value_and_grad(bce, x)
    actual, grad = value_and_grad(
        lambda z: sigmoid_focal_loss(z, t, None, 0.0, reduction, weight=weight), x
    )
    assert_close(actual, expected)
    assert_close(grad, expected_grad)


def test_bool_mask_equals_float_mask():
    x, t = make_case((4, 6), "hard", seed=2)
    mask = torch.rand(4, 6, generator=torch.Generator().manual_seed(1)) > 0.5
    for reduction in REDUCTIONS:
        a, ga = value_and_grad(
            lambda z, r=reduction: sigmoid_focal_loss(z, t, reduction=r, weight=mask), x
        )
        b, gb = value_and_grad(
            lambda z, r=reduction: sigmoid_focal_loss(z, t, reduction=r, weight=mask.double()), x
        )
        assert_close(a, b)
        assert_close(ga, gb)
    masked = sigmoid_focal_loss(x, t, weight=mask)
    assert torch.all(masked[~mask] == 0)


# ---- independent float64 references for gamma > 0 ---------------------------------------

PER_CLASS_ALPHA = torch.tensor([0.1, 0.25, 0.5, 0.9, 1.0], dtype=torch.float64)
PER_CLASS_GAMMA = torch.tensor([0.0, 0.5, 1.0, 2.5, 4.0], dtype=torch.float64)


@pytest.mark.parametrize(
    ("shape", "alpha_kind", "gamma_kind", "poly1", "target_kind"),
    list(
        itertools.product(
            [(5,), (3, 5), (2, 3, 5)],
            ["none", "scalar", "per_class"],
            ["fraction", "integer", "per_class"],
            [0.0, 0.7],
            TARGET_KINDS,
        )
    ),
)
def test_reference_per_class(shape, alpha_kind, gamma_kind, poly1, target_kind):
    x, t = make_case(shape, target_kind, seed=7)
    alpha = {"none": None, "scalar": 0.3, "per_class": PER_CLASS_ALPHA}[alpha_kind]
    gamma = {"fraction": 1.5, "integer": 4.0, "per_class": PER_CLASS_GAMMA}[gamma_kind]
    for reduction in REDUCTIONS:
        expected, expected_grad = value_and_grad(
            lambda z, r=reduction: reduce(textbook(z, t, alpha, gamma, poly1), r), x
        )
        actual, grad = value_and_grad(
            lambda z, r=reduction: sigmoid_focal_loss(z, t, alpha, gamma, r, poly1=poly1), x
        )
        assert_close(actual, expected)
        assert_close(grad, expected_grad)


@pytest.mark.parametrize(
    ("shape", "alpha", "gamma", "weight_kind"),
    [
        ((70001,), 0.25, 2.0, None),
        ((70001,), None, 0.5, "full"),
        ((3, 110, 250), "per_class", "per_class", "per_row"),
        ((3, 110, 250), 0.25, 1.5, "per_class"),
    ],
)
def test_inputs_larger_than_one_eager_chunk(shape, alpha, gamma, weight_kind):
    """More than 2**16 elements: the eager kernels work chunk by chunk, whole rows at a time."""
    x, t = make_case(shape, "hard", seed=14)
    gen = torch.Generator().manual_seed(15)
    if alpha == "per_class":
        alpha = torch.rand(shape[-1], generator=gen, dtype=torch.float64)
    if gamma == "per_class":
        gamma = torch.rand(shape[-1], generator=gen, dtype=torch.float64) * 3
    weight = make_weight(weight_kind, shape, gen)
    for reduction in REDUCTIONS:

        def reference(z, r=reduction):
            loss = textbook(z, t, alpha, gamma, 0.2)
            if weight is None:
                return reduce(loss, r)
            loss = loss * weight
            return loss.sum() / weight.expand(shape).sum() if r == "mean" else reduce(loss, r)

        expected, expected_grad = value_and_grad(reference, x)
        actual, grad = value_and_grad(
            lambda z, r=reduction: sigmoid_focal_loss(
                z, t, alpha, gamma, r, weight=weight, poly1=0.2
            ),
            x,
        )
        assert_close(actual, expected)
        assert_close(grad, expected_grad)


@pytest.mark.parametrize("as_tensor", [False, True])
def test_float64_keeps_alpha_and_gamma_unrounded(as_tensor):
    """α and γ not representable in float32 must not pass through float32 (rel. error ~3e-8)."""
    x, t = make_case((4, 3), "hard", seed=16)
    alpha = [1 / 3, 0.1, 2 / 3] if as_tensor else 1 / 3
    gamma = [1 / 3, 0.7, 1.1] if as_tensor else 1 / 3
    if as_tensor:
        alpha = torch.tensor(alpha, dtype=torch.float64)
        gamma = torch.tensor(gamma, dtype=torch.float64)
    expected = textbook(x, t, alpha, gamma)
    assert_close(sigmoid_focal_loss(x, t, alpha, gamma), expected, rtol=1e-12, atol=0)


@pytest.mark.parametrize("alpha", [None, 0.25, 0.9])
def test_poly1_term_is_not_weighted_by_alpha(alpha):
    x, t = make_case((4, 3), "hard", seed=4)
    p_t = torch.where(t == 1, torch.sigmoid(x), torch.sigmoid(-x))
    extra = sigmoid_focal_loss(x, t, alpha, 2.0, poly1=0.5) - sigmoid_focal_loss(x, t, alpha, 2.0)
    assert_close(extra, 0.5 * (1 - p_t) ** 3)


def test_per_class_values_as_sequences_equal_tensors():
    x, t = make_case((3, 5), "hard", seed=8)
    from_lists = sigmoid_focal_loss(x, t, PER_CLASS_ALPHA.tolist(), PER_CLASS_GAMMA.tolist())
    from_tensors = sigmoid_focal_loss(x, t, PER_CLASS_ALPHA, PER_CLASS_GAMMA)
    assert_close(from_lists, from_tensors)


@pytest.mark.parametrize("normalizer_kind", ["float", "tensor", "int"])
@pytest.mark.parametrize("with_weight", [False, True])
def test_normalizer_divides_the_weighted_sum(normalizer_kind, with_weight):
    x, t = make_case((2, 6, 4), "hard", seed=9)
    weight = (
        make_weight("mask", (2, 6, 4), torch.Generator().manual_seed(3)) if with_weight else None
    )
    n = {"float": 3.5, "tensor": torch.tensor(3.5), "int": 3}[normalizer_kind]
    n_value = float(n)

    def ref(z):
        loss = textbook(z, t, 0.25, 2.0)
        if weight is not None:
            loss = loss * weight
        return loss.sum() / n_value

    expected, expected_grad = value_and_grad(ref, x)
    actual, grad = value_and_grad(
        lambda z: sigmoid_focal_loss(z, t, reduction="sum", weight=weight, normalizer=n), x
    )
    assert_close(actual, expected)
    assert_close(grad, expected_grad)


def test_mean_with_mask_averages_over_kept_elements():
    x, t = make_case((5, 4), "hard", seed=10)
    mask = make_weight("mask", (5, 4), torch.Generator().manual_seed(6))
    expected = textbook(x, t, 0.25, 2.0)[mask].mean()
    assert_close(sigmoid_focal_loss(x, t, reduction="mean", weight=mask), expected)


# ---- the worked example and properties --------------------------------------------------


def test_worked_example():
    x = torch.tensor([math.log(9.0)], dtype=torch.float64)  # p = 0.9
    t = torch.ones(1, dtype=torch.float64)
    ce = sigmoid_focal_loss(x, t, None, 0.0)
    fl = sigmoid_focal_loss(x, t, None, 2.0)
    assert_close(ce, torch.tensor([0.10536], dtype=torch.float64), atol=5e-6, rtol=0)
    assert_close(fl, torch.tensor([0.0010536], dtype=torch.float64), atol=5e-8, rtol=0)
    assert_close(fl, ce * 0.01)
    hard = torch.tensor([-math.log(9.0)], dtype=torch.float64)  # p_t = 0.1
    ratio = sigmoid_focal_loss(hard, t, None, 2.0) / sigmoid_focal_loss(hard, t, None, 0.0)
    assert_close(ratio, torch.tensor([0.81], dtype=torch.float64))
    # the same with the negative class: p_t = 1 - σ(x)
    assert_close(sigmoid_focal_loss(-x, 1 - t, None, 2.0), fl)


@st.composite
def logits_and_targets(draw):
    n = draw(st.integers(1, 12))
    finite = st.floats(-40, 40, allow_nan=False, allow_infinity=False)
    x = torch.tensor(draw(st.lists(finite, min_size=n, max_size=n)), dtype=torch.float64)
    if draw(st.booleans()):
        t = torch.tensor(draw(st.lists(st.sampled_from([0.0, 1.0]), min_size=n, max_size=n)))
    else:
        t = torch.tensor(draw(st.lists(st.floats(0, 1), min_size=n, max_size=n)))
    return x, t.double()


@settings(max_examples=50, deadline=None)
@given(case=logits_and_targets(), gamma=st.floats(0, 6))
def test_focal_between_zero_and_cross_entropy(case, gamma):
    x, t = case
    fl = sigmoid_focal_loss(x, t, None, gamma)
    # Neither F.binary_cross_entropy_with_logits nor F.softplus: on CPU the first loses
    # relative accuracy in the tails (4.1399374e-08 for the exact 4.1399376e-08 at x=-17,
    # t=0; 0 from x=-37) and the second returns x itself above its threshold of 20.
    zero = torch.zeros_like(x)
    ce = t * torch.logaddexp(zero, -x) + (1 - t) * torch.logaddexp(zero, x)
    # the kernel's ce = max(x, 0) - t·x + log1p(e^-|x|) (BCE's form) is good to eps·|x|
    # absolute: for a soft t near 1 and x >> 0 that is the whole of max(x, 0) - t·x
    atol = 4 * torch.finfo(torch.float64).eps * x.abs()
    assert torch.all(fl >= 0)
    assert torch.all(fl <= ce * (1 + 1e-12) + atol + 1e-300)


@settings(max_examples=50, deadline=None)
@given(case=logits_and_targets(), gammas=st.lists(st.floats(0, 6), min_size=2, max_size=4))
def test_focal_non_increasing_in_gamma(case, gammas):
    x, t = case
    losses = [sigmoid_focal_loss(x, t, None, g) for g in sorted(gammas)]
    for smaller_gamma, larger_gamma in itertools.pairwise(losses):
        assert torch.all(larger_gamma <= smaller_gamma * (1 + 1e-12) + 1e-300)


# ---- gradcheck in float64 ---------------------------------------------------------------

GRADCHECK_CASES = [
    dict(alpha=None, reduction="none", weight=None, normalizer=None, poly1=0.0),
    dict(alpha=0.25, reduction="mean", weight=None, normalizer=None, poly1=0.0),
    dict(alpha="per_class", reduction="sum", weight=None, normalizer=None, poly1=0.0),
    dict(alpha=0.25, reduction="sum", weight="per_class", normalizer=2.5, poly1=0.0),
    dict(alpha=0.75, reduction="mean", weight="mask", normalizer=None, poly1=0.4),
    dict(alpha="per_class", reduction="none", weight="full", normalizer=None, poly1=-0.3),
]


@pytest.mark.parametrize("gamma", [0.0, 0.3, 0.5, 1.0, 2.5, "per_class"])
@pytest.mark.parametrize("case", GRADCHECK_CASES, ids=lambda c: "-".join(map(str, c.values())))
@pytest.mark.parametrize("target_kind", TARGET_KINDS)
def test_gradcheck(gamma, case, target_kind):
    shape = (3, 5)
    x, t = make_case(shape, target_kind, seed=12, scale=2.0)
    alpha = PER_CLASS_ALPHA if case["alpha"] == "per_class" else case["alpha"]
    gamma = PER_CLASS_GAMMA if gamma == "per_class" else gamma
    weight = make_weight(case["weight"], shape, torch.Generator().manual_seed(2))

    def fn(z):
        return sigmoid_focal_loss(
            z,
            t,
            alpha,
            gamma,
            case["reduction"],
            weight=weight,
            normalizer=case["normalizer"],
            poly1=case["poly1"],
        )

    assert torch.autograd.gradcheck(fn, (x.requires_grad_(True),))


def test_gradcheck_soft_targets_with_grad():
    x, t = make_case((3, 4), "soft", seed=13, scale=2.0)
    fn = lambda z, y: sigmoid_focal_loss(z, y, PER_CLASS_ALPHA[:4], 1.5, "sum", poly1=0.2)  # noqa: E731
    assert torch.autograd.gradcheck(fn, (x.requires_grad_(True), t.requires_grad_(True)))


# ---- bad input --------------------------------------------------------------------------


def _xt(shape=(4, 5)):
    return make_case(shape, "hard", dtype=torch.float32)


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        (dict(targets=torch.zeros(4, 6)), ValueError, r"targets shape \(4, 6\) does not match"),
        (dict(targets=[[0.0] * 5] * 4), TypeError, "targets must be a torch.Tensor"),
        (dict(gamma=-0.5), ValueError, "`gamma` must be a finite γ >= 0, got -0.5"),
        (
            dict(gamma=torch.tensor([1.0, 2.0, -1.0, 0.0, 1.0])),
            ValueError,
            "`gamma` must be a finite γ >= 0",
        ),
        (dict(gamma=float("nan")), ValueError, "`gamma` must be a finite γ >= 0, got nan"),
        (dict(gamma=torch.ones(3)), ValueError, "gamma has 3 per-class values .* 5 classes"),
        (
            dict(alpha=torch.full((4,), 0.5)),
            ValueError,
            "alpha has 4 per-class values .* 5 classes",
        ),
        (dict(alpha=[0.5, 1.5, 0.5, 0.5, 0.5]), ValueError, r"alpha .* must lie in \[0, 1\]"),
        (dict(alpha=torch.full((5,), -0.1)), ValueError, r"must lie in \[0, 1\]"),
        (dict(alpha=1.5), ValueError, r"must lie in \[0, 1\]"),
        (dict(alpha=torch.ones(2, 5)), ValueError, "alpha must be a scalar or a 1-D"),
        (dict(reduction="avg"), ValueError, "avg is not a valid value for reduction"),
        (dict(reduction="mean", normalizer=4.0), ValueError, "normalizer .* reduction='sum'"),
        (dict(reduction="none", normalizer=4.0), ValueError, "normalizer .* reduction='sum'"),
        (dict(reduction="sum", normalizer=0.0), ValueError, "normalizer must be finite and > 0"),
        (dict(weight=torch.ones(3)), ValueError, r"weight shape \(3,\) does not broadcast"),
        (dict(weight=torch.ones(2, 4, 5)), ValueError, "does not broadcast to inputs shape"),
        (dict(weight=-torch.ones(5)), ValueError, "weight must be finite and >= 0"),
        (dict(weight=[1.0] * 5), TypeError, "weight must be a tensor"),
    ],
)
def test_bad_input(kwargs, error, match):
    x, t = _xt()
    args = dict(inputs=x, targets=t) | kwargs
    with pytest.raises(error, match=match):
        sigmoid_focal_loss(**args)


def test_bad_reduction_error_matches_torchvision_and_torch_patterns():
    """Code written against torchvision (``match="Invalid"``) or torch's losses
    (``"xyz is not a valid value for reduction"``) still catches this drop-in's error."""
    x, t = _xt()
    with pytest.raises(ValueError, match="Invalid") as ours:
        sigmoid_focal_loss(x, t, 0.25, 2, "xyz")
    with pytest.raises(ValueError, match="Invalid"):
        torchvision.ops.sigmoid_focal_loss(x, t, 0.25, 2, "xyz")
    with pytest.raises(ValueError) as theirs:
        F.binary_cross_entropy_with_logits(x, t, reduction="xyz")
    assert str(theirs.value) in str(ours.value)


@pytest.mark.parametrize("dtype", [torch.int64, torch.int32, torch.uint8, torch.bool])
def test_non_float_logits_raise(dtype):
    x = torch.ones(3, 4, dtype=dtype)
    with pytest.raises(TypeError, match=f"floating point logits, got dtype {dtype}"):
        sigmoid_focal_loss(x, torch.ones(3, 4))


def test_logits_not_a_tensor_raise():
    with pytest.raises(TypeError, match=r"inputs must be a torch\.Tensor"):
        sigmoid_focal_loss([1.0, 2.0], torch.ones(2))


def test_negative_scalar_alpha_switches_alpha_off():
    x, t = _xt()
    assert_close(sigmoid_focal_loss(x, t, -1), sigmoid_focal_loss(x, t, None))
    assert_close(sigmoid_focal_loss(x, t, -0.5), sigmoid_focal_loss(x, t, None))
