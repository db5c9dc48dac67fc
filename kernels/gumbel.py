"""Triton Gumbel-Softmax kernels, their launchers, and the row helpers kernels/sample.py shares.

The semantics (noise stream, hostile-row preprocessing, forward, backward) are the contract in the
docstring of genfast/ops/gumbel.py; this file implements it and never redefines it. The launchers
take the 2-D (rows, n) view the ops build: unit column stride, any row stride.

Dispatch by shape, from host-side sizes (tile_config):
* n <= _MAX_SINGLE: a row lives in registers (logits read once, output written once). Short
  rows are packed, ROWS of them per program as a (ROWS, BLOCK) tile of about _PACK_TILE elements
  (as Liger's softmax packs rows): a 10-class row no longer costs a program, and its reductions
  run along axis 1 of the tile. ROWS = 1 is the same code with a one-row tile.
* longer rows: one program per row walks BLOCK-wide chunks. Pass 0 takes the row max m, pass 1
  reduces online (softmax max and sum, or first argmax), pass 2 regenerates the noise from its
  counter (cheaper than storing it) and writes. Pass 0 is separate because the preprocessing
  needs m before any a[c] = (x'[c] - m') + g[c] exists, and forming a[c] exactly as the contract
  does keeps this backend's rounding (so its argmaxes) the same as the others'.
Every helper works on (ROWS, BLOCK) tiles and returns per-row values as (ROWS, 1).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ._launch import check_like, check_positive, check_rows, check_seed, device_guard, pow2_block
from ._launch import row_stride as _row_stride
from ._philox import gumbel_tile, seed_key

DTYPES = (torch.float32, torch.float16, torch.bfloat16)
MAX_SINGLE = 8192  # longest row kept in registers (16 warps: 16 fp32 values a thread per tensor)
CHUNK = 4096  # chunk width of the multi-pass path
PACK_TILE = 2048  # elements of a packed tile: 16 fp32 values a thread at 4 warps


# ----------------------------------------------------------------------------- device helpers


@triton.jit
def row_block(pid, total, ROWS: tl.constexpr):
    """The rows of program `pid` (int64: row * stride may pass 2^31) and which of them exist."""
    rows = pid.to(tl.int64) * ROWS + tl.arange(0, ROWS)
    return rows, rows < total


@triton.jit
def load_tile(row_ptrs, rmask, col0, n, BLOCK: tl.constexpr):
    """x[:, col0 : col0 + BLOCK] in float32, and the in-row column mask (1, BLOCK).

    Padding reads as -inf, which every max, argmax and exp below ignores; a padding row (past the
    last row of a partial pack) is all -inf, so it computes the defined uniform row, never NaN.
    """
    cols = col0 + tl.arange(0, BLOCK)
    cmask = (cols < n)[None, :]
    x = tl.load(row_ptrs + cols[None, :], mask=rmask[:, None] & cmask, other=float("-inf"))
    return x.to(tl.float32), cols[None, :], cmask


@triton.jit
def max_nan(x):
    """Row max of a tile that is NaN if any element is: a NaN logit poisons its row (contract)."""
    # tl.max skips NaNs. A NaN count beside it is two plain reductions, which the interpreter runs
    # vectorised; a custom NaN-propagating combine function it would run element by element.
    has_nan = tl.sum((x != x).to(tl.int32), 1, keep_dims=True) > 0
    return tl.where(has_nan, float("nan"), tl.max(x, 1, keep_dims=True))


@triton.jit
def row_max(row_ptrs, rmask, n, ROWS: tl.constexpr, BLOCK: tl.constexpr):
    m = tl.full((ROWS, 1), float("-inf"), tl.float32)
    for col0 in range(0, n, BLOCK):
        x, _, _ = load_tile(row_ptrs, rmask, col0, n, BLOCK)
        m = tl.maximum(m, max_nan(x), propagate_nan=tl.PropagateNan.ALL)
    return m


@triton.jit
def centered(x, m):
    """x' - m' of the contract's row preprocessing, for rows whose max is m (NaN m: all NaN)."""
    # Subtracting only a finite max keeps inf - inf out of the arithmetic, not just the result.
    finite_m = tl.where((m == float("inf")) | (m == float("-inf")), 0.0, m)
    xc = tl.where(m == float("inf"), tl.where(x == float("inf"), 0.0, float("-inf")), x - finite_m)
    return tl.where(m == float("-inf"), 0.0, xc)


