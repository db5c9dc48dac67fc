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
import torch.nn.functional as F
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

SPEC = backends.register_op(backends.OpSpec(name="causal_conv", dtypes=standard_dtypes()))
ACTIVATIONS = {None: 0, "none": 0, "silu": 1, "swish": 1, "relu": 2, "tanh": 3}
MAX_HISTORY = 2**31 - 1  # (K-1)*dilation must fit the kernels' int32 tile arithmetic
# `auto` on the CPU sends dense convs with more than this many (input channel, tap) pairs per
# output, or more output channels, to the reference (torch's oneDNN convolution): measured at 2
# threads, genfast's one-level register tiles are 1.6x oneDNN's forward at (4, 256->256, 4000,
# K=3) but 0.96x at (2, 1024->1024, 1000, K=3), and its weight gradient falls behind first.
CPU_MAX_REDUCTION, CPU_MAX_OUT = 1024, 1024
_FWD, _BWD_IN, _BWD_W, _UPDATE = range(4)


def _opt(t: Tensor | None):
    """An optional tensor as a kernel argument: its pointer, or 0 (absent)."""
    return 0 if t is None else t


def _history(x: Tensor, P: int) -> Tensor:
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


def _ref_fwd(x, h, w, b, dilation, groups, act):
    if x.shape[-1] == 0:
        return x.new_empty(x.shape[0], w.shape[0], 0)
    wd = work_dtype(x.dtype)
    P = (w.shape[-1] - 1) * dilation
    xt = torch.cat([h.to(wd) if h is not None else _history(x, P).to(wd), x.to(wd)], -1)
    u = F.conv1d(xt, w.to(wd), None if b is None else b.to(wd), dilation=dilation, groups=groups)
    return ref_activation(u, act).to(x.dtype)


def _ref_bwd_input(g, w, dilation, groups, with_state):
    wd = work_dtype(g.dtype)
    P = (w.shape[-1] - 1) * dilation
    B, _, T = g.shape
    if T == 0:
        return g.new_zeros(B, w.shape[1] * groups, P if with_state else 0)
    dxt = F.conv_transpose1d(g.to(wd), w.to(wd), dilation=dilation, groups=groups)  # P+T long
    return (dxt if with_state else dxt[..., P:]).to(g.dtype).contiguous()


