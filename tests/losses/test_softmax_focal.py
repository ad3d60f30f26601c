"""Softmax focal loss against F.cross_entropy and a float64 textbook formula."""

from __future__ import annotations

import itertools
import math

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from torch.testing import assert_close

from lightning_focal import softmax_focal_loss

NUM_CLASSES = 5
SHAPES = {
    "C": (NUM_CLASSES,),
    "NC": (4, NUM_CLASSES),
    "NCd": (3, NUM_CLASSES, 4),
    "NCdd": (2, NUM_CLASSES, 3, 2),
}
REDUCTIONS = ["none", "mean", "sum"]
# Class-index targets: "absent": default ignore_index, nothing ignored; "present": about
# half the targets carry the default ignore_index -100; "all": every target is class 2 and
# ignore_index=2.
IGNORE_MODES = ["absent", "present", "all"]


def make_case(shape, target_kind, ignore="absent", seed=0, scale=2.0):
    """Moderate float64 logits, a target and the ``ignore_index`` keyword to pass (or {})."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(shape, generator=gen, dtype=torch.float64) * scale
    num_classes = shape[0] if len(shape) == 1 else shape[1]
    kwargs = {}
    if target_kind == "index":
        target_shape = () if len(shape) == 1 else (shape[0], *shape[2:])
        target = torch.randint(0, num_classes, target_shape, generator=gen)
        if ignore == "present":
            target.view(-1)[::2] = -100
            kwargs["ignore_index"] = -100
        elif ignore == "all":
            target.fill_(2)
            kwargs["ignore_index"] = 2
    else:
        class_dim = 0 if len(shape) == 1 else 1
        target = torch.randn(shape, generator=gen, dtype=torch.float64) * 2
        target = torch.softmax(target, dim=class_dim)
        if ignore != "absent":
            # cross_entropy accepts only a negative ignore_index with probabilities, and
            # ignores it; a class number is an error (see test_ignore_index_with_probabilities)
            kwargs["ignore_index"] = -1 if ignore == "present" else -100
    return x, target, kwargs


def value_and_grad(fn, x):
    """The loss and d(upstream · loss)/dx for a fixed, non-trivial upstream gradient."""
    x = x.detach().clone().requires_grad_(True)
    out = fn(x)
    upstream = torch.linspace(-1.5, 2.0, out.numel(), dtype=out.dtype).reshape(out.shape)
    (grad,) = torch.autograd.grad(out, x, upstream)
    return out.detach(), grad


def class_view(v, ndim):
    return v.view([1, -1] + [1] * (ndim - 2))


def textbook_index(x, target, alpha, gamma, ignore_index=-100, poly1=0.0, reduction="none"):
    """-α_y (1-p_y)^γ_y log p_y (+ ε (1-p_y)^(γ_y+1)) for class-index targets, float64.

    ``mean`` divides by the summed α of the non-ignored targets (their count without α).
    ``x`` is batched ``(N, C, ...)``.
    """
    p = torch.softmax(x.double(), dim=1)
    valid = target != ignore_index
    safe = torch.where(valid, target, 0)
    p_t = p.gather(1, safe.unsqueeze(1)).squeeze(1)
    a_t = alpha[safe] if alpha is not None else torch.ones_like(p_t)
    if isinstance(gamma, torch.Tensor) and gamma.dim() == 1:
        gamma = gamma[safe]
    loss = -a_t * (1 - p_t) ** gamma * torch.log(p_t) + poly1 * (1 - p_t) ** (gamma + 1)
    loss = torch.where(valid, loss, 0.0)
    if reduction == "none":
        return loss
    if reduction == "sum":
        return loss.sum()
    return loss.sum() / torch.where(valid, a_t, 0.0).sum()


def textbook_distribution(
    x, target, alpha, gamma, *, ignore_index=-100, label_smoothing=0.0, poly1=0.0, reduction="none"
):
    """The documented per-class generalisation, float64, at moderate logits.

    -Σ_c α_c q_c (1-p_c)^γ_c log p_c + ε Σ_c q_c (1-p_c)^(γ_c+1), with q the one-hot target
    of a class index (zero for ignored ones), or the given probabilities, smoothed as
    ``(1-s) q + s/C``. ``mean`` divides by Σ α_y of the non-ignored class-index targets, by
    the number of samples for probability targets.
    """
    x = x.double()
    num_classes = x.shape[1]
    p = torch.softmax(x, dim=1)
    is_index = not target.is_floating_point()
    if is_index:
        valid = target != ignore_index
        safe = torch.where(valid, target, 0)
        q = F.one_hot(safe, num_classes).movedim(-1, 1).double()
        q = (q * (1 - label_smoothing) + label_smoothing / num_classes) * valid.unsqueeze(1)
    else:
        q = target.double() * (1 - label_smoothing) + label_smoothing / num_classes
    a = class_view(alpha, x.dim()) if alpha is not None else 1.0
    g = class_view(gamma, x.dim()) if isinstance(gamma, torch.Tensor) else gamma
    loss = (-a * q * (1 - p) ** g * torch.log(p) + poly1 * q * (1 - p) ** (g + 1)).sum(1)
    if reduction == "none":
        return loss
    if reduction == "sum":
        return loss.sum()
    if not is_index:
        return loss.sum() / loss.numel()
    a_t = alpha[safe] if alpha is not None else torch.ones(safe.shape, dtype=torch.float64)
    return loss.sum() / torch.where(valid, a_t, 0.0).sum()


# ---- gamma = 0 is F.cross_entropy, for every combination ---------------------------------


@pytest.mark.parametrize(
    ("shape", "target_kind", "ignore", "label_smoothing", "reduction", "weighted"),
    list(
        itertools.product(
            SHAPES, ["index", "probs"], IGNORE_MODES, [0.0, 0.1], REDUCTIONS, [False, True]
        )
    ),
)
def test_gamma0_matches_cross_entropy(
    shape, target_kind, ignore, label_smoothing, reduction, weighted
):
    x, target, kwargs = make_case(SHAPES[shape], target_kind, ignore, seed=len(shape))
    weight = torch.linspace(0.2, 2.0, NUM_CLASSES, dtype=torch.float64) if weighted else None
    expected, expected_grad = value_and_grad(
        lambda z: F.cross_entropy(
            z, target, weight=weight, reduction=reduction, label_smoothing=label_smoothing, **kwargs
        ),
        x,
    )
    actual, grad = value_and_grad(
        lambda z: softmax_focal_loss(
            z,
            target,
            0.0,
            weight,
            reduction=reduction,
            label_smoothing=label_smoothing,
            **kwargs,
        ),
        x,
    )
    assert actual.shape == expected.shape
    assert actual.dtype == expected.dtype
    assert_close(actual, expected, equal_nan=True)
    assert_close(grad, expected_grad, equal_nan=True)
    if ignore == "all" and target_kind == "index":
        assert torch.all(grad == 0)
        if reduction == "mean":
            assert torch.isnan(actual)


@pytest.mark.parametrize("target_kind", ["index", "probs"])
def test_gamma0_matches_cross_entropy_float32(target_kind):
    x, target, _ = make_case((6, NUM_CLASSES, 3), target_kind, seed=3)
    x, target = x.float(), (target if target_kind == "index" else target.float())
    expected, expected_grad = value_and_grad(lambda z: F.cross_entropy(z, target), x)
    actual, grad = value_and_grad(lambda z: softmax_focal_loss(z, target, 0.0), x)
    assert actual.dtype == torch.float32 and grad.dtype == torch.float32
    assert_close(actual, expected)
    assert_close(grad, expected_grad)


def test_ignore_index_set_but_unused_leaves_the_mean_unchanged():
    x, target, _ = make_case((6, NUM_CLASSES), "index", seed=4)
    plain = softmax_focal_loss(x, target, 2.0)
    assert_close(softmax_focal_loss(x, target, 2.0, ignore_index=255), plain)
    assert_close(softmax_focal_loss(x, target, 2.0, ignore_index=-1), plain)


@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_all_ignored_batch_keeps_grad_and_device(reduction):
    x = torch.randn(3, NUM_CLASSES, requires_grad=True)
    target = torch.full((3,), -100)
    loss = softmax_focal_loss(x, target, 2.0, reduction=reduction)
    assert loss.requires_grad and loss.device == x.device
    if reduction == "mean":
        assert torch.isnan(loss)
    else:
        assert torch.all(loss == 0)
    loss.sum().backward()
    assert torch.all(x.grad == 0)


def test_empty_batch_matches_cross_entropy():
    x = torch.randn(0, NUM_CLASSES, dtype=torch.float64)
    target = torch.zeros(0, dtype=torch.long)
    for reduction in REDUCTIONS:
        expected = F.cross_entropy(x, target, reduction=reduction)
        actual = softmax_focal_loss(x, target, 2.0, reduction=reduction)
        assert_close(actual, expected, equal_nan=True)


# ---- independent float64 references for gamma > 0 ---------------------------------------

PER_CLASS_ALPHA = torch.tensor([0.5, 1.0, 2.0, 0.25, 1.5], dtype=torch.float64)
PER_CLASS_GAMMA = torch.tensor([0.0, 0.5, 1.0, 2.5, 4.0], dtype=torch.float64)


@pytest.mark.parametrize(
    ("shape", "alpha_kind", "gamma_kind", "ignore", "poly1"),
    list(
        itertools.product(
            ["NC", "NCd", "NCdd"],
            ["none", "per_class"],
            ["scalar", "per_class"],
            ["absent", "present"],
            [0.0, 0.6],
        )
    ),
)
def test_reference_index_targets(shape, alpha_kind, gamma_kind, ignore, poly1):
    x, target, kwargs = make_case(SHAPES[shape], "index", ignore, seed=21)
    alpha = PER_CLASS_ALPHA if alpha_kind == "per_class" else None
    gamma = PER_CLASS_GAMMA if gamma_kind == "per_class" else 2.0
    for reduction in REDUCTIONS:
        expected, expected_grad = value_and_grad(
            lambda z, r=reduction: textbook_index(
                z, target, alpha, gamma, kwargs.get("ignore_index", -100), poly1, r
            ),
            x,
        )
        actual, grad = value_and_grad(
            lambda z, r=reduction: softmax_focal_loss(
                z, target, gamma, alpha, reduction=r, poly1=poly1, **kwargs
            ),
            x,
        )
        assert_close(actual, expected)
        assert_close(grad, expected_grad)


@pytest.mark.parametrize(
    ("shape", "target_kind", "label_smoothing", "alpha_kind", "gamma_kind", "poly1"),
    list(
        itertools.product(
            ["C", "NCd"],
            ["index", "probs"],
            [0.0, 0.2],
            ["none", "per_class"],
            ["scalar", "per_class"],
            [0.0, 0.6],
        )
    ),
)
def test_reference_label_smoothing_and_probabilities(
    shape, target_kind, label_smoothing, alpha_kind, gamma_kind, poly1
):
    x, target, kwargs = make_case(
        SHAPES[shape], target_kind, "present" if shape != "C" else "absent", seed=22
    )
    alpha = PER_CLASS_ALPHA if alpha_kind == "per_class" else None
    gamma = PER_CLASS_GAMMA if gamma_kind == "per_class" else 1.5
    unbatched = len(SHAPES[shape]) == 1
    for reduction in REDUCTIONS:

        def reference(z, r=reduction):
            zb, tb = (z.unsqueeze(0), target.unsqueeze(0)) if unbatched else (z, target)
            out = textbook_distribution(
                zb,
                tb,
                alpha,
                gamma,
                label_smoothing=label_smoothing,
                poly1=poly1,
                reduction=r,
                **(kwargs if target_kind == "index" else {}),
            )
            return out.squeeze(0) if unbatched and r == "none" else out

        expected, expected_grad = value_and_grad(reference, x)
        actual, grad = value_and_grad(
            lambda z, r=reduction: softmax_focal_loss(
                z,
                target,
                gamma,
                alpha,
                reduction=r,
                label_smoothing=label_smoothing,
                poly1=poly1,
                **kwargs,
            ),
            x,
        )
        assert_close(actual, expected)
        assert_close(grad, expected_grad)


@pytest.mark.parametrize("gamma", [0.5, 2.0, PER_CLASS_GAMMA])
def test_one_hot_probabilities_equal_class_indices(gamma):
    x, target, _ = make_case((4, NUM_CLASSES, 3), "index", seed=23)
    one_hot = F.one_hot(target, NUM_CLASSES).movedim(-1, 1).double()
    for reduction in ("none", "sum"):  # "mean" differs by design: Σα_y vs the sample count
        a, ga = value_and_grad(
            lambda z, r=reduction: softmax_focal_loss(
                z, target, gamma, PER_CLASS_ALPHA, reduction=r, poly1=0.3
            ),
            x,
        )
        b, gb = value_and_grad(
            lambda z, r=reduction: softmax_focal_loss(
                z, one_hot, gamma, PER_CLASS_ALPHA, reduction=r, poly1=0.3
            ),
            x,
        )
        assert_close(a, b)
        assert_close(ga, gb)


@pytest.mark.parametrize("as_tensor", [False, True])
def test_float64_keeps_alpha_and_gamma_unrounded(as_tensor):
    """α and γ not representable in float32 must not pass through float32 (rel. error ~3e-8)."""
    x, target, _ = make_case((6, NUM_CLASSES), "index", seed=28)
    alpha = [1 / 3, 0.1, 2 / 3, 0.7, 1.3]
    gamma = [1 / 3, 0.7, 1.1, 2.2, 0.3] if as_tensor else 1 / 3
    if as_tensor:
        alpha = torch.tensor(alpha, dtype=torch.float64)
        gamma = torch.tensor(gamma, dtype=torch.float64)
    ref_alpha = torch.as_tensor(alpha, dtype=torch.float64)
    expected = textbook_index(x, target, ref_alpha, gamma, reduction="none")
    actual = softmax_focal_loss(x, target, gamma, alpha, reduction="none")
    assert_close(actual, expected, rtol=1e-12, atol=0)


@pytest.mark.parametrize("alpha", [None, PER_CLASS_ALPHA])
def test_poly1_term_is_not_weighted_by_alpha(alpha):
    x, target, _ = make_case((6, NUM_CLASSES), "index", seed=24)
    p_t = torch.softmax(x, 1).gather(1, target.unsqueeze(1)).squeeze(1)
    extra = softmax_focal_loss(x, target, 2.0, alpha, reduction="none", poly1=0.5)
    extra = extra - softmax_focal_loss(x, target, 2.0, alpha, reduction="none")
    assert_close(extra, 0.5 * (1 - p_t) ** 3)


def test_per_class_values_as_sequences_equal_tensors():
    x, target, _ = make_case((6, NUM_CLASSES), "index", seed=25)
    a = softmax_focal_loss(x, target, PER_CLASS_GAMMA.tolist(), PER_CLASS_ALPHA.tolist())
    b = softmax_focal_loss(x, target, PER_CLASS_GAMMA, PER_CLASS_ALPHA)
    assert_close(a, b)


# ---- the worked example and properties --------------------------------------------------


def test_worked_example():
    x = torch.tensor([[math.log(0.9), math.log(0.1)]], dtype=torch.float64)  # p = (0.9, 0.1)
    right, wrong = torch.tensor([0]), torch.tensor([1])
    ce = softmax_focal_loss(x, right, 0.0)
    fl = softmax_focal_loss(x, right, 2.0)
    assert_close(ce, torch.tensor(0.10536, dtype=torch.float64), atol=5e-6, rtol=0)
    assert_close(fl, torch.tensor(0.0010536, dtype=torch.float64), atol=5e-8, rtol=0)
    assert_close(fl, ce * 0.01)
    ratio = softmax_focal_loss(x, wrong, 2.0) / softmax_focal_loss(x, wrong, 0.0)
    assert_close(ratio, torch.tensor(0.81, dtype=torch.float64))


@st.composite
def logits_and_index_targets(draw):
    n = draw(st.integers(1, 6))
    c = draw(st.integers(2, 5))
    finite = st.floats(-30, 30, allow_nan=False, allow_infinity=False)
    x = torch.tensor(draw(st.lists(finite, min_size=n * c, max_size=n * c)), dtype=torch.float64)
    target = torch.tensor(draw(st.lists(st.integers(0, c - 1), min_size=n, max_size=n)))
    return x.view(n, c), target


@settings(max_examples=50, deadline=None)
@given(case=logits_and_index_targets(), gamma=st.floats(0, 6))
def test_focal_between_zero_and_cross_entropy(case, gamma):
    x, target = case
    fl = softmax_focal_loss(x, target, gamma, reduction="none")
    ce = F.cross_entropy(x, target, reduction="none")
    # log p_t here and in log_softmax agree to a few ulps of |x|
    atol = 1e-14 * (1 + x.abs().max())
    assert torch.all(fl >= 0)
    assert torch.all(fl <= ce * (1 + 1e-12) + atol)


@settings(max_examples=50, deadline=None)
@given(case=logits_and_index_targets(), gammas=st.lists(st.floats(0, 6), min_size=2, max_size=4))
def test_focal_non_increasing_in_gamma(case, gammas):
    x, target = case
    losses = [softmax_focal_loss(x, target, g, reduction="none") for g in sorted(gammas)]
    for smaller_gamma, larger_gamma in itertools.pairwise(losses):
        assert torch.all(larger_gamma <= smaller_gamma * (1 + 1e-12) + 1e-300)


# ---- gradcheck in float64 ---------------------------------------------------------------

GRADCHECK_CASES = [
    dict(target="index", ignore="absent", smoothing=0.0, alpha=False, poly1=0.0, reduction="none"),
    dict(target="index", ignore="present", smoothing=0.0, alpha=True, poly1=0.0, reduction="mean"),
    dict(target="index", ignore="present", smoothing=0.1, alpha=True, poly1=0.4, reduction="none"),
    dict(target="index", ignore="absent", smoothing=0.1, alpha=False, poly1=0.0, reduction="sum"),
    dict(target="probs", ignore="absent", smoothing=0.0, alpha=True, poly1=0.0, reduction="none"),
    dict(target="probs", ignore="absent", smoothing=0.1, alpha=False, poly1=-0.3, reduction="mean"),
    dict(target="index", ignore="present", smoothing=0.0, alpha=True, poly1=0.5, reduction="none"),
]


@pytest.mark.parametrize("gamma", [0.0, 0.3, 0.5, 1.0, 2.5, "per_class"])
@pytest.mark.parametrize("case", GRADCHECK_CASES, ids=lambda c: "-".join(map(str, c.values())))
def test_gradcheck(gamma, case):
    x, target, kwargs = make_case((3, NUM_CLASSES, 2), case["target"], case["ignore"], seed=26)
    gamma = PER_CLASS_GAMMA if gamma == "per_class" else gamma
    alpha = PER_CLASS_ALPHA if case["alpha"] else None

    def fn(z):
        return softmax_focal_loss(
            z,
            target,
            gamma,
            alpha,
            reduction=case["reduction"],
            label_smoothing=case["smoothing"],
            poly1=case["poly1"],
            **kwargs,
        )

    assert torch.autograd.gradcheck(fn, (x.requires_grad_(True),))


def test_gradcheck_probability_targets_with_grad():
    x, target, _ = make_case((3, NUM_CLASSES), "probs", seed=27)
    fn = lambda z, q: softmax_focal_loss(z, q, 1.5, PER_CLASS_ALPHA, label_smoothing=0.1)  # noqa: E731
    assert torch.autograd.gradcheck(fn, (x.requires_grad_(True), target.requires_grad_(True)))


# ---- bad input --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        (
            dict(target=torch.zeros(4, dtype=torch.long)),
            ValueError,
            r"class-index target must have shape \(3,\)",
        ),
        (
            dict(target=torch.zeros(3, 4)),
            ValueError,
            r"probability target must have the input's shape \(3, 5\)",
        ),
        (dict(target=torch.zeros(3, dtype=torch.bool)), TypeError, "got bool"),
        (dict(target=[0, 1, 2]), TypeError, "target must be a torch.Tensor"),
        (
            dict(target=torch.tensor([0, 5, 1])),
            ValueError,
            "class index 5, out of range for 5 classes",
        ),
        (dict(target=torch.tensor([0, -1, 1])), ValueError, "class index -1, out of range"),
        (dict(target=torch.tensor([0, 255, 1])), ValueError, "class index 255, out of range"),
        (dict(gamma=-1.0), ValueError, "`gamma` must be a finite γ >= 0, got -1.0"),
        (
            dict(gamma=torch.tensor([1.0, 2.0, -0.1, 0.0, 1.0])),
            ValueError,
            "`gamma` must be a finite γ >= 0",
        ),
        (dict(gamma=torch.ones(4)), ValueError, "gamma has 4 per-class values .* 5 classes"),
        (dict(alpha=torch.ones(6)), ValueError, "alpha has 6 per-class values .* 5 classes"),
        (dict(alpha=0.25), ValueError, "alpha for softmax focal loss must be a per-class tensor"),
        (
            dict(alpha=torch.tensor([1.0, -1.0, 1.0, 1.0, 1.0])),
            ValueError,
            "alpha must be finite and >= 0",
        ),
        (
            dict(reduction="elementwise_mean"),
            ValueError,
            "elementwise_mean is not a valid value for reduction",
        ),
        (dict(label_smoothing=1.5), ValueError, r"label_smoothing must be in \[0, 1\]"),
        (dict(input=torch.tensor(1.0)), ValueError, "class dimension"),
    ],
)
def test_bad_input(kwargs, error, match):
    args = dict(input=torch.randn(3, NUM_CLASSES), target=torch.tensor([0, 1, 4])) | kwargs
    with pytest.raises(error, match=match):
        softmax_focal_loss(**args)


def test_class_index_error_is_also_cross_entropys_index_error():
    """Handlers written for ``F.cross_entropy`` (``IndexError`` on the CPU) still catch it."""
    x, target = torch.randn(3, NUM_CLASSES), torch.tensor([0, NUM_CLASSES, 1])
    with pytest.raises(IndexError):
        F.cross_entropy(x, target)
    with pytest.raises(IndexError, match="out of range"):
        softmax_focal_loss(x, target)
    dense = torch.randn(3, NUM_CLASSES, 2, 2)
    with pytest.raises(ValueError, match="out of range"):
        softmax_focal_loss(dense, target.view(3, 1, 1).expand(3, 2, 2), gamma=0.0)
    # ignore_index is not an index: no error for it
    softmax_focal_loss(x, torch.tensor([0, -100, 1]))


@pytest.mark.parametrize("ignore_index", [0, 3, 255])
def test_ignore_index_with_probabilities_raises_like_cross_entropy(ignore_index):
    x, target, _ = make_case((3, NUM_CLASSES), "probs")
    with pytest.raises(RuntimeError, match="ignore_index is not supported"):
        F.cross_entropy(x, target, ignore_index=ignore_index)
    with pytest.raises(ValueError, match=f"ignore_index={ignore_index} applies to class-index"):
        softmax_focal_loss(x, target, ignore_index=ignore_index)


def test_ignore_index_is_accepted_outside_the_class_range():
    x = torch.randn(3, NUM_CLASSES, dtype=torch.float64)
    target = torch.tensor([0, 255, 4])
    loss = softmax_focal_loss(x, target, 2.0, ignore_index=255, reduction="none")
    assert loss[1] == 0
    assert_close(loss[[0, 2]], textbook_index(x[[0, 2]], target[[0, 2]], None, 2.0))


@pytest.mark.parametrize("dtype", [torch.int64, torch.int32, torch.uint8, torch.bool])
def test_non_float_logits_raise(dtype):
    x = torch.ones(3, NUM_CLASSES, dtype=dtype)
    with pytest.raises(TypeError, match=f"floating point logits, got dtype {dtype}"):
        softmax_focal_loss(x, torch.tensor([0, 1, 2]))


# ---- the eager path for class-index targets ------------------------------------------


def composite_reference(x, target, gamma, alpha, ignore_index, poly1, reduction):
    """The same loss through autograd's own differentiation of the elementwise formula."""
    from lightning_focal.losses._softmax_kernel import softmax_focal_elementwise

    valid = target != ignore_index
    loss = softmax_focal_elementwise(x, target, True, 0.0, ignore_index, alpha, gamma, poly1, None)
    if reduction == "none":
        return loss
    if reduction == "sum":
        return loss.sum()
    safe = torch.where(valid, target, 0)
    weights = alpha[safe] if alpha is not None else torch.ones_like(loss)
    denom = (weights * valid).sum()
    # all ignored: the value is 0/0 = NaN and the gradient 0, as in cross_entropy
    return loss.sum() / torch.where(denom == 0, 1.0, denom) + (denom / denom).detach() - 1


