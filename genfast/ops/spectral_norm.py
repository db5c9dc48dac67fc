"""Spectral-norm power iteration: public API, reference, torch.library op, dispatch.

The contract every backend implements (this docstring is the spec; kernels cite it).

Every backend (reference here, C++ CPU csrc/cpu/spectral_norm.cpp, Triton
kernels/spectral_norm.py, CUDA csrc/cuda/spectral_norm.cu) takes MANY weights in one call, as
a (count, 6) int64 table of rows (W pointer, u pointer, v pointer, h, w, ld): W is a row-major
(h, w) matrix with unit column stride and row stride ld, u (h) and v (w) are contiguous and
share W's dtype. W is the weight as torch's parametrization reads it: the output dimension
`dim` moved first and the rest flattened (a view of the weight when `dim` is 0 and the weight
is contiguous, a copy otherwise). All weights of one call share dtype and device.

## power_iteration(n_iter, eps) -> sigma; u and v updated in place
normalize(x) = x / max(||x||_2, eps)       (F.normalize: a zero vector stays zero)
repeat n_iter times:  u = normalize(W v);  v = normalize(W^T u)
sigma = u . (W v) with the final u and v, float32. Kernels may use the identity
u . (W v) = ||W^T u||^2 / max(||W^T u||, eps) when n_iter >= 1, which saves a pass over W.
Accumulation is float32 for float16/bfloat16/float32 weights, float64 for float64 weights.
n_iter = 0 computes sigma from the stored vectors only (eval mode) and writes nothing else.
For float64 weights the op recomputes sigma = u . (W v) in float64 after the kernel and
returns float64: the kernels report float32, which would cap gradcheck's precision.

Complex weights (complex64 / complex128, as torch's parametrization takes them): the same
iteration with W^H in place of W^T and sigma = u^H (W v), complex (real and positive up to
rounding after an iteration). Only the reference runs them: the OpSpec gives the compiled
backends real dtypes, so `auto` picks the reference and a request naming another backend raises
BackendError with the reason. The GPU backends route weights too big for one SM to torch.mv
(genfast/ops/_spectral_norm_kernels.py).

## sigma as a function of the weight (differentiable; autograd only, no kernel)
sigma(W) = u^T W v with u, v constants (clones of the buffers, as PyTorch: gradients do not
flow through the power iteration), so d sigma / dW = u v^T and W / sigma(W) is differentiable
to any order. |sigma| below floor = max(eps, smallest normal of W's dtype) is replaced by the
floor, with zero gradient: a zero weight normalizes to exactly 0 (gradient grad / floor, as
F.normalize of a zero vector) where PyTorch divides 0 by 0. Complex: sigma(W) = u^H W v,
d sigma / dW = conj(u) v^T (genfast/ops/_spectral_norm_autograd.py).

## Autocast
The power iteration and W / sigma run in the weight's own dtype (fp32 accumulation) whatever
the autocast state, as torch's parametrization does on the CPU: autocast casts the layer that
consumes W / sigma, not the normalization. The reference turns autocast off around its torch.mv
calls (CUDA autocast would run them in float16) and so do the backward formulas.
"""

from __future__ import annotations

import numbers
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from .. import backends
from . import _checks
from ._boundary import FLOATS, standard_dtypes
from ._eager import modes_off, plain
from ._spectral_norm_autograd import (
    floor_sigma,
    normalized,
    sigma_floor,
    sigma_node,
    step,
)
from ._spectral_norm_kernels import as_matrix, direct_runner, matrix_shape, sigma_dtype

__all__ = ["as_matrix", "floor_sigma", "layer_normalized", "layer_sigma", "matrix_shape",
           "normalized", "power_iteration", "power_iteration_op", "sigma_floor", "sigma_node",
           "sigma_op", "spectral_norm_power_iteration", "spectral_normalize", "spectral_sigma"]

COMPLEX = (torch.complex64, torch.complex128)
# What the public API takes; the reference runs all of it, the kernels the real dtypes.
DTYPES = (*FLOATS, *COMPLEX)
SPEC = backends.register_op(backends.OpSpec(
    name="spectral_norm", dtypes=standard_dtypes(reference=DTYPES)))


def _power_impl(weights, us, vs, dims, n_iter, eps, backend):
    sigma = backends.call("spectral_norm", backend, 0, weights, us, vs, dims, n_iter, eps)
    if weights[0].dtype == torch.float64 and backends.base_name(backend) != "reference":
        sigma = torch.stack([torch.dot(u, torch.mv(as_matrix(w, d), v))
                             for w, u, v, d in zip(weights, us, vs, dims, strict=True)])
    return sigma


