"""The LSTM recurrence's kernels on every backend (contract: genfast/ops/lstm.py): the table
genfast.backends.call dispatches on, and the GEMM path (Triton; CUDA for shapes its persistent
kernel does not take): per step one torch GEMM (cuBLAS) and one fused cell kernel.

Kernel 0 (forward): fwd(gx, w_hh, w_hr, h0, c0, lengths, reverse, save)
    -> (y, gates | None, c_all | None, hT, cT)
Kernel 1 (backward): bwd(w_hh, w_hr, c0, lengths, gates, c_all, dy, dhT, dcT, want_dh_all,
    reverse, dtype) -> (dgx, dh0, dc0, dh_all | None)
"""

from __future__ import annotations

import functools
import threading

import torch
from torch import Tensor

from ._boundary import (
    DTYPE_CODE,
    cuda_module,
    dtype_code,
    implementations,
    native,
    triton_kernels,
    work_dtype,
)
from ._lstm_ref import active_masks, prev_cell, ref_bwd, ref_fwd, step_order

FWD, BWD = 0, 1
_workspaces = threading.local()


def workspace(name: str, shape: tuple[int, ...], like: Tensor) -> Tensor:
    """A scratch tensor reused across calls of this thread (CPU only: torch's CPU allocator hands
    large buffers back to the OS, so every fresh one is page-faulted in again; CUDA's caching
    allocator does not). For buffers a call drops before returning, never for its outputs."""
    cache = _workspaces.__dict__
    n = 1
    for s in shape:
        n *= s
    buf = cache.get((name, like.dtype))
    if buf is None or buf.numel() < n:
        with torch.inference_mode(False):  # usable in and out of inference mode
            buf = torch.empty(n, dtype=like.dtype)
        cache[(name, like.dtype)] = buf
    return buf[:n].view(shape)


def _opt(t: Tensor | None):
    return 0 if t is None else t


def _sizes(gx: Tensor, w_hh: Tensor) -> tuple[int, int, int, int]:
    T, B, H4 = gx.shape
    return T, B, H4 // 4, w_hh.shape[1]


def _empty_fwd(gx, w_hh, h0, c0, save):
    """T == 0 or B == 0: nothing runs; the state passes through."""
    T, B, H, P = _sizes(gx, w_hh)
    wd = work_dtype(gx.dtype)
    hT = gx.new_zeros(B, P) if h0 is None else h0.clone()
    cT = gx.new_zeros(B, H) if c0 is None else c0.clone()
    gates = gx.new_zeros(T, B, 4 * H, dtype=wd) if save else None
    c_all = gx.new_zeros(T, B, H, dtype=wd) if save else None
    return gx.new_zeros(T, B, P), gates, c_all, hT, cT


