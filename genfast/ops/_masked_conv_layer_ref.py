"""The reference of the gated PixelCNN layer (contract: genfast/ops/masked_conv_layer.py): the
oracle (the design's equations on torch's F.conv2d with explicitly padded inputs and masked
weights), the reference gate kernels (torch ops in the work dtype), and the differentiable gate
pieces the create_graph backward uses."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from ._boundary import work_dtype
from ._masked_conv_ref import Region

ONE = Region(1, 1, 0, 0, 1, 0, 0, 1)  # a 1x1 conv: the full (only) row


def regions(c: int, mask_a: bool) -> tuple[Region, Region]:
    """The vertical and horizontal stacks' regions for kernel width 2c+1 (contract table)."""
    vreg = Region(1, 1, c, c, c if mask_a else c + 1, 0, 0, 1)
    hreg = Region(1, 1, 0, c, 0, c if mask_a else c + 1, 0, 1)
    return vreg, hreg


def _pre(u: Tensor, cond: Tensor | None) -> Tensor:
    return u if cond is None else u + cond[:, :, None, None]


def torch_gate(u: Tensor, cond: Tensor | None) -> Tensor:
    """gate(u + cond) as differentiable torch ops in the work dtype, returned in u's dtype."""
    a = _pre(u.to(work_dtype(u.dtype)), None if cond is None else cond.to(work_dtype(u.dtype)))
    C = a.shape[1] // 2
    return (torch.tanh(a[:, :C]) * torch.sigmoid(a[:, C:])).to(u.dtype)


def gate_grad(u: Tensor, cond: Tensor | None, dout: Tensor) -> Tensor:
    """d gate(u + cond) / du applied to dout, as differentiable torch ops (work dtype)."""
    wd = work_dtype(u.dtype)
    a = _pre(u.to(wd), None if cond is None else cond.to(wd))
    C = a.shape[1] // 2
    t, s = torch.tanh(a[:, :C]), torch.sigmoid(a[:, C:])
    d = dout.to(wd)
    return torch.cat([d * s * (1 - t * t), d * t * s * (1 - s)], 1).to(u.dtype)


def ref_gate_fwd(u: Tensor, cond: Tensor | None) -> Tensor:
    return torch_gate(u, cond)


def ref_gate_bwd(u: Tensor, cond: Tensor | None, dout: Tensor, du: Tensor,
                 dcond: Tensor | None, accumulate: bool) -> None:
    """In place, one rounding at the store (the sums of accumulate run in the work dtype)."""
    wd = work_dtype(u.dtype)
    g = gate_grad(u.to(wd), cond, dout)
    du.copy_(du.to(wd) + g if accumulate else g)
    if dcond is not None:
        s = g.sum((2, 3))
        dcond.copy_(dcond.to(wd) + s if accumulate else s)


def _masked(w: Tensor, rows: int, cols: int) -> Tensor:
    """w with every tap outside the region (full rows < rows, then cols taps) zeroed; a select,
    not a product, so unread taps holding NaN or inf stay out."""
    m = torch.zeros(w.shape[2:], dtype=torch.bool, device=w.device)
    m[:rows] = True
    if rows < w.shape[2]:
        m[rows, :cols] = True
    return torch.where(m, w, torch.zeros((), dtype=w.dtype, device=w.device))


def gated_pixelcnn_layer_reference(v: Tensor, h: Tensor, wv: Tensor, bv: Tensor | None,
                                   wh: Tensor, bh: Tensor | None, wl: Tensor, bl: Tensor | None,
                                   wr: Tensor, br: Tensor | None, cond: Tensor | None = None, *,
                                   mask_type: str = "B",
                                   residual: bool | None = None) -> tuple[Tensor, Tensor]:
    """The layer by its equations (the tests' oracle): F.conv2d on inputs padded c rows above
    and c columns each side (vertical), c columns on the left (horizontal), with the unread taps
    of the weights zeroed; math in the work dtype, results in v's dtype. Differentiable."""
    residual = mask_type == "B" if residual is None else residual
    dt, wd = v.dtype, work_dtype(v.dtype)
    v, h, wv, wh, wl, wr = (t.to(wd) for t in (v, h, wv, wh, wl, wr))
    bv, bh, bl, br, cond = (None if t is None else t.to(wd) for t in (bv, bh, bl, br, cond))
    c = wv.shape[2] - 1
    a = mask_type == "A"
    V = F.conv2d(F.pad(v, (c, c, c, 0)), _masked(wv, c if a else c + 1, 0), bv)
    Hc = F.conv2d(F.pad(h, (c, 0, 0, 0)), _masked(wh, 0, c if a else c + 1), bh)
    Hp = Hc + F.conv2d(V, wl, bl)
    C = v.shape[1]

    def gate(u):
        u = _pre(u, cond)
        return torch.tanh(u[:, :C]) * torch.sigmoid(u[:, C:])

    vo = gate(V)
    ho = F.conv2d(gate(Hp), wr, br)
    if residual:
        ho = h + ho
    return vo.to(dt), ho.to(dt)
