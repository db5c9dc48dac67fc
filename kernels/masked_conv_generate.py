"""Triton whole-network gated PixelCNN generation: the raster loop in one kernel launch.

The contract (packed weight layout, meta, the noise rows, start) is the module docstring of
genfast/ops/masked_conv_generate.py; in short:
* weights, one buffer: emb (A, C), per layer [wv (2C, C, c+1, k), bv (2C), wh (2C, C, c+1),
  bh (2C), wl (2C, 2C), bl (2C), wr (C, C), br (C)], the head [w1 (E, C), b1 (E), w2 (A, E),
  b2 (A)]; meta = [L, A, C, E, k], k = 2c + 1. Layer 0 is mask A (its vertical stack skips the
  current row, its horizontal stack the current pixel) without residual; the others mask B.
* tokens (B, H, W) int64, read at pixels p < start, written at p >= start with the `sample`
  family's draw from the pixel's logits as Philox row p*B + b (kernels/sample.py's draw_tile,
  through kernels/causal_conv_generate.py's row wrapper: shared, not copied).

One program per image runs every row, pixel and layer (fast-pixel-cnn's cached algorithm). Its
caches live in a zero-initialised float32 workspace the launcher allocates, per image
    WORKSPACE(L, C, E, W, k) = W * C * (L * (c + 4) + 1) + C + E elements:
  rings  L x (c+1, W, C): layer l's vertical input, image row q in slot q mod (c+1) (rows < 0
         are the zeros never written; layer 0's ring is x0 = emb[tokens], filled pixel by pixel)
  hrows  (L-1) x (W, C): row i of the horizontal input of layers 1 .. L-1 (layer 0's is row i
         of its ring, the same x0)
  links  L x (W, 2C): wl V + bl + bh + cond of row i, computed in the row phase
  vscr   (W, 2C): V of the layer the row phase is at
  vec    C + E: the head's inputs h_L and relu(w1 h_L + b1) of the current pixel.
Row phase of row i, layer by layer: V = bv + vconv over the ring (a tl.dot per tap and chunk of
16 input channels, (columns x 16) x (16 x C), in "ieee" fp32), v' = gate(V + cond) into the next
layer's ring, and the link row (dots over 16-channel chunks of V, read back from memory).
Pixel phase of (i, j): per layer the horizontal taps as
GEMVs (tl.sum of weight tile * vector; weights are re-read from L2 every pixel), the gate, wr,
the residual, the head, the draw, and emb[token] into x0. GEMVs whose vector is in memory (the
taps, the head) walk it in column chunks, so a (rows x chunk) tile of at most ~4096 weights is
in registers whatever E and A are. Barriers order every cache write before the reads of other
threads.
"""

from __future__ import annotations

import math

import torch
import triton
import triton.language as tl

from ._launch import check_like, check_positive, check_seed, device_guard
from ._philox import seed_key
from .causal_conv import DTYPES, _pow2
from .causal_conv_generate import _sample_row
from .sample import mass_scale

META_LEN = 5  # meta = [L, A, C, E, k]
MAX_WIDTH = 1024  # widest padded channel / class count a program keeps in registers
ROW_TILE = 4096  # elements of a row-phase (columns x channels) tile


@triton.jit
def _gemv(w_ptr, rows, cols, row_stride, col_stride, v, rmask, cmask):
    """W[rows, cols] @ v in fp32; element (r, c) of W at r * row_stride + c * col_stride."""
    w = tl.load(w_ptr + rows[:, None] * row_stride + cols[None, :] * col_stride,
                mask=rmask[:, None] & cmask[None, :], other=0.0).to(tl.float32)
    return tl.sum(w * v[None, :], 1)


@triton.jit
def _gemv_mem(w_ptr, rows, rmask, row_stride, col_stride, v_ptr, n, KB: tl.constexpr):
    """W[rows, :n] @ v[:n] in fp32 with v read from memory KB columns at a time."""
    kk = tl.arange(0, KB)
    acc = tl.zeros(rows.shape, tl.float32)
    for k0 in range(0, n, KB):
        cols = k0 + kk
        cm = cols < n
        v = tl.load(v_ptr + cols, mask=cm, other=0.0).to(tl.float32)
        w = tl.load(w_ptr + rows[:, None] * row_stride + cols[None, :] * col_stride,
                    mask=rmask[:, None] & cm[None, :], other=0.0).to(tl.float32)
        acc += tl.sum(w * v[None, :], 1)
    return acc