@triton.jit
def first_argmax_step(z, col0, best, idx):
    """Fold one chunk into the running per-row (max, first argmax); -inf padding never wins."""
    # NaN only occurs in NaN rows, whose index is free; mapping it to -inf keeps idx inside the
    # row (the interpreter's nanargmax would even raise on an all-NaN chunk).
    z = tl.where(z != z, float("-inf"), z)
    cmax, cidx = tl.max(z, 1, return_indices=True, keep_dims=True)
    # Strict >: an equal maximum in a later chunk loses, so idx stays the *first* argmax.
    take = cmax > best
    return tl.where(take, cmax, best), tl.where(take, col0 + cidx, idx)


@triton.jit
def _perturbed(row_ptrs, rmask, rows, col0, n, m, k0, k1, BLOCK: tl.constexpr):
    """a = (x' - m') + g over one chunk; -inf on padding columns."""
    x, cols, cmask = load_tile(row_ptrs, rmask, col0, n, BLOCK)
    a = centered(x, m) + gumbel_tile(k0, k1, rows, col0, BLOCK)
    return tl.where(cmask, a, float("-inf")), cols


@triton.jit
def _soft_tile(row_ptrs, rmask, rows, n, k0, k1, inv_tau, BLOCK: tl.constexpr):
    """The soft forward of rows that fit one block, in registers."""
    x, cols, cmask = load_tile(row_ptrs, rmask, 0, n, BLOCK)
    a = centered(x, max_nan(x)) + gumbel_tile(k0, k1, rows, 0, BLOCK)
    a = tl.where(cmask, a, float("-inf"))
    e = tl.exp((a - tl.max(a, 1, keep_dims=True)) * inv_tau)
    return e / tl.sum(e, 1, keep_dims=True), cols, cmask


@triton.jit
def _softmax_stats(x_ptrs, dy_ptrs, rmask, rows, n, m, k0, k1, inv_tau,
                   WITH_DOT: tl.constexpr, BLOCK: tl.constexpr):
    """Online A = max a, S = sum exp((a - A) inv_tau) and, if WITH_DOT, D = sum dy exp(...)."""
    big_a = tl.full(m.shape, float("-inf"), tl.float32)
    s = tl.zeros(m.shape, tl.float32)
    d = tl.zeros(m.shape, tl.float32)
    for col0 in range(0, n, BLOCK):
        a, cols = _perturbed(x_ptrs, rmask, rows, col0, n, m, k0, k1, BLOCK)
        new_a = tl.maximum(big_a, tl.max(a, 1, keep_dims=True))
        # Until a finite a[c] is seen the max is -inf; shifting by 0 then avoids -inf - -inf = NaN.
        shift = tl.where(new_a == float("-inf"), 0.0, new_a)
        scale = tl.exp((big_a - shift) * inv_tau)
        e = tl.exp((a - shift) * inv_tau)
        s = s * scale + tl.sum(e, 1, keep_dims=True)
        if WITH_DOT:
            dy = tl.load(dy_ptrs + cols, mask=rmask[:, None] & (cols < n), other=0.0)
            d = d * scale + tl.sum(dy.to(tl.float32) * e, 1, keep_dims=True)
        big_a = new_a
    return big_a, s, d


# ----------------------------------------------------------------------------- kernels


@triton.jit
def _gumbel_softmax_fwd_kernel(
    x_ptr,  # logits (R, n), unit column stride
    stride_x,  # elements between rows of x: views need no copy
    seed_ptr,  # int64[1] seed, read on the device so the host never syncs
    y_ptr,  # output (R, n), contiguous, x's dtype
    total,  # R, the number of rows
    n,  # columns per row
    inv_tau,  # 1 / tau, finite and > 0 (checked by the launcher)
    HARD: tl.constexpr,  # write one_hot(first argmax of a) instead of the soft sample
    SINGLE: tl.constexpr,  # n <= BLOCK: rows stay in registers
    ROWS: tl.constexpr,  # rows per program, a power of two
    BLOCK: tl.constexpr,  # columns per chunk, a power of two >= 16
):
    rows, rmask = row_block(tl.program_id(0), total, ROWS)
    x_ptrs = x_ptr + rows[:, None] * stride_x
    y_ptrs = y_ptr + rows[:, None] * n
    k0, k1 = seed_key(seed_ptr)
    if SINGLE:
        if HARD:
            x, cols, cmask = load_tile(x_ptrs, rmask, 0, n, BLOCK)
            m = max_nan(x)
            a = centered(x, m) + gumbel_tile(k0, k1, rows, 0, BLOCK)
            best = tl.full((ROWS, 1), float("-inf"), tl.float32)
            _, j = first_argmax_step(tl.where(cmask, a, float("-inf")), 0, best,
                                     tl.zeros((ROWS, 1), tl.int32))
            y = tl.where(m == m, tl.where(cols == j, 1.0, 0.0), float("nan"))
        else:
            y, cols, cmask = _soft_tile(x_ptrs, rmask, rows, n, k0, k1, inv_tau, BLOCK)
        tl.store(y_ptrs + cols, y.to(y_ptr.dtype.element_ty), mask=rmask[:, None] & cmask)
    else:
        m = row_max(x_ptrs, rmask, n, ROWS, BLOCK)
        if HARD:
            best = tl.full((ROWS, 1), float("-inf"), tl.float32)
            j = tl.zeros((ROWS, 1), tl.int32)
            for col0 in range(0, n, BLOCK):
                a, _ = _perturbed(x_ptrs, rmask, rows, col0, n, m, k0, k1, BLOCK)
                best, j = first_argmax_step(a, col0, best, j)
            for col0 in range(0, n, BLOCK):
                cols = (col0 + tl.arange(0, BLOCK))[None, :]
                y = tl.where(m == m, tl.where(cols == j, 1.0, 0.0), float("nan"))
                tl.store(y_ptrs + cols, y.to(y_ptr.dtype.element_ty),
                         mask=rmask[:, None] & (cols < n))
        else:
            big_a, s, _ = _softmax_stats(x_ptrs, x_ptrs, rmask, rows, n, m, k0, k1, inv_tau,
                                         False, BLOCK)
            for col0 in range(0, n, BLOCK):
                a, cols = _perturbed(x_ptrs, rmask, rows, col0, n, m, k0, k1, BLOCK)
                y = tl.exp((a - big_a) * inv_tau) / s
                tl.store(y_ptrs + cols, y.to(y_ptr.dtype.element_ty),
                         mask=rmask[:, None] & (cols < n))


