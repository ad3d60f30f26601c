"""Fused sigmoid focal loss: pure-tensor forward/gradient kernels and their autograd.Function.

With z = x, t the target and q = 1 - p_t = t·σ(-x) + (1-t)·σ(x):

    loss  = α_t · ce · q^γ + ε · q^(γ+1)            ce = softplus(x) - t·x
    ∂/∂x  = α_t · [(σ(x) - t)·q^γ + ce·γ·q^γ·r·(1-2t)] + ε(γ+1)·q^γ·σ(x)σ(-x)·(1-2t)

where r = σ(x)σ(-x)/q ≤ 1. q^γ is exp(γ·log q), so γ in (0, 1) never meets the infinite
derivative of (1-p)^γ at p=1 that makes autograd through ``pow`` return NaN.
"""

from __future__ import annotations

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

from ._backend import Kernel

Policy = tuple[tuple[float, ...], tuple[float, ...]] | None


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """float64 stays float64; every other float type is computed in float32."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def policy_gamma(p_t: Tensor, policy: tuple[tuple[float, ...], tuple[float, ...]]) -> Tensor:
    thresholds, gammas = policy
    gamma = torch.full_like(p_t, gammas[0])
    for threshold, value in zip(thresholds, gammas[1:]):
        gamma = torch.where(p_t >= threshold, value, gamma)
    return gamma


def _parts(x: Tensor, t: Tensor, gamma: Tensor | None, policy: Policy):
    dtype = compute_dtype(x.dtype)
    tiny = torch.finfo(dtype).tiny
    x = x.to(dtype)
    t = t.to(dtype)
    e = torch.exp(-torch.abs(x))
    u = 1.0 + e
    inv = 1.0 / u  # σ(|x|)
    small = e * inv  # σ(-|x|), exact even where 1 - σ(|x|) rounds to 0
    positive = x >= 0
    s = torch.where(positive, inv, small)  # σ(x)
    sn = torch.where(positive, small, inv)  # σ(-x)
    # log1p(e) by Goldberg's correction: float32 log1p is ~13x slower than log on CPU.
    um1 = u - 1.0
    exact = um1 == 0
    log1p_e = torch.where(exact, e, torch.log(u) * e / torch.where(exact, 1.0, um1))
    ce = torch.clamp_min(x, 0.0) - t * x + log1p_e
    q = t * sn + (1.0 - t) * s
    g = policy_gamma(t * s + (1.0 - t) * sn, policy) if policy is not None else gamma
    m = torch.exp(g * torch.log(torch.clamp_min(q, tiny)))
    return x, t, s, sn, ce, q, g, m, tiny


def sigmoid_focal_elementwise(
    x: Tensor,
    t: Tensor,
    alpha: Tensor | None,
    gamma: Tensor | None,
    weight: Tensor | None,
    eps: float,
    policy: Policy,
) -> Tensor:
    """Elementwise loss; differentiable by autograd (used for the composite path)."""
    x, t, s, sn, ce, q, g, m, tiny = _parts(x, t, gamma, policy)
    loss = ce * m
    if alpha is not None:
        loss = (alpha * t + (1.0 - alpha) * (1.0 - t)) * loss
    if eps != 0.0:
        loss = loss + eps * m * q
    if weight is not None:
        loss = loss * weight.to(loss.dtype)
    return loss


def _loss_kernel(x, t, alpha, gamma, weight, eps: float, policy: Policy, reduce: bool) -> Tensor:
    loss = sigmoid_focal_elementwise(x, t, alpha, gamma, weight, eps, policy)
    return loss.sum() if reduce else loss


def _grad_kernel(x, t, alpha, gamma, weight, eps: float, policy: Policy, scale: Tensor) -> Tensor:
    in_dtype = x.dtype
    x, t, s, sn, ce, q, g, m, tiny = _parts(x, t, gamma, policy)
    one_m2t = 1.0 - 2.0 * t
    r = s * sn / torch.clamp_min(q, tiny)
    # σ(x) - t written so that it stays exact where σ(x) rounds to 1
    grad = ((1.0 - t) * s - t * sn) * m + ce * g * m * r * one_m2t
    if alpha is not None:
        grad = (alpha * t + (1.0 - alpha) * (1.0 - t)) * grad
    if eps != 0.0:
        grad = grad + eps * (g + 1.0) * m * s * sn * one_m2t
    if weight is not None:
        grad = grad * weight.to(grad.dtype)
    return (grad * scale).to(in_dtype)


loss_kernel = Kernel(_loss_kernel)
grad_kernel = Kernel(_grad_kernel)


class SigmoidFocalFunction(torch.autograd.Function):
    """Saves only its inputs; the backward recomputes what the gradient needs in one pass."""

    @staticmethod
    def forward(ctx, x, t, alpha, gamma, weight, eps, policy, reduce, denom):  # type: ignore[override]
        out = loss_kernel(x.numel(), x, t, alpha, gamma, weight, eps, policy, reduce)
        if denom is not None:
            out = out / denom
        ctx.save_for_backward(x, t, alpha, gamma, weight, denom)
        ctx.eps, ctx.policy = eps, policy
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_out):  # type: ignore[override]
        x, t, alpha, gamma, weight, denom = ctx.saved_tensors
        scale = grad_out if denom is None else grad_out / denom
        grad = grad_kernel(x.numel(), x, t, alpha, gamma, weight, ctx.eps, ctx.policy, scale)
        return grad, None, None, None, None, None, None, None, None
