"""The inlined float32 math of the compiled CPU kernels: ``exp_nonpos`` and ``log1p_unit``.

Their error is measured in units in the last place (ulp) of the float32 result against a
float64 reference, eagerly and compiled as the kernels compile them (with FMA
contraction, which changes the rounding). The compiled checks cost an inductor compile
each and are marked slow.
"""

from __future__ import annotations

import warnings

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


# ---- AOTInductor packages: keys, cache dir, corrupt files (no compile) -------------------


def _kernel_args(dtype=torch.float32, gamma=None, gint=2, n=64, eps=0.0):
    """Arguments as the sigmoid loss+grad kernel gets them (x, t, α, γ, weight, ε, policy,
    reduce, integer γ, scale)."""
    x = torch.zeros(n, 5, dtype=dtype)
    gamma = torch.tensor(2.0, dtype=dtype) if gamma is None else gamma.to(dtype)
    return [x, x.clone(), None, gamma, None, eps, None, True, gint, None]


def test_aot_package_key_changes_with_dtype_gamma_kind_and_baked_in_arguments():
    from lightning_focal.losses import _aot

    def key(batch=None, options=None, **kwargs):
        args = _kernel_args(**kwargs)
        return _aot.signature("k", args, options or {}, batch)

    base = key()
    assert key() == base  # deterministic
    others = [
        key(dtype=torch.float64),
        key(gamma=torch.full((5,), 2.0), gint=None),  # per-class γ
        key(gamma=torch.tensor(0.5), gint=None),  # scalar γ, not an integer power
        key(eps=0.1),
        key(n=32),  # static packages are per shape
        key(options={"cpp.enable_floating_point_contract_flag": "fast"}),
        _aot.signature("other", _kernel_args(), {}, None),
    ]
    assert len({base, *others}) == len(others) + 1
    # a dynamic package covers every batch size, but not another dtype
    assert key(batch=64) == key(batch=32, n=32) != key(batch=64, dtype=torch.float64)
    assert key(batch=64) != base
    paths = {_aot.package_path("k", text) for text in (base, *others)}
    assert len(paths) == len(others) + 1
    # an argument that cannot be baked in: no package
    assert _aot.signature("k", [torch.zeros(2), object()], {}, None) is None


def test_aot_batch_dim_is_the_shared_leading_size():
    from lightning_focal.losses._aot import batch_dim

    assert batch_dim([torch.zeros(64, 5), torch.zeros(64), torch.zeros(())]) == 64
    assert batch_dim([torch.zeros(5, 5)]) is None  # 5 is also the class dim
    assert batch_dim([torch.zeros(64, 5), torch.zeros(5, 64)]) is None
    assert batch_dim([torch.zeros(1, 5)]) is None  # the dynamic dim starts at 2
    assert batch_dim([torch.zeros(())]) is None


def test_aot_cache_dir_precedence(monkeypatch, tmp_path):
    from lightning_focal.losses import _aot

    for name in ("LIGHTNING_FOCAL_AOT_DIR", "TORCHINDUCTOR_CACHE_DIR", "LIGHTNING_FOCAL_AOT"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert _aot.cache_dir() == tmp_path / "xdg" / "lightning_focal" / "aot"
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path / "inductor"))
    assert _aot.cache_dir() == tmp_path / "inductor" / "lightning_focal_aot"
    monkeypatch.setenv("LIGHTNING_FOCAL_AOT_DIR", str(tmp_path / "env"))
    assert _aot.cache_dir() == tmp_path / "env"
    assert _aot.enabled()
    monkeypatch.setenv("LIGHTNING_FOCAL_AOT", "0")
    assert not _aot.enabled()
    try:
        _aot.configure(enabled=True, directory=tmp_path / "arg")
        assert _aot.cache_dir() == tmp_path / "arg" and _aot.enabled()
    finally:
        _aot.configure()


