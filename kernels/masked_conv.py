"""Triton kernels of the region convolution (op `masked_conv`: forward, input gradient, weight
gradient) and their launchers. The semantics are the contract in genfast/ops/masked_conv.py.

Implicit GEMM that visits only the READ taps: with n_taps = rows*kw + cols (kh*kw when
rows == kh), the taps read by every (co, ci) pair are exactly the first n_taps in raster order,
so one runtime loop walks them; the anchor tap (rows, cols) follows as a separate step whose
weight tile is masked per (co, ci) by the colour-group rule. Masked taps cost nothing.

Forward and input gradient share one kernel: out[b, o, pix] = sum_taps sum_c Wv[o, c, tap]
src[b, c, map(pix, tap)] over (BO out channels x BP pixels of one plane) tiles, reducing the
channels c in BC-blocks. Forward: src = x, Wv = w, map = (i*sh - pt + r, j*sw - pl + s).
Input gradient (gather form of the adjoint): src = g, Wv = w with its two channel axes swapped
by strides (no transposed copy), map = ((p + pt - r) / sh, (q + pl - s) / sw) where divisible.
Channels >= 16 on both sides use tl.dot; fewer use a broadcast-and-sum body (a tl.dot tile
needs every dimension >= 16 on the GPU, and padding 1-3 channels to 16 wastes most of it).
The weight gradient is a grid over (co block, ci block, tap, pixel split): each program
reduces its share of the flattened (n, i, j) into an fp32 partial and torch sums the partials
in a fixed order (deterministic, no atomics); unread taps are written 0, the anchor tap's
unread pairs too. fp16/bf16/fp32 in, fp32 accumulation, one rounding at the store.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ._launch import check_like, device_guard

DTYPES = (torch.float32, torch.float16, torch.bfloat16)
MIN_DOT = 16  # tl.dot needs every tile dimension >= 16 on the GPU
_ELEM_TILE = 8192  # elements of a broadcast-and-sum (BO x BC x BP) product
_SPLIT_PROGRAMS = 256  # weight-gradient programs to aim for (about 2 per SM), via pixel splits
_INT32_MAX = 2**31 - 1


# ----------------------------------------------------------------------------- device helpers


@triton.jit
def _mm(a, b, acc, DOT: tl.constexpr, PREC: tl.constexpr):
    """acc + a @ b for a (M, K), b (K, N), fp32 accumulation."""
    if DOT:
        acc = tl.dot(a, b, acc, input_precision=PREC)
    else:
        acc += tl.sum(a.to(tl.float32)[:, :, None] * b.to(tl.float32)[None, :, :], 1)
    return acc


@triton.jit
def _mm_t(a, b, acc, DOT: tl.constexpr, PREC: tl.constexpr):
    """acc + a @ b^T for a (M, K), b (N, K), fp32 accumulation."""
    if DOT:
        acc = tl.dot(a, tl.trans(b), acc, input_precision=PREC)
    else:
        acc += tl.sum(a.to(tl.float32)[:, None, :] * b.to(tl.float32)[None, :, :], 2)
    return acc


@triton.jit
def _pair_reads_anchor(co, ci, Cout, Cin, G, CENTER: tl.constexpr):
    """Whether pair (co, ci) reads the anchor tap: grp(ci) < grp(co) (1) or <= (2), with
    grp(c, C) = c * G // C (in int64: c * G may pass 2^31 for wide layers)."""
    go = (co.to(tl.int64) * G) // Cout
    gi = (ci.to(tl.int64) * G) // Cin
    if CENTER == 1:
        m = gi < go
    else:
        m = gi <= go
    return m


