"""Fused attention, differentiable to any order: public API, torch.library ops, autograd,
dispatch (op stem `attention`).

The contract every backend implements (this docstring is the spec; kernels cite it). Kernels:
reference (materialised torch) genfast/ops/_attention_ref.py, C++ CPU csrc/cpu/attention.cpp
and attention_bwd2.cpp, Triton kernels/attention.py and attention_bwd2.py, CUDA
csrc/cuda/attention*.cu; the dispatch table genfast/ops/_attention_backends.py. The SAGAN /
BigGAN 2-D core is genfast/ops/attention2d.py; modules in genfast/nn/attention*.py.

## One (batch, head) slice
q (N, Dk), k (M, Dk), v (M, Dv) (Dk and Dv may differ), scale s (None: 1/sqrt(Dk)):

    S = s q k^T;  lse_i = log sum_j exp(S_ij);  P = exp(S - lse);  o = P v

causal: BOTTOM-RIGHT aligned, query i sees key j iff j <= i + (M - N) (flash-attn's rule; the
same as SDPA's is_causal when N == M; what decoding with a KV cache needs: the new queries are
the last N positions):

    N = 3, M = 5      keys 0 1 2 3 4
        query 0            x x x . .
        query 1            x x x x .
        query 2            x x x x x

A row that sees no key (N > M under causal, or M == 0) gets o = 0, lse = -inf and zero
gradients; never a NaN. Kernels tile over keys with the online softmax and never store the
N x M matrix: memory O((N + M) D). lse is saved (float32; float64 for float64).
Pooled keys (SAGAN / BigGAN): k and v come UNPOOLED as an Hs x Ws grid of rows (row a*Ws + b)
and are max-pooled 2x2 on load (M = (Hs//2)(Ws//2), odd edges dropped like F.max_pool2d); the
backward routes each pooled gradient to the first maximum of its window in the order (0,0),
(0,1), (1,0), (1,1), and 0 elsewhere.

## Backward (kernel 1): D = rowsum(dO o); P from lse; dV = P^T dO; dP = dO v^T;
dS = P (dP - D); dQ = s dS k; dK = s dS^T q.
## Double backward (kernel 2): the gradients of <gq, dQ> + <gk, dK> + <gv, dV> w.r.t.
(q, k, v, dO) for cotangents gq, gk, gv (any may be absent):
    X = s (gq k^T + q gk^T);  Y = dO gv^T;  r = rowsum(P X);  W = Y + X (dP - D) - r dP
    U = P (W - rowsum(P W));  Z = P (X - r)
    Gq = s dS gk + s U k;  Gk = s dS^T gq + s U^T q;  Gv = Z^T dO;  GdO = P gv + Z v
computed in two tiled sweeps (row statistics, then gradients), P never stored. With pooled
keys Python pools (with indices), runs kernel 2 on the pooled k / v and routes back.
Third and higher orders: kernel 2's backward differentiates the reference formulas
(_attention_ref.bwd2_formulas) as torch ops, so every order exists (materialised from there).

## Native signatures: csrc/cpu/attention.h (CUDA: csrc/cuda/attention.h adds the stream).
"""

from __future__ import annotations

import warnings
from typing import Optional

import torch
from torch import Tensor

from .. import backends
from . import _checks
from ._attention_backends import BWD, BWD2, FWD
from ._attention_ref import attention_reference, bwd2_formulas, pool_rows, unpool_rows
from ._boundary import standard_dtypes, work_dtype
from ._eager import eager_op

__all__ = ["attention", "attention_reference", "attention_step"]
SPEC = backends.register_op(backends.OpSpec(name="attention", dtypes=standard_dtypes()))
OptT = Optional[Tensor]  # noqa: UP045  (torch.library parses the annotation)
MAX_HEAD_DIM = 256  # the kernels' tile limit for Dk and Dv; beyond it only the reference runs


def _pool(ph: int, pw: int) -> tuple[int, int] | None:
    return (ph, pw) if ph else None


