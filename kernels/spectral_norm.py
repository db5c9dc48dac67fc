"""Triton spectral-norm power iteration for many weights in one launch, and its launcher.

The contract is csrc/cpu/spectral_norm.h (and the docstring of genfast/ops/spectral_norm.py): a
(count, 6) int64 table holds, per weight, (W pointer, u pointer, v pointer, h, w, ld); n_iter
power iterations u = normalize(W v), v = normalize(W^T u) with normalize(x) = x / max(||x||, eps)
update u and v in place, then sigma[i] = u . (W v) is written in float32.

One launch, one program per weight: the program reads its row of the table and turns the stored
addresses into typed pointers (int64 -> pointer casts, as in Triton's grouped-GEMM tutorial; the
interpreter runs them too, on CPU addresses). A GEMV cannot scatter into a register vector, so
t = W v and s = W^T u go through a float32 scratch row per weight (float64 for float64 weights);
u and v themselves are rounded to W's dtype once, after the last iteration, so fp16/bf16 weights
lose no precision between iterations.

After n_iter >= 1 iterations sigma needs no extra pass over W: with s = W^T u and v = s / d,
u . (W v) = (W^T u) . v = ||s||^2 / d exactly (d = max(||s||, eps)). n_iter = 0 reads W once
more to form u . (W v) from the stored vectors.

Limit: a weight is one program (one SM), so a single huge weight is bounded by one SM's
bandwidth; the many-layer case (a GAN discriminator's weights, one call) fills the GPU. The op
(genfast/ops/_spectral_norm_kernels.py) routes weights past that point to torch.mv by shape.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ._launch import check_count, check_like, check_positive, device_guard

_TL_DTYPES = {
    torch.float32: tl.float32,
    torch.float16: tl.float16,
    torch.bfloat16: tl.bfloat16,
    torch.float64: tl.float64,
}
_TILE = 4096  # elements of W per (BH, BW) tile: 32 fp32 values a thread at 4 warps


@triton.jit
def _denominator(sum_sq, eps):
    """max(||x||, eps) from sum x^2; a NaN norm stays NaN (a plain max would hide it)."""
    norm = tl.sqrt(sum_sq)
    return tl.where(norm < eps, eps, norm)


@triton.jit
def _mv(
    w_ptr, h, w, ld, x_ptr, x_den, t_ptr, u_ptr,
    DOT_U: tl.constexpr, ACC: tl.constexpr, BH: tl.constexpr, BW: tl.constexpr,
):  # fmt: skip
    """t = W (x / x_den), row tile by row tile. Returns sum t^2 and stores t at t_ptr, or, if
    DOT_U, returns u . t without storing (u: the weight's own vector, W's dtype)."""
    total = tl.zeros((), ACC)
    for r0 in range(0, h, BH):
        rows = r0 + tl.arange(0, BH)
        rmask = rows < h
        acc = tl.zeros((BH, BW), ACC)
        for c0 in range(0, w, BW):
            cols = c0 + tl.arange(0, BW)
            cmask = cols < w
            x = tl.load(x_ptr + cols, mask=cmask, other=0.0) / x_den
            tile = tl.load(
                w_ptr + rows[:, None] * ld + cols[None, :],
                mask=rmask[:, None] & cmask[None, :],
                other=0.0,
            ).to(ACC)
            # Reduce once per row tile, not per column tile: one cross-thread sum per BH rows.
            acc += tile * x[None, :]
        t = tl.sum(acc, 1)
        if DOT_U:
            u = tl.load(u_ptr + rows, mask=rmask, other=0.0).to(ACC)
            total += tl.sum(u * t, 0)
        else:
            tl.store(t_ptr + rows, t, mask=rmask)
            total += tl.sum(t * t, 0)
    return total


@triton.jit
def _mtv(
    w_ptr, h, w, ld, y_ptr, y_den, s_ptr,
    ACC: tl.constexpr, BH: tl.constexpr, BW: tl.constexpr,
):  # fmt: skip
    """s = W^T (y / y_den) into s_ptr, column tile by column tile; returns sum s^2."""
    total = tl.zeros((), ACC)
    for c0 in range(0, w, BW):
        cols = c0 + tl.arange(0, BW)
        cmask = cols < w
        acc = tl.zeros((BH, BW), ACC)
        for r0 in range(0, h, BH):
            rows = r0 + tl.arange(0, BH)
            rmask = rows < h
            y = tl.load(y_ptr + rows, mask=rmask, other=0.0) / y_den
            tile = tl.load(
                w_ptr + rows[:, None] * ld + cols[None, :],
                mask=rmask[:, None] & cmask[None, :],
                other=0.0,
            ).to(ACC)
            acc += tile * y[:, None]
        s = tl.sum(acc, 0)
        tl.store(s_ptr + cols, s, mask=cmask)
        total += tl.sum(s * s, 0)
    return total


@triton.jit
def _power_iteration_kernel(
    meta_ptr,  # int64 (count, 6): W, u, v addresses, h, w, ld of each weight
    scratch_ptr,  # ACC (count, max_h + max_w): t = W v at [0, max_h), s = W^T u after it
    sigma_ptr,  # float32 (count,): u . (W v) after the iterations
    n_iter,  # power iterations, >= 0
    eps,  # normalize(x) = x / max(||x||, eps)
    max_h,  # bound on every h: the scratch row's t part
    max_w,  # bound on every w: the scratch row's s part
    DT: tl.constexpr,  # element type of W, u and v
    ACC: tl.constexpr,  # accumulation type: float32 (float64 for float64 weights)
    BH: tl.constexpr,  # rows of W per tile, a power of two
    BW: tl.constexpr,  # columns of W per tile, a power of two
):
    pid = tl.program_id(0).to(tl.int64)  # int64: pid * (max_h + max_w) may pass 2^31
    entry = meta_ptr + pid * 6
    w_ptr = tl.load(entry).to(tl.pointer_type(DT))
    u_ptr = tl.load(entry + 1).to(tl.pointer_type(DT))
    v_ptr = tl.load(entry + 2).to(tl.pointer_type(DT))
    h = tl.load(entry + 3)
    w = tl.load(entry + 4)
    ld = tl.load(entry + 5)
    t_ptr = scratch_ptr + pid * (max_h + max_w)
    s_ptr = t_ptr + max_h
    # The launcher cannot read the table without a host sync, so a row that breaks the bounds
    # is caught here: it would write past its scratch row. It gets sigma = NaN, u and v untouched.
    # W is only read: its rows may overlap (ld < w, even 0 for one row repeated).
    ok = (h >= 0) & (w >= 0) & (h <= max_h) & (w <= max_w) & (ld >= 0)
    if ok:
        # v goes to the scratch first, so every iteration reads its x from one ACC buffer.
        for c0 in range(0, w, BW):
            cols = c0 + tl.arange(0, BW)
            v = tl.load(v_ptr + cols, mask=cols < w, other=0.0).to(ACC)
            tl.store(s_ptr + cols, v, mask=cols < w)
        # Scratch written by some threads is read by others: a CTA barrier orders global memory.
        tl.debug_barrier()
        t_den = tl.full((), 1.0, ACC)
        s_den = tl.full((), 1.0, ACC)
        s_sq = tl.zeros((), ACC)
        for _ in range(n_iter):
            t_sq = _mv(w_ptr, h, w, ld, s_ptr, s_den, t_ptr, u_ptr, False, ACC, BH, BW)
            t_den = _denominator(t_sq, eps)
            tl.debug_barrier()
            s_sq = _mtv(w_ptr, h, w, ld, t_ptr, t_den, s_ptr, ACC, BH, BW)
            s_den = _denominator(s_sq, eps)
            tl.debug_barrier()
        if n_iter > 0:
            for r0 in range(0, h, BH):
                rows = r0 + tl.arange(0, BH)
                t = tl.load(t_ptr + rows, mask=rows < h, other=0.0)
                tl.store(u_ptr + rows, (t / t_den).to(DT), mask=rows < h)
            for c0 in range(0, w, BW):
                cols = c0 + tl.arange(0, BW)
                s = tl.load(s_ptr + cols, mask=cols < w, other=0.0)
                tl.store(v_ptr + cols, (s / s_den).to(DT), mask=cols < w)
            sigma = s_sq / s_den  # = u . (W v), see the module docstring
        else:
            sigma = _mv(w_ptr, h, w, ld, s_ptr, s_den, t_ptr, u_ptr, True, ACC, BH, BW)
        tl.store(sigma_ptr + pid, sigma.to(tl.float32))
    else:
        tl.store(sigma_ptr + pid, float("nan"))


def _tiles(max_h: int, max_w: int) -> tuple[int, int]:
    """(BH, BW): up to 128 columns (512 contiguous bytes of fp32 a row), rows to fill a tile."""
    bw = min(128, max(16, triton.next_power_of_2(max_w)))
    bh = min(_TILE // bw, max(16, triton.next_power_of_2(max_h)))
    return bh, bw


def power_iteration(
    meta: torch.Tensor,
    dtype: torch.dtype,
    n_iter: int,
    eps: float,
    sigma_out: torch.Tensor,
    max_h: int,
    max_w: int,
) -> torch.Tensor:
    """Run the contract's power iteration on every weight of `meta` in one launch.

    meta: int64 (count, 6) on the weights' device, rows (W, u, v addresses, h, w, ld); all
    weights are `dtype`, and every h <= max_h, w <= max_w (a row breaking this gets sigma NaN).
    sigma_out: float32 (count,), written and returned. u and v are updated in place.
    """
    if dtype not in _TL_DTYPES:
        raise TypeError(f"dtype must be float32, float16, bfloat16 or float64, got {dtype}")
    if not isinstance(meta, torch.Tensor) or meta.dtype != torch.int64 or meta.dim() != 2:
        got = f"{meta.dtype} {tuple(meta.shape)}" if isinstance(meta, torch.Tensor) else meta
        raise ValueError(f"meta must be an int64 (count, 6) tensor, got {got}")
    if meta.shape[1] != 6 or not meta.is_contiguous():
        raise ValueError(f"meta must be contiguous (count, 6), got shape {tuple(meta.shape)}")
    count = meta.shape[0]
    check_like("sigma_out", sigma_out, (count,), torch.float32, meta.device)
    for name, v in (("n_iter", n_iter), ("max_h", max_h), ("max_w", max_w)):
        check_count(name, v)
    # eps > 0 keeps normalize(0) = 0 / eps defined: zero weights give zero vectors, not NaN.
    check_positive("eps", eps)
    if count == 0:
        return sigma_out
    acc = torch.float64 if dtype == torch.float64 else torch.float32
    scratch = torch.empty((count, max_h + max_w), dtype=acc, device=meta.device)
    bh, bw = _tiles(max_h, max_w)
    with device_guard(meta):
        _power_iteration_kernel[(count,)](
            meta, scratch, sigma_out, n_iter, float(eps), max_h, max_w,
            DT=_TL_DTYPES[dtype], ACC=_TL_DTYPES[acc], BH=bh, BW=bw, num_warps=4,
        )  # fmt: skip
    return sigma_out
