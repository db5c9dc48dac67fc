"""Triton kernels of the fused WaveNet residual layer (forward and the recomputing backward) and
their launchers.

The semantics are the contract in genfast/ops/causal_conv_layer.py: a = conv(x~, w_dil) + b_dil
+ cond, f = a[:H], q = a[H:], z = tanh(f) sigmoid(q), x_out = x + w_res z + b_res, skip_out =
skip + w_skip z + b_skip.

One program owns a (batch, time tile) and keeps the whole gate tile in registers: f and q come
from two tl.dot chains over taps and residual-channel blocks (the w_dil halves are loaded
separately, so no register tensor is ever split), and the 1x1 products run over 64-row blocks of
w_res / w_skip against z, so only one output block is live at a time. Channel counts are padded
to powers of two (>= 16, tl.dot's minimum) with masks; padded gate rows have f = q = 0, hence
z = 0, and contribute nothing. Gates wider than MAX_H take the composed path (the conv kernel,
then torch) instead of spilling registers.

The backward recomputes a and z per tile (nothing gate-sized is saved), writes da, and stores
its tile's gx z^T and gs z^T as fp32 partials that torch sums in a fixed order (deterministic).
fp16/bf16 operands enter the 1x1 dots in their own dtype (z rounded once, as flash attention
rounds P); fp32 runs the dots in IEEE fp32.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from . import causal_conv as conv
from ._launch import check_like, device_guard
from .causal_conv import DTYPES, MIN_DOT, _dot, _pow2, _prec, load_src

MAX_H = 128  # widest gate half kept in registers (f, q, z: 3 x 128 x 64 fp32 a program)
_BO = 64  # output rows of a 1x1 block


@triton.jit
def _gate_tile(x_b, h_b, cond_b, w_ptr, b_ptr, t, T, P, dil, R, H, cond_len, cond_st,
               K: tl.constexpr, HAS_H: tl.constexpr, HAS_BD: tl.constexpr,
               HAS_COND: tl.constexpr, PREC: tl.constexpr, HP: tl.constexpr,
               BK: tl.constexpr):
    """f and q (HP, BT) fp32 of one time tile: conv taps + bias + cond."""
    hh = tl.arange(0, HP)
    hmask = hh < H
    f = tl.zeros((HP, t.shape[0]), tl.float32)
    q = tl.zeros((HP, t.shape[0]), tl.float32)
    for k in tl.static_range(K):
        idx = (t + k * dil - P)[None, :]
        for r0 in range(0, R, BK):
            r = r0 + tl.arange(0, BK)
            rmask = r < R
            xk = load_src(x_b + r[:, None] * T, h_b + r[:, None] * P, idx, T, P,
                          rmask[:, None], HAS_H)
            wm = hmask[:, None] & rmask[None, :]
            w_f = tl.load(w_ptr + (hh[:, None] * R + r[None, :]) * K + k, mask=wm, other=0.0)
            w_q = tl.load(w_ptr + ((H + hh)[:, None] * R + r[None, :]) * K + k, mask=wm,
                          other=0.0)
            f = _dot(w_f, xk, f, PREC)
            q = _dot(w_q, xk, q, PREC)
    if HAS_BD:
        f += tl.load(b_ptr + hh, mask=hmask, other=0.0).to(tl.float32)[:, None]
        q += tl.load(b_ptr + H + hh, mask=hmask, other=0.0).to(tl.float32)[:, None]
    if HAS_COND:
        # Global cond has one column (cond_st = 0), local cond one per time step.
        cm = hmask[:, None] & (t < T)[None, :]
        ct = (t * cond_st)[None, :]
        f += tl.load(cond_b + hh[:, None] * cond_len + ct, mask=cm, other=0.0).to(tl.float32)
        q += tl.load(cond_b + (H + hh)[:, None] * cond_len + ct, mask=cm,
                     other=0.0).to(tl.float32)
    return f, q


@triton.jit
def _layer_fwd_kernel(
    x_ptr,  # (B, R, T) residual input
    h_ptr,  # (B, R, P) history, when HAS_H
    cond_ptr,  # (B, G, cond_len) projected conditioning, when HAS_COND
    skip_ptr,  # (B, S, T) skip input, when HAS_SKIP
    wd_ptr, bd_ptr,  # w_dil (G, R, K), b_dil (G,)
    wr_ptr, br_ptr,  # w_res (R, H), b_res (R,)
    ws_ptr, bs_ptr,  # w_skip (S, H), b_skip (S,)
    xo_ptr,  # (B, R, T) x_out
    so_ptr,  # (B, S, T) skip_out
    T, P, dil, R, H, S, cond_len, cond_st,
    n_ttiles,  # time tiles
    K: tl.constexpr,
    HAS_H: tl.constexpr, HAS_COND: tl.constexpr, HAS_SKIP: tl.constexpr,
    HAS_BD: tl.constexpr, HAS_BR: tl.constexpr, HAS_BS: tl.constexpr,
    PREC: tl.constexpr,
    HP: tl.constexpr,  # gate half padded, >= 16
    BK: tl.constexpr,  # residual channels per conv dot, >= 16
    BO: tl.constexpr,  # output rows per 1x1 block, >= 16
    BT: tl.constexpr,  # times per tile, >= 16
):
    pid = tl.program_id(0).to(tl.int64)
    b = pid // n_ttiles
    t = (pid % n_ttiles) * BT + tl.arange(0, BT)
    tmask = (t < T)[None, :]
    x_b = x_ptr + b * R * T
    f, q = _gate_tile(x_b, h_ptr + b * R * P, cond_ptr + b * 2 * H * cond_len, wd_ptr, bd_ptr,
                      t, T, P, dil, R, H, cond_len, cond_st, K, HAS_H, HAS_BD, HAS_COND, PREC,
                      HP, BK)
    z = (2.0 * tl.sigmoid(2.0 * f) - 1.0) * tl.sigmoid(q)
    zc = z.to(x_ptr.dtype.element_ty)
    hh = tl.arange(0, HP)
    hmask = hh < H
    for o0 in range(0, R, BO):
        o = o0 + tl.arange(0, BO)
        omask = o < R
        w = tl.load(wr_ptr + o[:, None] * H + hh[None, :], mask=omask[:, None] & hmask[None, :],
                    other=0.0)
        m = omask[:, None] & tmask
        acc = tl.load(x_b + o[:, None] * T + t[None, :], mask=m, other=0.0).to(tl.float32)
        if HAS_BR:
            acc += tl.load(br_ptr + o, mask=omask, other=0.0).to(tl.float32)[:, None]
        acc = _dot(w, zc, acc, PREC)
        tl.store(xo_ptr + b * R * T + o[:, None] * T + t[None, :],
                 acc.to(xo_ptr.dtype.element_ty), mask=m)
    for o0 in range(0, S, BO):
        o = o0 + tl.arange(0, BO)
        omask = o < S
        w = tl.load(ws_ptr + o[:, None] * H + hh[None, :], mask=omask[:, None] & hmask[None, :],
                    other=0.0)
        m = omask[:, None] & tmask
        acc = tl.zeros((BO, BT), tl.float32)
        if HAS_SKIP:
            acc += tl.load(skip_ptr + b * S * T + o[:, None] * T + t[None, :], mask=m,
                           other=0.0).to(tl.float32)
        if HAS_BS:
            acc += tl.load(bs_ptr + o, mask=omask, other=0.0).to(tl.float32)[:, None]
        acc = _dot(w, zc, acc, PREC)
        tl.store(so_ptr + b * S * T + o[:, None] * T + t[None, :],
                 acc.to(so_ptr.dtype.element_ty), mask=m)


@triton.jit
def _proj_bwd(g_b, w_ptr, part, n_out, H, T, t, zc, dz, PREC: tl.constexpr, HP: tl.constexpr,
              BO: tl.constexpr):
    """dz += w^T g over the n_out output rows, and part[o, h] = sum_t g[o, t] z[h, t]."""
    hh = tl.arange(0, HP)
    hmask = hh < H
    for o0 in range(0, n_out, BO):
        o = o0 + tl.arange(0, BO)
        omask = o < n_out
        g = tl.load(g_b + o[:, None] * T + t[None, :], mask=omask[:, None] & (t < T)[None, :],
                    other=0.0)
        wt = tl.load(w_ptr + o[None, :] * H + hh[:, None], mask=hmask[:, None] & omask[None, :],
                     other=0.0)
        dz = _dot(wt, g, dz, PREC)
        dw = _dot(g, tl.trans(zc), tl.zeros((BO, HP), tl.float32), PREC)
        tl.store(part + o[:, None] * H + hh[None, :], dw, mask=omask[:, None] & hmask[None, :])
    return dz


@triton.jit
def _layer_bwd_kernel(
    x_ptr, h_ptr, cond_ptr, wd_ptr, bd_ptr,  # as _layer_fwd_kernel
    wr_ptr,  # w_res (R, H)
    ws_ptr,  # w_skip (S, H)
    gx_ptr,  # (B, R, T) dL/dx_out
    gs_ptr,  # (B, S, T) dL/dskip_out
    da_ptr,  # (B, G, T) dL/da
    part_ptr,  # (programs, (R + S) * H) fp32 partials of dw_res, then dw_skip
    T, P, dil, R, H, S, cond_len, cond_st,
    n_ttiles,
    K: tl.constexpr,
    HAS_H: tl.constexpr, HAS_COND: tl.constexpr, HAS_BD: tl.constexpr,
    PREC: tl.constexpr,
    HP: tl.constexpr, BK: tl.constexpr, BO: tl.constexpr, BT: tl.constexpr,
):
    pid = tl.program_id(0).to(tl.int64)
    b = pid // n_ttiles
    t = (pid % n_ttiles) * BT + tl.arange(0, BT)
    f, q = _gate_tile(x_ptr + b * R * T, h_ptr + b * R * P, cond_ptr + b * 2 * H * cond_len,
                      wd_ptr, bd_ptr, t, T, P, dil, R, H, cond_len, cond_st, K, HAS_H, HAS_BD,
                      HAS_COND, PREC, HP, BK)
    tf = 2.0 * tl.sigmoid(2.0 * f) - 1.0
    sq = tl.sigmoid(q)
    # Columns past T must not enter the dw partials: zero z there.
    z = tl.where((t < T)[None, :], tf * sq, 0.0)
    zc = z.to(x_ptr.dtype.element_ty)
    part = part_ptr + pid * (R + S) * H
    dz = tl.zeros((HP, BT), tl.float32)
    dz = _proj_bwd(gx_ptr + b * R * T, wr_ptr, part, R, H, T, t, zc, dz, PREC, HP, BO)
    dz = _proj_bwd(gs_ptr + b * S * T, ws_ptr, part + R * H, S, H, T, t, zc, dz, PREC, HP, BO)
    hh = tl.arange(0, HP)
    m = (hh < H)[:, None] & (t < T)[None, :]
    da_b = da_ptr + b * 2 * H * T + t[None, :]
    tl.store(da_b + hh[:, None] * T, (dz * sq * (1.0 - tf * tf)).to(da_ptr.dtype.element_ty),
             mask=m)
    tl.store(da_b + (H + hh)[:, None] * T,
             (dz * tf * sq * (1.0 - sq)).to(da_ptr.dtype.element_ty), mask=m)


# ----------------------------------------------------------------------------- launchers


def _check(x, h, cond, w_dil, w_res, w_skip, dilation):
    """Sizes (B, R, T, G, H, S, K, P), after checking every shape the kernels index by."""
    if not isinstance(x, torch.Tensor) or x.dim() != 3 or x.dtype not in DTYPES:
        raise ValueError("x must be a 3-D float32/float16/bfloat16 tensor (B, R, T)")
    B, R, T = x.shape
    dt, dev = x.dtype, x.device
    check_like("x", x, (B, R, T), dt, dev)
    if dilation < 1:
        raise ValueError(f"dilation must be >= 1, got {dilation}")
    if w_dil.dim() != 3 or w_dil.shape[1] != R or w_dil.shape[0] % 2 or not w_dil.shape[0]:
        raise ValueError(f"w_dil must be (G, R={R}, K) with G even, got {tuple(w_dil.shape)}")
    G, _, K = w_dil.shape
    H, P = G // 2, (K - 1) * dilation
    check_like("w_dil", w_dil, (G, R, K), dt, dev)
    check_like("w_res", w_res, (R, H), dt, dev)
    if w_skip.dim() != 2:
        raise ValueError(f"w_skip must be (S, H={H}), got {tuple(w_skip.shape)}")
    S = w_skip.shape[0]
    check_like("w_skip", w_skip, (S, H), dt, dev)
    if h is not None:
        check_like("h", h, (B, R, P), dt, dev)
    if cond is not None and (cond.dim() != 3 or cond.shape[2] not in (1, T)):
        raise ValueError(f"cond must be (B, G, 1) or (B, G, T={T}), got {tuple(cond.shape)}")
    if cond is not None:
        check_like("cond", cond, (B, G, cond.shape[2]), dt, dev)
    return B, R, T, G, H, S, K, P


def _config(x, R, H, T, cond):
    hp = _pow2(H, MIN_DOT, MAX_H)
    bt = _pow2(T, MIN_DOT, 64)
    cond_len = 0 if cond is None else cond.shape[2]
    cond_st = 1 if cond_len == T and T > 1 else 0
    return dict(HP=hp, BK=_pow2(R, MIN_DOT, 32), BO=_pow2(max(R, 1), MIN_DOT, _BO), BT=bt,
                PREC=_prec(x.dtype), num_warps=8 if hp * bt >= 8192 else 4), cond_len, cond_st


def _composed_gate(x, h, cond, w_dil, b_dil, dilation):
    """a (fp32) and z of a gate wider than MAX_H: the conv kernel, then torch."""
    a = torch.empty(x.shape[0], w_dil.shape[0], x.shape[2], dtype=x.dtype, device=x.device)
    a = conv.fwd(x, h, w_dil, b_dil, a, dilation, 1, 0).float()
    if cond is not None:
        a = a + cond.float()
    f, q = a.chunk(2, dim=1)
    return f, q, torch.tanh(f) * torch.sigmoid(q)


def layer_fwd(x, h, cond, skip, w_dil, b_dil, w_res, b_res, w_skip, b_skip, x_out, skip_out,
              dilation: int):
    """(x_out, skip_out) of the fused layer, written into the given tensors."""
    B, R, T, G, H, S, K, P = _check(x, h, cond, w_dil, w_res, w_skip, dilation)
    dt, dev = x.dtype, x.device
    for name, t, n in (("b_dil", b_dil, G), ("b_res", b_res, R), ("b_skip", b_skip, S)):
        if t is not None:
            check_like(name, t, (n,), dt, dev)
    if skip is not None:
        check_like("skip", skip, (B, S, T), dt, dev)
    check_like("x_out", x_out, (B, R, T), dt, dev)
    check_like("skip_out", skip_out, (B, S, T), dt, dev)
    if not B or not T:
        return x_out, skip_out
    if H > MAX_H:
        _, _, z = _composed_gate(x, h, cond, w_dil, b_dil, dilation)
        res = x.float() + torch.einsum("rh,bht->brt", w_res.float(), z)
        sk = torch.einsum("sh,bht->bst", w_skip.float(), z)
        if skip is not None:
            sk = sk + skip.float()
        for t, bias in ((res, b_res), (sk, b_skip)):
            if bias is not None:
                t += bias.float()[:, None]
        return x_out.copy_(res), skip_out.copy_(sk)
    meta, cond_len, cond_st = _config(x, R, H, T, cond)
    n_tt = triton.cdiv(T, meta["BT"])
    with device_guard(x):
        _layer_fwd_kernel[(B * n_tt,)](
            x, h if h is not None and P else x, cond if cond is not None else x,
            skip if skip is not None else x, w_dil, b_dil if b_dil is not None else w_dil,
            w_res, b_res if b_res is not None else w_res, w_skip,
            b_skip if b_skip is not None else w_skip, x_out, skip_out,
            T, P, dilation, R, H, S, cond_len, cond_st, n_tt, K=K,
            HAS_H=h is not None and P > 0, HAS_COND=cond is not None, HAS_SKIP=skip is not None,
            HAS_BD=b_dil is not None, HAS_BR=b_res is not None, HAS_BS=b_skip is not None,
            **meta,
        )
    return x_out, skip_out


def layer_bwd(x, h, cond, w_dil, b_dil, w_res, w_skip, gx, gs, da, dw_res, dw_skip,
              dilation: int):
    """da (B, G, T), dw_res (R, H), dw_skip (S, H) of the fused layer, written (deterministic)."""
    B, R, T, G, H, S, K, P = _check(x, h, cond, w_dil, w_res, w_skip, dilation)
    dt, dev = x.dtype, x.device
    if b_dil is not None:
        check_like("b_dil", b_dil, (G,), dt, dev)
    check_like("gx", gx, (B, R, T), dt, dev)
    check_like("gs", gs, (B, S, T), dt, dev)
    check_like("da", da, (B, G, T), dt, dev)
    check_like("dw_res", dw_res, (R, H), dt, dev)
    check_like("dw_skip", dw_skip, (S, H), dt, dev)
    if not B or not T:
        return da, dw_res.zero_(), dw_skip.zero_()
    if H > MAX_H:
        f, q, z = _composed_gate(x, h, cond, w_dil, b_dil, dilation)
        gxf, gsf = gx.float(), gs.float()
        dz = (torch.einsum("rh,brt->bht", w_res.float(), gxf)
              + torch.einsum("sh,bst->bht", w_skip.float(), gsf))
        tf, sq = torch.tanh(f), torch.sigmoid(q)
        da.copy_(torch.cat([dz * sq * (1 - tf * tf), dz * tf * sq * (1 - sq)], dim=1))
        dw_res.copy_(torch.einsum("brt,bht->rh", gxf, z))
        return da, dw_res, dw_skip.copy_(torch.einsum("bst,bht->sh", gsf, z))
    meta, cond_len, cond_st = _config(x, R, H, T, cond)
    n_tt = triton.cdiv(T, meta["BT"])
    part = torch.empty((B * n_tt, (R + S) * H), dtype=torch.float32, device=dev)
    with device_guard(x):
        _layer_bwd_kernel[(B * n_tt,)](
            x, h if h is not None and P else x, cond if cond is not None else x, w_dil,
            b_dil if b_dil is not None else w_dil, w_res, w_skip, gx, gs, da, part,
            T, P, dilation, R, H, S, cond_len, cond_st, n_tt, K=K,
            HAS_H=h is not None and P > 0, HAS_COND=cond is not None, HAS_BD=b_dil is not None,
            **meta,
        )
    # The per-tile partials, reduced by torch in a fixed order: the same bits every run.
    total = part.sum(0)
    dw_res.copy_(total[: R * H].view(R, H))
    return da, dw_res, dw_skip.copy_(total[R * H:].view(S, H))
