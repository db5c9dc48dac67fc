"""Triton native sampling loop of a GPT (pre-LN decoder, KV cache): every step of every stream in
one launch.

The contract (network, packed layout, meta [L, V, C, Hh, T], the context / cache refill rule with
`keep`, the noise rows p * B + b) is the module docstring of genfast/ops/attention_generate.py.
In short, per drawn token p = start .. N-1: the cache is
(re)filled or extended by one position, each fed token runs through the L blocks at its cache
position (LN, qkv, causal attention over the cache, proj, LN, fc, exact GELU, proj2), and the
last one's final LayerNorm + head gives the logits of the `sample` family's draw (kernels/
sample.py's draw_tile, shared, not copied; greedy: the first argmax).

A program owns SB streams (SB = 1 below DOT_FROM streams, else 16) and runs every step, every fed
position and every layer; the cache length is the same for every stream (it depends on p, start,
keep and T only), so the control flow is uniform. Vectors live in the float32 scratch row of each
stream: x (C) at 0, the LayerNorm output a (C) at C, q (C) at 2C, the heads' output y (C) at 5C,
the MLP hidden (4C) at 6C, the logits (V) at 10C (the last T slots are unused: the attention's
softmax is online). k and v go straight to the float32 caches. Each phase writes with one
thread mapping and the next reads with another, so tl.debug_barrier() separates the phases.
GEMVs walk the output rows in JB blocks and the input in KB-column chunks (at SB = 1 a tl.sum of
a (JB, KB) weight tile times the vector; from 16 streams a tl.dot (SB, KB) x (KB, JB), so a
weight tile read from L2 serves 16 streams). Attention and the draw share no weights: they go
stream by stream, so their tiles do not grow with SB; attention takes every head at once, TB
cached keys at a time, with a running max and sum per head (the safe softmax, as flash
attention does), and the draw keeps the (1, VP) logits row in registers. A refill feeds its
positions one by one (the contract allows it; the rounding differs from a batched prefill) and
skips the last layer's attention output and MLP for every position but the last one, whose x
alone feeds the head.

Limits: below DOT_FROM streams each program (one stream) reads the whole model every fed position
(L2 resident at char-GPT sizes, ~10M parameters): a single SM streams it at its L2 bandwidth,
which bounds this backend at batch 1 (a step split over many CTAs would lift it). V <=
MAX_VOCAB (the draw keeps the padded row in registers); head dim D <= MAX_HEAD_DIM. float16 /
bfloat16 weights are read and widened, all math and the caches are float32. float64 weights are
refused (the shared draw is float32): the cpu and reference backends run float64.
"""

from __future__ import annotations

import math

import torch
import triton
import triton.language as tl

from ._launch import check_like, check_positive, check_seed, device_guard
from ._philox import seed_key
from .causal_conv import DTYPES, _pow2
from .gumbel import first_argmax_step
from .sample import draw_tile, mass_scale

META_LEN = 5  # meta = [L, V, C, Hh, T]
MAX_VOCAB = 1024  # widest padded vocabulary a program keeps in registers for the draw
MAX_HEAD_DIM = 256  # a head's q, k, v rows are one register tile
DOT_FROM = 64  # batches from this size take 16 streams per program and tl.dot GEMMs
DOT_STREAMS = 16
EPS = tl.constexpr(1e-5)  # LayerNorm epsilon (a jit function reads only constexpr globals)
_INT32_MAX = 2**31 - 1


