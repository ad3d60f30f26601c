"""Fused softmax focal loss: pure-tensor kernels and their autograd.Function.

With ℓ_c = log p_c = (x_c - x_max) - log Σ_k exp(x_k - x_max), m_c = (1 - p_c)^γ computed
as exp(γ·log(-expm1(ℓ_c))) and a target distribution q (one-hot, smoothed or given):

    L = Σ_c [ -w_c·q_c·m_c·ℓ_c + ε·q_c·m_c·(1 - p_c) ]
    ∂L/∂ℓ_c = D_c = -w_c·q_c·m_c·(1 - γ·p_c·ℓ_c/(1-p_c)) - ε·q_c·(γ+1)·m_c·p_c
    ∂L/∂x_k = D_k - p_k·Σ_c D_c

ℓ/(1-p) tends to -1 as p -> 1, so the gradient is finite for every γ >= 0. ℓ is formed as
cross_entropy forms it: x_c - x_max rounds relative to itself and the log-sum lies in
[0, log C], so ℓ is accurate relative to ℓ, where x_c - logsumexp(x) would carry the
rounding of the logsumexp, eps·|x| (~1e-3 at |x| = 1e4). The forward saves the per-sample
pair (x_max, log-sum) for backward, where p = exp((x - x_max) - log-sum).

The fast path (class-index targets, no label smoothing) needs only ℓ of the target class.
Compiled, the forward is one logsumexp pass; the backward computes the per-sample
s = ∂L/∂ℓ_y (a sample-sized kernel), then one pass over the logits that writes
s·(onehot - softmax). Eagerly (small inputs, short runs) it is ATen's log_softmax and a
gather, the rest on one value per sample, and the backward one exp of the saved
log-probabilities and a scatter: a few ATen calls each way, where host time per call
rules. A scalar integer γ in 0..4 held on the CPU takes the product form of (1-p)^γ (see
``static_gamma``).
"""

from __future__ import annotations

import torch
from torch import Tensor

from ._backend import Kernel, eager_chunk, exp_nonpos, use_fast_math
from ._common import (
    Policy,
    cached_scalar,
    check_class_indices,
    compute_dtype,
    differentiable_grad,
    policy_gamma,
    static_gamma,
)


def _class_view(v: Tensor, ndim: int) -> Tensor:
    """A per-class vector shaped to broadcast on dim 1 of an ``ndim``-D input."""
    return v.view([1, -1] + [1] * (ndim - 2))


def _row_stats(xf: Tensor, fast: bool) -> tuple[Tensor, Tensor]:
    """Per-sample ``(shift, log_sum)`` with log p = (x - shift) - log_sum.

    ``shift`` is the row max and ``log_sum = log Σ exp(x - shift)``, in [0, log C]. A row
    whose max is ±inf or NaN gets shift 0 and log_sum = that max, so that log p and p are
    those of ``x - torch.logsumexp(x, 1)``. ``fast``: the inlined exp of compiled CPU kernels.
    """
    m = torch.amax(xf, dim=1, keepdim=True)
    finite = torch.isfinite(m)
    shifted = xf - torch.where(finite, m, 0.0)  # <= 0 in finite rows
    total = (exp_nonpos(shifted) if fast else shifted.exp_()).sum(dim=1)
    m, finite = m.squeeze(1), finite.squeeze(1)
    return torch.where(finite, m, 0.0), torch.where(finite, torch.log(total), m)


def _modulating(logp: Tensor, gamma, policy: Policy, gamma_shape, gint, fast: bool) -> tuple:
    """(p, 1-p, γ, (1-p)^γ); γ a Python int from :func:`static_gamma` takes a product form."""
    p = exp_nonpos(logp) if fast else torch.exp(logp)  # logp <= 0
    omp = -torch.expm1(logp)
    if gint is not None:
        m = 1.0
        for _ in range(gint):
            m = omp * m
        return p, omp, float(gint), m
    tiny = torch.finfo(logp.dtype).tiny
    g = policy_gamma(p, policy) if policy is not None else gamma_shape(gamma)
    g_log = g * torch.log(torch.clamp_min(omp, tiny))
    m = exp_nonpos(g_log) if fast else torch.exp(g_log)
    return p, omp, g, m


