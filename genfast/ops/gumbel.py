"""Gumbel-Softmax and Gumbel-max sampling: public API, reference, torch.library ops, dispatch.

The contract every backend implements (this docstring is the spec; kernels cite it).

Every backend (reference in genfast/ops/gumbel.py, C++ CPU csrc/cpu/gumbel.cpp, Triton
kernels/gumbel.py, CUDA csrc/cuda/gumbel.cu) works on a 2-D (rows, n) view: the public API moves
`dim` last and flattens the rest. Column stride is 1; row strides are arbitrary (in elements).
Outputs are written to a preallocated buffer. Math is in float32 for float16/bfloat16/float32
inputs and in float64 for float64 inputs; outputs are stored in the input dtype.

## Noise (genfast/random.py is the oracle; csrc/common/philox.h is the C++/CUDA copy)
Element (row r, column c) uses word `c & 3` of `philox4x32_10(ctr=(c>>2, lo32(r), hi32(r), 0),
key=(lo32(seed), hi32(seed)))`, u = ((word >> 9) + 0.5) * 2^-23 (float32, exact, in
[2^-24, 1-2^-24]), g = -log(-log(u)) (float32; for float64 inputs u is widened to double first
and the logs are in double). Four neighbouring columns share one Philox call.

## Row preprocessing (defines the result for hostile rows; identical in every op)
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

## sample_categorical(x, seed, inv_temperature, top_k, top_p) -> int64 index per row
inv_temperature == +inf: greedy, index = first argmax of x' (no noise, no filtering).
Else s[c] = (x'[c] - m') * inv_temperature, and a kept-set K starts as all columns:
  top_k (0 < top_k < n): t = the top_k-th largest s (duplicates counted); K = {c : s[c] >= t}.
  top_p (< 1): p[c] = exp(s[c] - max s) / Z over K; walk K in descending s accumulating p; the
    first value where the running sum >= top_p is the threshold t; K = {c in K : s[c] >= t}
    (ties at the threshold are all kept; if the running sum never reaches top_p, K is unchanged).
index = first argmax over c in K of (s[c] + g[c]).
top_k = 0 means off, top_p >= 1 means off. Python guarantees 1 <= top_k and 0 < top_p.

## Exactness across backends
Uniform words are bit-identical everywhere. Logs/exps may differ by a few ulp between
libraries, so float outputs match to tolerance and sampled indices match exactly except at
float near-ties (tests use random logits, where such ties do not occur).
"""

from __future__ import annotations

import math
import numbers

import torch
from torch import Tensor

