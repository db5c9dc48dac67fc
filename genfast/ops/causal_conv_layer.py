"""The fused WaveNet residual layer: public API, reference, torch.library ops, dispatch (op stem
`causal_conv_layer`; the conv itself is genfast/ops/causal_conv.py).

The contract every backend implements (this docstring is the spec; kernels cite it).
Kernels: reference here, C++ CPU csrc/cpu/causal_conv_layer.cpp, Triton
kernels/causal_conv_layer.py, CUDA csrc/cuda/causal_conv_layer.cu. Tensors are contiguous and
of one dtype; math in float32 (float64 for float64).

x: (B, R, T); h: (B, R, P) history or None (zeros), P = (K-1)*d; w_dil: (G, R, K), G even,
H = G/2; w_res: (R, H); w_skip: (S, H); cond: None, (B, G, 1) (global) or (B, G, T) (local),
already projected to the gate channels; skip: (B, S, T) or None (zeros); biases may be None.

## wavenet_layer_fwd -> (x_out, skip_out)
a = causal_conv1d_fwd(x, h, w_dil, b_dil) + cond        (the causal_conv contract, act none)
f = a[:, :H], q = a[:, H:];  z = tanh(f) * sigmoid(q)
x_out = x + w_res z + b_res;  skip_out = skip + w_skip z + b_skip

## wavenet_layer_bwd(gx, gs) -> (da, dw_res, dw_skip)
a and z are recomputed (the forward saves nothing gate-sized);
dz = w_res^T gx + w_skip^T gs;  da = [dz sigmoid(q) (1 - tanh(f)^2) ; dz tanh(f) s'(q)]
with s'(q) = sigmoid(q)(1 - sigmoid(q)); dw_res = sum_{b,t} gx z^T; dw_skip = sum gs z^T
(deterministic for any thread count). Python forms the rest from da with the conv kernels:
dx = gx + bwd_input(da, w_dil)[P:], dh = [:P], dw_dil = bwd_weight(da, x, h), db_dil = sum da,
db_res = sum gx, db_skip = sum gs, dcond = da (summed over time when global), dskip = gs.
Under create_graph the same formulas run as differentiable torch ops and causal_conv ops (so
every order of derivative exists); the fused backward kernel serves the first order.
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from .. import backends
from . import _checks
from ._boundary import (
    dtype_code,
    implementations,
    native,
    standard_dtypes,
    triton_kernels,
    work_dtype,
)
from ._eager import eager_op
from .causal_conv import (
    _c,
    _opt,
    autocast_args,
    check_conv,
    conv_bwd_input,
    conv_bwd_weight,
    conv_fwd,
    ref_fwd,
    same,
)

SPEC = backends.register_op(backends.OpSpec(name="causal_conv_layer", dtypes=standard_dtypes()))
_FWD, _BWD = 0, 1


# --------------------------------------------------------------------------- reference (oracle)
def _gate(x, h, cond, w_dil, b_dil, dilation, conv=None):
    """a, and z = tanh(f) sigmoid(q), in x's dtype math (the callers pick it)."""
    a = (conv or ref_fwd)(x, h, w_dil, b_dil, dilation, 1, 0)
    if cond is not None:
        a = a + cond
    H = a.shape[1] // 2
    return a, torch.tanh(a[:, :H]) * torch.sigmoid(a[:, H:])


def _proj(w: Tensor, z: Tensor) -> Tensor:
    return torch.einsum("oh,bht->bot", w, z)


def _ref_layer_fwd(x, h, cond, skip, w_dil, b_dil, w_res, b_res, w_skip, b_skip, dilation):
    wd = work_dtype(x.dtype)
    up = [None if t is None else t.to(wd)
          for t in (x, h, cond, skip, w_dil, b_dil, w_res, b_res, w_skip, b_skip)]
    x, h, cond, skip, w_dil, b_dil, w_res, b_res, w_skip, b_skip = up
    _, z = _gate(x, h, cond, w_dil, b_dil, dilation)
    xo = x + _proj(w_res, z) + (0 if b_res is None else b_res[:, None])
    so = _proj(w_skip, z) + (0 if b_skip is None else b_skip[:, None])
    if skip is not None:
        so = skip + so
    return xo, so


def ref_fwd_cast(x, *rest):
    xo, so = _ref_layer_fwd(x, *rest)
    return xo.to(x.dtype), so.to(x.dtype)


def _gate_grad(a: Tensor, dz: Tensor) -> Tensor:
    H = a.shape[1] // 2
    f, q = a[:, :H], a[:, H:]
    tf, sq = torch.tanh(f), torch.sigmoid(q)
    return torch.cat([dz * sq * (1 - tf * tf), dz * tf * sq * (1 - sq)], 1)


