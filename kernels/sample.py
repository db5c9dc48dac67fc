"""Triton Gumbel-max sampling (greedy, temperature, top-k, top-p) and its launcher.

The semantics are the contract in the docstring of genfast/ops/sample.py; the noise, the row
preprocessing, the row tiling (packed short rows, chunked long rows) and the row helpers are
kernels/gumbel.py's and kernels/_philox.py's, shared, not copied.

Thresholds (top_k, top_p) by radix select, without sorting. Each s maps to a uint32 key whose
unsigned order is the float order of s (ukey). A threshold is the largest key t whose weight
W(t) = sum of w[c] over kept columns with key >= t reaches a target: the count top_k (w = 1), or
top_p * Z of the mass (w = exp(s), Z its total). Passes fix the key four bits at a time, most
significant first: a pass builds, per row, the 16-bin histogram of w over the columns that match
the digits fixed so far, and walks the bins from the top, adding each bin's weight to the weight
of the keys already above, until the target is reached; that bin is the next digit. The result
is an exact key of the row, so ties at the threshold are all kept, as the contract says.
Rows in registers also narrow before each pass (the candidates' key range skips the digits they
all share, and a range of one key ends the search): about 4.6 passes on random logits, at most
8. Chunked rows take 8 passes, one read of the row each. The bisection this replaces took about
11 steps on the same rows (up to 32), each a read of a chunked row.

Why 4-bit digits: Triton has no weighted histogram (tl.histogram counts only), so a pass builds
its bins as a one-hot reduction, bins x elements of arithmetic: 256 bins would make every pass
16x dearer to halve the number of passes. Masses are summed as int64 fixed point, trunc(exp(s) *
2^S) with S = 62 - ceil(log2(n)) (no sum can overflow): integer sums are exact in any order, so
every pass sees exactly the weights the previous one did, and the CUDA kernel, which sums the
same integers with shared-memory atomics (8-bit digits there: a real histogram is cheap in
CUDA), is deterministic run to run too; the two differ only where their exp() rounds
differently.
"""

from __future__ import annotations

import math

import torch
import triton
import triton.language as tl

from ._launch import check_count, check_like, check_positive, check_rows, check_seed, row_stride
from ._philox import gumbel_tile, seed_key
from .gumbel import (
    CHUNK,
    DTYPES,
    centered,
    first_argmax_step,
    launch,
    load_tile,
    max_nan,
    row_block,
    row_max,
    tile_config,
)

RADIX_BITS = 4
PASSES = 32 // RADIX_BITS
# A filtered tile is expanded 16x by its one-hot histograms: keep it small enough for registers.
FILTER_LIMITS = dict(max_single=512, chunk=512, pack_tile=512)


def mass_scale(n: int) -> float:
    """2^S for the fixed-point masses of an n-column row: n * 2^S <= 2^62."""
    return 2.0 ** (62 - (n - 1).bit_length())


# ----------------------------------------------------------------------------- device helpers


@triton.jit
def _scaled(x, cmask, m, inv_temp):
    """s = (x' - m') * inv_temperature, -inf on padding columns."""
    s = tl.where(cmask, centered(x, m) * inv_temp, float("-inf"))
    # -0.0 (an underflowed product) equals +0.0 as a float but not as a key: canonicalise it.
    return tl.where(s == 0.0, 0.0, s)


@triton.jit
def ukey(s):
    """uint32 key, unsigned order = float order of s (NaN aside): flip all bits of a negative
    float, only the sign bit of a positive one."""
    b = s.to(tl.uint32, bitcast=True)
    return b ^ tl.where((b >> 31) == 1, 0xFFFFFFFF, 0x80000000).to(tl.uint32)


@triton.jit
def _weights(s, u, cmask, kept, scale, MASS: tl.constexpr):
    """int64 w of each column: 0 outside the kept set {key >= kept} and on padding; else 1, or
    with MASS the fixed-point mass trunc(exp(s) * scale) (exp(s) <= 1: the centred max is 0)."""
    keep = cmask & (u >= kept)
    if MASS:
        return tl.where(keep, (tl.exp(s) * scale).to(tl.int64), 0)
    return keep.to(tl.int64)


