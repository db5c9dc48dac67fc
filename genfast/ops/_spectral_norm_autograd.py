"""sigma(W) and W / sigma(W) as autograd functions of the weight (no kernel: the value of sigma
comes from the power iteration). See "sigma as a function of the weight" in the contract
(genfast/ops/spectral_norm.py).

Complex weights: sigma = u^H W v, holomorphic in W with derivative conj(u) v^T; autograd's
convention passes conj(derivative) * grad, so d sigma gives grad * u conj(v)^T and W / sigma
gives grad / conj(sigma) - <W, grad> / conj(sigma)^2 * u conj(v)^T. Real weights take the same
formulas without the conjugations.

The functions are setup_context style, as torch.func transforms (grad over functional_call)
require, and are applied through genfast.ops._eager.fast_apply: Function.apply's Python wrapper
binds the arguments through inspect.signature on every call (~25 us, more than the kernel of a
small layer), which plain eager calls skip. Backwards run with autocast off (no_autocast), in
the weight's dtype.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ._eager import fast_apply
from ._spectral_norm_kernels import matrix_shape, no_autocast


def _sigma_setup(ctx, inputs, output):
    weight, u, v, sigma, dim, floor = inputs
    ctx.shape, ctx.dtype, ctx.dim, ctx.floor = weight.shape, weight.dtype, dim, floor
    ctx.save_for_backward(u, v, sigma)


def _normalize_setup(ctx, inputs, output):
    weight, u, v, sigma, dim, floor = inputs
    ctx.dim, ctx.floor = dim, floor
    ctx.save_for_backward(weight, u, v, sigma)


class _Sigma(torch.autograd.Function):
    """sigma(W) = u^H W v for constant u, v: the value comes from the kernel, the gradient is
    u conj(v)^T laid out as W. An autograd.Function, not a custom op: it is glue around no
    kernel, and one per layer per step, where a custom op's eager dispatch costs ~5x more."""

    @staticmethod
    def forward(weight, u, v, sigma, dim, floor):
        return sigma.clone()

    setup_context = staticmethod(_sigma_setup)

    @staticmethod
    def backward(ctx, g):
        u, v, sigma = ctx.saved_tensors
        with no_autocast(g.device.type):
            # A floored sigma is a constant; linear in g, so this is differentiable again.
            g = g * (sigma.abs() > ctx.floor)
            d = ctx.dim
            moved = (ctx.shape[d], *ctx.shape[:d], *ctx.shape[d + 1:])
            uv = torch.outer(u, v.conj()) if v.is_complex() else torch.outer(u, v)
            gw = (uv * g).to(ctx.dtype).reshape(moved)
        return (gw.movedim(0, d) if d else gw), None, None, None, None, None


class _Normalize(torch.autograd.Function):
    """W / sigma(W), sigma(W) = u^H W v for constant u, v, as one node: the backward
    grad_W = (g - <W, g> / sigma * u v^T) / sigma is one dot and two passes over W, where the
    composition W / sigma(W) takes six (and an accumulation of two gradients)."""

    @staticmethod
    def forward(weight, u, v, sigma, dim, floor):
        return weight / sigma

    setup_context = staticmethod(_normalize_setup)

    @staticmethod
    def backward(ctx, g):
        w, u, v, s = ctx.saved_tensors
        d = ctx.dim
        with no_autocast(g.device.type):
            if torch.is_grad_enabled():  # create_graph: the second order needs sigma's graph
                s = _sigma_apply(w, u, v, s, d, ctx.floor)
            live = (s.abs() > ctx.floor).to(s.dtype)  # a floored sigma is a constant
            if w.is_complex():
                s, v = s.conj(), v.conj()
            coef = torch.vdot(w.reshape(-1), g.reshape(-1)).to(s.dtype) * live / (s * s)
            vv = (v * -coef).to(w.dtype)
            gw = (g / s).to(w.dtype)
            h, n = matrix_shape(w, d)
            if d == 0:
                gw = gw.reshape(h, n).addr_(u, vv).reshape(w.shape)
            else:
                moved = (h, *w.shape[:d], *w.shape[d + 1:])
                gw = gw + torch.outer(u, vv).reshape(moved).movedim(0, d)
        return gw, None, None, None, None, None


