"""Triton kernels of fused attention (op `attention`): the forward (with the decode split-K path
and 2x2 max-pooled keys/values read in place) and the first-order backward, and their launchers.
Semantics: the design in genfast/ops/attention.py (bottom-right causal: query i sees key j iff
j <= i + M - N; a row that sees no key gets o = 0, lse = -inf and zero gradients).

FlashAttention-2: a program owns BM query rows of one (batch, head) and walks key blocks with
the online softmax in base 2 (log2(e) folded into the scale, so exp is one exp2); the N x M
matrix never exists. Causal work splits into key blocks every row of the tile sees whole (no
mask) and the few blocks on the diagonal band (masked). Decode (few queries, long keys): the
keys are cut into splits, each program writes a partial (o, lse) for its split into fp32
scratch, and a combine kernel merges them by their log-sum-exps (flash-decoding).
Backward: D = rowsum(dO * o) first; a key-block-parallel kernel accumulates dK, dV over the
query blocks that see the keys, a query-block-parallel kernel accumulates dQ (no atomics:
deterministic). Pooled keys (SAGAN): key j of the (Hs//2, Ws//2) grid is the max of its 2x2
window, taken on load; dK/dV go to the window's first maximum in (0,0),(0,1),(1,0),(1,1) order,
every other position gets 0. fp16/bf16/fp32 in, fp32 accumulation; fp32 dots are "ieee".
Device helpers (_dot, _load_tile, _load_kv, _key_ranges) are shared with other attention
kernels (kernels/attention_bwd2.py may import them): keep their signatures.
"""

from __future__ import annotations

import math

import torch
import triton
import triton.language as tl

from ._launch import check_like, device_guard

DTYPES = (torch.float32, torch.float16, torch.bfloat16)
MAX_HEAD_DIM = 256
DECODE_MAX_N = 16  # query counts up to this may take the split-K decode path
_LOG2E = 1.4426950408889634
LOG2E = tl.constexpr(_LOG2E)  # jit code reads only constexpr globals
LN2 = tl.constexpr(0.6931471805599453)


# ----------------------------------------------------------------------------- device helpers


@triton.jit
def _dot(a, b, acc, PREC: tl.constexpr):
    """acc + a @ b, fp32 accumulation; PREC "ieee" keeps fp32 inputs out of tf32."""
    return tl.dot(a, b, acc, input_precision=PREC)


@triton.jit
def _load_tile(base, rows, rmask, cols, cmask, stride):
    """tile[r, c] = base[rows[r] * stride + cols[c]], 0 where a mask is off."""
    ptr = base + rows.to(tl.int64)[:, None] * stride + cols[None, :]
    return tl.load(ptr, mask=rmask[:, None] & cmask[None, :], other=0.0)


@triton.jit
def _pool_row(j, Wp, Ws):
    """Unpooled row of the top-left corner of pooled key j's 2x2 window."""
    a = j // Wp
    return 2 * a * Ws + 2 * (j - a * Wp)


@triton.jit
def _load_kv(base, j, jmask, cols, cmask, stride, Wp, Ws, POOL: tl.constexpr):
    """Key/value rows j; POOL: the 2x2 window max of pooled key j (unpooled grid Ws wide)."""
    if POOL:
        r = _pool_row(j, Wp, Ws)
        top = tl.maximum(_load_tile(base, r, jmask, cols, cmask, stride),
                         _load_tile(base, r + 1, jmask, cols, cmask, stride))
        bot = tl.maximum(_load_tile(base, r + Ws, jmask, cols, cmask, stride),
                         _load_tile(base, r + Ws + 1, jmask, cols, cmask, stride))
        t = tl.maximum(top, bot)
    else:
        t = _load_tile(base, j, jmask, cols, cmask, stride)
    return t


@triton.jit
def _key_ranges(start_m, off, M, CAUSAL: tl.constexpr, BM: tl.constexpr, BN: tl.constexpr):
    """(hi1, hi2) for the query tile at start_m: key blocks in [0, hi1) are whole and seen by
    every row (no mask); [hi1, hi2) needs the key-bound / causal mask; off = M - N."""
    if CAUSAL:
        # Row start_m sees keys <= start_m + off: whole BN blocks below that need no mask.
        hi1 = tl.maximum(start_m + off + 1, 0) // BN * BN
        hi2 = tl.minimum(tl.maximum(start_m + BM + off, 0), M)
    else:
        hi1 = M // BN * BN
        hi2 = M
    return hi1, hi2


