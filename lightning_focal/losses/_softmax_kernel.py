"""Fused softmax focal loss: pure-tensor kernels and their autograd.Function.

With ℓ_c = log p_c = x_c - logsumexp(x), m_c = (1 - p_c)^γ computed as
exp(γ·log(-expm1(ℓ_c))) and a target distribution q (one-hot, smoothed or given):

    L = Σ_c [ -w_c·q_c·m_c·ℓ_c + ε·q_c·m_c·(1 - p_c) ]
    ∂L/∂ℓ_c = D_c = -w_c·q_c·m_c·(1 - γ·p_c·ℓ_c/(1-p_c)) - ε·q_c·(γ+1)·m_c·p_c
    ∂L/∂x_k = D_k - p_k·Σ_c D_c

ℓ/(1-p) tends to -1 as p -> 1, so the gradient is finite for every γ >= 0. The fast path
(class-index targets, no label smoothing) needs only ℓ of the target class: the forward is
one logsumexp, the backward one pass that writes s·(onehot - softmax).
"""

from __future__ import annotations

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

from ._backend import Kernel
from ._sigmoid_kernel import Policy, compute_dtype, policy_gamma


def _class_view(v: Tensor, ndim: int) -> Tensor:
    """A per-class vector shaped to broadcast on dim 1 of an ``ndim``-D input."""
    return v.view([1, -1] + [1] * (ndim - 2))


def _modulating(logp: Tensor, gamma: Tensor | None, policy: Policy, gamma_shape) -> tuple:
    tiny = torch.finfo(logp.dtype).tiny
    p = torch.exp(logp)
    omp = -torch.expm1(logp)
    if policy is not None:
        g = policy_gamma(p, policy)
    else:
        g = gamma_shape(gamma)
    m = torch.exp(g * torch.log(torch.clamp_min(omp, tiny)))
    return p, omp, g, m


def _ratio(logp: Tensor, omp: Tensor) -> Tensor:
    """ℓ/(1-p), continued by its limit -1 where 1-p underflows to 0."""
    nonzero = omp > 0
    return torch.where(nonzero, logp / torch.where(nonzero, omp, 1.0), -1.0)


# ---- fast path: class-index targets, no label smoothing ---------------------------------


def _fast_parts(x, target, alpha, gamma, policy: Policy, ignore_index: int):
    dtype = compute_dtype(x.dtype)
    xf = x.to(dtype)
    lse = torch.logsumexp(xf, dim=1)
    valid = target != ignore_index
    tgt = torch.where(valid, target, 0)
    x_y = torch.gather(xf, 1, tgt.unsqueeze(1)).squeeze(1)
    logp = torch.clamp_max(x_y - lse, 0.0)

    def per_target(g):
        return g[tgt] if g.dim() == 1 else g

    p, omp, g, m = _modulating(logp, gamma, policy, per_target)
    validf = valid.to(dtype)
    a = alpha[tgt] * validf if alpha is not None else validf
    return xf, lse, tgt, validf, logp, p, omp, g, m, a


def _fast_loss(x, target, alpha, gamma, eps: float, policy: Policy, ignore_index: int, reduce: bool):
    _, lse, _, validf, logp, _, omp, _, m, a = _fast_parts(x, target, alpha, gamma, policy, ignore_index)
    loss = -a * m * logp
    if eps != 0.0:
        loss = loss + eps * m * omp * validf
    return (loss.sum() if reduce else loss), lse


def _fast_grad(x, target, alpha, gamma, eps: float, policy: Policy, ignore_index: int, lse, scale):
    in_dtype = x.dtype
    xf = x.to(compute_dtype(x.dtype))
    valid = target != ignore_index
    tgt = torch.where(valid, target, 0)
    x_y = torch.gather(xf, 1, tgt.unsqueeze(1)).squeeze(1)
    logp = torch.clamp_max(x_y - lse, 0.0)

    def per_target(g):
        return g[tgt] if g.dim() == 1 else g

    p, omp, g, m = _modulating(logp, gamma, policy, per_target)
    validf = valid.to(xf.dtype)
    a = alpha[tgt] * validf if alpha is not None else validf
    dl = -a * m * (1.0 - g * p * _ratio(logp, omp))
    if eps != 0.0:
        dl = dl - eps * (g + 1.0) * m * p * validf
    s = (dl * scale).unsqueeze(1)
    probs = torch.exp(xf - lse.unsqueeze(1))
    if torch.compiler.is_compiling():
        classes = torch.arange(x.shape[1], device=x.device).view([1, -1] + [1] * (x.dim() - 2))
        grad = s * ((classes == tgt.unsqueeze(1)).to(xf.dtype) - probs)
    else:
        grad = probs.mul_(-s).scatter_add_(1, tgt.unsqueeze(1), s)
    return grad.to(in_dtype)


# ---- general path: probability targets or label smoothing -------------------------------