class _Step(torch.autograd.Function):
    """The drop-in layer's whole ``.weight`` read as one node: the layer's kernel runner
    (sigma, after `n_iter` iterations on u and v in place) and W / sigma in one forward, with
    _Normalize's backward. One Python call and one node per read, where running the kernel
    and then _Normalize costs two more layers of calls and two u / v clones of glue, which at
    ~20 us per layer is most of a small layer's time."""

    @staticmethod
    def forward(ctx, weight, u, v, run, n_iter, eps, dim, floor):
        sigma = run(n_iter, eps, floor)
        if n_iter:
            torch.autograd.graph.increment_version([u, v])
        _normalize_setup(ctx, (weight, u.clone(), v.clone(), sigma, dim, floor), None)
        return weight / sigma

    @staticmethod
    def backward(ctx, g):
        return _Normalize.backward(ctx, g)[0], None, None, None, None, None, None, None


_step_apply = fast_apply(_Step)


def step(weight: Tensor, u: Tensor, v: Tensor, run, n_iter: int, eps: float, dim: int,
         floor: float) -> Tensor:
    """weight / sigma(weight) with sigma = run(n_iter, eps, floor), a layer's direct kernel
    runner (genfast/ops/_spectral_norm_kernels.direct_runner); plain eager mode only."""
    if not _needs_grad(weight):
        sigma = run(n_iter, eps, floor)
        if n_iter:
            torch.autograd.graph.increment_version([u, v])
        return weight / sigma
    return _step_apply(weight, u, v, run, n_iter, eps, dim, floor)


_sigma_apply, _normalize_apply = fast_apply(_Sigma), fast_apply(_Normalize)


# Read at every forward of every layer: a table, not a torch.finfo call each time.
_TINY = {d: float(torch.finfo(d).tiny) for d in (torch.float16, torch.bfloat16, torch.float32,
                                                  torch.float64, torch.complex64,
                                                  torch.complex128)}


def sigma_floor(eps: float, dtype: torch.dtype) -> float:
    """The smallest |sigma| a weight is divided by: eps, or the dtype's smallest normal."""
    return max(float(eps), _TINY[dtype])


def floor_sigma(sigma: Tensor, floor: float, iterated: bool) -> Tensor:
    """sigma with |sigma| < floor replaced by floor. After an iteration a real sigma is
    |W^T u| >= 0 (up to rounding near 0), so one clamp does it; stored vectors can give any
    sign, and a complex sigma is compared by modulus."""
    if iterated and not sigma.is_complex():
        return sigma.clamp_min(floor)
    return torch.where(sigma.abs() < floor, floor, sigma)


def _needs_grad(weight: Tensor) -> bool:
    return weight.requires_grad and torch.is_grad_enabled()


def sigma_node(weight: Tensor, u: Tensor, v: Tensor, sigma: Tensor, dim: int,
               floor: float) -> Tensor:
    """Differentiable sigma (0-dim) of `weight` from a floored kernel value and the buffers
    it was computed with (cloned here: they change in place at the next update, and autograd
    keeps these). Without autograd it is the value itself."""
    if not _needs_grad(weight):
        return sigma
    return _sigma_apply(weight, u.clone(), v.clone(), sigma, dim, floor)


def normalized(weight: Tensor, u: Tensor, v: Tensor, sigma: Tensor, dim: int,
               floor: float) -> Tensor:
    """weight / sigma(weight), differentiable to any order, from a floored kernel value and
    the buffers it was computed with (cloned, as in sigma_node)."""
    if not _needs_grad(weight):
        return weight / sigma
    return _normalize_apply(weight, u.clone(), v.clone(), sigma, dim, floor)
