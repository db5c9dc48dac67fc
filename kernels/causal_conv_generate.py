"""Triton whole-network WaveNet generation: the autoregressive loop in one kernel launch.

The contract (packed weight layout, meta table, ring buffers, positions, noise rows) is the
generator helper's docstring in genfast/ops/causal_conv_generate.py; in short:
* weights, one buffer: the input ([emb (A, R)] or [w_in (R), b_in (R)]), per layer [w_dil
  (G, R, K), b_dil (G), w_res (R, H), b_res (R), w_skip (S, H), b_skip (S)], the head [w1 (E, S),
  b1 (E), w2 (A, E), b2 (A)]; meta = [L, A, R, G, S, E, K, input_kind, d_0 .. d_{L-1}].
* rings (B, sum_l (K-1) d_l R): layer l keeps its last (K-1) d_l inputs, position p in slot
  p mod ((K-1) d_l), written with the layer's input after its taps were read.
* pos (B, 2) = (steps done, previous token), advanced in place, so chunks continue exactly.
* the token of stream b at position p is the `sample` family's draw from the logits, Philox row
  p*B + b (kernels/sample.py's row code, shared, not copied).

One program per stream runs every step and every layer (nv-wavenet's "one CTA per stream"):
the GEMVs are tl.sum(W * v[None, :], 1) over weights read from L2 each step, the activations
stay in registers, and the ring slot a layer reads last (its oldest tap) is the slot it then
overwrites, so barriers order the read, the write and the next step's reads.
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

META_HEAD = 8  # meta entries before the dilations
INPUT_KINDS = {0: "embedding", 1: "scalar"}
MAX_WIDTH = 1024  # widest padded channel count a program keeps in registers


@triton.jit
def _gemv(w_ptr, rows, cols, n_cols, v, rmask, cmask):
    """W[rows, cols] @ v in fp32 for a row-major W with n_cols columns."""
    w = tl.load(w_ptr + rows[:, None] * n_cols + cols[None, :],
                mask=rmask[:, None] & cmask[None, :], other=0.0).to(tl.float32)
    return tl.sum(w * v[None, :], 1)


@triton.jit
def _bias(b_ptr, rows, rmask):
    return tl.load(b_ptr + rows, mask=rmask, other=0.0).to(tl.float32)


@triton.jit
def _sample_row(logits, amask, row, k0, k1, inv_temp, top_k, top_p, scale,
                GREEDY: tl.constexpr, TOP_K: tl.constexpr, TOP_P: tl.constexpr,
                AP: tl.constexpr):
    """The sample family's draw (the single-tile path of kernels/sample.py) for one row."""
    x = tl.where(amask, logits, float("-inf"))[None, :]
    cmask = amask[None, :]
    best = tl.full((1, 1), float("-inf"), tl.float32)
    idx = tl.zeros((1, 1), tl.int32)
    if GREEDY:
        best, idx = first_argmax_step(x, 0, best, idx)
    else:
        rows = tl.zeros((1,), tl.int64) + row
        idx = draw_tile(x, cmask, rows, (rows >= 0)[:, None], k0, k1, inv_temp, top_k, top_p,
                        scale, TOP_K, TOP_P, AP)
    return tl.sum(idx, 1)  # the (1, 1) index as a (1,) tensor


