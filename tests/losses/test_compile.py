"""torch.compile: compiled kernels equal eager ones; a compiled module takes new γ without recompiling.

Each inductor compile costs seconds on a CPU, so every kernel sees one shape and one set
of constant arguments (a new float, bool or shape would compile it again). With a cold
inductor cache the file takes well over a minute on 2 cores (about 18 s warm): it is marked
slow, deselect it with ``-m "not slow"``.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch._dynamo.testing import CompileCounterWithBackend
from torch.testing import assert_close

from lightning_focal import (
    FocalLossBase,
    SigmoidFocalLoss,
    SoftmaxFocalLoss,
    sigmoid_focal_loss,
    softmax_focal_loss,
)
from lightning_focal.losses import (
    _aot,
    _backend,
    _sigmoid_kernel,
    _softmax_kernel,
    get_backend,
    set_backend,
)

pytestmark = pytest.mark.slow


@pytest.fixture(autouse=True)
def torch_compile_route():
    """These tests check the ``torch.compile`` route; AOTInductor packages have their own
    (tests/losses/test_backend.py)."""
    _aot.configure(enabled=False)
    yield
    _aot.configure()


ALPHA = torch.tensor([0.5, 1.0, 2.0, 0.25, 1.5])
GAMMA = torch.tensor([0.0, 0.5, 1.0, 2.5, 4.0])


SATURATED = torch.tensor([1e4, -1e4, 100.0, -100.0, 20.0, -20.0, 17.0, -17.0, 0.0, 3.0])


def logits(seed):
    """(16, 5) float32 logits whose first two rows are saturated, right and wrong class."""
    x = torch.randn(16, 5, generator=torch.Generator().manual_seed(seed)) * 4
    x[:2] = SATURATED.view(2, 5)
    return x


def value_and_grad(fn, x):
    x = x.detach().clone().requires_grad_(True)
    out = fn(x)
    upstream = torch.linspace(-1.5, 2.0, out.numel(), dtype=out.dtype).reshape(out.shape)
    (grad,) = torch.autograd.grad(out, x, upstream)
    return out.detach(), grad


def compiled_and_eager(fn, x):
    """(compiled, eager) value and grad of ``fn``; the compile_backend fixture is active."""
    assert get_backend() == "compile"
    compiled = value_and_grad(fn, x)
    set_backend("eager")
    eager = value_and_grad(fn, x)
    set_backend("compile")
    return compiled, eager


def assert_kernels_compiled(*kernels):
    """A failed compile falls back to eager (with a warning): make sure none did."""
    assert not _backend._state["broken"], _backend._state["broken"]
    for kernel in kernels:
        assert kernel._compiled is not None, kernel.name


def test_sigmoid_compiled_kernels_equal_eager(compile_backend):
    gen = torch.Generator().manual_seed(0)
    x = logits(0)
    t = (torch.rand(16, 5, generator=gen) > 0.7).float()
    t[:2] = torch.tensor([1.0, 0.0]).repeat(5).view(2, 5)
    mask = torch.rand(16, 5, generator=gen) > 0.2
    alpha = torch.tensor([0.1, 0.25, 0.5, 0.75, 0.9])

    def fn(z):
        return sigmoid_focal_loss(z, t, alpha, GAMMA, "none", weight=mask, poly1=0.3)

    (value, grad), (eager_value, eager_grad) = compiled_and_eager(fn, x)
    assert_close(value, eager_value)
    assert_close(grad, eager_grad)
    assert torch.isfinite(value).all() and torch.isfinite(grad).all()

    # the other two kernels: the loss alone (no grad needed), and the gradient recomputed
    # from the saved inputs by a second backward through a retained graph
    with torch.no_grad():
        assert_close(fn(x), eager_value)
    z = x.clone().requires_grad_(True)
    out = fn(z)
    upstream = torch.linspace(-1.5, 2.0, out.numel()).reshape(out.shape)
    (first,) = torch.autograd.grad(out, z, upstream, retain_graph=True)
    (second,) = torch.autograd.grad(out, z, upstream)
    assert_close(first, eager_grad)
    assert_close(second, eager_grad)
    assert_kernels_compiled(
        _sigmoid_kernel.loss_grad_kernel, _sigmoid_kernel.loss_kernel, _sigmoid_kernel.grad_kernel
    )


def test_softmax_fast_path_compiled_kernels_equal_eager(compile_backend):
    gen = torch.Generator().manual_seed(1)
    x = logits(1)
    target = torch.randint(0, 5, (16,), generator=gen)
    target[::4] = -100

    def fn(z):
        return softmax_focal_loss(z, target, GAMMA, ALPHA, reduction="mean")

    (value, grad), (eager_value, eager_grad) = compiled_and_eager(fn, x)
    assert_kernels_compiled(
        _softmax_kernel.fast_loss_kernel,
        _softmax_kernel.fast_scale_kernel,
        _softmax_kernel.fast_apply_kernel,
    )
    assert torch.isfinite(value).all() and torch.isfinite(grad).all()
    assert_close(value, eager_value)
    assert_close(grad, eager_grad)


def test_softmax_fast_path_many_classes_compiled_kernels_equal_eager(compile_backend):
    # (N, C) with C >= 16: the gradient pass adds s at the target with a scatter
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(16, 20, generator=gen) * 4
    x[:2, :10] = SATURATED.view(2, 5).repeat(1, 2)
    target = torch.randint(0, 20, (16,), generator=gen)
    target[::4] = -100
    assert x.shape[1] >= _softmax_kernel._SCATTER_MIN_CLASSES

    def fn(z):
        return softmax_focal_loss(z, target, 0.5, reduction="none", poly1=0.2)

    (value, grad), (eager_value, eager_grad) = compiled_and_eager(fn, x)
    assert_kernels_compiled(_softmax_kernel.fast_scale_kernel, _softmax_kernel.fast_apply_kernel)
    assert torch.isfinite(value).all() and torch.isfinite(grad).all()
    assert_close(value, eager_value)
    assert_close(grad, eager_grad)


def test_softmax_single_call_gradient_kernel_equals_the_two_kernel_path(compile_backend):
    """GPUs take the per-sample scale and the full-size pass as one compiled call."""
    gen = torch.Generator().manual_seed(3)
    x = logits(3)
    target = torch.randint(0, 5, (16,), generator=gen)
    target[::5] = -100
    xf = x.float()
    shift, log_sum = _softmax_kernel._row_stats(xf, False)
    scale = torch.tensor(0.37)
    args = (x, target, ALPHA, GAMMA, 0.1, None, -100, shift, log_sum, scale, None)
    one = _softmax_kernel.fast_grad_kernel(x.numel(), *args)
    s = _softmax_kernel._fast_scale(*args)
    two = _softmax_kernel._fast_apply(x, target, -100, shift, log_sum, s)
    assert_kernels_compiled(_softmax_kernel.fast_grad_kernel)
    assert_close(one, two)
    assert one[::5].abs().sum() == 0  # ignored samples get no gradient
    assert torch.isfinite(one).all()


def test_softmax_general_path_compiled_kernels_equal_eager(compile_backend):
    gen = torch.Generator().manual_seed(2)
    x = logits(2)
    target = torch.randint(0, 5, (16,), generator=gen)
    target[::4] = -100

    def fn(z):
        return softmax_focal_loss(
            z, target, 1.5, ALPHA, reduction="none", label_smoothing=0.1, poly1=0.2
        )

    (value, grad), (eager_value, eager_grad) = compiled_and_eager(fn, x)
    assert_kernels_compiled(
        _softmax_kernel.general_loss_kernel, _softmax_kernel.general_grad_kernel
    )
    assert torch.isfinite(value).all() and torch.isfinite(grad).all()
    assert_close(value, eager_value)
    assert_close(grad, eager_grad)


class TinyClassifier(nn.Module):
    def __init__(self, criterion: FocalLossBase) -> None:
        super().__init__()
        self.linear = nn.Linear(4, 5)
        self.criterion = criterion

    def forward(self, features, target):
        return self.criterion(self.linear(features), target)


@pytest.mark.parametrize("mode", ["softmax", "sigmoid"])
def test_compiled_module_takes_new_gamma_without_recompiling(mode):
    torch.manual_seed(3)
    if mode == "softmax":
        criterion = SoftmaxFocalLoss(gamma=2.0, alpha=ALPHA.tolist(), ignore_index=-100)
        target = torch.randint(0, 5, (8,))
        target[0] = -100
        functional = lambda z, g, a: softmax_focal_loss(z, target, g, a)  # noqa: E731
    else:
        criterion = SigmoidFocalLoss(gamma=2.0, alpha=0.25)
        target = (torch.rand(8, 5) > 0.7).float()
        functional = lambda z, g, a: sigmoid_focal_loss(z, target, a, g, "mean")  # noqa: E731
    model = TinyClassifier(criterion)
    counter = CompileCounterWithBackend("aot_eager")
    compiled = torch.compile(model, backend=counter, fullgraph=True)
    features = torch.randn(8, 4)

    def check(gamma):
        out = compiled(features, target)
        (grad,) = torch.autograd.grad(out, model.linear.weight)
        logits = model.linear(features)
        alpha = criterion.alpha.clone()
        expected = functional(logits, torch.as_tensor(gamma, dtype=torch.float32), alpha)
        (expected_grad,) = torch.autograd.grad(expected, model.linear.weight)
        assert_close(out, expected)
        assert_close(grad, expected_grad)

    check(2.0)
    frames = counter.frame_count
    assert frames >= 1
    gamma_buffer = criterion.gamma
    # a warmup passes through 0 < γ < 1, where the textbook gradient is NaN at saturation
    for gamma in (0.0, 0.3, 0.5, 1.0, 2.5):
        criterion.set_gamma(gamma)
        check(gamma)
    assert criterion.gamma is gamma_buffer
    assert counter.frame_count == frames, "set_gamma in place must not recompile"
    if mode == "sigmoid":
        criterion.set_alpha(0.5)
        check(2.5)
        assert counter.frame_count == frames, "set_alpha in place must not recompile"


def test_backend_comes_from_the_environment(monkeypatch):
    try:
        set_backend(None)
        monkeypatch.setenv("LIGHTNING_FOCAL_BACKEND", "compile")
        assert get_backend() == "compile"
        monkeypatch.setenv("LIGHTNING_FOCAL_BACKEND", "auto")
        assert get_backend() == "auto"
        monkeypatch.setenv("LIGHTNING_FOCAL_BACKEND", "fast")
        with pytest.raises(ValueError, match="unknown loss backend 'fast'"):
            get_backend()
        set_backend("eager")  # set_backend wins over the environment
        assert get_backend() == "eager"
    finally:
        set_backend("eager")


def test_set_backend_rejects_unknown_names():
    with pytest.raises(ValueError, match="unknown loss backend 'jit'"):
        set_backend("jit")
    assert get_backend() == "eager"