@triton.jit
def _store_routed(src_base, dst_base, j, jmask, cols, cmask, s_src, D, Wp, Ws, g):
    """Route pooled-key gradient g (BN, BD) to the first max of each 2x2 window of src; the
    window's other three positions in dst (row stride D) get 0."""
    r = _pool_row(j, Wp, Ws)
    x00 = _load_tile(src_base, r, jmask, cols, cmask, s_src)
    x01 = _load_tile(src_base, r + 1, jmask, cols, cmask, s_src)
    x10 = _load_tile(src_base, r + Ws, jmask, cols, cmask, s_src)
    x11 = _load_tile(src_base, r + Ws + 1, jmask, cols, cmask, s_src)
    mx = tl.maximum(tl.maximum(x00, x01), tl.maximum(x10, x11))
    s00 = x00 == mx
    s01 = (x01 == mx) & ~s00
    s10 = (x10 == mx) & ~(s00 | s01)
    s11 = ~(s00 | s01 | s10)
    g = g.to(dst_base.dtype.element_ty)
    zero = tl.zeros_like(g)
    m = jmask[:, None] & cmask[None, :]
    col = cols[None, :]
    tl.store(dst_base + r.to(tl.int64)[:, None] * D + col, tl.where(s00, g, zero), mask=m)
    tl.store(dst_base + (r + 1).to(tl.int64)[:, None] * D + col, tl.where(s01, g, zero), mask=m)
    tl.store(dst_base + (r + Ws).to(tl.int64)[:, None] * D + col, tl.where(s10, g, zero), mask=m)
    tl.store(dst_base + (r + Ws + 1).to(tl.int64)[:, None] * D + col, tl.where(s11, g, zero),
             mask=m)


# ----------------------------------------------------------------------------- forward


@triton.jit
def _fwd_inner(acc, m_i, l_i, q, k_base, v_base, offs_m, lo, hi, off, M, dk, dkm, dv, dvm,
               sk_n, sv_n, Wp, Ws, qk_scale, MASKED: tl.constexpr, CAUSAL: tl.constexpr,
               POOL: tl.constexpr, PREC: tl.constexpr, BM: tl.constexpr, BN: tl.constexpr):
    for start_n in range(lo, hi, BN):
        offs_n = start_n + tl.arange(0, BN)
        nm = offs_n < M
        k = _load_kv(k_base, offs_n, nm, dk, dkm, sk_n, Wp, Ws, POOL)
        s = _dot(q, tl.trans(k), tl.zeros([BM, BN], dtype=tl.float32), PREC) * qk_scale
        if MASKED:
            keep = nm[None, :]
            if CAUSAL:
                keep = keep & (offs_n[None, :] <= offs_m[:, None] + off)
            s = tl.where(keep, s, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, 1))
        # A row with no key seen yet keeps m = -inf: shift by 0 so exp2 gives 0, not NaN.
        m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)
        p = tl.math.exp2(s - m_safe[:, None])
        alpha = tl.math.exp2(m_i - m_safe)
        l_i = l_i * alpha + tl.sum(p, 1)
        v = _load_kv(v_base, offs_n, nm, dv, dvm, sv_n, Wp, Ws, POOL)
        acc = _dot(p.to(v.dtype), v, acc * alpha[:, None], PREC)
        m_i = m_new
    return acc, m_i, l_i


