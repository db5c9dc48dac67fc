"""spectral_norm's kernels behind genfast.backends.call: the reference, the pointer table the
compiled kernels read, the C++ / CUDA / Triton wrappers, and the shape routing of the GPU
backends (the contract is the docstring of genfast/ops/spectral_norm.py).

GPU shape routing. The Triton and CUDA kernels give each weight ONE program / block: one SM
streams the whole weight, and the CUDA kernel keeps u and v in that block's shared memory
(~12K fp32 values in the default 48 KiB; past that it falls back to a path that runs each GEMV
twice). That design fills the GPU when a call holds many layers, and leaves a single big weight
bounded by one SM's bandwidth. So the GPU wrappers route by shape, from host-side sizes only (no
sync): a weight of at least MV_MIN_ELEMENTS elements, or whose u and v together pass
MV_MAX_VECTOR entries, runs as cuBLAS matrix-vector products over the whole GPU (`_mv_power`);
the rest, usually every layer of a discriminator, stay in one kernel launch.

No host sync: the table of a call is built on the host and copied with a non-blocking copy
from pinned memory (a pageable copy would wait for the device), and cached by content.
"""

from __future__ import annotations

import contextlib
import math

import torch
import torch.nn.functional as F
from torch import Tensor

from ._boundary import (
    cpu_module,
    dtype_code,
    implementations,
    native,
    triton_kernels,
    work_dtype,
)

# GPU routing thresholds (module attributes: tests lower them to walk both paths on the CPU).
# 2^19 elements (2 MiB of fp32) take one SM about as long as the ~10 launches of the mv path.
MV_MIN_ELEMENTS = 1 << 19
# u and v of a weight beyond 8192 accumulators (32 KiB of fp32) no longer sit in the CUDA
# kernel's default shared memory with its reduction scratch.
MV_MAX_VECTOR = 8192


def matrix_shape(weight: Tensor, dim: int) -> tuple[int, int]:
    """(h, w) of the weight read as a matrix: h = shape[dim], w = the other dims' product."""
    shape = weight.shape
    return shape[dim], math.prod(shape[:dim]) * math.prod(shape[dim + 1:])


def as_matrix(weight: Tensor, dim: int) -> Tensor:
    """The (h, w) matrix of the contract: `dim` moved first, the rest flattened."""
    h, w = matrix_shape(weight, dim)
    return (weight.movedim(dim, 0) if dim else weight).reshape(h, w)


def sigma_dtype(dtype: torch.dtype) -> torch.dtype:
    """sigma's dtype: float32, float64 for float64 weights, the weight's own when complex."""
    return dtype if dtype.is_complex else work_dtype(dtype)


def no_autocast(device_type: str):
    """Autocast off (when it is on): the power iteration and W / sigma run in the weight's
    dtype with fp32 accumulation, as outside autocast; the layer consuming W / sigma is what
    autocast casts. On CUDA autocast would otherwise run torch.mv in float16."""
    if torch.is_autocast_enabled(device_type):
        return torch.autocast(device_type, enabled=False)
    return contextlib.nullcontext()


# --------------------------------------------------------------------------- reference (oracle)
def _ref_power(weights, us, vs, dims, n_iter, eps):
    out = []
    with no_autocast(weights[0].device.type):
        for w, u, v, d in zip(weights, us, vs, dims, strict=True):
            wd = sigma_dtype(w.dtype)
            m, uw, vw = as_matrix(w, d).to(wd), u.to(wd), v.to(wd)
            for _ in range(n_iter):
                uw = F.normalize(torch.mv(m, vw), dim=0, eps=eps)
                vw = F.normalize(torch.mv(m.mH, uw), dim=0, eps=eps)  # W^H: complex weights
            out.append(torch.vdot(uw, torch.mv(m, vw)))
            if n_iter:  # n_iter = 0 writes nothing (the non-mutating sigma op relies on it)
                u.copy_(uw)
                v.copy_(vw)
    return torch.stack(out)


