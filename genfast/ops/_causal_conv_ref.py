"""The reference (oracle) of the causal_conv kernels: plain PyTorch in the work dtype (float32,
float64 for float64), for the contract in genfast/ops/causal_conv.py."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from ._boundary import work_dtype


def history(x: Tensor, P: int) -> Tensor:
    return x.new_zeros(x.shape[0], x.shape[1], P)


# --------------------------------------------------------------------------- reference (oracle)
def ref_activation(u: Tensor, act: int) -> Tensor:
    if act == 1:
        return F.silu(u)
    if act == 2:
        return torch.relu(u)
    if act == 3:
        return torch.tanh(u)
    return u


def ref_fwd(x, h, w, b, dilation, groups, act):
    if x.shape[-1] == 0:
        return x.new_empty(x.shape[0], w.shape[0], 0)
    wd = work_dtype(x.dtype)
    P = (w.shape[-1] - 1) * dilation
    xt = torch.cat([h.to(wd) if h is not None else history(x, P).to(wd), x.to(wd)], -1)
    u = F.conv1d(xt, w.to(wd), None if b is None else b.to(wd), dilation=dilation, groups=groups)
    return ref_activation(u, act).to(x.dtype)


def ref_bwd_input(g, w, dilation, groups, with_state):
    wd = work_dtype(g.dtype)
    P = (w.shape[-1] - 1) * dilation
    B, _, T = g.shape
    if T == 0:
        return g.new_zeros(B, w.shape[1] * groups, P if with_state else 0)
    dxt = F.conv_transpose1d(g.to(wd), w.to(wd), dilation=dilation, groups=groups)  # P+T long
    return (dxt if with_state else dxt[..., P:]).to(g.dtype).contiguous()


def ref_bwd_weight(g, x, h, K, dilation, groups):
    wd = work_dtype(g.dtype)
    P = (K - 1) * dilation
    xt = torch.cat([h.to(wd) if h is not None else history(x, P).to(wd), x.to(wd)], -1)
    shape = (g.shape[1], x.shape[1] // groups, K)
    if g.shape[-1] == 0:
        return g.new_zeros(shape)
    dw = torch.nn.grad.conv1d_weight(xt, shape, g.to(wd), dilation=dilation, groups=groups)
    return dw.to(g.dtype)


def ref_update(x_new, state, w, b, seqlens, dilation, groups, act):
    P = (w.shape[-1] - 1) * dilation
    B, C, L = x_new.shape
    S = state.shape[-1]
    if seqlens is None:
        h = state[..., S - P:].clone()
        y = ref_fwd(x_new, h, w, b, dilation, groups, act)
        state.copy_(torch.cat([state, x_new], -1)[..., -S:])
        return y
    n = seqlens.to(torch.int64).view(B, 1)
    # The P positions before each stream's first new step, gathered from their ring slots.
    hist = torch.remainder(n - P + torch.arange(P, device=state.device), S) if S else n[:, :0]
    h = state.gather(2, hist.view(B, 1, P).expand(B, C, P))
    y = ref_fwd(x_new, h, w, b, dilation, groups, act)
    first = max(0, L - S)
    if L - first > 0:
        slots = torch.remainder(n + torch.arange(first, L, device=state.device), S)
        state.scatter_(2, slots.view(B, 1, -1).expand(B, C, L - first), x_new[..., first:])
    return y
