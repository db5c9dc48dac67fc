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

import contextlib

import torch
import triton
import triton.language as tl

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


def _check_g(g: torch.Tensor) -> None:
    if not isinstance(g, torch.Tensor):
        raise TypeError(f"g must be a torch.Tensor, got {type(g).__name__}")
    if g.dim() != 2:
        raise ValueError(f"g must be 2-D (rows, d), got shape {tuple(g.shape)}")
    if g.dtype not in _DTYPES:
        raise TypeError(f"g must be float32, float16, bfloat16 or float64, got {g.dtype}")
    if g.size(1) > 1 and g.stride(1) != 1:
        raise ValueError(f"g must have column stride 1, got strides {tuple(g.stride())}")
    if g.size(0) > 1 and g.stride(0) < 0:
        raise ValueError(f"g must have a row stride >= 0, got {g.stride(0)}")
    if g.size(0) >= 2**31 or g.size(1) >= 2**31 - _MAX_BD:
        raise ValueError(f"g has shape {tuple(g.shape)}; rows and d must stay below 2**31")


def _check_vec(name: str, t: torch.Tensor, g: torch.Tensor, shape: tuple[int, ...]) -> None:
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if tuple(t.shape) != shape or t.dtype != g.dtype or t.device != g.device:
        raise ValueError(
            f"{name} must be {g.dtype} of shape {shape} on {g.device}, "
            f"got {t.dtype} of shape {tuple(t.shape)} on {t.device}"
        )
    if not t.is_contiguous():
        raise ValueError(f"{name} must be contiguous")


def _acc(dtype: torch.dtype):
    return tl.float64 if dtype == torch.float64 else tl.float32


def _tile(rows: int, d: int, block: int | None) -> tuple[int, int, int]:
    """(BR, BD, num_warps): BD covers the row up to _MAX_BD columns, BR rows fill the tile."""
    if block is None:
        bd = min(_MAX_BD, max(16, triton.next_power_of_2(d)))
    elif block < 16 or block & (block - 1):
        raise ValueError(f"block must be a power of two >= 16, got {block}")
    else:
        bd = block
    br = max(1, min(triton.next_power_of_2(max(rows, 1)), _TILE // bd))
    elems = br * bd
    return br, bd, 4 if elems >= 2048 else 2 if elems >= 512 else 1


def _guard(t: torch.Tensor):
    # Triton launches on the current device: make it the tensor's (no-op on the CPU).
    return torch.cuda.device(t.device) if t.is_cuda else contextlib.nullcontext()


def row_norms(g2d: torch.Tensor, out: torch.Tensor, *, block: int | None = None) -> torch.Tensor:
    """out[r] = ||g2d[r, :]||_2 in g2d's dtype; `block` forces the column chunk (tests)."""
    _check_g(g2d)
    rows, d = g2d.shape
    _check_vec("out", out, g2d, (rows,))
    if rows:
        br, bd, warps = _tile(rows, d, block)
        ld = g2d.stride(0) if rows > 1 else d
        with _guard(g2d):
            _row_norms_kernel[(triton.cdiv(rows, br),)](
                g2d, ld, out, rows, d, ACC=_acc(g2d.dtype), BR=br, BD=bd, num_warps=warps
            )
    return out


def scale_rows(
    g2d: torch.Tensor, scale: torch.Tensor, out: torch.Tensor, *, block: int | None = None
) -> torch.Tensor:
    """out[r, :] = scale[r] * g2d[r, :]; out contiguous (rows, d) in g2d's dtype."""
    _check_g(g2d)
    rows, d = g2d.shape
    _check_vec("scale", scale, g2d, (rows,))
    _check_vec("out", out, g2d, (rows, d))
    if rows and d:
        br, bd, warps = _tile(rows, d, block)
        col_tiles = triton.cdiv(d, bd)
        ld = g2d.stride(0) if rows > 1 else d
        with _guard(g2d):
            _scale_rows_kernel[(triton.cdiv(rows, br) * col_tiles,)](
                g2d, ld, scale, out, rows, d, col_tiles,
                ACC=_acc(g2d.dtype), BR=br, BD=bd, num_warps=warps,
            )  # fmt: skip
    return out