def _ref_bwd_weight(g, x, h, K, dilation, groups):
    wd = work_dtype(g.dtype)
    P = (K - 1) * dilation
    xt = torch.cat([h.to(wd) if h is not None else _history(x, P).to(wd), x.to(wd)], -1)
    shape = (g.shape[1], x.shape[1] // groups, K)
    if g.shape[-1] == 0:
        return g.new_zeros(shape)
    dw = torch.nn.grad.conv1d_weight(xt, shape, g.to(wd), dilation=dilation, groups=groups)
    return dw.to(g.dtype)


def _ref_update(x_new, state, w, b, seqlens, dilation, groups, act):
    P = (w.shape[-1] - 1) * dilation
    B, C, L = x_new.shape
    S = state.shape[-1]
    if seqlens is None:
        h = state[..., S - P:].clone()
        y = _ref_fwd(x_new, h, w, b, dilation, groups, act)
        state.copy_(torch.cat([state, x_new], -1)[..., -S:])
        return y
    n = seqlens.to(torch.int64).view(B, 1)
    # The P positions before each stream's first new step, gathered from their ring slots.
    hist = torch.remainder(n - P + torch.arange(P, device=state.device), S) if S else n[:, :0]
    h = state.gather(2, hist.view(B, 1, P).expand(B, C, P))
    y = _ref_fwd(x_new, h, w, b, dilation, groups, act)
    first = max(0, L - S)
    if L - first > 0:
        slots = torch.remainder(n + torch.arange(first, L, device=state.device), S)
        state.scatter_(2, slots.view(B, 1, -1).expand(B, C, L - first), x_new[..., first:])
    return y


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
    reference=(_ref_fwd, _ref_bwd_input, _ref_bwd_weight, _ref_update),
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


# --------------------------------------------------------------------------- argument checks
def activation_code(activation: str | None) -> int:
    if activation not in ACTIVATIONS:
        names = ", ".join(repr(a) for a in ACTIVATIONS)
        raise ValueError(f"activation must be one of {names}, got {activation!r}")
    return ACTIVATIONS[activation]


def check_conv(x: Tensor, weight: Tensor, bias: Tensor | None, dilation: int, groups: int,
               x_name: str = "x") -> int:
    """Validate a causal conv call; returns P = (K-1)*dilation."""
    _checks.tensor(x_name, x)
    _checks.tensor("weight", weight)
    if x.dim() != 3:
        raise ValueError(f"{x_name} must be 3-D (B, C_in, T), got shape {tuple(x.shape)}")
    if weight.dim() != 3:
        raise ValueError(f"weight must be 3-D (C_out, C_in/groups, K), got shape "
                         f"{tuple(weight.shape)}")
    groups = _checks.integer("groups", groups, 1)
    dilation = _checks.integer("dilation", dilation, 1)
    C_in, (C_out, Cg, K) = x.shape[1], weight.shape
    if K < 1:
        raise ValueError("weight: kernel size (last dim) must be >= 1, got 0")
    if C_in % groups or C_out % groups:
        raise ValueError(f"groups={groups} must divide C_in={C_in} and C_out={C_out}")
    if Cg != C_in // groups:
        raise ValueError(f"weight: expected (C_out, C_in/groups={C_in // groups}, K), got "
                         f"{tuple(weight.shape)}")
    if (K - 1) * dilation > MAX_HISTORY:
        raise ValueError(f"kernel_size-1 times dilation ({K - 1} * {dilation}) overflows the "
                         f"history length limit {MAX_HISTORY}")
    _same("weight", weight, x, x_name)
    if bias is not None:
        _checks.tensor("bias", bias)
        if tuple(bias.shape) != (C_out,):
            raise ValueError(f"bias must have shape ({C_out},), got {tuple(bias.shape)}")
        _same("bias", bias, x, x_name)
    return (K - 1) * dilation


def _same(name: str, t: Tensor, x: Tensor, x_name: str) -> None:
    if t.dtype != x.dtype:
        raise TypeError(f"{name} must have {x_name}'s dtype {x.dtype}, got {t.dtype}")
    if t.device != x.device:
        raise ValueError(f"{name} must be on {x_name}'s device {x.device}, got {t.device}")


def route(name: str, weight: Tensor) -> str:
    """`auto`'s choice, or the reference for CPU convs too big for genfast's CPU tiles."""
    C_out, Cg, K = weight.shape
    if name == backends.AUTO_PREFIX + "cpu" and (Cg * K > CPU_MAX_REDUCTION
                                                 or C_out > CPU_MAX_OUT):
        return backends.AUTO_PREFIX + "reference"
    return name


def autocast_args(*tensors: Tensor | None) -> list[Tensor | None]:
    """Under CUDA autocast a convolution runs in the autocast dtype (conv1d is on autocast's
    lower-precision list): the same cast here keeps genfast a drop-in under AMP."""
    x = tensors[0]
    if x.device.type != "cuda" or not torch.is_autocast_enabled("cuda"):
        return list(tensors)
    dt = torch.get_autocast_dtype("cuda")
    return [None if t is None else t.to(dt) for t in tensors]


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
        _same("initial_state", h, x, "x")
    x, weight, bias, h = autocast_args(x, weight, bias, h)
    name = route(backends.resolve("causal_conv", x, backend), weight)
    if torch.compiler.is_compiling():
        y = causal_conv1d_fwd(x, h, weight, bias, dilation, groups, act, name)
    else:
        y = conv_fwd(x, h, weight, bias, dilation, groups, act, name)
    if not return_final_state:
        return y
    hist = h if h is not None else _history(x, P)
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
    _same("state", state, x_new, "x_new")
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
