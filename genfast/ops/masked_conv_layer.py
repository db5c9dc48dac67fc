"""The gated PixelCNN layer, fused: public API, torch.library op, dispatch (op stem
`masked_conv_layer`; its convolutions are genfast/ops/masked_conv.py's region convs).

The contract every backend implements (this docstring is the spec; kernels cite it). Kernels:
reference (torch) in genfast/ops/_masked_conv_layer_ref.py, C++ CPU
csrc/cpu/masked_conv_layer.cpp, Triton kernels/masked_conv_layer.py, CUDA
csrc/cuda/masked_conv_layer.cu. Tensors are contiguous and of one dtype; math in float32
(float64 for float64).

## The layer (van den Oord et al. 2016b; vqvae-pytorch's GatedMaskedConv2d)
v, h: (B, C, H, W); wv (2C, C, c+1, k), k = 2c+1; wh (2C, C, 1, c+1); wl (2C, 2C, 1, 1);
wr (C, C, 1, 1); biases bv, bh, bl (2C), br (C), each may be None (zero); cond (B, 2C) or None
(zero): a per-image value added before both gates. mask "A" (the first layer) or "B":
    V   = vconv(v) + bv         rows i-c..i of v (mask B), i-c..i-1 (mask A); columns j-c..j+c
    v'  = gate(V + cond)
    Hp  = hconv(h) + bh + wl V + bl          hconv: row i, columns j-c..j (B), j-c..j-1 (A)
    h'  = (h if residual else 0) + wr gate(Hp + cond) + br
    gate(u) = tanh(u[:, :C]) * sigmoid(u[:, C:])
Inputs outside the image are 0; taps a mask does not read are never read. The link wl applies to
V without cond. As region convs (masked_conv contract): vconv = Region(1, 1, c, c, c+1 (B) or
c (A), 0, 0, 1), hconv = Region(1, 1, 0, c, 0, c+1 (B) or c (A), 0, 1), 1x1 = Region(1, 1, 0, 0,
1, 0, 0, 1). Causality: in a stack fed v = h = x (layer 0 mask A), v' at row i depends on rows
< i of x and h' at (i, j) on pixels before (i, j) in raster order only.

## Fused forward (every backend): region convs + ONE pointwise gate kernel per gate
V = vconv(v) + bv; Hp = hconv(h) + bh, then wl V + bl added INTO Hp (accumulate); v' =
gate_fwd(V, cond); z = gate_fwd(Hp, cond); h' = wr z + br added INTO a copy of h (residual) or
written. V and Hp (the pre-activations, without cond) are the only gate-sized tensors saved.

## gate_fwd(u (B, 2C, H, W), cond (B, 2C) or None) -> out (B, C, H, W)
out = tanh(u[:, :C] + cond[:, :C]) * sigmoid(u[:, C:] + cond[:, C:]) (cond broadcast over H, W).
## gate_bwd(u, cond, dout (B, C, H, W), du (B, 2C, H, W), dcond (B, 2C) or None, accumulate)
With a = u + cond, t = tanh(a[:, :C]), s = sigmoid(a[:, C:]) recomputed:
g = [dout s (1 - t^2) ; dout t s (1 - s)]; du = g (du += g with accumulate); dcond = g summed
over H, W (dcond += that with accumulate). Deterministic: each dcond value is summed by one
work item in a fixed order. Native signatures (C++; CUDA adds `void* stream`, returns a code):
  pixelcnn_gate_fwd(u, cond, out, B, C, N = H*W, dtype, num_threads)
  pixelcnn_gate_bwd(u, cond, dout, du, dcond, B, C, N, accumulate, dtype, num_threads)

## Backward (first order: the op gated_pixelcnn_layer_bwd on the kernels; under create_graph the
## same math as differentiable ops, V and Hp recomputed, so every order exists)
z recomputed = gate_fwd(Hp, cond); dz = wr^T gh' (1x1 bwd_input); dwr = bwd_weight(gh', z);
dHp, dcond = gate_bwd(Hp, cond, dz); dV = wl^T dHp (bwd_input); dwl = bwd_weight(dHp, V);
dh = hconv^T dHp (+ gh' if residual); dwh = bwd_weight(dHp, h); then gate_bwd(V, cond, gv',
du = dV, dcond, accumulate); dv = vconv^T dV; dwv = bwd_weight(dV, v); dbv = sum dV,
dbh = dbl = sum dHp, dbr = sum gh'.
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from .. import backends
from . import _checks
from ._boundary import dtype_code, implementations, native, standard_dtypes, triton_kernels
from ._eager import eager_op
from ._masked_conv_checks import autocast_args, check_sizes, route, same
from ._masked_conv_layer_ref import (
    ONE,
    gate_grad,
    gated_pixelcnn_layer_reference,
    ref_gate_bwd,
    ref_gate_fwd,
    regions,
    torch_gate,
)
from .masked_conv import conv_bwd_input, conv_bwd_weight, conv_fwd, region_conv2d_into

__all__ = ["gated_pixelcnn_layer", "gated_pixelcnn_layer_reference"]
SPEC = backends.register_op(backends.OpSpec(name="masked_conv_layer", dtypes=standard_dtypes()))
_FWD, _BWD = 0, 1
_BWD_IN, _BWD_W = 1, 2  # masked_conv's kernel indices


def _opt(t: Tensor | None):
    return 0 if t is None else t


# --------------------------------------------------------------------------- gate kernels
def _native_gate_fwd(backend, u, cond):
    B, C2, H, W = u.shape
    out = u.new_empty(B, C2 // 2, H, W)
    if out.numel():
        native(backend, "pixelcnn_gate_fwd", u, _opt(cond), out, B, C2 // 2, H * W,
               dtype_code(u))
    return out


def _native_gate_bwd(backend, u, cond, dout, du, dcond, accumulate):
    B, C2, H, W = u.shape
    if B and C2:
        native(backend, "pixelcnn_gate_bwd", u, _opt(cond), dout, du, _opt(dcond), B, C2 // 2,
               H * W, accumulate, dtype_code(u))


def _triton_gate_fwd(u, cond):
    B, C2, H, W = u.shape
    out = u.new_empty(B, C2 // 2, H, W)
    return triton_kernels("masked_conv_layer").gate_fwd(u, cond, out)


def _triton_gate_bwd(u, cond, dout, du, dcond, accumulate):
    triton_kernels("masked_conv_layer").gate_bwd(u, cond, dout, du, dcond, accumulate)


implementations("masked_conv_layer", reference=(ref_gate_fwd, ref_gate_bwd),
                native=(_native_gate_fwd, _native_gate_bwd),
                triton=(_triton_gate_fwd, _triton_gate_bwd))


def _gate_fwd(backend, u, cond):
    return backends.call("masked_conv_layer", backend, _FWD, u, cond)


def _gate_bwd(backend, u, cond, dout, du, dcond, accumulate):
    backends.call("masked_conv_layer", backend, _BWD, u, cond, dout, du, dcond, accumulate)


# --------------------------------------------------------------------------- fused forward
def _c(t: Tensor | None) -> Tensor | None:
    return None if t is None else t.contiguous()


def _fwd_impl(v, h, wv, bv, wh, bh, wl, bl, wr, br, cond, mask_a, residual, backend, conv):
    v, h, wv, wh, wl, wr = (t.contiguous() for t in (v, h, wv, wh, wl, wr))
    bv, bh, bl, br, cond = (_c(t) for t in (bv, bh, bl, br, cond))
    vreg, hreg = regions(wv.shape[2] - 1, mask_a)
    H, W = v.shape[-2:]
    V = region_conv2d_into(None, v, wv, bv, vreg, H, W, route(conv, wv, vreg))
    Hp = region_conv2d_into(None, h, wh, bh, hreg, H, W, route(conv, wh, hreg))
    region_conv2d_into(Hp, V, wl, bl, ONE, H, W, route(conv, wl, ONE))
    vo = _gate_fwd(backend, V, cond)
    z = _gate_fwd(backend, Hp, cond)
    ho = region_conv2d_into(h.clone() if residual else None, z, wr, br, ONE, H, W,
                            route(conv, wr, ONE))
    return vo, ho, V, Hp


OptT = Optional[Tensor]  # noqa: UP045  (torch.library parses the annotation)


@torch.library.custom_op("genfast::gated_pixelcnn_layer", mutates_args=())
def gated_pixelcnn_layer_op(v: Tensor, h: Tensor, wv: Tensor, bv: OptT, wh: Tensor, bh: OptT,
                            wl: Tensor, bl: OptT, wr: Tensor, br: OptT, cond: OptT,
                            mask_a: bool, residual: bool, backend: str,
                            conv_backend: str) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """(v', h', V, Hp): the layer's outputs and the pre-activations its backward reads."""
    return _fwd_impl(v, h, wv, bv, wh, bh, wl, bl, wr, br, cond, mask_a, residual, backend,
                     conv_backend)


