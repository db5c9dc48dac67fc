"""Triton kernels of the LSTM layer (op stem `lstm`) and their launchers.

The semantics are the contract in genfast/ops/lstm.py (equations: the issue-9 design, section 1);
gate order i, f, g, o along the 4H axis, as torch's. Two paths:

* The GEMM path (this module): genfast/ops/lstm.py runs G = gx[t] + h w_hh^T with torch.addmm
  per step and one fused cell kernel (cell_fwd / cell_bwd) for the pointwise part: one program
  per (row block, hidden block), elementwise, nothing shared between programs. Math in fp32 for
  every data dtype, one rounding per store.
* The fused recurrence (recurrence_fwd / recurrence_bwd, supports_recurrence; no projection):
  one program per block of batch rows runs all T steps in one launch. It lives in
  kernels/_lstm_recurrence.py, with the cell math both paths share, and is re-exported here.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ._launch import check_count, device_guard
from ._lstm_recurrence import (
    MAX_RECURRENCE_H,
    WORK,
    _cell,
    _cell_grads,
    _check,
    _lead,
    _lengths,
    _load4,
    _pair,
    _store4,
    recurrence_bwd,
    recurrence_fwd,
    supports_recurrence,
)
from .causal_conv import DTYPES, _pow2

__all__ = ["MAX_RECURRENCE_H", "WORK", "cell_bwd", "cell_fwd", "recurrence_bwd", "recurrence_fwd",
           "supports_recurrence"]


# ----------------------------------------------------------------------------- cell kernels


@triton.jit
def _cell_tile(len_ptr, t, B, H, HAS_LEN: tl.constexpr, BR: tl.constexpr, BH: tl.constexpr):
    """A cell program's tile: (active-element mask, all-element mask, (B, 4H) and (B, H)
    offsets)."""
    rows = tl.program_id(0) * BR + tl.arange(0, BR)
    cols = tl.program_id(1) * BH + tl.arange(0, BH)
    rm = rows < B
    act = rm & (t < _lengths(len_ptr, rows, rm, t + 1, HAS_LEN))
    r64 = rows.to(tl.int64)[:, None]
    cm = (cols < H)[None, :]
    c2 = cols[None, :]
    return act[:, None] & cm, rm[:, None] & cm, r64 * (4 * H) + c2, r64 * H + c2


@triton.jit
def _cell_fwd_kernel(G_ptr, c_ptr, gates_ptr, ct_ptr, ht_ptr, len_ptr, t, B, H,
                     HAS_LEN: tl.constexpr, SAVE: tl.constexpr, BR: tl.constexpr,
                     BH: tl.constexpr):
    m, mr, goff, soff = _cell_tile(len_ptr, t, B, H, HAS_LEN, BR, BH)
    a_i, a_f, a_g, a_o = _load4(G_ptr, goff, H, m)
    i, f, g, o, c, ht = _cell(a_i, a_f, a_g, a_o, tl.load(c_ptr + soff, mask=m, other=0.0))
    tl.store(c_ptr + soff, c, mask=m)
    tl.store(ht_ptr + soff, tl.where(m, ht, 0.0).to(ht_ptr.dtype.element_ty), mask=mr)
    if SAVE:
        _store4(gates_ptr, goff, H, i, f, g, o, m)
        tl.store(ct_ptr + soff, c, mask=m)


@triton.jit
def _cell_bwd_kernel(dht_ptr, dc_ptr, gates_ptr, ct_ptr, cp_ptr, dG_ptr, len_ptr, t, B, H,
                     HAS_LEN: tl.constexpr, HAS_CP: tl.constexpr, BR: tl.constexpr,
                     BH: tl.constexpr):
    m, mr, goff, soff = _cell_tile(len_ptr, t, B, H, HAS_LEN, BR, BH)
    i, f, g, o = _load4(gates_ptr, goff, H, m)
    dht = tl.load(dht_ptr + soff, mask=m, other=0.0).to(tl.float32)
    cp = tl.zeros((BR, BH), tl.float32)
    if HAS_CP:
        cp = tl.load(cp_ptr + soff, mask=m, other=0.0)
    d_i, d_f, d_g, d_o, dc = _cell_grads(dht, tl.load(dc_ptr + soff, mask=m, other=0.0), i, f,
                                         g, o, tl.load(ct_ptr + soff, mask=m, other=0.0), cp)
    tl.store(dc_ptr + soff, dc, mask=m)
    _store4(dG_ptr, goff, H, d_i, d_f, d_g, d_o, mr)


# ----------------------------------------------------------------------------- launchers


def _cell_grid(B: int, H: int, block: tuple[int, int] | None) -> tuple[tuple[int, int], dict]:
    if block is not None:
        if any(v < 2 or v & (v - 1) for v in block):
            raise ValueError(f"block must be two powers of two >= 2, got {block}")
        br, bh = block
    else:
        bh = _pow2(H, 2, 256)
        br = _pow2(B, 2, max(2, 1024 // bh))
    return (triton.cdiv(B, br), triton.cdiv(H, bh)), dict(BR=br, BH=bh)


def cell_fwd(G: torch.Tensor, c_state: torch.Tensor, gates_t: torch.Tensor | None,
             c_t: torch.Tensor | None, ht: torch.Tensor, lengths: torch.Tensor | None, t: int,
             *, block: tuple[int, int] | None = None) -> None:
    """The GEMM path's forward cell of step t, in place.

    G (B, 4H) data dtype (float32, float16 or bfloat16): gx[t] + h w_hh^T, blocks i, f, g, o.
    c_state (B, H) float32, in/out: the cell state before step t, after it on return.
    gates_t (B, 4H) float32 and c_t (B, H) float32, out, or both None (nothing saved): the
    activated i, f, g, o and the new c. ht (B, H) data dtype, out: o * tanh(c).
    lengths (B,) int64 or None (all steps active); step t of row b is active iff t < lengths[b].
    Active rows: the equations in fp32. Inactive rows: c_state unchanged, ht = 0, gates_t and
    c_t untouched. All tensors contiguous on one device. block = (rows, hidden) forces the
    program tile (powers of two >= 2; the tests walk the tiling with it)."""
    B, H = _lead("G", G, 2, DTYPES)
    _pair("gates_t", gates_t, "c_t", c_t)
    _check(G.device, lengths, B, c_state=(c_state, (B, H), WORK),
           gates_t=(gates_t, (B, 4 * H), WORK), c_t=(c_t, (B, H), WORK),
           ht=(ht, (B, H), G.dtype))
    check_count("t", t)
    if B * H == 0:
        return
    grid, blocks = _cell_grid(B, H, block)
    with device_guard(G):
        _cell_fwd_kernel[grid](
            G, c_state, gates_t if gates_t is not None else c_state,
            c_t if c_t is not None else c_state, ht, lengths if lengths is not None else G,
            t, B, H, HAS_LEN=lengths is not None, SAVE=gates_t is not None, **blocks)


def cell_bwd(dht: torch.Tensor, dc_state: torch.Tensor, gates_t: torch.Tensor,
             c_t: torch.Tensor, c_prev: torch.Tensor | None, dG: torch.Tensor,
             lengths: torch.Tensor | None, t: int, *,
             block: tuple[int, int] | None = None) -> None:
    """The GEMM path's backward cell of step t, in place.

    dht (B, H) data dtype (float32, float16 or bfloat16): the gradient of ht = o * tanh(c_t)
    (dh + dy[t], through w_hr when projecting). dc_state (B, H) float32, in/out: the gradient of
    c after step t, the gradient of c before it on return. gates_t (B, 4H), c_t (B, H) float32:
    what cell_fwd saved at step t. c_prev (B, H) float32: the c before step t (c0, or c_t of the
    previous active step), or None for zeros. dG (B, 4H) data dtype, out: the gradient of the
    pre-activations G. lengths (B,) int64 or None. Active rows (t < lengths[b]): the design's
    formulas in fp32. Inactive rows: dG = 0, dc_state unchanged. All tensors contiguous on one
    device; block as in cell_fwd."""
    B, H = _lead("dG", dG, 2, DTYPES)
    _check(dG.device, lengths, B, dht=(dht, (B, H), dG.dtype),
           dc_state=(dc_state, (B, H), WORK), gates_t=(gates_t, (B, 4 * H), WORK),
           c_t=(c_t, (B, H), WORK), c_prev=(c_prev, (B, H), WORK))
    if gates_t is None or c_t is None:
        raise ValueError("gates_t and c_t (saved by cell_fwd) are required")
    check_count("t", t)
    if B * H == 0:
        return
    grid, blocks = _cell_grid(B, H, block)
    with device_guard(dG):
        _cell_bwd_kernel[grid](
            dht, dc_state, gates_t, c_t, c_prev if c_prev is not None else c_t, dG,
            lengths if lengths is not None else dG, t, B, H, HAS_LEN=lengths is not None,
            HAS_CP=c_prev is not None, **blocks)
