"""Gradient penalties for GAN critics (WGAN-GP, R1, R2): public API, reference, torch.library ops.

## The path (gradient_penalty)
x = lerp(fake, real, eps) (WGAN-GP), real (R1) or fake (R2), detached and made a leaf;
s = critic(x); g = torch.autograd.grad(s, x, create_graph=True) **out of place**: nothing is
accumulated into any .grad, so under DDP the parameters see exactly one ordinary backward (of
the loss plus the penalty) and are all-reduced once (pytorch #63812, research/ecosystem.md B.8);
norms = gp_row_norms(g as a (N, d) view); the penalty, a few ops on N numbers, stays in torch.
Only the norm and its backward are kernels: the rest of the cost is the critic's own double
backward, less the identically zero paths of piecewise-linear activations, which are pruned
(see gradient_penalty_graph.prune_zero_paths; StyleGAN2's bias_act skips the same second
derivatives).

## Host syncs, loss scaling, autocast
A training step reads nothing back to the host unless check_finite says so (default: on for CPU
tensors, where a read is free, off on accelerators). With a torch.amp.GradScaler the scaled mean
of the scores is differentiated and the norms unscaled (by a tensor, not get_scale()) before the
penalty math, torch's AMP recipe for gradient penalties. Under autocast gp_row_norms is a float32
op, as torch's own norms are: float16 / bfloat16 input is cast and the norms come back in float32.

## Kernel contract (reference here, csrc/cpu/gradient_penalty.cpp, csrc/cuda/gradient_penalty.*,
## kernels/gradient_penalty.py)
g is a 2-D (rows, d) view: unit column stride, any row stride ld >= 0 (elements), rows, d >= 1
(Python answers empty shapes itself).
gp_row_norms(g) -> norms (rows,): norms[r] = sqrt(sum_k g[r, k]^2), the sum accumulated in
  float32 (float64 for float64 g) in any order, stored in g's dtype. No rescaling, as
  torch.linalg.vector_norm: a NaN gives NaN, an inf or a float32 sum past 3.4e38 gives +inf, and
  a row of float32 entries all below ~1e-19 gives 0.
gp_scale_rows(g, scale) -> out (rows, d), contiguous: out[r, k] = scale[r] * g[r, k], computed
  in float32 (float64 for float64 g), stored in g's dtype; scale is (rows,) in g's dtype.

## Autograd (written with the two ops, so every order is differentiable)
d norms / d g:   grad_g = gp_scale_rows(g, w) with w[r] = grad_norms[r] / norms[r] where
                 norms[r] > 0 and w[r] = 0 where norms[r] == 0 (the subgradient 0 at a zero row,
                 as torch's norm; a select, so no 0 * inf appears at any order).
d out / d g:     gp_scale_rows(grad_out, scale);   d out / d scale: (grad_out * g).sum(1).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import NamedTuple

import torch
from torch import Tensor

from .. import backends
from . import _checks
from . import gradient_penalty_graph as graph
from ._boundary import (
    Rows,
    dtype_code,
    empty_rows,
    implementations,
    native,
    rows_view,
    standard_dtypes,
    triton_kernels,
    work_dtype,
)
from ._eager import eager_op

SPEC = backends.register_op(backends.OpSpec(name="gradient_penalty", dtypes=standard_dtypes()))
KINDS = ("wgan-gp", "r1", "r2")


# --------------------------------------------------------------------------- reference (oracle)
def _ref_norms(g: Tensor) -> Tensor:
    return torch.linalg.vector_norm(g, dim=1, dtype=work_dtype(g.dtype)).to(g.dtype)


def _ref_scale(g: Tensor, scale: Tensor) -> Tensor:
    wd = work_dtype(g.dtype)
    return (g.to(wd) * scale.to(wd)[:, None]).to(g.dtype).contiguous()


# --------------------------------------------------------------------------- compiled backends
def _native_norms(backend, g):
    g = rows_view(g)
    out = g.new_empty(g.shape[0])
    native(backend, "gp_row_norms", Rows(g), *g.shape, dtype_code(g), out)
    return out


def _native_scale(backend, g, scale):
    g = rows_view(g)
    out = empty_rows(g)
    native(backend, "gp_scale_rows", Rows(g), scale, out, *g.shape, dtype_code(g))
    return out


def _triton_norms(g):
    g = rows_view(g)
    return triton_kernels("gradient_penalty").row_norms(g, g.new_empty(g.shape[0]))


def _triton_scale(g, scale):
    g = rows_view(g)
    return triton_kernels("gradient_penalty").scale_rows(g, scale, empty_rows(g))


implementations("gradient_penalty", reference=(_ref_norms, _ref_scale),
                native=(_native_norms, _native_scale), triton=(_triton_norms, _triton_scale))
_NORMS, _SCALE = 0, 1


# --------------------------------------------------------------------------- torch.library ops
def _check_rows(g: Tensor, scale: Tensor | None = None) -> None:
    # The last guard before raw pointers: a wrong shape here would read out of bounds.
    if g.dim() != 2:
        raise ValueError(f"g must be 2-D (rows, d), got shape {tuple(g.shape)}")
    if scale is not None and tuple(scale.shape) != (g.shape[0],):
        raise ValueError(f"scale must have shape ({g.shape[0]},), got {tuple(scale.shape)}")


def _row_norms(g: Tensor, backend: str) -> Tensor:
    _check_rows(g)
    if g.numel() == 0:  # d == 0: every norm is 0; rows == 0: nothing
        return g.new_zeros(g.shape[0])
    return backends.call("gradient_penalty", backend, _NORMS, g)


def _scale_rows(g: Tensor, scale: Tensor, backend: str) -> Tensor:
    _check_rows(g, scale)
    if g.numel() == 0:
        return g.new_empty(g.shape)
    return backends.call("gradient_penalty", backend, _SCALE, g,
                         scale.to(g.dtype).contiguous())


@torch.library.custom_op("genfast::gp_row_norms", mutates_args=())
def gp_row_norms(g: Tensor, backend: str) -> Tensor:
    return _row_norms(g, backend)


@torch.library.custom_op("genfast::gp_scale_rows", mutates_args=())
def gp_scale_rows(g: Tensor, scale: Tensor, backend: str) -> Tensor:
    return _scale_rows(g, scale, backend)


@gp_row_norms.register_fake
def _(g, backend):
    return g.new_empty(g.shape[:1])


@gp_scale_rows.register_fake
def _(g, scale, backend):
    return g.new_empty(g.shape)


def _norms_setup(ctx, inputs, output):
    g, ctx.backend = inputs
    ctx.save_for_backward(g, output)


def _norms_grad(ctx, grad_norms):
    g, norms = ctx.saved_tensors
    pos = norms > 0
    # Divide by 1 where the norm is 0: the unused branch of the select stays finite, so no
    # 0 * inf reaches a higher-order gradient.
    safe = torch.where(pos, norms, torch.ones_like(norms))
    w = torch.where(pos, grad_norms / safe, torch.zeros_like(safe))
    return scale_rows(g, w.to(g.dtype), ctx.backend), None


def _scale_setup(ctx, inputs, output):
    g, scale, ctx.backend = inputs
    ctx.save_for_backward(g, scale)


def _scale_grad(ctx, grad_out):
    g, scale = ctx.saved_tensors
    grad_out = grad_out.to(g.dtype)
    dg = scale_rows(grad_out, scale, ctx.backend) if ctx.needs_input_grad[0] else None
    ds = (grad_out * g).sum(dim=1).to(scale.dtype) if ctx.needs_input_grad[1] else None
    return dg, ds, None


gp_row_norms.register_autograd(_norms_grad, setup_context=_norms_setup)
gp_scale_rows.register_autograd(_scale_grad, setup_context=_scale_setup)
# The ops as callers use them: in plain eager mode their implementations under their own
# autograd formulas, the ops themselves otherwise (genfast/ops/_eager.py).
row_norms = eager_op(gp_row_norms, _row_norms, _norms_setup, _norms_grad)
scale_rows = eager_op(gp_scale_rows, _scale_rows, _scale_setup, _scale_grad)
# torch's norms are on autocast's float32 list (a float16 norm overflows past 65504 and keeps 11
# bits); the same policy here, also for direct calls of the op. gp_scale_rows is elementwise: it
# keeps its inputs' dtype, as a multiply does under autocast.
for _device_type in ("cpu", "cuda"):
    if torch.amp.is_autocast_available(_device_type):
        gp_row_norms.register_autocast(_device_type, torch.float32)


def _norm_dtype(x: Tensor) -> torch.dtype:
    """The dtype gp_row_norms computes a gradient like x in: float32 for float16 / bfloat16
    under autocast (its autocast rule), else x's."""
    low = x.dtype in (torch.float16, torch.bfloat16)
    return torch.float32 if low and torch.is_autocast_enabled(x.device.type) else x.dtype