@gated_pixelcnn_layer_op.register_fake
def _(v, h, wv, bv, wh, bh, wl, bl, wr, br, cond, mask_a, residual, backend, conv_backend):
    B, C, H, W = v.shape
    return (v.new_empty(B, C, H, W), v.new_empty(B, C, H, W), v.new_empty(B, 2 * C, H, W),
            v.new_empty(B, 2 * C, H, W))


_INPUTS = ("v", "h", "wv", "bv", "wh", "bh", "wl", "bl", "wr", "br", "cond")


def _setup(ctx, inputs, output):
    *tensors, ctx.mask_a, ctx.residual, ctx.backend, ctx.conv = inputs
    ctx.save_for_backward(*tensors, output[2], output[3])
    ctx.mark_non_differentiable(output[2], output[3])


# --------------------------------------------------------------------------- backward
_BWD_OUT = ("v", "h", "wv", "wh", "wl", "wr", "cond", "bv", "bh")  # the kernel backward's


def _bwd_impl(v, h, wv, wh, wl, wr, cond, V, Hp, gvo, gho, mask_a, residual, backend, conv,
              need):
    """First order on the kernels: the gradients _BWD_OUT names (empty where not `need`ed;
    bv: dV summed, bh: dHp summed, which is also bl's)."""
    want = dict(zip(_BWD_OUT, need, strict=True))
    vreg, hreg = regions(wv.shape[2] - 1, mask_a)
    H, W = v.shape[-2:]

    def bwd_in(g, w, reg):
        return backends.call("masked_conv", route(conv, w, reg), _BWD_IN, g, w, H, W, reg)

    def bwd_w(g, x, w, reg):
        return backends.call("masked_conv", route(conv, w, reg), _BWD_W, g, x, w.shape[2],
                             w.shape[3], reg)

    out = {}
    z = _gate_fwd(backend, Hp, cond)
    dz = bwd_in(gho, wr, ONE)
    out["wr"] = bwd_w(gho, z, wr, ONE) if want["wr"] else None
    del z
    dHp = torch.empty_like(Hp)
    dcond = cond.new_empty(cond.shape) if want["cond"] else None
    _gate_bwd(backend, Hp, cond, dz, dHp, dcond, False)
    dV = bwd_in(dHp, wl, ONE)
    out["wl"] = bwd_w(dHp, V, wl, ONE) if want["wl"] else None
    if want["h"]:
        dh = bwd_in(dHp, wh, hreg)
        out["h"] = dh.add_(gho) if residual else dh
    out["wh"] = bwd_w(dHp, h, wh, hreg) if want["wh"] else None
    out["bh"] = dHp.sum((0, 2, 3)) if want["bh"] else None
    del dHp
    _gate_bwd(backend, V, cond, gvo, dV, dcond, True)
    out["v"] = bwd_in(dV, wv, vreg) if want["v"] else None
    out["wv"] = bwd_w(dV, v, wv, vreg) if want["wv"] else None
    out["bv"] = dV.sum((0, 2, 3)) if want["bv"] else None
    out["cond"] = dcond
    return [v.new_empty(0) if out.get(k) is None else out[k] for k in _BWD_OUT]