def _ratio(logp: Tensor, omp: Tensor) -> Tensor:
    """ℓ/(1-p), continued by its limit -1 where 1-p underflows to 0."""
    nonzero = omp > 0
    return torch.where(nonzero, logp / torch.where(nonzero, omp, 1.0), -1.0)


# ---- fast path: class-index targets, no label smoothing ---------------------------------


def _float_index(target: Tensor, ignore_index: int, num_classes: int) -> Tensor:
    """Class indices as float32 for the compiled CPU kernels (exact below 2**24).

    Inductor's CPU code loads int64 and int32 vectors through a stack buffer (a
    store-forwarding stall on every load) and packs 64-bit compare masks down to float
    lanes, which made the one-hot compare the slowest part of the full-size gradient pass;
    float32 loads and compares are single AVX2 instructions (2-3x faster there). The copy
    holds one value per sample, not per class.
    """
    limit = 2**24
    if -limit < ignore_index < limit and num_classes < limit:
        return target.to(torch.float32)
    return target


def _fast_parts(x, target, alpha, gamma, policy: Policy, ignore_index: int, gint, stats=None):
    dtype = compute_dtype(x.dtype)
    xf = x.to(dtype)
    fast = use_fast_math(xf)
    shift, log_sum = _row_stats(xf, fast) if stats is None else stats
    valid = target != ignore_index
    tgt = torch.where(valid, target, 0)
    x_y = torch.gather(xf, 1, tgt.long().unsqueeze(1)).squeeze(1)
    logp = torch.clamp_max((x_y - shift) - log_sum, 0.0)

    def per_target(g):
        return g[tgt.long()] if g.dim() == 1 else g

    p, omp, g, m = _modulating(logp, gamma, policy, per_target, gint, fast)
    validf = valid.to(dtype)
    a = alpha[tgt.long()] * validf if alpha is not None else validf
    return (shift, log_sum), validf, logp, p, omp, g, m, a


def _fast_loss(
    x, target, alpha, gamma, eps: float, policy: Policy, ignore_index: int, reduce: bool, gint
):
    (shift, log_sum), validf, logp, _, omp, _, m, a = _fast_parts(
        x, target, alpha, gamma, policy, ignore_index, gint
    )
    loss = -a * m * logp
    if eps != 0.0:
        loss = loss + eps * m * omp * validf
    return (loss.sum() if reduce else loss), shift, log_sum


def _fast_scale(
    x,
    target,
    alpha,
    gamma,
    eps: float,
    policy: Policy,
    ignore_index: int,
    shift,
    log_sum,
    scale,
    gint,
):
    """Per-sample s = ∂L/∂ℓ_y times the incoming gradient (0 for ignored samples)."""
    _, validf, logp, p, omp, g, m, a = _fast_parts(
        x, target, alpha, gamma, policy, ignore_index, gint, (shift, log_sum)
    )
    dl = -a * m * (1.0 - g * p * _ratio(logp, omp))
    if eps != 0.0:
        dl = dl - eps * (g + 1.0) * m * p * validf
    return dl * scale


# (N, C) inputs on CPU with at least this many classes add s at the target with a scatter
# after the full-size pass: there the inner loop runs over classes and the one-hot compare
# (an arange vector per step) costs more than the rest of the pass; in (N, C, d...) the
# compare is cheap and the scatter's writes, one per sample, land on separate cache lines.
_SCATTER_MIN_CLASSES = 16