def _ref_layer_bwd(x, h, cond, w_dil, b_dil, w_res, w_skip, gx, gs, dilation):
    dt, wd = x.dtype, work_dtype(x.dtype)
    x, h, cond, w_dil, b_dil, w_res, w_skip, gx, gs = [
        None if t is None else t.to(wd)
        for t in (x, h, cond, w_dil, b_dil, w_res, w_skip, gx, gs)]
    a, z = _gate(x, h, cond, w_dil, b_dil, dilation)
    dz = torch.einsum("oh,bot->bht", w_res, gx) + torch.einsum("oh,bot->bht", w_skip, gs)
    da = _gate_grad(a, dz)
    dw_res = torch.einsum("bot,bht->oh", gx, z)
    dw_skip = torch.einsum("bot,bht->oh", gs, z)
    return da.to(dt), dw_res.to(dt), dw_skip.to(dt)


# --------------------------------------------------------------------------- compiled backends
def _sizes(x, w_dil, w_skip):
    (B, R, T), (G, _, K), S = x.shape, w_dil.shape, w_skip.shape[0]
    return B, R, G, S, T, K


def _cond_t(cond):
    return 0 if cond is None else cond.shape[-1]


def _native_fwd(backend, x, h, cond, skip, w_dil, b_dil, w_res, b_res, w_skip, b_skip,
                dilation):
    B, R, G, S, T, K = _sizes(x, w_dil, w_skip)
    xo, so = torch.empty_like(x), x.new_empty(B, S, T)
    if T and B:
        native(backend, "wavenet_layer_fwd", x, _opt(h), _opt(cond), _cond_t(cond), _opt(skip),
               w_dil, _opt(b_dil), w_res, _opt(b_res), w_skip, _opt(b_skip), xo, so, B, R, G,
               S, T, K, dilation, dtype_code(x))
    return xo, so


def _native_bwd(backend, x, h, cond, w_dil, b_dil, w_res, w_skip, gx, gs, dilation):
    B, R, G, S, T, K = _sizes(x, w_dil, w_skip)
    da = x.new_empty(B, G, T)
    dw_res, dw_skip = w_res.new_empty(w_res.shape), w_skip.new_empty(w_skip.shape)
    if not (T and B):
        return da, dw_res.zero_(), dw_skip.zero_()
    native(backend, "wavenet_layer_bwd", x, _opt(h), _opt(cond), _cond_t(cond), w_dil,
           _opt(b_dil), w_res, w_skip, gx, gs, da, dw_res, dw_skip, B, R, G, S, T, K, dilation,
           dtype_code(x))
    return da, dw_res, dw_skip


def _triton_fwd(x, h, cond, skip, w_dil, b_dil, w_res, b_res, w_skip, b_skip, dilation):
    xo, so = torch.empty_like(x), x.new_empty(x.shape[0], w_skip.shape[0], x.shape[2])
    triton_kernels("causal_conv_layer").layer_fwd(x, h, cond, skip, w_dil, b_dil, w_res, b_res,
                                                  w_skip, b_skip, xo, so, dilation)
    return xo, so


def _triton_bwd(x, h, cond, w_dil, b_dil, w_res, w_skip, gx, gs, dilation):
    da = x.new_empty(x.shape[0], w_dil.shape[0], x.shape[2])
    dw_res, dw_skip = w_res.new_empty(w_res.shape), w_skip.new_empty(w_skip.shape)
    triton_kernels("causal_conv_layer").layer_bwd(x, h, cond, w_dil, b_dil, w_res, w_skip, gx,
                                                  gs, da, dw_res, dw_skip, dilation)
    return da, dw_res, dw_skip


implementations("causal_conv_layer", reference=(ref_fwd_cast, _ref_layer_bwd),
                native=(_native_fwd, _native_bwd), triton=(_triton_fwd, _triton_bwd))


# --------------------------------------------------------------------------- torch.library ops
def _fwd_impl(x, h, cond, skip, w_dil, b_dil, w_res, b_res, w_skip, b_skip, dilation, backend):
    return backends.call("causal_conv_layer", backend, _FWD, x.contiguous(), _c(h), _c(cond),
                         _c(skip), w_dil.contiguous(), _c(b_dil), w_res.contiguous(), _c(b_res),
                         w_skip.contiguous(), _c(b_skip), dilation)


def _bwd_impl(x, h, cond, w_dil, b_dil, w_res, w_skip, gx, gs, dilation, backend):
    return backends.call("causal_conv_layer", backend, _BWD, x.contiguous(), _c(h), _c(cond),
                         w_dil.contiguous(), _c(b_dil), w_res.contiguous(), w_skip.contiguous(),
                         gx.contiguous(), gs.contiguous(), dilation)


