"""The inlined float32 math of the compiled CPU kernels: ``exp_nonpos`` and ``log1p_unit``.

Their error is measured in units in the last place (ulp) of the float32 result against a
float64 reference, eagerly and compiled as the kernels compile them (with FMA
contraction, which changes the rounding). The compiled checks cost an inductor compile
each and are marked slow.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from lightning_focal.losses._backend import _COMPILE_OPTIONS, exp_nonpos, log1p_unit


def _ulp_error(approx: torch.Tensor, exact: torch.Tensor) -> torch.Tensor:
    """|approx - exact| in ulps of the float32 value nearest to ``exact`` (float64)."""
    spacing = np.spacing(exact.float().abs().numpy()).astype(np.float64)
    return (approx.double() - exact).abs() / torch.from_numpy(spacing)


def _exp_inputs() -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    return torch.cat(
        [
            -torch.rand(400_000, generator=g) * 87.33,  # the whole normal range
            -torch.rand(100_000, generator=g) * 1e-3,  # near 0: exp(y) near 1
            -torch.logspace(-30, 0, 2_000),
            -torch.arange(0.0, 87.0, 0.5),  # reduction boundaries, n ln 2
            torch.tensor([0.0, -0.0, -87.33]),
        ]
    )


def _log1p_inputs() -> torch.Tensor:
    g = torch.Generator().manual_seed(1)
    return torch.cat(
        [
            torch.rand(400_000, generator=g),
            torch.rand(100_000, generator=g) * 1e-3,
            torch.logspace(-38, 0, 2_000),  # tiny e: log1p(e) = e to relative precision
            torch.tensor([0.0, 1.0, 0.5, 2.0**-24]),
        ]
    )


def _check_exp(fn) -> None:
    y = _exp_inputs()
    err = _ulp_error(fn(y), torch.exp(y.double()))
    assert float(err.max()) <= 1.1, f"exp_nonpos is {float(err.max()):.2f} ulp off"
    assert float(err.mean()) < 0.3  # mostly correctly rounded
    below = torch.tensor([-87.4, -100.0, -1e4, -float("inf")])
    assert torch.equal(fn(below), torch.zeros(4))


def _check_log1p(fn) -> None:
    e = _log1p_inputs()
    err = _ulp_error(fn(e), torch.log1p(e.double()))
    assert float(err.max()) <= 2.0, f"log1p_unit is {float(err.max()):.2f} ulp off"
    assert float(err.mean()) < 0.35


def test_exp_nonpos_within_1_1_ulp_eagerly() -> None:
    _check_exp(exp_nonpos)


def test_log1p_unit_within_2_ulp_eagerly() -> None:
    _check_log1p(log1p_unit)


def test_exp_nonpos_is_exactly_one_at_zero_and_monotone() -> None:
    y = -torch.linspace(0, 87, 1_000_001)
    out = exp_nonpos(y)
    assert float(out[0]) == 1.0
    assert bool((out[1:] <= out[:-1]).all())  # non-increasing as y decreases


@pytest.mark.slow
def test_exp_nonpos_compiled_within_1_1_ulp() -> None:
    _check_exp(torch.compile(exp_nonpos, fullgraph=True, options=_COMPILE_OPTIONS))


@pytest.mark.slow
def test_log1p_unit_compiled_within_2_ulp() -> None:
    _check_log1p(torch.compile(log1p_unit, fullgraph=True, options=_COMPILE_OPTIONS))


def test_auto_compiles_a_kernel_only_once_its_eager_work_would_pay_for_it(monkeypatch):
    import lightning_focal.losses._backend as backend
    from lightning_focal.losses import set_backend

    monkeypatch.setattr(backend, "COMPILE_AFTER_ELEMENTS", 3 * backend.COMPILE_MIN_NUMEL)
    kernel = backend.Kernel(lambda x: x * 2)
    big = backend.COMPILE_MIN_NUMEL
    set_backend("auto")
    try:
        for _ in range(3):
            assert not kernel.compiles(big)
            assert kernel(big, torch.ones(2)).tolist() == [2.0, 2.0]  # eager, counted
        assert kernel.compiles(big)  # the count, not a clock: identical in every rerun
        assert not kernel.compiles(big - 1)  # small inputs never compile
        set_backend("eager")
        assert not kernel.compiles(big)
        set_backend("compile")
        assert kernel.compiles(1)
    finally:
        set_backend(None)


def test_eager_softmax_and_sigmoid_calls_count_towards_the_compile(monkeypatch):
    from lightning_focal import sigmoid_focal_loss, softmax_focal_loss
    from lightning_focal.losses import _sigmoid_kernel, _softmax_kernel

    x = torch.randn(1024, 100, requires_grad=True)
    before = _softmax_kernel.fast_loss_kernel.eager_elements
    softmax_focal_loss(x, torch.randint(0, 100, (1024,))).backward()
    assert _softmax_kernel.fast_loss_kernel.eager_elements == before + x.numel()
    before = _sigmoid_kernel.loss_grad_kernel.eager_elements
    sigmoid_focal_loss(x, torch.zeros(1024, 100), reduction="sum").backward()
    assert _sigmoid_kernel.loss_grad_kernel.eager_elements == before + x.numel()