def _target_distribution(xf, target, is_index: bool, smoothing: float, ignore_index: int):
    num_classes = xf.shape[1]
    if is_index:
        valid = target != ignore_index
        tgt = torch.where(valid, target, 0).unsqueeze(1)
        classes = torch.arange(num_classes, device=xf.device).view([1, -1] + [1] * (xf.dim() - 2))
        q = (classes == tgt).to(xf.dtype) * (1.0 - smoothing) + smoothing / num_classes
        return q * valid.unsqueeze(1).to(xf.dtype)
    return target.to(xf.dtype) * (1.0 - smoothing) + smoothing / num_classes


def _general_parts(x, target, is_index, smoothing, ignore_index, alpha, gamma, policy, lse=None):
    dtype = compute_dtype(x.dtype)
    xf = x.to(dtype)
    if lse is None:
        lse = torch.logsumexp(xf, dim=1)
    logp = torch.clamp_max(xf - lse.unsqueeze(1), 0.0)

    def per_class(g):
        return _class_view(g, x.dim()) if g.dim() == 1 else g

    p, omp, g, m = _modulating(logp, gamma, policy, per_class)
    q = _target_distribution(xf, target, is_index, smoothing, ignore_index)
    w = _class_view(alpha, x.dim()) * q if alpha is not None else q
    return lse, logp, p, omp, g, m, q, w


def _general_loss(x, target, is_index: bool, smoothing: float, ignore_index: int, alpha, gamma,
                  eps: float, policy: Policy, reduce: bool):
    lse, logp, _, omp, _, m, q, w = _general_parts(
        x, target, is_index, smoothing, ignore_index, alpha, gamma, policy
    )
    elem = -w * m * logp
    if eps != 0.0:
        elem = elem + eps * q * m * omp
    loss = elem.sum(dim=1)
    return (loss.sum() if reduce else loss), lse


def _general_grad(x, target, is_index: bool, smoothing: float, ignore_index: int, alpha, gamma,
                  eps: float, policy: Policy, lse, scale):
    in_dtype = x.dtype
    _, logp, p, omp, g, m, q, w = _general_parts(
        x, target, is_index, smoothing, ignore_index, alpha, gamma, policy, lse
    )
    d = -w * m * (1.0 - g * p * _ratio(logp, omp))
    if eps != 0.0:
        d = d - eps * q * (g + 1.0) * m * p
    if scale.dim() > 0:
        scale = scale.unsqueeze(1)
    grad = (d - p * d.sum(dim=1, keepdim=True)) * scale
    return grad.to(in_dtype)


def softmax_focal_elementwise(x, target, is_index, smoothing, ignore_index, alpha, gamma, eps, policy):
    """Per-sample loss, differentiable by autograd (the composite path)."""
    if is_index and smoothing == 0.0:
        loss, _ = _fast_loss(x, target, alpha, gamma, eps, policy, ignore_index, False)
    else:
        loss, _ = _general_loss(
            x, target, is_index, smoothing, ignore_index, alpha, gamma, eps, policy, False
        )
    return loss


fast_loss_kernel = Kernel(_fast_loss)
fast_grad_kernel = Kernel(_fast_grad)
general_loss_kernel = Kernel(_general_loss)
general_grad_kernel = Kernel(_general_grad)


class SoftmaxFocalFunction(torch.autograd.Function):
    """Saves the inputs and the per-sample logsumexp; no full-size intermediates."""

    @staticmethod
    def forward(ctx, x, target, alpha, gamma, eps, policy, ignore_index, smoothing, is_index,
                reduce, denom):  # type: ignore[override]
        fast = is_index and smoothing == 0.0
        if fast:
            out, lse = fast_loss_kernel(
                x.numel(), x, target, alpha, gamma, eps, policy, ignore_index, reduce
            )
        else:
            out, lse = general_loss_kernel(
                x.numel(), x, target, is_index, smoothing, ignore_index, alpha, gamma, eps,
                policy, reduce,
            )
        if denom is not None:
            out = out / denom
        ctx.save_for_backward(x, target, alpha, gamma, lse, denom)
        ctx.args = (eps, policy, ignore_index, smoothing, is_index, fast)
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_out):  # type: ignore[override]
        x, target, alpha, gamma, lse, denom = ctx.saved_tensors
        eps, policy, ignore_index, smoothing, is_index, fast = ctx.args
        # An all-ignored batch: the loss is 0/0 = NaN as in cross_entropy, whose gradient is 0.
        scale = grad_out if denom is None else torch.where(denom == 0, 0.0, grad_out / denom)
        if fast:
            grad = fast_grad_kernel(
                x.numel(), x, target, alpha, gamma, eps, policy, ignore_index, lse, scale
            )
        else:
            grad = general_grad_kernel(
                x.numel(), x, target, is_index, smoothing, ignore_index, alpha, gamma, eps,
                policy, lse, scale,
            )
        return (grad,) + (None,) * 10
