"""Causal dilated conv1d: public API, reference, torch.library ops, dispatch (op stem
`causal_conv`). The fused WaveNet layer (genfast/ops/causal_conv_layer.py) and whole-network
generation (genfast/ops/causal_conv_generate.py) build on these three kernels.

The contract every backend implements (this docstring is the spec; kernels cite it).
Kernels: reference here, C++ CPU csrc/cpu/causal_conv.cpp, Triton kernels/causal_conv.py, CUDA
csrc/cuda/causal_conv.cu. Every tensor reaching a kernel is contiguous and of one dtype; math is
in float32 (float64 for float64 data), one rounding at the store.

x: (B, C_in, T). weight: (C_out, C_in/groups, K). bias: (C_out,) or None. K >= 1, dilation
d >= 1, groups divides C_in and C_out. P = (K-1)*d is the history length.
x~ = [h | x] along time (length P+T; h = initial_state (B, C_in, P), or zeros); index j of x~ is
time j - P. With Cg = C_in/groups, Og = C_out/groups and g(co) = co // Og:

## causal_conv1d_fwd(x, h, w, b, act) -> y (B, C_out, T)
u[b,co,t] = bias[co] + sum_{k<K} sum_{ci<Cg} w[co,ci,k] * x~[b, g(co)*Cg + ci, t + k*d]
y = act(u), act: 0 none, 1 silu, 2 relu, 3 tanh. y[..., t] depends on x[..., <= t] only.

## causal_conv1d_bwd_input(g, w, with_state) -> dx   (the adjoint of fwd's x~, act none)
dx~[b, g*Cg+ci, j] = sum_k sum_{co in group g} w[co,ci,k] * g[b, co, j - k*d], j in [0, P+T),
terms with j - k*d outside [0, T) being 0. with_state: dx = dx~ (B, C_in, P+T); otherwise
dx = dx~[..., P:] (B, C_in, T).

## causal_conv1d_bwd_weight(g, x, h, K) -> dw (C_out, C_in/groups, K)
dw[co,ci,k] = sum_b sum_t g[b,co,t] * x~[b, g(co)*Cg + ci, t + k*d]. Deterministic: the same
bits for any thread count (no atomics; fixed-order partial sums).

## causal_conv1d_update(x_new, state, w, b, seqlens, act) -> y (B, C_out, L)   (mutates state)
L new steps x_new (B, C_in, L) against state (B, C_in, S), S >= P.
Ring mode (seqlens (B,) int64 given: n_b = steps stream b has consumed): position p lives in
slot p mod S (Python's mod). Step i is position p = n_b + i; tap k reads position
q = p - (K-1-k)*d: x_new[b, :, q - n_b] if q >= n_b, else state[b, :, q mod S] (a zero state
reads 0 for q < 0: the causal zero padding). After all L outputs are computed, x_new[:, :, i] is
written to slot (n_b + i) mod S for i >= max(0, L - S). The caller advances seqlens by L.
Shift mode (seqlens None): the state holds the last S inputs, oldest first; the taps before
x_new read its tail, and afterwards it holds the last S inputs of [state | x_new].
A final_state of causal_conv1d is a ring with S = P and seqlens 0 (position -P+i is slot i),
and a shift-mode state alike: both continue the sequence exactly.

## Autograd (every order)
The conv is bilinear in (x~, w), so each derivative of the three kernels is one of them:
fwd: du = dy * act'(u) (u recomputed with act none; nothing u-sized is saved),
  dx~ = bwd_input(du, w), dw = bwd_weight(du, x, h), db = du.sum((0, 2)).
bwd_input(g, w) -> dx~: d g = fwd(gg), d w = bwd_weight(g, gg) (gg split at P into h and x).
bwd_weight(g, x, h) -> dw: d g = fwd(x, h, gw), d x~ = bwd_input(g, gw).
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
)
from ._causal_conv_checks import ACTIVATIONS as ACTIVATIONS
from ._causal_conv_checks import activation_code, autocast_args, check_conv, route, same
from ._causal_conv_ref import (
    history,
    ref_bwd_input,
    ref_bwd_weight,
    ref_fwd,
    ref_update,
)
from ._causal_conv_ref import (
    ref_activation as ref_activation,
)
from ._eager import eager_op

SPEC = backends.register_op(backends.OpSpec(name="causal_conv", dtypes=standard_dtypes()))
_FWD, _BWD_IN, _BWD_W, _UPDATE = range(4)


def _opt(t: Tensor | None):
    """An optional tensor as a kernel argument: its pointer, or 0 (absent)."""
    return 0 if t is None else t


# --------------------------------------------------------------------------- compiled backends
def _native_fwd(backend, x, h, w, b, dilation, groups, act):
    (B, Cin, T), (Cout, _, K) = x.shape, w.shape
    y = x.new_empty(B, Cout, T)
    if y.numel():
        native(backend, "causal_conv1d_fwd", x, _opt(h), w, _opt(b), y, B, Cin, Cout, T, K,
               dilation, groups, act, dtype_code(x))
    return y


def _native_bwd_input(backend, g, w, dilation, groups, with_state):
    (B, Cout, T), (_, Cg, K) = g.shape, w.shape
    Cin, P = Cg * groups, (K - 1) * dilation
    dx = g.new_empty(B, Cin, T + P if with_state else T)
    if T == 0:
        return dx.zero_()
    if dx.numel():
        native(backend, "causal_conv1d_bwd_input", g, w, dx, B, Cin, Cout, T, K, dilation,
               groups, with_state, dtype_code(g))
    return dx


def _native_bwd_weight(backend, g, x, h, K, dilation, groups):
    (B, Cout, T), Cin = g.shape, x.shape[1]
    dw = g.new_empty(Cout, Cin // groups, K)
    if T == 0 or B == 0:
        return dw.zero_()
    if dw.numel():
        native(backend, "causal_conv1d_bwd_weight", g, x, _opt(h), dw, B, Cin, Cout, T, K,
               dilation, groups, dtype_code(g))
    return dw


def _native_update(backend, x_new, state, w, b, seqlens, dilation, groups, act):
    (B, Cin, L), (Cout, _, K), S = x_new.shape, w.shape, state.shape[-1]
    y = x_new.new_empty(B, Cout, L)
    if y.numel() or (L and state.numel()):
        native(backend, "causal_conv1d_update", x_new, state, w, _opt(b), _opt(seqlens), y, B,
               Cin, Cout, L, S, K, dilation, groups, act, dtype_code(x_new))
    return y


def _triton_fwd(x, h, w, b, dilation, groups, act):
    y = x.new_empty(x.shape[0], w.shape[0], x.shape[2])
    return triton_kernels("causal_conv").fwd(x, h, w, b, y, dilation, groups, act)


def _triton_bwd_input(g, w, dilation, groups, with_state):
    P = (w.shape[-1] - 1) * dilation
    dx = g.new_empty(g.shape[0], w.shape[1] * groups, g.shape[2] + (P if with_state else 0))
    return triton_kernels("causal_conv").bwd_input(g, w, dx, dilation, groups, with_state)


def _triton_bwd_weight(g, x, h, K, dilation, groups):
    dw = g.new_empty(g.shape[1], x.shape[1] // groups, K)
    return triton_kernels("causal_conv").bwd_weight(g, x, h, dw, dilation, groups)


def _triton_update(x_new, state, w, b, seqlens, dilation, groups, act):
    y = x_new.new_empty(x_new.shape[0], w.shape[0], x_new.shape[2])
    return triton_kernels("causal_conv").update(x_new, state, w, b, seqlens, y, dilation,
                                                groups, act)


implementations(
    "causal_conv",
    reference=(ref_fwd, ref_bwd_input, ref_bwd_weight, ref_update),
    native=(_native_fwd, _native_bwd_input, _native_bwd_weight, _native_update),
    triton=(_triton_fwd, _triton_bwd_input, _triton_bwd_weight, _triton_update),
)


def _c(t: Tensor | None) -> Tensor | None:
    return None if t is None else t.contiguous()


# --------------------------------------------------------------------------- torch.library ops
def _fwd_impl(x, h, w, b, dilation, groups, act, backend):
    return backends.call("causal_conv", backend, _FWD, x.contiguous(), _c(h), w.contiguous(),
                         _c(b), dilation, groups, act)


def _bwd_input_impl(g, w, dilation, groups, with_state, backend):
    return backends.call("causal_conv", backend, _BWD_IN, g.contiguous(), w.contiguous(),
                         dilation, groups, with_state)


def _bwd_weight_impl(g, x, h, kernel_size, dilation, groups, backend):
    return backends.call("causal_conv", backend, _BWD_W, g.contiguous(), x.contiguous(), _c(h),
                         kernel_size, dilation, groups)


@torch.library.custom_op("genfast::causal_conv1d_fwd", mutates_args=())
def causal_conv1d_fwd(x: Tensor, h: Optional[Tensor], w: Tensor, b: Optional[Tensor],  # noqa: UP045
                      dilation: int, groups: int, act: int, backend: str) -> Tensor:
    return _fwd_impl(x, h, w, b, dilation, groups, act, backend)


@torch.library.custom_op("genfast::causal_conv1d_bwd_input", mutates_args=())
def causal_conv1d_bwd_input(g: Tensor, w: Tensor, dilation: int, groups: int, with_state: bool,
                            backend: str) -> Tensor:
    return _bwd_input_impl(g, w, dilation, groups, with_state, backend)


@torch.library.custom_op("genfast::causal_conv1d_bwd_weight", mutates_args=())
def causal_conv1d_bwd_weight(g: Tensor, x: Tensor, h: Optional[Tensor],  # noqa: UP045
                             kernel_size: int, dilation: int, groups: int,
                             backend: str) -> Tensor:
    return _bwd_weight_impl(g, x, h, kernel_size, dilation, groups, backend)


@torch.library.custom_op("genfast::causal_conv1d_update", mutates_args=("state",))
def causal_conv1d_update_op(x_new: Tensor, state: Tensor, w: Tensor, b: Optional[Tensor],  # noqa: UP045
                            seqlens: Optional[Tensor], dilation: int, groups: int,  # noqa: UP045
                            act: int, backend: str) -> Tensor:
    return backends.call("causal_conv", backend, _UPDATE, x_new.contiguous(), state,
                         w.contiguous(), _c(b), _c(seqlens), dilation, groups, act)


@causal_conv1d_fwd.register_fake
def _(x, h, w, b, dilation, groups, act, backend):
    return x.new_empty(x.shape[0], w.shape[0], x.shape[2])


@causal_conv1d_bwd_input.register_fake
def _(g, w, dilation, groups, with_state, backend):
    P = (w.shape[-1] - 1) * dilation
    return g.new_empty(g.shape[0], w.shape[1] * groups, g.shape[2] + (P if with_state else 0))


@causal_conv1d_bwd_weight.register_fake
def _(g, x, h, kernel_size, dilation, groups, backend):
    return g.new_empty(g.shape[1], x.shape[1] // groups, kernel_size)


@causal_conv1d_update_op.register_fake
def _(x_new, state, w, b, seqlens, dilation, groups, act, backend):
    return x_new.new_empty(x_new.shape[0], w.shape[0], x_new.shape[2])


def activation_grad(dy: Tensor, u: Tensor, act: int) -> Tensor:
    """dy * act'(u) by torch's fused pointwise backward ops (one pass each; tanh's and relu's
    are differentiable again). silu_backward has no derivative formula: under create_graph
    silu's is written out instead."""
    if act == 1:
        if torch.is_grad_enabled():
            s = torch.sigmoid(u)
            return dy * s * (1 + u * (1 - s))
        return torch.ops.aten.silu_backward(dy, u)
    if act == 2:
        return torch.ops.aten.threshold_backward(dy, u, 0)
    if act == 3:
        return torch.ops.aten.tanh_backward(dy, torch.tanh(u))
    return dy