OptT = Optional[Tensor]  # noqa: UP045  (torch.library parses the annotation)


@torch.library.custom_op("genfast::wavenet_layer_fwd", mutates_args=())
def wavenet_layer_fwd(x: Tensor, h: OptT, cond: OptT, skip: OptT, w_dil: Tensor, b_dil: OptT,
                      w_res: Tensor, b_res: OptT, w_skip: Tensor, b_skip: OptT, dilation: int,
                      backend: str) -> tuple[Tensor, Tensor]:
    return _fwd_impl(x, h, cond, skip, w_dil, b_dil, w_res, b_res, w_skip, b_skip, dilation,
                     backend)


@torch.library.custom_op("genfast::wavenet_layer_bwd", mutates_args=())
def wavenet_layer_bwd(x: Tensor, h: OptT, cond: OptT, w_dil: Tensor, b_dil: OptT, w_res: Tensor,
                      w_skip: Tensor, gx: Tensor, gs: Tensor, dilation: int,
                      backend: str) -> tuple[Tensor, Tensor, Tensor]:
    return _bwd_impl(x, h, cond, w_dil, b_dil, w_res, w_skip, gx, gs, dilation, backend)


@wavenet_layer_fwd.register_fake
def _(x, h, cond, skip, w_dil, b_dil, w_res, b_res, w_skip, b_skip, dilation, backend):
    return x.new_empty(x.shape), x.new_empty(x.shape[0], w_skip.shape[0], x.shape[2])


@wavenet_layer_bwd.register_fake
def _(x, h, cond, w_dil, b_dil, w_res, w_skip, gx, gs, dilation, backend):
    return (x.new_empty(x.shape[0], w_dil.shape[0], x.shape[2]), w_res.new_empty(w_res.shape),
            w_skip.new_empty(w_skip.shape))


_INPUTS = ("x", "h", "cond", "skip", "w_dil", "b_dil", "w_res", "b_res", "w_skip", "b_skip")


def _setup(ctx, inputs, output):
    *tensors, ctx.dilation, ctx.backend = inputs
    x, h, cond, skip, w_dil, b_dil, w_res, b_res, w_skip, b_skip = tensors
    ctx.present = [t is not None for t in tensors]
    ctx.save_for_backward(x, h, cond, w_dil, b_dil, w_res, w_skip)


def _grad(ctx, gx, gs):
    x, h, cond, w_dil, b_dil, w_res, w_skip = ctx.saved_tensors
    d, be = ctx.dilation, ctx.backend
    gx = torch.zeros_like(x) if gx is None else gx
    gs = x.new_zeros(x.shape[0], w_skip.shape[0], x.shape[2]) if gs is None else gs
    need = dict(zip(_INPUTS, ctx.needs_input_grad[:10], strict=True))
    if torch.is_grad_enabled():  # create_graph: differentiable pieces, every order
        a, z = _gate(x, h, cond, w_dil, b_dil, d,
                     conv=lambda *a: conv_fwd(*a, be))
        dz = torch.einsum("oh,bot->bht", w_res, gx) + torch.einsum("oh,bot->bht", w_skip, gs)
        da = _gate_grad(a, dz)
        dw_res = torch.einsum("bot,bht->oh", gx, z) if need["w_res"] else None
        dw_skip = torch.einsum("bot,bht->oh", gs, z) if need["w_skip"] else None
    else:
        da, dw_res, dw_skip = layer_bwd(x, h, cond, w_dil, b_dil, w_res, w_skip, gx, gs, d, be)
    P = (w_dil.shape[-1] - 1) * d
    dx = dh = None
    if need["x"] or need["h"]:
        dxt = conv_bwd_input(da, w_dil, d, 1, bool(need["h"]), be)
        dx, dh = (dxt[..., P:], dxt[..., :P]) if need["h"] else (dxt, None)
        dx = gx + dx
    dw_dil = conv_bwd_weight(da, x, h, w_dil.shape[-1], d, 1, be) if need["w_dil"] else None
    dcond = None
    if need["cond"]:
        dcond = da if cond.shape[-1] == x.shape[-1] else da.sum(-1, keepdim=True)
    grads = dict(x=dx, h=dh, cond=dcond, skip=gs if need["skip"] else None, w_dil=dw_dil,
                 b_dil=da.sum((0, 2)) if need["b_dil"] else None, w_res=dw_res,
                 b_res=gx.sum((0, 2)) if need["b_res"] else None, w_skip=dw_skip,
                 b_skip=gs.sum((0, 2)) if need["b_skip"] else None)
    return (*(grads[k] for k in _INPUTS), None, None)