def _bwd_entry(v, h, wv, wh, wl, wr, cond, V, Hp, gvo, gho, mask_a, residual, backend, conv,
               need):
    ts = [None if t is None else t.contiguous() for t in (v, h, wv, wh, wl, wr, cond, V, Hp,
                                                           gvo, gho)]
    return _bwd_impl(*ts, mask_a, residual, backend, conv, need)


@torch.library.custom_op("genfast::gated_pixelcnn_layer_bwd", mutates_args=())
def gated_pixelcnn_layer_bwd_op(v: Tensor, h: Tensor, wv: Tensor, wh: Tensor, wl: Tensor,
                                wr: Tensor, cond: OptT, V: Tensor, Hp: Tensor, gvo: Tensor,
                                gho: Tensor, mask_a: bool, residual: bool, backend: str,
                                conv_backend: str, need: list[bool]) -> list[Tensor]:
    """The first-order backward on the kernels (contract): [dv, dh, dwv, dwh, dwl, dwr, dcond,
    dbv, dbh], each empty (0 elements) where `need` is False."""
    return _bwd_entry(v, h, wv, wh, wl, wr, cond, V, Hp, gvo, gho, mask_a, residual, backend,
                      conv_backend, need)


@gated_pixelcnn_layer_bwd_op.register_fake
def _(v, h, wv, wh, wl, wr, cond, V, Hp, gvo, gho, mask_a, residual, backend, conv_backend,
      need):
    C2 = V.shape[1]
    shapes = (v.shape, h.shape, wv.shape, wh.shape, wl.shape, wr.shape,
              None if cond is None else cond.shape, (C2,), (C2,))
    return [v.new_empty(s) if n else v.new_empty(0) for s, n in zip(shapes, need, strict=True)]


