"""Choose how the fused loss kernels run: eagerly or compiled by ``torch.compile``.

The kernels are plain PyTorch functions. Compiling them with inductor fuses their
elementwise work and reductions into one pass over memory on CPU and CUDA; running them
eagerly gives the same numbers with more memory traffic. ``"auto"`` (the default)
compiles inputs of at least :data:`COMPILE_MIN_NUMEL` elements, where the one-off compile
cost pays for itself, and falls back to eager for good if compilation fails.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable
from typing import Any

import torch

__all__ = ["COMPILE_MIN_NUMEL", "BACKENDS", "get_backend", "set_backend"]

BACKENDS = ("auto", "compile", "eager")
COMPILE_MIN_NUMEL = 1 << 16

_state: dict[str, Any] = {"backend": None, "broken": set()}


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
    if _state["backend"] is not None:
        return _state["backend"]
    return _check(os.environ.get("LIGHTNING_FOCAL_BACKEND", "auto"))


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
    """A pure tensor function that runs eagerly or through a lazily built ``torch.compile``."""

    def __init__(self, fn: Callable[..., Any]) -> None:
        self.fn = fn
        self.name = fn.__name__
        self._compiled: Callable[..., Any] | None = None

    def _use_compiled(self, numel: int) -> bool:
        if self.name in _state["broken"] or torch.compiler.is_compiling():
            return False
        mode = get_backend()
        return mode == "compile" or (mode == "auto" and numel >= COMPILE_MIN_NUMEL)

    def __call__(self, numel: int, *args: Any) -> Any:
        if not self._use_compiled(numel):
            return self.fn(*args)
        if self._compiled is None:
            self._compiled = torch.compile(self.fn, dynamic=None, fullgraph=True)
        try:
            return self._compiled(*args)
        except Exception as err:  # compiler missing or unsupported platform
            _state["broken"].add(self.name)
            warnings.warn(
                f"lightning_focal: torch.compile of {self.name} failed ({type(err).__name__}: "
                f"{str(err).splitlines()[0] if str(err) else ''}); using the eager kernel.",
                RuntimeWarning,
                stacklevel=3,
            )
            return self.fn(*args)