def _trivial(q: Tensor, k: Tensor, pool) -> bool:
    """Nothing for a kernel to do: an empty batch / head / query axis or no key at all."""
    M = (pool[0] // 2) * (pool[1] // 2) if pool else k.shape[2]
    return q.shape[0] * q.shape[1] * q.shape[2] == 0 or M == 0


def _backend(be: str, q: Tensor, k: Tensor, pool) -> str:
    return "reference" if _trivial(q, k, pool) else be


# --------------------------------------------------------------------------- forward op
def _fwd_impl(q, k, v, causal, scale, ph, pw, save, backend):
    """(o, lse), lse None unless `save` (the eager path's inference calls allocate nothing
    else: a decode step is microseconds)."""
    pool = _pool(ph, pw)
    return backends.call("attention", _backend(backend, q, k, pool), FWD, q, k, v, causal,
                         scale, pool, save)


@torch.library.custom_op("genfast::attention_fwd", mutates_args=())
def attention_fwd_op(q: Tensor, k: Tensor, v: Tensor, causal: bool, scale: float, pool_h: int,
                     pool_w: int, save: bool, backend: str) -> tuple[Tensor, Tensor]:
    """(o, lse): lse empty unless `save`."""
    o, lse = _fwd_impl(q, k, v, causal, scale, pool_h, pool_w, save, backend)
    return o, (lse if save else q.new_empty(0, dtype=work_dtype(q.dtype)))


@attention_fwd_op.register_fake
def _(q, k, v, causal, scale, pool_h, pool_w, save, backend):
    B, Hh, N, _ = q.shape
    wd = work_dtype(q.dtype)
    lse = q.new_empty(B, Hh, N, dtype=wd) if save else q.new_empty(0, dtype=wd)
    return q.new_empty(B, Hh, N, v.shape[3]), lse


def _fwd_setup(ctx, inputs, output):
    q, k, v, ctx.causal, ctx.scale, ctx.ph, ctx.pw, _save, ctx.backend = inputs
    ctx.save_for_backward(q, k, v, output[0], output[1])
    if output[1] is not None:
        ctx.mark_non_differentiable(output[1])


def _fwd_grad(ctx, go, _glse):
    q, k, v, o, lse = ctx.saved_tensors
    if go is None:
        return (None,) * 9
    dq, dk, dv = attention_bwd(q, k, v, o.detach(), lse, go, ctx.causal, ctx.scale, ctx.ph,
                               ctx.pw, ctx.backend)
    return dq, dk, dv, None, None, None, None, None, None


attention_fwd_op.register_autograd(_fwd_grad, setup_context=_fwd_setup)
_fwd = eager_op(attention_fwd_op, _fwd_impl, _fwd_setup, _fwd_grad)


# --------------------------------------------------------------------------- backward op
def _bwd_impl(q, k, v, o, lse, dout, causal, scale, ph, pw, backend):
    pool = _pool(ph, pw)
    return tuple(backends.call("attention", _backend(backend, q, k, pool), BWD, q, k, v, o,
                               lse, dout, causal, scale, pool))


@torch.library.custom_op("genfast::attention_bwd", mutates_args=())
def attention_bwd_op(q: Tensor, k: Tensor, v: Tensor, o: Tensor, lse: Tensor, dout: Tensor,
                     causal: bool, scale: float, pool_h: int, pool_w: int,
                     backend: str) -> tuple[Tensor, Tensor, Tensor]:
    """(dq, dk, dv) (first order, on the kernels; dk / dv in k's unpooled shape)."""
    return _bwd_impl(q, k, v, o, lse, dout, causal, scale, pool_h, pool_w, backend)


@attention_bwd_op.register_fake
def _(q, k, v, o, lse, dout, causal, scale, pool_h, pool_w, backend):
    return torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)


def _bwd_setup(ctx, inputs, output):
    # A penalty on dq alone leaves dk / dv unused: None reaches the double backward, which
    # then skips the products they feed (zero-filled they would cost the full sweep).
    ctx.set_materialize_grads(False)
    q, k, v, o, lse, dout, ctx.causal, ctx.scale, ctx.ph, ctx.pw, ctx.backend = inputs
    ctx.save_for_backward(q, k, v, o, lse, dout)


