"""Triton kernels for Gumbel-Softmax and Gumbel-max sampling, and their launchers.

The semantics (noise stream, hostile-row preprocessing, forward, backward, sampling) are the
contract in the docstring of genfast/ops/gumbel.py; this file implements it and never redefines
it. The launchers take the 2-D (rows, n) view the ops build: unit column stride, any row stride.

One program per row. A row of at most _MAX_SINGLE columns lives in registers: the logits are read
once and the output written once. Longer rows are walked in BLOCK-wide chunks: pass 0 takes the
row max m, pass 1 reduces online (softmax max and sum, or first argmax), pass 2 regenerates the
noise from its counter (cheaper than storing it) and writes. Pass 0 is separate because the
preprocessing needs m before any a[c] = (x'[c] - m') + g[c] exists, and forming a[c] exactly as
the contract does keeps this backend's rounding (so its argmaxes) the same as the others'.

Sampling thresholds (top_k, top_p) are found without sorting: a bisection over an int32 key whose
order is the float order of s, each step a masked count (top_k) or masked mass (top_p) over the
row. It ends on one exact s value (at most 32 steps), so ties are kept as the contract wants.
"""

from __future__ import annotations

import contextlib
import math

import torch
import triton
import triton.language as tl

from ._philox import gumbel_block, seed_key

_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
_MAX_SINGLE = 8192  # longest row kept in registers (16 warps: 16 fp32 values a thread per tensor)
_CHUNK = 4096  # chunk width of the multi-pass path
_KEY_NEG_INF = tl.constexpr(-2139095041)  # _ordered_key(-inf): the lowest key of a non-NaN s


# ----------------------------------------------------------------------------- device helpers


@triton.jit
def _max_nan(x):
    """Max of a chunk that is NaN if any element is: a NaN logit poisons its row (contract)."""
    # tl.max skips NaNs. A NaN count beside it is two plain reductions, which the interpreter runs
    # vectorised; a custom NaN-propagating combine function it would run element by element.
    return tl.where(tl.sum((x != x).to(tl.int32), 0) > 0, float("nan"), tl.max(x, 0))


@triton.jit
def _load_chunk(row_ptr, col0, n, BLOCK: tl.constexpr):
    cols = col0 + tl.arange(0, BLOCK)
    mask = cols < n
    # -inf padding is neutral for every max, argmax and exp below; math is fp32 for every dtype.
    x = tl.load(row_ptr + cols, mask=mask, other=float("-inf")).to(tl.float32)
    return x, cols, mask


@triton.jit
def _row_max(row_ptr, n, BLOCK: tl.constexpr):
    m = tl.full((), float("-inf"), tl.float32)
    for col0 in range(0, n, BLOCK):
        x, _, _ = _load_chunk(row_ptr, col0, n, BLOCK)
        m = tl.maximum(m, _max_nan(x), propagate_nan=tl.PropagateNan.ALL)
    return m


@triton.jit
def _centered(x, m):
    """x' - m' of the contract's row preprocessing, for a row whose max is m (NaN m: all NaN)."""
    # Subtracting only a finite max keeps inf - inf out of the arithmetic, not just the result.
    finite_m = tl.where((m == float("inf")) | (m == float("-inf")), 0.0, m)
    xc = tl.where(m == float("inf"), tl.where(x == float("inf"), 0.0, float("-inf")), x - finite_m)
    return tl.where(m == float("-inf"), 0.0, xc)


@triton.jit
def _perturbed(row_ptr, col0, n, m, k0, k1, row, BLOCK: tl.constexpr):
    """a = (x' - m') + g over one chunk; -inf on padding (which _centered may have set to 0)."""
    x, cols, mask = _load_chunk(row_ptr, col0, n, BLOCK)
    a = _centered(x, m) + gumbel_block(k0, k1, row, col0, BLOCK)
    return tl.where(mask, a, float("-inf")), cols, mask


@triton.jit
def _soft_single(x_row, n, k0, k1, row, inv_tau, BLOCK: tl.constexpr):
    """The soft forward of a row that fits one block, in registers."""
    x, cols, mask = _load_chunk(x_row, 0, n, BLOCK)
    m = _max_nan(x)
    a = tl.where(mask, _centered(x, m) + gumbel_block(k0, k1, row, 0, BLOCK), float("-inf"))
    e = tl.exp((a - tl.max(a, 0)) * inv_tau)
    return e / tl.sum(e, 0), cols, mask