def _split(xt: Tensor, P: int) -> tuple[Tensor, Tensor]:
    return xt[..., P:], xt[..., :P]


def _fwd_setup(ctx, inputs, output):
    x, h, w, b, ctx.dilation, ctx.groups, ctx.act, ctx.backend = inputs
    ctx.has_h, ctx.has_b = h is not None, b is not None
    ctx.save_for_backward(x, h, w, b if ctx.act else None)


def _fwd_grad(ctx, gy):
    x, h, w, b = ctx.saved_tensors
    d, G, be = ctx.dilation, ctx.groups, ctx.backend
    du = gy
    if ctx.act:
        du = activation_grad(gy, conv_fwd(x, h, w, b, d, G, 0, be), ctx.act)
    P = (w.shape[-1] - 1) * d
    nx, nh, nw, nb = ctx.needs_input_grad[:4]
    dx = dh = dw = db = None
    if nx or nh:
        dxt = conv_bwd_input(du, w, d, G, bool(nh), be)
        dx, dh = _split(dxt, P) if nh else (dxt, None)
    if nw:
        dw = conv_bwd_weight(du, x, h, w.shape[-1], d, G, be)
    if nb and ctx.has_b:
        db = du.sum((0, 2))
    return dx, dh, dw, db, None, None, None, None