@triton.jit
def _gemv(w_ptr, b_ptr, ld, j, jm, v_ptr, K, live, SB: tl.constexpr, KB: tl.constexpr,
          DOT: tl.constexpr, BIAS: tl.constexpr):
    """(SB, JB) float32: b[j] (if BIAS) + v (SB, K) @ W[j, :K]^T, W row-major with leading
    dimension ld, v float32 rows at v_ptr (SB, 1) pointers, in KB-column chunks."""
    acc = tl.zeros((SB, j.shape[0]), tl.float32)
    if BIAS:
        acc += tl.load(b_ptr + j, mask=jm, other=0.0).to(tl.float32)[None, :]
    kk0 = tl.arange(0, KB)
    for k0 in range(0, K, KB):
        kk = k0 + kk0
        km = kk < K
        v = tl.load(v_ptr + kk[None, :], mask=live & km[None, :], other=0.0)
        if DOT:
            w = tl.load(w_ptr + j[None, :] * ld + kk[:, None], mask=km[:, None] & jm[None, :],
                        other=0.0).to(tl.float32)
            acc = tl.dot(v, w, acc, input_precision="ieee")
        else:
            w = tl.load(w_ptr + j[:, None] * ld + kk[None, :], mask=jm[:, None] & km[None, :],
                        other=0.0).to(tl.float32)
            acc += tl.sum(v[:, None, :] * w[None, :, :], 2)
    return acc


@triton.jit
def _layernorm(x_ptr, out_ptr, g_ptr, C, live, SB: tl.constexpr, KB: tl.constexpr):
    """out = (x - mean) / sqrt(var + eps) * g + b (biased variance, two passes over x; b follows
    g in the packed weights), rows at x_ptr / out_ptr (SB, 1) pointers."""
    kk0 = tl.arange(0, KB)
    acc = tl.zeros((SB, KB), tl.float32)
    for k0 in range(0, C, KB):
        kk = k0 + kk0
        acc += tl.load(x_ptr + kk[None, :], mask=live & (kk < C)[None, :], other=0.0)
    mean = tl.sum(acc, 1, keep_dims=True) / C
    acc = tl.zeros((SB, KB), tl.float32)
    for k0 in range(0, C, KB):
        kk = k0 + kk0
        m = live & (kk < C)[None, :]
        d = tl.where(m, tl.load(x_ptr + kk[None, :], mask=m, other=0.0) - mean, 0.0)
        acc += d * d
    rstd = 1.0 / tl.sqrt_rn(tl.sum(acc, 1, keep_dims=True) / C + EPS)
    for k0 in range(0, C, KB):
        kk = k0 + kk0
        km = kk < C
        m = live & km[None, :]
        g = tl.load(g_ptr + kk, mask=km, other=0.0).to(tl.float32)
        b = tl.load(g_ptr + C + kk, mask=km, other=0.0).to(tl.float32)
        x = tl.load(x_ptr + kk[None, :], mask=m, other=0.0)
        tl.store(out_ptr + kk[None, :], (x - mean) * rstd * g[None, :] + b[None, :], mask=m)


@triton.jit
def _attend(q_ptr, y_ptr, kc, vc, n_ctx, T, D, Hh, sm_scale, TB: tl.constexpr,
            HP: tl.constexpr, DP: tl.constexpr):
    """One stream: y_h = softmax_j(q_h . k_j * sm_scale, j < n_ctx) . v_j for all heads h at
    once; kc, vc point to the stream's (Hh, T, D) cache of this layer. Online softmax over
    blocks of TB keys, tiles (TB, HP, DP)."""
    hh = tl.arange(0, HP)
    dd = tl.arange(0, DP)
    col = hh[:, None] * D + dd[None, :]  # (HP, DP): column h D + d of q and y
    hdm = (hh < Hh)[:, None] & (dd < D)[None, :]
    q = tl.load(q_ptr + col, mask=hdm, other=0.0) * sm_scale
    m_i = tl.full((HP,), float("-inf"), tl.float32)
    l_i = tl.zeros((HP,), tl.float32)
    acc = tl.zeros((HP, DP), tl.float32)
    tt = tl.arange(0, TB)
    for j0 in range(0, n_ctx, TB):
        j = j0 + tt
        jmask = j < n_ctx
        off = (hh[None, :, None] * T + j[:, None, None]) * D + dd[None, None, :]  # (TB, HP, DP)
        m3 = jmask[:, None, None] & hdm[None, :, :]
        k = tl.load(kc + off, mask=m3, other=0.0)
        s = tl.where(jmask[:, None], tl.sum(q[None, :, :] * k, 2), float("-inf"))  # (TB, HP)
        # Key 0 is in the first block, so m_new is finite from the first block on.
        m_new = tl.maximum(m_i, tl.max(s, 0))
        alpha = tl.exp(m_i - m_new)
        pj = tl.exp(s - m_new[None, :])
        v = tl.load(vc + off, mask=m3, other=0.0)
        acc = acc * alpha[:, None] + tl.sum(pj[:, :, None] * v, 0)
        l_i = l_i * alpha + tl.sum(pj, 0)
        m_i = m_new
    tl.store(y_ptr + col, acc / l_i[:, None], mask=hdm)