@triton.jit
def _softmax_stats(
    x_row, dy_row, n, m, k0, k1, row, inv_tau, WITH_DOT: tl.constexpr, BLOCK: tl.constexpr
):
    """Online A = max a, S = sum exp((a - A) inv_tau) and, if WITH_DOT, D = sum dy exp(...)."""
    big_a = tl.full((), float("-inf"), tl.float32)
    s = tl.zeros((), tl.float32)
    d = tl.zeros((), tl.float32)
    for col0 in range(0, n, BLOCK):
        a, cols, mask = _perturbed(x_row, col0, n, m, k0, k1, row, BLOCK)
        new_a = tl.maximum(big_a, tl.max(a, 0))
        # Until a finite a[c] is seen the max is -inf; shifting by 0 then avoids -inf - -inf = NaN.
        shift = tl.where(new_a == float("-inf"), 0.0, new_a)
        scale = tl.exp((big_a - shift) * inv_tau)
        e = tl.exp((a - shift) * inv_tau)
        s = s * scale + tl.sum(e, 0)
        if WITH_DOT:
            dy = tl.load(dy_row + cols, mask=mask, other=0.0).to(tl.float32)
            d = d * scale + tl.sum(dy * e, 0)
        big_a = new_a
    return big_a, s, d


@triton.jit
def _ordered_key(s):
    # Flipping the magnitude bits of negative floats makes signed int32 order the float order
    # (NaN aside), so thresholds can be bisected over integers, exactly.
    b = s.to(tl.int32, bitcast=True)
    return b ^ ((b >> 31) & 0x7FFFFFFF)


@triton.jit
def _scaled(x, mask, m, inv_temp):
    """s = (x' - m') * inv_temperature, -inf on padding."""
    s = tl.where(mask, _centered(x, m) * inv_temp, float("-inf"))
    # -0.0 (an underflowed product) equals +0.0 as a float but not as a key: canonicalise it.
    return tl.where(s == 0.0, 0.0, s)


@triton.jit
def _bisect_step(lo, hi, take, above, below):
    # Invariant: the answer is the largest key t in (lo, hi] with weight(key >= t) >= target,
    # or lo if there is none. `take` says whether mid = lo + ceil((hi - lo) / 2) qualifies; the
    # moved bound then snaps to the nearest key present in the row (above: the smallest key
    # >= mid, same weight as mid; below: the largest key < mid). The range at least halves, so
    # 32 steps always suffice; snapping usually ends it after about log2(n).
    return tl.where(take, above, lo), tl.where(take, hi, tl.maximum(below, lo))


@triton.jit
def _threshold_regs(key, w, lo, target):
    """Largest key t >= lo with sum(w[key >= t]) >= target, else lo; the row is in registers."""
    hi = tl.zeros((), tl.int32)  # key of +0.0, the largest s: the centred max is exactly 0
    while lo < hi:
        mid = lo + ((hi - lo + 1) >> 1)
        ge = key >= mid
        lo, hi = _bisect_step(
            lo,
            hi,
            tl.sum(tl.where(ge, w, 0), 0) >= target,
            tl.min(tl.where(ge, key, hi), 0),
            tl.max(tl.where(ge, lo, key), 0),
        )
    return lo


@triton.jit
def _threshold_chunks(
    x_row, n, m, inv_temp, lo, target, z, MASS: tl.constexpr, BLOCK: tl.constexpr
):
    """_threshold_regs for long rows: each step recomputes s chunk by chunk. The weight is 1
    (top_k: a count) or, if MASS, exp(s) / z (top_p: probability over the kept set)."""
    hi = tl.zeros((), tl.int32)
    while lo < hi:
        mid = lo + ((hi - lo + 1) >> 1)
        if MASS:
            total = tl.zeros((), tl.float32)
        else:
            total = tl.zeros((), tl.int32)
        above = hi
        below = lo
        for col0 in range(0, n, BLOCK):
            x, _, mask = _load_chunk(x_row, col0, n, BLOCK)
            s = _scaled(x, mask, m, inv_temp)
            key = _ordered_key(s)
            ge = key >= mid
            if MASS:
                total += tl.sum(tl.where(ge, tl.exp(s) / z, 0.0), 0)
            else:
                total += tl.sum(ge.to(tl.int32), 0)
            above = tl.minimum(above, tl.min(tl.where(ge, key, hi), 0))
            below = tl.maximum(below, tl.max(tl.where(ge, lo, key), 0))
        lo, hi = _bisect_step(lo, hi, total >= target, above, below)
    return lo


