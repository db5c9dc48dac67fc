"""The materialised attention reference (torch ops): the oracle every kernel is tested against,
the `reference` backend, and the graph the double backward's own backward differentiates.
Contract: genfast/ops/attention.py. Everything here stores the (N, M) matrix: O(N M) memory.

Numerics: math in the work dtype (float32 for half types); a row that sees no key gets P = 0
(so o = 0 and zero gradients) and lse = -inf, with no NaN anywhere, also in the gradients: its
scores are replaced by 0 before the log-sum-exp, then masked out of P.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from ._boundary import work_dtype


def visible(N: int, M: int, causal: bool, device: torch.device) -> Tensor | None:
    """(N, M) bool: query i sees key j (bottom-right causal: j <= i + M - N); None = all."""
    if not causal:
        return None
    i = torch.arange(N, device=device).unsqueeze(1)
    j = torch.arange(M, device=device).unsqueeze(0)
    return j <= i + (M - N)


def pool_rows(t: Tensor, pool: tuple[int, int], indices: bool = False):
    """(B, Hh, Hs*Ws, D) rows of an Hs x Ws grid -> the 2x2 max-pooled (B, Hh, M, D) rows
    (F.max_pool2d: odd edges dropped, ties to the first maximum in row-major window order);
    with indices also the flat unpooled row of each maximum, (B, Hh, M, D) int64."""
    B, Hh, _, D = t.shape
    hs, ws = pool
    grid = t.reshape(B * Hh, hs, ws, D).permute(0, 3, 1, 2)
    out, idx = F.max_pool2d(grid, 2, return_indices=True)
    fold = (lambda x: x.permute(0, 2, 3, 1).reshape(B, Hh, -1, D))
    return (fold(out), fold(idx)) if indices else fold(out)


def unpool_rows(g: Tensor, idx: Tensor, rows: int) -> Tensor:
    """The adjoint of pool_rows: g (B, Hh, M, D) scattered to rows `idx` of a zero
    (B, Hh, rows, D) (each unpooled row belongs to at most one window: no collisions)."""
    out = g.new_zeros(g.shape[0], g.shape[1], rows, g.shape[3])
    return out.scatter(2, idx, g)


def probs(q: Tensor, k: Tensor, causal: bool, scale: float) -> tuple[Tensor, Tensor]:
    """(P (.., N, M), lse (.., N)) in q's dtype, differentiable; lse = -inf on empty rows."""
    N, M = q.shape[-2], k.shape[-2]
    s = scale * (q @ k.transpose(-1, -2))
    vis = visible(N, M, causal, q.device)
    if vis is None:
        return torch.softmax(s, -1) if M else s, torch.logsumexp(s, -1)
    empty = ~vis.any(-1, keepdim=True)  # rows with no key (N > M under causal)
    s = s.masked_fill(~vis | empty, float("-inf")).masked_fill(empty, 0.0)
    lse = torch.logsumexp(s, -1, keepdim=True)
    p = torch.exp(s - lse).masked_fill(empty, 0.0)
    return p, lse.squeeze(-1).masked_fill(empty.squeeze(-1), float("-inf"))


def attention_reference(q: Tensor, k: Tensor, v: Tensor, causal: bool = False,
                        scale: float | None = None,
                        pool: tuple[int, int] | None = None) -> Tensor:
    """o = softmax(scale q k^T, masked) v as differentiable torch ops, in the work dtype and
    cast back (q (B, Hh, N, Dk), k (B, Hh, Sk, Dk), v (B, Hh, Sk, Dv); pool: k / v rows are an
    Hs x Ws grid max-pooled 2x2)."""
    dt = q.dtype
    wd = work_dtype(dt)
    q, k, v = q.to(wd), k.to(wd), v.to(wd)
    if scale is None:
        scale = q.shape[-1] ** -0.5
    if pool is not None:
        k, v = pool_rows(k, pool), pool_rows(v, pool)
    p, _ = probs(q, k, causal, scale)
    return (p @ v).to(dt)