# --------------------------------------------------------------------------- torch.library op
@torch.library.custom_op("genfast::spectral_norm_power_iteration", mutates_args=("us", "vs"))
def power_iteration_op(weights: list[Tensor], us: list[Tensor], vs: list[Tensor],
                       dims: list[int], n_iter: int, eps: float, backend: str) -> Tensor:
    """The contract's power_iteration; sigma (count,) float32 (float64 for float64 weights,
    the weights' dtype for complex ones)."""
    return _power_impl(weights, us, vs, dims, n_iter, eps, backend)


@power_iteration_op.register_fake
def _(weights, us, vs, dims, n_iter, eps, backend):
    return weights[0].new_empty(len(weights), dtype=sigma_dtype(weights[0].dtype))


@torch.library.custom_op("genfast::spectral_norm_sigma", mutates_args=())
def sigma_op(weights: list[Tensor], us: list[Tensor], vs: list[Tensor], dims: list[int],
             eps: float, backend: str) -> Tensor:
    """sigma from the stored vectors (n_iter = 0, eval mode): the same kernels, which then write
    nothing but sigma; a separate op that mutates nothing, so an exported or compiled eval-mode
    model has no buffer updates, as torch's has none."""
    return _power_impl(weights, us, vs, dims, 0, eps, backend)


@sigma_op.register_fake
def _(weights, us, vs, dims, eps, backend):
    return weights[0].new_empty(len(weights), dtype=sigma_dtype(weights[0].dtype))


def _direct(weights, us, vs) -> bool:
    """Plain eager mode: nothing (a mode, a transform, a tensor subclass) needs to see the op,
    so its implementation may run directly."""
    return modes_off() and plain(weights) and plain(us) and plain(vs)


def _run_power(weights, us, vs, dims, n_iter, eps, backend) -> Tensor:
    """The op, or in plain eager mode its implementation directly: the dispatcher's three
    Python layers of a mutating custom op cost more than the kernel for a whole small model.
    The direct path bumps the version counters of u and v as the op would. torch.func
    transforms (functorch-wrapped tensors, whose data pointers cannot be read) take the op."""
    if not _direct(weights, us, vs):
        if n_iter == 0:
            return sigma_op(weights, us, vs, dims, eps, backend)
        return power_iteration_op(weights, us, vs, dims, n_iter, eps, backend)
    sigma = _power_impl(weights, us, vs, dims, n_iter, eps, backend)
    if n_iter:
        torch.autograd.graph.increment_version([*us, *vs])
    return sigma


_RESOLVED: dict[tuple, str] = {}


def resolve(w: Tensor, backend: str | None) -> str:
    """backends.resolve, memoized on what it depends on (the request, device and dtype): a
    model calls this every step, and resolving costs about as much as a small kernel."""
    if torch.compiler.is_compiling():
        return backends.resolve("spectral_norm", w, backend)
    key = (backends.requested_backend(backend), w.device, w.dtype, backends.generation)
    name = _RESOLVED.get(key)
    if name is None:
        name = _RESOLVED[key] = backends.resolve("spectral_norm", w, backend)
    return name


def power_iteration(weights: list[Tensor], us: list[Tensor], vs: list[Tensor],
                    dims: list[int], n_iter: int, eps: float, backend: str | None) -> Tensor:
    """:func:`spectral_norm_power_iteration` for callers that validated their settings once
    (genfast.nn). What the kernels rely on (u, v sizes, one dtype and device) is checked on
    the way to them all the same."""
    # Meta tensors (shape-only models) take the reference, which costs nothing there, quietly.
    name = "reference" if weights[0].is_meta else resolve(weights[0], backend)
    with torch.no_grad():  # the weights may require grad; nothing here is differentiated
        return _run_power(weights, us, vs, dims, n_iter, eps, name)


def _layer_runner(weight: Tensor, u: Tensor, v: Tensor, dim: int, backend: str | None,
                  memo: list):
    """The direct kernel runner of one drop-in layer, or None where the general path must run.
    `memo` is a one-element list the layer owns: in plain eager mode it keeps a direct runner
    of the native kernel (table built and checked once), keyed on everything the table and the
    backend choice depend on, so a call costs a key, an output tensor and the kernel."""
    if not (modes_off() and plain((weight, u, v)) and not weight.is_meta):
        return None
    key = (weight.data_ptr(), u.data_ptr(), v.data_ptr(), weight.shape, weight.stride(),
           u.shape, u.stride(), v.shape, v.stride(), weight.dtype, u.dtype, v.dtype,
           weight.device, u.device, v.device, backends.requested_backend(backend),
           backends.generation)
    hit = memo[0]
    if hit is None or hit[0] != key:
        name = backends.base_name(resolve(weight, backend))
        hit = memo[0] = (key, direct_runner(name, weight, u, v, dim))
    return hit[1]