@triton.jit
def _fwd_kernel(q_ptr, k_ptr, v_ptr, o_ptr, lse_ptr,
                sq_b, sq_h, sq_n, sk_b, sk_h, sk_n, sv_b, sv_h, sv_n,
                Hh, N, M, Dk, Dv, Wp, Ws, qk_scale, keys_per_split, n_split, n_mblocks,
                CAUSAL: tl.constexpr, POOL: tl.constexpr, HAS_LSE: tl.constexpr,
                PREC: tl.constexpr, BM: tl.constexpr, BN: tl.constexpr, BDK: tl.constexpr,
                BDV: tl.constexpr):
    # o / lse: (B*Hh, n_split, N, Dv) / (..., N); n_split > 1 writes the partials to scratch.
    pid = tl.program_id(0).to(tl.int64)
    # The query tiles of one head run back to back (K/V stay in L2), the longest causal first.
    mb = n_mblocks - 1 - (pid % n_mblocks)
    rest = pid // n_mblocks
    split = rest % n_split
    bh = rest // n_split
    b = bh // Hh
    h = bh % Hh
    start_m = (mb * BM).to(tl.int32)
    offs_m = start_m + tl.arange(0, BM)
    mm = offs_m < N
    dk = tl.arange(0, BDK)
    dv = tl.arange(0, BDV)
    dkm = dk < Dk
    dvm = dv < Dv
    q = _load_tile(q_ptr + b * sq_b + h * sq_h, offs_m, mm, dk, dkm, sq_n)
    k_base = k_ptr + b * sk_b + h * sk_h
    v_base = v_ptr + b * sv_b + h * sv_h
    off = M - N
    hi1, hi2 = _key_ranges(start_m, off, M, CAUSAL, BM, BN)
    k_lo = (split * keys_per_split).to(tl.int32)
    k_hi = tl.minimum(k_lo + keys_per_split, M)
    m_i = tl.full([BM], float("-inf"), dtype=tl.float32)
    l_i = tl.zeros([BM], dtype=tl.float32)
    acc = tl.zeros([BM, BDV], dtype=tl.float32)
    acc, m_i, l_i = _fwd_inner(acc, m_i, l_i, q, k_base, v_base, offs_m, k_lo,
                               tl.minimum(k_hi, hi1), off, M, dk, dkm, dv, dvm, sk_n, sv_n, Wp,
                               Ws, qk_scale, False, CAUSAL, POOL, PREC, BM, BN)
    acc, m_i, l_i = _fwd_inner(acc, m_i, l_i, q, k_base, v_base, offs_m, tl.maximum(k_lo, hi1),
                               tl.minimum(k_hi, hi2), off, M, dk, dkm, dv, dvm, sk_n, sv_n, Wp,
                               Ws, qk_scale, True, CAUSAL, POOL, PREC, BM, BN)
    empty = l_i == 0.0
    l_safe = tl.where(empty, 1.0, l_i)
    row = rest * N + offs_m
    o = acc / l_safe[:, None]
    tl.store(o_ptr + row[:, None] * Dv + dv[None, :], o.to(o_ptr.dtype.element_ty),
             mask=mm[:, None] & dvm[None, :])
    if HAS_LSE:
        lse = tl.where(empty, float("-inf"), (m_i + tl.math.log2(l_safe)) * LN2)
        tl.store(lse_ptr + row, lse, mask=mm)


@triton.jit
def _combine_kernel(po_ptr, plse_ptr, o_ptr, lse_ptr, N, Dv, n_split, n_mblocks,
                    HAS_LSE: tl.constexpr, BM: tl.constexpr, BDV: tl.constexpr):
    # Merge the splits' (o_s, lse_s): lse = logsumexp_s lse_s, o = sum_s exp(lse_s - lse) o_s.
    pid = tl.program_id(0).to(tl.int64)
    bh = pid // n_mblocks
    offs_m = (pid % n_mblocks).to(tl.int32) * BM + tl.arange(0, BM)
    mm = offs_m < N
    dv = tl.arange(0, BDV)
    om = mm[:, None] & (dv[None, :] < Dv)
    mx = tl.full([BM], float("-inf"), dtype=tl.float32)
    for s in range(0, n_split):
        ls = tl.load(plse_ptr + (bh * n_split + s) * N + offs_m, mask=mm, other=float("-inf"))
        mx = tl.maximum(mx, ls)
    mx = tl.where(mx == float("-inf"), 0.0, mx)
    den = tl.zeros([BM], dtype=tl.float32)
    acc = tl.zeros([BM, BDV], dtype=tl.float32)
    for s in range(0, n_split):
        row = (bh * n_split + s) * N + offs_m
        w = tl.math.exp2((tl.load(plse_ptr + row, mask=mm, other=float("-inf")) - mx) * LOG2E)
        den += w
        acc += w[:, None] * tl.load(po_ptr + row[:, None] * Dv + dv[None, :], mask=om, other=0.0)
    empty = den == 0.0
    den_safe = tl.where(empty, 1.0, den)
    row = bh * N + offs_m
    tl.store(o_ptr + row[:, None] * Dv + dv[None, :],
             (acc / den_safe[:, None]).to(o_ptr.dtype.element_ty), mask=om)
    if HAS_LSE:
        tl.store(lse_ptr + row, tl.where(empty, float("-inf"), mx + tl.log(den_safe)), mask=mm)


# ----------------------------------------------------------------------------- backward


@triton.jit
def _bwd_pre_kernel(o_ptr, do_ptr, delta_ptr, R, Dv, BR: tl.constexpr, BDV: tl.constexpr):
    rows = tl.program_id(0).to(tl.int64) * BR + tl.arange(0, BR)
    dv = tl.arange(0, BDV)
    rm = rows < R
    o = _load_tile(o_ptr, rows, rm, dv, dv < Dv, Dv).to(tl.float32)
    do = _load_tile(do_ptr, rows, rm, dv, dv < Dv, Dv).to(tl.float32)
    tl.store(delta_ptr + rows, tl.sum(o * do, 1), mask=rm)


