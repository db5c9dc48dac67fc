"""Gumbel-max sampling with temperature, top-k and top-p: public API, reference, torch.library op,
dispatch. Registered as op "sample" (genfast.backends, `genfast info`).

The contract every backend implements (this docstring is the spec; kernels cite it). The 2-D
(rows, n) view, the noise g[r, c] and the row preprocessing (x', m') are those of the contract in
genfast/ops/gumbel.py, shared by both stems. Kernels: reference here, C++ CPU
csrc/cpu/sample.cpp, Triton kernels/sample.py, CUDA csrc/cuda/sample.cu.

## sample_categorical(x, seed, inv_temperature, top_k, top_p) -> int64 index per row
inv_temperature == +inf: greedy, index = first argmax of x' (no noise, no filtering).
Else s[c] = (x'[c] - m') * inv_temperature (so max s = +0; -0 counts as +0), and a kept set K
starts as all columns:
  top_k (0 < top_k < n): t = the top_k-th largest s (duplicates counted); K = {c : s[c] >= t}.
  top_p (< 1): w[c] = exp(s[c]) for c in K, Z = sum of w over K; t = the largest s value whose
    head {c in K : s[c] >= t} holds mass >= top_p * Z, i.e. where a walk of K in descending s,
    accumulating w, first reaches top_p * Z; K = {c in K : s[c] >= t} (ties at the threshold
    are all kept; if the walk never reaches top_p * Z, K is unchanged).
index = first argmax over c in K of (s[c] + g[c]).
top_k = 0 means off, top_p >= 1 means off. Python guarantees 1 <= top_k and 0 < top_p.
Every row's index is in [0, n), NaN rows included.

## Arithmetic of the top_p walk (the one place backends may round differently)
The reference sorts and takes a float32 cumsum of the normalised probabilities; the CPU kernel
sums in double; the Triton and CUDA kernels sum w truncated to multiples of 2^-S, S = 62 -
ceil(log2(n)), exactly in int64 (so their answer does not depend on summation order). Kept sets,
hence indices, can differ only where top_p * Z is within rounding of a partial sum.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from .. import backends, random
from . import _checks
from ._boundary import (
    Rows,
    Seed,
    dtype_code,
    implementations,
    native,
    rows_view,
    seed_value,
    standard_dtypes,
    triton_kernels,
    work_dtype,
)
from ._eager import eager_op
from .gumbel import MIN_TAU, ref_rows, vmap_by_slices

SPEC = backends.register_op(backends.OpSpec(name="sample", dtypes=standard_dtypes()))


# --------------------------------------------------------------------------- reference (oracle)
def _ref_sample(x: Tensor, seed: Tensor, inv_temp: float, top_k: int, top_p: float) -> Tensor:
    wd = work_dtype(x.dtype)
    g = random.gumbel(seed_value(seed), x.shape[0], x.shape[1], x.device, wd)
    return ref_draw(x.to(wd), g, inv_temp, top_k, top_p)


def sampler_knobs(temperature: float, top_k: int | None, top_p: float | None,
                  n: int) -> tuple[float, int, float]:
    """(inv_temperature, top_k, top_p) as the kernels take them, checked as
    sample_categorical's arguments: temperature 0 -> +inf (greedy), top_k None or >= n -> 0
    (off), top_p None -> 1.0 (off). Every sampler and generator of the family parses them here."""
    t = _checks.positive("temperature", temperature, allow_zero=True)
    inv_temp = math.inf if t == 0 else 1.0 / max(t, MIN_TAU)
    k = 0 if top_k is None else _checks.integer("top_k", top_k, low=1)
    p = 1.0 if top_p is None else _checks.real("top_p", top_p, 0.0, 1.0, low_open=True)
    return inv_temp, (k if k < n else 0), p


def ref_draw(x: Tensor, g: Tensor, inv_temp: float, top_k: int, top_p: float) -> Tensor:
    """The draw of every row of x (R, n) given its Gumbel noise g (R, n): the contract's
    filter (temperature, top_k, top_p with ties kept) then the argmax of s + g. Shared by the
    reference sampler and the generators' references, which draw noise rows of their own."""
    xp, mp = ref_rows(x)
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
    a = torch.where(keep, s + g, torch.full_like(s, -math.inf))
    return a.argmax(dim=1)


