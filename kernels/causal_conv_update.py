"""Triton kernel of causal_conv1d_update (L decode steps against a state) and its launcher.

The semantics are the contract in genfast/ops/causal_conv.py. Ring mode (seqlens given): step
i of stream b is position p = seqlens[b] + i, tap k reads position q = p - (K-1-k)*d from x_new
when q >= seqlens[b], else state slot q mod S (Python's mod); after all outputs, x_new[..., i]
is written to slot (seqlens[b] + i) mod S for i >= max(0, L - S). Shift mode (no seqlens): the
state is the last S inputs oldest first, and afterwards the last S of [state | x_new].

One program owns a batch row and whole channel groups, so the program that reads a state row is
the only one that writes it: a read phase computes every output from the old state, one barrier,
then the write phase. Decode is latency-bound (L is small), so the body is elementwise FMAs over
(channels x steps) tiles with no tl.dot.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ._launch import check_like, device_guard
from .causal_conv import ACTS, _check_conv, _pow2, _warps, activate


@triton.jit
def _update_kernel(
    x_ptr,  # (B, Cin, L) new inputs
    state_ptr,  # (B, Cin, S) state, updated in place
    w_ptr,  # (Cout, Cg, K) weight
    b_ptr,  # (Cout,) bias, when HAS_B
    seq_ptr,  # (B,) int64 steps consumed per stream, when RING
    y_ptr,  # (B, Cout, L) output
    L, S, dil,
    Cg,  # input channels per group
    Og,  # output channels per group
    groups,
    gpp,  # groups per program
    K: tl.constexpr,
    HAS_B: tl.constexpr,
    ACT: tl.constexpr,
    RING: tl.constexpr,  # ring mode (seqlens given) or shift mode
    BC: tl.constexpr,  # channels per chunk
    BL: tl.constexpr,  # steps (or state slots) per chunk
):
    # A program owns whole groups: the only program reading a state row is the one that writes
    # it, so one barrier between the read and the write phase orders them.
    b = tl.program_id(0).to(tl.int64)
    g0 = tl.program_id(1) * gpp
    g1 = tl.minimum(g0 + gpp, groups)
    cin = groups * Cg
    cout = groups * Og
    x_b = x_ptr + b * cin * L
    st_b = state_ptr + b * cin * S
    n0 = 0
    s_mod = tl.maximum(S, 1)  # K = 1 may come with S = 0: no slot is read or written then
    if RING:
        n0 = tl.load(seq_ptr + b)
    # Read phase: every output of the call from the old state.
    for c0 in range(g0 * Og, g1 * Og, BC):
        o = c0 + tl.arange(0, BC)
        omask = o < g1 * Og
        grp = o // Og
        for l0 in range(0, L, BL):
            i = l0 + tl.arange(0, BL)
            acc = tl.zeros((BC, BL), tl.float32)
            for ci in range(Cg):
                ch = (grp * Cg + ci)[:, None]
                for k in tl.static_range(K):
                    q = (i - (K - 1 - k) * dil)[None, :]  # relative to x_new's first step
                    m = omask[:, None] & (i < L)[None, :]
                    xv = tl.load(x_b + ch * L + q, mask=m & (q >= 0), other=0.0)
                    if RING:
                        slot = (n0 + q) % s_mod
                        slot = tl.where(slot < 0, slot + s_mod, slot)  # Python's mod
                    else:
                        slot = S + q
                    sv = tl.load(st_b + ch * S + slot, mask=m & (q < 0), other=0.0)
                    wk = tl.load(w_ptr + (o * Cg + ci) * K + k, mask=omask, other=0.0)
                    acc += wk.to(tl.float32)[:, None] * tl.where(q >= 0, xv, sv).to(tl.float32)
            if HAS_B:
                acc += tl.load(b_ptr + o, mask=omask, other=0.0).to(tl.float32)[:, None]
            acc = activate(acc, ACT)
            dst = y_ptr + b * cout * L + o[:, None] * L + i[None, :]
            tl.store(dst, acc.to(y_ptr.dtype.element_ty), mask=omask[:, None] & (i < L)[None, :])
    tl.debug_barrier()
    # Write phase.
    for c0 in range(g0 * Cg, g1 * Cg, BC):
        ch = c0 + tl.arange(0, BC)
        cmask = (ch < g1 * Cg)[:, None]
        if RING:
            # Only the last S new steps survive; their slots are distinct.
            for l0 in range(tl.maximum(L - S, 0), L, BL):
                i = (l0 + tl.arange(0, BL))[None, :]
                m = cmask & (i < L)
                v = tl.load(x_b + ch[:, None] * L + i, mask=m)
                slot = (n0 + i) % s_mod
                slot = tl.where(slot < 0, slot + s_mod, slot)
                tl.store(st_b + ch[:, None] * S + slot, v, mask=m)
        else:
            # new[s] = [state | x_new][s + L], left to right: a chunk reads only slots above the
            # ones written so far; the barrier orders its own overlapping reads and writes.
            for s0 in range(0, S, BL):
                s = (s0 + tl.arange(0, BL))[None, :]
                src = s + L
                m = cmask & (s < S)
                old = tl.load(st_b + ch[:, None] * S + src, mask=m & (src < S), other=0.0)
                new = tl.load(x_b + ch[:, None] * L + (src - S), mask=m & (src >= S), other=0.0)
                v = tl.where(src < S, old, new)
                tl.debug_barrier()
                tl.store(st_b + ch[:, None] * S + s, v, mask=m)


def update(x_new: torch.Tensor, state: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None,
           seqlens: torch.Tensor | None, y: torch.Tensor, dilation: int, groups: int, act: int,
           *, block: tuple[int, int] | None = None) -> torch.Tensor:
    """L decode steps: y (B, Cout, L) from x_new (B, Cin, L) and the state (B, Cin, S), which is
    then advanced in place (ring mode with seqlens, shift mode without). `block` = (channels,
    steps) forces the chunking (tests)."""
    _check_conv(x_new, w, groups, dilation)
    B, cin, L = x_new.shape
    cout, cg, K = w.shape
    if cg * groups != cin:
        raise ValueError(f"w: expected (Cout, Cin/groups={cin // groups}, K), got {tuple(w.shape)}")
    if act not in ACTS:
        raise ValueError(f"act must be one of {sorted(ACTS)}, got {act}")
    P = (K - 1) * dilation
    if state.dim() != 3 or state.shape[:2] != (B, cin) or state.shape[2] < P:
        raise ValueError(f"state must be (B={B}, Cin={cin}, S >= P={P}), got {tuple(state.shape)}")
    S = state.shape[2]
    check_like("state", state, (B, cin, S), x_new.dtype, x_new.device)
    if b is not None:
        check_like("b", b, (cout,), x_new.dtype, x_new.device)
    if seqlens is not None:
        check_like("seqlens", seqlens, (B,), torch.int64, x_new.device)
    check_like("y", y, (B, cout, L), x_new.dtype, x_new.device)
    if not B or not L or not cin:
        return y
    og = cout // groups
    bc = block[0] if block else _pow2(max(cout, cin), 1, 64)
    bl = block[1] if block else _pow2(min(L, max(S, 1)), 16, 64)
    gpp = max(1, bc // max(og, cg))
    with device_guard(x_new):
        _update_kernel[(B, triton.cdiv(groups, gpp))](
            x_new, state, w, b if b is not None else w, seqlens if seqlens is not None else y,
            y, L, S, dilation, cg, og, groups, gpp, K=K, HAS_B=b is not None, ACT=act,
            RING=seqlens is not None, BC=bc, BL=bl, num_warps=_warps(bc * bl),
        )
    return y