@triton.jit
def _generate_kernel(
    w_ptr,  # packed weights (see the module docstring)
    dil_ptr,  # (L,) int64 dilations
    gc_ptr,  # (B, L, G) global conditioning, when HAS_GC
    lc_ptr,  # (B, n, L, G) local conditioning, when HAS_LC
    ring_ptr,  # (B, ring_len) ring buffers, updated in place
    pos_ptr,  # (B, 2) int64 (steps done, previous token), updated in place
    tok_ptr,  # (B, n) int64 sampled tokens
    seed_ptr,  # int64[1] seed
    n, Bsz, L, A, R, G, S, E, ring_len,
    inv_temp, top_k, top_p, scale,  # the sampler's parameters (kernels/sample.py)
    K: tl.constexpr,
    EMBED: tl.constexpr,  # input kind 0 (an embedding row) or 1 (a 1x1 conv of the value)
    HAS_GC: tl.constexpr, HAS_LC: tl.constexpr,
    GREEDY: tl.constexpr, TOP_K: tl.constexpr, TOP_P: tl.constexpr,
    RP: tl.constexpr, HP: tl.constexpr, SP: tl.constexpr, EP: tl.constexpr, AP: tl.constexpr,
):
    b = tl.program_id(0).to(tl.int64)
    H = G // 2
    r = tl.arange(0, RP)
    rm = r < R
    hh = tl.arange(0, HP)
    hm = hh < H
    ss = tl.arange(0, SP)
    sm = ss < S
    ee = tl.arange(0, EP)
    em = ee < E
    aa = tl.arange(0, AP)
    am = aa < A
    k0, k1 = seed_key(seed_ptr)
    ring_b = ring_ptr + b * ring_len
    n0 = tl.load(pos_ptr + 2 * b)
    tok = tl.load(pos_ptr + 2 * b + 1)
    in_size = A * R if EMBED else 2 * R
    layer_size = G * R * K + G + R * H + R + S * H + S
    head = w_ptr + in_size + L * layer_size
    for i in range(n):
        p = n0 + i
        if EMBED:
            x = tl.load(w_ptr + tok * R + r, mask=rm, other=0.0).to(tl.float32)
        else:
            v = 2.0 * tok.to(tl.float32) / (A - 1) - 1.0
            x = (tl.load(w_ptr + r, mask=rm, other=0.0).to(tl.float32) * v
                 + tl.load(w_ptr + R + r, mask=rm, other=0.0).to(tl.float32))
        skip = tl.zeros((SP,), tl.float32)
        w_l = w_ptr + in_size
        ring_l = ring_b
        for layer in range(L):
            d = tl.load(dil_ptr + layer)
            m = (K - 1) * d  # ring slots of this layer (none for K = 1)
            b_dil = w_l + G * R * K
            f = _bias(b_dil, hh, hm)
            q = _bias(b_dil + H, hh, hm)
            for k in tl.static_range(K):
                if k == K - 1:
                    tap = x
                else:
                    slot = (p - (K - 1 - k) * d) % m
                    slot = tl.where(slot < 0, slot + m, slot)  # Python's mod
                    tap = tl.load(ring_l + slot * R + r, mask=rm, other=0.0).to(tl.float32)
                wk = w_l + k
                f += _gemv(wk, hh, r * K, R * K, tap, hm, rm)
                q += _gemv(wk + H * R * K, hh, r * K, R * K, tap, hm, rm)
            if HAS_GC:
                gc = gc_ptr + (b * L + layer) * G
                f += _bias(gc, hh, hm)
                q += _bias(gc + H, hh, hm)
            if HAS_LC:
                lc = lc_ptr + ((b * n + i) * L + layer) * G
                f += _bias(lc, hh, hm)
                q += _bias(lc + H, hh, hm)
            # Every thread has read its taps before the oldest one's slot is overwritten, and
            # the write lands before any later read of it.
            if K > 1:
                tl.debug_barrier()
                tl.store(ring_l + (p % m) * R + r, x.to(ring_ptr.dtype.element_ty), mask=rm)
                tl.debug_barrier()
            z = (2.0 * tl.sigmoid(2.0 * f) - 1.0) * tl.sigmoid(q)
            w_res = b_dil + G
            b_res = w_res + R * H
            w_skip = b_res + R
            b_skip = w_skip + S * H
            x += _gemv(w_res, r, hh, H, z, rm, hm) + _bias(b_res, r, rm)
            skip += _gemv(w_skip, ss, hh, H, z, sm, hm) + _bias(b_skip, ss, sm)
            w_l += layer_size
            ring_l += m * R
        hid = tl.maximum(_gemv(head, ee, ss, S, tl.maximum(skip, 0.0), em, sm)
                         + _bias(head + E * S, ee, em), 0.0)
        w2 = head + E * S + E
        logits = _gemv(w2, aa, ee, E, hid, am, em) + _bias(w2 + A * E, aa, am)
        new = _sample_row(logits, am, p * Bsz + b, k0, k1, inv_temp, top_k, top_p, scale,
                          GREEDY, TOP_K, TOP_P, AP)
        tok = tl.sum(new, 0).to(tl.int64)
        tl.store(tok_ptr + b * n + i, tok)
    tl.store(pos_ptr + 2 * b, n0 + n)
    tl.store(pos_ptr + 2 * b + 1, tok)