@triton.jit
def _tap(acc, src_b, w_tap, o, omask, oi, oj, pmask, r, s, n_out, n_red, Hs, Ws, sh, sw, pt,
         pl, G, s_wo, s_wc, TRANSPOSED: tl.constexpr, CENTER: tl.constexpr, DOT: tl.constexpr,
         PREC: tl.constexpr, BC: tl.constexpr):
    """acc += sum_c Wv[o, c] src[c, map(pix)] for the tap (r, s) whose weights start at w_tap;
    CENTER != 0 masks the weight tile by the colour-group rule (the anchor tap)."""
    if TRANSPOSED:
        # Output (i, j) reads input (i*sh - pt + r, ...): input (p, q) gets it back from
        # i = (p + pt - r) / sh when that divides exactly and lands in the output plane.
        ni = oi + pt - r
        nj = oj + pl - s
        si = ni // sh
        sj = nj // sw
        valid = (pmask & (ni >= 0) & (nj >= 0) & (ni % sh == 0) & (nj % sw == 0) & (si < Hs)
                 & (sj < Ws))
    else:
        si = oi * sh - pt + r
        sj = oj * sw - pl + s
        valid = pmask & (si >= 0) & (si < Hs) & (sj >= 0) & (sj < Ws)
    sp = (si * Ws + sj)[None, :]
    plane = Hs * Ws
    for c0 in range(0, n_red, BC):
        c = c0 + tl.arange(0, BC)
        cmask = c < n_red
        wm = omask[:, None] & cmask[None, :]
        if CENTER != 0:
            if TRANSPOSED:
                wm &= _pair_reads_anchor(c[None, :], o[:, None], n_red, n_out, G, CENTER)
            else:
                wm &= _pair_reads_anchor(o[:, None], c[None, :], n_out, n_red, G, CENTER)
        wt = tl.load(w_tap + o[:, None] * s_wo + c[None, :] * s_wc, mask=wm, other=0.0)
        xt = tl.load(src_b + c[:, None] * plane + sp, mask=cmask[:, None] & valid[None, :],
                     other=0.0)
        acc = _mm(wt, xt, acc, DOT, PREC)
    return acc


# ----------------------------------------------------------------------------- kernels