@triton.jit
def _digit_hist(u, w, prefix, fixed, shift):
    """Per row, the 16-bin histogram (ROWS, 16) of w over columns whose key bits under `fixed`
    equal the row's prefix, binned by the digit (key >> shift) & 15 (shift: per row or scalar)."""
    match = (u & fixed) == prefix
    digit = ((u >> shift) & 15).to(tl.int32)
    hit = match[:, :, None] & (digit[:, :, None] == tl.arange(0, 16)[None, None, :])
    return tl.sum(tl.where(hit, w[:, :, None], 0), 1)


@triton.jit
def _pick_digit(hist, above, target):
    """The largest digit d with above + weight(digits >= d) >= target, per row, and the new
    `above` (the weight of the keys above digit d's range). -1 where no digit qualifies (the
    row's kept weight is below the target)."""
    bins = tl.arange(0, 16)[None, :]
    suffix = tl.sum(hist, 1, keep_dims=True) - tl.cumsum(hist, 1) + hist
    d = tl.max(tl.where(above + suffix >= target, bins, -1), 1, keep_dims=True)
    above += tl.sum(tl.where(bins == d, suffix - hist, 0), 1, keep_dims=True)
    return d, above


@triton.jit
def _top_digit(x):
    """Shift of the 4-bit digit holding the highest set bit of uint32 x (0 for x = 0)."""
    shift = tl.zeros(x.shape, tl.int32)
    for step in tl.static_range(3):
        s = 16 >> step  # 16, 8, 4: the bit index rounded down to a multiple of 4
        hi = x >> s
        shift = tl.where(hi != 0, shift + s, shift)
        x = tl.where(hi != 0, hi, x)
    return shift


@triton.jit
def _key_range(u, live, prefix, fixed):
    """Smallest and largest key, per row, of the candidates: columns with weight whose key bits
    under `fixed` equal the prefix."""
    cand = live & ((u & fixed) == prefix)
    lo = tl.min(tl.where(cand, u, 0xFFFFFFFF), 1, keep_dims=True)
    return lo, tl.max(tl.where(cand, u, 0), 1, keep_dims=True)


@triton.jit
def _threshold_regs(u, w, target, reachable):
    """Largest key t with sum(w[key >= t]) >= target per row, 0 (keep all) where the row's whole
    weight is below the target (reachable false); the rows are in registers, so narrowing costs
    no memory traffic: before each pass the key range [lo, hi] of the candidates with weight says
    which leading digits they all share, the pass starts at the first digit where they differ,
    and a range of a single key is the answer. Random logits take about 4.6 passes instead of 8
    (the bisection this replaces took about 11 steps)."""
    live = w > 0
    prefix = tl.zeros((u.shape[0], 1), tl.uint32)
    fixed = tl.zeros((u.shape[0], 1), tl.uint32)
    above = tl.zeros((u.shape[0], 1), tl.int64)
    lo, hi = _key_range(u, live, prefix, fixed)
    # Finished: no reachable target, one key left, or no candidate left (only NaN rows, whose
    # weights are garbage; each pass fixes at least one more digit, so every row finishes).
    done = ~reachable | (lo >= hi)
    result = tl.where(reachable & (lo == hi), lo, 0)
    while tl.sum(tl.sum((~done).to(tl.int32), 1), 0) > 0:  # a scalar: scf.while needs one
        shift = _top_digit(lo ^ hi).to(tl.uint32)
        # Every candidate shares the bits above the digit: they join the prefix without a pass.
        ones = tl.full(shift.shape, 0xFFFFFFFF, tl.uint32)
        fixed = tl.where(shift == 28, 0, ones << (tl.minimum(shift, 24) + 4)).to(tl.uint32)
        prefix = lo & fixed
        hist = _digit_hist(u, tl.where(done, 0, w), prefix, fixed, shift)
        d, new_above = _pick_digit(hist, above, target)
        above = tl.where(done, above, new_above)
        prefix = prefix | (tl.maximum(d, 0).to(tl.uint32) << shift)
        fixed = fixed | (15 << shift).to(tl.uint32)
        new_lo, new_hi = _key_range(u, live, prefix, fixed)
        lo = tl.where(done, lo, new_lo)
        hi = tl.where(done, hi, new_hi)
        finished = ~done & (lo >= hi)
        result = tl.where(finished & (lo == hi), lo, result)
        done = done | finished
    return result