@triton.jit
def _gumbel_softmax_bwd_kernel(
    dy_ptr,  # upstream gradient (R, n), unit column stride
    stride_dy,  # elements between rows of dy
    src_ptr,  # saved soft output y, or the logits when RECOMPUTE
    stride_src,  # elements between rows of src
    seed_ptr,  # int64[1] seed of the forward (read only when RECOMPUTE)
    dx_ptr,  # output (R, n), contiguous, src's dtype
    total,  # R, the number of rows
    n,  # columns per row
    inv_tau,  # 1 / tau of the forward
    RECOMPUTE: tl.constexpr,  # regenerate y from logits + noise: hard=True saves no y
    SINGLE: tl.constexpr,  # n <= BLOCK: rows stay in registers
    ROWS: tl.constexpr,  # rows per program, a power of two
    BLOCK: tl.constexpr,  # columns per chunk, a power of two >= 16
):
    rows, rmask = row_block(tl.program_id(0), total, ROWS)
    dy_ptrs = dy_ptr + rows[:, None] * stride_dy
    src_ptrs = src_ptr + rows[:, None] * stride_src
    dx_ptrs = dx_ptr + rows[:, None] * n
    if RECOMPUTE:
        k0, k1 = seed_key(seed_ptr)
    if SINGLE:
        cols = tl.arange(0, BLOCK)[None, :]
        mask = rmask[:, None] & (cols < n)
        dy = tl.load(dy_ptrs + cols, mask=mask, other=0.0).to(tl.float32)
        if RECOMPUTE:
            y, _, _ = _soft_tile(src_ptrs, rmask, rows, n, k0, k1, inv_tau, BLOCK)
        else:
            y = tl.load(src_ptrs + cols, mask=mask, other=0.0).to(tl.float32)
        dot = tl.sum(dy * y, 1, keep_dims=True)
        dx = y * (dy - dot) * inv_tau
        tl.store(dx_ptrs + cols, dx.to(dx_ptr.dtype.element_ty), mask=mask)
    else:
        if RECOMPUTE:
            m = row_max(src_ptrs, rmask, n, ROWS, BLOCK)
            # The dot product rides along the online softmax: D and S rescale together.
            big_a, s, d = _softmax_stats(src_ptrs, dy_ptrs, rmask, rows, n, m, k0, k1, inv_tau,
                                         True, BLOCK)
            dot = d / s
        else:
            acc = tl.zeros((ROWS, BLOCK), tl.float32)
            for col0 in range(0, n, BLOCK):
                cols = (col0 + tl.arange(0, BLOCK))[None, :]
                mask = rmask[:, None] & (cols < n)
                dy = tl.load(dy_ptrs + cols, mask=mask, other=0.0).to(tl.float32)
                acc += dy * tl.load(src_ptrs + cols, mask=mask, other=0.0).to(tl.float32)
            dot = tl.sum(acc, 1, keep_dims=True)
        for col0 in range(0, n, BLOCK):
            cols = (col0 + tl.arange(0, BLOCK))[None, :]
            mask = rmask[:, None] & (cols < n)
            dy = tl.load(dy_ptrs + cols, mask=mask, other=0.0).to(tl.float32)
            if RECOMPUTE:
                a, _ = _perturbed(src_ptrs, rmask, rows, col0, n, m, k0, k1, BLOCK)
                y = tl.exp((a - big_a) * inv_tau) / s
            else:
                y = tl.load(src_ptrs + cols, mask=mask, other=0.0).to(tl.float32)
            dx = y * (dy - dot) * inv_tau
            tl.store(dx_ptrs + cols, dx.to(dx_ptr.dtype.element_ty), mask=mask)