# --------------------------------------------------------------------------- compiled backends
def _native_sample(backend, x, seed, inv_temp, top_k, top_p):
    x = rows_view(x)
    out = torch.empty(x.shape[0], dtype=torch.int64, device=x.device)
    if x.shape[0]:
        native(backend, "sample_categorical", Rows(x), out, *x.shape, dtype_code(x),
               Seed(seed), inv_temp, top_k, top_p)
    return out


def _triton_sample(x, seed, inv_temp, top_k, top_p):
    x = rows_view(x)
    out = torch.empty(x.shape[0], dtype=torch.int64, device=x.device)
    return triton_kernels("sample").sample_categorical(x, seed, inv_temp, top_k, top_p, out)


implementations("sample", reference=(_ref_sample,), native=(_native_sample,),
                triton=(_triton_sample,))


# --------------------------------------------------------------------------- torch.library op
def _sample_impl(logits, seed, inv_temperature, top_k, top_p, backend):
    return backends.call("sample", backend, 0, logits, seed, inv_temperature, top_k, top_p)


@torch.library.custom_op("genfast::sample_categorical", mutates_args=())
def sample_categorical_op(logits: Tensor, seed: Tensor, inv_temperature: float, top_k: int,
                          top_p: float, backend: str) -> Tensor:
    return _sample_impl(logits, seed, inv_temperature, top_k, top_p, backend)


@sample_categorical_op.register_fake
def _(logits, seed, inv_temperature, top_k, top_p, backend):
    return logits.new_empty(logits.shape[:1], dtype=torch.int64)


# vmap runs one call per slice (see gumbel.vmap_by_slices); indices have no gradient, so no
# autograd formula is needed for torch.func.grad to pass through (it sees a constant).
torch.library.register_vmap(sample_categorical_op, vmap_by_slices(sample_categorical_op))
# The op, or in plain eager mode its implementation directly (genfast/ops/_eager.py).
_sample = eager_op(sample_categorical_op, _sample_impl)


# --------------------------------------------------------------------------- public API
def sample_categorical(logits: Tensor, temperature: float = 1.0, top_k: int | None = None,
                       top_p: float | None = None, *, generator: torch.Generator | None = None,
                       seed: int | None = None, backend: str | None = None) -> Tensor:
    """Draw one class index per row by Gumbel-max, without materializing noise or probabilities.

    logits: (..., classes). Returns int64 indices of shape logits.shape[:-1], distributed as
    softmax(logits / temperature) restricted to the top_k classes and then to the top_p
    nucleus (ties at either threshold are kept). temperature=0 is greedy argmax.
    top_k: None or an int >= 1 (values >= classes mean no filtering).
    top_p: None or a float in (0, 1].
    seed / generator: as genfast.gumbel_softmax; the same seed and logits give the same indices
    on every backend (but for float near-ties, see the contract above).
    No host sync: safe inside CUDA-graph-free decode loops and torch.compile.
    +inf logits share the mass, a row of -inf is uniform; rows with NaN give an index in range.
    torch.func.vmap runs one kernel call per slice (the noise of a slice is that of a call on it).
    """
    _checks.tensor("logits", logits, min_dim=1)
    n = logits.shape[-1]
    if n == 0:
        raise ValueError("logits: the class dimension (last) is empty; nothing to sample")
    inv_temp, k, p = sampler_knobs(temperature, top_k, top_p, n)
    x2 = logits.reshape(math.prod(logits.shape[:-1]), n)
    name = backends.resolve("sample", x2, backend)
    seed_t = random.make_seed(logits.device, seed, generator)
    return _sample(x2, seed_t, inv_temp, k, p, name).reshape(logits.shape[:-1])
