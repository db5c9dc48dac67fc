"""Gumbel-Softmax: public API, reference, torch.library ops, dispatch. Gumbel-max sampling is its
own stem (genfast/ops/sample.py) and shares the noise and row preprocessing defined here.

The contract every backend implements (this docstring is the spec; kernels cite it).

Every backend (reference here, C++ CPU csrc/cpu/gumbel.cpp, Triton kernels/gumbel.py, CUDA
csrc/cuda/gumbel.cu) works on a 2-D (rows, n) view: the public API moves `dim` last and flattens
the rest. Column stride is 1; row strides are arbitrary (in elements). Outputs are written to a
preallocated buffer. Math is in float32 for float16/bfloat16/float32 inputs and in float64 for
float64 inputs; outputs are stored in the input dtype.

## Noise (genfast/random.py is the oracle; csrc/common/philox.h and kernels/_philox.py the copies)
Element (row r, column c) uses word `c & 3` of `philox4x32_10(ctr=(c>>2, lo32(r), hi32(r), 0),
key=(lo32(seed), hi32(seed)))`, u = ((word >> 9) + 0.5) * 2^-23 (float32, exact, in
[2^-24, 1-2^-24]), g = -log(-log(u)) (float32; for float64 inputs u is widened to double first
and the logs are in double). Four neighbouring columns share one Philox call.

## Row preprocessing (defines the result for hostile rows; identical in every op of both stems)
1. m = max_c x[c].
2. If m == +inf: x'[c] = 0 where x[c] == +inf, else -inf; m' = 0
     (the +inf entries share all the mass)
   If m == -inf: x'[c] = 0 for all c; m' = 0   (a row with no finite logit is uniform)
   Otherwise x' = x, m' = m.
   NaN logits: the row's outputs are NaN (gumbel_softmax) / any index in [0, n) (sampling),
   never out of range.

## gumbel_softmax_fwd(x, seed, inv_tau, hard) -> y   (inv_tau = 1/tau, finite, > 0, given by Python)
a[c] = (x'[c] - m') + g[c]
soft: A = max_c a[c];  y[c] = exp((a[c] - A) * inv_tau) / sum_k exp((a[k] - A) * inv_tau)
hard: j = first index of max_c a[c];  y = one_hot(j) written exactly (1 and 0).

## gumbel_softmax_bwd(dy, src, seed, inv_tau, recompute) -> dx
y = src (the saved soft output) when recompute is false; when recompute is true, src is the
logits and y is recomputed exactly as the soft forward above (this is how hard=True saves memory).
dx[c] = y[c] * (dy[c] - sum_k dy[k] * y[k]) * inv_tau

## Exactness across backends
Uniform words are bit-identical everywhere. Logs/exps may differ by a few ulp between
libraries, so float outputs match to tolerance and argmaxes match exactly except at float
near-ties (tests use random logits, where such ties do not occur).
"""

from __future__ import annotations

import math
import warnings

import torch
from torch import Tensor

from .. import backends, random
from . import _checks
from ._boundary import (
    Rows,
    Seed,
    dtype_code,
    empty_rows,
    implementations,
    native,
    rows_view,
    seed_value,
    standard_dtypes,
    triton_kernels,
    work_dtype,
)
from ._eager import eager_op, fast_apply

SPEC = backends.register_op(backends.OpSpec(name="gumbel", dtypes=standard_dtypes()))
# Below this temperature the soft sample is one-hot to float32 precision anyway; clamping keeps
# 1/tau finite in float32, so no kernel can form inf * 0.
MIN_TAU = 1e-30
_EPS_DEFAULT = 1e-10  # torch's default for its deprecated eps argument


# --------------------------------------------------------------------------- reference (oracle)
def ref_rows(x: Tensor) -> tuple[Tensor, Tensor]:
    """The contract's row preprocessing: (x', m') with +inf / -inf rows given defined values."""
    m = x.amax(dim=1, keepdim=True)
    pos, neg = m == math.inf, m == -math.inf
    zero, ninf = torch.zeros_like(x), torch.full_like(x, -math.inf)
    xp = torch.where(pos, torch.where(x == math.inf, zero, ninf), torch.where(neg, zero, x))
    return xp, torch.where(pos | neg, torch.zeros_like(m), m)