@triton.jit
def _dkdv_inner(dk_acc, dv_acc, k, v, q_base, do_base, lse_base, dl_base, offs_n, lo, hi, off,
                N, dk, dkm, dv, dvm, sq_n, Dv, qk_scale, MASKED: tl.constexpr,
                PREC: tl.constexpr, BM: tl.constexpr, BN: tl.constexpr):
    # Transposed tiles (keys x queries): P^T and dS^T feed dV and dK without a transpose.
    for start_m in range(lo, hi, BM):
        offs_m = start_m + tl.arange(0, BM)
        mm = offs_m < N
        q = _load_tile(q_base, offs_m, mm, dk, dkm, sq_n)
        # Rows past N and rows that see no key (lse = -inf) read lse = +inf: P = 0 for them.
        lse = tl.load(lse_base + offs_m, mask=mm, other=float("inf"))
        lse = tl.where(lse == float("-inf"), float("inf"), lse) * LOG2E
        st = _dot(k, tl.trans(q), tl.zeros([BN, BM], dtype=tl.float32), PREC) * qk_scale
        if MASKED:
            st = tl.where(offs_n[:, None] <= offs_m[None, :] + off, st, float("-inf"))
        pt = tl.math.exp2(st - lse[None, :])
        do = _load_tile(do_base, offs_m, mm, dv, dvm, Dv)
        dv_acc = _dot(pt.to(do.dtype), do, dv_acc, PREC)
        delta = tl.load(dl_base + offs_m, mask=mm, other=0.0)
        dpt = _dot(v, tl.trans(do), tl.zeros([BN, BM], dtype=tl.float32), PREC)
        dk_acc = _dot((pt * (dpt - delta[None, :])).to(q.dtype), q, dk_acc, PREC)
    return dk_acc, dv_acc


