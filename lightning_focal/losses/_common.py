"""What the focal-loss families share: one parser for γ and α values, the argument and
tensor checks, and the small helpers of both kernels.

One parser per kind of value: :func:`gamma_value` (a scalar or per-class γ as plain
Python floats, used by the schedules and the policies), :func:`class_tensor` (the same
as a tensor for the losses). The public functions and the modules validate with these once,
where a value enters; the private loss functions trust them.

Value checks (γ ≥ 0, α in [0, 1], class indices in range) read tensor values. On the CPU
they read them once and raise a ``ValueError`` naming the problem. On an accelerator a
read would stall the host until the device catches up, every call, so there they are
queued as ``torch._assert_async`` checks: a bad value still stops the run (as an
out-of-range index does in ``F.cross_entropy`` on CUDA), with the message, at the next
synchronisation. They are skipped while ``torch.compile`` traces a graph.
"""

from __future__ import annotations

import math
import numbers
import operator
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

REDUCTIONS = ("none", "mean", "sum")

Policy = tuple[tuple[float, ...], tuple[float, ...]] | None


def gamma_value(value: Any, name: str = "gamma") -> float | list[float]:
    """A γ given as a scalar or per-class sequence, as plain floats; refuse negative or
    non-finite values, naming ``name``.

    Example:
        >>> gamma_value(2), gamma_value([0.5, 1.0])
        (2.0, [0.5, 1.0])
        >>> gamma_value(-1.0, "loss.gamma")
        Traceback (most recent call last):
          ...
        ValueError: `loss.gamma` must be a finite γ >= 0, got -1.0
    """
    if hasattr(value, "tolist"):  # a tensor or numpy array
        value = value.tolist()
    if isinstance(value, numbers.Real) and not isinstance(value, bool):
        gamma = float(value)
        if not math.isfinite(gamma) or gamma < 0:
            raise ValueError(f"`{name}` must be a finite γ >= 0, got {value!r}")
        return gamma
    if isinstance(value, (str, bytes)) or not isinstance(value, Sequence):
        # Hydra hands lists over as ListConfig, which is a Sequence too.
        raise TypeError(f"`{name}` must be a float or a sequence of floats, got {value!r}")
    if len(value) == 0:
        raise ValueError(f"`{name}` must hold at least one per-class γ, got an empty sequence")
    gammas = []
    for index, item in enumerate(value):
        if not isinstance(item, numbers.Real) or isinstance(item, bool):
            raise TypeError(f"`{name}[{index}]` must be a float, got {item!r}")
        gammas.append(gamma_value(item, f"{name}[{index}]"))
    return gammas


