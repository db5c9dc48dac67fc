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
n_iter = 0 computes sigma from the stored vectors only (eval mode).
For float64 weights the op recomputes sigma = u . (W v) in float64 after the kernel and
returns float64: the kernels report float32, which would cap gradcheck's precision.

## sigma as a function of the weight (differentiable; autograd only, no kernel)
sigma(W) = u^T W v with u, v constants (clones of the buffers, as PyTorch: gradients do not
flow through the power iteration), so d sigma / dW = u v^T and W / sigma(W) is differentiable
to any order. |sigma| below floor = max(eps, smallest normal of W's dtype) is replaced by the
floor, with zero gradient: a zero weight normalizes to exactly 0 (gradient grad / floor, as
F.normalize of a zero vector) where PyTorch divides 0 by 0.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from .. import backends
from ._boundary import (
    FLOATS,
    dtype_code,
    implementations,
    native,
    standard_dtypes,
    triton_kernels,
    work_dtype,
)

_ALL = FLOATS
SPEC = backends.register_op(backends.OpSpec(name="spectral_norm", dtypes=standard_dtypes()))


def matrix_shape(weight: Tensor, dim: int) -> tuple[int, int]:
    """(h, w) of the weight read as a matrix: h = shape[dim], w = the other dims' product."""
    shape = weight.shape
    return shape[dim], math.prod(shape[:dim]) * math.prod(shape[dim + 1:])


def as_matrix(weight: Tensor, dim: int) -> Tensor:
    """The (h, w) matrix of the contract: `dim` moved first, the rest flattened."""
    h, w = matrix_shape(weight, dim)
    return (weight.movedim(dim, 0) if dim else weight).reshape(h, w)


# --------------------------------------------------------------------------- reference (oracle)
def _ref_power(weights, us, vs, dims, n_iter, eps):
    out = []
    for w, u, v, d in zip(weights, us, vs, dims, strict=True):
        wd = work_dtype(w.dtype)
        m, uw, vw = as_matrix(w, d).to(wd), u.to(wd), v.to(wd)
        for _ in range(n_iter):
            uw = F.normalize(torch.mv(m, vw), dim=0, eps=eps)
            vw = F.normalize(torch.mv(m.t(), uw), dim=0, eps=eps)
        out.append(torch.dot(uw, torch.mv(m, vw)))
        u.copy_(uw)
        v.copy_(vw)
    return torch.stack(out)


# --------------------------------------------------------------------------- compiled backends
# Tables keyed by their own content: the same pointers and sizes are the same table, whatever
# tensor they came from, so a cached table can never be stale. A model's weights and buffers
# keep their storage from step to step, so this skips building a tensor per call.
_META: dict[tuple, Tensor] = {}
_META_LIMIT = 256


def _mismatch(w: Tensor, u: Tensor, v: Tensor, d: int) -> ValueError:
    return ValueError(f"spectral norm buffers do not match their weight {tuple(w.shape)} "
                      f"{w.dtype} on {w.device} (dim {d}), or the weights of one call differ "
                      f"in dtype or device: u {tuple(u.shape)} {u.dtype} on {u.device}, v "
                      f"{tuple(v.shape)} {v.dtype} on {v.device}")


def _operands(weights, us, vs, dims):
    """(meta table, tensors to keep alive, (buffer, working copy) pairs to copy back), after
    checking what the kernels cannot: u and v sizes, one dtype and one device."""
    dtype, dev = weights[0].dtype, weights[0].device
    rows, keep, back = [], [], []
    for w, u, v, d in zip(weights, us, vs, dims, strict=True):
        if d == 0 and w.is_contiguous():
            h = w.shape[0]
            n = w.numel() // h if h else math.prod(w.shape[1:])
            ptr, ld = w.data_ptr(), n
        else:
            m = as_matrix(w, d)
            if m.size(1) > 1 and m.stride(1) != 1:
                m = m.contiguous()
            keep.append(m)
            (h, n), ptr = m.shape, m.data_ptr()
            ld = m.stride(0) if h > 1 else n
        # The kernels write h values through u's pointer and n through v's: checked here only.
        if (u.shape != (h,) or v.shape != (n,) or w.dtype is not dtype or u.dtype is not dtype
                or v.dtype is not dtype or w.device != dev or u.device != dev
                or v.device != dev):
            raise _mismatch(w, u, v, d)
        if not u.is_contiguous():
            back.append((u, u.contiguous()))
            u = back[-1][1]
        if not v.is_contiguous():
            back.append((v, v.contiguous()))
            v = back[-1][1]
        rows.append((ptr, u.data_ptr(), v.data_ptr(), h, n, ld))
    key = (dev, *rows)
    meta = _META.get(key)
    if meta is None:
        if len(_META) >= _META_LIMIT:
            _META.clear()
        meta = _META[key] = torch.tensor(rows, dtype=torch.int64).to(dev)
    return meta, keep, back


def _native_power(backend, weights, us, vs, dims, n_iter, eps):
    meta, keep, back = _operands(weights, us, vs, dims)
    dev = weights[0].device
    sigma = torch.empty(len(weights), dtype=torch.float32, device=dev)
    # The CUDA kernel sizes its shared vectors by the largest h and w of the table.
    bounds = _device_bounds(weights, dims) if backend == "cuda" else ()
    native(backend, "spectral_norm_power_iteration", len(weights), meta,
           dtype_code(weights[0]), n_iter, eps, sigma, *bounds, device=dev)
    for dst, src in back:
        dst.copy_(src)
    return sigma


def _triton_power(weights, us, vs, dims, n_iter, eps):
    meta, keep, back = _operands(weights, us, vs, dims)
    sigma = torch.empty(len(weights), dtype=torch.float32, device=weights[0].device)
    max_h, max_w = _device_bounds(weights, dims)
    triton_kernels("spectral_norm").power_iteration(meta, weights[0].dtype, n_iter, eps, sigma,
                                                    max_h, max_w)
    for dst, src in back:
        dst.copy_(src)
    return sigma


def _device_bounds(weights, dims) -> tuple[int, int]:
    """max h and max w over the table, from host-side shapes (reading the table would sync)."""
    sizes = [matrix_shape(w, d) for w, d in zip(weights, dims, strict=True)]
    return max(h for h, _ in sizes), max(n for _, n in sizes)


implementations("spectral_norm", reference=(_ref_power,), native=(_native_power,),
                triton=(_triton_power,))


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
    """The contract's power_iteration; sigma (count,) float32 (float64 for float64 weights)."""
    return _power_impl(weights, us, vs, dims, n_iter, eps, backend)


@power_iteration_op.register_fake
def _(weights, us, vs, dims, n_iter, eps, backend):
    return weights[0].new_empty(len(weights), dtype=work_dtype(weights[0].dtype))


def _plain(ts) -> bool:
    return all(type(t) is Tensor or type(t) is torch.nn.Parameter for t in ts)


def _run_power(weights, us, vs, dims, n_iter, eps, backend) -> Tensor:
    """The op, or in plain eager mode its implementation directly: the dispatcher's three
    Python layers of a mutating custom op cost more than the kernel for a whole small model.
    The direct path bumps the version counters of u and v as the op would."""
    if (torch.compiler.is_compiling() or torch._C._len_torch_dispatch_stack()
            or torch._C._is_torch_function_mode_enabled()
            or not (_plain(weights) and _plain(us) and _plain(vs))):
        return power_iteration_op(weights, us, vs, dims, n_iter, eps, backend)
    sigma = _power_impl(weights, us, vs, dims, n_iter, eps, backend)
    torch.autograd.graph.increment_version([*us, *vs])
    return sigma


_RESOLVED: dict[tuple, str] = {}


def _resolve(w: Tensor, backend: str | None) -> str:
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
    name = "reference" if weights[0].is_meta else _resolve(weights[0], backend)
    with torch.no_grad():  # the weights may require grad; nothing here is differentiated
        return _run_power(weights, us, vs, dims, n_iter, eps, name)


# --------------------------------------------------------------------------- sigma's autograd
class _Sigma(torch.autograd.Function):
    """sigma(W) = u^T W v for constant u, v: the value comes from the kernel, the gradient is
    u v^T laid out as W. An autograd.Function, not a custom op: it is glue around no kernel,
    and one per layer per step, where a custom op's eager dispatch costs ~5x more."""

    @staticmethod
    def forward(ctx, weight, u, v, sigma, dim, floor):
        ctx.shape, ctx.dtype, ctx.dim, ctx.floor = weight.shape, weight.dtype, dim, floor
        ctx.save_for_backward(u, v, sigma)
        return sigma.clone()

    @staticmethod
    def backward(ctx, g):
        u, v, sigma = ctx.saved_tensors
        # A floored sigma is a constant; linear in g, so this is differentiable again.
        g = g * (sigma.abs() > ctx.floor)
        d = ctx.dim
        moved = (ctx.shape[d], *ctx.shape[:d], *ctx.shape[d + 1:])
        gw = (torch.outer(u, v) * g).to(ctx.dtype).reshape(moved)
        return (gw.movedim(0, d) if d else gw), None, None, None, None, None


class _Normalize(torch.autograd.Function):
    """W / sigma(W), sigma(W) = u^T W v for constant u, v, as one node: the backward
    grad_W = (g - <g, W> / sigma * u v^T) / sigma is one dot and two passes over W, where the
    composition W / sigma(W) takes six (and an accumulation of two gradients)."""

    @staticmethod
    def forward(ctx, weight, u, v, sigma, dim, floor):
        ctx.dim, ctx.floor = dim, floor
        ctx.save_for_backward(weight, u, v, sigma)
        return weight / sigma

    @staticmethod
    def backward(ctx, g):
        w, u, v, s = ctx.saved_tensors
        d = ctx.dim
        if torch.is_grad_enabled():  # create_graph: the second order needs sigma's dependence
            s = _Sigma.apply(w, u, v, s, d, ctx.floor)
        live = (s.abs() > ctx.floor).to(s.dtype)  # a floored sigma is a constant
        coef = torch.vdot(g.reshape(-1), w.reshape(-1)).to(s.dtype) * live / (s * s)
        vv = (v * -coef).to(w.dtype)
        gw = (g / s).to(w.dtype)
        h, n = matrix_shape(w, d)
        if d == 0:
            return gw.reshape(h, n).addr_(u, vv).reshape(w.shape), None, None, None, None, None
        moved = (h, *w.shape[:d], *w.shape[d + 1:])
        return gw + torch.outer(u, vv).reshape(moved).movedim(0, d), None, None, None, None, None


def sigma_floor(eps: float, dtype: torch.dtype) -> float:
    """The smallest |sigma| a weight is divided by: eps, or the dtype's smallest normal."""
    return max(float(eps), float(torch.finfo(dtype).tiny))


def floor_sigma(sigma: Tensor, floor: float, iterated: bool) -> Tensor:
    """sigma with |sigma| < floor replaced by floor. After an iteration sigma = |W^T u| >= 0
    (up to rounding near 0), so one clamp does it; stored vectors can give any sign."""
    if iterated:
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
    return _Sigma.apply(weight, u.clone(), v.clone(), sigma, dim, floor)


def normalized(weight: Tensor, u: Tensor, v: Tensor, sigma: Tensor, dim: int,
               floor: float) -> Tensor:
    """weight / sigma(weight), differentiable to any order, from a floored kernel value and
    the buffers it was computed with (cloned, as in sigma_node)."""
    if not _needs_grad(weight):
        return weight / sigma
    return _Normalize.apply(weight, u.clone(), v.clone(), sigma, dim, floor)


# --------------------------------------------------------------------------- public API
def check_n_iter(n: object, allow_zero: bool = False) -> int:
    low = 0 if allow_zero else 1
    if isinstance(n, bool) or not isinstance(n, numbers.Integral) or n < low:
        raise ValueError(f"n_power_iterations must be an int >= {low}, got {n!r}")
    return int(n)


def check_eps(eps: object) -> float:
    if (isinstance(eps, bool) or not isinstance(eps, numbers.Real)
            or not (math.isfinite(float(eps)) and float(eps) > 0)):
        raise ValueError(f"eps must be a finite float > 0, got {eps!r}")
    return float(eps)


def check_dim(dim: object, ndim: int, what: str = "weight") -> int:
    if isinstance(dim, bool) or not isinstance(dim, numbers.Integral):
        raise TypeError(f"dim must be an int, got {type(dim).__name__}")
    if not -ndim <= dim < ndim:
        raise IndexError(f"dim={dim} is out of range for {what} with {ndim} dims (expected "
                         f"[-{ndim}, {ndim - 1}])")
    return int(dim) % ndim


def check_weight(w: object, what: str = "weight") -> Tensor:
    if not isinstance(w, Tensor):
        raise TypeError(f"{what} must be a torch.Tensor, got {type(w).__name__}")
    if w.dtype not in _ALL:
        raise TypeError(f"{what} must be float16, bfloat16, float32 or float64, got {w.dtype}")
    if w.dim() < 2:
        raise ValueError(f"{what} must have at least 2 dims for a power iteration, got shape "
                         f"{tuple(w.shape)} (a 1-D weight is normalized exactly: F.normalize)")
    return w


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

    weights: tensors of >= 2 dims, all of one dtype and device; weight i is read as the matrix
    W_i of shape (h, w) = (weights[i].shape[dims[i]], the other dims' product), as
    ``torch.nn.utils.parametrizations.spectral_norm`` does (dims: one int for all, or one each).
    us[i]: (h,) and vs[i]: (w,) buffers of that dtype and device, overwritten by
    `n_power_iterations` (>= 0) rounds of u = normalize(W v), v = normalize(W^T u), with
    normalize(x) = x / max(||x||, eps).
    Returns sigma: (count,) = u_i . (W_i v_i) after the update, float32 (float64 for float64
    weights), without grad. Accumulation is float32 (float64 for float64 weights).
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
    """The spectral norm of `weight` (0-dim), differentiable w.r.t. the weight as u^T W v.

    weight: (..., out at `dim`, ...) with >= 2 dims; u: (weight.shape[dim],); v: (the other
    dims' product,): buffers of the weight's dtype and device. update=True first runs
    `n_power_iterations` (>= 1) rounds of the power iteration on u and v in place (training
    mode); update=False reuses them (eval mode).
    Returns float32 sigma (float64 for float64 weights). |sigma| below max(eps, the dtype's
    smallest normal) reads as that floor, so a zero weight divides to 0, never NaN.
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