@triton.jit
def _dkdv_kernel(q_ptr, k_ptr, v_ptr, do_ptr, lse_ptr, dl_ptr, dk_ptr, dv_ptr,
                 sq_b, sq_h, sq_n, sk_b, sk_h, sk_n, sv_b, sv_h, sv_n,
                 Hh, N, M, Sk, Dk, Dv, Wp, Ws, qk_scale, scale, n_nblocks,
                 CAUSAL: tl.constexpr, POOL: tl.constexpr, PREC: tl.constexpr,
                 BM: tl.constexpr, BN: tl.constexpr, BDK: tl.constexpr, BDV: tl.constexpr):
    pid = tl.program_id(0).to(tl.int64)
    bh = pid // n_nblocks
    b = bh // Hh
    h = bh % Hh
    start_n = (pid % n_nblocks).to(tl.int32) * BN
    offs_n = start_n + tl.arange(0, BN)
    nm = offs_n < M
    dk = tl.arange(0, BDK)
    dv = tl.arange(0, BDV)
    dkm = dk < Dk
    dvm = dv < Dv
    k_base = k_ptr + b * sk_b + h * sk_h
    v_base = v_ptr + b * sv_b + h * sv_h
    k = _load_kv(k_base, offs_n, nm, dk, dkm, sk_n, Wp, Ws, POOL)
    v = _load_kv(v_base, offs_n, nm, dv, dvm, sv_n, Wp, Ws, POOL)
    q_base = q_ptr + b * sq_b + h * sq_h
    off = M - N
    if CAUSAL:
        # Rows below lo see none of these keys; rows from mid on see them all (no mask).
        lo = tl.maximum(start_n - off, 0) // BM * BM
        mid = tl.maximum((tl.maximum(start_n + BN - 1 - off, 0) + BM - 1) // BM * BM, lo)
    else:
        lo = 0
        mid = 0
    dk_acc = tl.zeros([BN, BDK], dtype=tl.float32)
    dv_acc = tl.zeros([BN, BDV], dtype=tl.float32)
    dk_acc, dv_acc = _dkdv_inner(dk_acc, dv_acc, k, v, q_base, do_ptr + bh * N * Dv,
                                 lse_ptr + bh * N, dl_ptr + bh * N, offs_n, lo,
                                 tl.minimum(mid, N), off, N, dk, dkm, dv, dvm, sq_n, Dv,
                                 qk_scale, True, PREC, BM, BN)
    dk_acc, dv_acc = _dkdv_inner(dk_acc, dv_acc, k, v, q_base, do_ptr + bh * N * Dv,
                                 lse_ptr + bh * N, dl_ptr + bh * N, offs_n, mid, N, off, N, dk,
                                 dkm, dv, dvm, sq_n, Dv, qk_scale, False, PREC, BM, BN)
    dk_acc = dk_acc * scale
    if POOL:
        _store_routed(k_base, dk_ptr + bh * Sk * Dk, offs_n, nm, dk, dkm, sk_n, Dk, Wp, Ws,
                      dk_acc)
        _store_routed(v_base, dv_ptr + bh * Sk * Dv, offs_n, nm, dv, dvm, sv_n, Dv, Wp, Ws,
                      dv_acc)
    else:
        rows = offs_n.to(tl.int64)[:, None]
        tl.store(dk_ptr + bh * M * Dk + rows * Dk + dk[None, :],
                 dk_acc.to(dk_ptr.dtype.element_ty), mask=nm[:, None] & dkm[None, :])
        tl.store(dv_ptr + bh * M * Dv + rows * Dv + dv[None, :],
                 dv_acc.to(dv_ptr.dtype.element_ty), mask=nm[:, None] & dvm[None, :])


@triton.jit
def _dq_inner(dq, q, do, lse, delta, k_base, v_base, offs_m, lo, hi, off, M, dk, dkm, dv, dvm,
              sk_n, sv_n, Wp, Ws, qk_scale, MASKED: tl.constexpr, CAUSAL: tl.constexpr,
              POOL: tl.constexpr, PREC: tl.constexpr, BM: tl.constexpr, BN: tl.constexpr):
    for start_n in range(lo, hi, BN):
        offs_n = start_n + tl.arange(0, BN)
        nm = offs_n < M
        k = _load_kv(k_base, offs_n, nm, dk, dkm, sk_n, Wp, Ws, POOL)
        v = _load_kv(v_base, offs_n, nm, dv, dvm, sv_n, Wp, Ws, POOL)
        s = _dot(q, tl.trans(k), tl.zeros([BM, BN], dtype=tl.float32), PREC) * qk_scale
        if MASKED:
            keep = nm[None, :]
            if CAUSAL:
                keep = keep & (offs_n[None, :] <= offs_m[:, None] + off)
            s = tl.where(keep, s, float("-inf"))
        p = tl.math.exp2(s - lse[:, None])
        dp = _dot(do, tl.trans(v), tl.zeros([BM, BN], dtype=tl.float32), PREC)
        dq = _dot((p * (dp - delta[:, None])).to(k.dtype), k, dq, PREC)
    return dq


@triton.jit
def _dq_kernel(q_ptr, k_ptr, v_ptr, do_ptr, lse_ptr, dl_ptr, dq_ptr,
               sq_b, sq_h, sq_n, sk_b, sk_h, sk_n, sv_b, sv_h, sv_n,
               Hh, N, M, Dk, Dv, Wp, Ws, qk_scale, scale, n_mblocks,
               CAUSAL: tl.constexpr, POOL: tl.constexpr, PREC: tl.constexpr,
               BM: tl.constexpr, BN: tl.constexpr, BDK: tl.constexpr, BDV: tl.constexpr):
    pid = tl.program_id(0).to(tl.int64)
    bh = pid // n_mblocks
    b = bh // Hh
    h = bh % Hh
    start_m = (n_mblocks - 1 - pid % n_mblocks).to(tl.int32) * BM
    offs_m = start_m + tl.arange(0, BM)
    mm = offs_m < N
    dk = tl.arange(0, BDK)
    dv = tl.arange(0, BDV)
    dkm = dk < Dk
    dvm = dv < Dv
    q = _load_tile(q_ptr + b * sq_b + h * sq_h, offs_m, mm, dk, dkm, sq_n)
    do = _load_tile(do_ptr + bh * N * Dv, offs_m, mm, dv, dvm, Dv)
    lse = tl.load(lse_ptr + bh * N + offs_m, mask=mm, other=float("inf"))
    lse = tl.where(lse == float("-inf"), float("inf"), lse) * LOG2E
    delta = tl.load(dl_ptr + bh * N + offs_m, mask=mm, other=0.0)
    k_base = k_ptr + b * sk_b + h * sk_h
    v_base = v_ptr + b * sv_b + h * sv_h
    off = M - N
    hi1, hi2 = _key_ranges(start_m, off, M, CAUSAL, BM, BN)
    dq = tl.zeros([BM, BDK], dtype=tl.float32)
    dq = _dq_inner(dq, q, do, lse, delta, k_base, v_base, offs_m, 0, hi1, off, M, dk, dkm, dv,
                   dvm, sk_n, sv_n, Wp, Ws, qk_scale, False, CAUSAL, POOL, PREC, BM, BN)
    dq = _dq_inner(dq, q, do, lse, delta, k_base, v_base, offs_m, hi1, hi2, off, M, dk, dkm, dv,
                   dvm, sk_n, sv_n, Wp, Ws, qk_scale, True, CAUSAL, POOL, PREC, BM, BN)
    tl.store(dq_ptr + (bh * N + offs_m)[:, None] * Dk + dk[None, :],
             (dq * scale).to(dq_ptr.dtype.element_ty), mask=mm[:, None] & dkm[None, :])


# ----------------------------------------------------------------------------- launchers


def _prec(dtype: torch.dtype) -> str:
    return "ieee" if dtype == torch.float32 else "tf32"


def _pow2(n: int, lo: int = 16) -> int:
    return max(lo, triton.next_power_of_2(max(n, 1)))


def _check_qkv(q, k, v, pool_hw, causal, scale):
    """Sizes (B, Hh, N, M, Sk, Dk, Dv, Wp, Ws) and the float scale, after checking what the
    kernels rely on."""
    for name, t in (("q", q), ("k", k), ("v", v)):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
        if t.dim() != 4:
            raise ValueError(f"{name} must be 4-D (B, Hh, rows, D), got shape {tuple(t.shape)}")
        if t.dtype not in DTYPES or t.dtype != q.dtype or t.device != q.device:
            raise TypeError(f"{name} must be float32, float16 or bfloat16 like q ({q.dtype} on "
                            f"{q.device}), got {t.dtype} on {t.device}")
        if t.size(3) > 1 and t.stride(3) != 1:
            raise ValueError(f"{name} must have a unit last stride, got {tuple(t.stride())}")
        if min(t.stride()) < 0 or max(t.shape) > 2**31 - 1:
            raise ValueError(f"{name} needs strides >= 0 and sizes < 2**31")
    B, Hh, N, Dk = q.shape
    Sk, Dv = k.size(2), v.size(3)
    if tuple(k.shape) != (B, Hh, Sk, Dk) or tuple(v.shape[:3]) != (B, Hh, Sk):
        raise ValueError(f"k must be (B, Hh, Sk, Dk) and v (B, Hh, Sk, Dv) for q of shape "
                         f"{tuple(q.shape)}, got {tuple(k.shape)} and {tuple(v.shape)}")
    for name, d in (("Dk", Dk), ("Dv", Dv)):
        if not 1 <= d <= MAX_HEAD_DIM:
            raise ValueError(f"head dim {name} must be in [1, {MAX_HEAD_DIM}], got {d}")
    if pool_hw is None:
        M, Wp, Ws = Sk, 1, 1
    else:
        if (len(pool_hw) != 2 or any(isinstance(x, bool) or not isinstance(x, int) or x < 0
                                     for x in pool_hw)):
            raise ValueError(f"pool_hw must be None or two ints >= 0, got {pool_hw!r}")
        Hs, Ws = pool_hw
        if Hs * Ws != Sk:
            raise ValueError(f"pool_hw {tuple(pool_hw)} needs {Hs * Ws} key rows, k has {Sk}")
        M, Wp = (Hs // 2) * (Ws // 2), max(Ws // 2, 1)
    if not isinstance(causal, bool):
        raise TypeError(f"causal must be a bool, got {type(causal).__name__}")
    scale = 1.0 / math.sqrt(Dk) if scale is None else float(scale)
    if not math.isfinite(scale):
        raise ValueError(f"scale must be finite, got {scale}")
    return B, Hh, N, M, Sk, Dk, Dv, Wp, Ws, scale


def _check_block(block):
    if block is not None and (len(block) != 2 or any(b < 16 or b & (b - 1) for b in block)):
        raise ValueError(f"block must be two powers of two >= 16, got {block!r}")
    return block


# (BM, BN, warps, stages) by head-dim bound, 16-bit / fp32 (the fp32 "ieee" dots are FMA
# loops whose operands sit in registers: smaller tiles). Each was compiled for sm_90 and its
# ptxas report read: no register spills. _fit then trims them to the device's shared memory.
_FWD = {True: ((64, (128, 64, 4, 3)), (128, (128, 64, 8, 3)), (256, (64, 32, 8, 2))),
        False: ((32, (64, 32, 4, 2)), (64, (64, 32, 8, 2)), (256, (32, 16, 8, 2)))}
_DKDV = {True: ((64, (32, 128, 8, 3)), (128, (32, 64, 8, 2)), (256, (32, 32, 8, 2))),
         False: ((64, (16, 64, 8, 2)), (128, (16, 32, 8, 2)), (256, (16, 16, 8, 1)))}
_DQ = {True: ((64, (128, 32, 4, 3)), (128, (64, 32, 8, 2)), (256, (32, 32, 8, 2))),
       False: ((64, (64, 32, 8, 2)), (128, (32, 16, 8, 2)), (256, (16, 16, 8, 1)))}


def _config(table, q: torch.Tensor, bd: int, block) -> list[int]:
    """[BM, BN, warps, stages] for head dim bd (the padded max of Dk, Dv); `block` forces the
    tiles. The interpreter takes 16 x 16 tiles: small test shapes still walk several."""
    if not q.is_cuda:
        cfg = [16, 16, 4, 1]
    else:
        cfg = list(next(c for bound, c in table[q.dtype != torch.float32] if bd <= bound))
    if _check_block(block) is not None:
        cfg[:2] = block
    return cfg


def _fit(q: torch.Tensor, cfg: list[int], walk: int, row: int, fixed: int,
         copies: int = 1) -> list[int]:
    """cfg with the pipeline's shared memory within the device's: stages x the walked tile
    cfg[walk] x `row` bytes x `copies` (pooled K/V stream four raw tiles) plus `fixed` bytes
    loaded once; one stage has no async copies, only the tile itself. Fewer stages down to 2,
    then narrower walked tiles down to 16, then 1 stage."""
    if not q.is_cuda:
        return cfg
    props = torch.cuda.get_device_properties(q.device)
    limit = getattr(props, "shared_memory_per_block_optin", 101376) - 2048  # slack: scratch
    need = (lambda: (cfg[3] * copies if cfg[3] > 1 else 1) * cfg[walk] * row + fixed)
    while cfg[3] > 2 and need() > limit:
        cfg[3] -= 1
    while cfg[walk] > 16 and need() > limit:
        cfg[walk] //= 2
    if need() > limit:
        cfg[3] = 1
    return cfg


def _decode_splits(q: torch.Tensor, programs: int, M: int, BN: int) -> int:
    """Key splits that bring a few-query launch to about two programs per SM, each split
    keeping >= 4 key blocks so the combine pass stays small next to it."""
    # The interpreter has no SMs: 16 keeps the decode path in use there as on a GPU.
    target = 2 * torch.cuda.get_device_properties(q.device).multi_processor_count \
        if q.is_cuda else 16
    return max(1, min(triton.cdiv(target, programs), M // (4 * BN)))


def fwd(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, o: torch.Tensor,
        lse: torch.Tensor | None, causal: bool, scale: float | None,
        pool_hw: tuple[int, int] | None, *, block: tuple[int, int] | None = None,
        splits: int | None = None) -> torch.Tensor:
    """o (B, Hh, N, Dv) = softmax(scale q k^T [causal, bottom-right]) v in place, lse (B, Hh, N)
    float32 (natural log; -inf for a row without keys) unless None. pool_hw = (Hs, Ws): k/v rows
    are that grid, max-pooled 2x2 on load. `block` (BM, BN) and `splits` (key splits; > 1 takes
    the decode path at any N) force the tiling (tests); returns o."""
    B, Hh, N, M, Sk, Dk, Dv, Wp, Ws, scale = _check_qkv(q, k, v, pool_hw, causal, scale)
    check_like("o", o, (B, Hh, N, Dv), q.dtype, q.device)
    if lse is not None:
        check_like("lse", lse, (B, Hh, N), torch.float32, q.device)
    if not o.numel():
        return o
    BDK, BDV = _pow2(Dk), _pow2(Dv)
    es, pool = q.element_size(), pool_hw is not None
    cfg = _config(_FWD, q, max(BDK, BDV), block)
    if block is None:
        cfg[0] = min(cfg[0], _pow2(N))  # a few queries (decode): a 16-row tile
        if pool:  # four raw K/V tiles per key tile: smaller tiles keep sm_80 from spilling
            cfg[:2] = min(cfg[0], 64), min(cfg[1], 32)
            cfg[3] = 1 if q.dtype == torch.float32 else cfg[3]  # fp32: no spills at 1 stage
    BM, BN, warps, stages = _fit(q, cfg, 1, (BDK + BDV) * es, cfg[0] * BDK * es, 4 if pool else 1)
    n_mb = triton.cdiv(N, BM)
    if splits is not None:
        if isinstance(splits, bool) or not isinstance(splits, int) or splits < 1:
            raise ValueError(f"splits must be an int >= 1, got {splits!r}")
        n_split = splits
    elif N <= DECODE_MAX_N:
        n_split = _decode_splits(q, B * Hh * n_mb, M, BN)
    else:
        n_split = 1
    per_split = triton.cdiv(triton.cdiv(max(M, 1), n_split), BN) * BN
    n_split = max(1, triton.cdiv(M, per_split))
    out, out_lse = o, lse
    if n_split > 1:
        out = torch.empty((B * Hh, n_split, N, Dv), dtype=torch.float32, device=q.device)
        out_lse = torch.empty((B * Hh, n_split, N), dtype=torch.float32, device=q.device)
    with device_guard(q):
        _fwd_kernel[(B * Hh * n_split * n_mb,)](
            q, k, v, out, out_lse if out_lse is not None else out, *q.stride()[:3],
            *k.stride()[:3], *v.stride()[:3], Hh, N, M, Dk, Dv, Wp, Ws, scale * _LOG2E,
            per_split, n_split, n_mb, CAUSAL=causal, POOL=pool,
            HAS_LSE=out_lse is not None, PREC=_prec(q.dtype), BM=BM, BN=BN, BDK=BDK, BDV=BDV,
            num_warps=warps, num_stages=stages)
        if n_split > 1:
            _combine_kernel[(B * Hh * n_mb,)](
                out, out_lse, o, lse if lse is not None else o, N, Dv, n_split, n_mb,
                HAS_LSE=lse is not None, BM=BM, BDV=BDV, num_warps=4)
    return o


def bwd(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, o: torch.Tensor, lse: torch.Tensor,
        dout: torch.Tensor, dq: torch.Tensor, dk: torch.Tensor, dv: torch.Tensor, causal: bool,
        scale: float | None, pool_hw: tuple[int, int] | None, *,
        block: tuple[int, int] | None = None) -> None:
    """dq, dk, dv (in place) of <o, dout> for fwd's o and lse. dk / dv have k / v's unpooled
    shape; with pool_hw each pooled key's gradient goes to its window's first maximum and
    every other position is 0. `block` (BM, BN) forces both kernels' tiles (tests)."""
    B, Hh, N, M, Sk, Dk, Dv, Wp, Ws, scale = _check_qkv(q, k, v, pool_hw, causal, scale)
    dt, dev = q.dtype, q.device
    check_like("o", o, (B, Hh, N, Dv), dt, dev)
    check_like("lse", lse, (B, Hh, N), torch.float32, dev)
    check_like("dout", dout, (B, Hh, N, Dv), dt, dev)
    check_like("dq", dq, (B, Hh, N, Dk), dt, dev)
    check_like("dk", dk, (B, Hh, Sk, Dk), dt, dev)
    check_like("dv", dv, (B, Hh, Sk, Dv), dt, dev)
    if pool_hw is not None and (pool_hw[0] % 2 or pool_hw[1] % 2):
        dk.zero_()  # rows and columns that max_pool2d drops get no gradient
        dv.zero_()
    if not B * Hh:
        return
    BDK, BDV = _pow2(Dk), _pow2(Dv)
    es, pool, bd = q.element_size(), pool_hw is not None, max(BDK, BDV)
    kv_row = (BDK + BDV) * es
    c1 = _config(_DKDV, q, bd, block)
    bm1, bn1, w1, s1 = _fit(q, c1, 0, kv_row + 8, c1[1] * kv_row)
    c2 = _config(_DQ, q, bd, block)
    if pool and block is None:
        c2[0], c2[3] = min(c2[0], 64), 1 if dt == torch.float32 else c2[3]
    bm2, bn2, w2, s2 = _fit(q, c2, 1, kv_row, c2[0] * kv_row, 4 if pool else 1)
    common = dict(CAUSAL=causal, POOL=pool, PREC=_prec(dt), BDK=BDK, BDV=BDV)
    strides = (*q.stride()[:3], *k.stride()[:3], *v.stride()[:3])
    with device_guard(q):
        delta = torch.empty((B * Hh * N,), dtype=torch.float32, device=dev)
        if N:
            br = min(64, max(16, 4096 // BDV))  # o and dout tiles of <= 4096 elements: no spills
            _bwd_pre_kernel[(triton.cdiv(B * Hh * N, br),)](o, dout, delta, B * Hh * N, Dv,
                                                            BR=br, BDV=BDV)
            n_mb = triton.cdiv(N, bm2)
            _dq_kernel[(B * Hh * n_mb,)](
                q, k, v, dout, lse, delta, dq, *strides, Hh, N, M, Dk, Dv, Wp, Ws,
                scale * _LOG2E, scale, n_mb, BM=bm2, BN=bn2, num_warps=w2, num_stages=s2,
                **common)
        if M:
            n_nb = triton.cdiv(M, bn1)
            _dkdv_kernel[(B * Hh * n_nb,)](
                q, k, v, dout, lse, delta, dk, dv, *strides, Hh, N, M, Sk, Dk, Dv, Wp, Ws,
                scale * _LOG2E, scale, n_nb, BM=bm1, BN=bn1, num_warps=w1, num_stages=s1,
                **common)