def _bwd_grad(ctx, gdq, gdk, gdv):
    """The double backward: o and lse are functions of (q, k, v) whose dependence the
    formulas already include, so they get no gradient of their own."""
    q, k, v, o, lse, dout = ctx.saved_tensors
    pool = _pool(ctx.ph, ctx.pw)
    if pool is not None:  # kernel 2 runs on the pooled keys; its key gradients are routed back
        (k, ik), (v, iv) = pool_rows(k, pool, True), pool_rows(v, pool, True)
        gdk = None if gdk is None else gdk.gather(2, ik)
        gdv = None if gdv is None else gdv.gather(2, iv)
    gq, gk, gv, gdo = attention_bwd2(q, k, v, o.detach(), lse, dout, gdq, gdk, gdv,
                                     ctx.causal, ctx.scale, ctx.backend)
    if pool is not None:
        gk, gv = unpool_rows(gk, ik, ctx.ph * ctx.pw), unpool_rows(gv, iv, ctx.ph * ctx.pw)
    return gq, gk, gv, None, None, gdo, None, None, None, None, None


attention_bwd_op.register_autograd(_bwd_grad, setup_context=_bwd_setup)
_bwd = eager_op(attention_bwd_op, _bwd_impl, _bwd_setup, _bwd_grad)


def attention_bwd(q, k, v, o, lse, dout, causal, scale, ph, pw, backend):
    if torch.compiler.is_compiling():
        return attention_bwd_op(q, k, v, o, lse, dout, causal, scale, ph, pw, backend)
    return _bwd(q, k, v, o, lse, dout, causal, scale, ph, pw, backend)


# --------------------------------------------------------------------------- double backward
def _bwd2_impl(q, k, v, o, lse, dout, gq, gk, gv, causal, scale, backend):
    if gq is None and gk is None and gv is None:
        return tuple(torch.zeros_like(t) for t in (q, k, v, dout))
    return tuple(backends.call("attention", _backend(backend, q, k, None), BWD2, q, k, v, o,
                               lse, dout, gq, gk, gv, causal, scale))


@torch.library.custom_op("genfast::attention_bwd2", mutates_args=())
def attention_bwd2_op(q: Tensor, k: Tensor, v: Tensor, o: Tensor, lse: Tensor, dout: Tensor,
                      gq: OptT, gk: OptT, gv: OptT, causal: bool, scale: float,
                      backend: str) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """(Gq, Gk, Gv, Gdout) (the double backward on the kernels; unpooled keys only)."""
    return _bwd2_impl(q, k, v, o, lse, dout, gq, gk, gv, causal, scale, backend)


@attention_bwd2_op.register_fake
def _(q, k, v, o, lse, dout, gq, gk, gv, causal, scale, backend):
    return tuple(torch.empty_like(t) for t in (q, k, v, dout))


_BWD2_INPUTS = ("q", "k", "v", "dout", "gq", "gk", "gv")


def _bwd2_setup(ctx, inputs, output):
    q, k, v, _o, _lse, dout, gq, gk, gv, ctx.causal, ctx.scale, _backend = inputs
    ctx.present = [t is not None for t in (gq, gk, gv)]
    ctx.save_for_backward(q, k, v, dout, *(t for t in (gq, gk, gv) if t is not None))


