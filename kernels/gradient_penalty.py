"""Triton kernels of the gradient penalty: per-row L2 norms of the critic's input gradient and
the row scaling its backward needs, with their launchers.

The contract is csrc/cpu/gradient_penalty.h (and genfast/ops/gradient_penalty.py): g is a 2-D
(rows, d) view with unit column stride and any row stride; norms[r] = ||g[r, :]||_2 is stored in
g's dtype with float32 accumulation (float64 for float64 g); out[r, :] = scale[r] * g[r, :]
into a contiguous out.

Both kernels work on (BR, BD) tiles: short rows (d = 1 for a scalar critic input, a few
features) pack many rows into a tile instead of leaving most lanes idle; long rows (images,
d = 3 * 64 * 64) put one row in a tile and the norm loops over BD-wide chunks of it. The
scaling is elementwise, so its grid covers (row tiles x column tiles): every SM gets work even
when a small batch of large images makes few rows.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ._launch import check_like, check_rows, device_guard, pow2_block, row_stride

_DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.float64)
_TILE = 4096  # elements per tile: 32 values a thread at 4 warps
_MAX_BD = 4096  # widest column chunk


@triton.jit
def _row_norms_kernel(
    g_ptr,  # (rows, d), unit column stride
    ld,  # elements between rows of g: views need no copy
    out_ptr,  # (rows,) norms, g's dtype
    rows,  # number of rows
    d,  # elements per row
    ACC: tl.constexpr,  # accumulation type: float32 (float64 for float64 g)
    BR: tl.constexpr,  # rows per tile, a power of two
    BD: tl.constexpr,  # columns per chunk, a power of two
):
    r = tl.program_id(0).to(tl.int64) * BR + tl.arange(0, BR)  # int64: r * ld may pass 2^31
    rmask = r < rows
    base = g_ptr + r[:, None] * ld
    # Partial sums stay elementwise across chunks: one cross-lane reduction per row, not per chunk.
    acc = tl.zeros((BR, BD), ACC)
    for c0 in range(0, d, BD):
        cols = c0 + tl.arange(0, BD)
        x = tl.load(base + cols[None, :], mask=rmask[:, None] & (cols < d)[None, :], other=0.0)
        x = x.to(ACC)  # fp16/bf16 are upcast before any arithmetic
        acc += x * x
    norm = tl.sqrt(tl.sum(acc, 1))
    tl.store(out_ptr + r, norm.to(out_ptr.dtype.element_ty), mask=rmask)


@triton.jit
def _scale_rows_kernel(
    g_ptr,  # (rows, d), unit column stride
    ld,  # elements between rows of g
    scale_ptr,  # (rows,) per-row factors, g's dtype
    out_ptr,  # (rows, d) contiguous output, g's dtype
    rows,  # number of rows
    d,  # elements per row
    col_tiles,  # tiles per row band: cdiv(d, BD)
    ACC: tl.constexpr,  # math type: float32 (float64 for float64 g)
    BR: tl.constexpr,  # rows per tile, a power of two
    BD: tl.constexpr,  # columns per tile, a power of two
):
    # A flat grid: axis 0 allows 2^31 - 1 programs, axes 1 and 2 only 65535.
    pid = tl.program_id(0).to(tl.int64)
    r = (pid // col_tiles) * BR + tl.arange(0, BR)
    cols = (pid % col_tiles) * BD + tl.arange(0, BD)
    rmask = r < rows
    mask = rmask[:, None] & (cols < d)[None, :]
    s = tl.load(scale_ptr + r, mask=rmask, other=0.0).to(ACC)
    x = tl.load(g_ptr + r[:, None] * ld + cols[None, :], mask=mask, other=0.0).to(ACC)
    # One rounding, as torch's own fp16 multiply (computed in fp32, stored once).
    y = s[:, None] * x
    tl.store(out_ptr + r[:, None] * d + cols[None, :], y.to(out_ptr.dtype.element_ty), mask=mask)


# ----------------------------------------------------------------------------- launchers


def _acc(dtype: torch.dtype):
    return tl.float64 if dtype == torch.float64 else tl.float32


def _tile(rows: int, d: int, block: int | None) -> tuple[int, int, int]:
    """(BR, BD, num_warps): BD covers the row up to _MAX_BD columns, BR rows fill the tile."""
    bd = pow2_block(block, d, _MAX_BD)
    br = max(1, min(triton.next_power_of_2(max(rows, 1)), _TILE // bd))
    elems = br * bd
    return br, bd, 4 if elems >= 2048 else 2 if elems >= 512 else 1


def row_norms(g2d: torch.Tensor, out: torch.Tensor, *, block: int | None = None) -> torch.Tensor:
    """out[r] = ||g2d[r, :]||_2 in g2d's dtype; `block` forces the column chunk (tests)."""
    check_rows("g", g2d, _DTYPES, slack=_MAX_BD)
    rows, d = g2d.shape
    check_like("out", out, (rows,), g2d.dtype, g2d.device)
    if rows:
        br, bd, warps = _tile(rows, d, block)
        ld = row_stride(g2d)
        with device_guard(g2d):
            _row_norms_kernel[(triton.cdiv(rows, br),)](
                g2d, ld, out, rows, d, ACC=_acc(g2d.dtype), BR=br, BD=bd, num_warps=warps
            )
    return out


def scale_rows(
    g2d: torch.Tensor, scale: torch.Tensor, out: torch.Tensor, *, block: int | None = None
) -> torch.Tensor:
    """out[r, :] = scale[r] * g2d[r, :]; out contiguous (rows, d) in g2d's dtype."""
    check_rows("g", g2d, _DTYPES, slack=_MAX_BD)
    rows, d = g2d.shape
    check_like("scale", scale, (rows,), g2d.dtype, g2d.device)
    check_like("out", out, (rows, d), g2d.dtype, g2d.device)
    if rows and d:
        br, bd, warps = _tile(rows, d, block)
        col_tiles = triton.cdiv(d, bd)
        ld = row_stride(g2d)
        with device_guard(g2d):
            _scale_rows_kernel[(triton.cdiv(rows, br) * col_tiles,)](
                g2d, ld, scale, out, rows, d, col_tiles,
                ACC=_acc(g2d.dtype), BR=br, BD=bd, num_warps=warps,
            )  # fmt: skip
    return out
