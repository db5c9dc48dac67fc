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

import torch
import triton
import triton.language as tl

from ._attention_tiles import (  # noqa: F401  (tests and other kernels read some through here)
    _DKDV,
    _DQ,
    _FWD,
    _LOG2E,
    DECODE_MAX_N,
    DTYPES,
    LN2,
    LOG2E,
    MAX_HEAD_DIM,
    _check_qkv,
    _config,
    _dot,
    _fit,
    _key_ranges,
    _load_kv,
    _load_tile,
    _pow2,
    _prec,
    _store_routed,
)
from ._launch import check_like, device_guard

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


from ._attention_bwd import (  # noqa: E402, F401  (the backward, re-exported)
    _bwd_pre_kernel,
    _dkdv_kernel,
    _dq_kernel,
    bwd,
)