def layer_sigma(weight: Tensor, u: Tensor, v: Tensor, dim: int, n_iter: int, eps: float,
                backend: str | None, memo: list) -> Tensor:
    """One layer's floored sigma (0-dim, no grad) after `n_iter` iterations on its buffers
    (the drop-in layer's sigma when a group did not compute it); `memo` as in _layer_runner."""
    floor = sigma_floor(eps, weight.dtype)
    run = _layer_runner(weight, u, v, dim, backend, memo)
    if run is not None:
        try:
            sigma = run(n_iter, eps, floor)
        except Exception:  # the general path below raises, or falls back and warns
            memo[0] = None
        else:
            if n_iter:
                torch.autograd.graph.increment_version([u, v])
            return sigma
    return _general_sigma(weight, u, v, dim, n_iter, eps, backend, floor)


def _general_sigma(weight, u, v, dim, n_iter, eps, backend, floor) -> Tensor:
    sigma = power_iteration([weight], [u], [v], [dim], n_iter, eps, backend)
    return floor_sigma(sigma, floor, n_iter > 0)[0]


def layer_normalized(weight: Tensor, u: Tensor, v: Tensor, dim: int, n_iter: int,
                     eps: float, backend: str | None, memo: list) -> Tensor:
    """The drop-in layer's hot path, run at every read of its weight: weight / sigma(weight)
    after `n_iter` iterations on u and v in place, differentiable to any order. In plain eager
    mode one kernel call and one autograd node (_spectral_norm_autograd.step); otherwise sigma
    by layer_sigma and W / sigma by `normalized`."""
    floor = sigma_floor(eps, weight.dtype)
    run = _layer_runner(weight, u, v, dim, backend, memo)
    if run is not None:
        try:
            return step(weight, u, v, run, n_iter, eps, dim, floor)
        except Exception:  # the general path below raises, or falls back and warns
            memo[0] = None
        sigma = _general_sigma(weight.detach(), u, v, dim, n_iter, eps, backend, floor)
    else:
        sigma = layer_sigma(weight.detach(), u, v, dim, n_iter, eps, backend, memo)
    return normalized(weight, u, v, sigma, dim, floor)


# --------------------------------------------------------------------------- public API
def check_n_iter(n: object, allow_zero: bool = False) -> int:
    return _checks.integer("n_power_iterations", n, 0 if allow_zero else 1)


def check_eps(eps: object) -> float:
    return _checks.positive("eps", eps)


def check_dim(dim: object, ndim: int, what: str = "weight") -> int:
    return _checks.dim("dim", dim, ndim, what)


def check_weight(w: object, what: str = "weight") -> Tensor:
    """A weight the power iteration takes: real floating or complex, >= 2 dims (a 1-D weight
    is normalized exactly: F.normalize)."""
    return _checks.tensor(what, w, DTYPES, min_dim=2)


