"""The reference of the masked_conv kernels (contract: genfast/ops/masked_conv.py): plain PyTorch
in the work dtype. It is the cropped-kernel decomposition (openai/pixel-cnn's down-shifted
convolutions): the full rows above the anchor as one conv, the anchor row's left taps (and the
colour-masked anchor tap) as another, so no masked tap is multiplied; torch's convolutions run
both (oneDNN on the CPU, cuDNN on the GPU). The tests' oracle is conv2d(x, w * mask) instead."""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor

from ._boundary import work_dtype


class Region(NamedTuple):
    """Which taps a region conv reads, and where: the contract's geometry as one value
    (passed to the torch.library ops as a list of 8 ints)."""
    sh: int
    sw: int
    pt: int
    pl: int
    rows: int
    cols: int
    center: int  # 0 never, 1 grp(ci) < grp(co), 2 grp(ci) <= grp(co)
    groups: int  # colour groups G


def groups_of(C: int, G: int, device=None) -> Tensor:
    """grp(c, C) = c * G // C for c < C: the colour group of each channel."""
    return torch.arange(C, device=device) * G // C


def center_mask(Cout: int, Cin: int, center: int, G: int, dtype=torch.float32,
                device=None) -> Tensor:
    """(Cout, Cin) 0/1: which (co, ci) pairs read the anchor tap."""
    go, gi = groups_of(Cout, G, device)[:, None], groups_of(Cin, G, device)[None, :]
    if center == 0:
        m = torch.zeros(Cout, Cin, dtype=torch.bool, device=device)
    else:
        m = gi < go if center == 1 else gi <= go
    return m.to(dtype)


def region_mask(Cout: int, Cin: int, kh: int, kw: int, rows: int, cols: int, center: int, G: int,
                dtype=torch.float32, device=None) -> Tensor:
    """(Cout, Cin, kh, kw) 0/1: the taps the region reads (the contract's definition)."""
    m = torch.zeros(Cout, Cin, kh, kw, dtype=dtype, device=device)
    m[:, :, :rows, :] = 1
    if rows < kh:
        m[:, :, rows, :cols] = 1
        if cols < kw:
            m[:, :, rows, cols] = center_mask(Cout, Cin, center, G, dtype, device)
    return m


def _pads(H: int, W: int, Ho: int, Wo: int, r0: int, kr: int, kc: int, g: Region):
    """F.pad amounts (left, right, top, bottom; negative crops) that make a plain conv2d of a
    (kr, kc) kernel whose first row is the region's row r0 produce exactly (Ho, Wo)."""
    top, left = g.pt - r0, g.pl
    bottom = (Ho - 1) * g.sh + kr - H - top
    right = (Wo - 1) * g.sw + kc - W - left
    return left, right, top, bottom


def _pieces(w: Tensor, g: Region):
    """The region as at most two dense kernels: (first row, weight piece)."""
    Cout, Cin, kh, kw = w.shape
    out = []
    if g.rows:
        out.append((0, w[:, :, :g.rows, :]))
    if g.rows < kh:
        n = g.cols + (1 if g.cols < kw and g.center else 0)
        if n:
            piece = w[:, :, g.rows:g.rows + 1, :n]
            if n > g.cols:  # the anchor tap, masked per (co, ci) pair
                cm = torch.ones(1, 1, 1, n, dtype=w.dtype, device=w.device).repeat(Cout, Cin, 1, 1)
                cm[:, :, 0, g.cols] = center_mask(Cout, Cin, g.center, g.groups, w.dtype,
                                                  w.device)
                piece = piece * cm
            out.append((g.rows, piece))
    return out


def _padded(x: Tensor, pads) -> Tensor:
    """x zero-padded (or cropped) by `pads`; a crop past the far edge leaves nothing to read."""
    lf, r, t, b = pads
    H, W = x.shape[-2:]
    if H + t + b <= 0 or W + lf + r <= 0 or -t >= H or -lf >= W:
        return x.new_zeros(*x.shape[:2], max(H + t + b, 0), max(W + lf + r, 0))
    return F.pad(x, pads)


def ref_fwd(x: Tensor, w: Tensor, b: Tensor | None, g: Region, Ho: int, Wo: int,
            acc: Tensor | None = None) -> Tensor:
    wd = work_dtype(x.dtype)
    B, Cout = x.shape[0], w.shape[0]
    H, W = x.shape[-2:]
    y = x.new_zeros(B, Cout, Ho, Wo, dtype=wd)
    if y.numel():
        xw, ww = x.to(wd), w.to(wd)
        for r0, piece in _pieces(ww, g):
            kr, kc = piece.shape[-2:]
            xp = _padded(xw, _pads(H, W, Ho, Wo, r0, kr, kc, g))
            if xp.shape[-2] >= kr and xp.shape[-1] >= kc:
                y += F.conv2d(xp, piece, stride=(g.sh, g.sw))
        if b is not None:
            y += b.to(wd)[:, None, None]
    if acc is not None:
        return acc.add_(y.to(acc.dtype))
    return y.to(x.dtype)


def ref_bwd_input(gy: Tensor, w: Tensor, H: int, W: int, g: Region) -> Tensor:
    wd = work_dtype(gy.dtype)
    B, Cout, Ho, Wo = gy.shape
    dx = gy.new_zeros(B, w.shape[1], H, W, dtype=wd)
    if dx.numel() and gy.numel():
        gw, ww = gy.to(wd), w.to(wd)
        for r0, piece in _pieces(ww, g):
            kr, kc = piece.shape[-2:]
            lf, r, t, bt = _pads(H, W, Ho, Wo, r0, kr, kc, g)
            shape = (B, w.shape[1], H + t + bt, W + lf + r)
            if shape[2] < kr or shape[3] < kc or -t >= H or -lf >= W:
                continue  # the piece reads only padding
            dxp = torch.nn.grad.conv2d_input(shape, piece, gw, stride=(g.sh, g.sw))
            dx += _unpad(dxp, (lf, r, t, bt), H, W)
    return dx.to(gy.dtype)


def _unpad(dxp: Tensor, pads, H: int, W: int) -> Tensor:
    """The adjoint of _padded: crop what padding added, zero-fill what it cropped."""
    lf, r, t, b = pads
    return F.pad(dxp, (-lf, -r, -t, -b))[..., :H, :W]


def ref_bwd_weight(gy: Tensor, x: Tensor, kh: int, kw: int, g: Region) -> Tensor:
    wd = work_dtype(gy.dtype)
    B, Cout, Ho, Wo = gy.shape
    Cin, H, W = x.shape[1:]
    dw = gy.new_zeros(Cout, Cin, kh, kw, dtype=wd)
    if gy.numel() and x.numel():
        gw, xw = gy.to(wd), x.to(wd)
        full = torch.empty(Cout, Cin, kh, kw, dtype=wd, device=gy.device)
        for r0, piece in _pieces(full, g):
            kr, kc = piece.shape[-2:]
            xp = _padded(xw, _pads(H, W, Ho, Wo, r0, kr, kc, g))
            if xp.shape[-2] >= kr and xp.shape[-1] >= kc:
                dw[:, :, r0:r0 + kr, :kc] = torch.nn.grad.conv2d_weight(
                    xp, piece.shape, gw, stride=(g.sh, g.sw))
        dw *= region_mask(Cout, Cin, kh, kw, g.rows, g.cols, g.center, g.groups, wd, gy.device)
    return dw.to(gy.dtype)