def _bwd_input_setup(ctx, inputs, output):
    g, w, ctx.dilation, ctx.groups, ctx.with_state, ctx.backend = inputs
    ctx.save_for_backward(g, w)


def _bwd_input_grad(ctx, gg):
    g, w = ctx.saved_tensors
    d, G, be = ctx.dilation, ctx.groups, ctx.backend
    P = (w.shape[-1] - 1) * d
    gx, gh = _split(gg, P) if ctx.with_state else (gg, None)
    dg = conv_fwd(gx, gh, w, None, d, G, 0, be) if ctx.needs_input_grad[0] else None
    dw = conv_bwd_weight(g, gx, gh, w.shape[-1], d, G, be) if ctx.needs_input_grad[1] else None
    return dg, dw, None, None, None, None


def _bwd_weight_setup(ctx, inputs, output):
    g, x, h, ctx.kernel_size, ctx.dilation, ctx.groups, ctx.backend = inputs
    ctx.save_for_backward(g, x, h)


def _bwd_weight_grad(ctx, gw):
    g, x, h = ctx.saved_tensors
    d, G, be = ctx.dilation, ctx.groups, ctx.backend
    P = (ctx.kernel_size - 1) * d
    dg = conv_fwd(x, h, gw, None, d, G, 0, be) if ctx.needs_input_grad[0] else None
    dx = dh = None
    if ctx.needs_input_grad[1] or ctx.needs_input_grad[2]:
        with_h = h is not None and ctx.needs_input_grad[2]
        dxt = conv_bwd_input(g, gw, d, G, with_h, be)
        dx, dh = _split(dxt, P) if with_h else (dxt, None)
    return dg, dx, dh, None, None, None, None


