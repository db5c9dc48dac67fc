"""Triton double backward of fused attention (op stem `attention`): the gradients of
<gq, dQ> + <gk, dK> + <gv, dV> with respect to q, k, v and dO, where (dQ, dK, dV) is the first
backward. The math is the issue-10 design's (section 1), per (batch, head) slice:

    X = s (gq k^T + q gk^T)   Y = dO gv^T   dP = dO v^T   D = rowsum(dO o)   dS = P (dP - D)
    r = rowsum(P X)   a = rowsum(P Y)   c = rowsum(P X dP)   w = a + c - 2 r D
    W = Y + X (dP - D) - r dP   U = P (W - w)   Z = P (X - r)
    GQ = s (dS gk + U k)   GK = s (dS^T gq + U^T q)   GV = Z^T dO   GdO = P gv + Z v

Three launches, none of which stores an N x M tile: a row-stats sweep (query blocks over key
blocks: D, r, w into a (B*Hh, 3, N) fp32 workspace), a query-parallel sweep (GQ, GdO) and a
key-parallel sweep (GK, GV). Each recomputes P from q, k and lse (exp2, log2(e) folded into the
scale) and the tiles it needs; every output element is written by exactly one program, so the
results are deterministic (no atomics). An absent cotangent removes the products it feeds:
without gq and gk there is no X, so no dP, no D and GV = 0; without gv there is no Y.

Causal masks are bottom-right aligned: query i sees key j iff j <= i + (M - N). Rows that see no
key carry lse = -inf and contribute nothing. fp16 / bf16 / fp32 in, fp32 accumulation (fp32
tiles enter tl.dot in the input dtype, as flash attention's backward does), one rounding at the
store; fp32 dots run in IEEE precision (no TF32).
"""

from __future__ import annotations

import math

import torch
import triton
import triton.language as tl

from ._launch import check_like, device_guard

DTYPES = (torch.float32, torch.float16, torch.bfloat16)
MAX_HEAD_DIM = 256
MIN_DOT = 16  # tl.dot needs every tile dimension >= 16 on the GPU
_LOG2E = 1.4426950408889634


# ----------------------------------------------------------------------------- device helpers


@triton.jit
def _dot_t(a, b, PREC: tl.constexpr):
    """a @ b^T for a (R, D), b (C, D) in the data dtype: (R, C) fp32."""
    return tl.dot(a, tl.trans(b), input_precision=PREC)


@triton.jit
def _rows(ptr, offs, n, D: tl.constexpr, PD: tl.constexpr):
    """The (len(offs), PD) tile of rows offs of a contiguous (n, D) matrix; zero padding."""
    cols = tl.arange(0, PD)
    mask = (offs[:, None] < n) & (cols[None, :] < D)
    return tl.load(ptr + offs[:, None] * D + cols[None, :], mask=mask, other=0.0)


@triton.jit
def _store_rows(ptr, offs, n, val, D: tl.constexpr, PD: tl.constexpr):
    cols = tl.arange(0, PD)
    mask = (offs[:, None] < n) & (cols[None, :] < D)
    tl.store(ptr + offs[:, None] * D + cols[None, :], val.to(ptr.dtype.element_ty), mask=mask)


@triton.jit
def _lse2(lse_ptr, offs_m, N):
    """lse in base 2; +inf for rows without keys (and padding), so their P is exactly 0."""
    lse = tl.load(lse_ptr + offs_m, mask=offs_m < N, other=float("-inf"))
    return tl.where(lse == float("-inf"), float("inf"), lse * 1.4426950408889634)


@triton.jit
def _mm(a, b, T: tl.constexpr, PREC: tl.constexpr):
    """a @ b^T, or its transpose b @ a^T when T (the key kernel's (key, query) tiles)."""
    if T:
        return _dot_t(b, a, PREC)
    return _dot_t(a, b, PREC)