def _autocast_float(x: Tensor) -> Tensor:
    # Cast here, not only in the op's autocast rule, so the backend is resolved for float32.
    dtype = _norm_dtype(x)
    return x if dtype == x.dtype else x.to(dtype)


def _norm_probe(x: Tensor) -> Tensor:
    """A tensor with the device and dtype gp_row_norms will see for a gradient like x."""
    dtype = _norm_dtype(x)
    return x if dtype == x.dtype else x.new_empty(0, dtype=dtype)


# --------------------------------------------------------------------------- public API
class GradientPenalty(NamedTuple):
    """What gradient_penalty returns."""

    penalty: Tensor  # scalar: add it to the critic loss (penalty term plus drift term)
    grad_norm: Tensor | None  # (N,) detached per-sample ||grad critic||; None on a skipped step
    drift: Tensor | None  # detached drift term (already inside penalty); None when drift == 0


def _sample_rows(g: Tensor) -> Tensor:
    """g as (N, d), one row per sample. Dims after the first are taken in memory order, so
    channels_last and other permuted layouts flatten as views, not copies (the order of a row
    does not change its norm)."""
    if g.dim() > 2:
        order = sorted(range(1, g.dim()), key=g.stride, reverse=True)
        if order != list(range(1, g.dim())):  # no identity permute in traced graphs
            g = g.permute(0, *order)
    return g.reshape(g.shape[0], math.prod(g.shape[1:]))


