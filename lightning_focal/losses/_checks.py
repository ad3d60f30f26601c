"""Argument and tensor validation shared by the focal losses.

Value checks (γ ≥ 0, α in [0, 1], class indices in range) read tensor values, so they
are skipped while ``torch.compile`` traces a graph; eager calls always run them.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

REDUCTIONS = ("none", "mean", "sum")


def check_reduction(reduction: str) -> None:
    if reduction not in REDUCTIONS:
        raise ValueError(f"unknown reduction {reduction!r}; expected one of {REDUCTIONS}")


def check_logits(name: str, x: object) -> Tensor:
    if not isinstance(x, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if not x.is_floating_point():
        raise TypeError(
            f"{name} must be floating point logits, got dtype {x.dtype}; "
            "cast with .float() if these really are logits"
        )
    return x


def _tracing() -> bool:
    return torch.compiler.is_compiling()


def as_class_tensor(
    name: str,
    value: float | Sequence[float] | Tensor,
    device: torch.device,
    dtype: torch.dtype = torch.float32,
) -> Tensor:
    """A 0-d or 1-d ``dtype`` tensor on ``device`` from a float, sequence or tensor.

    Built directly in ``dtype`` (the loss's compute dtype), so float64 losses see their
    α and γ unrounded rather than passed through float32.
    """
    if isinstance(value, Tensor):
        t = value.detach()
        if t.is_floating_point() or t.dtype in (torch.int32, torch.int64):
            t = t.to(device=device, dtype=dtype)
        else:
            raise TypeError(f"{name} must be a float tensor, got dtype {value.dtype}")
    elif isinstance(value, (int, float)) and not isinstance(value, bool):
        t = torch.tensor(float(value), dtype=dtype, device=device)
    elif isinstance(value, Sequence) and not isinstance(value, str):
        t = torch.tensor([float(v) for v in value], dtype=dtype, device=device)
    else:
        raise TypeError(f"{name} must be a float, a sequence of floats or a tensor, got {value!r}")
    if t.dim() > 1:
        raise ValueError(
            f"{name} must be a scalar or a 1-D per-class tensor, got shape {tuple(t.shape)}"
        )
    return t


def check_per_class_length(name: str, t: Tensor, num_classes: int, where: str) -> None:
    if t.dim() == 1 and t.numel() != num_classes:
        raise ValueError(
            f"{name} has {t.numel()} per-class values but the input has {num_classes} classes "
            f"({where})"
        )


def check_gamma_values(gamma: Tensor) -> None:
    if _tracing():
        return
    if not bool(torch.isfinite(gamma).all()) or bool((gamma < 0).any()):
        raise ValueError(f"gamma must be finite and >= 0, got {gamma.tolist()}")


def check_alpha_unit_interval(alpha: Tensor) -> None:
    if _tracing():
        return
    if not bool(torch.isfinite(alpha).all()) or bool(((alpha < 0) | (alpha > 1)).any()):
        raise ValueError(
            f"per-class alpha for sigmoid focal loss must lie in [0, 1], got {alpha.tolist()}"
        )


def check_weight_values(name: str, w: Tensor) -> None:
    if _tracing():
        return
    if not bool(torch.isfinite(w).all()) or bool((w < 0).any()):
        raise ValueError(f"{name} must be finite and >= 0")


def check_class_indices(target: Tensor, num_classes: int, ignore_index: int) -> None:
    if _tracing() or target.numel() == 0:
        return
    bad = ((target < 0) | (target >= num_classes)) & (target != ignore_index)
    if bool(bad.any()):
        value = int(target[bad][0])
        raise ValueError(
            f"target holds class index {value}, out of range for {num_classes} classes "
            f"(valid: 0..{num_classes - 1}, or ignore_index={ignore_index})"
        )