def _empty_bwd(gates, w_hh, dhT, dcT, want_dh_all, dtype):
    T, B, H4 = gates.shape
    P = w_hh.shape[1]
    z = (lambda *s: gates.new_zeros(*s, dtype=dtype))
    return (z(T, B, H4), z(B, P) if dhT is None else dhT.clone(),
            z(B, H4 // 4) if dcT is None else dcT.clone(), z(T, B, P) if want_dh_all else None)


def _guard_fwd(fn):
    """fn, or the pass-through when T == 0 or B == 0; fn may take a leading backend argument
    (the kernel's own arguments are the last eight)."""
    @functools.wraps(fn)
    def run(*args):
        gx, w_hh, _, h0, c0, _, _, save = args[-8:]
        if gx.shape[0] == 0 or gx.shape[1] == 0:
            return _empty_fwd(gx, w_hh, h0, c0, save)
        return fn(*args)
    return run


def _guard_bwd(fn):
    """As _guard_fwd for the backward (its own arguments are the last twelve)."""
    @functools.wraps(fn)
    def run(*args):
        w_hh, _, _, _, gates, _, _, dhT, dcT, want_dh_all, _, dtype = args[-12:]
        if gates.shape[0] == 0 or gates.shape[1] == 0:
            return _empty_bwd(gates, w_hh, dhT, dcT, want_dh_all, dtype)
        return fn(*args)
    return run


# --------------------------------------------------------------------------- native (C++/CUDA)
# Above this batch one step's GEMM (cuBLAS) fills the GPU and the GEMM path wins; at and below
# it the persistent kernel's on-chip weights and one grid barrier per step do (tune on a GPU).
PERSISTENT_MAX_B = 32


def _persistent_fits(gx: Tensor, H: int, P: int, proj: bool) -> bool:
    """Whether the CUDA persistent kernel takes this shape on this GPU (its own query: shared
    memory, cooperative occupancy) and the batch is small enough for it to be the faster."""
    fits = getattr(cuda_module(), "lstm_persistent_fits", None)
    if fits is None or gx.shape[1] > PERSISTENT_MAX_B:
        return False
    return bool(fits(gx.shape[1], H, P, dtype_code(gx), gx.device.index or 0, proj))


def _native_fwd(backend, gx, w_hh, w_hr, h0, c0, lengths, reverse, save):
    T, B, H, P = _sizes(gx, w_hh)
    if backend == "cuda" and not _persistent_fits(gx, H, P, w_hr is not None):
        return gemm_fwd(_cuda_cell_fwd, gx, w_hh, w_hr, h0, c0, lengths, reverse, save)
    wd = work_dtype(gx.dtype)
    y = gx.new_empty(T, B, P)
    gates = gx.new_empty(T, B, 4 * H, dtype=wd) if save else None
    c_all = gx.new_empty(T, B, H, dtype=wd) if save else None
    hT, cT = gx.new_empty(B, P), gx.new_empty(B, H)
    native(backend, "lstm_fwd", gx, w_hh, _opt(w_hr), _opt(h0), _opt(c0), _opt(lengths), y,
           _opt(gates), _opt(c_all), hT, cT, T, B, H, P, reverse, dtype_code(gx))
    return y, gates, c_all, hT, cT


def _native_bwd(backend, w_hh, w_hr, c0, lengths, gates, c_all, dy, dhT, dcT, want_dh_all,
                reverse, dtype):
    T, B, H4 = gates.shape
    H, P = H4 // 4, w_hh.shape[1]
    if backend == "cuda" and not _persistent_fits(gates.new_empty(T, B, 0, dtype=dtype), H, P,
                                                  w_hr is not None):
        return gemm_bwd(_cuda_cell_bwd, w_hh, w_hr, c0, lengths, gates, c_all, dy, dhT, dcT,
                        want_dh_all, reverse, dtype)
    # dgx only feeds the caller's GEMMs (dx, dW, db), none of which returns it: a CPU workspace
    dgx = (workspace("dgx", (T, B, H4), gates.new_empty(0, dtype=dtype)) if backend == "cpu"
           else gates.new_empty(T, B, H4, dtype=dtype))
    dh0, dc0 = gates.new_empty(B, P, dtype=dtype), gates.new_empty(B, H, dtype=dtype)
    dh_all = gates.new_empty(T, B, P, dtype=dtype) if want_dh_all else None
    native(backend, "lstm_bwd", w_hh, _opt(w_hr), _opt(c0), _opt(lengths), gates, c_all,
           _opt(dy), _opt(dhT), _opt(dcT), dgx, dh0, dc0, _opt(dh_all), T, B, H, P, reverse,
           DTYPE_CODE[dtype])
    return dgx, dh0, dc0, dh_all



def _cuda_cell_fwd(G, c_state, gates_t, c_t, ht, lengths, t):
    B, H = c_state.shape
    native("cuda", "lstm_cell_fwd", G, c_state, _opt(gates_t), _opt(c_t), ht, _opt(lengths), t,
           B, H, dtype_code(G))


def _cuda_cell_bwd(dht, dc_state, gates_t, c_t, c_prev, dG, lengths, t):
    B, H = dc_state.shape
    native("cuda", "lstm_cell_bwd", dht, dc_state, gates_t, c_t, _opt(c_prev), dG,
           _opt(lengths), t, B, H, dtype_code(dG))


# --------------------------------------------------------------------------- the GEMM path
def gemm_fwd(cell_fwd, gx, w_hh, w_hr, h0, c0, lengths, reverse, save):
    """Per step: G = gx[t] + h w_hh^T (torch.addmm), then cell_fwd(G, c_state, gates[t],
    c_all[t], ht, lengths, t) (the fused pointwise kernel: activations, c update, ht), then the
    projection (torch) and the state update."""
    T, B, H, P = _sizes(gx, w_hh)
    wd = work_dtype(gx.dtype)
    y = gx.new_empty(T, B, P)
    gates = gx.new_empty(T, B, 4 * H, dtype=wd) if save else None
    c_all = gx.new_empty(T, B, H, dtype=wd) if save else None
    h = gx.new_zeros(B, P) if h0 is None else h0
    c_state = gx.new_zeros(B, H, dtype=wd) if c0 is None else c0.to(wd, copy=True)
    ht = gx.new_empty(B, H)
    act = active_masks(lengths, T)
    w_t = w_hh.t()
    for t in step_order(T, reverse):
        G = torch.addmm(gx[t], h, w_t)
        cell_fwd(G, c_state, None if gates is None else gates[t],
                 None if c_all is None else c_all[t], ht, lengths, t)
        if w_hr is not None:
            torch.mm(ht, w_hr.t(), out=y[t])
        else:
            y[t].copy_(ht)
        h = y[t] if act is None else torch.where(act[t], y[t], h)
    return y, gates, c_all, h.clone(), c_state.to(gx.dtype, copy=True)


def gemm_bwd(cell_bwd, w_hh, w_hr, c0, lengths, gates, c_all, dy, dhT, dcT, want_dh_all,
             reverse, dtype):
    """Per step (reverse order): dht = dh w_hr (torch), cell_bwd(dht, dc_state, gates[t],
    c_all[t], c_prev, dG, lengths, t) (fused: dG and the dc update), dh = dG w_hh (torch)."""
    T, B, H4 = gates.shape
    H, P = H4 // 4, w_hh.shape[1]
    wd = gates.dtype
    act = active_masks(lengths, T)
    dh = gates.new_zeros(B, P, dtype=dtype) if dhT is None else dhT
    dc = gates.new_zeros(B, H, dtype=wd) if dcT is None else dcT.to(wd, copy=True)
    dgx = gates.new_empty(T, B, H4, dtype=dtype)
    dh_all = gates.new_empty(T, B, P, dtype=dtype) if want_dh_all else None
    if dy is not None and act is not None:
        dy = torch.where(act, dy, 0)  # outputs past a sequence's end are constants
    for t in reversed(step_order(T, reverse)):
        d = dh if dy is None else dh + dy[t]
        if dh_all is not None:
            dh_all[t] = d if act is None else torch.where(act[t], d, 0)
        dht = d @ w_hr if w_hr is not None else d
        cp = prev_cell(c_all, c0, lengths, t, reverse)
        cell_bwd(dht.contiguous(), dc, gates[t], c_all[t], cp, dgx[t], lengths, t)
        dhn = dgx[t] @ w_hh
        dh = dhn if act is None else torch.where(act[t], dhn, d)
    return dgx, dh, dc.to(dtype), dh_all


# --------------------------------------------------------------------------- Triton
def _triton_fwd(gx, w_hh, w_hr, h0, c0, lengths, reverse, save):
    k = triton_kernels("lstm")
    T, B, H, P = _sizes(gx, w_hh)
    if w_hr is None and k.supports_recurrence(H, B):
        wd = work_dtype(gx.dtype)
        y = gx.new_empty(T, B, P)
        gates = gx.new_empty(T, B, 4 * H, dtype=wd) if save else None
        c_all = gx.new_empty(T, B, H, dtype=wd) if save else None
        hT, cT = gx.new_empty(B, P), gx.new_empty(B, H)
        k.recurrence_fwd(gx, w_hh, h0, c0, lengths, y, gates, c_all, hT, cT, reverse)
        return y, gates, c_all, hT, cT
    return gemm_fwd(k.cell_fwd, gx, w_hh, w_hr, h0, c0, lengths, reverse, save)


def _triton_bwd(w_hh, w_hr, c0, lengths, gates, c_all, dy, dhT, dcT, want_dh_all, reverse,
                dtype):
    k = triton_kernels("lstm")
    T, B, H4 = gates.shape
    H = H4 // 4
    if w_hr is None and k.supports_recurrence(H, B):
        dgx = gates.new_empty(T, B, H4, dtype=dtype)
        dh0, dc0 = gates.new_empty(B, H, dtype=dtype), gates.new_empty(B, H, dtype=dtype)
        k.recurrence_bwd(w_hh, c0, lengths, gates, c_all, dy, dhT, dcT, dgx, dh0, dc0, reverse)
        return dgx, dh0, dc0, None
    return gemm_bwd(k.cell_bwd, w_hh, w_hr, c0, lengths, gates, c_all, dy, dhT, dcT,
                    want_dh_all, reverse, dtype)


implementations("lstm", reference=(_guard_fwd(ref_fwd), _guard_bwd(ref_bwd)),
                native=(_guard_fwd(_native_fwd), _guard_bwd(_native_bwd)),
                triton=(_guard_fwd(_triton_fwd), _guard_bwd(_triton_bwd)))