def _ref_fwd(x: Tensor, seed: Tensor, inv_tau: float, hard: bool) -> Tensor:
    if x.numel() == 0:
        return torch.empty_like(x, memory_format=torch.contiguous_format)
    wd = work_dtype(x.dtype)
    xp, mp = ref_rows(x.to(wd))
    a = (xp - mp) + random.gumbel(seed_value(seed), x.shape[0], x.shape[1], x.device, wd)
    if hard:
        y = torch.zeros_like(a).scatter_(1, a.argmax(dim=1, keepdim=True), 1.0)
        y = torch.where(a.isnan().any(dim=1, keepdim=True), math.nan, y)  # NaN rows stay NaN
    else:
        e = torch.exp((a - a.amax(dim=1, keepdim=True)) * inv_tau)
        y = e / e.sum(dim=1, keepdim=True)
    return y.to(x.dtype).contiguous()


def _ref_bwd(dy: Tensor, src: Tensor, seed: Tensor, inv_tau: float, recompute: bool) -> Tensor:
    if src.numel() == 0:
        return torch.empty_like(src, memory_format=torch.contiguous_format)
    wd = work_dtype(src.dtype)
    y = (_ref_fwd(src.to(wd), seed, inv_tau, False) if recompute else src).to(wd)
    dyw = dy.to(wd)
    dx = y * (dyw - (dyw * y).sum(dim=1, keepdim=True)) * inv_tau
    return dx.to(src.dtype).contiguous()


# --------------------------------------------------------------------------- compiled backends
def _native_fwd(backend, x, seed, inv_tau, hard):
    x, y = rows_view(x), empty_rows(x)
    if x.numel():
        native(backend, "gumbel_softmax_fwd", Rows(x), Rows(y), *x.shape, dtype_code(x),
               Seed(seed), inv_tau, hard)
    return y


def _native_bwd(backend, dy, src, seed, inv_tau, recompute):
    dy, src = rows_view(dy.to(src.dtype)), rows_view(src)
    dx = empty_rows(src)
    if src.numel():
        native(backend, "gumbel_softmax_bwd", Rows(dy), Rows(src), Rows(dx), *src.shape,
               dtype_code(src), Seed(seed), inv_tau, recompute)
    return dx


def _triton_fwd(x, seed, inv_tau, hard):
    x = rows_view(x)
    return triton_kernels("gumbel").gumbel_softmax_fwd(x, seed, inv_tau, hard, empty_rows(x))


def _triton_bwd(dy, src, seed, inv_tau, recompute):
    dy, src = rows_view(dy.to(src.dtype)), rows_view(src)
    return triton_kernels("gumbel").gumbel_softmax_bwd(dy, src, seed, inv_tau, recompute,
                                                       empty_rows(src))


implementations("gumbel", reference=(_ref_fwd, _ref_bwd), native=(_native_fwd, _native_bwd),
                triton=(_triton_fwd, _triton_bwd))
_FWD, _BWD = 0, 1


# --------------------------------------------------------------------------- torch.library ops
def _fwd_impl(logits, seed, inv_tau, hard, backend):
    return backends.call("gumbel", backend, _FWD, logits, seed, inv_tau, hard)


def _bwd_impl(grad, src, seed, inv_tau, recompute, backend):
    return backends.call("gumbel", backend, _BWD, grad, src, seed, inv_tau, recompute)


@torch.library.custom_op("genfast::gumbel_softmax_fwd", mutates_args=())
def gumbel_softmax_fwd(logits: Tensor, seed: Tensor, inv_tau: float, hard: bool,
                       backend: str) -> Tensor:
    return _fwd_impl(logits, seed, inv_tau, hard, backend)


@torch.library.custom_op("genfast::gumbel_softmax_bwd", mutates_args=())
def gumbel_softmax_bwd(grad: Tensor, src: Tensor, seed: Tensor, inv_tau: float, recompute: bool,
                       backend: str) -> Tensor:
    return _bwd_impl(grad, src, seed, inv_tau, recompute, backend)


# Called inside the Functions below (no grad there): the ops, or in plain eager mode their
# implementations directly (genfast/ops/_eager.py).
_fwd = eager_op(gumbel_softmax_fwd, _fwd_impl)
_bwd = eager_op(gumbel_softmax_bwd, _bwd_impl)


@gumbel_softmax_fwd.register_fake
def _(logits, seed, inv_tau, hard, backend):
    return logits.new_empty(logits.shape)


@gumbel_softmax_bwd.register_fake
def _(grad, src, seed, inv_tau, recompute, backend):
    return src.new_empty(src.shape)


def vmap_by_slices(op):
    """A torch.library vmap rule: run `op` once per slice of the vmapped dim. A slice is exactly
    the call a user would make without vmap (its rows restart at 0, so with one seed every slice
    draws the same noise); folding the batch into rows instead would change the noise."""
    def rule(info, in_dims, *args):
        pairs = list(zip(args, in_dims, strict=True))
        outs = [op(*(a.select(d, i) if d is not None else a for a, d in pairs))
                for i in range(info.batch_size)]
        return torch.stack(outs), 0
    return rule