causal_conv1d_fwd.register_autograd(_fwd_grad, setup_context=_fwd_setup)
causal_conv1d_bwd_input.register_autograd(_bwd_input_grad, setup_context=_bwd_input_setup)
causal_conv1d_bwd_weight.register_autograd(_bwd_weight_grad, setup_context=_bwd_weight_setup)
# The ops as callers use them: in plain eager mode their implementations under their own
# autograd formulas, the ops themselves otherwise (genfast/ops/_eager.py).
conv_fwd = eager_op(causal_conv1d_fwd, _fwd_impl, _fwd_setup, _fwd_grad)
conv_bwd_input = eager_op(causal_conv1d_bwd_input, _bwd_input_impl, _bwd_input_setup,
                          _bwd_input_grad)
conv_bwd_weight = eager_op(causal_conv1d_bwd_weight, _bwd_weight_impl, _bwd_weight_setup,
                           _bwd_weight_grad)


# --------------------------------------------------------------------------- public API
def causal_conv1d(x: Tensor, weight: Tensor, bias: Tensor | None = None, *, dilation: int = 1,
                  groups: int = 1, activation: str | None = None,
                  initial_state: Tensor | None = None, return_final_state: bool = False,
                  backend: str | None = None) -> Tensor | tuple[Tensor, Tensor]:
    """Causal dilated 1-D convolution: y[..., t] sees only x[..., <= t].

    x: (B, C_in, T); weight: (C_out, C_in/groups, K) (nn.Conv1d's layout); bias: (C_out,).
    The input is padded on the left by (K-1)*dilation zeros, or by `initial_state`
    (B, C_in, (K-1)*dilation), the history before x[..., 0]. Any K >= 1, any dilation >= 1,
    dense, grouped and depthwise (groups = C_in = C_out). `activation`: None, "silu" (=
    "swish"), "relu" or "tanh", fused into the kernel's store.

    return_final_state=True also returns the last (K-1)*dilation inputs of [initial_state | x]
    (B, C_in, P): passing it as the next call's initial_state (or as the state of
    causal_conv1d_update) continues the sequence exactly.

    Equals ``F.conv1d(F.pad(x, (P, 0)), weight, bias, dilation=dilation, groups=groups)``
    followed by the activation. Backward (dx, dweight, dbias, dinitial_state) runs on the same
    kernels, and is itself differentiable to any order (gradient penalties through a WaveNet
    critic). float32 accumulation; float16 / bfloat16 on the GPU backends; under CUDA autocast
    the autocast dtype, as F.conv1d. backend: "auto" (default), "reference", "cpu", "triton",
    "cuda"; see genfast.backends.
    """
    P = check_conv(x, weight, bias, dilation, groups)
    act = activation_code(activation)
    _checks.boolean("return_final_state", return_final_state)
    h = initial_state
    if h is not None:
        _checks.tensor("initial_state", h)
        want = (x.shape[0], x.shape[1], P)
        if tuple(h.shape) != want:
            raise ValueError(f"initial_state must have shape (B, C_in, (K-1)*dilation) = {want}, "
                             f"got {tuple(h.shape)}")
        same("initial_state", h, x, "x")
    x, weight, bias, h = autocast_args(x, weight, bias, h)
    name = route(backends.resolve("causal_conv", x, backend), weight)
    if torch.compiler.is_compiling():
        y = causal_conv1d_fwd(x, h, weight, bias, dilation, groups, act, name)
    else:
        y = conv_fwd(x, h, weight, bias, dilation, groups, act, name)
    if not return_final_state:
        return y
    hist = h if h is not None else history(x, P)
    return y, torch.cat([hist, x], -1)[..., x.shape[-1]:].contiguous()


