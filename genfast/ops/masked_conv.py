"""Masked (PixelCNN) convolutions: public API, torch.library ops, dispatch (op stem
`masked_conv`). The gated PixelCNN layer (genfast/ops/masked_conv_layer.py) and cached
generation (genfast/ops/masked_conv_generate.py) build on the region convolution defined here.

The contract every backend implements (this docstring is the spec; kernels cite it). Kernels:
reference genfast/ops/_masked_conv_ref.py (the cropped-kernel decomposition on torch's convs),
C++ CPU csrc/cpu/masked_conv.cpp, Triton kernels/masked_conv.py, CUDA csrc/cuda/masked_conv.cu.
Every tensor reaching a kernel is contiguous and of one dtype; math in float32 (float64 for
float64 data), one rounding at the store.

## The region convolution
x: (B, C_in, H, W); w: (C_out, C_in, kh, kw), the FULL weight (checkpoints keep their shape),
of which only the region's taps are read; b: (C_out,) or None. Region (see Region):
stride (sh, sw) >= 1, top/left zero padding (pt, pl) >= 0, and which taps are read: tap (r, s)
is read for the pair (co, ci) iff

    r < rows,  or  r == rows and s < cols,  or  r == rows and s == cols and centre(co, ci)

centre: 0 never, 1 grp(ci) < grp(co) (mask A), 2 grp(ci) <= grp(co) (mask B), with the colour
group grp(c, C) = c * G // C (G = color_groups; contiguous blocks R, G, B). With G = 1 mask A
skips the centre and mask B reads it. A 5x5 mask B (x read, . never read):

    x x x x x
    x x x x x
    x x B . .
    . . . . .
    . . . . .

## masked_conv2d_fwd(x, w, b, region, Ho, Wo) -> y (B, C_out, Ho, Wo)
y[n,co,i,j] = b[co] + sum_{ci, (r,s) read} w[co,ci,r,s] * x[n, ci, i*sh - pt + r, j*sw - pl + s]
(x is 0 outside the image). Kernels take `accumulate` (y += instead of y =) for the fused layer.

## masked_conv2d_bwd_input(g, w, H, W, region) -> dx (B, C_in, H, W)   (the adjoint in x)
dx[n,ci,p,q] = sum of w[co,ci,r,s] * g[n,co,i,j] over read taps with i*sh-pt+r = p, j*sw-pl+s = q.

## masked_conv2d_bwd_weight(g, x, kh, kw, region) -> dw (C_out, C_in, kh, kw)
dw[co,ci,r,s] = sum_{n,i,j} g[n,co,i,j] * x[n, ci, i*sh-pt+r, j*sw-pl+s] on read taps, exactly 0
on the others (the gradient of conv2d(x, w * mask) in w). Deterministic: no atomics.

## Autograd (every order): the conv is bilinear in (x, w)
fwd: dx = bwd_input(dy, w), dw = bwd_weight(dy, x), db = dy.sum((0, 2, 3)).
bwd_input(g, w): d g = fwd(gg, w), d w = bwd_weight(g, gg).
bwd_weight(g, x): d g = fwd(x, gw), d x = bwd_input(g, gw).
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from .. import backends
from ._boundary import dtype_code, implementations, native, standard_dtypes, triton_kernels
from ._eager import eager_op
from ._masked_conv_checks import autocast_args, check_masked, route
from ._masked_conv_ref import Region, ref_bwd_input, ref_bwd_weight, ref_fwd
from ._masked_conv_ref import region_mask as region_mask

SPEC = backends.register_op(backends.OpSpec(name="masked_conv", dtypes=standard_dtypes()))
_FWD, _BWD_IN, _BWD_W = range(3)


def _opt(t: Tensor | None):
    return 0 if t is None else t


# --------------------------------------------------------------------------- compiled backends
# Every implementation's fwd takes `acc`: None (a new output) or a contiguous (B, C_out, Ho, Wo)
# tensor of x's dtype that the conv is added into, in place (the fused gated layer's link and
# residual), and returns the output.
def _native_fwd(backend, x, w, b, g: Region, Ho, Wo, acc=None):
    (B, Cin, H, W), (Cout, _, kh, kw) = x.shape, w.shape
    y = x.new_empty(B, Cout, Ho, Wo) if acc is None else acc
    if y.numel():
        native(backend, "masked_conv2d_fwd", x, w, _opt(b), y, B, Cin, Cout, H, W, Ho, Wo, kh, kw,
               g.sh, g.sw, g.pt, g.pl, g.rows, g.cols, g.center, g.groups, acc is not None,
               dtype_code(x))
    return y


def _native_bwd_input(backend, gy, w, H, W, g: Region):
    (B, Cout, Ho, Wo), (_, Cin, kh, kw) = gy.shape, w.shape
    dx = gy.new_empty(B, Cin, H, W)
    if dx.numel():
        native(backend, "masked_conv2d_bwd_input", gy, w, dx, B, Cin, Cout, H, W, Ho, Wo, kh, kw,
               g.sh, g.sw, g.pt, g.pl, g.rows, g.cols, g.center, g.groups, dtype_code(gy))
    return dx


def _native_bwd_weight(backend, gy, x, kh, kw, g: Region):
    (B, Cout, Ho, Wo), (_, Cin, H, W) = gy.shape, x.shape
    dw = gy.new_empty(Cout, Cin, kh, kw)
    if B == 0:
        return dw.zero_()
    native(backend, "masked_conv2d_bwd_weight", gy, x, dw, B, Cin, Cout, H, W, Ho, Wo, kh, kw,
           g.sh, g.sw, g.pt, g.pl, g.rows, g.cols, g.center, g.groups, dtype_code(gy))
    return dw


def _triton_fwd(x, w, b, g: Region, Ho, Wo, acc=None):
    y = x.new_empty(x.shape[0], w.shape[0], Ho, Wo) if acc is None else acc
    return triton_kernels("masked_conv").fwd(x, w, b, y, g, acc is not None)


def _triton_bwd_input(gy, w, H, W, g: Region):
    dx = gy.new_empty(gy.shape[0], w.shape[1], H, W)
    return triton_kernels("masked_conv").bwd_input(gy, w, dx, g)


def _triton_bwd_weight(gy, x, kh, kw, g: Region):
    dw = gy.new_empty(gy.shape[1], x.shape[1], kh, kw)
    return triton_kernels("masked_conv").bwd_weight(gy, x, dw, g)


implementations(
    "masked_conv",
    reference=(ref_fwd, ref_bwd_input, ref_bwd_weight),
    native=(_native_fwd, _native_bwd_input, _native_bwd_weight),
    triton=(_triton_fwd, _triton_bwd_input, _triton_bwd_weight),
)


def _c(t: Tensor | None) -> Tensor | None:
    return None if t is None else t.contiguous()


# --------------------------------------------------------------------------- torch.library ops
def _fwd_impl(x, w, b, geom, Ho, Wo, backend):
    return backends.call("masked_conv", backend, _FWD, x.contiguous(), w.contiguous(), _c(b),
                         Region(*geom), Ho, Wo)


def _bwd_input_impl(g, w, H, W, geom, backend):
    return backends.call("masked_conv", backend, _BWD_IN, g.contiguous(), w.contiguous(), H, W,
                         Region(*geom))


def _bwd_weight_impl(g, x, kh, kw, geom, backend):
    return backends.call("masked_conv", backend, _BWD_W, g.contiguous(), x.contiguous(), kh, kw,
                         Region(*geom))


@torch.library.custom_op("genfast::masked_conv2d_fwd", mutates_args=())
def masked_conv2d_fwd(x: Tensor, w: Tensor, b: Optional[Tensor], geom: list[int],  # noqa: UP045
                      Ho: int, Wo: int, backend: str) -> Tensor:
    return _fwd_impl(x, w, b, geom, Ho, Wo, backend)


@torch.library.custom_op("genfast::masked_conv2d_bwd_input", mutates_args=())
def masked_conv2d_bwd_input(g: Tensor, w: Tensor, H: int, W: int, geom: list[int],
                            backend: str) -> Tensor:
    return _bwd_input_impl(g, w, H, W, geom, backend)


@torch.library.custom_op("genfast::masked_conv2d_bwd_weight", mutates_args=())
def masked_conv2d_bwd_weight(g: Tensor, x: Tensor, kh: int, kw: int, geom: list[int],
                             backend: str) -> Tensor:
    return _bwd_weight_impl(g, x, kh, kw, geom, backend)


@masked_conv2d_fwd.register_fake
def _(x, w, b, geom, Ho, Wo, backend):
    return x.new_empty(x.shape[0], w.shape[0], Ho, Wo)


@masked_conv2d_bwd_input.register_fake
def _(g, w, H, W, geom, backend):
    return g.new_empty(g.shape[0], w.shape[1], H, W)


@masked_conv2d_bwd_weight.register_fake
def _(g, x, kh, kw, geom, backend):
    return g.new_empty(g.shape[1], x.shape[1], kh, kw)


def _fwd_setup(ctx, inputs, output):
    x, w, b, ctx.geom, _, _, ctx.backend = inputs
    ctx.has_b = b is not None
    ctx.save_for_backward(x, w)


def _fwd_grad(ctx, gy):
    x, w = ctx.saved_tensors
    geom, be = ctx.geom, ctx.backend
    nx, nw, nb = ctx.needs_input_grad[:3]
    dx = conv_bwd_input(gy, w, x.shape[2], x.shape[3], geom, be) if nx else None
    dw = conv_bwd_weight(gy, x, w.shape[2], w.shape[3], geom, be) if nw else None
    db = gy.sum((0, 2, 3)) if nb and ctx.has_b else None
    return dx, dw, db, None, None, None, None


def _bwd_input_setup(ctx, inputs, output):
    g, w, _, _, ctx.geom, ctx.backend = inputs
    ctx.save_for_backward(g, w)


def _bwd_input_grad(ctx, gg):
    g, w = ctx.saved_tensors
    geom, be = ctx.geom, ctx.backend
    Ho, Wo = g.shape[-2:]
    dg = conv_fwd(gg, w, None, geom, Ho, Wo, be) if ctx.needs_input_grad[0] else None
    dw = conv_bwd_weight(g, gg, w.shape[2], w.shape[3], geom, be) \
        if ctx.needs_input_grad[1] else None
    return dg, dw, None, None, None, None


def _bwd_weight_setup(ctx, inputs, output):
    g, x, _, _, ctx.geom, ctx.backend = inputs
    ctx.save_for_backward(g, x)


def _bwd_weight_grad(ctx, gw):
    g, x = ctx.saved_tensors
    geom, be = ctx.geom, ctx.backend
    Ho, Wo = g.shape[-2:]
    dg = conv_fwd(x, gw, None, geom, Ho, Wo, be) if ctx.needs_input_grad[0] else None
    dx = conv_bwd_input(g, gw, x.shape[2], x.shape[3], geom, be) \
        if ctx.needs_input_grad[1] else None
    return dg, dx, None, None, None, None


masked_conv2d_fwd.register_autograd(_fwd_grad, setup_context=_fwd_setup)
masked_conv2d_bwd_input.register_autograd(_bwd_input_grad, setup_context=_bwd_input_setup)
masked_conv2d_bwd_weight.register_autograd(_bwd_weight_grad, setup_context=_bwd_weight_setup)
# The ops as callers use them: in plain eager mode their implementations under their own
# autograd formulas, the ops themselves otherwise (genfast/ops/_eager.py).
conv_fwd = eager_op(masked_conv2d_fwd, _fwd_impl, _fwd_setup, _fwd_grad)
conv_bwd_input = eager_op(masked_conv2d_bwd_input, _bwd_input_impl, _bwd_input_setup,
                          _bwd_input_grad)
conv_bwd_weight = eager_op(masked_conv2d_bwd_weight, _bwd_weight_impl, _bwd_weight_setup,
                           _bwd_weight_grad)


def region_conv2d(x: Tensor, weight: Tensor, bias: Tensor | None, region: Region, Ho: int,
                  Wo: int, backend: str) -> Tensor:
    """The region convolution as a differentiable op (every order) on a resolved backend name:
    the building block of the gated layer's differentiable path. Arguments are not checked."""
    geom = list(region)
    if torch.compiler.is_compiling():
        return masked_conv2d_fwd(x, weight, bias, geom, Ho, Wo, backend)
    return conv_fwd(x, weight, bias, geom, Ho, Wo, backend)