def test_aot_corrupt_or_partial_package_is_ignored_and_rebuilt(monkeypatch, tmp_path):
    from lightning_focal.losses import _aot

    x = torch.arange(12.0).reshape(4, 3)
    built = []

    def build(fn, args, path, options, batch):  # stands in for the minute-long AOT compile
        built.append((path, batch))
        return lambda tensors: fn(*tensors)

    monkeypatch.setattr(_aot, "build", build)
    try:
        _aot.configure(directory=tmp_path)
        path = _aot.package_path("double", "static|" + _aot.signature("double", [x], {}, None))
        path.write_bytes(b"PK\x03\x04" + bytes(200))  # a zip header and nothing else
        assert _aot.load(path, x.device) is None
        kernel = _aot.AotKernel(lambda v: v * 2, "double", {})
        assert torch.equal(kernel([x]), x * 2)
        assert built == [(path, None)]  # rebuilt at the same path (replaced by rename)
        assert torch.equal(kernel([x + 1]), x * 2 + 2) and len(built) == 1  # remembered
    finally:
        _aot.configure()


def test_kernel_falls_back_to_torch_compile_with_one_warning_when_aot_fails(monkeypatch):
    import lightning_focal.losses._backend as backend
    from lightning_focal.losses import _aot, set_backend

    def fail(self, args):
        raise RuntimeError("export failed\nsecond line")

    compiled = []
    monkeypatch.setattr(_aot.AotKernel, "__call__", fail)
    monkeypatch.setattr(_aot, "_state", {**_aot._state, "warned": False, "enabled": True})
    monkeypatch.setattr(backend, "_state", {**backend._state, "aot_broken": set()})
    monkeypatch.setattr(
        torch, "compile", lambda fn, **kwargs: compiled.append(fn) or (lambda *a: fn(*a) + 1)
    )

    def double(x):
        return x * 2

    def triple(x):
        return x * 3

    kernels = [backend.Kernel(double), backend.Kernel(triple)]
    set_backend("compile")
    try:
        with pytest.warns(RuntimeWarning, match="AOTInductor packaging of .*export failed"):
            assert kernels[0](4, torch.ones(2)).tolist() == [3.0, 3.0]
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # one warning per process, not per kernel
            assert kernels[1](4, torch.ones(2)).tolist() == [4.0, 4.0]
            assert kernels[0](4, torch.ones(2)).tolist() == [3.0, 3.0]
    finally:
        set_backend(None)
    assert len(compiled) == 2


# ---- AOTInductor packages compiled for real: two compiles in the whole suite -------------

# One warm process: loads the packages the session compiled, runs both shapes, reports
# whether torch._dynamo (or inductor's Python) was imported. Prints one JSON line.
_WARM_CHILD = """
import json, sys, time
import torch
from lightning_focal import sigmoid_focal_loss
torch.set_num_threads(1)
out = {}
for n in (64, 48):
    gen = torch.Generator().manual_seed(n)
    x = (torch.randn(n, 5, generator=gen) * 4).requires_grad_()
    t = (torch.rand(n, 5, generator=gen) > 0.7).float()
    begin = time.perf_counter()
    loss = sigmoid_focal_loss(x, t, alpha=0.25, gamma=2.0, reduction="mean")
    (grad,) = torch.autograd.grad(loss, x)
    out[n] = {"seconds": time.perf_counter() - begin, "loss": loss.item(), "grad": grad.tolist()}
out["dynamo"] = "torch._dynamo" in sys.modules
out["inductor"] = "torch._inductor.compile_fx" in sys.modules
print(json.dumps(out))
"""


def _sigmoid_value_and_grad(n):
    from lightning_focal import sigmoid_focal_loss

    gen = torch.Generator().manual_seed(n)
    x = (torch.randn(n, 5, generator=gen) * 4).requires_grad_()
    t = (torch.rand(n, 5, generator=gen) > 0.7).float()
    loss = sigmoid_focal_loss(x, t, alpha=0.25, gamma=2.0, reduction="mean")
    (grad,) = torch.autograd.grad(loss, x)
    return loss.detach(), grad


