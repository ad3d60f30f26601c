"""Every autograd feature ``F.cross_entropy`` has: double backward, torch.func, gradients for
γ, α and weights. Each case failed before the loss layer was rebuilt (issue "Loss layer")."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch.autograd import gradcheck, gradgradcheck
from torch.func import grad, jacrev, vmap

from lightning_focal import FLSD53, sigmoid_focal_loss, softmax_focal_loss

torch.manual_seed(0)


def _softmax_cases():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(5, 4, dtype=torch.float64, generator=g)
    idx = torch.tensor([0, 3, 1, -100, 2])
    probs = torch.softmax(torch.randn(5, 4, dtype=torch.float64, generator=g), 1)
    alpha = torch.tensor([0.5, 1.0, 2.0, 0.7], dtype=torch.float64)
    return x, [
        ("index", idx, {}),
        (
            "index per-class γ + α",
            idx,
            {"gamma": torch.tensor([0.5, 1.0, 2.0, 3.0], dtype=torch.float64), "alpha": alpha},
        ),
        ("index γ=0.5", idx, {"gamma": 0.5}),
        ("sample-dependent γ", idx, {"gamma": FLSD53}),
        ("label smoothing", idx, {"label_smoothing": 0.1, "alpha": alpha}),
        ("soft targets", probs, {"gamma": 1.5}),
        ("none reduction", idx, {"reduction": "none"}),
        ("poly1", idx, {"poly1": 1.0}),
    ]


@pytest.mark.parametrize("case", range(8))
def test_softmax_gradgradcheck_float64(case: int) -> None:
    x, cases = _softmax_cases()
    _, target, kwargs = cases[case]
    x = x.clone().requires_grad_()
    assert gradcheck(lambda v: softmax_focal_loss(v, target, **kwargs), (x,))
    assert gradgradcheck(lambda v: softmax_focal_loss(v, target, **kwargs), (x,))


@pytest.mark.parametrize(
    "kwargs",
    [
        {},
        {"gamma": 0.5, "alpha": None},
        {"gamma": [0.0, 1.0, 2.5], "alpha": [0.2, 0.5, 0.9]},
        {"gamma": FLSD53},
        {"poly1": 1.0, "reduction": "mean"},
        {"reduction": "none"},
    ],
)
def test_sigmoid_gradgradcheck_float64(kwargs: dict) -> None:
    g = torch.Generator().manual_seed(2)
    x = torch.randn(4, 3, dtype=torch.float64, generator=g).requires_grad_()
    t = (torch.rand(4, 3, generator=g) < 0.4).double()
    t[0, 0] = 0.3  # a soft target
    kwargs = {"reduction": "sum", **kwargs}
    assert gradcheck(lambda v: sigmoid_focal_loss(v, t, **kwargs), (x,))
    assert gradgradcheck(lambda v: sigmoid_focal_loss(v, t, **kwargs), (x,))


def test_create_graph_gives_a_gradient_with_a_graph() -> None:
    x = torch.randn(6, 5, requires_grad=True)
    y = torch.randint(0, 5, (6,))
    (gx,) = torch.autograd.grad(softmax_focal_loss(x, y), x, create_graph=True)
    assert gx.requires_grad
    t = (torch.rand(6, 5) < 0.3).float()
    (gs,) = torch.autograd.grad(sigmoid_focal_loss(x, t, reduction="sum"), x, create_graph=True)
    assert gs.requires_grad


def test_gradient_penalty_through_linear_matches_cross_entropy_at_gamma_0() -> None:
    torch.manual_seed(3)
    layer = torch.nn.Linear(8, 5)
    x = torch.randn(16, 8, requires_grad=True)
    y = torch.randint(0, 5, (16,))

    def penalised_grad(loss_fn):
        layer.zero_grad()
        inp = x.detach().requires_grad_()
        loss = loss_fn(layer(inp), y)
        (g,) = torch.autograd.grad(loss, inp, create_graph=True)
        (loss + g.pow(2).sum()).backward()
        return layer.weight.grad.clone()

    ours = penalised_grad(lambda z, t: softmax_focal_loss(z, t, gamma=0.0))
    ref = penalised_grad(F.cross_entropy)
    torch.testing.assert_close(ours, ref, rtol=1e-5, atol=1e-6)

    bce = penalised_grad(
        lambda z, t: F.binary_cross_entropy_with_logits(z, F.one_hot(t, 5).float(), reduction="sum")
    )
    ours = penalised_grad(
        lambda z, t: sigmoid_focal_loss(z, F.one_hot(t, 5).float(), None, 0.0, "sum")
    )
    torch.testing.assert_close(ours, bce, rtol=1e-5, atol=1e-5)


def test_torch_func_per_sample_gradients_equal_a_loop() -> None:
    torch.manual_seed(4)
    weight = torch.randn(5, 8)
    xs = torch.randn(7, 8)
    ys = torch.randint(0, 5, (7,))
    ts = F.one_hot(ys, 5).float()

    def softmax_loss(w, x, y):
        return softmax_focal_loss((x @ w.T).unsqueeze(0), y.unsqueeze(0), gamma=2.0)

    def sigmoid_loss(w, x, t):
        return sigmoid_focal_loss(x @ w.T, t, reduction="sum")

    for loss_fn, targets in ((softmax_loss, ys), (sigmoid_loss, ts)):
        per_sample = vmap(grad(loss_fn), in_dims=(None, 0, 0))(weight, xs, targets)
        loop = torch.stack([grad(loss_fn)(weight, xs[i], targets[i]) for i in range(7)])
        eager = []
        for i in range(7):
            w = weight.clone().requires_grad_()
            (g,) = torch.autograd.grad(loss_fn(w, xs[i], targets[i]), w)
            eager.append(g)
        torch.testing.assert_close(per_sample, loop)
        torch.testing.assert_close(per_sample, torch.stack(eager), rtol=1e-5, atol=1e-6)


def test_jacrev_of_none_reduction_matches_autograd() -> None:
    x = torch.randn(3, 4, dtype=torch.float64)
    y = torch.tensor([0, 2, 3])
    jac = jacrev(lambda v: softmax_focal_loss(v, y, reduction="none"))(x)
    rows = []
    for i in range(3):
        v = x.clone().requires_grad_()
        (g,) = torch.autograd.grad(softmax_focal_loss(v, y, reduction="none")[i], v)
        rows.append(g)
    torch.testing.assert_close(jac, torch.stack(rows))


def _fd(fn, value: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    out = torch.zeros_like(value)
    for i in range(value.numel()):
        up, down = value.clone(), value.clone()
        up.view(-1)[i] += eps
        down.view(-1)[i] -= eps
        out.view(-1)[i] = (fn(up) - fn(down)) / (2 * eps)
    return out


def test_gamma_alpha_weight_tensors_that_require_grad_get_gradients() -> None:
    torch.manual_seed(5)
    x = torch.randn(6, 4, dtype=torch.float64)
    y = torch.tensor([0, 1, 2, 3, 1, 0])
    t = F.one_hot(y, 4).double()
    cases = [
        (lambda g: softmax_focal_loss(x, y, gamma=g), torch.tensor(1.5, dtype=torch.float64)),
        (
            lambda g: softmax_focal_loss(x, y, gamma=g),
            torch.tensor([0.5, 1.0, 2.0, 0.7], dtype=torch.float64),
        ),
        (
            lambda a: softmax_focal_loss(x, y, alpha=a),
            torch.tensor([0.5, 1.0, 2.0, 0.7], dtype=torch.float64),
        ),
        (
            lambda g: sigmoid_focal_loss(x, t, 0.25, g, "sum"),
            torch.tensor(2.0, dtype=torch.float64),
        ),
        (
            lambda a: sigmoid_focal_loss(x, t, a, 2.0, "sum"),
            torch.tensor([0.2, 0.4, 0.6, 0.8], dtype=torch.float64),
        ),
        (
            lambda w: sigmoid_focal_loss(x, t, 0.25, 2.0, "mean", weight=w),
            torch.rand(6, 4, dtype=torch.float64) + 0.1,
        ),
    ]
    for fn, value in cases:
        leaf = value.clone().requires_grad_()
        (got,) = torch.autograd.grad(fn(leaf), leaf)
        torch.testing.assert_close(got, _fd(fn, value.clone()), rtol=1e-5, atol=1e-7)


def test_torchvision_gives_gamma_a_gradient_and_so_do_we() -> None:
    tv = pytest.importorskip("torchvision.ops")
    x = torch.randn(5, 3)
    t = (torch.rand(5, 3) < 0.3).float()
    g1 = torch.tensor(2.0, requires_grad=True)
    g2 = torch.tensor(2.0, requires_grad=True)
    (a,) = torch.autograd.grad(tv.sigmoid_focal_loss(x, t, 0.25, g1, "sum"), g1)
    (b,) = torch.autograd.grad(sigmoid_focal_loss(x, t, 0.25, g2, "sum"), g2)
    torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)