layer_bwd = eager_op(gated_pixelcnn_layer_bwd_op, _bwd_entry)


def _graph_grads(ctx, t, gvo, gho, need):
    """create_graph: the same math as differentiable ops (every order), V and Hp recomputed
    from the inputs so that their dependence on them is in the graph."""
    conv, vreg, hreg = ctx.conv, *regions(t["wv"].shape[2] - 1, ctx.mask_a)
    v, h, wv, wh, wl, wr, cond = (t[k] for k in ("v", "h", "wv", "wh", "wl", "wr", "cond"))
    H, W = v.shape[-2:]

    def geom(w, reg):
        return list(reg), route(conv, w, reg)

    def fwd(x, w, b, reg):
        g, be = geom(w, reg)
        return conv_fwd(x, w, b, g, H, W, be)

    def bwd_in(g, w, reg):
        gm, be = geom(w, reg)
        return conv_bwd_input(g, w, H, W, gm, be)

    def bwd_w(g, x, w, reg):
        gm, be = geom(w, reg)
        return conv_bwd_weight(g, x, w.shape[2], w.shape[3], gm, be)

    V = fwd(v, wv, t["bv"], vreg)
    Hp = fwd(h, wh, t["bh"], hreg) + fwd(V, wl, t["bl"], ONE)
    out = {}
    z = torch_gate(Hp, cond)
    dz = bwd_in(gho, wr, ONE)
    out["wr"] = bwd_w(gho, z, wr, ONE) if need["wr"] else None
    dHp = gate_grad(Hp, cond, dz)
    dgv = gate_grad(V, cond, gvo)
    dV = bwd_in(dHp, wl, ONE) + dgv
    out["wl"] = bwd_w(dHp, V, wl, ONE) if need["wl"] else None
    if need["h"]:
        dh = bwd_in(dHp, wh, hreg)
        out["h"] = dh + gho if ctx.residual else dh
    out["wh"] = bwd_w(dHp, h, wh, hreg) if need["wh"] else None
    out["v"] = bwd_in(dV, wv, vreg) if need["v"] else None
    out["wv"] = bwd_w(dV, v, wv, vreg) if need["wv"] else None
    out["cond"] = (dHp + dgv).sum((2, 3)) if need["cond"] else None
    out["bv"] = dV.sum((0, 2, 3)) if need["bv"] else None
    out["bh"] = dHp.sum((0, 2, 3)) if need["bh"] else None
    out["bl"] = dHp.sum((0, 2, 3)) if need["bl"] else None
    return out


def _grad(ctx, gvo, gho, _gV, _gHp):
    *inputs, V, Hp = ctx.saved_tensors
    t = dict(zip(_INPUTS, inputs, strict=True))
    need = dict(zip(_INPUTS, ctx.needs_input_grad[:11], strict=True))
    v = t["v"]
    gvo = torch.zeros_like(v) if gvo is None else gvo
    gho = torch.zeros_like(v) if gho is None else gho
    if torch.is_grad_enabled():
        out = _graph_grads(ctx, t, gvo, gho, need)
    else:
        flags = [need[k] for k in _BWD_OUT[:7]] + [need["bv"], need["bh"] or need["bl"]]
        got = layer_bwd(*(t[k] for k in ("v", "h", "wv", "wh", "wl", "wr", "cond")), V, Hp,
                        gvo, gho, ctx.mask_a, ctx.residual, ctx.backend, ctx.conv, flags)
        out = {k: g if f else None for k, g, f in zip(_BWD_OUT, got, flags, strict=True)}
        db = out["bh"]
        out["bl"] = None if not need["bl"] else db.clone() if need["bh"] else db
        out["bh"] = db if need["bh"] else None
    out["br"] = gho.sum((0, 2, 3)) if need["br"] else None
    return (*(out.get(k) for k in _INPUTS), None, None, None, None)


gated_pixelcnn_layer_op.register_autograd(_grad, setup_context=_setup)
layer_fwd = eager_op(gated_pixelcnn_layer_op, _fwd_impl, _setup, _grad)


# --------------------------------------------------------------------------- public API
def _weight(name: str, w: object, shape: tuple[int, ...], what: str, v: Tensor) -> Tensor:
    _checks.tensor(name, w)
    if tuple(w.shape) != shape:
        raise ValueError(f"{name} must have shape {shape} ({what}), got {tuple(w.shape)}")
    same(name, w, v, "v")
    return w