@triton.jit
def _threshold_chunks(x_ptrs, rmask, n, m, inv_temp, kept, target, reachable, scale,
                      MASS: tl.constexpr, BLOCK: tl.constexpr):
    """_threshold_regs for long rows, without narrowing (its key ranges would cost a read of the
    row each): 8 passes, each recomputing s chunk by chunk (one read of the row a pass)."""
    prefix = tl.zeros(m.shape, tl.uint32)
    above = tl.zeros(m.shape, tl.int64)
    for p in tl.static_range(PASSES):
        hist = tl.zeros((m.shape[0], 16), tl.int64)
        for col0 in range(0, n, BLOCK):
            x, _, cmask = load_tile(x_ptrs, rmask, col0, n, BLOCK)
            s = _scaled(x, cmask, m, inv_temp)
            u = ukey(s)
            w = _weights(s, u, cmask, kept, scale, MASS)
            hist += _digit_hist(u, w, prefix, (1 << 32) - (1 << (32 - 4 * p)), 28 - 4 * p)
        d, above = _pick_digit(hist, above, target)
        prefix = prefix | (tl.maximum(d, 0).to(tl.uint32) << (28 - 4 * p))
    return tl.where(reachable, prefix, 0)


@triton.jit
def _mass_target(z, top_p):
    """ceil(top_p * Z) for the int64 total mass Z (in float64: exact enough for any Z)."""
    want = z.to(tl.float64) * top_p
    t = want.to(tl.int64)
    return t + (t.to(tl.float64) < want).to(tl.int64)


# ----------------------------------------------------------------------------- kernel


@triton.jit
def draw_tile(x, cmask, rows, live, k0, k1, inv_temp, top_k, top_p, scale,
              TOP_K: tl.constexpr, TOP_P: tl.constexpr, BLOCK: tl.constexpr):
    """The draw of every row of one register tile x (ROWS, BLOCK) (cmask: real columns; rows:
    the Philox row of each; live: rows that exist): temperature, the top_k / top_p thresholds,
    then the first argmax of s + Gumbel noise. Returns the (ROWS, 1) int32 column. The
    single-tile path of the sampler, and the in-loop sampler of the generators
    (kernels/causal_conv_generate.py, kernels/masked_conv_generate.py): one code for each draw.
    Python guarantees top_k < n: every live row reaches its target."""
    t = tl.zeros((x.shape[0], 1), tl.uint32)  # the kept set {key >= t}: 0 keeps every column
    s = _scaled(x, cmask, max_nan(x), inv_temp)
    u = ukey(s)
    if TOP_K:
        t = _threshold_regs(u, _weights(s, u, cmask, t, scale, False), top_k, live)
    if TOP_P:
        w = _weights(s, u, cmask, t, scale, True)
        z = tl.sum(w, 1, keep_dims=True)
        target = _mass_target(z, top_p)
        t = tl.maximum(t, _threshold_regs(u, w, target, (z >= target) & (z > 0)))
    z = tl.where(u >= t, s + gumbel_tile(k0, k1, rows, 0, BLOCK), float("-inf"))
    best = tl.full(t.shape, float("-inf"), tl.float32)
    _, idx = first_argmax_step(z, 0, best, tl.zeros(t.shape, tl.int32))
    return idx