def int_value(value: Any, name: str, minimum: int) -> int:
    """``value`` as an int (not a bool) no smaller than ``minimum``.

    Example:
        >>> int_value(3, "steps", minimum=1)
        3
    """
    if isinstance(value, bool):
        raise TypeError(f"`{name}` must be an int, got {value!r}")
    try:
        integer = operator.index(value)
    except TypeError:
        raise TypeError(f"`{name}` must be an int, got {value!r}") from None
    if integer < minimum:
        raise ValueError(f"`{name}` must be >= {minimum}, got {integer}")
    return integer


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """float64 stays float64; every other float type is computed in float32."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def policy_gamma(p_t: Tensor, policy: tuple[tuple[float, ...], tuple[float, ...]]) -> Tensor:
    """Per-element γ of a sample-dependent policy ``(thresholds, gammas)`` at ``p_t``."""
    thresholds, gammas = policy
    gamma = torch.full_like(p_t, gammas[0])
    for threshold, value in zip(thresholds, gammas[1:]):
        gamma = torch.where(p_t >= threshold, value, gamma)
    return gamma


def check_reduction(reduction: str) -> str:
    if reduction not in REDUCTIONS:
        # worded so that both torch's ("... is not a valid value for reduction") and
        # torchvision's ("Invalid ...") error matches hold for this drop-in
        raise ValueError(
            f"Invalid reduction: {reduction} is not a valid value for reduction; "
            "expected 'none', 'mean' or 'sum'"
        )
    return reduction


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
    return torch.compiler.is_compiling() or torch._C._are_functorch_transforms_active()


def composite_needed(*tensors: Tensor | None) -> bool:
    """Whether a call must take the composite (autograd-differentiated) path: inside
    ``torch.compile`` or a ``torch.func`` transform, or when a tensor other than the
    logits (targets, γ, α, weights) asks for a gradient."""
    return _tracing() or any(t is not None and t.requires_grad for t in tensors)


def scalar_tensor(value: float, dtype: torch.dtype, device: torch.device) -> Tensor:
    """A 0-d tensor filled on ``device`` (``torch.tensor`` would copy from the host and
    wait for the device's queue to drain, every call)."""
    return torch.full((), value, dtype=dtype, device=device)


_SCALARS: dict[tuple[float, torch.dtype, torch.device], Tensor] = {}


def cached_scalar(value: float, dtype: torch.dtype, device: torch.device) -> Tensor:
    """A 0-d tensor of ``value``, reused across calls: a loss called every step with the
    same Python γ or α builds it once (the kernels only read it)."""
    key = (value, dtype, device)
    t = _SCALARS.get(key)
    if t is None:
        if len(_SCALARS) >= 256:
            _SCALARS.clear()
        t = _SCALARS[key] = scalar_tensor(value, dtype, device)
    return t


def check_device(name: str, t: Tensor, device: torch.device) -> None:
    """Refuse a tensor on another device than the input's, naming both."""
    if t.device != device and not (t.dim() == 0 and t.device.type == "cpu"):
        raise ValueError(
            f"{name} is on {t.device} but the input is on {device}; move it with "
            f"{name}.to({str(device)!r}) (a loss module: loss.to(device))"
        )


def as_class_tensor(
    name: str,
    value: float | Sequence[float] | Tensor,
    device: torch.device,
    dtype: torch.dtype = torch.float32,
) -> Tensor:
    """A 0-d or 1-d ``dtype`` tensor on ``device`` from a float, sequence or tensor.

    Built directly in ``dtype`` (the loss's compute dtype), so float64 losses see their
    α and γ unrounded rather than passed through float32. A tensor that requires grad
    keeps its graph (the loss is then differentiated through it); a tensor on another
    device than ``device`` is refused (0-d CPU tensors excepted, as in torch's ops).
    """
    if isinstance(value, Tensor):
        if not (value.is_floating_point() or value.dtype in (torch.int32, torch.int64)):
            raise TypeError(f"{name} must be a float tensor, got dtype {value.dtype}")
        check_device(name, value, device)
        t = value.to(device=device, dtype=dtype)
    elif isinstance(value, numbers.Real) and not isinstance(value, bool):
        t = scalar_tensor(float(value), dtype, device)
    elif isinstance(value, Sequence) and not isinstance(value, str):
        if not all(isinstance(v, numbers.Real) and not isinstance(v, bool) for v in value):
            raise TypeError(f"{name} must be a sequence of floats, got {value!r}")
        t = torch.tensor([float(v) for v in value], dtype=dtype)
        t = t.to(device, non_blocking=True)  # no stream sync on an accelerator
    else:
        raise TypeError(f"{name} must be a float, a sequence of floats or a tensor, got {value!r}")
    if t.dim() > 1:
        raise ValueError(
            f"{name} must be a scalar or a 1-D per-class tensor, got shape {tuple(t.shape)}"
        )
    return t


def static_gamma(gamma: Tensor | None, policy: Policy) -> int | None:
    """γ as a Python int when it is a scalar integer in 0..4 held on the CPU, else None.

    Reading a CPU scalar costs no device sync; a CUDA γ stays a tensor (memory-bound
    there). Those γ take product forms of (1-p)^γ in the kernels.
    """
    if (
        policy is not None
        or gamma is None
        or gamma.dim()
        or not gamma.is_cpu
        or gamma.requires_grad
    ):
        return None
    value = gamma.item()
    return int(value) if value in (0.0, 1.0, 2.0, 3.0, 4.0) else None


def check_normalizer(
    normalizer: float | Tensor, device: torch.device, dtype: torch.dtype
) -> Tensor:
    """A positive normaliser as a 0-d tensor; ``<= 0``, NaN and inf are refused (on an
    accelerator queued as a device-side check)."""
    message = "normalizer must be finite and > 0 (clamp a positive count with .clamp_min(1))"
    if isinstance(normalizer, Tensor):
        if normalizer.numel() != 1:
            raise ValueError(f"normalizer must be a scalar, got shape {tuple(normalizer.shape)}")
        norm = normalizer.detach().to(device=device, dtype=dtype).reshape(())
        if _tracing():
            return norm
        if norm.device.type != "cpu":
            _fail_unless(torch.isfinite(norm) & (norm > 0), message)
            return norm
        value = float(norm)
    elif isinstance(normalizer, numbers.Real) and not isinstance(normalizer, bool):
        value = float(normalizer)
        norm = None
    else:
        raise TypeError(f"normalizer must be a float or a tensor, got {normalizer!r}")
    if not (math.isfinite(value) and value > 0):
        raise ValueError(f"{message}, got {value}")
    return scalar_tensor(value, dtype, device) if norm is None else norm


def gamma_arg(
    gamma: Any, num_classes: int, device: torch.device, dtype: torch.dtype, where: str
) -> tuple[Tensor | None, Policy]:
    """(γ tensor, None) or (None, policy tuple) from any γ a loss function accepts."""
    if type(gamma) is float and 0.0 <= gamma < math.inf:  # the usual call, checked
        return cached_scalar(gamma, dtype, device), None
    as_tuple = getattr(gamma, "as_tuple", None)  # a SampleDependentGamma
    if as_tuple is not None:
        return None, as_tuple()
    if isinstance(gamma, (int, float)) and not isinstance(gamma, bool):
        return cached_scalar(gamma_value(gamma), dtype, device), None
    g = as_class_tensor("gamma", gamma, device, dtype)
    check_per_class_length("gamma", g, num_classes, where)
    check_gamma_values(g)
    return g, None


def check_per_class_length(name: str, t: Tensor, num_classes: int, where: str) -> None:
    if t.dim() == 1 and t.numel() != num_classes:
        raise ValueError(
            f"{name} has {t.numel()} per-class values but the input has {num_classes} classes "
            f"({where})"
        )


def _values(t: Tensor) -> list[float]:
    """The values of a small CPU tensor as Python floats (one read, no tensor ops)."""
    v = t.tolist()
    return v if isinstance(v, list) else [v]


def _fail_unless(ok: Tensor, message: str) -> None:
    """Queue a device-side check that ``ok`` is true (no host sync)."""
    torch._assert_async(ok, message)


def check_gamma_values(gamma: Tensor) -> None:
    if _tracing():
        return
    message = "`gamma` must be a finite γ >= 0"
    if gamma.device.type != "cpu":
        _fail_unless(torch.all(torch.isfinite(gamma) & (gamma >= 0)), message)
        return
    values = _values(gamma)
    if not all(math.isfinite(v) and v >= 0 for v in values):
        raise ValueError(f"{message}, got {values if gamma.dim() else values[0]}")


def check_alpha_unit_interval(alpha: Tensor) -> None:
    if _tracing():
        return
    message = "per-class alpha for sigmoid focal loss must lie in [0, 1]"
    if alpha.device.type != "cpu":
        _fail_unless(torch.all((alpha >= 0) & (alpha <= 1)), message)
        return
    values = _values(alpha)
    if not all(0.0 <= v <= 1.0 for v in values):  # False for NaN
        raise ValueError(f"{message}, got {values if alpha.dim() else values[0]}")


def check_weight_values(name: str, w: Tensor) -> None:
    if _tracing():
        return
    message = f"{name} must be finite and >= 0"
    ok = torch.all(torch.isfinite(w) & (w >= 0))
    if w.device.type != "cpu":
        _fail_unless(ok, message)
    elif not bool(ok):
        raise ValueError(message)


class ClassIndexError(ValueError, IndexError):
    """A class index out of range: a ``ValueError`` that is also the ``IndexError`` that
    ``F.cross_entropy`` raises on the CPU, so handlers written for either catch it."""


def check_class_indices(target: Tensor, num_classes: int, ignore_index: int) -> bool:
    """Refuse class indices out of range; return whether ``target`` may hold
    ``ignore_index`` (``False`` only when the values read show it does not, so the
    caller can skip the mask; always ``True`` on accelerators, where nothing is read)."""
    if _tracing() or target.numel() == 0:
        return True
    message = (
        f"out of range for {num_classes} classes (valid: 0..{num_classes - 1}, "
        f"or ignore_index={ignore_index})"
    )
    if target.device.type != "cpu":
        lo, hi = torch.aminmax(torch.where(target == ignore_index, 0, target))
        _fail_unless((lo >= 0) & (hi < num_classes), f"target holds a class index {message}")
        return True
    lo, hi = torch.aminmax(target)
    lo, hi = lo.item(), hi.item()
    if lo >= 0 and hi < num_classes:
        return lo <= ignore_index <= hi
    if not 0 <= ignore_index < num_classes:  # the values outside may be ignore_index
        lo, hi = (int(v) for v in torch.aminmax(torch.where(target == ignore_index, 0, target)))
        if lo >= 0 and hi < num_classes:
            return True
    raise ClassIndexError(f"target holds class index {lo if lo < 0 else hi}, {message}")


def differentiable_grad(loss_fn: Any, x: Tensor, grad_out: Tensor) -> Tensor:
    """``grad_out``-weighted gradient of ``loss_fn(x)`` as a tensor with a graph: what a
    fused ``autograd.Function`` returns from ``backward`` under ``create_graph=True``, so
    that second-order gradients (gradient penalties, ``gradgradcheck``) are exact."""
    with torch.enable_grad():
        (grad,) = torch.autograd.grad(loss_fn(x), x, grad_out, create_graph=True)
    return grad