class GumbelFwd(torch.autograd.Function):
    """gumbel_softmax_fwd with its autograd in the form torch.func needs (setup_context, jvp).

    The custom op's own register_autograd uses the same setup_context and backward, so the eager
    public path (this Function) and the compiled path (the bare op) differentiate identically.
    """

    generate_vmap_rule = True  # forward and backward are the ops, which have vmap rules

    @staticmethod
    def forward(logits, seed, inv_tau, hard, backend):
        return _fwd(logits, seed, inv_tau, hard, backend)

    @staticmethod
    def setup_context(ctx, inputs, output):
        logits, seed, ctx.inv_tau, ctx.hard, ctx.backend = inputs
        # Soft: y is the output we already hold. Hard: keep the logits (also already alive) and
        # let the backward regenerate y_soft from them and the seed: nothing logits-sized added.
        src = logits if ctx.hard else output
        ctx.save_for_backward(src, seed)
        ctx.save_for_forward(src, seed)

    @staticmethod
    def backward(ctx, gy):
        src, seed = ctx.saved_tensors
        dx = _apply_bwd(gy, src, seed, ctx.inv_tau, ctx.hard, ctx.backend)
        return dx, None, None, None, None

    @staticmethod
    def jvp(ctx, t, *_):
        # The Jacobian inv_tau * (diag(y) - y y^T) is symmetric: the tangent map is the backward.
        src, seed = ctx.saved_tensors
        return _apply_bwd(t, src, seed, ctx.inv_tau, ctx.hard, ctx.backend)


class GumbelBwd(torch.autograd.Function):
    """gumbel_softmax_bwd, differentiable to any order (written with the ops themselves)."""

    generate_vmap_rule = True

    @staticmethod
    def forward(grad, src, seed, inv_tau, recompute, backend):
        return _bwd(grad, src, seed, inv_tau, recompute, backend)

    @staticmethod
    def setup_context(ctx, inputs, output):
        grad, src, seed, ctx.inv_tau, ctx.recompute, ctx.backend = inputs
        ctx.save_for_backward(grad, src, seed)
        ctx.save_for_forward(grad, src, seed)

    @staticmethod
    def _soft(ctx, src, seed):
        if ctx.recompute:
            return _apply_fwd(src, seed, ctx.inv_tau, False, ctx.backend)
        return src

    @staticmethod
    def _through_y(ctx, v, y, seed):
        """v pulled back (or pushed forward: the map is symmetric) through src -> y."""
        return _apply_bwd(v, y, seed, ctx.inv_tau, False, ctx.backend) if ctx.recompute else v

    @staticmethod
    def backward(ctx, gg):
        grad, src, seed = ctx.saved_tensors
        y = GumbelBwd._soft(ctx, src, seed)
        # dx = y * (dy - <dy, y>) * inv_tau is linear in dy with the softmax's own Jacobian.
        g_grad = _apply_bwd(gg, y, seed, ctx.inv_tau, False, ctx.backend)
        s = (grad * y).sum(dim=-1, keepdim=True)
        t = (gg * y).sum(dim=-1, keepdim=True)
        g_y = (gg * (grad - s) - grad * t) * ctx.inv_tau
        return g_grad, GumbelBwd._through_y(ctx, g_y, y, seed), None, None, None, None

    @staticmethod
    def jvp(ctx, t_grad, t_src, *_):
        grad, src, seed = ctx.saved_tensors
        y = GumbelBwd._soft(ctx, src, seed)
        out = None
        if t_grad is not None:
            out = _apply_bwd(t_grad, y, seed, ctx.inv_tau, False, ctx.backend)
        if t_src is not None:
            ty = GumbelBwd._through_y(ctx, t_src, y, seed)
            s = (grad * y).sum(dim=-1, keepdim=True)
            d = (ty * (grad - s) - y * (grad * ty).sum(dim=-1, keepdim=True)) * ctx.inv_tau
            out = d if out is None else out + d
        return out


_apply_fwd, _apply_bwd = fast_apply(GumbelFwd), fast_apply(GumbelBwd)
gumbel_softmax_fwd.register_autograd(GumbelFwd.backward, setup_context=GumbelFwd.setup_context)
gumbel_softmax_bwd.register_autograd(GumbelBwd.backward, setup_context=GumbelBwd.setup_context)
torch.library.register_vmap(gumbel_softmax_fwd, vmap_by_slices(gumbel_softmax_fwd))
torch.library.register_vmap(gumbel_softmax_bwd, vmap_by_slices(gumbel_softmax_bwd))