# --------------------------------------------------------------------------- GPU: cuBLAS path
def _mv_power(weights, us, vs, dims, n_iter, eps):
    """The contract for weights too big for one SM, as matrix-vector products over the GPU.

    Float32 / float64 weights are exact to the contract. Float16 / bfloat16 weights are read in
    their own dtype (an fp32 copy of a weight this big would cost three times the traffic), so
    each product's input vector is rounded to that dtype, as torch's own parametrization does
    for such weights; accumulation is fp32 inside cuBLAS and the norms are fp32."""
    out = []
    with no_autocast(weights[0].device.type):
        for w, u, v, d in zip(weights, us, vs, dims, strict=True):
            m, acc = as_matrix(w, d), work_dtype(w.dtype)
            uw, vw = u.to(acc), v.to(acc)
            if n_iter == 0:
                out.append(torch.dot(uw, torch.mv(m, v).to(acc)))
                continue
            for _ in range(n_iter):
                t = torch.mv(m, vw.to(w.dtype)).to(acc)
                uw = t / torch.linalg.vector_norm(t).clamp_min(eps)
                s = torch.mv(m.t(), uw.to(w.dtype)).to(acc)
                s_norm = torch.linalg.vector_norm(s)
                vw = s / s_norm.clamp_min(eps)
            # u . (W v) = s . v = |s|^2 / max(|s|, eps): no extra pass (see the contract).
            out.append(s_norm * s_norm / s_norm.clamp_min(eps))
            u.copy_(uw)
            v.copy_(vw)
    return torch.stack(out).to(torch.float32)


def route(weights, dims) -> tuple[list[int], list[int]]:
    """Indices of the weights a single-CTA GPU kernel takes, and of those for `_mv_power`,
    from host-side shapes only."""
    small, large = [], []
    for i, (w, d) in enumerate(zip(weights, dims, strict=True)):
        h, n = matrix_shape(w, d)
        big = h * n >= MV_MIN_ELEMENTS or h + n > MV_MAX_VECTOR
        (large if big else small).append(i)
    return small, large


def _routed(kernel, weights, us, vs, dims, n_iter, eps) -> Tensor:
    """kernel(...) on the weights one SM serves well, `_mv_power` on the others, and sigma back
    in the table's order (assembled on the device: no sync)."""
    small, large = route(weights, dims)
    if not large:
        return kernel(weights, us, vs, dims, n_iter, eps)
    parts = {}
    for idx, fn in ((small, kernel), (large, _mv_power)):
        if idx:
            sig = fn(*([seq[i] for i in idx] for seq in (weights, us, vs, dims)), n_iter, eps)
            parts.update(zip(idx, sig.unbind(), strict=True))
    return torch.stack([parts[i] for i in range(len(weights))])


# --------------------------------------------------------------------------- compiled backends
# Tables keyed by their own content: the same pointers and sizes are the same table, whatever
# tensor they came from, so a cached table can never be stale. A model's weights and buffers
# keep their storage from step to step, so this skips building a tensor per call. A CUDA
# entry keeps its pinned host copy with it: the non-blocking copy reads that memory after
# this returns (torch's pinned allocator also holds a freed block until its copy has run).
_META: dict[tuple, tuple[Tensor, Tensor | None]] = {}
_META_LIMIT = 256


def _table(rows: list[tuple[int, ...]], dev: torch.device) -> Tensor:
    key = (dev, *rows)
    hit = _META.get(key)
    if hit is None:
        if len(_META) >= _META_LIMIT:
            _META.clear()
        if dev.type == "cuda":
            host = torch.tensor(rows, dtype=torch.int64, pin_memory=True)
            hit = (host.to(dev, non_blocking=True), host)
        else:
            hit = (torch.tensor(rows, dtype=torch.int64, device=dev), None)
        _META[key] = hit
    return hit[0]


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
    return _table(rows, dev), keep, back