@triton.jit
def _conv_kernel(
    src_ptr,  # (B, n_red, Hs, Ws): x (fwd) or the output gradient g (input gradient)
    w_ptr,  # (Cout, Cin, kh, kw), read through s_wo / s_wc
    b_ptr,  # (n_out,) bias, read when HAS_B
    out_ptr,  # (B, n_out, Ho, Wo): y (fwd) or dx (input gradient)
    n_out, n_red,  # channels of out and of src
    Hs, Ws, Ho, Wo,  # planes of src and out
    kw, n_taps,  # taps read by every pair: the first n_taps in raster order
    ar, ac,  # the anchor tap (row, column), used when CENTER != 0
    sh, sw, pt, pl, G,
    s_wo, s_wc,  # weight strides of an out channel and of a reduced channel
    n_ptiles, n_otiles,  # pixel tiles of an out plane, out-channel tiles
    TRANSPOSED: tl.constexpr,  # False: forward; True: the input gradient's gather
    CENTER: tl.constexpr,  # 0: no anchor tap; 1 / 2: the anchor tap's group rule
    HAS_B: tl.constexpr,
    ACCUM: tl.constexpr,  # out += instead of out =
    DOT: tl.constexpr,
    PREC: tl.constexpr,  # tl.dot input precision: "ieee" for fp32 (no tf32 rounding)
    BO: tl.constexpr,  # out channels per tile
    BC: tl.constexpr,  # reduced channels per step
    BP: tl.constexpr,  # pixels per tile
):
    # Programs of the same (b, pixel tile) are adjacent, so their shared src tile stays in L2.
    pid = tl.program_id(0).to(tl.int64)
    per_b = n_ptiles * n_otiles
    b = pid // per_b
    rest = (pid % per_b).to(tl.int32)
    o = (rest % n_otiles) * BO + tl.arange(0, BO)
    p = (rest // n_otiles) * BP + tl.arange(0, BP)
    omask = o < n_out
    pmask = p < Ho * Wo
    oi = p // Wo
    oj = p % Wo
    src_b = src_ptr + b * n_red * Hs * Ws
    acc = tl.zeros((BO, BP), tl.float32)
    for t in range(n_taps):
        r = t // kw
        s = t % kw
        acc = _tap(acc, src_b, w_ptr + t, o, omask, oi, oj, pmask, r, s, n_out, n_red, Hs, Ws,
                   sh, sw, pt, pl, G, s_wo, s_wc, TRANSPOSED, 0, DOT, PREC, BC)
    if CENTER != 0:
        acc = _tap(acc, src_b, w_ptr + ar * kw + ac, o, omask, oi, oj, pmask, ar, ac, n_out,
                   n_red, Hs, Ws, sh, sw, pt, pl, G, s_wo, s_wc, TRANSPOSED, CENTER, DOT, PREC,
                   BC)
    if HAS_B:
        acc += tl.load(b_ptr + o, mask=omask, other=0.0).to(tl.float32)[:, None]
    out = out_ptr + b * n_out * Ho * Wo + o[:, None] * (Ho * Wo) + p[None, :]
    m = omask[:, None] & pmask[None, :]
    if ACCUM:
        acc += tl.load(out, mask=m, other=0.0).to(tl.float32)
    tl.store(out, acc.to(out_ptr.dtype.element_ty), mask=m)


@triton.jit
def _wgrad_kernel(
    g_ptr,  # (B, Cout, Ho, Wo) output gradient
    x_ptr,  # (B, Cin, H, W) input
    ws_ptr,  # (n_split, Cout, Cin, kh, kw) fp32 partials
    Cout, Cin, H, W, Ho, Wo, kh, kw,
    n_taps, anchor,  # taps read by every pair; the anchor tap's index (CENTER != 0)
    sh, sw, pt, pl, G,
    total,  # B * Ho * Wo: the flattened (n, i, j) reduced over
    p_split,  # flattened pixels per split, a multiple of BP
    n_otiles, n_itiles,
    CENTER: tl.constexpr,
    DOT: tl.constexpr,
    PREC: tl.constexpr,
    BO: tl.constexpr,  # output channels per tile
    BI: tl.constexpr,  # input channels per tile
    BP: tl.constexpr,  # pixels per step
):
    pid = tl.program_id(0)
    split = tl.program_id(1).to(tl.int64)
    ntap = kh * kw
    tap = pid % ntap
    rest = pid // ntap
    co = (rest // n_itiles) * BO + tl.arange(0, BO)
    ci = (rest % n_itiles) * BI + tl.arange(0, BI)
    omask = co < Cout
    imask = ci < Cin
    r = tap // kw
    s = tap % kw
    lo = split * p_split
    hi = tl.minimum(lo + p_split, total)
    read = tap < n_taps
    if CENTER != 0:
        read = read | (tap == anchor)
    # An unread tap reduces nothing and stores zeros.
    hi = tl.where(read, hi, lo)
    plane_o = Ho * Wo
    acc = tl.zeros((BO, BI), tl.float32)
    for q0 in range(lo, hi, BP):
        q = q0 + tl.arange(0, BP)
        qmask = q < hi
        n = q // plane_o
        rem = (q % plane_o).to(tl.int32)
        i = rem // Wo
        j = rem % Wo
        ih = i * sh - pt + r
        iw = j * sw - pl + s
        valid = qmask & (ih >= 0) & (ih < H) & (iw >= 0) & (iw < W)
        gt = tl.load(g_ptr + (n * Cout * plane_o + rem)[None, :] + co[:, None] * plane_o,
                     mask=omask[:, None] & qmask[None, :], other=0.0)
        xt = tl.load(x_ptr + (n * Cin * H * W + ih * W + iw)[None, :] + ci[:, None] * (H * W),
                     mask=imask[:, None] & valid[None, :], other=0.0)
        acc = _mm_t(gt, xt, acc, DOT, PREC)
    if CENTER != 0:
        keep = _pair_reads_anchor(co[:, None], ci[None, :], Cout, Cin, G, CENTER)
        acc = tl.where(keep | (tap != anchor), acc, 0.0)
    dst = ws_ptr + split * Cout * Cin * ntap + (co[:, None] * Cin + ci[None, :]) * ntap + tap
    tl.store(dst, acc, mask=omask[:, None] & imask[None, :])


# ----------------------------------------------------------------------------- launchers


def _prec(dtype: torch.dtype) -> str:
    return "ieee" if dtype == torch.float32 else "tf32"


def _pow2(n: int, lo: int, hi: int) -> int:
    return min(hi, max(lo, triton.next_power_of_2(max(n, 1))))


def _warps(elems: int) -> int:
    return 8 if elems >= 8192 else 4 if elems >= 2048 else 2 if elems >= 512 else 1


def _taps(region, kh: int, kw: int) -> tuple[int, int, int, int]:
    """(n_taps, anchor row, anchor column, CENTER): the taps every pair reads are the first
    n_taps in raster order; CENTER is 0 when the region has no anchor tap."""
    if region.rows >= kh:
        return kh * kw, 0, 0, 0
    has_anchor = region.cols < kw and region.center != 0
    return (region.rows * kw + region.cols, region.rows, region.cols,
            region.center if has_anchor else 0)


def _check_region(region, kh: int, kw: int, Cin: int, Cout: int) -> None:
    try:
        sh, sw, pt, pl, rows, cols, center, groups = (int(v) for v in region)
    except (TypeError, ValueError):
        raise TypeError(f"region must be a Region of 8 ints, got {region!r}") from None
    if (sh < 1 or sw < 1 or pt < 0 or pl < 0 or not 0 <= rows <= kh or not 0 <= cols <= kw
            or center not in (0, 1, 2) or groups < 1):
        raise ValueError(f"region must have strides >= 1, paddings >= 0, 0 <= rows <= kh={kh}, "
                         f"0 <= cols <= kw={kw}, center in (0, 1, 2) and groups >= 1, got "
                         f"{region!r}")
    if max(Cout * Cin * kh * kw, max(pt, pl) * max(sh, sw)) > _INT32_MAX:
        raise ValueError(f"region / weight too large for int32 indexing: {region!r}")


def _check_4d(name: str, t: object, dtype: torch.dtype | None = None) -> torch.Tensor:
    if not isinstance(t, torch.Tensor) or t.dim() != 4 or t.dtype not in DTYPES:
        got = (f"{t.dtype} {tuple(t.shape)}" if isinstance(t, torch.Tensor)
               else type(t).__name__)
        raise ValueError(f"{name} must be a 4-D float32/float16/bfloat16 tensor, got {got}")
    if dtype is not None and t.dtype != dtype:
        raise ValueError(f"{name} must be {dtype}, got {t.dtype}")
    if not t.is_contiguous():
        raise ValueError(f"{name} must be contiguous")
    if t.shape[1] * t.shape[2] * t.shape[3] > _INT32_MAX:
        raise ValueError(f"{name}: one image plane set {tuple(t.shape[1:])} must have fewer "
                         f"than 2^31 elements")
    return t


def _conv(src, w, bias, out, region, transposed: bool, accumulate: bool, block):
    """Launch _conv_kernel for out = conv(src) (fwd) or its adjoint (transposed); block =
    (out channels, reduced channels, pixels) forces the tile (tests walk multi-tile paths)."""
    B, n_out, Ho, Wo = out.shape
    n_red, Hs, Ws = src.shape[1:]
    Cout, Cin, kh, kw = w.shape
    if not out.numel():
        return out
    n_taps, ar, ac, center = _taps(region, kh, kw)
    # Wv[o, c] = w[o, c] forward, w[c, o] for the input gradient: strides swap, no copy.
    s_wo, s_wc = (kh * kw, Cin * kh * kw) if transposed else (Cin * kh * kw, kh * kw)
    dot = n_out >= MIN_DOT and n_red >= MIN_DOT
    if dot:
        bo = _pow2(n_out, MIN_DOT, 64)
        bc = _pow2(n_red, MIN_DOT, 32)
        bp = _pow2(Ho * Wo, MIN_DOT, 64 if src.element_size() == 4 else 128)
    else:
        bo = _pow2(n_out, 1, 16)
        bc = _pow2(n_red, 1, 8)
        bp = _pow2(Ho * Wo, 16, max(16, min(512, _ELEM_TILE // (bo * bc))))
    if block is not None:
        bo, bc, bp = block
        least = MIN_DOT if dot else 1
        if min(bo, bc, bp) < least or any(v & (v - 1) for v in block):
            raise ValueError(f"block must be powers of two >= {least}, got {block}")
    n_pt, n_ot = triton.cdiv(Ho * Wo, bp), triton.cdiv(n_out, bo)
    with device_guard(src):
        _conv_kernel[(B * n_pt * n_ot,)](
            src, w, bias if bias is not None else w, out, n_out, n_red, Hs, Ws, Ho, Wo, kw,
            n_taps, ar, ac, region.sh, region.sw, region.pt, region.pl, region.groups,
            s_wo, s_wc, n_pt, n_ot, TRANSPOSED=transposed, CENTER=center,
            HAS_B=bias is not None, ACCUM=accumulate, DOT=dot, PREC=_prec(src.dtype), BO=bo,
            BC=bc, BP=bp, num_warps=4 if dot else _warps(bo * bp),
        )
    return out


def fwd(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None, y: torch.Tensor, region,
        accumulate: bool = False, *, block: tuple[int, int, int] | None = None) -> torch.Tensor:
    """y (B, Cout, Ho, Wo) = (accumulate ? y : 0) + region_conv(x, w) + b, in place; returns y.
    The output size is y's."""
    _check_4d("x", x)
    _check_4d("w", w, x.dtype)
    B, Cin, H, W = x.shape
    Cout, _, kh, kw = w.shape
    check_like("w", w, (Cout, Cin, kh, kw), x.dtype, x.device)
    _check_region(region, kh, kw, Cin, Cout)
    if b is not None:
        check_like("b", b, (Cout,), x.dtype, x.device)
    _check_4d("y", y, x.dtype)
    check_like("y", y, (B, Cout, y.shape[2], y.shape[3]), x.dtype, x.device)
    return _conv(x, w, b, y, region, False, bool(accumulate), block)


def bwd_input(g: torch.Tensor, w: torch.Tensor, dx: torch.Tensor, region, *,
              block: tuple[int, int, int] | None = None) -> torch.Tensor:
    """dx (B, Cin, H, W) = the adjoint of fwd in x applied to g (B, Cout, Ho, Wo), no bias;
    the input size is dx's."""
    _check_4d("g", g)
    _check_4d("w", w, g.dtype)
    B, Cout, Ho, Wo = g.shape
    _, Cin, kh, kw = w.shape
    check_like("w", w, (Cout, Cin, kh, kw), g.dtype, g.device)
    _check_region(region, kh, kw, Cin, Cout)
    _check_4d("dx", dx, g.dtype)
    check_like("dx", dx, (B, Cin, dx.shape[2], dx.shape[3]), g.dtype, g.device)
    return _conv(g, w, None, dx, region, True, False, block)


def bwd_weight(g: torch.Tensor, x: torch.Tensor, dw: torch.Tensor, region, *,
               block: tuple[int, int, int] | None = None,
               p_split: int | None = None) -> torch.Tensor:
    """dw[co, ci, r, s] = sum_{n,i,j} g[n,co,i,j] x[n, ci, i*sh-pt+r, j*sw-pl+s] on read taps,
    exactly 0 elsewhere, into dw (Cout, Cin, kh, kw); deterministic. `block` = (output
    channels, input channels, pixels) and `p_split` (flattened pixels per partial, a multiple
    of the pixel block) force the tiling (tests)."""
    _check_4d("g", g)
    _check_4d("x", x, g.dtype)
    B, Cout, Ho, Wo = g.shape
    _, Cin, H, W = x.shape
    check_like("x", x, (B, Cin, H, W), g.dtype, g.device)
    _check_4d("dw", dw, g.dtype)
    kh, kw = dw.shape[2:]
    check_like("dw", dw, (Cout, Cin, kh, kw), g.dtype, g.device)
    _check_region(region, kh, kw, Cin, Cout)
    total = B * Ho * Wo
    if not total or not dw.numel():
        return dw.zero_()
    n_taps, ar, ac, center = _taps(region, kh, kw)
    dot = Cout >= MIN_DOT and Cin >= MIN_DOT
    if dot:
        bo, bi = _pow2(Cout, MIN_DOT, 64), _pow2(Cin, MIN_DOT, 64)
        bp = _pow2(total, MIN_DOT, 64)
    else:
        bo, bi = _pow2(Cout, 1, 16), _pow2(Cin, 1, 16)
        bp = _pow2(total, 16, max(16, min(256, _ELEM_TILE // (bo * bi))))
    if block is not None:
        bo, bi, bp = block
        least = MIN_DOT if dot else 1
        if min(bo, bi, bp) < least or any(v & (v - 1) for v in block):
            raise ValueError(f"block must be powers of two >= {least}, got {block}")
    n_ot, n_it = triton.cdiv(Cout, bo), triton.cdiv(Cin, bi)
    if p_split is None:
        read = n_taps + (center != 0)
        n = max(1, min(triton.cdiv(total, bp),
                       triton.cdiv(_SPLIT_PROGRAMS, max(1, n_ot * n_it * read))))
        p_split = triton.cdiv(triton.cdiv(total, n), bp) * bp
    elif p_split < 1 or p_split % bp:
        raise ValueError(f"p_split must be a positive multiple of the pixel block {bp}, "
                         f"got {p_split}")
    n_split = triton.cdiv(total, p_split)
    ws = torch.empty((n_split, Cout, Cin, kh, kw), dtype=torch.float32, device=x.device)
    with device_guard(x):
        _wgrad_kernel[(n_ot * n_it * kh * kw, n_split)](
            g, x, ws, Cout, Cin, H, W, Ho, Wo, kh, kw, n_taps, ar * kw + ac, region.sh,
            region.sw, region.pt, region.pl, region.groups, total, p_split, n_ot, n_it,
            CENTER=center, DOT=dot, PREC=_prec(x.dtype), BO=bo, BI=bi, BP=bp,
            num_warps=4 if dot else _warps(bo * bi * bp // 8),
        )
    # torch reduces the partials in a fixed order: the same bits every run.
    return dw.copy_(ws.sum(0) if n_split > 1 else ws[0])
