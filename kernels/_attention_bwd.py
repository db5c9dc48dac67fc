"""Triton kernels of fused attention's first-order backward and their launcher (re-exported by
kernels/attention.py, whose docstring describes them): D = rowsum(dO * o), a key-block-parallel
kernel for dK / dV (pooled keys: routed to each window's first maximum) and a query-block-
parallel kernel for dQ; no atomics, deterministic."""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ._attention_tiles import (
    _DKDV,
    _DQ,
    _LOG2E,
    LOG2E,
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