def _fast_apply(x, target, ignore_index: int, shift, log_sum, s):
    """The gradient s·(onehot(y) - softmax(x)): one pass that reads x and writes the result.

    A separate kernel from :func:`_fast_scale` so that inductor reads the per-sample s
    instead of recomputing it (gather, expm1, ...) for every class. softmax(x) is
    exp(x - max)·exp(-log_sum) with the second factor folded into the per-sample scale:
    one subtraction and one exp per element, as many as exp(x - logsumexp(x)).
    """
    in_dtype = x.dtype
    xf = x.to(compute_dtype(x.dtype))
    fast = use_fast_math(xf)
    tgt = torch.where(target != ignore_index, target, 0).unsqueeze(1)
    s, shift = s.unsqueeze(1), shift.unsqueeze(1)
    s_p = s * torch.exp(-log_sum.unsqueeze(1))
    if torch.compiler.is_compiling():
        e = exp_nonpos(xf - shift) if fast else torch.exp(xf - shift)  # x - max <= 0
        if x.device.type == "cpu" and x.dim() == 2 and x.shape[1] >= _SCATTER_MIN_CLASSES:
            return (e * -s_p).scatter_add(1, tgt.long(), s).to(in_dtype)
        classes = torch.arange(x.shape[1], device=x.device, dtype=tgt.dtype)
        classes = classes.view([1, -1] + [1] * (x.dim() - 2))
        grad = torch.where(classes == tgt, s, 0.0) - e * s_p
    else:
        grad = torch.sub(xf, shift).exp_().mul_(-s_p).scatter_add_(1, tgt.long(), s)
    return grad.to(in_dtype)


# ---- general path: probability targets or label smoothing -------------------------------


def _target_distribution(xf, target, is_index: bool, smoothing: float, ignore_index: int):
    num_classes = xf.shape[1]
    if is_index:
        valid = target != ignore_index
        tgt = torch.where(valid, target, 0).unsqueeze(1)
        classes = torch.arange(num_classes, device=xf.device, dtype=tgt.dtype)
        classes = classes.view([1, -1] + [1] * (xf.dim() - 2))
        q = (classes == tgt).to(xf.dtype) * (1.0 - smoothing) + smoothing / num_classes
        return q * valid.unsqueeze(1).to(xf.dtype)
    return target.to(xf.dtype) * (1.0 - smoothing) + smoothing / num_classes


def _general_parts(
    x, target, is_index, smoothing, ignore_index, alpha, gamma, policy, gint, stats=None
):
    dtype = compute_dtype(x.dtype)
    xf = x.to(dtype)
    fast = use_fast_math(xf)
    shift, log_sum = _row_stats(xf, fast) if stats is None else stats
    logp = torch.clamp_max(torch.sub(xf, shift.unsqueeze(1)).sub_(log_sum.unsqueeze(1)), 0.0)
    if is_index:  # ignored rows are inert at any logit (±inf included), as in cross_entropy
        logp = torch.where((target != ignore_index).unsqueeze(1), logp, 0.0)

    def per_class(g):
        return _class_view(g, x.dim()) if g.dim() == 1 else g

    p, omp, g, m = _modulating(logp, gamma, policy, per_class, gint, fast)
    q = _target_distribution(xf, target, is_index, smoothing, ignore_index)
    w = _class_view(alpha, x.dim()) * q if alpha is not None else q
    return (shift, log_sum), logp, p, omp, g, m, q, w


def _general_loss(
    x,
    target,
    is_index: bool,
    smoothing: float,
    ignore_index: int,
    alpha,
    gamma,
    eps: float,
    policy: Policy,
    reduce: bool,
    gint,
):
    (shift, log_sum), logp, _, omp, _, m, q, w = _general_parts(
        x, target, is_index, smoothing, ignore_index, alpha, gamma, policy, gint
    )
    elem = -w * m * logp
    if eps != 0.0:
        elem = elem + eps * q * m * omp
    loss = elem.sum(dim=1)
    return (loss.sum() if reduce else loss), shift, log_sum


def _general_grad(
    x,
    target,
    is_index: bool,
    smoothing: float,
    ignore_index: int,
    alpha,
    gamma,
    eps: float,
    policy: Policy,
    shift,
    log_sum,
    scale,
    gint,
):
    in_dtype = x.dtype
    _, logp, p, omp, g, m, q, w = _general_parts(
        x, target, is_index, smoothing, ignore_index, alpha, gamma, policy, gint, (shift, log_sum)
    )
    d = -w * m * (1.0 - g * p * _ratio(logp, omp))
    if eps != 0.0:
        d = d - eps * q * (g + 1.0) * m * p
    if scale.dim() > 0:
        scale = scale.unsqueeze(1)
    grad = (d - p * d.sum(dim=1, keepdim=True)) * scale
    return grad.to(in_dtype)