@triton.jit
def _gate(u, CP: tl.constexpr):
    """tanh(first half) * sigmoid(second half) of a (2CP,) vector [half 0 | half 1]; tanh as
    2 sigmoid(2x) - 1."""
    f, g = tl.split(tl.permute(tl.reshape(u, (2, CP)), (1, 0)))
    return (2.0 * tl.sigmoid(2.0 * f) - 1.0) * tl.sigmoid(g)


@triton.jit
def _row_phase(w_ptr, cond_ptr, ring_ptr, link_ptr, v_ptr, i, Wimg, L, C, c, k, layer_size,
               link_cols, HAS_COND: tl.constexpr, CP: tl.constexpr, WB: tl.constexpr,
               KC: tl.constexpr, PREC: tl.constexpr):
    """V, v' = gate(V + cond) and the link row wl V + bl + bh + cond of row i for every layer,
    WB columns at a time. Every tl.dot takes KC input channels, (WB, KC) x (KC, CP): the fp32
    ("ieee") dot keeps its whole K extent in registers per thread, so K is kept small; the
    gate halves are separate (WB, CP) accumulators. V goes through v_ptr (W, 2C) so that the
    link's dots can take their K chunks from memory. Links of the first link_cols columns
    (0 in a row of given tokens: links feed only the horizontal stacks, which feed only the
    draws of their own row)."""
    ch = tl.arange(0, CP)
    cm = ch < C
    kc = tl.arange(0, KC)
    jb = tl.arange(0, WB)
    wv_in = (c + 1) * k  # wv's stride between input channels
    for layer in range(L):
        wv = w_ptr + layer * layer_size
        bv = wv + 2 * C * C * wv_in
        bh = bv + 2 * C + 2 * C * C * (c + 1)
        wl = bh + 2 * C
        bl = wl + 4 * C * C
        ring = ring_ptr + layer * (c + 1) * Wimg * C
        cf = tl.zeros((CP,), tl.float32)
        cg = tl.zeros((CP,), tl.float32)
        if HAS_COND:
            cf = tl.load(cond_ptr + layer * 2 * C + ch, mask=cm, other=0.0).to(tl.float32)
            cg = tl.load(cond_ptr + layer * 2 * C + C + ch, mask=cm, other=0.0).to(tl.float32)
        if layer == 0:
            taps = c  # mask A skips the current row
        else:
            taps = c + 1
        for j0 in range(0, Wimg, WB):
            cols = j0 + jb
            om = (cols < Wimg)[:, None] & cm[None, :]
            vf = tl.zeros((WB, CP), tl.float32) + tl.load(bv + ch, mask=cm, other=0.0).to(
                tl.float32)[None, :]
            vg = tl.zeros((WB, CP), tl.float32) + tl.load(bv + C + ch, mask=cm, other=0.0).to(
                tl.float32)[None, :]
            for r in range(taps):
                q = i - c + r
                slot = (q + c + 1) % (c + 1)
                for s in range(k):
                    src = cols + s - c
                    # q broadcast to a tensor first: the interpreter's load rejects a mask
                    # built from a scalar comparison.
                    xm = (src >= 0) & (src < Wimg) & ((src * 0 + q) >= 0)
                    for c0 in range(0, C, KC):
                        ci = c0 + kc
                        km = ci < C
                        x = tl.load(ring + (slot * Wimg + src[:, None]) * C + ci[None, :],
                                    mask=xm[:, None] & km[None, :], other=0.0)
                        # B[ci, co] = wv[co, ci, r, s] (and co + C for the second half)
                        w = wv + ch[None, :] * C * wv_in + ci[:, None] * wv_in + r * k + s
                        wm = km[:, None] & cm[None, :]
                        vf = tl.dot(x, tl.load(w, mask=wm, other=0.0).to(tl.float32), vf,
                                    input_precision=PREC)
                        vg = tl.dot(x, tl.load(w + C * C * wv_in, mask=wm, other=0.0).to(
                            tl.float32), vg, input_precision=PREC)
            vrow = v_ptr + cols[:, None] * 2 * C + ch[None, :]
            tl.store(vrow, vf, mask=om)
            tl.store(vrow + C, vg, mask=om)
            if layer + 1 < L:
                gate = (2.0 * tl.sigmoid(2.0 * (vf + cf[None, :])) - 1.0) * tl.sigmoid(
                    vg + cg[None, :])
                nxt = ring_ptr + ((layer + 1) * (c + 1) + i % (c + 1)) * Wimg * C
                tl.store(nxt + cols[:, None] * C + ch[None, :], gate, mask=om)
        tl.debug_barrier()  # V of every column is in v_ptr
        for j0 in range(0, link_cols, WB):
            cols = j0 + jb
            om = (cols < Wimg)[:, None] & cm[None, :]
            lf = tl.zeros((WB, CP), tl.float32) + (
                tl.load(bl + ch, mask=cm, other=0.0).to(tl.float32)
                + tl.load(bh + ch, mask=cm, other=0.0).to(tl.float32) + cf)[None, :]
            lg = tl.zeros((WB, CP), tl.float32) + (
                tl.load(bl + C + ch, mask=cm, other=0.0).to(tl.float32)
                + tl.load(bh + C + ch, mask=cm, other=0.0).to(tl.float32) + cg)[None, :]
            for c0 in range(0, 2 * C, KC):
                ci = c0 + kc
                km = ci < 2 * C
                x = tl.load(v_ptr + cols[:, None] * 2 * C + ci[None, :],
                            mask=(cols < Wimg)[:, None] & km[None, :], other=0.0)
                w = wl + ch[None, :] * 2 * C + ci[:, None]  # B[ci, co] = wl[co, ci]
                wm = km[:, None] & cm[None, :]
                lf = tl.dot(x, tl.load(w, mask=wm, other=0.0).to(tl.float32), lf,
                            input_precision=PREC)
                lg = tl.dot(x, tl.load(w + 2 * C * C, mask=wm, other=0.0).to(tl.float32), lg,
                            input_precision=PREC)
            link = link_ptr + (layer * Wimg + cols[:, None]) * 2 * C + ch[None, :]
            tl.store(link, lf, mask=om)
            tl.store(link + C, lg, mask=om)
        # The next layer's conv reads the ring slot just written; v_ptr is rewritten.
        tl.debug_barrier()