@pytest.fixture(scope="session")
def aot_packages(tmp_path_factory):
    """The sigmoid loss+grad kernel through AOTInductor at batch 64 (a static package) and
    then 48 (a second batch size: one dynamic package), in a fresh package directory."""
    from lightning_focal.losses import _aot, _backend, _sigmoid_kernel, set_backend

    directory = tmp_path_factory.mktemp("aot")
    kernel = _sigmoid_kernel.loss_grad_kernel
    saved = (kernel._aot, kernel._compiled)
    kernel._aot = _aot.AotKernel(kernel.fn, kernel.name, _backend._COMPILE_OPTIONS)
    kernel._compiled = None  # a torch.compile'd kernel from tests/losses/test_compile.py
    _aot.configure(enabled=True, directory=directory)
    set_backend("compile")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # no fallback to torch.compile
            results = {n: _sigmoid_value_and_grad(n) for n in (64, 48)}
        compiled = kernel._compiled
        packages = {key[0][2][0]: package for key, package in kernel._aot.loaded.items()}
        dynamic = list(kernel._aot.dynamic.values())
    finally:
        set_backend("eager")
        _aot.configure()
        kernel._aot, kernel._compiled = saved
    assert compiled is None  # torch.compile never ran
    assert dynamic == [packages[48]] and packages[64] is not packages[48], packages
    return directory, results, packages


@pytest.mark.slow
def test_aot_packages_equal_eager_at_a_static_and_a_dynamic_shape(aot_packages):
    from torch.testing import assert_close

    directory, results, packages = aot_packages
    for n, (value, grad) in results.items():
        eager_value, eager_grad = _sigmoid_value_and_grad(n)
        assert_close(value, eager_value)
        assert_close(grad, eager_grad)
    files = sorted(p.name for p in directory.iterdir())
    assert len(files) == 2 and all(f.startswith("_loss_grad_kernel-") for f in files), files
    assert packages[64].path.name in files and packages[48].path.name in files
    # a package cut short is not loaded (a partial copy; the writer itself renames whole files)
    whole = next(directory.iterdir())
    cut = directory / "cut.pt2"
    cut.write_bytes(whole.read_bytes()[: whole.stat().st_size // 2])
    from lightning_focal.losses import _aot

    assert _aot.load(cut, torch.device("cpu")) is None
    cut.unlink()


@pytest.mark.slow
def test_aot_warm_process_loads_packages_without_importing_dynamo(aot_packages):
    import json
    import os
    import subprocess
    import sys
    from pathlib import Path

    from torch.testing import assert_close

    import lightning_focal

    directory, _, _ = aot_packages
    before = {p.name: p.stat().st_mtime_ns for p in directory.iterdir()}
    env = {
        **os.environ,
        "LIGHTNING_FOCAL_BACKEND": "compile",
        "LIGHTNING_FOCAL_AOT_DIR": str(directory),
        "PYTHONPATH": str(Path(lightning_focal.__file__).parents[1]),
    }
    env.pop("LIGHTNING_FOCAL_AOT", None)
    proc = subprocess.run(
        [sys.executable, "-c", _WARM_CHILD], env=env, capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert not out["dynamo"] and not out["inductor"]
    assert {p.name: p.stat().st_mtime_ns for p in directory.iterdir()} == before  # no rebuild
    for n in (64, 48):
        eager_value, eager_grad = _sigmoid_value_and_grad(n)
        assert_close(torch.tensor(out[str(n)]["loss"]), eager_value)
        assert_close(torch.tensor(out[str(n)]["grad"]), eager_grad)
        assert out[str(n)]["seconds"] < 2.0  # ~5 ms measured; generous for a loaded machine