# --------------------------------------------------------------------------- public API
def autocast_logits(logits: Tensor) -> Tensor:
    """The logits F.gumbel_softmax would compute with under autocast on their device.

    torch's gumbel_softmax is composite and on no autocast list itself, but on CUDA its `log`
    and `softmax` are on autocast's float32 lists, so float16 / bfloat16 logits give a float32
    result there; CPU autocast lists neither, so the input dtype is kept. Matching that keeps
    genfast a drop-in under AMP.
    """
    if (logits.device.type == "cuda" and logits.dtype in (torch.float16, torch.bfloat16)
            and torch.is_autocast_enabled("cuda")):
        return logits.float()
    return logits


def gumbel_softmax(logits: Tensor, tau: float = 1.0, hard: bool = False,
                   eps: float = _EPS_DEFAULT, dim: int = -1, *,
                   generator: torch.Generator | None = None, seed: int | None = None,
                   backend: str | None = None) -> Tensor:
    """Gumbel-Softmax sample, fused: the noise is drawn inside the kernel (Philox).

    Positional arguments follow ``torch.nn.functional.gumbel_softmax(logits, tau, hard, eps,
    dim)``; genfast's own arguments are keyword-only.

    logits: (..., classes, ...) unnormalized log-probabilities; `dim` is the class axis.
    Returns a tensor of logits' shape and dtype: softmax((logits + g) / tau) with g standard
    Gumbel noise, or with hard=True the exact one-hot of its argmax whose gradient is that of
    the soft sample (straight-through), as ``torch.nn.functional.gumbel_softmax``.

    tau: finite and > 0 (ValueError otherwise); values below 1e-30 act as 1e-30.
    eps: accepted for torch's positional order and ignored, as torch itself does (it deprecated
        eps when its noise stopped needing a log(u + eps) guard); genfast's uniforms are never 0
        or 1, so -log(-log(u)) is always finite. A value other than 1e-10 warns, as torch warns.
    seed / generator: the same seed gives the same noise on every backend; without either, the
    seed is drawn from torch's default generator on the logits' device (no host sync).
    backend: "auto" (default), "reference", "cpu", "triton" or "cuda"; see genfast.backends.

    Hostile rows get defined results: +inf logits share all the mass, a row of -inf is uniform,
    huge finite logits are exact (the row max is subtracted first); NaN logits give NaN rows.
    The backward is differentiable to any order (gradient penalties).

    Autocast: the result has the dtype F.gumbel_softmax gives under autocast: the input dtype
    on the CPU; float32 for float16 / bfloat16 logits under CUDA autocast (see autocast_logits).

    torch.func: grad, vjp, jacrev, jvp, jacfwd and hessian work (a custom autograd.Function
    with setup_context, backward and jvp carries the op in eager mode). vmap works by running
    the kernel once per slice: with seed=<int> every slice draws the same noise, exactly as a
    per-slice call would; with no seed, vmap's `randomness` flag decides (the default "error"
    raises torch's own error, "same" shares one seed, "different" draws one seed per slice).
    Under torch.compile / torch.export the op is called directly (Dynamo cannot trace a custom
    jvp). So torch.func.grad(torch.compile(f)) works, but torch.compile(torch.func.grad(f))
    raises torch's "In order to use an autograd.Function with functorch transforms" error: the
    traced op differentiates through its torch.library registration, and torch 2.13 builds that
    autograd.Function without the setup_context torch.func requires.
    """
    _checks.tensor("logits", logits)
    if logits.dim() == 0:  # as torch: a 0-d tensor is one class (dim -1 or 0), sampled as 1
        y = gumbel_softmax(logits.reshape(1), tau, hard, eps, dim, generator=generator,
                           seed=seed, backend=backend)
        return y.reshape(())
    d = _checks.dim("dim", dim, logits.dim(), "logits")
    inv_tau = 1.0 / max(_checks.positive("tau", tau), MIN_TAU)
    _checks.boolean("hard", hard)
    if eps != _EPS_DEFAULT:
        warnings.warn("`eps` parameter is deprecated and has no effect.", stacklevel=2)
    x = autocast_logits(logits)
    last = d == x.dim() - 1  # the usual case: no movedim / reshape views (~3 us each)
    if not last:
        x = x.movedim(d, -1)
    x2 = x if x.dim() == 2 else x.reshape(math.prod(x.shape[:-1]), x.shape[-1])  # not -1: empty
    name = backends.resolve("gumbel", x2, backend)
    seed_t = random.make_seed(logits.device, seed, generator)
    if torch.compiler.is_compiling():
        y2 = gumbel_softmax_fwd(x2, seed_t, inv_tau, hard, name)
    else:
        y2 = _apply_fwd(x2, seed_t, inv_tau, hard, name)
    y = y2 if x2 is x else y2.reshape(x.shape)
    return y if last else y.movedim(-1, d)