# ----------------------------------------------------------------------------- launchers


def tile_config(rows: int, n: int, block: int | None = None, rows_per_program: int | None = None,
                max_single: int = MAX_SINGLE, chunk: int = CHUNK,
                pack_tile: int = PACK_TILE) -> tuple[int, int, bool, int]:
    """(ROWS, BLOCK, SINGLE, num_warps) for `rows` rows of n columns, from host-side sizes.

    `block` forces the chunk width and `rows_per_program` the packing (tests walk the one-row,
    packed and chunked paths with them); by default rows that fit max_single columns are packed
    up to pack_tile elements a program, and longer rows are walked in chunks one a program (the
    kernels also walk a pack of rows in chunks, a (ROWS, BLOCK) tile at a time, when forced to).
    """
    if block is None:
        single = n <= max_single
        block = pow2_block(None, n, max_single) if single else chunk
    else:
        block = pow2_block(block, n, max_single)
        single = n <= block
    if rows_per_program is None:
        packed = max(1, min(pack_tile // block, triton.next_power_of_2(max(rows, 1))))
        rows_per_program = packed if single else 1
    elif rows_per_program < 1 or rows_per_program & (rows_per_program - 1):
        raise ValueError(f"rows_per_program must be a power of two >= 1, got {rows_per_program}")
    # Untuned: about 8 to 16 fp32 values a thread per live tensor, as Triton's softmax tutorial.
    tile = rows_per_program * block
    num_warps = 16 if tile >= 4096 else 8 if tile >= 2048 else 4 if tile >= 512 else 2
    return rows_per_program, block, single, num_warps


def launch(kernel, like: torch.Tensor, args: tuple, config: tuple[int, int, bool, int],
           **meta) -> None:
    """Run a row kernel over `like`'s rows with a tile_config result, on like's device."""
    rows_per_program, block, single, num_warps = config
    with device_guard(like):
        kernel[(triton.cdiv(like.shape[0], rows_per_program),)](
            *args, SINGLE=single, ROWS=rows_per_program, BLOCK=block, num_warps=num_warps, **meta
        )


def gumbel_softmax_fwd(x: torch.Tensor, seed: torch.Tensor, inv_tau: float, hard: bool,
                       out: torch.Tensor, *, block: int | None = None,
                       rows_per_program: int | None = None) -> torch.Tensor:
    """Gumbel-Softmax forward of the contract into `out` (x's dtype, contiguous (R, n))."""
    check_rows("x", x, DTYPES, slack=CHUNK)
    check_seed(seed, x.device)
    check_positive("inv_tau", inv_tau)
    check_like("out", out, tuple(x.shape), x.dtype, x.device)
    if x.numel():
        args = (x, _row_stride(x), seed, out, x.shape[0], x.shape[1], float(inv_tau))
        cfg = tile_config(*x.shape, block, rows_per_program)
        launch(_gumbel_softmax_fwd_kernel, x, args, cfg, HARD=bool(hard))
    return out


def gumbel_softmax_bwd(dy: torch.Tensor, src: torch.Tensor, seed: torch.Tensor, inv_tau: float,
                       recompute: bool, out: torch.Tensor, *, block: int | None = None,
                       rows_per_program: int | None = None) -> torch.Tensor:
    """dx of the contract into `out` (src's dtype); src is y, or the logits when recompute."""
    check_rows("dy", dy, DTYPES, slack=CHUNK)
    check_rows("src", src, DTYPES, slack=CHUNK)
    check_like("dy", dy, tuple(src.shape), None, src.device, contiguous=False)
    check_seed(seed, src.device)
    check_positive("inv_tau", inv_tau)
    check_like("out", out, tuple(src.shape), src.dtype, src.device)
    if src.numel():
        args = (dy, _row_stride(dy), src, _row_stride(src), seed, out, src.shape[0],
                src.shape[1], float(inv_tau))
        cfg = tile_config(*src.shape, block, rows_per_program)
        launch(_gumbel_softmax_bwd_kernel, src, args, cfg, RECOMPUTE=bool(recompute))
    return out
