"""Fused sigmoid focal loss: pure-tensor forward/gradient kernels and their autograd.Function.

With q = 1 - p_t = t·σ(-x) + (1-t)·σ(x) and d = σ(x) - t = (1-t)·σ(x) - t·σ(-x):

    loss  = α_t · ce · q^γ + ε · q^(γ+1)            ce = softplus(x) - t·x
    ∂/∂x  = α_t · [d·q^γ + ce·γ·q^(γ-1)·σ(x)σ(-x)·(1-2t)] + ε(γ+1)·q^γ·σ(x)σ(-x)·(1-2t)

For a scalar integer γ in 0..4 (read from a CPU γ without a device sync) q^γ and γq^(γ-1)
are products; any other γ takes q^γ = exp(γ·log q) and γq^(γ-1)σ(x)σ(-x) = γ·q^γ·r with
r = σ(x)σ(-x)/q ≤ 1, so γ in (0, 1) never meets the infinite derivative of (1-p)^γ at
p=1 that makes autograd through ``pow`` return NaN.

Compiled, the forward is one fused pass over x and t that writes the loss (a scalar for
"sum"/"mean") and, when x needs a gradient, the gradient too: one full-size tensor, the
one backward would allocate anyway, so the peak memory is the same and the exp/log work
is done once. The backward hands it out. Eagerly, the kernels run over chunks (64K
elements on CPU) so that their temporaries stay small.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ._backend import Kernel, eager_chunk, exp_nonpos, log1p_unit, use_fast_math
from ._common import Policy, compute_dtype, differentiable_grad, policy_gamma, static_gamma


def _parts(x: Tensor, t: Tensor, fast: bool):
    dtype = compute_dtype(x.dtype)
    x = x.to(dtype)
    t = t.to(dtype)
    # |x| and max(x, 0) both take the x >= 0 branch at x = 0, so that autograd through
    # this function (the composite path) differentiates one smooth formula there: abs and
    # clamp_min have derivatives 0 and 1 at 0, which would make σ'(0) = 0.
    positive = x >= 0
    neg_abs = torch.where(positive, -x, x)
    e = exp_nonpos(neg_abs) if fast else torch.exp(neg_abs)
    inv = 1.0 / (1.0 + e)  # σ(|x|)
    small = e * inv  # σ(-|x|), exact even where 1 - σ(|x|) rounds to 0
    s = torch.where(positive, inv, small)  # σ(x)
    sn = torch.where(positive, small, inv)  # σ(-x)
    log1p_e = log1p_unit(e) if fast else torch.log1p(e)
    one_m_t = 1.0 - t
    # BCE-with-logits exactly, ±inf logits included (NaN where torch gives NaN)
    ce = torch.where(positive, 0.0, -x) + one_m_t * x + log1p_e
    a = one_m_t * s
    b = t * sn
    # q = 1 - p_t, and d = σ(x) - t written so that it stays exact where σ(x) rounds to 1
    return x, t, one_m_t, s, sn, inv * small, ce, a + b, a - b


def _modulation(t, s, sn, ss, q, gamma, policy: Policy, gint: int | None, fast: bool):
    """(q^γ, γ·q^(γ-1)·σ(x)σ(-x), γ): the modulating factor and its x-derivative factor."""
    if gint is not None:
        if gint == 0:
            return 1.0, None, 0.0
        if gint == 1:
            return q, ss, 1.0
        q2 = q * q
        if gint == 2:
            m, dm = q2, 2.0 * q
        elif gint == 3:
            m, dm = q2 * q, 3.0 * q2
        else:
            m, dm = q2 * q2, 4.0 * (q2 * q)
        return m, dm * ss, float(gint)
    tiny = torch.finfo(q.dtype).tiny
    qc = torch.clamp_min(q, tiny)
    g = policy_gamma(t * s + (1.0 - t) * sn, policy) if policy is not None else gamma
    g_log_q = g * torch.log(qc)
    m = exp_nonpos(g_log_q) if fast else torch.exp(g_log_q)
    return m, g * m * (ss / qc), g


def _alpha_t(alpha: Tensor | None, t: Tensor, one_m_t: Tensor) -> Tensor | None:
    return None if alpha is None else alpha * t + (1.0 - alpha) * one_m_t


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
    return _elementwise_loss(x, t, alpha, gamma, weight, eps, policy, None, False)


def _elementwise_loss(x, t, alpha, gamma, weight, eps, policy, gint, fast):
    x, t, one_m_t, s, sn, ss, ce, q, _ = _parts(x, t, fast)
    m, _, _ = _modulation(t, s, sn, ss, q, gamma, policy, gint, fast)
    w = None if weight is None else weight.to(x.dtype)
    loss = ce * _times(m, _times(_alpha_t(alpha, t, one_m_t), w))  # as in _grad_terms
    if eps != 0.0:  # Poly-1 term: weighted, not α-balanced
        loss = loss + _times(eps * m * q, w)
    return loss


def _loss_kernel(
    x, t, alpha, gamma, weight, eps: float, policy: Policy, reduce: bool, gint: int | None
) -> Tensor:
    loss = _elementwise_loss(x, t, alpha, gamma, weight, eps, policy, gint, use_fast_math(x))
    return loss.sum() if reduce else loss


def _grad_terms(x, t, alpha, gamma, weight, eps, policy, gint, fast, with_loss: bool):
    """(elementwise loss or None, unscaled gradient), both in the compute dtype."""
    x, t, one_m_t, s, sn, ss, ce, q, d = _parts(x, t, fast)
    m, dm_ss, g = _modulation(t, s, sn, ss, q, gamma, policy, gint, fast)
    one_m_2t = one_m_t - t
    w = None if weight is None else weight.to(x.dtype)
    # α_t and the weight go into the factors that multiply ce, before ce (at the end of
    # the longest dependency chain, exp then log1p) is ready: one multiply less after it.
    aw = _times(_alpha_t(alpha, t, one_m_t), w)
    m_aw = _times(m, aw)
    grad = d * m_aw
    if dm_ss is not None:
        grad = grad + ce * _times(dm_ss, _times(one_m_2t, aw))
    loss = ce * m_aw if with_loss else None
    if eps != 0.0:  # Poly-1 term: weighted, not α-balanced
        grad = grad + _times(eps * (g + 1.0) * m * ss * one_m_2t, w)
        loss = loss + _times(eps * m * q, w) if loss is not None else None
    return loss, grad


def _times(a, b):
    """``a * b`` where ``None`` stands for a factor of 1."""
    if a is None:
        return b
    return a if b is None else a * b


def _grad_kernel(
    x, t, alpha, gamma, weight, eps: float, policy: Policy, scale: Tensor, gint: int | None
) -> Tensor:
    in_dtype = x.dtype
    _, grad = _grad_terms(x, t, alpha, gamma, weight, eps, policy, gint, use_fast_math(x), False)
    return (grad * scale).to(in_dtype)


def _loss_grad_kernel(
    x, t, alpha, gamma, weight, eps: float, policy: Policy, reduce: bool, gint, scale
) -> tuple[Tensor, Tensor]:
    """The loss (summed if ``reduce``) and its gradient times ``scale``, from one pass."""
    in_dtype = x.dtype
    loss, grad = _grad_terms(x, t, alpha, gamma, weight, eps, policy, gint, use_fast_math(x), True)
    if scale is not None:
        grad = grad * scale
    return (_total(loss) if reduce else loss), grad.to(in_dtype)


def _total(v: Tensor) -> Tensor:
    """``v.sum()``. On a GPU, rows of the last dim (16 to 4096 wide) are summed first: the
    elementwise work and the gradient's store then fuse into that per-row reduction,
    where inductor's split reduction of all elements stores the elementwise loss to a
    full-size buffer first."""
    if v.device.type != "cpu" and v.dim() >= 2 and 16 <= v.shape[-1] <= 4096:
        return v.reshape(-1, v.shape[-1]).sum(1).sum()
    return v.sum()


loss_kernel = Kernel(_loss_kernel)
grad_kernel = Kernel(_grad_kernel)
loss_grad_kernel = Kernel(_loss_grad_kernel)


# ---- eager: fused ATen calls, no torch.where ---------------------------------------------
# Eagerly each op is a pass over memory plus ~2-5 µs of host time, and on the CPU
# ``torch.where`` and comparisons cost ~10x an arithmetic op; these forms use sigmoid,
# exp and log1p and in-place arithmetic only. ce = (1-t)·x + relu(-x) + log1p(exp(-|x|))
# is BCE-with-logits exactly, ±inf logits included.


def _eager_terms(x, t, alpha, gamma, weight, eps, policy, gint, with_loss: bool, with_grad: bool):
    """(elementwise loss or None, unscaled gradient or None) in the compute dtype."""
    dtype = compute_dtype(x.dtype)
    x, t = x.to(dtype), t.to(dtype)
    s, sn = torch.sigmoid(x), torch.sigmoid(-x)
    one_m_t = 1.0 - t
    a = one_m_t * s
    b = t * sn
    q = a + b  # 1 - p_t
    # the exact part first, so that a tiny log1p term is not rounded away by ±x
    ce = torch.relu(-x).addcmul_(one_m_t, x).add_(torch.abs(x).neg_().exp_().log1p_())
    if gint is not None:
        m, mq = _power(q, gint)
        g = float(gint)
    else:
        g = policy_gamma(1.0 - q, policy) if policy is not None else gamma
        qc = q.clamp_min(torch.finfo(dtype).tiny)
        m = torch.exp(torch.log(qc).mul_(g))
        mq = (g * m).div_(qc)  # γ q^(γ-1), finite for every γ >= 0
    if alpha is not None:
        aw = one_m_t * (1.0 - alpha) + t * alpha
        if weight is not None:
            aw = aw.mul_(weight.to(dtype))
    else:
        aw = None if weight is None else weight.to(dtype)
    loss = grad = None
    if with_loss:
        loss = ce * m if aw is None else (ce * aw).mul_(m)
        if eps != 0.0:
            poly = q * m if weight is None else (q * m).mul_(weight.to(dtype))
            loss = loss.add_(poly, alpha=eps)
    if with_grad:
        d = a.sub_(b)  # σ(x) - t, exact where σ(x) rounds to 1
        ss_dir = s.mul_(sn).mul_(one_m_t.sub_(t))  # σ(x)σ(-x)(1-2t) = ∂q/∂x
        grad = d.mul_(m)
        if not isinstance(mq, float) or mq != 0.0:
            grad = grad.addcmul_(ce, ss_dir * mq)
        if aw is not None:
            grad = grad.mul_(aw)
        if eps != 0.0:
            poly = ss_dir.mul_((g + 1.0) * m)
            if weight is not None:
                poly = poly.mul_(weight.to(dtype))
            grad = grad.add_(poly, alpha=eps)
    return loss, grad


def _power(q: Tensor, k: int) -> tuple[Tensor | float, Tensor | float]:
    """(q^k, k·q^(k-1)) for a small integer k, as products."""
    if k == 0:
        return 1.0, 0.0
    if k == 1:
        return q, 1.0
    prev = q
    for _ in range(k - 2):
        prev = prev * q
    return prev * q, prev * float(k)


# ---- eager evaluation in chunks ---------------------------------------------------------


def _chunk_views(x: Tensor, per_class: bool) -> tuple[tuple[int, ...], int]:
    """A 1-D or (rows, C) view shape of ``x`` and the rows (or elements) per chunk.

    Per-class α/γ or an elementwise weight broadcast on the last dim, so they need whole
    rows; otherwise the flat view is cut anywhere.
    """
    numel, chunk = x.numel(), eager_chunk(x.device)
    if not per_class or x.dim() == 0:
        return (numel,), chunk
    c = x.shape[-1]
    return (numel // max(c, 1), c), max(1, chunk // max(c, 1))


def _view(v: Tensor | None, shape: torch.Size, view_shape: tuple[int, ...]) -> Tensor | None:
    if v is None:
        return None
    return v.expand(shape).reshape(view_shape) if v.dim() > 0 else v


def _eager_run(x, t, alpha, gamma, weight, eps, policy, gint, scale, mode: str):
    """One chunk: the loss ("sum"/"none"), the gradient times ``scale`` ("grad"), or
    ``(loss, gradient)`` ("sum+grad"/"none+grad")."""
    with_grad = mode.endswith("grad")
    loss_mode = mode.split("+")[0]
    loss, grad = _eager_terms(
        x, t, alpha, gamma, weight, eps, policy, gint, loss_mode != "grad", with_grad
    )
    if loss is not None and loss_mode == "sum":
        loss = loss.sum()
    if grad is not None:
        if scale is not None:
            grad = grad.mul_(scale)
        grad = grad.to(x.dtype)
        return grad if loss_mode == "grad" else (loss, grad)
    return loss


def _eager_chunked(x, t, alpha, gamma, weight, eps, policy, gint, scale, mode: str):
    """:func:`_eager_run` chunk by chunk, so that its temporaries stay cache-sized."""
    if x.numel() <= eager_chunk(x.device):
        return _eager_run(x, t, alpha, gamma, weight, eps, policy, gint, scale, mode)
    per_class = weight is not None or any(v is not None and v.dim() > 0 for v in (alpha, gamma))
    view_shape, step = _chunk_views(x, per_class)
    xv, tv = x.reshape(view_shape), t.reshape(view_shape)
    wv = _view(weight, x.shape, view_shape)
    sv = _view(scale, x.shape, view_shape) if scale is not None else None
    rows = view_shape[0]
    with_grad, loss_mode = mode.endswith("grad"), mode.split("+")[0]
    total = torch.zeros((), dtype=compute_dtype(x.dtype), device=x.device)
    loss_out = grad_out = None
    if loss_mode == "none":
        loss_out = torch.empty(x.shape, dtype=compute_dtype(x.dtype), device=x.device)
    if with_grad:
        grad_out = torch.empty(x.shape, dtype=x.dtype, device=x.device)
    for i in range(0, rows, step):
        j = min(rows, i + step)
        w = wv[i:j] if wv is not None else None
        sc = sv[i:j] if sv is not None and sv.dim() > 0 else scale
        out = _eager_run(xv[i:j], tv[i:j], alpha, gamma, w, eps, policy, gint, sc, mode)
        if with_grad:
            grad_out.view(view_shape)[i:j] = out if loss_mode == "grad" else out[1]
            out = None if loss_mode == "grad" else out[0]
        if loss_mode == "sum":
            total = total + out
        elif loss_mode == "none":
            loss_out.view(view_shape)[i:j] = out
    loss = total if loss_mode == "sum" else loss_out
    if mode == "grad":
        return grad_out
    return (loss, grad_out) if with_grad else loss


def _is_one(v: Tensor) -> bool:
    """Whether ``v`` is the scalar 1 (the usual ``loss.backward()``), read without a
    device sync: CUDA values count as not 1."""
    return v.numel() == 1 and v.device.type == "cpu" and float(v) == 1.0


# Precompute the gradient in the forward for these input dtypes. Half-precision gradients
# are rounded after scaling, in backward, so that a GradScaler's factor still protects them.
_FUSED_DTYPES = (torch.float32, torch.float64)


class SigmoidFocalFunction(torch.autograd.Function):
    """One pass over the inputs writes the loss and, when the logits need a gradient, the
    gradient too (kept on ``ctx``, handed out by the first backward, scaled in place if
    the incoming gradient is not 1). It saves the inputs as well, so a second backward
    (``retain_graph=True``) and half-precision logits recompute the gradient in one pass.
    """

    @staticmethod
    def forward(ctx, x, t, alpha, gamma, weight, eps, policy, reduce, denom):  # type: ignore[override]
        gint = static_gamma(gamma, policy)
        numel = x.numel()
        args = (x, t, alpha, gamma, weight, eps, policy)
        mode = "sum" if reduce else "none"
        ctx.grad = None
        if ctx.needs_input_grad[0] and x.dtype in _FUSED_DTYPES:
            inv = None if denom is None else 1.0 / denom
            out, ctx.grad = loss_grad_kernel(
                numel,
                *args,
                reduce,
                gint,
                inv,
                eager=lambda: _eager_chunked(*args, gint, inv, mode + "+grad"),
            )
        else:
            out = loss_kernel(
                numel, *args, reduce, gint, eager=lambda: _eager_chunked(*args, gint, None, mode)
            )
        if denom is not None:
            out = out / denom
        ctx.save_for_backward(x, t, alpha, gamma, weight, denom)
        ctx.eps, ctx.policy, ctx.gint, ctx.reduce = eps, policy, gint, reduce
        return out

    @staticmethod
    def backward(ctx, grad_out):  # type: ignore[override]
        none = (None,) * 8
        grad, ctx.grad = ctx.grad, None
        if torch.is_grad_enabled():  # create_graph=True: a gradient that is differentiable
            x, t, alpha, gamma, weight, denom = ctx.saved_tensors

            def loss_fn(xv):
                loss = sigmoid_focal_elementwise(xv, t, alpha, gamma, weight, ctx.eps, ctx.policy)
                loss = loss.sum() if ctx.reduce else loss
                return loss if denom is None else loss / denom

            return differentiable_grad(loss_fn, x, grad_out), *none
        if grad is not None:  # precomputed in forward, already divided by denom
            return (grad if _is_one(grad_out) else grad.mul_(grad_out)), *none
        x, t, alpha, gamma, weight, denom = ctx.saved_tensors
        scale = grad_out if denom is None else grad_out / denom
        args = (x, t, alpha, gamma, weight, ctx.eps, ctx.policy)
        grad = grad_kernel(
            x.numel(),
            *args,
            scale,
            ctx.gint,
            eager=lambda: _eager_chunked(*args, ctx.gint, scale, "grad"),
        )
        return grad, *none