# --------------------------------------------------------------------------- the kernels
# The reference backend's three kernels (same arguments and results as the native ones).
def ref_fwd(q, k, v, causal, scale, pool, save):
    wd = work_dtype(q.dtype)
    with torch.no_grad():
        qw, kw, vw = q.to(wd), k.to(wd), v.to(wd)
        if pool is not None:
            kw, vw = pool_rows(kw, pool), pool_rows(vw, pool)
        p, lse = probs(qw, kw, causal, scale)
        return (p @ vw).to(q.dtype), (lse if save else None)


def _grads(q, k, v, dout, causal, scale):
    """(dq, dk, dv, P, dP, D, dS) of one attention in the work dtype (explicit formulas)."""
    p, _ = probs(q, k, causal, scale)
    dp = dout @ v.transpose(-1, -2)
    d = (p * dp).sum(-1, keepdim=True)  # = rowsum(dout * o)
    ds = p * (dp - d)
    return scale * ds @ k, scale * ds.transpose(-1, -2) @ q, p.transpose(-1, -2) @ dout, p, dp, \
        d, ds


def ref_bwd(q, k, v, o, lse, dout, causal, scale, pool):
    """(dq, dk, dv); pooled: dk / dv routed to each window's first maximum (unpooled shape)."""
    wd = work_dtype(q.dtype)
    with torch.no_grad():
        qw, kw, vw, dw = q.to(wd), k.to(wd), v.to(wd), dout.to(wd)
        if pool is not None:
            (kw, ik), (vw, iv) = pool_rows(kw, pool, True), pool_rows(vw, pool, True)
        dq, dk, dv = _grads(qw, kw, vw, dw, causal, scale)[:3]
        if pool is not None:
            dk, dv = unpool_rows(dk, ik, k.shape[2]), unpool_rows(dv, iv, v.shape[2])
        return dq.to(q.dtype), dk.to(q.dtype), dv.to(q.dtype)


def bwd2_formulas(q, k, v, dout, gq, gk, gv, causal, scale):
    """(Gq, Gk, Gv, Gdout): the gradients of <gq, dq> + <gk, dk> + <gv, dv> w.r.t. q, k, v,
    dout (genfast/ops/attention.py's double-backward formulas), as differentiable torch ops;
    gq / gk / gv None mean zeros."""
    dq_, dk_, dv_, p, dp, d, ds = _grads(q, k, v, dout, causal, scale)
    del dq_, dk_, dv_
    tr = (lambda t: t.transpose(-1, -2))
    x = None
    if gq is not None:
        x = scale * gq @ tr(k)
    if gk is not None:
        x = scale * q @ tr(gk) if x is None else x + scale * q @ tr(gk)
    w = dout @ tr(gv) if gv is not None else torch.zeros_like(p)
    if x is not None:
        r = (p * x).sum(-1, keepdim=True)
        w = w + x * (dp - d) - r * dp
        z = p * (x - r)
    u = p * (w - (p * w).sum(-1, keepdim=True))
    g_q, g_k = scale * u @ k, scale * tr(u) @ q
    if gk is not None:
        g_q = g_q + scale * ds @ gk
    if gq is not None:
        g_k = g_k + scale * tr(ds) @ gq
    g_dout = p @ gv if gv is not None else torch.zeros_like(dout)
    if x is not None:
        g_v = tr(z) @ dout
        g_dout = g_dout + z @ v
    else:
        g_v = torch.zeros_like(v)
    return g_q, g_k, g_v, g_dout


def ref_bwd2(q, k, v, o, lse, dout, gq, gk, gv, causal, scale):
    wd = work_dtype(q.dtype)
    c = (lambda t: None if t is None else t.to(wd))
    with torch.no_grad():
        got = bwd2_formulas(c(q), c(k), c(v), c(dout), c(gq), c(gk), c(gv), causal, scale)
    return tuple(g.to(q.dtype) for g in got)