from .. import backends, random
from ._boundary import (
    FLOATS,
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

_ALL = FLOATS
SPEC = backends.register_op(backends.OpSpec(name="gumbel", dtypes=standard_dtypes()))
# Below this temperature the soft sample is one-hot to float32 precision anyway; clamping keeps
# 1/tau finite in float32, so no kernel can form inf * 0.
_MIN_TAU = 1e-30


# --------------------------------------------------------------------------- reference (oracle)
def _ref_rows(x: Tensor) -> tuple[Tensor, Tensor]:
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
    xp, mp = _ref_rows(x.to(wd))
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


def _ref_sample(x: Tensor, seed: Tensor, inv_temp: float, top_k: int, top_p: float) -> Tensor:
    wd = work_dtype(x.dtype)
    xp, mp = _ref_rows(x.to(wd))
    if math.isinf(inv_temp):
        return xp.argmax(dim=1)
    s = (xp - mp) * inv_temp
    keep = torch.ones_like(s, dtype=torch.bool)
    n = s.shape[1]
    if 0 < top_k < n:
        keep = s >= s.topk(top_k, dim=1).values[:, -1:]
    if top_p < 1.0:
        sk = torch.where(keep, s, torch.full_like(s, -math.inf))
        sorted_s, _ = sk.sort(dim=1, descending=True)
        cum = torch.softmax(sorted_s, dim=1).cumsum(dim=1)
        pos = (cum < top_p).sum(dim=1, keepdim=True)
        t = sorted_s.gather(1, pos.clamp(max=n - 1))
        keep = keep & ((s >= t) | (pos >= n))
    g = random.gumbel(seed_value(seed), x.shape[0], n, x.device, wd)
    a = torch.where(keep, s + g, torch.full_like(s, -math.inf))
    return a.argmax(dim=1)


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


def _native_sample(backend, x, seed, inv_temp, top_k, top_p):
    x = rows_view(x)
    out = torch.empty(x.shape[0], dtype=torch.int64, device=x.device)
    if x.shape[0]:
        native(backend, "sample_categorical", Rows(x), out, *x.shape, dtype_code(x),
               Seed(seed), inv_temp, top_k, top_p)
    return out


def _triton_fwd(x, seed, inv_tau, hard):
    x = rows_view(x)
    return triton_kernels("gumbel").gumbel_softmax_fwd(x, seed, inv_tau, hard, empty_rows(x))


def _triton_bwd(dy, src, seed, inv_tau, recompute):
    dy, src = rows_view(dy.to(src.dtype)), rows_view(src)
    return triton_kernels("gumbel").gumbel_softmax_bwd(dy, src, seed, inv_tau, recompute,
                                                       empty_rows(src))


def _triton_sample(x, seed, inv_temp, top_k, top_p):
    x = rows_view(x)
    out = torch.empty(x.shape[0], dtype=torch.int64, device=x.device)
    return triton_kernels("gumbel").sample_categorical(x, seed, inv_temp, top_k, top_p, out)


implementations("gumbel", reference=(_ref_fwd, _ref_bwd, _ref_sample),
                native=(_native_fwd, _native_bwd, _native_sample),
                triton=(_triton_fwd, _triton_bwd, _triton_sample))
_FWD, _BWD, _SAMPLE = 0, 1, 2


# --------------------------------------------------------------------------- torch.library ops
@torch.library.custom_op("genfast::gumbel_softmax_fwd", mutates_args=())
def gumbel_softmax_fwd(logits: Tensor, seed: Tensor, inv_tau: float, hard: bool,
                       backend: str) -> Tensor:
    return backends.call("gumbel", backend, _FWD, logits, seed, inv_tau, hard)


@torch.library.custom_op("genfast::gumbel_softmax_bwd", mutates_args=())
def gumbel_softmax_bwd(grad: Tensor, src: Tensor, seed: Tensor, inv_tau: float, recompute: bool,
                       backend: str) -> Tensor:
    return backends.call("gumbel", backend, _BWD, grad, src, seed, inv_tau, recompute)


@torch.library.custom_op("genfast::sample_categorical", mutates_args=())
def sample_categorical_op(logits: Tensor, seed: Tensor, inv_temperature: float, top_k: int,
                          top_p: float, backend: str) -> Tensor:
    return backends.call("gumbel", backend, _SAMPLE, logits, seed, inv_temperature, top_k,
                         top_p)


@gumbel_softmax_fwd.register_fake
def _(logits, seed, inv_tau, hard, backend):
    return logits.new_empty(logits.shape)


@gumbel_softmax_bwd.register_fake
def _(grad, src, seed, inv_tau, recompute, backend):
    return src.new_empty(src.shape)


@sample_categorical_op.register_fake
def _(logits, seed, inv_temperature, top_k, top_p, backend):
    return logits.new_empty(logits.shape[:1], dtype=torch.int64)


def _fwd_setup(ctx, inputs, output):
    logits, seed, ctx.inv_tau, ctx.hard, ctx.backend = inputs
    # Soft: y is the output we already hold. Hard: keep the logits (also already alive) and let
    # the backward regenerate y_soft from them and the seed, so nothing logits-sized is added.
    ctx.save_for_backward(logits if ctx.hard else output, seed)


def _fwd_grad(ctx, gy):
    src, seed = ctx.saved_tensors
    return gumbel_softmax_bwd(gy, src, seed, ctx.inv_tau, ctx.hard, ctx.backend), *([None] * 4)


def _bwd_setup(ctx, inputs, output):
    grad, src, seed, ctx.inv_tau, ctx.recompute, ctx.backend = inputs
    ctx.save_for_backward(grad, src, seed)


def _bwd_grad(ctx, gg):
    """Double backward, written with the ops themselves so every order stays differentiable."""
    grad, src, seed = ctx.saved_tensors
    inv_tau, backend = ctx.inv_tau, ctx.backend
    y = gumbel_softmax_fwd(src, seed, inv_tau, False, backend) if ctx.recompute else src
    # dx = y * (dy - <dy, y>) * inv_tau is linear in dy with the same Jacobian as the softmax.
    g_grad = gumbel_softmax_bwd(gg, y, seed, inv_tau, False, backend)
    s = (grad * y).sum(dim=-1, keepdim=True)
    t = (gg * y).sum(dim=-1, keepdim=True)
    g_y = (gg * (grad - s) - grad * t) * inv_tau
    g_src = gumbel_softmax_bwd(g_y, y, seed, inv_tau, False, backend) if ctx.recompute else g_y
    return g_grad, g_src, *([None] * 4)


gumbel_softmax_fwd.register_autograd(_fwd_grad, setup_context=_fwd_setup)
gumbel_softmax_bwd.register_autograd(_bwd_grad, setup_context=_bwd_setup)


# --------------------------------------------------------------------------- public API
def _check_logits(logits: object, dim: int | None) -> Tensor:
    if not isinstance(logits, Tensor):
        raise TypeError(f"logits must be a torch.Tensor, got {type(logits).__name__}")
    if logits.dtype not in _ALL:
        raise TypeError(f"logits must be float16, bfloat16, float32 or float64, got {logits.dtype}")
    if logits.dim() == 0:
        raise ValueError("logits must have at least one dimension (the classes), got a scalar")
    if dim is not None and not -logits.dim() <= dim < logits.dim():
        raise IndexError(f"dim={dim} is out of range for logits with {logits.dim()} dims")
    return logits


def _check_positive(name: str, value: object, allow_zero: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a real number, got {type(value).__name__}")
    v = float(value)
    if not math.isfinite(v) or v < 0 or (v == 0 and not allow_zero):
        bound = ">= 0" if allow_zero else "> 0"
        raise ValueError(f"{name} must be finite and {bound}, got {value}")
    return v


def gumbel_softmax(logits: Tensor, tau: float = 1.0, hard: bool = False, dim: int = -1, *,
                   generator: torch.Generator | None = None, seed: int | None = None,
                   backend: str | None = None) -> Tensor:
    """Gumbel-Softmax sample, fused: the noise is drawn inside the kernel (Philox).

    logits: (..., classes, ...) unnormalized log-probabilities; `dim` is the class axis.
    Returns a tensor of logits' shape and dtype: softmax((logits + g) / tau) with g standard
    Gumbel noise, or with hard=True the exact one-hot of its argmax whose gradient is that of
    the soft sample (straight-through), as ``torch.nn.functional.gumbel_softmax``.

    tau: finite and > 0 (ValueError otherwise); values below 1e-30 act as 1e-30.
    seed / generator: the same seed gives the same noise on every backend; without either, the
    seed is drawn from torch's default generator on the logits' device (no host sync).
    backend: "auto" (default), "reference", "cpu", "triton" or "cuda"; see genfast.backends.

    Hostile rows get defined results: +inf logits share all the mass, a row of -inf is uniform,
    huge finite logits are exact (the row max is subtracted first); NaN logits give NaN rows.
    The backward is differentiable to any order (gradient penalties).
    """
    _check_logits(logits, dim)
    inv_tau = 1.0 / max(_check_positive("tau", tau), _MIN_TAU)
    if not isinstance(hard, bool):
        raise TypeError(f"hard must be a bool, got {type(hard).__name__}")
    x = logits.movedim(dim, -1)
    x2 = x.reshape(math.prod(x.shape[:-1]), x.shape[-1])  # -1 is ambiguous when empty
    name = backends.resolve("gumbel", x2, backend)
    seed_t = random.make_seed(logits.device, seed, generator)
    y2 = gumbel_softmax_fwd(x2, seed_t, inv_tau, hard, name)
    return y2.reshape(x.shape).movedim(-1, dim)


def sample_categorical(logits: Tensor, temperature: float = 1.0, top_k: int | None = None,
                       top_p: float | None = None, *, generator: torch.Generator | None = None,
                       seed: int | None = None, backend: str | None = None) -> Tensor:
    """Draw one class index per row by Gumbel-max, without materializing noise or probabilities.

    logits: (..., classes). Returns int64 indices of shape logits.shape[:-1], distributed as
    softmax(logits / temperature) restricted to the top_k classes and then to the top_p
    nucleus (ties at either threshold are kept). temperature=0 is greedy argmax.
    top_k: None or an int >= 1 (values >= classes mean no filtering).
    top_p: None or a float in (0, 1].
    No host sync: safe inside CUDA-graph-free decode loops and torch.compile.
    +inf logits share the mass, a row of -inf is uniform; rows with NaN give an index in range.
    """
    _check_logits(logits, None)
    n = logits.shape[-1]
    if n == 0:
        raise ValueError("logits: the class dimension (last) is empty; nothing to sample")
    t = _check_positive("temperature", temperature, allow_zero=True)
    inv_temp = math.inf if t == 0 else 1.0 / max(t, _MIN_TAU)
    k = 0
    if top_k is not None:
        if isinstance(top_k, bool) or not isinstance(top_k, numbers.Integral) or top_k < 1:
            raise ValueError(f"top_k must be None or an int >= 1, got {top_k!r}")
        k = int(top_k) if top_k < n else 0
    p = 1.0
    if top_p is not None:
        p = _check_positive("top_p", top_p)
        if p > 1:
            raise ValueError(f"top_p must be in (0, 1], got {top_p}")
    x2 = logits.reshape(math.prod(logits.shape[:-1]), n)
    name = backends.resolve("gumbel", x2, backend)
    seed_t = random.make_seed(logits.device, seed, generator)
    return sample_categorical_op(x2, seed_t, inv_temp, k, p, name).reshape(logits.shape[:-1])