@triton.jit
def _generate_kernel(
    w_ptr,  # packed weights (see the module docstring)
    cond_ptr,  # (B, L, 2C) per-layer conditioning bias, when HAS_COND
    tok_ptr,  # (B, H, W) int64 tokens, read at p < start, written at p >= start
    ws_ptr,  # (B, ws_len) float32 zeros: the caches
    seed_ptr,  # int64[1] seed
    Bsz, Himg, Wimg, L, A, C, E, k, start, ws_len,
    inv_temp, top_k, top_p, scale,  # the sampler's parameters (kernels/sample.py)
    HAS_COND: tl.constexpr,
    GREEDY: tl.constexpr, TOP_K: tl.constexpr, TOP_P: tl.constexpr,
    CP: tl.constexpr, EP: tl.constexpr, AP: tl.constexpr, WB: tl.constexpr,
    KC: tl.constexpr,  # input channels per row-phase dot
    KT: tl.constexpr, KH: tl.constexpr, KA: tl.constexpr,  # column chunks of the GEMVs
    PREC: tl.constexpr,
):
    b = tl.program_id(0).to(tl.int64)
    c = k // 2
    ch = tl.arange(0, CP)
    cm = ch < C
    g2 = tl.arange(0, 2 * CP)
    grow = (g2 // CP) * C + g2 % CP
    gm = (g2 % CP) < C
    ee = tl.arange(0, EP)
    em = ee < E
    aa = tl.arange(0, AP)
    am = aa < A
    k0, k1 = seed_key(seed_ptr)
    layer_size = (2 * C * C * (c + 1) * k + 2 * C + 2 * C * C * (c + 1) + 2 * C + 4 * C * C
                  + 2 * C + C * C + C)
    layers = w_ptr + A * C
    head = layers + L * layer_size
    w2 = head + E * C + E
    ws = ws_ptr + b * ws_len
    rings = ws
    hrows = rings + L * (c + 1) * Wimg * C  # (L-1) rows, for layers 1 .. L-1
    links = hrows + (L - 1) * Wimg * C
    vscr = links + L * Wimg * 2 * C
    vec = vscr + Wimg * 2 * C
    cond = cond_ptr + b * L * 2 * C
    toks = tok_ptr + b * Himg * Wimg
    for i in range(Himg):
        given = (i + 1) * Wimg <= start  # the row needs only its embedding (x0)
        _row_phase(layers, cond, rings, links, vscr, i, Wimg, L, C, c, k, layer_size,
                   tl.where(given, 0, Wimg),
                   HAS_COND, CP, WB, KC, PREC)
        x0_row = rings + (i % (c + 1)) * Wimg * C  # layer 0's horizontal input: row i of x0
        for j in range(Wimg):
            p = i * Wimg + j
            h = tl.zeros((CP,), tl.float32)
            for layer in range(0, tl.where(given, 0, L)):  # no stacks in a row of given tokens
                wh = layers + layer * layer_size + 2 * C * C * (c + 1) * k + 2 * C
                wr = wh + 2 * C * C * (c + 1) + 2 * C + 4 * C * C + 2 * C
                u = tl.load(links + (layer * Wimg + j) * 2 * C + grow, mask=gm, other=0.0)
                if layer == 0:
                    src_row = x0_row
                    taps = c  # mask A skips the current pixel
                else:
                    src_row = hrows + (layer - 1) * Wimg * C
                    taps = c + 1
                for s in range(taps):
                    src = j - c + s
                    if src >= 0:
                        u += _gemv_mem(wh + s, grow, gm, C * (c + 1), c + 1, src_row + src * C,
                                       C, KT)
                out = (_gemv(wr, ch, ch, C, 1, _gate(u, CP), cm, cm)
                       + tl.load(wr + C * C + ch, mask=cm, other=0.0).to(tl.float32))
                if layer > 0:
                    out += h
                h = out
                if layer + 1 < L:
                    tl.store(hrows + (layer * Wimg + j) * C + ch, h, mask=cm)
                    tl.debug_barrier()  # the next layer's taps read this column
            if p >= start:
                tl.store(vec + ch, h, mask=cm)
                tl.debug_barrier()
                e = _gemv_mem(head, ee, em, C, 1, vec, C, KH) + tl.load(
                    head + E * C + ee, mask=em, other=0.0).to(tl.float32)
                tl.store(vec + C + ee, tl.maximum(e, 0.0), mask=em)
                tl.debug_barrier()
                logits = (_gemv_mem(w2, aa, am, E, 1, vec + C, E, KA)
                          + tl.load(w2 + A * E + aa, mask=am, other=0.0).to(tl.float32))
                new = _sample_row(logits, am, p * Bsz + b, k0, k1, inv_temp, top_k, top_p,
                                  scale, GREEDY, TOP_K, TOP_P, AP)
                tok = tl.sum(new, 0).to(tl.int64)
                tl.store(toks + p, tok)
            else:
                tok = tl.load(toks + p)
            # Python checks given tokens on the CPU only: clamp rather than read out of bounds.
            tok = tl.minimum(tl.maximum(tok, 0), A - 1)
            x0 = tl.load(w_ptr + tok * C + ch, mask=cm, other=0.0).to(tl.float32)
            tl.store(x0_row + j * C + ch, x0, mask=cm)
            tl.debug_barrier()  # later pixels and row i+1 read x0


def _sizes(meta: list[int]) -> tuple[int, int, int, int, int]:
    if (len(meta) != META_LEN
            or any(isinstance(v, bool) or not isinstance(v, int) for v in meta)):
        raise ValueError(f"meta must be a list of {META_LEN} ints [L, A, C, E, k], got {meta!r}")
    L, A, C, E, k = meta
    if min(L, C, E, k) < 1 or A < 2 or k % 2 == 0:
        raise ValueError(f"meta must hold L, C, E >= 1, A >= 2 and an odd k >= 1, got {meta}")
    return L, A, C, E, k


def packed_size(meta: list[int]) -> int:
    """Elements of the packed weight buffer that meta describes."""
    L, A, C, E, k = _sizes(meta)
    c = k // 2
    layer = 2 * C * C * (c + 1) * (k + 1) + 4 * C * C + C * C + 7 * C
    return A * C + L * layer + E * C + E + A * E + A


def workspace_size(meta: list[int], width: int) -> int:
    """float32 cache elements one image needs (the module docstring's WORKSPACE)."""
    L, _, C, E, k = _sizes(meta)
    return width * C * (L * (k // 2 + 4) + 1) + C + E


def generate(weights: torch.Tensor, meta: list[int], cond: torch.Tensor | None,
             tokens: torch.Tensor, start: int, seed: torch.Tensor, inv_temperature: float,
             top_k: int, top_p: float, *, chunk: int | None = None) -> torch.Tensor:
    """Sample the pixels p >= start of every image of tokens (B, H, W), in place, in one launch.
    inv_temperature = inf samples greedily; top_k 0 and top_p >= 1: off. `chunk` forces every
    column chunk (row-phase columns, GEMV columns) to one power of two (tests walk the chunked
    loops with it)."""
    L, A, C, E, k = _sizes(meta)
    if not isinstance(weights, torch.Tensor) or weights.dtype not in DTYPES:
        raise ValueError("weights must be a float32/float16/bfloat16 tensor")
    dt, dev = weights.dtype, weights.device
    check_like("weights", weights, (packed_size(meta),), dt, dev)
    if not isinstance(tokens, torch.Tensor) or tokens.dim() != 3:
        raise ValueError(f"tokens must be a (B, H, W) tensor, got "
                         f"{getattr(tokens, 'shape', type(tokens).__name__)}")
    B, H, W = tokens.shape
    check_like("tokens", tokens, (B, H, W), torch.int64, dev)
    if cond is not None:
        check_like("cond", cond, (B, L, 2 * C), dt, dev)
    if isinstance(start, bool) or not isinstance(start, int) or not 0 <= start <= H * W:
        raise ValueError(f"start must be an int in [0, H*W = {H * W}], got {start!r}")
    check_seed(seed, dev)
    check_positive("inv_temperature", inv_temperature, allow_inf=True)
    if isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 0:
        raise ValueError(f"top_k must be an int >= 0, got {top_k!r}")
    if not top_p > 0:
        raise ValueError(f"top_p must be > 0 (>= 1: off), got {top_p}")
    widths = dict(CP=_pow2(C, 16, 1 << 30), EP=_pow2(E, 16, 1 << 30), AP=_pow2(A, 16, 1 << 30))
    if max(widths.values()) > MAX_WIDTH:
        raise ValueError(f"channel counts must stay <= {MAX_WIDTH} for the Triton generator, got "
                         f"C={C}, E={E}, A={A}")
    if not B or start == H * W:
        return tokens
    ws_len = workspace_size(meta, W)
    ws = torch.zeros(B, ws_len, dtype=torch.float32, device=dev)
    greedy = math.isinf(inv_temperature)
    cp, ep, ap = widths["CP"], widths["EP"], widths["AP"]
    chunks = dict(WB=_pow2(W, 16, max(16, ROW_TILE // cp)), KC=16,
                  KT=_pow2(C, 16, max(16, ROW_TILE // (2 * cp))),
                  KH=_pow2(C, 16, max(16, ROW_TILE // ep)),
                  KA=_pow2(E, 16, max(16, ROW_TILE // ap)))
    if chunk is not None:
        if chunk < 16 or chunk & (chunk - 1):
            raise ValueError(f"chunk must be a power of two >= 16, got {chunk}")
        chunks = dict.fromkeys(chunks, chunk)
    # num_stages=1: software pipelining would double-buffer the row phase's dot operands in
    # shared memory for loops of a handful of taps. 8 warps from C = 64: compiled for sm_80 at
    # C = 64, E = A = 256, 4 warps spill 1.5 KB a thread (the pixel phase's tiles), 8 warps 0.3.
    with device_guard(weights):
        _generate_kernel[(B,)](
            weights, cond if cond is not None else weights, tokens, ws, seed,
            B, H, W, L, A, C, E, k, start, ws_len,
            1.0 if greedy else float(inv_temperature), min(top_k, A), min(float(top_p), 1.0),
            mass_scale(A), HAS_COND=cond is not None, GREEDY=greedy,
            TOP_K=not greedy and 0 < top_k < A, TOP_P=not greedy and top_p < 1.0,
            PREC="ieee", num_warps=8 if cp >= 64 else 4, num_stages=1, **widths, **chunks,
        )
    return tokens