@triton.jit
def _first_argmax_step(z, col0, best, idx):
    """Fold one chunk into the running (max, first argmax); -inf padding never wins a chunk."""
    # NaN only occurs in NaN rows, whose index is free; mapping it to -inf keeps idx inside the
    # row (the interpreter's nanargmax would even raise on an all-NaN chunk).
    z = tl.where(z != z, float("-inf"), z)
    cmax, cidx = tl.max(z, 0, return_indices=True)
    # Strict >: an equal maximum in a later chunk loses, so idx stays the *first* argmax.
    take = cmax > best
    return tl.where(take, cmax, best), tl.where(take, col0 + cidx, idx)


# ----------------------------------------------------------------------------- kernels


@triton.jit
def _gumbel_softmax_fwd_kernel(
    x_ptr,  # logits (R, n), unit column stride
    stride_x,  # elements between rows of x: views need no copy
    seed_ptr,  # int64[1] seed, read on the device so the host never syncs
    y_ptr,  # output (R, n), contiguous, x's dtype
    n,  # columns per row
    inv_tau,  # 1 / tau, finite and > 0 (checked by the launcher)
    HARD: tl.constexpr,  # write one_hot(first argmax of a) instead of the soft sample
    SINGLE: tl.constexpr,  # n <= BLOCK: the row stays in registers
    BLOCK: tl.constexpr,  # columns per chunk, a power of two >= 16
):
    row = tl.program_id(0).to(tl.int64)  # int64: row * stride may pass 2^31
    x_row = x_ptr + row * stride_x
    y_row = y_ptr + row * n
    k0, k1 = seed_key(seed_ptr)
    nan = float("nan")
    if SINGLE:
        if HARD:
            x, cols, mask = _load_chunk(x_row, 0, n, BLOCK)
            m = _max_nan(x)
            a = _centered(x, m) + gumbel_block(k0, k1, row, 0, BLOCK)
            a = tl.where(mask, a, float("-inf"))
            _, j = _first_argmax_step(a, 0, tl.full((), float("-inf"), tl.float32), 0)
            y = tl.where(m == m, tl.where(cols == j, 1.0, 0.0), nan)
        else:
            y, cols, mask = _soft_single(x_row, n, k0, k1, row, inv_tau, BLOCK)
        tl.store(y_row + cols, y.to(y_ptr.dtype.element_ty), mask=mask)
    else:
        m = _row_max(x_row, n, BLOCK)
        if HARD:
            best = tl.full((), float("-inf"), tl.float32)
            j = tl.zeros((), tl.int32)
            for col0 in range(0, n, BLOCK):
                a, _, _ = _perturbed(x_row, col0, n, m, k0, k1, row, BLOCK)
                best, j = _first_argmax_step(a, col0, best, j)
            for col0 in range(0, n, BLOCK):
                cols = col0 + tl.arange(0, BLOCK)
                y = tl.where(m == m, tl.where(cols == j, 1.0, 0.0), nan)
                tl.store(y_row + cols, y.to(y_ptr.dtype.element_ty), mask=cols < n)
        else:
            big_a, s, _ = _softmax_stats(x_row, x_row, n, m, k0, k1, row, inv_tau, False, BLOCK)
            for col0 in range(0, n, BLOCK):
                a, cols, mask = _perturbed(x_row, col0, n, m, k0, k1, row, BLOCK)
                y = tl.exp((a - big_a) * inv_tau) / s
                tl.store(y_row + cols, y.to(y_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _gumbel_softmax_bwd_kernel(
    dy_ptr,  # upstream gradient (R, n), unit column stride
    stride_dy,  # elements between rows of dy
    src_ptr,  # saved soft output y, or the logits when RECOMPUTE
    stride_src,  # elements between rows of src
    seed_ptr,  # int64[1] seed of the forward (read only when RECOMPUTE)
    dx_ptr,  # output (R, n), contiguous, src's dtype
    n,  # columns per row
    inv_tau,  # 1 / tau of the forward
    RECOMPUTE: tl.constexpr,  # regenerate y from logits + noise: hard=True saves no y
    SINGLE: tl.constexpr,  # n <= BLOCK: the row stays in registers
    BLOCK: tl.constexpr,  # columns per chunk, a power of two >= 16
):
    row = tl.program_id(0).to(tl.int64)
    dy_row = dy_ptr + row * stride_dy
    src_row = src_ptr + row * stride_src
    dx_row = dx_ptr + row * n
    if RECOMPUTE:
        k0, k1 = seed_key(seed_ptr)
    if SINGLE:
        cols = tl.arange(0, BLOCK)
        mask = cols < n
        dy = tl.load(dy_row + cols, mask=mask, other=0.0).to(tl.float32)
        if RECOMPUTE:
            y, _, _ = _soft_single(src_row, n, k0, k1, row, inv_tau, BLOCK)
        else:
            y = tl.load(src_row + cols, mask=mask, other=0.0).to(tl.float32)
        dot = tl.sum(dy * y, 0)
        dx = y * (dy - dot) * inv_tau
        tl.store(dx_row + cols, dx.to(dx_ptr.dtype.element_ty), mask=mask)
    else:
        if RECOMPUTE:
            m = _row_max(src_row, n, BLOCK)
            # The dot product rides along the online softmax: D and S rescale together.
            big_a, s, d = _softmax_stats(src_row, dy_row, n, m, k0, k1, row, inv_tau, True, BLOCK)
            dot = d / s
        else:
            acc = tl.zeros([BLOCK], tl.float32)
            for col0 in range(0, n, BLOCK):
                cols = col0 + tl.arange(0, BLOCK)
                mask = cols < n
                dy = tl.load(dy_row + cols, mask=mask, other=0.0).to(tl.float32)
                acc += dy * tl.load(src_row + cols, mask=mask, other=0.0).to(tl.float32)
            dot = tl.sum(acc, 0)
        for col0 in range(0, n, BLOCK):
            cols = col0 + tl.arange(0, BLOCK)
            mask = cols < n
            dy = tl.load(dy_row + cols, mask=mask, other=0.0).to(tl.float32)
            if RECOMPUTE:
                a, _, _ = _perturbed(src_row, col0, n, m, k0, k1, row, BLOCK)
                y = tl.exp((a - big_a) * inv_tau) / s
            else:
                y = tl.load(src_row + cols, mask=mask, other=0.0).to(tl.float32)
            dx = y * (dy - dot) * inv_tau
            tl.store(dx_row + cols, dx.to(dx_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _sample_categorical_kernel(
    x_ptr,  # logits (R, n), unit column stride
    stride_x,  # elements between rows of x
    seed_ptr,  # int64[1] seed, read on the device
    out_ptr,  # int64[R] sampled column per row
    n,  # columns per row
    inv_temp,  # 1 / temperature, finite and > 0 unless GREEDY
    top_k,  # keep the top_k largest s (ties kept); used when TOP_K
    top_p,  # keep the smallest head of s holding mass top_p (ties kept); used when TOP_P
    GREEDY: tl.constexpr,  # inv_temperature == inf: first argmax of x', no noise, no filter
    TOP_K: tl.constexpr,  # 0 < top_k < n
    TOP_P: tl.constexpr,  # top_p < 1
    SINGLE: tl.constexpr,  # n <= BLOCK: the row stays in registers
    BLOCK: tl.constexpr,  # columns per chunk, a power of two >= 16
):
    row = tl.program_id(0).to(tl.int64)
    x_row = x_ptr + row * stride_x
    best = tl.full((), float("-inf"), tl.float32)
    idx = tl.zeros((), tl.int32)
    if GREEDY:
        # The first argmax of x' is the first argmax of x for every row without NaN.
        for col0 in range(0, n, BLOCK):
            x, _, _ = _load_chunk(x_row, col0, n, BLOCK)
            best, idx = _first_argmax_step(x, col0, best, idx)
    else:
        k0, k1 = seed_key(seed_ptr)
        lo = tl.full((), _KEY_NEG_INF, tl.int32)  # every column kept
        if SINGLE:
            x, _, mask = _load_chunk(x_row, 0, n, BLOCK)
            s = _scaled(x, mask, _max_nan(x), inv_temp)
            key = _ordered_key(s)
            if TOP_K:
                lo = _threshold_regs(key, 1, lo, top_k)
            if TOP_P:
                # exp(s) needs no max shift: the centred max is 0, so exp(s) <= 1.
                e = tl.where(key >= lo, tl.exp(s), 0.0)
                lo = _threshold_regs(key, e / tl.sum(e, 0), lo, top_p)
            z = tl.where(key >= lo, s + gumbel_block(k0, k1, row, 0, BLOCK), float("-inf"))
            best, idx = _first_argmax_step(z, 0, best, idx)
        else:
            m = _row_max(x_row, n, BLOCK)
            if TOP_K:
                lo = _threshold_chunks(x_row, n, m, inv_temp, lo, top_k, 1.0, False, BLOCK)
            if TOP_P:
                z_sum = tl.zeros((), tl.float32)
                for col0 in range(0, n, BLOCK):
                    x, _, mask = _load_chunk(x_row, col0, n, BLOCK)
                    s = _scaled(x, mask, m, inv_temp)
                    z_sum += tl.sum(tl.where(_ordered_key(s) >= lo, tl.exp(s), 0.0), 0)
                lo = _threshold_chunks(x_row, n, m, inv_temp, lo, top_p, z_sum, True, BLOCK)
            for col0 in range(0, n, BLOCK):
                x, _, mask = _load_chunk(x_row, col0, n, BLOCK)
                s = _scaled(x, mask, m, inv_temp)
                z = s + gumbel_block(k0, k1, row, col0, BLOCK)
                z = tl.where(_ordered_key(s) >= lo, z, float("-inf"))
                best, idx = _first_argmax_step(z, col0, best, idx)
    tl.store(out_ptr + row, idx.to(tl.int64))


# ----------------------------------------------------------------------------- launchers


def _check_rows(name: str, t: torch.Tensor) -> None:
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if t.dim() != 2:
        raise ValueError(f"{name} must be 2-D (rows, n), got shape {tuple(t.shape)}")
    if t.dtype not in _DTYPES:
        raise TypeError(f"{name} must be float32, float16 or bfloat16, got {t.dtype}")
    if t.size(1) > 1 and t.stride(1) != 1:
        raise ValueError(f"{name} must have column stride 1, got strides {t.stride()}")
    if t.size(0) >= 2**31 or t.size(1) >= 2**31 - _CHUNK:
        raise ValueError(f"{name} has shape {tuple(t.shape)}; rows and n must stay below 2**31")


def _check_like(name: str, t: torch.Tensor, ref: torch.Tensor) -> None:
    if t.shape != ref.shape or t.device != ref.device:
        raise ValueError(
            f"{name} must have shape {tuple(ref.shape)} on {ref.device}, "
            f"got {tuple(t.shape)} on {t.device}"
        )


def _check_out(
    out: torch.Tensor, shape: tuple[int, ...], dtype: torch.dtype, device: torch.device
) -> None:
    if not isinstance(out, torch.Tensor):
        raise TypeError(f"out must be a torch.Tensor, got {type(out).__name__}")
    if tuple(out.shape) != shape or out.dtype != dtype or out.device != device:
        raise ValueError(
            f"out must be {dtype} of shape {shape} on {device}, "
            f"got {out.dtype} of shape {tuple(out.shape)} on {out.device}"
        )
    if not out.is_contiguous():
        raise ValueError("out must be contiguous")


def _check_seed(seed: torch.Tensor, device: torch.device) -> None:
    if (
        not isinstance(seed, torch.Tensor)
        or seed.dtype != torch.int64
        or seed.numel() != 1
        or seed.device != device
    ):
        got = (
            f"{seed.dtype} of shape {tuple(seed.shape)} on {seed.device}"
            if isinstance(seed, torch.Tensor)
            else type(seed).__name__
        )
        raise ValueError(f"seed must be a 1-element int64 tensor on {device}, got {got}")


def _check_positive(name: str, v: float, allow_inf: bool = False) -> None:
    if not (v > 0 and (allow_inf or math.isfinite(v))):
        raise ValueError(f"{name} must be {'> 0' if allow_inf else 'finite and > 0'}, got {v}")


def _config(n: int, block: int | None) -> tuple[int, bool, int]:
    """(BLOCK, SINGLE, num_warps) for rows of n columns; `block` forces the chunk width."""
    if block is None:
        single = n <= _MAX_SINGLE
        block = max(16, triton.next_power_of_2(n)) if single else _CHUNK
    elif block < 16 or block & (block - 1):
        raise ValueError(f"block must be a power of two >= 16, got {block}")
    else:
        single = n <= block
    # Untuned: about 8 to 16 fp32 values a thread per live tensor, as Triton's softmax tutorial.
    num_warps = 16 if block >= 4096 else 8 if block >= 2048 else 4 if block >= 512 else 2
    return block, single, num_warps


def _launch(kernel, like: torch.Tensor, block: int | None, args: tuple, **meta) -> None:
    rows, n = like.shape
    blk, single, warps = _config(n, block)
    # Triton launches on the current device: make it the tensor's (no-op on the CPU).
    guard = torch.cuda.device(like.device) if like.is_cuda else contextlib.nullcontext()
    with guard:
        kernel[(rows,)](*args, SINGLE=single, BLOCK=blk, num_warps=warps, **meta)


def gumbel_softmax_fwd(
    x: torch.Tensor,
    seed: torch.Tensor,
    inv_tau: float,
    hard: bool,
    out: torch.Tensor,
    *,
    block: int | None = None,
) -> torch.Tensor:
    """Gumbel-Softmax forward of the contract into `out` (x's dtype, contiguous (R, n))."""
    _check_rows("x", x)
    _check_seed(seed, x.device)
    _check_positive("inv_tau", inv_tau)
    _check_out(out, tuple(x.shape), x.dtype, x.device)
    if x.numel():
        args = (x, x.stride(0), seed, out, x.shape[1], float(inv_tau))
        _launch(_gumbel_softmax_fwd_kernel, x, block, args, HARD=bool(hard))
    return out


def gumbel_softmax_bwd(
    dy: torch.Tensor,
    src: torch.Tensor,
    seed: torch.Tensor,
    inv_tau: float,
    recompute: bool,
    out: torch.Tensor,
    *,
    block: int | None = None,
) -> torch.Tensor:
    """dx of the contract into `out` (src's dtype); src is y, or the logits when recompute."""
    _check_rows("dy", dy)
    _check_rows("src", src)
    _check_like("dy", dy, src)
    _check_seed(seed, src.device)
    _check_positive("inv_tau", inv_tau)
    _check_out(out, tuple(src.shape), src.dtype, src.device)
    if src.numel():
        args = (dy, dy.stride(0), src, src.stride(0), seed, out, src.shape[1], float(inv_tau))
        _launch(_gumbel_softmax_bwd_kernel, src, block, args, RECOMPUTE=bool(recompute))
    return out


def sample_categorical(
    x: torch.Tensor,
    seed: torch.Tensor,
    inv_temperature: float,
    top_k: int,
    top_p: float,
    out: torch.Tensor,
    *,
    block: int | None = None,
) -> torch.Tensor:
    """One column index per row into `out` (int64 (R,)): Gumbel-max over the kept set."""
    _check_rows("x", x)
    _check_seed(seed, x.device)
    _check_positive("inv_temperature", inv_temperature, allow_inf=True)
    if isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 0:
        raise ValueError(f"top_k must be an int >= 0 (0: off), got {top_k!r}")
    if not top_p > 0:
        raise ValueError(f"top_p must be > 0 (>= 1: off), got {top_p}")
    rows, n = x.shape
    _check_out(out, (rows,), torch.int64, x.device)
    if rows and not n:
        raise ValueError("x must have at least one column to sample from")
    if rows:
        greedy = math.isinf(inv_temperature)
        inv_t = 1.0 if greedy else float(inv_temperature)
        args = (x, x.stride(0), seed, out, n, inv_t, min(top_k, n), min(float(top_p), 1.0))
        meta = dict(
            GREEDY=greedy, TOP_K=not greedy and 0 < top_k < n, TOP_P=not greedy and top_p < 1.0
        )
        _launch(_sample_categorical_kernel, x, block, args, **meta)
    return out
