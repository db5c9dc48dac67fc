"""Gradient penalties for GAN critics (WGAN-GP, R1, R2): public API, reference, torch.library ops.

## The path (gradient_penalty)
x = lerp(fake, real, eps) (WGAN-GP), real (R1) or fake (R2), detached and made a leaf;
s = critic(x); g = torch.autograd.grad(s, x, create_graph=True) **out of place**: nothing is
accumulated into any .grad, so under DDP the parameters see exactly one ordinary backward (of
the loss plus the penalty) and are all-reduced once (pytorch #63812, research/ecosystem.md B.8);
norms = gp_row_norms(g as a (N, d) view); the penalty, a few ops on N numbers, stays in torch.
Only the norm and its backward are kernels: the rest of the cost is the critic's own double
backward, less the identically zero paths of piecewise-linear activations, which are pruned
(see _prune_zero_paths; StyleGAN2's bias_act skips the same second derivatives).

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


@torch.library.custom_op("genfast::gp_row_norms", mutates_args=())
def gp_row_norms(g: Tensor, backend: str) -> Tensor:
    _check_rows(g)
    if g.numel() == 0:  # d == 0: every norm is 0; rows == 0: nothing
        return g.new_zeros(g.shape[0])
    return backends.call("gradient_penalty", backend, _NORMS, g)


@torch.library.custom_op("genfast::gp_scale_rows", mutates_args=())
def gp_scale_rows(g: Tensor, scale: Tensor, backend: str) -> Tensor:
    _check_rows(g, scale)
    if g.numel() == 0:
        return g.new_empty(g.shape)
    return backends.call("gradient_penalty", backend, _SCALE, g,
                         scale.to(g.dtype).contiguous())


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
    return gp_scale_rows(g, w.to(g.dtype), ctx.backend), None


def _scale_setup(ctx, inputs, output):
    g, scale, ctx.backend = inputs
    ctx.save_for_backward(g, scale)


def _scale_grad(ctx, grad_out):
    g, scale = ctx.saved_tensors
    grad_out = grad_out.to(g.dtype)
    dg = gp_scale_rows(grad_out, scale, ctx.backend) if ctx.needs_input_grad[0] else None
    ds = (grad_out * g).sum(dim=1).to(scale.dtype) if ctx.needs_input_grad[1] else None
    return dg, ds, None


gp_row_norms.register_autograd(_norms_grad, setup_context=_norms_setup)
gp_scale_rows.register_autograd(_scale_grad, setup_context=_scale_setup)


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
        g = g.permute(0, *order)
    return g.reshape(g.shape[0], math.prod(g.shape[1:]))


def per_sample_grad_norm(grad: Tensor, *, backend: str | None = None) -> Tensor:
    """Per-sample L2 norm of a gradient: ``grad`` (N, ...) -> (N,), over all dims but the first.

    One fused kernel (sum of squares in float32, or float64 for float64 input), with a backward
    that is itself differentiable, to any order. A zero row has gradient 0 (as torch's norm).
    backend: "auto" (default), "reference", "cpu", "triton" or "cuda"; see genfast.backends.
    """
    _check_tensor("grad", grad)
    g2d = _sample_rows(grad)
    return gp_row_norms(g2d, backends.resolve("gradient_penalty", g2d, backend))


def _check_tensor(name: str, x: object) -> Tensor:
    _checks.tensor(name, x, min_dim=1)
    if x.shape[0] == 0:
        raise ValueError(f"{name} must have a batch dimension with at least one sample, "
                         f"got shape {tuple(x.shape)}")
    return x


def _scores(name: str, s: object, n: int) -> Tensor:
    if not isinstance(s, Tensor):
        raise TypeError(f"{name} must return a tensor, got {type(s).__name__}")
    if tuple(s.shape) not in ((n,), (n, 1)):
        raise ValueError(f"{name} must have shape ({n},) or ({n}, 1) for {n} samples, "
                         f"got {tuple(s.shape)}")
    return s


def _inputs(kind: str, real: Tensor | None, fake: Tensor | None) -> Tensor:
    """Validate real / fake for `kind`; returns the tensor whose shape is the batch's."""
    need = {"wgan-gp": ("real", "fake"), "r1": ("real",), "r2": ("fake",)}[kind]
    given = {"real": real, "fake": fake}
    for name in need:
        if given[name] is None:
            raise ValueError(f"{name} is required for kind={kind!r}")
    for name, x in given.items():
        if x is not None:
            _check_tensor(name, x)
    if real is not None and fake is not None:
        if real.shape != fake.shape:
            raise ValueError(f"real and fake must have the same shape, got real "
                             f"{tuple(real.shape)} and fake {tuple(fake.shape)}")
        if real.dtype != fake.dtype or real.device != fake.device:
            raise ValueError(f"real and fake must share dtype and device, got real "
                             f"{real.dtype} on {real.device}, fake {fake.dtype} on {fake.device}")
    return given[need[0]]


def _point(kind: str, real: Tensor | None, fake: Tensor | None,
           generator: torch.Generator | None) -> Tensor:
    """The detached leaf the critic is differentiated at."""
    if kind == "r1":
        return real.detach().requires_grad_()
    if kind == "r2":
        return fake.detach().requires_grad_()
    n = real.shape[0]
    eps = torch.rand(n, generator=generator, device=real.device, dtype=real.dtype)
    eps = eps.view(n, *([1] * (real.dim() - 1)))
    return torch.lerp(fake.detach(), real.detach(), eps).requires_grad_()


def _input_grad(s: Tensor, x: Tensor, create_graph: bool) -> Tensor:
    why = ("the critic's output does not depend on its input (a critic that detaches or "
           "ignores x, or runs under torch.no_grad?); the penalty needs d critic(x) / dx")
    if not s.requires_grad:
        raise ValueError(why)
    (g,) = torch.autograd.grad(s, x, torch.ones_like(s), create_graph=create_graph,
                               allow_unused=True)
    if g is None:
        raise ValueError(why)
    return g


# Double-backward nodes of piecewise-linear activations (LeakyReLU, ReLU, Hardtanh / ReLU6).
# Their derivative with respect to the forward activation (next edge 1) is identically zero, but
# torch materialises it as a zeros tensor and pushes it through the critic's whole forward graph:
# weight and input gradients of every layer below, all of zeros, about a third of a penalty's
# cost on a ReLU-family critic. Handing back None (autograd's "zero") ends that walk; exact.
_ZERO_SECOND = frozenset({"LeakyReluBackwardBackward0", "ThresholdBackwardBackward0",
                          "HardtanhBackwardBackward0"})


def _drop_zero_edge(grad_inputs, grad_outputs):
    return (grad_inputs[0], None, *grad_inputs[2:])


def _nodes(root, stop: frozenset | set = frozenset()) -> set:
    seen, stack = set(), [root]
    while stack:
        node = stack.pop()
        if node is None or node in seen or node in stop:
            continue
        seen.add(node)
        stack.extend(f for f, _ in node.next_functions)
    return seen


def _prune_zero_paths(s: Tensor, g: Tensor) -> None:
    """Hook the zero edges of g's graph (built by create_graph), never the critic's forward."""
    if g.grad_fn is None:
        return
    for node in _nodes(g.grad_fn, stop=_nodes(s.grad_fn)):
        if type(node).__name__ in _ZERO_SECOND and len(node.next_functions) == 2:
            node.register_hook(_drop_zero_edge)


def _raise_not_finite(norms: Tensor, x: Tensor) -> None:
    bad = ~torch.isfinite(norms)
    idx = bad.nonzero().flatten()[:8].tolist()
    if not idx:  # every norm is finite: the square overflowed
        raise FloatingPointError(
            f"gradient_penalty: the penalty overflowed (largest gradient norm "
            f"{norms.max().item():.3g}); the critic is diverging")
    where = ("the critic's input has non-finite values (from real / fake)"
             if not bool(torch.isfinite(x).all()) else
             "the critic's output or its gradient overflowed or is NaN")
    raise FloatingPointError(
        f"gradient_penalty: the critic's input gradient is not finite for samples {idx} (norms "
        f"{norms.detach()[idx].tolist()}): {where}. Pass check_finite=False to get a "
        "non-finite penalty instead")


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
    check_finite: bool = True,
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
    Non-finite gradients raise FloatingPointError naming the samples (one host sync; on a GPU,
    check_finite=False skips it and lets the penalty be inf / NaN). A zero gradient has
    norm 0 and gradient 0 through the norm.
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
    _checks.boolean("check_finite", check_finite)
    if generator is not None and not isinstance(generator, torch.Generator):
        raise TypeError(f"generator must be a torch.Generator, got {type(generator).__name__}")
    batch = _inputs(kind, real, fake)
    n = batch.shape[0]
    if real_scores is not None:
        real_scores = _scores("real_scores", _check_tensor("real_scores", real_scores), n)
    if drift and real is None and real_scores is None:
        raise ValueError("drift needs real (or real_scores)")
    out_dtype = torch.promote_types(batch.dtype, torch.float32)
    # Before the critic runs: a backend that cannot serve fails fast. g has the input's dtype.
    name = backends.resolve("gradient_penalty", batch, backend)

    total, norms_out, real_out = None, None, None
    if every == 1 or step % every == 0:
        x = _point(kind, real, fake, generator)
        create_graph = torch.is_grad_enabled()
        with torch.enable_grad():
            s = _scores("critic(x)", critic(x), n)
            g = _input_grad(s, x, create_graph)
        if create_graph:
            _prune_zero_paths(s, g)
        g2d = _sample_rows(g)
        norms = gp_row_norms(g2d, name)
        nw = norms.to(out_dtype)
        if kind == "wgan-gp":
            dev = nw - center
            term = (torch.relu(dev) if one_sided else dev).square().mean() * (weight * every)
        else:
            term = nw.square().mean() * (0.5 * weight * every)
        # The term is finite iff every norm is (and its square did not overflow): one scalar
        # read instead of a check over the norms.
        if check_finite and not math.isfinite(term.item()):
            _raise_not_finite(norms, x)
        total, norms_out = term, norms.detach()
        real_out = s if kind == "r1" else None
    drift_out = None
    if drift:
        if real_scores is None:
            real_scores = real_out if real_out is not None else _scores("critic(real)",
                                                                        critic(real), n)
        d = real_scores.to(out_dtype).square().mean() * drift
        if check_finite and not math.isfinite(d.item()):
            raise FloatingPointError(f"gradient_penalty: the drift term is {d.item()}: the "
                                     "critic's scores on real are not finite (or overflow)")
        total = d if total is None else total + d
        drift_out = d.detach()
    if total is None:
        total = torch.zeros((), dtype=out_dtype, device=batch.device)
    return GradientPenalty(total, norms_out, drift_out)