def _sizes(meta: list[int]) -> tuple[int, ...]:
    if len(meta) < META_HEAD or any(isinstance(v, bool) or not isinstance(v, int) for v in meta):
        raise ValueError(f"meta must be a list of ints [L, A, R, G, S, E, K, input_kind, "
                         f"d_0 ..], got {meta!r}")
    L, A, R, G, S, E, K, kind = meta[:META_HEAD]
    if len(meta) != META_HEAD + L:
        raise ValueError(f"meta must hold {META_HEAD} sizes and L={L} dilations, got {len(meta)}"
                         " entries")
    if min(A, R, G, S, E, K) < 1 or G % 2 or kind not in INPUT_KINDS:
        raise ValueError(f"meta sizes must be >= 1 with G even and input_kind in "
                         f"{sorted(INPUT_KINDS)}, got {meta[:META_HEAD]}")
    if any(d < 1 for d in meta[META_HEAD:]):
        raise ValueError(f"dilations must be >= 1, got {meta[META_HEAD:]}")
    return L, A, R, G, S, E, K, kind


def packed_size(meta: list[int]) -> int:
    """Elements of the packed weight buffer that meta describes."""
    L, A, R, G, S, E, K, kind = _sizes(meta)
    layer = G * R * K + G + R * G // 2 + R + S * G // 2 + S
    return (A * R if kind == 0 else 2 * R) + L * layer + E * S + E + A * E + A


def generate(weights: torch.Tensor, meta: list[int], gcond: torch.Tensor | None,
             lcond: torch.Tensor | None, rings: torch.Tensor, pos: torch.Tensor,
             tokens: torch.Tensor, seed: torch.Tensor, inv_temp: float, top_k: int,
             top_p: float) -> torch.Tensor:
    """n = tokens.shape[1] generation steps of every stream, one launch; tokens written, rings
    and pos advanced in place. inv_temp = inf samples greedily; top_k 0 and top_p >= 1: off."""
    L, A, R, G, S, E, K, kind = _sizes(meta)
    if not isinstance(weights, torch.Tensor) or weights.dtype not in DTYPES:
        raise ValueError("weights must be a float32/float16/bfloat16 tensor")
    dt, dev = weights.dtype, weights.device
    check_like("weights", weights, (packed_size(meta),), dt, dev)
    if tokens.dim() != 2:
        raise ValueError(f"tokens must be (B, n), got {tuple(tokens.shape)}")
    B, n = tokens.shape
    check_like("tokens", tokens, (B, n), torch.int64, dev)
    check_like("pos", pos, (B, 2), torch.int64, dev)
    ring_len = sum((K - 1) * d * R for d in meta[META_HEAD:])
    check_like("rings", rings, (B, ring_len), dt, dev)
    if gcond is not None:
        check_like("gcond", gcond, (B, L, G), dt, dev)
    if lcond is not None:
        check_like("lcond", lcond, (B, n, L, G), dt, dev)
    check_seed(seed, dev)
    check_positive("inv_temp", inv_temp, allow_inf=True)
    if isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 0:
        raise ValueError(f"top_k must be an int >= 0, got {top_k!r}")
    if not top_p > 0:
        raise ValueError(f"top_p must be > 0 (>= 1: off), got {top_p}")
    widths = dict(RP=_pow2(R, 16, 1 << 30), HP=_pow2(G // 2, 16, 1 << 30),
                  SP=_pow2(S, 16, 1 << 30), EP=_pow2(E, 16, 1 << 30), AP=_pow2(A, 16, 1 << 30))
    if max(widths.values()) > MAX_WIDTH:
        raise ValueError(f"channel counts must stay <= {MAX_WIDTH} for the Triton generator, got "
                         f"R={R}, G={G}, S={S}, E={E}, A={A}")
    if not B or not n:
        return tokens
    greedy = math.isinf(inv_temp)
    dil = torch.tensor(meta[META_HEAD:] or [1], dtype=torch.int64, device=dev)
    with device_guard(weights):
        _generate_kernel[(B,)](
            weights, dil, gcond if gcond is not None else weights,
            lcond if lcond is not None else weights, rings, pos, tokens, seed,
            n, B, L, A, R, G, S, E, ring_len,
            1.0 if greedy else float(inv_temp), min(top_k, A), min(float(top_p), 1.0),
            mass_scale(A), K=K, EMBED=kind == 0, HAS_GC=gcond is not None,
            HAS_LC=lcond is not None, GREEDY=greedy, TOP_K=not greedy and 0 < top_k < A,
            TOP_P=not greedy and top_p < 1.0, num_warps=4, **widths,
        )
    return tokens