def softmax_focal_elementwise(
    x, target, is_index, smoothing, ignore_index, alpha, gamma, eps, policy
):
    """Per-sample loss, differentiable by autograd (the composite path)."""
    if is_index and smoothing == 0.0:
        loss, _, _ = _fast_loss(x, target, alpha, gamma, eps, policy, ignore_index, False, None)
    else:
        loss, _, _ = _general_loss(
            x, target, is_index, smoothing, ignore_index, alpha, gamma, eps, policy, False, None
        )
    return loss


fast_loss_kernel = Kernel(_fast_loss)
fast_scale_kernel = Kernel(_fast_scale)
fast_apply_kernel = Kernel(_fast_apply)


def _fast_grad(x, target, alpha, gamma, eps, policy, ignore_index, shift, log_sum, scale, gint):
    """:func:`_fast_scale` then :func:`_fast_apply` as one compiled graph: on a GPU, where a
    compiled call costs more host time than its kernels take, one call instead of two."""
    s = _fast_scale(x, target, alpha, gamma, eps, policy, ignore_index, shift, log_sum, scale, gint)
    return _fast_apply(x, target, ignore_index, shift, log_sum, s)


fast_grad_kernel = Kernel(_fast_grad)
general_loss_kernel = Kernel(_general_loss)
general_grad_kernel = Kernel(_general_grad)


# ---- eager evaluation in chunks of samples ----------------------------------------------


