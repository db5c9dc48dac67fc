"""Fused attention's kernels on every backend (contract: genfast/ops/attention.py): the table
genfast.backends.call dispatches on.

Kernel 0 (forward): fwd(q, k, v, causal, scale, pool, save) -> (o, lse | None)
Kernel 1 (backward): bwd(q, k, v, o, lse, dout, causal, scale, pool) -> (dq, dk, dv)
Kernel 2 (double backward): bwd2(q, k, v, o, lse, dout, gq, gk, gv, causal, scale)
    -> (Gq, Gk, Gv, Gdout)
q (B, Hh, N, Dk), k (B, Hh, Sk, Dk), v (B, Hh, Sk, Dv); pool None or (Hs, Ws) (never in bwd2).
The forward takes any strides with a unit last one (a KV cache is attended through a view);
the backward kernels take contiguous tensors.
"""

from __future__ import annotations

import functools

import torch
from torch import Tensor

from ._attention_ref import ref_bwd, ref_bwd2, ref_fwd
from ._boundary import (
    DTYPE_CODE,
    cpu_module,
    dtype_code,
    implementations,
    native,
    triton_kernels,
    work_dtype,
)

FWD, BWD, BWD2 = 0, 1, 2


def unit_last(t: Tensor) -> Tensor:
    """t with a unit last stride (copies only when it is strided)."""
    return t if t.stride(-1) == 1 or t.shape[-1] <= 1 else t.contiguous()


def _keys(k: Tensor, pool) -> int:
    return (pool[0] // 2) * (pool[1] // 2) if pool is not None else k.shape[2]


def _opt(t: Tensor | None):
    return 0 if t is None else t


def _strides(t: Tensor) -> tuple[int, int, int]:
    return t.stride()[:3]


@functools.cache
def _cpu_kernel(name: str):
    return getattr(cpu_module(), name)


def _native_fwd(backend, q, k, v, causal, scale, pool, save):
    q, k, v = unit_last(q), unit_last(k), unit_last(v)
    B, Hh, N, Dk = q.shape
    Sk, Dv = k.shape[2], v.shape[3]
    o = q.new_empty(B, Hh, N, Dv)
    lse = q.new_empty(B, Hh, N, dtype=work_dtype(q.dtype)) if save else None
    ph, pw = pool if pool is not None else (0, 0)
    # Pointers and sizes built here, not by native()'s generic conversion: a decode step's
    # kernel takes a few microseconds, and every microsecond of Python around it shows.
    args = (q.data_ptr(), k.data_ptr(), v.data_ptr(), o.data_ptr(),
            0 if lse is None else lse.data_ptr(), B, Hh, N, _keys(k, pool), Sk, Dk, Dv,
            *_strides(q), *_strides(k), *_strides(v), ph, pw, causal, float(scale),
            DTYPE_CODE[q.dtype])
    if backend == "cpu":
        _cpu_kernel("attention_fwd")(*args, torch.get_num_threads())
    else:
        native(backend, "attention_fwd", *args, device=q.device)
    return o, lse


def _native_bwd(backend, q, k, v, o, lse, dout, causal, scale, pool):
    q, k, v, o, lse, dout = (t.contiguous() for t in (q, k, v, o, lse, dout))
    B, Hh, N, Dk = q.shape
    Sk, Dv = k.shape[2], v.shape[3]
    dq, dk, dv = torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)
    ph, pw = pool if pool is not None else (0, 0)
    native(backend, "attention_bwd", q, k, v, o, lse, dout, dq, dk, dv, B, Hh, N,
           _keys(k, pool), Sk, Dk, Dv, ph, pw, causal, float(scale), dtype_code(q))
    return dq, dk, dv


def _native_bwd2(backend, q, k, v, o, lse, dout, gq, gk, gv, causal, scale):
    c = (lambda t: None if t is None else t.contiguous())
    q, k, v, o, lse, dout, gq, gk, gv = (c(t) for t in (q, k, v, o, lse, dout, gq, gk, gv))
    B, Hh, N, Dk = q.shape
    M, Dv = k.shape[2], v.shape[3]
    outs = [torch.empty_like(t) for t in (q, k, v, dout)]
    native(backend, "attention_bwd2", q, k, v, o, lse, dout, _opt(gq), _opt(gk), _opt(gv),
           *outs, B, Hh, N, M, Dk, Dv, causal, float(scale), dtype_code(q))
    return tuple(outs)


def _triton_fwd(q, k, v, causal, scale, pool, save):
    q, k, v = unit_last(q), unit_last(k), unit_last(v)
    B, Hh, N, _ = q.shape
    o = q.new_empty(B, Hh, N, v.shape[3])
    lse = q.new_empty(B, Hh, N, dtype=torch.float32) if save else None
    triton_kernels("attention").fwd(q, k, v, o, lse, causal, float(scale), pool)
    return o, lse


def _triton_bwd(q, k, v, o, lse, dout, causal, scale, pool):
    q, k, v, o, lse, dout = (t.contiguous() for t in (q, k, v, o, lse, dout))
    dq, dk, dv = torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)
    triton_kernels("attention").bwd(q, k, v, o, lse, dout, dq, dk, dv, causal, float(scale),
                                    pool)
    return dq, dk, dv


def _triton_bwd2(q, k, v, o, lse, dout, gq, gk, gv, causal, scale):
    c = (lambda t: None if t is None else t.contiguous())
    q, k, v, o, lse, dout, gq, gk, gv = (c(t) for t in (q, k, v, o, lse, dout, gq, gk, gv))
    outs = [torch.empty_like(t) for t in (q, k, v, dout)]
    triton_kernels("attention_bwd2").bwd2(q, k, v, o, lse, dout, gq, gk, gv, *outs, causal,
                                          float(scale))
    return tuple(outs)


implementations("attention", reference=(ref_fwd, ref_bwd, ref_bwd2),
                native=(_native_fwd, _native_bwd, _native_bwd2),
                triton=(_triton_fwd, _triton_bwd, _triton_bwd2))
