"""Triton kernels of the gated PixelCNN layer's gate (forward and the recomputing backward) and
their launchers.

The semantics are the contract in genfast/ops/masked_conv_layer.py: out = tanh(u[:, :C] +
cond[:, :C]) * sigmoid(u[:, C:] + cond[:, C:]); the backward recomputes tanh and sigmoid from u
and cond and writes (or adds) du and the per-image cond gradient (du summed over the pixels).

The forward is a plain elementwise launch over (image * channel, pixel block). In the backward
one program owns an (image, channel) pair of rows and walks its pixels in BLOCK chunks, so the two
dcond values it sums have one owner and one order (deterministic, no atomics). Math in fp32 for
every dtype, one rounding at the store; tanh f = 2 sigmoid(2f) - 1 (saturates to +-1 instead of
inf / inf, as kernels/causal_conv.py's tanh).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ._launch import check_like, device_guard

DTYPES = (torch.float32, torch.float16, torch.bfloat16)
_BLOCK = 1024  # pixels a program step covers
_INT32_MAX = 2**31 - 1


@triton.jit
def _rows(b, c, C, N, cond_ptr, HAS_COND: tl.constexpr):
    """Offsets of the filter and gate rows of (b, c) in u (int64) and their cond values."""
    f0 = (b * 2 * C + c).to(tl.int64) * N
    q0 = f0 + C * N  # C * N < 2^31 (checked by the launchers)
    cf = 0.0
    cq = 0.0
    if HAS_COND:
        cf = tl.load(cond_ptr + b * 2 * C + c).to(tl.float32)
        cq = tl.load(cond_ptr + b * 2 * C + C + c).to(tl.float32)
    return f0, q0, cf, cq


@triton.jit
def _gate_fwd_kernel(u_ptr, cond_ptr, out_ptr, C, N, HAS_COND: tl.constexpr,
                     BLOCK: tl.constexpr):
    row = tl.program_id(0)
    b = row // C
    c = row % C
    f0, q0, cf, cq = _rows(b, c, C, N, cond_ptr, HAS_COND)
    n = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    m = n < N
    f = tl.load(u_ptr + f0 + n, mask=m, other=0.0).to(tl.float32) + cf
    q = tl.load(u_ptr + q0 + n, mask=m, other=0.0).to(tl.float32) + cq
    z = (2.0 * tl.sigmoid(2.0 * f) - 1.0) * tl.sigmoid(q)
    tl.store(out_ptr + row.to(tl.int64) * N + n, z.to(out_ptr.dtype.element_ty), mask=m)


@triton.jit
def _gate_bwd_kernel(u_ptr, cond_ptr, dout_ptr, du_ptr, dcond_ptr, C, N,
                     HAS_COND: tl.constexpr, HAS_DCOND: tl.constexpr, ACC: tl.constexpr,
                     BLOCK: tl.constexpr):
    row = tl.program_id(0)
    b = row // C
    c = row % C
    f0, q0, cf, cq = _rows(b, c, C, N, cond_ptr, HAS_COND)
    d0 = row.to(tl.int64) * N
    sf = tl.zeros((BLOCK,), tl.float32)
    sq = tl.zeros((BLOCK,), tl.float32)
    for n0 in range(0, N, BLOCK):
        n = n0 + tl.arange(0, BLOCK)
        m = n < N
        f = tl.load(u_ptr + f0 + n, mask=m, other=0.0).to(tl.float32) + cf
        q = tl.load(u_ptr + q0 + n, mask=m, other=0.0).to(tl.float32) + cq
        d = tl.load(dout_ptr + d0 + n, mask=m, other=0.0).to(tl.float32)
        t = 2.0 * tl.sigmoid(2.0 * f) - 1.0
        s = tl.sigmoid(q)
        gf = d * s * (1.0 - t * t)
        gq = d * t * s * (1.0 - s)
        sf += gf
        sq += gq
        if ACC:
            gf += tl.load(du_ptr + f0 + n, mask=m, other=0.0).to(tl.float32)
            gq += tl.load(du_ptr + q0 + n, mask=m, other=0.0).to(tl.float32)
        tl.store(du_ptr + f0 + n, gf.to(du_ptr.dtype.element_ty), mask=m)
        tl.store(du_ptr + q0 + n, gq.to(du_ptr.dtype.element_ty), mask=m)
    if HAS_DCOND:
        tf = tl.sum(sf, 0)
        tq = tl.sum(sq, 0)
        pf = dcond_ptr + b * 2 * C + c
        pq = dcond_ptr + b * 2 * C + C + c
        if ACC:
            tf += tl.load(pf).to(tl.float32)
            tq += tl.load(pq).to(tl.float32)
        tl.store(pf, tf.to(dcond_ptr.dtype.element_ty))
        tl.store(pq, tq.to(dcond_ptr.dtype.element_ty))


def _check(u: torch.Tensor, cond: torch.Tensor | None) -> tuple[int, int, int]:
    if not isinstance(u, torch.Tensor) or u.dim() != 4 or u.shape[1] % 2:
        raise ValueError(f"u must be a (B, 2C, H, W) tensor, got "
                         f"{tuple(u.shape) if isinstance(u, torch.Tensor) else type(u)}")
    if u.dtype not in DTYPES:
        raise TypeError(f"u must be float32, float16 or bfloat16, got {u.dtype}")
    check_like("u", u, tuple(u.shape), u.dtype, u.device)
    B, C2, H, W = u.shape
    if C2 * H * W > _INT32_MAX or B * C2 > _INT32_MAX:
        raise ValueError(f"u: shape {tuple(u.shape)} is too large for int32 row indexing")
    if cond is not None:
        check_like("cond", cond, (B, C2), u.dtype, u.device)
    return B, C2 // 2, H * W


def gate_fwd(u: torch.Tensor, cond: torch.Tensor | None, out: torch.Tensor) -> torch.Tensor:
    """out (B, C, H, W) = gate(u + cond) (contract); returns out."""
    B, C, N = _check(u, cond)
    check_like("out", out, (B, C, *u.shape[2:]), u.dtype, u.device)
    if B * C * N == 0:
        return out
    block = min(_BLOCK, triton.next_power_of_2(max(N, 16)))
    with device_guard(u):
        _gate_fwd_kernel[(B * C, triton.cdiv(N, block))](
            u, cond if cond is not None else u, out, C, N, HAS_COND=cond is not None,
            BLOCK=block)
    return out


def gate_bwd(u: torch.Tensor, cond: torch.Tensor | None, dout: torch.Tensor, du: torch.Tensor,
             dcond: torch.Tensor | None, accumulate: bool) -> None:
    """du (+)= the gate's gradient in u from dout; dcond (+)= its sum over the pixels."""
    B, C, N = _check(u, cond)
    check_like("dout", dout, (B, C, *u.shape[2:]), u.dtype, u.device)
    check_like("du", du, tuple(u.shape), u.dtype, u.device)
    if dcond is not None:
        check_like("dcond", dcond, (B, 2 * C), u.dtype, u.device)
    if B * C == 0:
        return
    block = min(_BLOCK, triton.next_power_of_2(max(N, 16)))
    with device_guard(u):
        _gate_bwd_kernel[(B * C,)](
            u, cond if cond is not None else u, dout, du, dcond if dcond is not None else du,
            C, N, HAS_COND=cond is not None, HAS_DCOND=dcond is not None,
            ACC=bool(accumulate), BLOCK=block)