def _bwd2_grad(ctx, *cots):
    """Third order: differentiate the reference formulas (torch ops, materialised)."""
    saved = list(ctx.saved_tensors)
    q, k, v, dout = saved[:4]
    rest = iter(saved[4:])
    gs = [next(rest) if p else None for p in ctx.present]
    create = torch.is_grad_enabled()
    with torch.enable_grad():
        xs = [t if t is None or (create and t.requires_grad) else
              t.detach().requires_grad_(True) for t in (q, k, v, dout, *gs)]
        wd = work_dtype(q.dtype)
        outs = bwd2_formulas(*(None if t is None else t.to(wd) for t in xs), ctx.causal,
                             ctx.scale)
        pairs = [(o.to(q.dtype), c) for o, c in zip(outs, cots, strict=True) if c is not None]
        live = [x for x in xs if x is not None]
        got = torch.autograd.grad([p[0] for p in pairs], live, [p[1] for p in pairs],
                                  create_graph=create, allow_unused=True) if pairs else \
            [None] * len(live)
    it = iter(got)
    g = [None if x is None else next(it) for x in xs]
    return g[0], g[1], g[2], None, None, g[3], g[4], g[5], g[6], None, None, None


attention_bwd2_op.register_autograd(_bwd2_grad, setup_context=_bwd2_setup)
_bwd2 = eager_op(attention_bwd2_op, _bwd2_impl, _bwd2_setup, _bwd2_grad)


def attention_bwd2(q, k, v, o, lse, dout, gq, gk, gv, causal, scale, backend):
    if torch.compiler.is_compiling():
        return attention_bwd2_op(q, k, v, o, lse, dout, gq, gk, gv, causal, scale, backend)
    return _bwd2(q, k, v, o, lse, dout, gq, gk, gv, causal, scale, backend)


# --------------------------------------------------------------------------- public API
def _as4d(name: str, t: object, ndim: int) -> Tensor:
    _checks.tensor(name, t, min_dim=2)
    if t.dim() != ndim:
        raise ValueError(f"{name} must have as many dims as q ({ndim}), got shape "
                         f"{tuple(t.shape)}")
    if ndim == 4:  # no reshape: it costs microseconds a call, which a decode step feels
        return t
    if ndim > 4:
        raise ValueError(f"{name} must be 2-D, 3-D or 4-D, got shape {tuple(t.shape)}")
    return t.reshape((1,) * (4 - ndim) + tuple(t.shape))


def _check(q: Tensor, k: Tensor, v: Tensor, pool, causal: bool) -> tuple[int, int] | None:
    for name, t in (("k", k), ("v", v)):
        if t.dtype != q.dtype or t.device != q.device:
            raise ValueError(f"{name} must have q's dtype and device ({q.dtype}, {q.device}), "
                             f"got {t.dtype}, {t.device}")
    if k.shape[:2] != q.shape[:2] or v.shape[:2] != q.shape[:2]:
        raise ValueError(f"q, k, v must share their batch and head dims, got q "
                         f"{tuple(q.shape)}, k {tuple(k.shape)}, v {tuple(v.shape)}")
    if k.shape[3] != q.shape[3]:
        raise ValueError(f"k's last dim must equal q's (Dk = {q.shape[3]}), got "
                         f"{k.shape[3]}")
    if v.shape[2] != k.shape[2]:
        raise ValueError(f"v must have as many rows as k ({k.shape[2]}), got {v.shape[2]}")
    if q.shape[3] == 0 or v.shape[3] == 0:
        raise ValueError("q, k and v must have a non-empty last (head) dim")
    if pool is None:
        return None
    if causal:
        raise ValueError("pool: pooled keys are for 2-D (SAGAN) attention, not with causal")
    if not (isinstance(pool, (tuple, list)) and len(pool) == 2):
        raise TypeError(f"pool must be a pair (Hs, Ws) or None, got {pool!r}")
    hs = _checks.integer("pool[0]", pool[0], 2)
    ws = _checks.integer("pool[1]", pool[1], 2)
    if hs * ws != k.shape[2]:
        raise ValueError(f"pool=({hs}, {ws}) needs k and v to hold {hs * ws} rows (an Hs x Ws "
                         f"grid), got {k.shape[2]}")
    return hs, ws