def _device_bounds(weights, dims) -> tuple[int, int]:
    """max h and max w over the table, from host-side shapes (reading the table would sync)."""
    sizes = [matrix_shape(w, d) for w, d in zip(weights, dims, strict=True)]
    return max(h for h, _ in sizes), max(n for _, n in sizes)


def _native_kernel(backend, weights, us, vs, dims, n_iter, eps):
    meta, keep, back = _operands(weights, us, vs, dims)
    dev = weights[0].device
    sigma = torch.empty(len(weights), dtype=torch.float32, device=dev)
    # The CUDA kernel sizes its shared vectors by the largest h and w of the table.
    bounds = _device_bounds(weights, dims) if backend == "cuda" else ()
    native(backend, "spectral_norm_power_iteration", len(weights), meta,
           dtype_code(weights[0]), n_iter, eps, sigma, *bounds, device=dev)
    for dst, src in back if n_iter else ():
        dst.copy_(src)
    return sigma


def _native_power(backend, weights, us, vs, dims, n_iter, eps):
    if backend == "cuda":
        return _routed(lambda *a: _native_kernel("cuda", *a), weights, us, vs, dims, n_iter,
                       eps)
    return _native_kernel(backend, weights, us, vs, dims, n_iter, eps)


def _triton_kernel(weights, us, vs, dims, n_iter, eps):
    meta, keep, back = _operands(weights, us, vs, dims)
    sigma = torch.empty(len(weights), dtype=torch.float32, device=weights[0].device)
    max_h, max_w = _device_bounds(weights, dims)
    triton_kernels("spectral_norm").power_iteration(meta, weights[0].dtype, n_iter, eps, sigma,
                                                    max_h, max_w)
    for dst, src in back if n_iter else ():
        dst.copy_(src)
    return sigma


def _triton_power(weights, us, vs, dims, n_iter, eps):
    return _routed(_triton_kernel, weights, us, vs, dims, n_iter, eps)


implementations("spectral_norm", reference=(_ref_power,), native=(_native_power,),
                triton=(_triton_power,))


def direct_runner(backend: str, weight: Tensor, u: Tensor, v: Tensor, dim: int):
    """For one layer's repeated calls: a function (n_iter, eps, floor) -> the floored sigma
    (0-dim float32) that runs the native kernel of `backend` ("cpu" or "cuda") on exactly these
    tensors, its table built and checked once, or None where the general path must run (another
    backend, a weight the kernel reads through a copy, buffers updated through copies, a weight
    routed to torch.mv, float64 whose sigma is recomputed in float64). The caller keys it on the
    tensors' pointers and layout."""
    if (backend not in ("cpu", "cuda") or weight.dtype == torch.float64 or dim != 0
            or not (weight.is_contiguous() and u.is_contiguous() and v.is_contiguous())):
        return None
    if backend == "cuda" and route([weight], [dim])[1]:
        return None
    table, _, _ = _operands([weight], [u], [v], [dim])
    code = dtype_code(weight)
    if backend == "cpu":
        kernel = cpu_module().spectral_norm_power_iteration
        out = torch.empty((), dtype=torch.float32)

        def run(n_iter, eps, floor, table=table):  # the runner keeps its table alive
            # A new sigma per call (autograd keeps earlier ones); empty_like is the cheapest.
            sigma = torch.empty_like(out)
            kernel(1, table.data_ptr(), code, n_iter, eps, sigma.data_ptr(),
                   torch.get_num_threads())
            s = sigma.item()  # free on the CPU, and cheaper than a clamp op
            if (s if n_iter else abs(s)) < floor:
                sigma.fill_(floor)
            return sigma

        return run
    bounds = matrix_shape(weight, dim)

    def run_cuda(n_iter, eps, floor):
        sigma = torch.empty((), dtype=torch.float32, device=weight.device)
        native("cuda", "spectral_norm_power_iteration", 1, table, code, n_iter, eps, sigma,
               *bounds, device=sigma.device)
        if n_iter:
            return sigma.clamp_min_(floor)
        return torch.where(sigma.abs() < floor, floor, sigma)

    return run_cuda