wavenet_layer_fwd.register_autograd(_grad, setup_context=_setup)
layer_fwd = eager_op(wavenet_layer_fwd, _fwd_impl, _setup, _grad)
layer_bwd = eager_op(wavenet_layer_bwd, _bwd_impl)


# --------------------------------------------------------------------------- public API
def _matrix(name: str, w: Tensor, rows: int | None, cols: int) -> Tensor:
    _checks.tensor(name, w)
    if w.dim() == 3 and w.shape[-1] == 1:
        w = w.squeeze(-1)
    if w.dim() != 2 or w.shape[1] != cols or (rows is not None and w.shape[0] != rows):
        want = f"({rows if rows is not None else 'S'}, {cols})"
        raise ValueError(f"{name} must have shape {want} (or {want[:-1]}, 1) as a 1x1 Conv1d "
                         f"weight), got {tuple(w.shape)}")
    return w


def _vector(name: str, b: Tensor | None, n: int, x: Tensor) -> None:
    if b is None:
        return
    _checks.tensor(name, b)
    if tuple(b.shape) != (n,):
        raise ValueError(f"{name} must have shape ({n},), got {tuple(b.shape)}")
    same(name, b, x, "x")


def wavenet_layer(x: Tensor, w_dil: Tensor, w_res: Tensor, w_skip: Tensor,
                  b_dil: Tensor | None = None, b_res: Tensor | None = None,
                  b_skip: Tensor | None = None, *, dilation: int = 1, cond: Tensor | None = None,
                  skip: Tensor | None = None, initial_state: Tensor | None = None,
                  return_final_state: bool = False, backend: str | None = None):
    """One WaveNet residual layer, fused: dilated causal conv -> + conditioning -> tanh * sigmoid
    gate -> 1x1 residual and skip projections. Returns (x + residual, skip + skip projection)
    (and, with return_final_state, the conv's final_state as causal_conv1d's).

    x: (B, R, T). w_dil: (G, R, K) (the dilated conv's weight, G = 2H: the first H output
    channels are the filter, the last H the gate). w_res: (R, H), w_skip: (S, H) (or their
    (R, H, 1) / (S, H, 1) Conv1d forms). cond: conditioning already projected to the gate
    channels, (B, G, T) (local) or (B, G, 1) (global). skip: the running skip sum (B, S, T) or
    None (zeros). initial_state: the conv's history (B, R, (K-1)*dilation).

    The gate activations are never stored: the backward recomputes them (one conv per layer)
    in its fused kernel. The backward is differentiable to any order.
    """
    check_conv(x, w_dil, b_dil, dilation, 1)
    B, R, T = x.shape
    G = w_dil.shape[0]
    if G % 2:
        raise ValueError(f"w_dil: the gate channels (dim 0) must be even (filter and gate "
                         f"halves), got {G}")
    H = G // 2
    w_res = _matrix("w_res", w_res, R, H)
    w_skip = _matrix("w_skip", w_skip, None, H)
    S = w_skip.shape[0]
    for name, t in (("w_res", w_res), ("w_skip", w_skip)):
        same(name, t, x, "x")
    _vector("b_res", b_res, R, x)
    _vector("b_skip", b_skip, S, x)
    if cond is not None:
        _checks.tensor("cond", cond)
        if cond.dim() != 3 or cond.shape[:2] != (B, G) or cond.shape[2] not in (1, T):
            raise ValueError(f"cond must have shape ({B}, {G}, {T}) (local) or ({B}, {G}, 1) "
                             f"(global), got {tuple(cond.shape)}")
        same("cond", cond, x, "x")
    if skip is not None:
        _checks.tensor("skip", skip)
        if tuple(skip.shape) != (B, S, T):
            raise ValueError(f"skip must have shape ({B}, {S}, {T}), got {tuple(skip.shape)}")
        same("skip", skip, x, "x")
    P = (w_dil.shape[-1] - 1) * dilation
    h = initial_state
    if h is not None:
        _checks.tensor("initial_state", h)
        if tuple(h.shape) != (B, R, P):
            raise ValueError(f"initial_state must have shape ({B}, {R}, {P}), got "
                             f"{tuple(h.shape)}")
        same("initial_state", h, x, "x")
    _checks.boolean("return_final_state", return_final_state)
    args = autocast_args(x, h, cond, skip, w_dil, b_dil, w_res, b_res, w_skip, b_skip)
    name = backends.resolve("causal_conv_layer", args[0], backend)
    if torch.compiler.is_compiling():
        xo, so = wavenet_layer_fwd(*args, dilation, name)
    else:
        xo, so = layer_fwd(*args, dilation, name)
    if not return_final_state:
        return xo, so
    x, h = args[0], args[1]
    hist = h if h is not None else x.new_zeros(B, R, P)
    return xo, so, torch.cat([hist, x], -1)[..., T:].contiguous()
