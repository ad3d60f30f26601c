"""Choose how the fused loss kernels run: eagerly or compiled (AOTInductor or ``torch.compile``).

The kernels are plain PyTorch functions. Compiling them with inductor fuses their
elementwise work and reductions into one pass over memory on CPU and CUDA; running them
eagerly gives the same numbers (up to float32 rounding) with more memory traffic, in
chunks (:func:`eager_chunk`) so that their temporaries stay small.

``"auto"`` (the default) compiles a kernel only where the compile pays for itself within
the run: for inputs of at least :data:`COMPILE_MIN_NUMEL` elements, once that kernel has
processed :data:`COMPILE_AFTER_ELEMENTS` elements eagerly in this process (about 5 s of
eager work on one CPU core; building a kernel's AOTInductor package costs 30-90 s once,
loading it ~0.01-0.06 s; ``torch.compile`` costs ~3-5 s with a warm inductor cache and
10-40 s cold). Short runs, tests and small batches therefore never compile, and the count is
deterministic (no timing), so two runs of the same job take the same path at the same
step. ``"compile"`` compiles from the first call; a failed compile falls back to eager
for good. The first compile is for the static shape it sees (measured: a kernel compiled
with dynamic batch dims runs 18-35% slower at 1e6 elements); a second shape (an epoch's
last batch) recompiles once, for dynamic shapes, as ``torch.compile`` does by default.

A compiled kernel is first an AOTInductor package from the on-disk cache of
:mod:`._aot` (built there on a miss): a process that finds it warm loads it in
milliseconds without importing ``torch._dynamo``. Where export or the AOT compile fails,
the kernel goes to ``torch.compile`` instead, with one warning (``LIGHTNING_FOCAL_AOT=0``
goes there directly).

Inside a compiled CPU float32 kernel, :func:`exp_nonpos` and :func:`log1p_unit` replace
``torch.exp`` and ``torch.log1p``: inductor calls SLEEF for those, an out-of-line call per
vector that costs more than the rest of the loss together, while these polynomial forms
inline into the fused loop (measured: at most 1.1 and 2 ulp from the exact values, where
SLEEF's u10 functions are within 1 ulp).
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from . import _aot

__all__ = [
    "BACKENDS",
    "COMPILE_AFTER_ELEMENTS",
    "COMPILE_MIN_NUMEL",
    "EAGER_CHUNK",
    "eager_chunk",
    "get_backend",
    "set_backend",
]

BACKENDS = ("auto", "compile", "eager")
COMPILE_MIN_NUMEL = 1 << 16
COMPILE_AFTER_ELEMENTS = 500_000_000
EAGER_CHUNK = 1 << 16

# Let the C++ compiler fuse a*b+c into one FMA (one rounding instead of two: results move
# by float32 rounding only) in the CPU kernels.
_COMPILE_OPTIONS = {"cpp.enable_floating_point_contract_flag": "fast"}

_state: dict[str, Any] = {
    "backend": None,
    "broken": set(),
    "aot_broken": set(),
    "limit_warned": set(),
}
_ENV_NAME = "LIGHTNING_FOCAL_BACKEND"
try:  # the key as os.environ stores it (bytes on POSIX)
    _ENV_KEY = os.environ.encodekey(_ENV_NAME)  # type: ignore[attr-defined]
except AttributeError:
    _ENV_KEY = None


def eager_chunk(device: torch.device, scale: int = 1) -> int:
    """Elements per eager chunk: small on CPU (cache-sized temporaries), large on GPUs,
    where each chunk costs a kernel launch per op."""
    return scale * EAGER_CHUNK if device.type == "cpu" else 64 * EAGER_CHUNK


def _check(mode: str) -> str:
    if mode not in BACKENDS:
        raise ValueError(f"unknown loss backend {mode!r}; expected one of {BACKENDS}")
    return mode


def get_backend() -> str:
    """Return the current kernel backend: ``"auto"``, ``"compile"`` or ``"eager"``.

    It comes from :func:`set_backend`, else from the environment variable
    ``LIGHTNING_FOCAL_BACKEND``, else ``"auto"``.

    Example:
        >>> from lightning_focal.losses import get_backend
        >>> get_backend() in ("auto", "compile", "eager")
        True
    """
    backend = _state["backend"]
    if backend is not None:
        return backend
    # os.environ.get raises and catches a KeyError when the variable is unset, which cost
    # more than the rest of the choice on a small batch; its backing dict says so first.
    data = getattr(os.environ, "_data", None)
    if data is not None and _ENV_KEY is not None and _ENV_KEY not in data:
        return "auto"
    mode = os.environ.get(_ENV_NAME)
    return "auto" if mode is None else _check(mode)


def set_backend(mode: str | None) -> None:
    """Set the kernel backend for this process (``None`` returns to the environment's).

    Example:
        >>> from lightning_focal.losses import get_backend, set_backend
        >>> set_backend("eager"); get_backend()
        'eager'
        >>> set_backend(None)
    """
    _state["backend"] = None if mode is None else _check(mode)


class Kernel:
    """A pure tensor function that runs eagerly, or compiled: through an AOTInductor
    package (:mod:`._aot`), else a lazily built ``torch.compile``."""

    def __init__(self, fn: Callable[..., Any]) -> None:
        self.fn = fn
        self.name = fn.__name__
        self._compiled: Callable[..., Any] | None = None
        self._aot = _aot.AotKernel(fn, self.name, _COMPILE_OPTIONS)
        self.eager_elements = 0  # elements run eagerly at compilable sizes, for "auto"

    def compiles(self, numel: int) -> bool:
        """Whether a call on ``numel`` elements goes to the compiled kernel now."""
        mode = get_backend()
        if mode == "auto":
            if numel < COMPILE_MIN_NUMEL or (
                self._compiled is None and self.eager_elements < COMPILE_AFTER_ELEMENTS
            ):
                return False
        elif mode != "compile":
            return False
        return self.name not in _state["broken"] and not torch.compiler.is_compiling()

    def note_eager(self, numel: int) -> None:
        """Count an eager run of this kernel's work done outside :meth:`__call__`."""
        if numel >= COMPILE_MIN_NUMEL:
            self.eager_elements += numel

    def __call__(
        self,
        numel: int,
        *args: Any,
        eager: Callable[[], Any] | None = None,
        compiled: bool | None = None,
    ) -> Any:
        """Run on ``args``; ``eager`` (if given) replaces ``fn(*args)`` when not compiled.

        ``compiled`` overrides the choice (a backward kernel follows its forward's)."""
        run_eager = eager if eager is not None else lambda: self.fn(*args)
        if compiled is None:
            compiled = self.compiles(numel)
            if not compiled:
                self.note_eager(numel)
        if not compiled or self.name in _state["broken"] or torch.compiler.is_compiling():
            return run_eager()
        if _aot.enabled() and self.name not in _state["aot_broken"]:
            try:
                return self._aot(args)
            except Exception as err:  # export or AOT compile failed: torch.compile instead
                _state["aot_broken"].add(self.name)
                _aot.warn_once(self.name, err)
        if self._compiled is None:
            self._compiled = torch.compile(
                self.fn, dynamic=None, fullgraph=True, options=_COMPILE_OPTIONS
            )
        try:
            return self._compiled(*args)
        except Exception as err:
            if "RecompileLimit" in type(err).__name__:
                # Too many argument variants of this kernel in one process: keep the
                # compiled ones and run this variant eagerly.
                if self.name not in _state["limit_warned"]:
                    _state["limit_warned"].add(self.name)
                    warnings.warn(
                        f"lightning_focal: torch.compile of {self.name} reached dynamo's "
                        "recompile limit; new argument variants run eagerly.",
                        RuntimeWarning,
                        stacklevel=3,
                    )
                return run_eager()
            # compiler missing or unsupported platform
            _state["broken"].add(self.name)
            warnings.warn(
                f"lightning_focal: torch.compile of {self.name} failed ({type(err).__name__}: "
                f"{str(err).splitlines()[0] if str(err) else ''}); using the eager kernel.",
                RuntimeWarning,
                stacklevel=3,
            )
            return run_eager()


# ---- inlined float32 math for compiled CPU kernels ---------------------------------------

_LOG2E = 1.4426950408889634
_LN2_HI = 0.693145751953125  # 15 significant bits: n * _LN2_HI is exact for |n| < 512
_LN2_LO = 1.4286068203094173e-06  # ln 2 - _LN2_HI
# exp(r) = 1 + r + r^2 P(r) on |r| <= ln2/2, P minimax of degree 4 (relative error 2e-8)
_EXP_P = (
    0.49999999553174473,
    0.16666577319489237,
    0.04166685313432744,
    0.008363140427546122,
    0.0013901302706270519,
)
# log1p(e) = e + e^2 R(e) on [0, 1], R of degree 9 fitted by reweighted least squares
# (relative error of log1p below 5.3e-9); no division, unlike 2 atanh(e / (2 + e))
_LOG1P_R = (
    -0.4999999965069776,
    0.33333257739852074,
    -0.24997295527232263,
    0.1996214217544185,
    -0.16392835653374085,
    0.13112714176142048,
    -0.09273190677894676,
    0.050625714374349734,
    -0.017882651092591524,
    0.002956195073993126,
)


def use_fast_math(x: Tensor) -> bool:
    """True inside a compiled kernel on a CPU float32 tensor (where SLEEF calls dominate)."""
    return torch.compiler.is_compiling() and x.device.type == "cpu" and x.dtype == torch.float32


def exp_nonpos(y: Tensor) -> Tensor:
    """``exp(y)`` for float32 ``y <= 0``: Cody-Waite reduction and a degree-6 polynomial.

    Within 1.1 ulp of the exact value down to the smallest normal float (``y >= -87.33``)
    and 0 below; ``2**n`` comes from the exponent bits. Not differentiable by autograd:
    for the kernels' analytic forward and backward only.
    """
    n = torch.round(y * _LOG2E)
    r = (y - n * _LN2_HI) - n * _LN2_LO
    c2, c3, c4, c5, c6 = _EXP_P
    # Estrin's scheme: a shorter chain of dependent FMAs than Horner's, which lets the
    # CPU overlap more loop iterations of the fused kernel (measured 5% of its time).
    r2 = r * r
    p = (c2 + c3 * r) + r2 * ((c4 + c5 * r) + r2 * c6)
    p = (p * r2 + r) + 1.0
    # 2**n from the exponent bits; below -87.33 (n < -126) those bits are meaningless
    two_n = ((n.to(torch.int32) + 127) << 23).view(torch.float32)
    return torch.where(y < -87.33, 0.0, p * two_n)


def log1p_unit(e: Tensor) -> Tensor:
    """``log1p(e)`` for float32 ``e`` in [0, 1] as ``e + e² R(e)``, within 2 ulp.

    A polynomial evaluated by Estrin's scheme: no division, and a short dependency chain.
    Exact as ``e -> 0``, where ``e²`` underflows (no ``1 + e`` rounding). Not
    differentiable by autograd: for the kernels' analytic forward and backward only.
    """
    c = _LOG1P_R
    e2 = e * e
    e4 = e2 * e2
    lo = (c[0] + c[1] * e) + e2 * (c[2] + c[3] * e)
    hi = (c[4] + c[5] * e) + e2 * (c[6] + c[7] * e)
    r = lo + e4 * (hi + e4 * (c[8] + c[9] * e))
    return e + e2 * r