def _sample_chunks(x: Tensor) -> list[tuple[int, int]]:
    """Ranges of dim 0 of about one eager chunk each (at least one sample); softmax chunks
    are 4x the sigmoid's on CPU, as each costs ~20 op dispatches."""
    n = x.shape[0]
    per_sample = max(1, x.numel() // max(n, 1))
    step = max(1, eager_chunk(x.device, scale=4) // per_sample)
    return [(i, min(n, i + step)) for i in range(0, n, step)]


def _eager_loss(x, target, reduce: bool, run) -> tuple[Tensor, Tensor, Tensor]:
    """Run ``run(x_chunk, target_chunk, reduce)`` over sample chunks; join losses and stats."""
    chunks = _sample_chunks(x)
    if len(chunks) <= 1:
        return run(x, target, reduce)
    outs, shifts, log_sums = [], [], []
    for i, j in chunks:
        out, shift, log_sum = run(x[i:j], target[i:j], reduce)
        outs.append(out)
        shifts.append(shift)
        log_sums.append(log_sum)
    out = torch.stack(outs).sum() if reduce else torch.cat(outs)
    return out, torch.cat(shifts), torch.cat(log_sums)


def _eager_grad(x, target, shift, log_sum, scale, run) -> Tensor:
    """Run ``run(x, target, shift, log_sum, scale)`` chunk by chunk into one gradient."""
    chunks = _sample_chunks(x)
    if len(chunks) <= 1:
        return run(x, target, shift, log_sum, scale)
    grad = torch.empty_like(x, memory_format=torch.contiguous_format)
    for i, j in chunks:
        sc = scale[i:j] if scale.dim() > 0 else scale
        grad[i:j] = run(x[i:j], target[i:j], shift[i:j], log_sum[i:j], sc)
    return grad


# ---- small inputs: a few ATen calls each way --------------------------------------------
# Below one eager chunk the cost is host time per op (~3-5 µs), not memory traffic: the
# forward is log_softmax and a gather, the rest works on one value per sample, and the
# backward is one exp of the saved log-probabilities, a scatter and a multiply.


_CPU_ZEROS = {dtype: torch.zeros((), dtype=dtype) for dtype in (torch.float32, torch.float64)}


def _zero(like: Tensor) -> Tensor:
    """A 0-d zero: ``addcmul(zero, a, b, value=c)`` is c·a·b in one ATen call."""
    if like.is_cpu:
        return _CPU_ZEROS[like.dtype]
    return cached_scalar(0.0, like.dtype, like.device)


def _integer_power(e: Tensor, k: int) -> Tensor | None:
    """``e**k`` as products (``None`` for k = 0)."""
    if k <= 0:
        return None
    out = e
    for _ in range(k - 1):
        out = out * e
    return out


def _small_log_probs(x: Tensor, target: Tensor) -> tuple[Tensor, int, Tensor]:
    """(log-softmax, its class dim, the target shaped to gather along it).

    A 2-D CPU input with 3-15 classes is transposed to ``(C, N)`` first: ATen's CPU
    log_softmax over a last dim shorter than its vector width runs a slow path (measured
    at 64 rows: 13-18 µs for 8-15 classes, 5 µs for 16), over dim 0 of the contiguous
    ``(C, N)`` copy 2-4 µs, the copy 3 µs; the per-sample values then lie along one row,
    so the backward's broadcast multiply runs along contiguous memory too.
    """
    xf = x if x.dtype in _FLOATS else x.float()
    if x.dim() == 2 and 2 < x.shape[1] < 16 and x.is_cpu:
        return torch.log_softmax(torch.t_copy(xf), 0), 0, target.unsqueeze(0)
    return torch.log_softmax(xf, 1), 1, target.unsqueeze(1)


def _small_general_forward(logp_all, d, tgt, logp, alpha, gamma, eps, policy, ignore_index,
                           masked, gint, reduction):  # fmt: skip
    """(loss, state for :func:`_small_general_backward`) with α, ignored targets, ε, any γ."""
    valid = None
    if masked:
        valid = tgt != ignore_index
        tgt = torch.where(valid, tgt, 0)
        valid = valid.to(logp_all.dtype)
        logp = logp_all.gather(d, tgt).mul_(valid)
    e = torch.expm1(logp)  # p - 1, exact as p -> 1
    omp = e.neg()  # 1 - p
    a = None if alpha is None else alpha[tgt]
    if valid is not None:
        a = valid if a is None else a * valid
    if gint is not None:
        g = float(gint)
        prev = _integer_power(omp, gint - 1)  # (1-p)^(γ-1), None for γ <= 1
        m = None if gint == 0 else (omp if prev is None else prev * omp)
    else:
        if policy is not None:
            g = policy_gamma(logp.exp(), policy)
        else:
            g = gamma[tgt] if gamma.dim() == 1 else gamma
        prev = omp.clamp_min(torch.finfo(omp.dtype).tiny)
        m = torch.exp(torch.log(prev).mul_(g))
        prev = (g * m).div_(prev)  # γ(1-p)^(γ-1), finite for every γ >= 0
    loss = logp.neg() if m is None else (logp * m).neg_()
    if a is not None:
        loss = loss.mul_(a)
    if eps != 0.0:
        poly = omp if m is None else omp * m
        loss = loss.add_(poly if valid is None else poly.mul_(valid), alpha=eps)
    denom = None
    if reduction == "mean":
        denom = a.sum() if a is not None else float(logp.numel())
    out = loss.sum() if reduction != "none" else loss.squeeze(d)
    if denom is not None:
        out = out / denom
    return out, (logp_all, d, tgt, logp, e, denom, omp, m, g, prev, a, valid)


def _small_general_backward(state, eps: float, gint, grad_out: Tensor) -> Tensor:
    """grad_out·s·(softmax(x) - onehot(y)), s = -∂loss/∂log p_y, for the general forward."""
    logp_all, d, tgt, logp, e, denom, omp, m, g, prev, a, valid = state
    factor, g_out = 1.0, None
    if grad_out.dim() == 0 and grad_out.is_cpu:
        factor = float(grad_out)  # the usual scalar loss: a Python float
    else:
        g_out = grad_out if grad_out.dim() == 0 else grad_out.unsqueeze(d)
    if isinstance(denom, Tensor):  # all ignored: the loss is 0/0 = NaN, its gradient 0
        if denom.is_cpu:
            factor = 0.0 if float(denom) == 0 else factor / float(denom)
        else:
            g_out = torch.where(denom == 0, 0.0, (1.0 if g_out is None else g_out) / denom)
    elif denom is not None:
        factor = factor / denom if denom else 0.0
    p = logp.exp()
    # -∂L/∂log p_y = a·(m - m'·p·log p) + ε·p·(m'·(1-p) + m), m' = d(1-p)^γ/d(1-p)
    if gint is None:
        s = torch.addcmul(m, prev * p, logp, value=-1.0)  # prev holds m'
    elif gint == 0:
        s = torch.ones_like(logp)
    else:  # m - γ(1-p)^(γ-1)·p·log p = (1-p)^(γ-1)·((1-p) - γ·p·log p)
        s = torch.addcmul(omp, p, logp, value=-g)
        if prev is not None:
            s = s.mul_(prev)
    if a is not None:
        s = s.mul_(a)
    if eps != 0.0:
        poly = p * (g + 1.0) if m is None else p.mul_((g + 1.0) * m)
        s = s.add_(poly if valid is None else poly.mul_(valid), alpha=eps)
    if factor != 1.0:
        s = s.mul_(factor)
    # p_y - 1 = e at the target (exact as p -> 1), p elsewhere; times s
    grad = torch.exp(logp_all).scatter_(d, tgt, e).mul_(s)
    return grad if g_out is None else grad.mul_(g_out)


_FLOATS = (torch.float32, torch.float64)


def _tensor_or_none(v):
    return v if isinstance(v, Tensor) else None


class SmallSoftmaxFocalFunction(torch.autograd.Function):
    """Class-index targets without label smoothing, eagerly: keeps the log-probabilities,
    as ``cross_entropy`` does, and works on one value per sample besides them. Under
    ``create_graph=True`` the backward differentiates the composite loss, so
    second-order gradients are exact.

    The usual call (no α, nothing ignored, no ε, γ a small integer: the mean or sum of
    -(1-p)^γ log p) takes a lean form, written out here, where each ATen call and each line
    of Python counts: log_softmax, a gather and four ops on one value per sample for the
    loss; three on one value per sample, an exp, a scatter and a multiply for the gradient,
    which the forward computes when the input requires grad (see :func:`_lean_gradient`).
    """

    @staticmethod
    def forward(ctx, x, target, alpha, gamma, config):  # type: ignore[override]
        """``config``: (ε, policy, ignore_index, reduction, may hold ignore_index? (None:
        not read yet), γ as a small int or None)."""
        eps, policy, ignore_index, reduction, masked, gint = config
        ctx.config = config
        ctx.x_dtype = x.dtype
        ctx.save_for_backward(x, target, alpha, gamma)
        logp_all, d, tgt = _small_log_probs(x, target)
        if not masked:
            # masked None: the target was not read; the gather checks its range, and a batch
            # holding ignore_index (outside the classes) takes the masked form after it fails
            try:
                logp = logp_all.gather(d, tgt)
            except RuntimeError:
                if masked is not None or not check_class_indices(target, x.shape[1], ignore_index):
                    raise  # not an index out of range
                masked = True
        if masked or alpha is not None or eps != 0.0 or gint is None or reduction == "none":
            out, ctx.state = _small_general_forward(
                logp_all, d, tgt, None if masked else logp, alpha, gamma, eps, policy,
                ignore_index, masked, gint, reduction,
            )  # fmt: skip
            ctx.lean = False
            return out
        # -c Σ (1-p)^γ log p with c = 1/N for the mean; e = p - 1 (exact as p -> 1), so
        # (1-p)^γ = (-e)^γ and the sign goes into c
        scale = 1.0 / logp.numel() if reduction == "mean" else 1.0
        needs_grad = ctx.needs_input_grad[0]
        out, s, e = _lean_terms(logp, gint, scale, needs_grad)
        ctx.lean = True
        ctx.state = None
        if needs_grad:
            # The gradient for an upstream gradient of 1 (a loss's backward()), computed
            # here: the backward is then a return (or one multiply), where each ATen call
            # and line of Python costs what the arithmetic on a small batch costs. It takes
            # the place of the log-probabilities that cross_entropy keeps. p_y - 1 = e at
            # the target (exact as p -> 1), p elsewhere; times s.
            grad = torch.exp(logp_all).scatter_(d, tgt, e).mul_(s)
            if grad.dtype != x.dtype:
                grad = grad.to(x.dtype)
            ctx.state = grad.mT if d == 0 else grad
        return out

    @staticmethod
    def backward(ctx, grad_out):  # type: ignore[override]
        if torch.is_grad_enabled():  # create_graph=True: a gradient that is differentiable
            return _small_double_differentiable(ctx, grad_out), None, None, None, None
        if ctx.lean:
            grad = ctx.state
            if not grad_out.is_cpu:
                grad = grad * grad_out
            elif float(grad_out) != 1.0:
                grad = grad * float(grad_out)
            return grad, None, None, None, None
        eps, _, _, _, _, gint = ctx.config
        grad = _small_general_backward(ctx.state, eps, gint, grad_out)
        if grad.dtype != ctx.x_dtype:
            grad = grad.to(ctx.x_dtype)
        return (grad.mT if ctx.state[1] == 0 else grad), None, None, None, None


def _lean_terms(logp: Tensor, gint: int, c: float, needs_grad: bool) -> tuple:
    """(loss, s, e) of the lean form: the loss -c Σ (1-p)^γ log p, and per sample
    s = -c·∂l/∂log p = c·(1-p)^(γ-1)·((1-p) - γ·p·log p) (None unless ``needs_grad``).

    With e = p - 1 = expm1(log p) (exact as p -> 1), (1-p)^γ = (-e)^γ. For γ = 2, with
    v = 2c·e·log p: the loss is -½ Σ e·v and s = c·(e² + 2p·e·log p) = v + c·e·(e + v/c),
    five ATen calls on one value per sample for both.
    """
    e = torch.expm1(logp)
    zero = _zero(e)
    s = None
    if gint == 2:  # the default γ, spelt out
        v = torch.addcmul(zero, e, logp, value=2.0 * c)
        out = torch.addcmul(zero, e, v, value=-0.5).sum()
        if needs_grad:
            s = torch.addcmul(v, e, torch.add(e, v, alpha=1.0 / c), value=c)
        return out, s, e
    if gint == 0:
        return logp.sum() * -c, c, e
    sign = 1.0 if gint % 2 == 0 else -1.0
    out = torch.addcmul(zero, _integer_power(e, gint), logp, value=-sign * c).sum()
    if needs_grad:  # (-1)^γ c·e^(γ-1)·(e + γ·p·log p)
        inner = torch.addcmul(e, logp.exp(), logp, value=gint)
        if gint == 1:
            s = inner * -c
        else:
            s = torch.addcmul(zero, inner, _integer_power(e, gint - 1), value=sign * c)
    return out, s, e


def _small_double_differentiable(ctx, grad_out: Tensor) -> Tensor:
    """The backward of :class:`SmallSoftmaxFocalFunction` under ``create_graph=True``: the
    gradient of the composite loss, itself differentiable."""
    eps, policy, ignore_index, reduction, _, _ = ctx.config
    x, target, alpha, gamma = ctx.saved_tensors
    denom = None
    if reduction == "mean":
        denom = float(target.numel()) if ctx.lean else ctx.state[5]
        if isinstance(denom, Tensor):
            denom = torch.where(denom == 0, 1.0, denom)  # all ignored: gradient 0

    def loss_fn(xv):
        loss = softmax_focal_elementwise(
            xv, target, True, 0.0, ignore_index, alpha, gamma, eps, policy
        )
        if reduction == "none":
            return loss
        return loss.sum() if denom is None else loss.sum() / denom

    return differentiable_grad(loss_fn, x, grad_out)


class SoftmaxFocalFunction(torch.autograd.Function):
    """Compiled (class-index targets) or any targets with label smoothing: saves the
    inputs and the per-sample max and log-sum (no full-size intermediates). Under
    ``create_graph=True`` the backward differentiates the composite loss, so second-order
    gradients are exact."""

    @staticmethod
    def forward(ctx, x, target, alpha, gamma, denom, config):  # type: ignore[override]
        """``config``: (ε, policy, ignore_index, label smoothing, class-index target?,
        reduce?)."""
        eps, policy, ignore_index, smoothing, is_index, reduce = config
        fast = is_index and smoothing == 0.0
        gint = static_gamma(gamma, policy)
        ctx.args = (eps, policy, ignore_index, smoothing, is_index, fast, gint, reduce)
        ctx.denom = denom
        numel = x.numel()
        if denom is not None and not isinstance(denom, Tensor):
            denom = torch.full((), denom, dtype=compute_dtype(x.dtype), device=x.device)
        ctx.denom = denom
        original_target = target
        if fast:  # compiled (eagerly, SmallSoftmaxFocalFunction): one logsumexp pass
            ctx.compiled = True
            if is_index and x.device.type == "cpu":
                target = _float_index(target, ignore_index, x.shape[1])
            out, shift, log_sum = fast_loss_kernel(
                numel, x, target, alpha, gamma, eps, policy, ignore_index, reduce, gint,
                compiled=True,
            )  # fmt: skip
        else:
            ctx.compiled = general_loss_kernel.compiles(numel)
            if is_index and x.device.type == "cpu" and ctx.compiled:
                target = _float_index(target, ignore_index, x.shape[1])

            def run(xc, tc, red):
                return _general_loss(
                    xc, tc, is_index, smoothing, ignore_index, alpha, gamma, eps, policy, red, gint
                )

            out, shift, log_sum = general_loss_kernel(
                numel, x, target, is_index, smoothing, ignore_index, alpha, gamma, eps, policy,
                reduce, gint, eager=lambda: _eager_loss(x, target, reduce, run),
            )  # fmt: skip
        if denom is not None:
            out = out / denom
        ctx.kernel_target = target  # float class indices for compiled CPU kernels
        ctx.save_for_backward(
            x, original_target, alpha, gamma, shift, log_sum, _tensor_or_none(denom)
        )
        return out

    @staticmethod
    def backward(ctx, grad_out):  # type: ignore[override]
        x, target, alpha, gamma, shift, log_sum, _ = ctx.saved_tensors
        denom = ctx.denom
        eps, policy, ignore_index, smoothing, is_index, fast, gint, reduce = ctx.args
        none = (None,) * 5
        if torch.is_grad_enabled():  # create_graph=True: a gradient that is differentiable
            safe = denom
            if isinstance(denom, Tensor):
                safe = torch.where(denom == 0, 1.0, denom)

            def loss_fn(xv):
                loss = softmax_focal_elementwise(
                    xv, target, is_index, smoothing, ignore_index, alpha, gamma, eps, policy
                )
                loss = loss.sum() if reduce else loss
                return loss if safe is None else loss / safe

            return differentiable_grad(loss_fn, x, grad_out), *none
        # An all-ignored batch: the loss is 0/0 = NaN as in cross_entropy, whose gradient is 0.
        scale = grad_out
        if isinstance(denom, Tensor):
            scale = torch.where(denom == 0, 0.0, grad_out / denom)
        elif denom is not None:
            scale = grad_out / denom
        target = ctx.kernel_target
        numel = x.numel()
        if fast:  # the forward ran compiled
            args = (x, target, alpha, gamma, eps, policy, ignore_index, shift, log_sum, scale, gint)
            if x.device.type != "cpu":
                grad = fast_grad_kernel(numel, *args, compiled=True)
            else:
                s = fast_scale_kernel(numel, *args, compiled=True)
                grad = fast_apply_kernel(
                    numel, x, target, ignore_index, shift, log_sum, s, compiled=True
                )
            return grad, None, None, None, None, None

        def run(xc, tc, mc, lc, sc):
            return _general_grad(
                xc, tc, is_index, smoothing, ignore_index, alpha, gamma, eps, policy, mc, lc, sc,
                gint,
            )  # fmt: skip

        grad = general_grad_kernel(
            numel, x, target, is_index, smoothing, ignore_index, alpha, gamma, eps, policy, shift,
            log_sum, scale, gint, eager=lambda: _eager_grad(x, target, shift, log_sum, scale, run),
            compiled=ctx.compiled,
        )  # fmt: skip
        return grad, None, None, None, None, None