def gated_pixelcnn_layer(v: Tensor, h: Tensor, v_weight: Tensor, v_bias: Tensor | None,
                         h_weight: Tensor, h_bias: Tensor | None, link_weight: Tensor,
                         link_bias: Tensor | None, res_weight: Tensor, res_bias: Tensor | None,
                         cond: Tensor | None = None, *, mask_type: str = "B",
                         residual: bool | None = None,
                         backend: str | None = None) -> tuple[Tensor, Tensor]:
    """One gated PixelCNN layer (van den Oord et al. 2016b), fused. Returns (v_out, h_out):
    the vertical stack gate(V + cond) and the horizontal stack (h if residual) + res(gate(Hp +
    cond)), with V = vconv(v) + v_bias and Hp = hconv(h) + h_bias + link(V) (see the module
    docstring for the exact masks and equations).

    v, h: (B, C, H, W). Weights in nn.Conv2d layout: v_weight (2C, C, c+1, 2c+1) (the vertical
    stack: c rows above and the current row (mask "B"), c rows above only (mask "A")),
    h_weight (2C, C, 1, c+1) (the pixels left of the current one, and it with mask "B"),
    link_weight (2C, 2C, 1, 1), res_weight (C, C, 1, 1); biases of shape (2C,) / (C,) or None.
    cond: (B, 2C) (a class embedding added before both gates) or None. mask_type "A" for the
    first layer of a network (v = h = the input image), "B" for the others. residual: add h
    to h_out (default: mask_type == "B").

    Runs region convolutions (genfast.masked_conv2d's kernels) and one fused pointwise gate
    kernel per stack; only the pre-activations are kept for the backward, which recomputes the
    gates and is itself differentiable to any order. backend: "auto" (default), "reference",
    "cpu", "triton", "cuda" (for the gates and the convolutions alike).
    """
    _checks.tensor("v", v)
    _checks.tensor("h", h)
    if v.dim() != 4:
        raise ValueError(f"v must be 4-D (B, C, H, W), got shape {tuple(v.shape)}")
    if tuple(h.shape) != tuple(v.shape):
        raise ValueError(f"h must have v's shape {tuple(v.shape)}, got {tuple(h.shape)}")
    same("h", h, v, "v")
    B, C, H, W = v.shape
    if C < 1:
        raise ValueError(f"v: needs at least 1 channel, got shape {tuple(v.shape)}")
    _checks.tensor("v_weight", v_weight)
    if v_weight.dim() != 4 or v_weight.shape[2] < 1:
        raise ValueError(f"v_weight must be 4-D (2C, C, c+1, 2c+1), got shape "
                         f"{tuple(v_weight.shape)}")
    c = v_weight.shape[2] - 1
    _weight("v_weight", v_weight, (2 * C, C, c + 1, 2 * c + 1), "2C, C, c+1, 2c+1", v)
    _weight("h_weight", h_weight, (2 * C, C, 1, c + 1), "2C, C, 1, c+1", v)
    _weight("link_weight", link_weight, (2 * C, 2 * C, 1, 1), "2C, 2C, 1, 1", v)
    _weight("res_weight", res_weight, (C, C, 1, 1), "C, C, 1, 1", v)
    for name, b, n in (("v_bias", v_bias, 2 * C), ("h_bias", h_bias, 2 * C),
                       ("link_bias", link_bias, 2 * C), ("res_bias", res_bias, C)):
        if b is not None:
            _weight(name, b, (n,), "a bias", v)
    if cond is not None:
        _checks.tensor("cond", cond)
        if tuple(cond.shape) != (B, 2 * C):
            raise ValueError(f"cond must have shape ({B}, {2 * C}), got {tuple(cond.shape)}")
        same("cond", cond, v, "v")
    if mask_type not in ("A", "B"):
        raise ValueError(f"mask_type must be 'A' or 'B', got {mask_type!r}")
    residual = mask_type == "B" if residual is None else _checks.boolean("residual", residual)
    check_sizes(v, 2 * C, H, W)
    args = autocast_args(v, h, v_weight, v_bias, h_weight, h_bias, link_weight, link_bias,
                         res_weight, res_bias, cond)
    gate_be = backends.resolve("masked_conv_layer", args[0], backend)
    conv_be = backends.resolve("masked_conv", args[0], backend)
    if torch.compiler.is_compiling():
        out = gated_pixelcnn_layer_op(*args, mask_type == "A", residual, gate_be, conv_be)
    else:
        out = layer_fwd(*args, mask_type == "A", residual, gate_be, conv_be)
    return out[0], out[1]
