"""The reference of the LSTM layer (contract: genfast/ops/lstm.py): the oracle of every backend,
the "reference" backend's two kernels, and the differentiable graph the backward re-runs under
create_graph (so every order of derivative exists).

Everything here is plain torch ops, one step at a time, in the work dtype (float32 for float16,
bfloat16 and float32 data; float64 for float64), as the kernels compute.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ._boundary import work_dtype


def active_masks(lengths: Tensor | None, T: int) -> Tensor | None:
    """(T, B, 1) bool: step t of sequence b is active iff t < lengths[b] (None: all active)."""
    if lengths is None:
        return None
    t = torch.arange(T, device=lengths.device)
    return (t[:, None] < lengths[None, :])[..., None]


def step_order(T: int, reverse: bool) -> range:
    return range(T - 1, -1, -1) if reverse else range(T)


def _cell(G: Tensor, c: Tensor, H: int):
    i, f, g, o = G.split(H, dim=1)
    i, f, g, o = i.sigmoid(), f.sigmoid(), g.tanh(), o.sigmoid()
    c = f * c + i * g
    return torch.cat((i, f, g, o), 1), c, o * c.tanh()


def lstm_layer_reference(x: Tensor, w_ih: Tensor, w_hh: Tensor, b_ih: Tensor | None = None,
                         b_hh: Tensor | None = None, w_hr: Tensor | None = None,
                         h0: Tensor | None = None, c0: Tensor | None = None,
                         lengths: Tensor | None = None,
                         reverse: bool = False) -> tuple[Tensor, Tensor, Tensor]:
    """The layer as differentiable torch ops (any order of derivative): (y, hT, cT).

    x (T, B, I); shapes and semantics of genfast.lstm_layer. Computes in x's dtype (the oracle
    the tests compare every backend against, and the graph create_graph differentiates)."""
    T, B, _ = x.shape
    H, P = w_hh.shape[0] // 4, w_hh.shape[1]
    gx = x @ w_ih.t()
    if b_ih is not None:
        gx = gx + b_ih
    if b_hh is not None:
        gx = gx + b_hh
    h = x.new_zeros(B, P) if h0 is None else h0
    c = x.new_zeros(B, H) if c0 is None else c0
    act = active_masks(lengths, T)
    ys: list[Tensor | None] = [None] * T
    for t in step_order(T, reverse):
        _, c_new, ht = _cell(gx[t] + h @ w_hh.t(), c, H)
        h_new = ht @ w_hr.t() if w_hr is not None else ht
        if act is None:
            h, c, ys[t] = h_new, c_new, h_new
        else:
            h = torch.where(act[t], h_new, h)
            c = torch.where(act[t], c_new, c)
            ys[t] = torch.where(act[t], h_new, torch.zeros_like(h_new))
    y = torch.stack(ys) if T else x.new_zeros(0, B, P)
    return y, h, c


# --------------------------------------------------------------------------- kernel references
def ref_fwd(gx, w_hh, w_hr, h0, c0, lengths, reverse, save):
    """The "reference" backend's lstm_fwd: (y, gates | None, c_all | None, hT, cT)."""
    T, B, H4 = gx.shape
    H, P = H4 // 4, w_hh.shape[1]
    wd = work_dtype(gx.dtype)
    g32, whh = gx.to(wd), w_hh.to(wd)
    whr = None if w_hr is None else w_hr.to(wd)
    h = gx.new_zeros(B, P, dtype=wd) if h0 is None else h0.to(wd)
    c = gx.new_zeros(B, H, dtype=wd) if c0 is None else c0.to(wd)
    y = gx.new_zeros(T, B, P)
    gates = gx.new_zeros(T, B, H4, dtype=wd) if save else None
    c_all = gx.new_zeros(T, B, H, dtype=wd) if save else None
    act = active_masks(lengths, T)
    for t in step_order(T, reverse):
        a, c_new, ht = _cell(g32[t] + h @ whh.t(), c, H)
        h_new = ht @ whr.t() if whr is not None else ht
        if act is not None:
            h_new = torch.where(act[t], h_new, h)
            c_new = torch.where(act[t], c_new, c)
            y[t] = torch.where(act[t], h_new, 0)
        else:
            y[t] = h_new
        h, c = h_new, c_new
        if save:
            gates[t], c_all[t] = a, c
    return y, gates, c_all, h.to(gx.dtype, copy=True), c.to(gx.dtype, copy=True)


def prev_cell(c_all: Tensor, c0: Tensor | None, lengths: Tensor | None, t: int,
              reverse: bool) -> Tensor:
    """The c before step t of every sequence (only read where step t is active): c_all of the
    previous step in the forward order, or c0 at a sequence's first active step."""
    T, B, H = c_all.shape
    first = t == (T - 1 if reverse else 0)
    init = c_all.new_zeros(B, H) if c0 is None else c0.to(c_all.dtype)
    if first:
        return init
    prev = c_all[t + 1] if reverse else c_all[t - 1]
    if reverse and lengths is not None:  # sequence b starts (in its order) at lengths[b] - 1
        return torch.where((lengths > t + 1)[:, None], prev, init)
    return prev


def ref_bwd(w_hh, w_hr, c0, lengths, gates, c_all, dy, dhT, dcT, want_dh_all, reverse,
            dtype):
    """The "reference" backend's lstm_bwd: (dgx, dh0, dc0, dh_all | None), data `dtype`."""
    T, B, H4 = gates.shape
    H, P = H4 // 4, w_hh.shape[1]
    wd = gates.dtype
    whh = w_hh.to(wd)
    whr = None if w_hr is None else w_hr.to(wd)
    dh = gates.new_zeros(B, P) if dhT is None else dhT.to(wd)
    dc = gates.new_zeros(B, H) if dcT is None else dcT.to(wd)
    dgx = gates.new_zeros(T, B, H4)
    dh_all = gates.new_zeros(T, B, P) if want_dh_all else None
    act = active_masks(lengths, T)
    for t in reversed(step_order(T, reverse)):
        d = dh if dy is None else dh + dy[t].to(wd)
        i, f, g, o = gates[t].split(H, dim=1)
        tc = c_all[t].tanh()
        dht = d @ whr if whr is not None else d
        dcn = dc + dht * o * (1 - tc * tc)
        cp = prev_cell(c_all, c0, lengths, t, reverse)
        dG = torch.cat((dcn * g * i * (1 - i), dcn * cp * f * (1 - f), dcn * i * (1 - g * g),
                        dht * tc * o * (1 - o)), 1)
        dcn = dcn * f
        dhn = dG @ whh
        if act is not None:
            a = act[t]
            dG = torch.where(a, dG, 0)
            dhn = torch.where(a, dhn, dh)
            dcn = torch.where(a, dcn, dc)
            d = torch.where(a, d, 0)
        dgx[t] = dG
        if want_dh_all:
            dh_all[t] = d
        dh, dc = dhn, dcn
    cast = (lambda v: v.to(dtype, copy=True))  # never an alias of dhT / dcT
    return (cast(dgx), cast(dh), cast(dc), None if dh_all is None else cast(dh_all))