@triton.jit
def _generate_kernel(
    w_ptr,  # packed weights (the contract's layout)
    tok_ptr,  # (B, N) int64 tokens, read at p < start, written at p >= start
    kc_ptr, vc_ptr,  # (L, B, Hh, T, D) float32 caches
    s_ptr,  # (B, s_stride) float32 scratch (layout in the module docstring)
    seed_ptr,  # int64[1] seed
    Bsz, N, L, V, C, Hh, D, T, start, keep, s_stride, sm_scale,
    inv_temp, top_k, top_p, scale,  # the sampler's parameters (kernels/sample.py)
    GREEDY: tl.constexpr, TOP_K: tl.constexpr, TOP_P: tl.constexpr,
    SB: tl.constexpr,  # streams per program
    JB: tl.constexpr,  # output rows per GEMV block
    KB: tl.constexpr,  # input columns per GEMV chunk, elements per vector chunk
    TB: tl.constexpr,  # cached keys per attention block
    HP: tl.constexpr,  # padded head count
    DP: tl.constexpr,  # padded head dim
    VP: tl.constexpr,  # padded vocabulary
    DOT: tl.constexpr,  # SB >= 16: the GEMV chunks are tl.dot
):
    bs = tl.program_id(0) * SB + tl.arange(0, SB)
    smask = bs < Bsz
    live = smask[:, None]
    bcol = bs[:, None]
    row = s_ptr + bcol * s_stride
    x_s = row
    a_s = row + C
    q_s = row + 2 * C
    y_s = row + 5 * C
    h_s = row + 6 * C
    lg_s = row + 10 * C
    k0, k1 = seed_key(seed_ptr)
    jj = tl.arange(0, JB)
    kk0 = tl.arange(0, KB)
    wpe = w_ptr + V * C
    blocks = wpe + T * C
    layer_len = 12 * C * C + 13 * C
    lnf = blocks + L * layer_len
    cache_row = bcol * (Hh * T * D)  # stream b's (Hh, T, D) block within a layer
    cache_layer = Bsz * Hh * T * D
    clen = 0  # cache length, the same for every stream
    for p in range(start, N):
        # The contract's context rule: first draw, refill of a full cache, or one new position.
        c0 = tl.where(p == start, tl.maximum(p - T, 0), tl.where(clen == T, p - keep, p - 1))
        clen = tl.where((p == start) | (clen == T), 0, clen)
        for t in range(c0, p):
            pos = clen + t - c0
            tok = tl.load(tok_ptr + bs * N + t, mask=smask, other=0)
            # Python checks given tokens; a clamp keeps a bad one from reading out of bounds.
            tok = tl.minimum(tl.maximum(tok, 0), V - 1)[:, None]
            for e0 in range(0, C, KB):
                kk = e0 + kk0
                m = live & (kk < C)[None, :]
                x = (tl.load(w_ptr + tok * C + kk[None, :], mask=m, other=0.0).to(tl.float32)
                     + tl.load(wpe + pos * C + kk[None, :], mask=m, other=0.0).to(tl.float32))
                tl.store(x_s + kk[None, :], x, mask=m)
            tl.debug_barrier()
            for layer in range(L):
                lw = blocks + layer * layer_len
                w_attn = lw + 2 * C
                w_proj = w_attn + 3 * C * C + 3 * C
                ln2 = w_proj + C * C + C
                w_fc = ln2 + 2 * C
                w_proj2 = w_fc + 4 * C * C + 4 * C
                kc = kc_ptr + layer * cache_layer + cache_row
                vc = vc_ptr + layer * cache_layer + cache_row
                _layernorm(x_s, a_s, lw, C, live, SB, KB)
                tl.debug_barrier()
                for j0 in range(0, 3 * C, JB):
                    j = j0 + jj
                    jm = j < 3 * C
                    acc = _gemv(w_attn, w_attn + 3 * C * C, C, j, jm, a_s, C, live, SB, KB,
                                DOT, True)
                    jq = j % C  # head h, dim d of k and v: column h D + d
                    coff = ((jq // D) * T + pos) * D + jq % D
                    tl.store(q_s + j[None, :], acc, mask=live & (j < C)[None, :])
                    tl.store(kc + coff[None, :], acc, mask=live & ((j >= C) & (j < 2 * C))[None, :])
                    tl.store(vc + coff[None, :], acc, mask=live & ((j >= 2 * C) & jm)[None, :])
                tl.debug_barrier()
                # The last layer's output only matters at the position the head reads.
                if (layer < L - 1) | (t == p - 1):
                    # Stream by stream: no weight is shared, and (TB, HP, DP) tiles stay in
                    # registers whatever SB is.
                    for si in range(SB):
                        b = tl.program_id(0) * SB + si
                        if b < Bsz:
                            st = s_ptr + b * s_stride
                            cb = layer * cache_layer + b * (Hh * T * D)
                            _attend(st + 2 * C, st + 5 * C, kc_ptr + cb, vc_ptr + cb, pos + 1, T,
                                    D, Hh, sm_scale, TB, HP, DP)
                    tl.debug_barrier()
                    for j0 in range(0, C, JB):
                        j = j0 + jj
                        jm = j < C
                        acc = _gemv(w_proj, w_proj + C * C, C, j, jm, y_s, C, live, SB, KB,
                                    DOT, True)
                        m = live & jm[None, :]
                        x = tl.load(x_s + j[None, :], mask=m, other=0.0)
                        tl.store(x_s + j[None, :], x + acc, mask=m)
                    tl.debug_barrier()
                    _layernorm(x_s, a_s, ln2, C, live, SB, KB)
                    tl.debug_barrier()
                    for j0 in range(0, 4 * C, JB):
                        j = j0 + jj
                        jm = j < 4 * C
                        u = _gemv(w_fc, w_fc + 4 * C * C, C, j, jm, a_s, C, live, SB, KB, DOT,
                                  True)
                        u = 0.5 * u * (1.0 + tl.math.erf(u * 0.7071067811865476))
                        tl.store(h_s + j[None, :], u, mask=live & jm[None, :])
                    tl.debug_barrier()
                    for j0 in range(0, C, JB):
                        j = j0 + jj
                        jm = j < C
                        acc = _gemv(w_proj2, w_proj2 + 4 * C * C, 4 * C, j, jm, h_s, 4 * C, live,
                                    SB, KB, DOT, True)
                        m = live & jm[None, :]
                        x = tl.load(x_s + j[None, :], mask=m, other=0.0)
                        tl.store(x_s + j[None, :], x + acc, mask=m)
                    tl.debug_barrier()
        clen = clen + p - c0
        _layernorm(x_s, a_s, lnf, C, live, SB, KB)
        tl.debug_barrier()
        for j0 in range(0, V, JB):
            j = j0 + jj
            jm = j < V
            acc = _gemv(lnf + 2 * C, lnf, C, j, jm, a_s, C, live, SB, KB, DOT, False)
            tl.store(lg_s + j[None, :], acc, mask=live & jm[None, :])
        tl.debug_barrier()
        aa = tl.arange(0, VP)[None, :]
        am = aa < V
        one = tl.zeros((1, 1), tl.int32)
        for si in range(SB):  # stream by stream: a (1, VP) row, whatever SB is
            b = tl.program_id(0) * SB + si
            if b < Bsz:
                x = tl.load(s_ptr + b * s_stride + 10 * C + aa, mask=am, other=float("-inf"))
                if GREEDY:
                    best = tl.full((1, 1), float("-inf"), tl.float32)
                    best, idx = first_argmax_step(x, 0, best, one)
                else:
                    rows = (tl.zeros((1,), tl.int64) + p) * Bsz + b  # int64: p B may pass 2^31
                    idx = draw_tile(x, am, rows, one == 0, k0, k1, inv_temp, top_k, top_p, scale,
                                    TOP_K, TOP_P, VP)
                tl.store(tok_ptr + b * N + p + one, idx.to(tl.int64))
        tl.debug_barrier()  # the next step feeds this token


def _sizes(meta: list[int]) -> tuple[int, int, int, int, int]:
    if (not isinstance(meta, list | tuple) or len(meta) != META_LEN
            or any(isinstance(v, bool) or not isinstance(v, int) for v in meta)):
        raise ValueError(f"meta must be a list of {META_LEN} ints [L, V, C, Hh, T], got {meta!r}")
    L, V, C, Hh, T = meta
    if min(meta) < 1:
        raise ValueError(f"meta must hold L, V, C, Hh, T >= 1, got {list(meta)}")
    if C % Hh:
        raise ValueError(f"meta's n_embd C={C} must be a multiple of the head count Hh={Hh}")
    return L, V, C, Hh, T


def packed_size(meta: list[int]) -> int:
    """Elements of the packed weight buffer that meta describes."""
    L, V, C, Hh, T = _sizes(meta)
    return 2 * V * C + T * C + L * (12 * C * C + 13 * C) + 2 * C


def scratch_width(meta: list[int]) -> int:
    """Columns of the (B, width) scratch: 10 C + V + T."""
    L, V, C, Hh, T = _sizes(meta)
    return 10 * C + V + T


def _int(name: str, v: object, lo: int, hi: int, what: str) -> int:
    if isinstance(v, bool) or not isinstance(v, int) or not lo <= v <= hi:
        raise ValueError(f"{name} must be an int in [{lo}, {what} = {hi}], got {v!r}")
    return v


def generate(weights: torch.Tensor, meta: list[int], tokens: torch.Tensor, kcache: torch.Tensor,
             vcache: torch.Tensor, scratch: torch.Tensor, start: int, keep: int,
             seed: torch.Tensor, inv_temperature: float, top_k: int, top_p: float, *,
             streams_per_program: int | None = None, block: int | None = None) -> torch.Tensor:
    """Draw tokens p = start .. N-1 of tokens (B, N) in place (the contract's loop; one launch).
    kcache, vcache (L, B, Hh, T, D) and scratch (B, 10 C + V + T): float32 workspaces, contents
    unspecified on entry and exit. inv_temperature = inf samples greedily; top_k 0 and top_p >= 1:
    off. `streams_per_program` (a power of two; >= 16 takes the tl.dot path) and `block` (a power
    of two >= 16: GEMV row blocks, column chunks and key blocks) force the tiling (tests walk the
    chunked loops and both GEMV paths with them)."""
    L, V, C, Hh, T = _sizes(meta)
    D = C // Hh
    if not isinstance(weights, torch.Tensor) or weights.dtype not in DTYPES:
        got = weights.dtype if isinstance(weights, torch.Tensor) else type(weights).__name__
        raise ValueError(f"weights must be a float32/float16/bfloat16 tensor (float64: the cpu "
                         f"or reference backend), got {got}")
    dev = weights.device
    check_like("weights", weights, (packed_size(meta),), weights.dtype, dev)
    if not isinstance(tokens, torch.Tensor) or tokens.dim() != 2:
        raise ValueError(f"tokens must be a (B, N) tensor, got "
                         f"{getattr(tokens, 'shape', type(tokens).__name__)}")
    B, N = tokens.shape
    check_like("tokens", tokens, (B, N), torch.int64, dev)
    check_like("kcache", kcache, (L, B, Hh, T, D), torch.float32, dev)
    check_like("vcache", vcache, (L, B, Hh, T, D), torch.float32, dev)
    check_like("scratch", scratch, (B, scratch_width(meta)), torch.float32, dev)
    _int("start", start, 1, N, "N")
    _int("keep", keep, 1, T, "block_size T")
    check_seed(seed, dev)
    check_positive("inv_temperature", inv_temperature, allow_inf=True)
    if isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 0:
        raise ValueError(f"top_k must be an int >= 0, got {top_k!r}")
    if not top_p > 0:
        raise ValueError(f"top_p must be > 0 (>= 1: off), got {top_p}")
    vp = _pow2(V, 16, 1 << 30)
    if vp > MAX_VOCAB:
        raise ValueError(f"the vocabulary must stay <= {MAX_VOCAB} for the Triton generator, "
                         f"got V={V}")
    if D > MAX_HEAD_DIM:
        raise ValueError(f"the head dim C / Hh must stay <= {MAX_HEAD_DIM} for the Triton "
                         f"generator, got {D}")
    if max(weights.numel(), kcache.numel(), scratch.numel(), tokens.numel()) > _INT32_MAX:
        raise ValueError(f"sizes too large for the Triton generator's int32 indexing: "
                         f"meta={list(meta)}, B={B}, N={N}")
    sb = streams_per_program or (DOT_STREAMS if B >= DOT_FROM else 1)
    if sb < 1 or sb & (sb - 1):
        raise ValueError(f"streams_per_program must be a power of two, got {sb}")
    if block is not None and (block < 16 or block & (block - 1)):
        raise ValueError(f"block must be a power of two >= 16, got {block}")
    if B == 0 or start == N:
        return tokens
    # One sync per call (the loop itself is long): a bad given token must not be fed.
    given = tokens[:, :start]
    if bool(((given < 0) | (given >= V)).any()):
        raise ValueError(f"tokens[:, :start] must hold tokens in [0, {V}), got values in "
                         f"[{int(given.min())}, {int(given.max())}]")
    dot = sb >= 16
    cp = _pow2(C, 16, 1 << 30)
    hp, dp = _pow2(Hh, 1, 1 << 30), _pow2(D, 1, 1 << 30)
    # Attention tiles (TB, HP, DP) of about 4096 values.
    tb = max(2, min(64, 4096 // (hp * dp)))
    if block is not None:
        jb = kb = tb = block
    elif dot:
        # (SB, KB) x (KB, JB) fp32 dots: K kept small, as "ieee" dots hold their K in registers.
        jb, kb = 32, min(cp, 32)
    else:
        # (SB, JB, KB) products of about 4096 values: 128-column rows (512 B of fp32) coalesce.
        kb = min(cp, 128)
        jb = max(16, min(256, 4096 // (sb * kb)))
    greedy = math.isinf(inv_temperature)
    with device_guard(weights):
        _generate_kernel[(triton.cdiv(B, sb),)](
            weights, tokens, kcache, vcache, scratch, seed, B, N, L, V, C, Hh, D, T, start, keep,
            scratch.shape[1], 1.0 / math.sqrt(D),
            1.0 if greedy else float(inv_temperature), min(top_k, V), min(float(top_p), 1.0),
            mass_scale(V), GREEDY=greedy, TOP_K=not greedy and 0 < top_k < V,
            TOP_P=not greedy and top_p < 1.0, SB=sb, JB=jb, KB=kb, TB=tb, HP=hp, DP=dp, VP=vp,
            DOT=dot,            num_warps=8 if cp >= 256 or dot else 4, num_stages=1,
        )
    return tokens