def _check_vector(name: str, x: object, n: int, w: Tensor, what: str) -> None:
    if not isinstance(x, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    # The kernels write n values through x's pointer: its size is checked here, nowhere else.
    if x.shape != (n,) or x.dtype != w.dtype or x.device != w.device:
        raise ValueError(f"{name} must be a ({n},) {w.dtype} tensor on {w.device} to match "
                         f"{what} of shape {tuple(w.shape)}, got {tuple(x.shape)} {x.dtype} "
                         f"on {x.device}")
    if x.requires_grad:
        raise ValueError(f"{name} must not require grad: it is updated in place (a buffer)")


def spectral_norm_power_iteration(
        weights: Sequence[Tensor], us: Sequence[Tensor], vs: Sequence[Tensor],
        n_power_iterations: int = 1, eps: float = 1e-12, *, dims: int | Sequence[int] = 0,
        backend: str | None = None) -> Tensor:
    """Power iteration for many weights in one kernel call: updates every u and v in place.

    weights: tensors of >= 2 dims, all of one dtype (real floating, or complex: reference
    backend only) and device; weight i is read as the matrix
    W_i of shape (h, w) = (weights[i].shape[dims[i]], the other dims' product), as
    ``torch.nn.utils.parametrizations.spectral_norm`` does (dims: one int for all, or one each).
    us[i]: (h,) and vs[i]: (w,) buffers of that dtype and device, overwritten by
    `n_power_iterations` (>= 0) rounds of u = normalize(W v), v = normalize(W^H u), with
    normalize(x) = x / max(||x||, eps).
    Returns sigma: (count,) = u_i^H (W_i v_i) after the update, float32 (float64 for float64
    weights, the weights' dtype for complex ones), without grad. Accumulation is float32
    (float64 for float64 weights).
    """
    n_iter = check_n_iter(n_power_iterations, allow_zero=True)
    eps = check_eps(eps)
    weights, us, vs = list(weights), list(us), list(vs)
    if not len(weights) == len(us) == len(vs):
        raise ValueError(f"weights, us and vs must have the same length, got {len(weights)}, "
                         f"{len(us)} and {len(vs)}")
    if isinstance(dims, numbers.Integral) and not isinstance(dims, bool):
        dims = [dims] * len(weights)
    dims = list(dims)
    if len(dims) != len(weights):
        raise ValueError(f"dims must be an int or one int per weight, got {len(dims)} for "
                         f"{len(weights)} weights")
    if not weights:
        return torch.empty(0)
    for i, (w, u, v) in enumerate(zip(weights, us, vs, strict=True)):
        what = f"weights[{i}]"
        check_weight(w, what)
        if w.dtype != weights[0].dtype or w.device != weights[0].device:
            raise ValueError(f"all weights must share one dtype and device: weights[0] is "
                             f"{weights[0].dtype} on {weights[0].device}, {what} is {w.dtype} "
                             f"on {w.device}")
        dims[i] = check_dim(dims[i], w.dim(), what)
        h, n = matrix_shape(w, dims[i])
        _check_vector(f"us[{i}]", u, h, w, what)
        _check_vector(f"vs[{i}]", v, n, w, what)
    name = backends.resolve("spectral_norm", weights[0], backend)
    with torch.no_grad():
        return _run_power([w.detach() for w in weights], us, vs, dims, n_iter, eps, name)


def _checked_sigma(weight, u, v, n_power_iterations, eps, dim, update, backend):
    """(floored sigma, dim, floor) for one weight, its arguments checked by their own names."""
    check_weight(weight)
    d = check_dim(dim, weight.dim())
    n_iter = check_n_iter(n_power_iterations) if update else 0
    h, n = matrix_shape(weight, d)
    _check_vector("u", u, h, weight, "weight")
    _check_vector("v", v, n, weight, "weight")
    sigma = spectral_norm_power_iteration([weight], [u], [v], n_iter, eps, dims=d,
                                          backend=backend)
    floor = sigma_floor(eps, weight.dtype)
    return floor_sigma(sigma, floor, n_iter > 0)[0], d, floor


def spectral_sigma(weight: Tensor, u: Tensor, v: Tensor, n_power_iterations: int = 1,
                   eps: float = 1e-12, *, dim: int = 0, update: bool = True,
                   backend: str | None = None) -> Tensor:
    """The spectral norm of `weight` (0-dim), differentiable w.r.t. the weight as u^H W v.

    weight: (..., out at `dim`, ...) with >= 2 dims; u: (weight.shape[dim],); v: (the other
    dims' product,): buffers of the weight's dtype and device. update=True first runs
    `n_power_iterations` (>= 1) rounds of the power iteration on u and v in place (training
    mode); update=False reuses them (eval mode).
    Returns float32 sigma (float64 for float64 weights, complex for complex ones). |sigma|
    below max(eps, the dtype's smallest normal) reads as that floor, so a zero weight divides
    to 0, never NaN.
    """
    sigma, d, floor = _checked_sigma(weight, u, v, n_power_iterations, eps, dim, update,
                                     backend)
    return sigma_node(weight, u, v, sigma, d, floor)


def spectral_normalize(weight: Tensor, u: Tensor | None = None, v: Tensor | None = None,
                       n_power_iterations: int = 1, eps: float = 1e-12, *, dim: int = 0,
                       update: bool = True, backend: str | None = None) -> Tensor:
    """weight / sigma(weight): the forward of torch's spectral-norm parametrization, fused.

    Arguments as :func:`spectral_sigma`. A 1-D weight is normalized exactly (F.normalize; u
    and v are then unused and may be None). The result has the weight's shape and dtype.
    """
    if isinstance(weight, Tensor) and weight.dim() == 1:
        return F.normalize(weight, dim=0, eps=check_eps(eps))
    sigma, d, floor = _checked_sigma(weight, u, v, n_power_iterations, eps, dim, update,
                                     backend)
    return normalized(weight, u, v, sigma, d, floor)