def per_sample_grad_norm(grad: Tensor, *, backend: str | None = None) -> Tensor:
    """Per-sample L2 norm of a gradient: ``grad`` (N, ...) -> (N,), over all dims but the first.

    One fused kernel (sum of squares in float32, or float64 for float64 input), with a backward
    that is itself differentiable, to any order. A zero row has gradient 0 (as torch's norm).
    The norms have grad's dtype; under autocast, float16 / bfloat16 grad gives float32 norms (the
    policy of torch's norms). Exportable: torch.export sees one genfast::gp_row_norms node.
    backend: "auto" (default), "reference", "cpu", "triton" or "cuda"; see genfast.backends.
    """
    graph.check_batch("grad", grad)
    g2d = _autocast_float(_sample_rows(grad))
    return row_norms(g2d, backends.resolve("gradient_penalty", g2d, backend))


def gradient_penalty(
    critic: Callable[[Tensor], Tensor],
    real: Tensor | None,
    fake: Tensor | None = None,
    *,
    kind: str = "wgan-gp",
    weight: float = 10.0,
    center: float = 1.0,
    one_sided: bool = False,
    every: int = 1,
    step: int | None = None,
    drift: float = 0.0,
    real_scores: Tensor | None = None,
    generator: torch.Generator | None = None,
    scaler: torch.amp.GradScaler | None = None,
    check_finite: bool | None = None,
    backend: str | None = None,
) -> GradientPenalty:
    """Gradient penalty of a GAN critic, ready to add to its loss.

    critic: callable (N, ...) -> scores (N,) or (N, 1); real, fake: (N, ...), same shape.
    kind:
      "wgan-gp"  weight * mean_i (||g_i|| - center)^2 at x_i = eps_i real_i + (1 - eps_i) fake_i,
                 eps_i ~ U(0, 1) per sample (Gulrajani et al. 2017); one_sided=True uses
                 max(||g_i|| - center, 0)^2. eps = torch.rand(N, generator=generator,
                 device=real.device, dtype=real.dtype), the draw torch.rand(N, 1, 1, 1) makes.
      "r1"       weight / 2 * mean_i ||g_i||^2 at x = real (Mescheder et al. 2018). The 1/2 is
                 StyleGAN's convention: `weight` is StyleGAN's gamma (r1_gamma). fake unused.
      "r2"       the same at x = fake. real's values are unused (None is fine).
    with g_i = d critic(x)_i / d x_i. real and fake are detached: the penalty trains the critic
    only.

    Lazy regularization (StyleGAN2): with every=k > 1, pass the step counter `step`; the
    penalty is computed only when step % k == 0, then with weight * k; on other steps it is 0
    and grad_norm is None (no critic call at all).
    drift: adds drift * mean(critic(real)^2) on every step (Progressive GAN, which uses 1e-3).
    Pass the critic's scores on real as real_scores to save a forward; with kind="r1" the
    penalty's own forward on real is reused.

    Returns GradientPenalty(penalty, grad_norm, drift): penalty is a scalar in float32 (float64
    for float64 input) to add to the loss; grad_norm the detached (N,) norms ||g_i|| for logging.

    Mixed precision: call it inside the autocast region of the critic's forward; the norms and
    the penalty are float32 there. With a torch.amp.GradScaler, pass it as `scaler` (torch's AMP
    recipe for gradient penalties): the input gradient is taken of scaler.scale(mean of the
    scores), so low-precision gradients neither underflow nor, at the default scale, overflow
    (see gradient_penalty_graph.scaled_root), and the norms are unscaled before the penalty,
    which therefore equals the unscaled one; then backpropagate scaler.scale(loss + penalty).
    A scaled gradient that overflows makes the penalty inf / NaN with no error: the scaler finds
    the non-finite gradients, skips that step and lowers its scale (a non-finite real / fake
    still raises, see check_finite). grad_norm is unscaled.

    check_finite: read the penalty back and raise FloatingPointError naming the samples whose
    gradient is not finite, and why (non-finite input, or an overflowing critic), or saying that
    the drift term is not finite. None (default): True for CPU tensors; False on a GPU, where
    the read would be a host sync per step, so the penalty is simply inf / NaN there (pass True
    to debug; a device-side assert is not used as it leaves the CUDA context unusable).
    With check_finite off, a training step (penalty and backward) makes no host sync.

    DDP: g comes from torch.autograd.grad(create_graph=True) out of place, never .backward(), so
    no .grad is touched and DDP all-reduces once, in the one backward of loss + penalty (the
    pattern recommended in pytorch #63812). Called under torch.no_grad the penalty is evaluated
    without a graph (for logging).
    Speed: the double backward skips the second derivatives of ReLU / LeakyReLU / Hardtanh, which
    are identically zero but which torch pushes, as zeros, through the critic's whole forward
    graph (as StyleGAN2's bias_act does; a WGAN-GP step is ~15 % faster than the plain-torch one
    on a DCGAN critic). Exact, with one visible effect: a parameter whose penalty gradient is
    identically zero (a bias feeding such an activation) gets no .grad from penalty.backward()
    alone (None rather than zeros); backpropagated together with the loss, nothing changes.
    A zero gradient has norm 0 and gradient 0 through the norm.
    torch.export: the penalty does not export (torch 2.13 traces the autograd.grad inside it
    with the critic's weights frozen in as constants, and check_finite's read is data-dependent);
    export per_sample_grad_norm, the op, in a model's forward instead.
    backend: of the norm kernel: "auto" (default), "reference", "cpu", "triton", "cuda".
    """
    if not callable(critic):
        raise TypeError(f"critic must be callable, got {type(critic).__name__}")
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    weight = _checks.real("weight", weight, low=0.0)
    center = _checks.real("center", center)
    _checks.boolean("one_sided", one_sided)
    if kind != "wgan-gp" and (one_sided or center != 1.0):
        raise ValueError(f"center and one_sided apply to kind='wgan-gp' only, got kind={kind!r} "
                         f"with center={center}, one_sided={one_sided}")
    every = _checks.integer("every", every, 1)
    if step is None and every > 1:
        raise ValueError(f"step is required with every={every} (lazy regularization)")
    step = None if step is None else _checks.integer("step", step, 0)
    drift = _checks.real("drift", drift, low=0.0)
    if generator is not None and not isinstance(generator, torch.Generator):
        raise TypeError(f"generator must be a torch.Generator, got {type(generator).__name__}")
    scaler = graph.enabled_scaler(scaler)
    batch = graph.inputs(kind, real, fake)
    n = batch.shape[0]
    if real_scores is not None:
        real_scores = graph.scores("real_scores", graph.check_batch("real_scores", real_scores), n)
    if drift and real is None and real_scores is None:
        raise ValueError("drift needs real (or real_scores)")
    check = graph.finite_check(check_finite, batch.device)
    out_dtype = torch.promote_types(batch.dtype, torch.float32)
    # Before the critic runs: a backend that cannot serve fails fast. g has the input's dtype
    # (float32 under autocast, see _autocast_float).
    name = backends.resolve("gradient_penalty", _norm_probe(batch), backend)

    total, norms_out, real_out = None, None, None
    if every == 1 or step % every == 0:
        x = graph.point(kind, real, fake, generator)
        create_graph = torch.is_grad_enabled()
        with torch.enable_grad():
            s = graph.scores("critic(x)", critic(x), n)
            root, factor = (s, None) if scaler is None else graph.scaled_root(scaler, s)
            g = graph.input_grad(root, x, create_graph)
        if create_graph:
            graph.prune_zero_paths(root, g)
        norms = row_norms(_autocast_float(_sample_rows(g)), name)
        nw = norms.to(out_dtype)
        if factor is not None:
            # A division by the factor the backward applied: exact for power-of-two scale / N.
            nw = nw / factor
            norms = nw.to(norms.dtype)
        if kind == "wgan-gp":
            dev = nw - center
            term = (torch.relu(dev) if one_sided else dev).square().mean() * (weight * every)
        else:
            term = nw.square().mean() * (0.5 * weight * every)
        # The term is finite iff every norm is (and its square did not overflow): one scalar
        # read instead of a check over the norms. With a scaler, only a non-finite input is an
        # error: an overflowing gradient is the scaler's to skip.
        if check and not math.isfinite(term.item()):
            if scaler is None or not bool(torch.isfinite(x).all()):
                graph.raise_not_finite(nw, x)
        total, norms_out = term, norms.detach()
        real_out = s if kind == "r1" else None
    drift_out = None
    if drift:
        if real_scores is None:
            real_scores = real_out if real_out is not None else graph.scores("critic(real)",
                                                                        critic(real), n)
        d = real_scores.to(out_dtype).square().mean() * drift
        if check and not math.isfinite(d.item()):
            raise FloatingPointError(f"gradient_penalty: the drift term is {d.item()}: the "
                                     "critic's scores on real are not finite (or overflow)")
        total = d if total is None else total + d
        drift_out = d.detach()
    if total is None:
        total = torch.zeros((), dtype=out_dtype, device=batch.device)
    return GradientPenalty(total, norms_out, drift_out)