@triton.jit
def _sample_categorical_kernel(
    x_ptr,  # logits (R, n), unit column stride
    stride_x,  # elements between rows of x
    seed_ptr,  # int64[1] seed, read on the device
    out_ptr,  # int64[R] sampled column per row
    total,  # R, the number of rows
    n,  # columns per row
    inv_temp,  # 1 / temperature, finite and > 0 unless GREEDY
    top_k,  # keep the top_k largest s (ties kept); used when TOP_K
    top_p,  # keep the smallest head of s holding mass top_p (ties kept); used when TOP_P
    scale,  # 2^S of the fixed-point masses (mass_scale(n))
    GREEDY: tl.constexpr,  # inv_temperature == inf: first argmax of x', no noise, no filter
    TOP_K: tl.constexpr,  # 0 < top_k < n
    TOP_P: tl.constexpr,  # top_p < 1
    SINGLE: tl.constexpr,  # n <= BLOCK: rows stay in registers
    ROWS: tl.constexpr,  # rows per program, a power of two
    BLOCK: tl.constexpr,  # columns per chunk, a power of two >= 16
):
    rows, rmask = row_block(tl.program_id(0), total, ROWS)
    x_ptrs = x_ptr + rows[:, None] * stride_x
    best = tl.full((ROWS, 1), float("-inf"), tl.float32)
    idx = tl.zeros((ROWS, 1), tl.int32)
    if GREEDY:
        # The first argmax of x' is the first argmax of x for every row without NaN.
        for col0 in range(0, n, BLOCK):
            x, _, _ = load_tile(x_ptrs, rmask, col0, n, BLOCK)
            best, idx = first_argmax_step(x, col0, best, idx)
    else:
        k0, k1 = seed_key(seed_ptr)
        t = tl.zeros((ROWS, 1), tl.uint32)  # kept set {key >= t}: 0 keeps every column
        if SINGLE:
            x, _, cmask = load_tile(x_ptrs, rmask, 0, n, BLOCK)
            idx = draw_tile(x, cmask, rows, rmask[:, None], k0, k1, inv_temp, top_k, top_p,
                            scale, TOP_K, TOP_P, BLOCK)
        else:
            m = row_max(x_ptrs, rmask, n, ROWS, BLOCK)
            if TOP_K:
                t = _threshold_chunks(x_ptrs, rmask, n, m, inv_temp, t, top_k, rmask[:, None],
                                      scale, False, BLOCK)
            if TOP_P:
                z_sum = tl.zeros((ROWS, 1), tl.int64)
                for col0 in range(0, n, BLOCK):
                    x, _, cmask = load_tile(x_ptrs, rmask, col0, n, BLOCK)
                    s = _scaled(x, cmask, m, inv_temp)
                    z_sum += tl.sum(_weights(s, ukey(s), cmask, t, scale, True), 1, keep_dims=True)
                target = _mass_target(z_sum, top_p)
                t = tl.maximum(t, _threshold_chunks(x_ptrs, rmask, n, m, inv_temp, t, target,
                                                    z_sum >= target, scale, True, BLOCK))
            for col0 in range(0, n, BLOCK):
                x, _, cmask = load_tile(x_ptrs, rmask, col0, n, BLOCK)
                s = _scaled(x, cmask, m, inv_temp)
                z = tl.where(ukey(s) >= t, s + gumbel_tile(k0, k1, rows, col0, BLOCK),
                             float("-inf"))
                best, idx = first_argmax_step(z, col0, best, idx)
    tl.store(out_ptr + rows[:, None], idx.to(tl.int64), mask=rmask[:, None])


# ----------------------------------------------------------------------------- launcher


def sample_categorical(x: torch.Tensor, seed: torch.Tensor, inv_temperature: float, top_k: int,
                       top_p: float, out: torch.Tensor, *, block: int | None = None,
                       rows_per_program: int | None = None) -> torch.Tensor:
    """One column index per row into `out` (int64 (R,)): Gumbel-max over the kept set.

    `block` and `rows_per_program` force the tiling (tests); by default short rows are packed
    several to a program and long rows walked in chunks (kernels/gumbel.py tile_config).
    """
    check_rows("x", x, DTYPES, slack=CHUNK)
    check_seed(seed, x.device)
    check_positive("inv_temperature", inv_temperature, allow_inf=True)
    check_count("top_k", top_k)
    if not top_p > 0:
        raise ValueError(f"top_p must be > 0 (>= 1: off), got {top_p}")
    rows, n = x.shape
    check_like("out", out, (rows,), torch.int64, x.device)
    if rows and not n:
        raise ValueError("x must have at least one column to sample from")
    if rows:
        greedy = math.isinf(inv_temperature)
        use_k = not greedy and 0 < top_k < n
        use_p = not greedy and top_p < 1.0
        limits = FILTER_LIMITS if use_k or use_p else {}
        cfg = tile_config(rows, n, block, rows_per_program, **limits)
        inv_t = 1.0 if greedy else float(inv_temperature)
        args = (x, row_stride(x), seed, out, rows, n, inv_t, min(top_k, n), min(float(top_p), 1.0),
                mass_scale(n))
        launch(_sample_categorical_kernel, x, args, cfg, GREEDY=greedy, TOP_K=use_k, TOP_P=use_p)
    return out