@pytest.mark.parametrize("num_classes", [2, 5, 8, 15, 16])
@pytest.mark.parametrize("gamma", [0.0, 1.0, 2.0, 3.0, 4.0, 0.5, "per_class"])
@pytest.mark.parametrize("ignore", ["absent", "outside", "inside", "all"])
def test_eager_index_path_equals_the_composite_formula(num_classes, gamma, ignore):
    """The eager path (log_softmax on the transposed copy for 3-15 classes, the gather's
    own range check instead of reading the target, the product forms of integer γ) gives
    the value and the gradient of the differentiated formula, for every α, ε, reduction
    and upstream gradient, whatever ``ignore_index`` holds."""
    gen = torch.Generator().manual_seed(num_classes)
    x = torch.randn(7, num_classes, generator=gen, dtype=torch.float64) * 3
    target = torch.randint(0, num_classes, (7,), generator=gen)
    ignore_index = {"absent": -100, "outside": -100, "inside": 1, "all": 1}[ignore]
    if ignore == "outside":
        target[::3] = -100
    elif ignore == "inside":
        target[::3] = 1
    elif ignore == "all":
        target.fill_(1)
    if gamma == "per_class":
        gamma = torch.linspace(0.0, 4.0, num_classes, dtype=torch.float64)
    for alpha, poly1, reduction in itertools.product(
        [None, torch.linspace(0.5, 2.0, num_classes, dtype=torch.float64)],
        [0.0, 0.7],
        REDUCTIONS,
    ):
        kwargs = dict(reduction=reduction, poly1=poly1, ignore_index=ignore_index)
        gamma_tensor = torch.as_tensor(gamma, dtype=torch.float64)
        reference = (target, gamma_tensor, alpha, ignore_index, poly1, reduction)
        expected, expected_grad = value_and_grad(
            lambda z, args=reference: composite_reference(z, *args), x
        )
        actual, grad = value_and_grad(
            lambda z, a=alpha, kw=kwargs: softmax_focal_loss(z, target, gamma, a, **kw), x
        )
        assert_close(actual, expected, equal_nan=True)
        assert_close(grad, expected_grad)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