def causal_conv1d_update(x_new: Tensor, state: Tensor, weight: Tensor, bias: Tensor | None = None,
                         *, dilation: int = 1, groups: int = 1, activation: str | None = None,
                         cache_seqlens: Tensor | None = None,
                         backend: str | None = None) -> Tensor:
    """Decode step(s) of causal_conv1d: L new inputs against a state of past inputs.

    x_new: (B, C_in, L), or (B, C_in) for one step (then y is (B, C_out)). state:
    (B, C_in, S) with S >= (K-1)*dilation, updated in place. With cache_seqlens ((B,) int,
    the number of steps each stream has consumed) the state is a ring buffer: position p lives
    in slot p mod S and nothing is shifted; the caller adds L to cache_seqlens afterwards.
    Without it the state is the last S inputs, oldest first, shifted by L (causal-conv1d's
    convention). Either way the outputs equal causal_conv1d over the whole sequence.

    Not differentiable (a decoding op): with grad mode on and an input that requires grad it
    raises; train with causal_conv1d(..., initial_state=...).
    """
    squeeze = isinstance(x_new, Tensor) and x_new.dim() == 2
    if squeeze:
        x_new = x_new.unsqueeze(-1)
    P = check_conv(x_new, weight, bias, dilation, groups, "x_new")
    act = activation_code(activation)
    _checks.tensor("state", state)
    B, C = x_new.shape[:2]
    if state.dim() != 3 or state.shape[:2] != (B, C) or state.shape[2] < P:
        raise ValueError(f"state must have shape (B, C_in, S) = ({B}, {C}, S) with S >= "
                         f"(K-1)*dilation = {P}, got {tuple(state.shape)}")
    same("state", state, x_new, "x_new")
    if not state.is_contiguous():
        raise ValueError("state must be contiguous (it is updated in place)")
    if torch.is_grad_enabled() and any(t is not None and t.requires_grad
                                       for t in (x_new, state, weight, bias)):
        raise RuntimeError("causal_conv1d_update is not differentiable (a decoding step); "
                           "use causal_conv1d(..., initial_state=...) to train, or call it "
                           "under torch.no_grad()")
    if cache_seqlens is not None:
        if not isinstance(cache_seqlens, Tensor) or cache_seqlens.dtype not in (torch.int32,
                                                                                torch.int64):
            raise TypeError("cache_seqlens must be an int32 or int64 tensor")
        if tuple(cache_seqlens.shape) != (B,) or cache_seqlens.device != x_new.device:
            raise ValueError(f"cache_seqlens must have shape ({B},) on {x_new.device}, got "
                             f"{tuple(cache_seqlens.shape)} on {cache_seqlens.device}")
        cache_seqlens = cache_seqlens.to(torch.int64)
    name = backends.resolve("causal_conv", x_new, backend)
    y = causal_conv1d_update_op(x_new, state, weight, bias, cache_seqlens, dilation, groups, act,
                                name)
    return y.squeeze(-1) if squeeze else y