@triton.jit
def _row(vec, T: tl.constexpr):
    """A per-query vector broadcast along the tile's key axis."""
    # One return: the compiler checks every return's type, even under a constexpr branch.
    if T:
        out = vec[None, :]
    else:
        out = vec[:, None]
    return out


@triton.jit
def _probs(q, k, lse2, offs_m, offs_n, N, M, shift, qk2, CAUSAL: tl.constexpr,
           T: tl.constexpr, PREC: tl.constexpr):
    """P (BM, BN), or P^T when T, recomputed from q, k and the saved lse; 0 outside the mask
    and the slice."""
    s2 = _mm(q, k, T, PREC) * qk2
    qi = _row(offs_m, T)
    if T:
        kj = offs_n[:, None]
    else:
        kj = offs_n[None, :]
    keep = (qi < N) & (kj < M)
    if CAUSAL:
        keep = keep & (kj <= qi + shift)
    # where() before exp2 keeps masked logits from overflowing into inf * 0.
    return tl.exp2(tl.where(keep, s2 - _row(lse2, T), float("-inf")))


@triton.jit
def _tile(q, do, gq, lse2, k, v, gk, gv, D, r, w, offs_m, offs_n, N, M, shift, scale, qk2,
          CAUSAL: tl.constexpr, HAS_GQ: tl.constexpr, HAS_GK: tl.constexpr,
          HAS_GV: tl.constexpr, T: tl.constexpr, PREC: tl.constexpr):
    """(P, dS, U, Z) of one (query block, key block) tile, transposed when T (so the key
    kernel's products with q and dO need no transposed fp32 operand); dS and Z are 0 without
    X."""
    p = _probs(q, k, lse2, offs_m, offs_n, N, M, shift, qk2, CAUSAL, T, PREC)
    wt = tl.zeros_like(p)
    ds = tl.zeros_like(p)
    z = tl.zeros_like(p)
    if HAS_GQ or HAS_GK:
        x = tl.zeros_like(p)
        if HAS_GQ:
            x += _mm(gq, k, T, PREC)
        if HAS_GK:
            x += _mm(q, gk, T, PREC)
        x = x * scale
        dp = _mm(do, v, T, PREC)
        t = dp - _row(D, T)
        ds = p * t
        z = p * (x - _row(r, T))
        wt = x * t - _row(r, T) * dp
    if HAS_GV:
        wt += _mm(do, gv, T, PREC)
    u = p * (wt - _row(w, T))
    return p, ds, u, z


@triton.jit
def _causal_hi(start_m, M, shift, CAUSAL: tl.constexpr, BM: tl.constexpr):
    """One past the last key any query of the block [start_m, start_m + BM) sees."""
    if CAUSAL:
        return tl.minimum(M, start_m + BM + shift)
    return M


# ----------------------------------------------------------------------------- kernels