def test_eager_index_path_returns_the_input_dtype(dtype):
    x = torch.randn(6, 10, dtype=dtype, requires_grad=True)
    target = torch.tensor([0, 3, -100, 9, 2, 2])
    loss = softmax_focal_loss(x, target)
    (grad,) = torch.autograd.grad(loss, x)
    assert loss.dtype == torch.float32 and grad.dtype == dtype and grad.shape == x.shape
    expected = softmax_focal_loss(x.detach().double().requires_grad_(), target)
    assert_close(loss.double(), expected, rtol=1e-2, atol=1e-3)


def test_eager_index_path_refuses_an_index_out_of_range_with_ignored_rows_present():
    """With the default ignore_index the eager path lets its gather find a bad index; the
    error is still the named one, also when ignored targets make the first gather fail."""
    x = torch.randn(4, 10)
    for target in (torch.tensor([0, 10, 1, 2]), torch.tensor([0, -100, 12, 2])):
        with pytest.raises(ValueError, match=r"class index 1[02], out of range for 10 classes"):
            softmax_focal_loss(x, target)


@pytest.mark.parametrize("gamma", [0.0, 1.0, 2.0, 3.0, 0.5])
@pytest.mark.parametrize("reduction", ["mean", "sum"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_the_usual_call_takes_the_lean_route(monkeypatch, gamma, reduction, dtype):
    """(N, C) logits, int64 indices, a scalar γ, no α: the function and the module skip
    the general argument checks and give what the general route (here: γ as a tensor)
    gives."""
    from lightning_focal import SoftmaxFocalLoss
    from lightning_focal.losses import softmax_focal

    gen = torch.Generator().manual_seed(3)
    x = torch.randn(9, 12, generator=gen, dtype=dtype) * 3
    target = torch.randint(0, 12, (9,), generator=gen)
    gamma_tensor = torch.tensor(gamma, dtype=dtype)
    expected, expected_grad = value_and_grad(
        lambda z: softmax_focal_loss(z, target, gamma_tensor, reduction=reduction), x
    )
    module = SoftmaxFocalLoss(gamma, reduction=reduction).to(dtype)
    calls = []
    check_inputs = softmax_focal._check_inputs
    monkeypatch.setattr(
        softmax_focal, "_check_inputs", lambda *a: calls.append(a) or check_inputs(*a)
    )
    for fn in (lambda z: softmax_focal_loss(z, target, gamma, reduction=reduction), module):
        out, grad = value_and_grad(lambda z, f=fn: f(z, target) if f is module else f(z), x)
        assert_close(out, expected)
        assert_close(grad, expected_grad)
    assert not calls
    # anything else takes the general route
    softmax_focal_loss(x, target, gamma, reduction="none")
    assert len(calls) == 1