def _route(be: str, Dk: int, Dv: int) -> str:
    """auto's choice, or the reference past the kernels' head-dim limit (explicit: an error)."""
    name = backends.base_name(be)
    if name == "reference" or max(Dk, Dv) <= MAX_HEAD_DIM:
        return be
    if not be.startswith(backends.AUTO_PREFIX):
        raise ValueError(f"genfast.attention: backend {name!r} takes head dims up to "
                         f"{MAX_HEAD_DIM}, got Dk={Dk}, Dv={Dv} (the reference takes any)")
    warnings.warn(f"genfast.attention: head dims Dk={Dk}, Dv={Dv} exceed the kernels' "
                  f"{MAX_HEAD_DIM}: running the materialised reference",
                  backends.BackendFallbackWarning, stacklevel=3)
    return backends.AUTO_PREFIX + "reference"


def attention(q: Tensor, k: Tensor, v: Tensor, *, causal: bool = False,
              scale: float | None = None, pool: tuple[int, int] | None = None,
              backend: str | None = None) -> Tensor:
    """Fused scaled-dot-product attention, differentiable to any order.

    q: (B, Hh, N, Dk), k: (B, Hh, M, Dk), v: (B, Hh, M, Dv) -> (B, Hh, N, Dv); also 3-D
    (B, N, D) and 2-D (N, D) inputs (all three with the same number of dims). Any strides
    (the forward reads a KV cache's view k_cache[:, :, :L] without a copy). Dk may differ from
    Dv. causal: bottom-right aligned mask (query i sees key j <= i + M - N; for N == M it is
    SDPA's is_causal). scale: None = 1/sqrt(Dk) (SDPA's default); SAGAN uses 1.0.
    pool=(Hs, Ws): k and v hold Hs*Ws rows of an Hs x Ws grid, max-pooled 2x2 inside the kernel
    (M = (Hs//2)(Ws//2); BigGAN's phi / g pooling). Rows that see no key give 0. dtypes: float32
    and float64 on the CPU, float16 / bfloat16 / float32 on the GPU. backend: "auto"
    (default), "reference", "cpu", "triton", "cuda". See the module docstring for the math.
    """
    _checks.tensor("q", q, min_dim=2)
    nd = q.dim()
    q4, k4, v4 = _as4d("q", q, nd), _as4d("k", k, nd), _as4d("v", v, nd)
    causal = _checks.boolean("causal", causal)
    grid = _check(q4, k4, v4, pool, causal)
    scale = q4.shape[3] ** -0.5 if scale is None else _checks.real("scale", scale)
    q4, k4, v4 = _checks.autocast_args(q4, k4, v4)
    be = _route(backends.resolve("attention", q4, backend), q4.shape[3], v4.shape[3])
    save = torch.is_grad_enabled() and any(t.requires_grad for t in (q4, k4, v4))
    ph, pw = grid if grid is not None else (0, 0)
    if torch.compiler.is_compiling():
        o = attention_fwd_op(q4, k4, v4, causal, scale, ph, pw, save, be)[0]
    else:
        o = _fwd(q4, k4, v4, causal, scale, ph, pw, save, be)[0]
    return o if nd == 4 else o.reshape(*q.shape[:-1], v4.shape[3])


def attention_step(q: Tensor, k: Tensor, v: Tensor, *, scale: float,
                   backend: str | None = None) -> Tensor:
    """Causal attention of new queries against cached keys, for inference callers that built
    q (B, Hh, N, D) and the cache views k, v (B, Hh, M, D) themselves (genfast.nn's
    CausalSelfAttention decoding with a KVCache): genfast.attention's kernels without its
    argument checks and autograd, whose Python costs more than the kernel at one query (~18
    vs ~5 us: a third of a small GPT's decode step). Only under no_grad / inference_mode;
    under torch.compile it is genfast.attention."""
    if torch.compiler.is_compiling() or (torch.is_grad_enabled() and (
            q.requires_grad or k.requires_grad or v.requires_grad)):
        return attention(q, k, v, causal=True, scale=scale, backend=backend)
    be = _route(backends.resolve("attention", q, backend), q.shape[3], v.shape[3])
    return _fwd_impl(q, k, v, True, scale, 0, 0, False, be)[0]