@triton.jit
def _stats_kernel(q_ptr, k_ptr, v_ptr, o_ptr, lse_ptr, do_ptr, gq_ptr, gk_ptr, gv_ptr, st_ptr,
                  N, M, n_blk, scale, qk2,
                  DK: tl.constexpr, DV: tl.constexpr, PDK: tl.constexpr, PDV: tl.constexpr,
                  CAUSAL: tl.constexpr, HAS_GQ: tl.constexpr, HAS_GK: tl.constexpr,
                  HAS_GV: tl.constexpr, PREC: tl.constexpr, BM: tl.constexpr, BN: tl.constexpr):
    """Row stats of one query block: D, r and w = a + c - 2 r D into st (BH, 3, N)."""
    pid = tl.program_id(0)
    bh = (pid // n_blk).to(tl.int64)
    start_m = (pid % n_blk) * BM
    shift = M - N
    offs_m = start_m + tl.arange(0, BM)
    q = _rows(q_ptr + bh * N * DK, offs_m, N, DK, PDK)
    do = _rows(do_ptr + bh * N * DV, offs_m, N, DV, PDV)
    lse2 = _lse2(lse_ptr + bh * N, offs_m, N)
    D = tl.zeros([BM], tl.float32)
    gq = q
    if HAS_GQ or HAS_GK:
        o = _rows(o_ptr + bh * N * DV, offs_m, N, DV, PDV)
        D = tl.sum(do.to(tl.float32) * o.to(tl.float32), 1)
    if HAS_GQ:
        gq = _rows(gq_ptr + bh * N * DK, offs_m, N, DK, PDK)
    r = tl.zeros([BM], tl.float32)
    a = tl.zeros([BM], tl.float32)
    c = tl.zeros([BM], tl.float32)
    hi = _causal_hi(start_m, M, shift, CAUSAL, BM)
    for start_n in range(0, hi, BN):
        offs_n = start_n + tl.arange(0, BN)
        k = _rows(k_ptr + bh * M * DK, offs_n, M, DK, PDK)
        p = _probs(q, k, lse2, offs_m, offs_n, N, M, shift, qk2, CAUSAL, False, PREC)
        if HAS_GQ or HAS_GK:
            v = _rows(v_ptr + bh * M * DV, offs_n, M, DV, PDV)
            x = tl.zeros_like(p)
            if HAS_GQ:
                x += _dot_t(gq, k, PREC)
            if HAS_GK:
                gk = _rows(gk_ptr + bh * M * DK, offs_n, M, DK, PDK)
                x += _dot_t(q, gk, PREC)
            px = p * x
            r += tl.sum(px, 1)
            c += tl.sum(px * _dot_t(do, v, PREC), 1)
        if HAS_GV:
            gv = _rows(gv_ptr + bh * M * DV, offs_n, M, DV, PDV)
            a += tl.sum(p * _dot_t(do, gv, PREC), 1)
    # X carries the scale s; r and c are sums of P X, so they take it once here.
    r = r * scale
    c = c * scale
    w = a + c - 2.0 * r * D
    row = st_ptr + bh * 3 * N + offs_m
    ok = offs_m < N
    tl.store(row, D, mask=ok)
    tl.store(row + N, r, mask=ok)
    tl.store(row + 2 * N, w, mask=ok)


@triton.jit
def _query_kernel(q_ptr, k_ptr, v_ptr, lse_ptr, do_ptr, gq_ptr, gk_ptr, gv_ptr, st_ptr,
                  Gq_ptr, Gdo_ptr, N, M, n_blk, scale, qk2,
                  DK: tl.constexpr, DV: tl.constexpr, PDK: tl.constexpr, PDV: tl.constexpr,
                  CAUSAL: tl.constexpr, HAS_GQ: tl.constexpr, HAS_GK: tl.constexpr,
                  HAS_GV: tl.constexpr, PREC: tl.constexpr, BM: tl.constexpr, BN: tl.constexpr):
    """GQ = s (dS gk + U k) and GdO = P gv + Z v of one query block, over its key blocks."""
    pid = tl.program_id(0)
    bh = (pid // n_blk).to(tl.int64)
    start_m = (pid % n_blk) * BM
    shift = M - N
    offs_m = start_m + tl.arange(0, BM)
    q = _rows(q_ptr + bh * N * DK, offs_m, N, DK, PDK)
    do = _rows(do_ptr + bh * N * DV, offs_m, N, DV, PDV)
    gq = q
    if HAS_GQ:
        gq = _rows(gq_ptr + bh * N * DK, offs_m, N, DK, PDK)
    lse2 = _lse2(lse_ptr + bh * N, offs_m, N)
    row = st_ptr + bh * 3 * N + offs_m
    ok = offs_m < N
    D = tl.load(row, mask=ok, other=0.0)
    r = tl.load(row + N, mask=ok, other=0.0)
    w = tl.load(row + 2 * N, mask=ok, other=0.0)
    acc_q = tl.zeros([BM, PDK], tl.float32)
    acc_o = tl.zeros([BM, PDV], tl.float32)
    hi = _causal_hi(start_m, M, shift, CAUSAL, BM)
    for start_n in range(0, hi, BN):
        offs_n = start_n + tl.arange(0, BN)
        k = _rows(k_ptr + bh * M * DK, offs_n, M, DK, PDK)
        v = _rows(v_ptr + bh * M * DV, offs_n, M, DV, PDV)
        gk = k
        gv = v
        if HAS_GK:
            gk = _rows(gk_ptr + bh * M * DK, offs_n, M, DK, PDK)
        if HAS_GV:
            gv = _rows(gv_ptr + bh * M * DV, offs_n, M, DV, PDV)
        p, ds, u, z = _tile(q, do, gq, lse2, k, v, gk, gv, D, r, w, offs_m, offs_n, N, M, shift,
                            scale, qk2, CAUSAL, HAS_GQ, HAS_GK, HAS_GV, False, PREC)
        acc_q = tl.dot(u.to(k.dtype), k, acc_q, input_precision=PREC)
        if HAS_GK:
            acc_q = tl.dot(ds.to(gk.dtype), gk, acc_q, input_precision=PREC)
        if HAS_GQ or HAS_GK:
            acc_o = tl.dot(z.to(v.dtype), v, acc_o, input_precision=PREC)
        if HAS_GV:
            acc_o = tl.dot(p.to(gv.dtype), gv, acc_o, input_precision=PREC)
    _store_rows(Gq_ptr + bh * N * DK, offs_m, N, acc_q * scale, DK, PDK)
    _store_rows(Gdo_ptr + bh * N * DV, offs_m, N, acc_o, DV, PDV)


@triton.jit
def _key_kernel(q_ptr, k_ptr, v_ptr, lse_ptr, do_ptr, gq_ptr, gk_ptr, gv_ptr, st_ptr,
                Gk_ptr, Gv_ptr, N, M, n_blk, scale, qk2,
                DK: tl.constexpr, DV: tl.constexpr, PDK: tl.constexpr, PDV: tl.constexpr,
                CAUSAL: tl.constexpr, HAS_GQ: tl.constexpr, HAS_GK: tl.constexpr,
                HAS_GV: tl.constexpr, PREC: tl.constexpr, BM: tl.constexpr, BN: tl.constexpr):
    """GK = s (dS^T gq + U^T q) and GV = Z^T dO of one key block, over its query blocks."""
    pid = tl.program_id(0)
    bh = (pid // n_blk).to(tl.int64)
    start_n = (pid % n_blk) * BN
    shift = M - N
    offs_n = start_n + tl.arange(0, BN)
    k = _rows(k_ptr + bh * M * DK, offs_n, M, DK, PDK)
    v = _rows(v_ptr + bh * M * DV, offs_n, M, DV, PDV)
    gk = k
    gv = v
    if HAS_GK:
        gk = _rows(gk_ptr + bh * M * DK, offs_n, M, DK, PDK)
    if HAS_GV:
        gv = _rows(gv_ptr + bh * M * DV, offs_n, M, DV, PDV)
    acc_k = tl.zeros([BN, PDK], tl.float32)
    acc_v = tl.zeros([BN, PDV], tl.float32)
    lo = 0
    if CAUSAL:
        # The first query that sees key start_n is start_n - shift.
        lo = (tl.maximum(start_n - shift, 0) // BM) * BM
    for start_m in range(lo, N, BM):
        offs_m = start_m + tl.arange(0, BM)
        q = _rows(q_ptr + bh * N * DK, offs_m, N, DK, PDK)
        do = _rows(do_ptr + bh * N * DV, offs_m, N, DV, PDV)
        gq = q
        if HAS_GQ:
            gq = _rows(gq_ptr + bh * N * DK, offs_m, N, DK, PDK)
        lse2 = _lse2(lse_ptr + bh * N, offs_m, N)
        row = st_ptr + bh * 3 * N + offs_m
        ok = offs_m < N
        D = tl.load(row, mask=ok, other=0.0)
        r = tl.load(row + N, mask=ok, other=0.0)
        w = tl.load(row + 2 * N, mask=ok, other=0.0)
        p, ds, u, z = _tile(q, do, gq, lse2, k, v, gk, gv, D, r, w, offs_m, offs_n, N, M, shift,
                            scale, qk2, CAUSAL, HAS_GQ, HAS_GK, HAS_GV, True, PREC)
        acc_k = tl.dot(u.to(q.dtype), q, acc_k, input_precision=PREC)
        if HAS_GQ:
            acc_k = tl.dot(ds.to(gq.dtype), gq, acc_k, input_precision=PREC)
        if HAS_GQ or HAS_GK:
            acc_v = tl.dot(z.to(do.dtype), do, acc_v, input_precision=PREC)
    _store_rows(Gk_ptr + bh * M * DK, offs_n, M, acc_k * scale, DK, PDK)
    _store_rows(Gv_ptr + bh * M * DV, offs_n, M, acc_v, DV, PDV)


# ----------------------------------------------------------------------------- launcher


def _blocks(pdk: int, pdv: int, dtype: torch.dtype,
            block: int | None) -> tuple[int, int, int]:
    """(BM, BN, num_warps). A tile holds seven (BM, BN) fp32 products (P, dP, X, W, dS, U, Z)
    besides the q / gq / dO rows and two accumulators; these sizes are the largest without
    register spills in ptxas -v for sm_90 (16-bit; fp32's IEEE dots keep whole operand tiles in
    registers and spill past 64-wide heads at any size)."""
    if block is not None:
        if block < MIN_DOT or block & (block - 1):
            raise ValueError(f"block must be a power of two >= {MIN_DOT}, got {block}")
        return block, block, 4
    widest = max(pdk, pdv)
    if dtype != torch.float32 and widest <= 64:
        return 32, 32, 4
    return MIN_DOT, MIN_DOT, 4 if widest <= 64 or (dtype != torch.float32 and widest <= 128) \
        else 8


def _check(q, k, v, o, lse, dout, gq, gk, gv, Gq, Gk, Gv, Gdout, scale):
    if not isinstance(q, torch.Tensor):
        raise TypeError(f"q must be a torch.Tensor, got {type(q).__name__}")
    if q.dim() != 4:
        raise ValueError(f"q must be 4-D (B, Hh, N, Dk), got shape {tuple(q.shape)}")
    if q.dtype not in DTYPES:
        raise TypeError(f"q must be float32, float16 or bfloat16, got {q.dtype}")
    B, Hh, N, Dk = q.shape
    if not isinstance(k, torch.Tensor) or k.dim() != 4:
        raise ValueError("k must be a 4-D tensor (B, Hh, M, Dk)")
    if not isinstance(v, torch.Tensor) or v.dim() != 4:
        raise ValueError("v must be a 4-D tensor (B, Hh, M, Dv)")
    M, Dv = k.size(2), v.size(3)
    for name, d in (("Dk", Dk), ("Dv", Dv)):
        if not 1 <= d <= MAX_HEAD_DIM:
            raise ValueError(f"{name} must be in [1, {MAX_HEAD_DIM}], got {d}")
    dt, dev = q.dtype, q.device
    shapes = {"q": (B, Hh, N, Dk), "k": (B, Hh, M, Dk), "v": (B, Hh, M, Dv),
              "o": (B, Hh, N, Dv), "dout": (B, Hh, N, Dv), "gq": (B, Hh, N, Dk),
              "gk": (B, Hh, M, Dk), "gv": (B, Hh, M, Dv), "Gq": (B, Hh, N, Dk),
              "Gk": (B, Hh, M, Dk), "Gv": (B, Hh, M, Dv), "Gdout": (B, Hh, N, Dv)}
    given = dict(q=q, k=k, v=v, o=o, dout=dout, gq=gq, gk=gk, gv=gv, Gq=Gq, Gk=Gk, Gv=Gv,
                 Gdout=Gdout)
    for name, t in given.items():
        if t is not None or name not in ("gq", "gk", "gv"):
            check_like(name, t, shapes[name], dt, dev)
    check_like("lse", lse, (B, Hh, N), torch.float32, dev)
    if isinstance(scale, bool) or not isinstance(scale, (int, float)) or not math.isfinite(
            scale):
        raise ValueError(f"scale must be a finite float, got {scale!r}")
    return B, Hh, N, M, Dk, Dv


def bwd2(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, o: torch.Tensor, lse: torch.Tensor,
         dout: torch.Tensor, gq: torch.Tensor | None, gk: torch.Tensor | None,
         gv: torch.Tensor | None, Gq: torch.Tensor, Gk: torch.Tensor, Gv: torch.Tensor,
         Gdout: torch.Tensor, causal: bool, scale: float, *, block: int | None = None) -> None:
    """Gq, Gk, Gv, Gdout <- the gradients of <gq, dQ> + <gk, dK> + <gv, dV> w.r.t. q, k, v, dO.

    q (B, Hh, N, Dk), k (B, Hh, M, Dk), v (B, Hh, M, Dv), o / dout (B, Hh, N, Dv), lse (B, Hh, N)
    float32 (-inf for rows without keys), all contiguous, one dtype; gq / gk / gv: the
    cotangents of dQ / dK / dV or None (zeros). Outputs are written in place. `block` forces
    square power-of-two tiles (tests walk several tiles with it)."""
    B, Hh, N, M, Dk, Dv = _check(q, k, v, o, lse, dout, gq, gk, gv, Gq, Gk, Gv, Gdout, scale)
    BH = B * Hh
    if BH == 0:
        return
    has_gq, has_gk, has_gv = gq is not None, gk is not None, gv is not None
    if N == 0 or M == 0 or not (has_gq or has_gk or has_gv):
        # No query sees a key (or nothing is differentiated): every product is empty.
        for t in (Gq, Gk, Gv, Gdout):
            t.zero_()
        return
    pdk = max(MIN_DOT, triton.next_power_of_2(Dk))
    pdv = max(MIN_DOT, triton.next_power_of_2(Dv))
    bm, bn, warps = _blocks(pdk, pdv, q.dtype, block)
    scale = float(scale)
    meta = dict(DK=Dk, DV=Dv, PDK=pdk, PDV=pdv, CAUSAL=bool(causal), HAS_GQ=has_gq,
                HAS_GK=has_gk, HAS_GV=has_gv,
                PREC="ieee" if q.dtype == torch.float32 else "tf32", BM=bm, BN=bn,
                num_warps=warps)
    stats = torch.empty(BH, 3, N, dtype=torch.float32, device=q.device)
    # Absent cotangents: the kernels never read these pointers (constexpr-pruned loads).
    gq_, gk_, gv_ = (t if t is not None else q for t in (gq, gk, gv))
    qk2 = scale * _LOG2E
    nq, nk = triton.cdiv(N, bm), triton.cdiv(M, bn)
    with device_guard(q):
        _stats_kernel[(BH * nq,)](q, k, v, o, lse, dout, gq_, gk_, gv_, stats, N, M, nq,
                                  scale, qk2, **meta)
        _query_kernel[(BH * nq,)](q, k, v, lse, dout, gq_, gk_, gv_, stats, Gq, Gdout, N, M,
                                  nq, scale, qk2, **meta)
        _key_kernel[(BH * nk,)](q, k, v, lse, dout, gq_, gk_, gv_, stats, Gk, Gv, N, M, nk,
                                scale, qk2, **meta)
