"""Triton native sampling loop of an LSTM language model: every step of every stream in one launch.

The contract (packed layout, meta [L, V, H], the state, start, offset, the noise rows) is the
module docstring of genfast/ops/lstm_generate.py; in short:
* weights, one buffer: [tab (V, 4H)] (layer 0's input side per token, biases folded), [w_hh_0
  (4H, H)], per layer l >= 1 [w_ih_l (4H, H), w_hh_l (4H, H), b_l (4H)], [w_out (V, H), b_out (V)].
* tokens (B, N): for p = 1 .. N-1 token p-1 goes through the stack; at p >= start token p is the
  `sample` family's draw from the logits as Philox row (offset + p)*B + b (kernels/sample.py's
  draw_tile, shared, not copied), else the given token p is kept.
* h, c (L, B, H) of the model dtype: the state before token 0 on entry, before token N-1 on
  return. Math and the state during the call are float32.

A program owns SB streams (SB = 1 below DOT_FROM streams, else 16) and runs every step and every
layer. The state lives in a float32 workspace ws (3, L, B, H): two h buffers used in turn (step
p reads h_l from buffer (p-1) % 2 and writes the new h_l to the other, so no copy and no hidden
unit of a layer sees another's new h) and c, updated in place element by element. Per layer,
hidden units go in blocks of JB: the four gate rows of each unit (i, f, g, o at j, H+j, 2H+j,
3H+j) are accumulated together over KB-column chunks of the input vectors, read back from ws,
then the cell update is fused in. At SB = 1 a chunk is a GEMV, tl.sum of a (KB, JB) weight tile
times the vector; from SB = 16 streams it is a tl.dot, (SB, KB) x (KB, JB), so each weight tile
read from L2 serves 16 streams. Weights are re-read every step (L2-resident at char-RNN sizes):
with one program per stream at batch 1 a single SM reads the whole model each step, which is
this backend's limit; csrc/cuda/lstm_generate.cu splits a step over many CTAs instead.
tl.debug_barrier() orders each layer's h writes before the next layer's (and the head's) reads.
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

META_LEN = 3  # meta = [L, V, H]
MAX_VOCAB = 1024  # widest padded vocabulary a program keeps in registers for the draw
DOT_FROM = 64  # batches from this size take 16 streams per program and tl.dot GEMMs
DOT_STREAMS = 16
_INT32_MAX = 2**31 - 1


@triton.jit
def _mac(acc, v, w, DOT: tl.constexpr):
    """acc (S, JB) + v (S, KB) @ w (KB, JB), float32."""
    if DOT:
        return tl.dot(v, w, acc, input_precision="ieee")
    return acc + tl.sum(v[:, :, None] * w[None, :, :], 1)


@triton.jit
def _gate_chunks(ai, af, ag, ao, w_ptr, H, j, jm, v_ptr, live, KB: tl.constexpr,
                 DOT: tl.constexpr):
    """The four gate accumulators (S, JB) of hidden units j plus v @ W[gate*H + j, :]^T, W (4H, H)
    row-major, v (S, H) float32 rows at v_ptr (S, 1) pointers, in KB-column chunks."""
    kk0 = tl.arange(0, KB)
    for k0 in range(0, H, KB):
        kk = k0 + kk0
        km = kk < H
        v = tl.load(v_ptr + kk[None, :], mask=live & km[None, :], other=0.0)
        wp = w_ptr + j[None, :] * H + kk[:, None]  # (KB, JB): W[j, k] at k, j
        wm = km[:, None] & jm[None, :]
        ai = _mac(ai, v, tl.load(wp, mask=wm, other=0.0).to(tl.float32), DOT)
        af = _mac(af, v, tl.load(wp + H * H, mask=wm, other=0.0).to(tl.float32), DOT)
        ag = _mac(ag, v, tl.load(wp + 2 * H * H, mask=wm, other=0.0).to(tl.float32), DOT)
        ao = _mac(ao, v, tl.load(wp + 3 * H * H, mask=wm, other=0.0).to(tl.float32), DOT)
    return ai, af, ag, ao


@triton.jit
def _rows4(p, j, jm, H, live):
    """The four gate slices (S, JB) of 4H-wide float rows at p (S, 1) pointers."""
    m = live & jm[None, :]
    q = p + j[None, :]
    return (tl.load(q, mask=m, other=0.0).to(tl.float32),
            tl.load(q + H, mask=m, other=0.0).to(tl.float32),
            tl.load(q + 2 * H, mask=m, other=0.0).to(tl.float32),
            tl.load(q + 3 * H, mask=m, other=0.0).to(tl.float32))


@triton.jit
def _generate_kernel(
    w_ptr,  # packed weights (see the module docstring)
    tok_ptr,  # (B, N) int64 tokens, read at p < start, written at p >= start
    ws_ptr,  # (3, L, B, H) float32: h buffers 0 and 1, c
    seed_ptr,  # int64[1] seed
    Bsz, N, L, V, H, start, offset,
    inv_temp, top_k, top_p, scale,  # the sampler's parameters (kernels/sample.py)
    GREEDY: tl.constexpr, TOP_K: tl.constexpr, TOP_P: tl.constexpr,
    SB: tl.constexpr,  # streams per program
    JB: tl.constexpr,  # hidden units per block
    KB: tl.constexpr,  # input columns per chunk of the gate GEMVs
    KH: tl.constexpr,  # columns per chunk of the head
    VP: tl.constexpr,  # padded vocabulary
    DOT: tl.constexpr,  # SB >= 16: the chunks are tl.dot
):
    bs = tl.program_id(0) * SB + tl.arange(0, SB)
    live = (bs < Bsz)[:, None]
    bcol = bs[:, None]
    jj = tl.arange(0, JB)
    aa = tl.arange(0, VP)
    am = aa < V
    k0, k1 = seed_key(seed_ptr)
    H4 = 4 * H
    layer_len = 8 * H * H + H4  # w_ih, w_hh, b of a layer >= 1
    w_hh0 = w_ptr + V * H4
    head = w_hh0 + 4 * H * H + (L - 1) * layer_len
    plane = L * Bsz * H  # one (L, B, H) buffer of ws
    c_ws = ws_ptr + 2 * plane + bcol * H
    tok = tl.load(tok_ptr + bs * N, mask=bs < Bsz, other=0)
    for p in range(1, N):
        src = ws_ptr + ((p - 1) % 2) * plane + bcol * H  # h before this step, stream rows
        dst = ws_ptr + (p % 2) * plane + bcol * H  # h after it
        # Python checks given tokens on the CPU only: clamp rather than read out of bounds.
        tok = tl.minimum(tl.maximum(tok, 0), V - 1)
        for layer in range(L):
            lw = w_hh0 + 4 * H * H + (layer - 1) * layer_len  # layer >= 1: its w_ih
            for j0 in range(0, H, JB):
                j = j0 + jj
                jm = j < H
                if layer == 0:
                    ai, af, ag, ao = _rows4(w_ptr + tok[:, None] * H4, j, jm, H, live)
                    w_hh = w_hh0
                else:
                    bi, bf, bg, bo = _rows4(lw + 8 * H * H + 0 * bcol, j, jm, H, live)
                    ai, af, ag, ao = _gate_chunks(bi, bf, bg, bo, lw, H, j, jm,
                                                  dst + (layer - 1) * Bsz * H, live, KB, DOT)
                    w_hh = lw + 4 * H * H
                ai, af, ag, ao = _gate_chunks(ai, af, ag, ao, w_hh, H, j, jm,
                                              src + layer * Bsz * H, live, KB, DOT)
                m = live & jm[None, :]
                cp = c_ws + layer * Bsz * H + j[None, :]
                c = tl.sigmoid(af) * tl.load(cp, mask=m, other=0.0) + tl.sigmoid(ai) * (
                    2.0 * tl.sigmoid(2.0 * ag) - 1.0)
                tl.store(cp, c, mask=m)
                h = tl.sigmoid(ao) * (2.0 * tl.sigmoid(2.0 * c) - 1.0)
                tl.store(dst + layer * Bsz * H + j[None, :], h, mask=m)
            tl.debug_barrier()  # the next layer and the head read this layer's new h
        if p >= start:
            logits = tl.zeros((SB, VP), tl.float32) + tl.load(
                head + V * H + aa, mask=am, other=0.0).to(tl.float32)[None, :]
            top = dst + (L - 1) * Bsz * H
            kk0 = tl.arange(0, KH)
            for c0 in range(0, H, KH):
                kk = c0 + kk0
                km = kk < H
                v = tl.load(top + kk[None, :], mask=live & km[None, :], other=0.0)
                w = tl.load(head + aa[None, :] * H + kk[:, None], mask=km[:, None] & am[None, :],
                            other=0.0).to(tl.float32)
                logits = _mac(logits, v, w, DOT)
            x = tl.where(am[None, :], logits, float("-inf"))
            idx = tl.zeros((SB, 1), tl.int32)
            if GREEDY:
                best = tl.full((SB, 1), float("-inf"), tl.float32)
                best, idx = first_argmax_step(x, 0, best, idx)
            else:
                rows = (offset + p).to(tl.int64) * Bsz + bs
                idx = draw_tile(x, am[None, :], rows, live, k0, k1, inv_temp, top_k, top_p,
                                scale, TOP_K, TOP_P, VP)
            tok = tl.sum(idx, 1).to(tl.int64)
            tl.store(tok_ptr + bs * N + p, tok, mask=bs < Bsz)
        else:
            tok = tl.load(tok_ptr + bs * N + p, mask=bs < Bsz, other=0)


def _sizes(meta: list[int]) -> tuple[int, int, int]:
    if (not isinstance(meta, list | tuple) or len(meta) != META_LEN
            or any(isinstance(v, bool) or not isinstance(v, int) for v in meta)):
        raise ValueError(f"meta must be a list of {META_LEN} ints [L, V, H], got {meta!r}")
    L, V, H = meta
    if L < 1 or V < 1 or H < 1:
        raise ValueError(f"meta must hold L, V, H >= 1, got {list(meta)}")
    return L, V, H


def packed_size(meta: list[int]) -> int:
    """Elements of the packed weight buffer that meta describes."""
    L, V, H = _sizes(meta)
    return V * 4 * H + 4 * H * H + (L - 1) * (8 * H * H + 4 * H) + V * H + V


def generate(weights: torch.Tensor, meta: list[int], tokens: torch.Tensor, h: torch.Tensor,
             c: torch.Tensor, start: int, offset: int, seed: torch.Tensor,
             inv_temperature: float, top_k: int, top_p: float, *,
             streams_per_program: int | None = None, block: int | None = None) -> torch.Tensor:
    """Run the contract's loop over tokens (B, N) in place (tokens p >= start drawn) and advance
    h, c (L, B, H) in place; one launch. inv_temperature = inf samples greedily; top_k 0 and
    top_p >= 1: off. `streams_per_program` (a power of two; >= 16 takes the tl.dot path) and
    `block` (a power of two >= 16: every hidden-unit block and column chunk) force the tiling
    (tests walk the chunked loops and both GEMV paths with them)."""
    L, V, H = _sizes(meta)
    if not isinstance(weights, torch.Tensor) or weights.dtype not in DTYPES:
        raise ValueError("weights must be a float32/float16/bfloat16 tensor")
    dt, dev = weights.dtype, weights.device
    check_like("weights", weights, (packed_size(meta),), dt, dev)
    if not isinstance(tokens, torch.Tensor) or tokens.dim() != 2:
        raise ValueError(f"tokens must be a (B, N) tensor, got "
                         f"{getattr(tokens, 'shape', type(tokens).__name__)}")
    B, N = tokens.shape
    check_like("tokens", tokens, (B, N), torch.int64, dev)
    check_like("h", h, (L, B, H), dt, dev)
    check_like("c", c, (L, B, H), dt, dev)
    if isinstance(start, bool) or not isinstance(start, int) or not 1 <= start <= max(N, 1):
        raise ValueError(f"start must be an int in [1, N = {N}], got {start!r}")
    if isinstance(offset, bool) or not isinstance(offset, int) or offset < 0:
        raise ValueError(f"offset must be an int >= 0, got {offset!r}")
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
    if weights.numel() > _INT32_MAX or 3 * L * B * H > _INT32_MAX or (offset + N) * B > 2**62:
        raise ValueError(f"sizes too large for the Triton generator's int32 indexing: "
                         f"meta={list(meta)}, B={B}, N={N}, offset={offset}")
    sb = streams_per_program or (DOT_STREAMS if B >= DOT_FROM else 1)
    if sb < 1 or sb & (sb - 1):
        raise ValueError(f"streams_per_program must be a power of two, got {sb}")
    if block is not None and (block < 16 or block & (block - 1)):
        raise ValueError(f"block must be a power of two >= 16, got {block}")
    if B == 0 or N <= 1:
        return tokens
    dot = sb >= 16
    hp = _pow2(H, 16, 1 << 30)
    if block is not None:
        jb = kb = kh = block
    elif dot:
        # (SB, KB) x (KB, JB) fp32 dots: K kept small, as "ieee" dots hold their K in registers.
        jb, kb, kh = min(hp, 32), min(hp, 32), 16 if vp >= 256 else min(hp, 32)
    else:
        # Four (KB, JB) gate tiles of 2048 weights: 128-column rows (512 B of fp32) coalesce.
        jb, kb = 16, min(hp, 128)
        kh = min(hp, max(16, 4096 // vp))
    ws = torch.empty(3, L, B, H, dtype=torch.float32, device=dev)
    ws[0].copy_(h)
    ws[2].copy_(c)
    greedy = math.isinf(inv_temperature)
    with device_guard(weights):
        _generate_kernel[(triton.cdiv(B, sb),)](
            weights, tokens, ws, seed, B, N, L, V, H, start, offset,
            1.0 if greedy else float(inv_temperature), min(top_k, V), min(float(top_p), 1.0),
            mass_scale(V), GREEDY=greedy, TOP_K=not greedy and 0 < top_k < V,
            TOP_P=not greedy and top_p < 1.0, SB=sb, JB=jb, KB=kb, KH=kh, VP=vp, DOT=dot,
            num_warps=8 if hp >= 64 or dot else 4, num_stages=1,
        )
    h.copy_(ws[(N - 1) % 2])
    c.copy_(ws[2])
    return tokens