def region_conv2d_into(acc: Tensor | None, x: Tensor, weight: Tensor, bias: Tensor | None,
                       region: Region, Ho: int, Wo: int, backend: str) -> Tensor:
    """The forward kernel alone (no autograd), adding into `acc` in place when given: the fused
    gated layer's building block. Inputs must be contiguous and of one dtype."""
    return backends.call("masked_conv", backend, _FWD, x, weight, bias, region, Ho, Wo, acc)


def resolve(x: Tensor, weight: Tensor, region: Region, backend: str | None) -> str:
    """The backend name a region conv of this weight runs on (auto's routing included)."""
    return route(backends.resolve("masked_conv", x, backend), weight, region)


# --------------------------------------------------------------------------- public API
def masked_conv2d(x: Tensor, weight: Tensor, bias: Tensor | None = None, *, mask_type: str = "B",
                  stride: int | tuple[int, int] = 1, padding: str | int | tuple[int, int] = "same",
                  color_groups: int = 1, backend: str | None = None) -> Tensor:
    """PixelCNN's masked convolution: output (i, j) sees the rows above and the pixels to its
    left (and, mask "B", itself), computing only those taps.

    x: (B, C_in, H, W); weight: (C_out, C_in, kh, kw) with kh, kw odd (nn.Conv2d's layout; the
    masked taps are stored but never read); bias: (C_out,). mask_type "A" (the first layer:
    the centre is not seen) or "B". color_groups G > 1 splits channels into G contiguous groups
    (3 for R -> G -> B, PixelCNN's colour ordering): at the centre tap output group o sees input
    groups < o (A) or <= o (B). stride: int or pair; padding: "same" ((kh//2, kw//2)), an int or
    a pair, symmetric as in nn.Conv2d.

    Equals ``F.conv2d(x, weight * mask, bias, stride, padding)`` with mask =
    genfast.ops.masked_conv.region_mask(...) of this mask type (drawn in the module docstring).
    Backward (dx, dweight, dbias) runs on the same kernels, is zero on masked taps, and is
    itself differentiable to any order. float32 accumulation; float16 / bfloat16 on the GPU
    backends; under CUDA autocast the autocast dtype, as F.conv2d. backend: "auto" (default),
    "reference", "cpu", "triton", "cuda"; see genfast.backends.
    """
    region, Ho, Wo = check_masked(x, weight, bias, mask_type, stride, padding, color_groups)
    x, weight, bias = autocast_args(x, weight, bias)
    return region_conv2d(x, weight, bias, region, Ho, Wo, resolve(x, weight, region, backend))
