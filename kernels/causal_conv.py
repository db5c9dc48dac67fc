"""Triton kernels of causal dilated conv1d (forward, both backwards) and their launchers; the
decode-time update is kernels/causal_conv_update.py (`update` here forwards to it).

The semantics are the contract in genfast/ops/causal_conv.py: x~ = [h | x] along time, P =
(K-1)*dilation, y[b,co,t] = act(bias[co] + sum_k sum_ci W[co,ci,k] x~[b, g*Cg+ci, t + k*d]).

Forward and input gradient are one kernel: out[b,o,t] = sum_k sum_i Wv[o,i,k] src[b, grp*n + i,
t + base + k*step], where Wv is W (fwd: base -P, step +d) or a strided view of W^T (dgrad:
base 0 or P, step -d), and src reads past its time range come from h or are 0. So dgrad costs
no transposed copy of W and no padded copy of the gradient. Two bodies share that formula:
* groups with >= 16 input and output channels: (BM out channels x BT times) tiles built with
  tl.dot(W_k[BM, BK], X[BK, BT]) over taps and input-channel blocks; a tile never crosses a group.
* depthwise and small groups (Mamba's (B, 768..4096, T), K=4): (BC channels x BT times) tiles of
  elementwise FMAs, no tl.dot. Memory-bound: each x element is read once from DRAM, its K
  shifted re-reads hit L1/L2.
Weight gradients are reductions over (b, t): each program writes an fp32 partial for its time
split, and torch sums the partials in their fixed order (deterministic: no atomics).
fp16/bf16/fp32 in, fp32 accumulation, one rounding at the store.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ._launch import check_like, device_guard

DTYPES = (torch.float32, torch.float16, torch.bfloat16)
ACTS = {0: "none", 1: "silu", 2: "relu", 3: "tanh"}
MIN_DOT = 16  # tl.dot needs every tile dimension >= 16 on the GPU
_ELEM_TILE = 4096  # elements of an elementwise tile: 32 fp32 values a thread at 4 warps
_SPLIT_PROGRAMS = 256  # weight-gradient programs to aim for (about 2 per SM), via time splits


# ----------------------------------------------------------------------------- device helpers


@triton.jit
def activate(u, ACT: tl.constexpr):
    """act(u) on fp32 u: 0 none, 1 silu, 2 relu, 3 tanh."""
    if ACT == 1:
        u = u * tl.sigmoid(u)
    elif ACT == 2:
        u = tl.maximum(u, 0.0)
    elif ACT == 3:
        # 2 sigmoid(2u) - 1: saturates to +-1 for large |u| instead of inf / inf.
        u = 2.0 * tl.sigmoid(2.0 * u) - 1.0
    return u


@triton.jit
def load_src(src_row, h_row, idx, t_src, P, rmask, HAS_H: tl.constexpr):
    """src[idx] for idx in [0, t_src), h[idx + P] for idx in [-P, 0) when HAS_H, else 0; fp32.
    src_row / h_row: pointers of shape (R, 1) to the rows, idx: (1, N) or (R, N) times."""
    v = tl.load(src_row + idx, mask=rmask & (idx >= 0) & (idx < t_src), other=0.0)
    if HAS_H:
        # The halo: a second masked load, merged by where (the masks are disjoint).
        hv = tl.load(h_row + (idx + P), mask=rmask & (idx < 0) & (idx >= -P), other=0.0)
        v = tl.where(idx < 0, hv, v)
    return v


@triton.jit
def _dot(a, b, acc, PREC: tl.constexpr):
    return tl.dot(a, b, acc, input_precision=PREC)


# ----------------------------------------------------------------------------- conv kernels


@triton.jit
def _conv_dot_kernel(
    src_ptr,  # (B, groups*n_in, t_src) x (fwd) or the gradient g (dgrad), contiguous
    h_ptr,  # (B, groups*n_in, P) history, read for negative times when HAS_H
    w_ptr,  # the weight, read through the strides below
    b_ptr,  # (groups*Og,) bias, read when HAS_B
    out_ptr,  # (B, groups*Og, t_out) output, contiguous
    t_src,  # time length of src
    t_out,  # time length of out
    P,  # (K-1)*dilation: h's length
    base,  # src time of out time 0, tap 0
    step,  # src time offset between taps (+d fwd, -d dgrad)
    n_in,  # input channels per group
    Og,  # output channels per group
    groups,  # number of groups
    s_wg, s_wo, s_wi,  # weight strides per group, output channel, input channel (tap: 1)
    n_ttiles,  # time tiles of out
    n_otiles,  # output-channel tiles per group
    K: tl.constexpr,  # taps
    HAS_H: tl.constexpr,
    HAS_B: tl.constexpr,
    ACT: tl.constexpr,
    PREC: tl.constexpr,  # tl.dot input precision: "ieee" for fp32 (no tf32 rounding)
    BM: tl.constexpr,  # output channels per tile, >= 16
    BK: tl.constexpr,  # input channels per dot, >= 16
    BT: tl.constexpr,  # times per tile, >= 16
):
    # Programs of the same (b, time tile) are adjacent, so their shared src tile stays in L2.
    pid = tl.program_id(0).to(tl.int64)
    per_t = groups * n_otiles
    bt = pid // per_t
    b = bt // n_ttiles
    t0 = (bt % n_ttiles) * BT
    grp = (pid % per_t) // n_otiles
    ol = (pid % n_otiles) * BM + tl.arange(0, BM)
    omask = ol < Og
    t = t0 + tl.arange(0, BT)
    c_src = groups * n_in
    src_b = src_ptr + b * c_src * t_src
    h_b = h_ptr + b * c_src * P
    w_g = w_ptr + grp * s_wg + ol[:, None] * s_wo
    acc = tl.zeros((BM, BT), tl.float32)
    for k in tl.static_range(K):
        idx = (t + base + k * step)[None, :]
        for i0 in range(0, n_in, BK):
            i = i0 + tl.arange(0, BK)
            imask = i < n_in
            wk = tl.load(w_g + i[None, :] * s_wi + k, mask=omask[:, None] & imask[None, :],
                         other=0.0)
            ch = (grp * n_in + i)[:, None]
            xk = load_src(src_b + ch * t_src, h_b + ch * P, idx, t_src, P, imask[:, None],
                          HAS_H)
            acc = _dot(wk, xk, acc, PREC)
    if HAS_B:
        acc += tl.load(b_ptr + grp * Og + ol, mask=omask, other=0.0).to(tl.float32)[:, None]
    acc = activate(acc, ACT)
    o = grp * Og + ol
    out = out_ptr + b * (groups * Og) * t_out + o[:, None] * t_out + t[None, :]
    tl.store(out, acc.to(out_ptr.dtype.element_ty), mask=omask[:, None] & (t < t_out)[None, :])


@triton.jit
def _conv_elem_kernel(
    src_ptr, h_ptr, w_ptr, b_ptr, out_ptr,  # as _conv_dot_kernel
    t_src, t_out, P, base, step,
    n_in,  # input channels per group
    Og,  # output channels per group
    n_out,  # output channels, groups*Og
    s_wg, s_wo, s_wi,  # weight strides per group, output channel, input channel (tap: 1)
    n_ttiles,  # time tiles of out
    n_ctiles,  # output-channel tiles
    K: tl.constexpr,
    HAS_H: tl.constexpr,
    HAS_B: tl.constexpr,
    ACT: tl.constexpr,
    BC: tl.constexpr,  # output channels per tile
    BT: tl.constexpr,  # times per tile
):
    pid = tl.program_id(0).to(tl.int64)
    bt = pid // n_ctiles
    b = bt // n_ttiles
    t0 = (bt % n_ttiles) * BT
    o = (pid % n_ctiles) * BC + tl.arange(0, BC)
    omask = o < n_out
    grp = o // Og
    t = t0 + tl.arange(0, BT)
    c_src = (n_out // Og) * n_in
    src_b = src_ptr + b * c_src * t_src
    h_b = h_ptr + b * c_src * P
    w_o = w_ptr + grp * s_wg + (o % Og) * s_wo
    acc = tl.zeros((BC, BT), tl.float32)
    for i in range(n_in):
        ch = (grp * n_in + i)[:, None]
        src_rows = src_b + ch * t_src
        h_rows = h_b + ch * P
        for k in tl.static_range(K):
            wk = tl.load(w_o + i * s_wi + k, mask=omask, other=0.0).to(tl.float32)
            xk = load_src(src_rows, h_rows, (t + base + k * step)[None, :], t_src, P,
                          omask[:, None], HAS_H)
            acc += wk[:, None] * xk.to(tl.float32)
    if HAS_B:
        acc += tl.load(b_ptr + o, mask=omask, other=0.0).to(tl.float32)[:, None]
    acc = activate(acc, ACT)
    out = out_ptr + b * n_out * t_out + o[:, None] * t_out + t[None, :]
    tl.store(out, acc.to(out_ptr.dtype.element_ty), mask=omask[:, None] & (t < t_out)[None, :])


# ----------------------------------------------------------------------------- weight gradient


@triton.jit
def _wgrad_dot_kernel(
    g_ptr,  # (B, Cout, T) output gradient
    x_ptr,  # (B, Cin, T) input
    h_ptr,  # (B, Cin, P) history, when HAS_H
    ws_ptr,  # (n_split, Cout, Cg, K) fp32 partials
    Bsz, T, P, dil,
    Cg,  # input channels per group
    Og,  # output channels per group
    groups,
    n_otiles,  # output-channel tiles per group
    n_itiles,  # input-channel tiles per group
    t_split,  # times per split, a multiple of BT
    K: tl.constexpr,
    HAS_H: tl.constexpr,
    PREC: tl.constexpr,
    BM: tl.constexpr,  # output channels per tile
    BN: tl.constexpr,  # input channels per tile
    BT: tl.constexpr,  # times per dot
):
    pid = tl.program_id(0).to(tl.int64)
    split = tl.program_id(1).to(tl.int64)
    k = pid % K
    rest = pid // K
    it = rest % n_itiles
    rest = rest // n_itiles
    grp = rest // n_otiles
    ol = (rest % n_otiles) * BM + tl.arange(0, BM)
    il = it * BN + tl.arange(0, BN)
    omask = ol < Og
    imask = il < Cg
    cout = groups * Og
    cin = groups * Cg
    acc = tl.zeros((BM, BN), tl.float32)
    t_end = tl.minimum(split * t_split + t_split, T)
    for bi in range(Bsz):
        b = split * 0 + bi  # int64 (row offsets may pass 2^31)
        g_rows = g_ptr + b * cout * T + (grp * Og + ol)[:, None] * T
        ch = (grp * Cg + il)[:, None]
        x_rows = x_ptr + b * cin * T + ch * T
        h_rows = h_ptr + b * cin * P + ch * P
        for t0 in range(split * t_split, t_end, BT):
            t = (t0 + tl.arange(0, BT))[None, :]
            gt = tl.load(g_rows + t, mask=omask[:, None] & (t < t_end), other=0.0)
            xt = load_src(x_rows, h_rows, t + k * dil - P, T, P, imask[:, None] & (t < t_end),
                          HAS_H)
            acc = _dot(gt, tl.trans(xt), acc, PREC)
    dst = ws_ptr + split * cout * Cg * K + ((grp * Og + ol)[:, None] * Cg + il[None, :]) * K + k
    tl.store(dst, acc, mask=omask[:, None] & imask[None, :])


@triton.jit
def _wgrad_elem_kernel(
    g_ptr, x_ptr, h_ptr, ws_ptr,  # as _wgrad_dot_kernel
    Bsz, T, P, dil,
    Cg,  # input channels per group
    Og,  # output channels per group
    n_rows,  # Cout * Cg: one row per weight (co, ci), each with K taps
    t_split,  # times per split, a multiple of BT
    K: tl.constexpr,
    HAS_H: tl.constexpr,
    BR: tl.constexpr,  # weight rows per tile
    BT: tl.constexpr,  # times per tile
):
    pid = tl.program_id(0).to(tl.int64)
    split = tl.program_id(1).to(tl.int64)
    k = pid % K
    r = (pid // K) * BR + tl.arange(0, BR)
    rmask = r < n_rows
    co = r // Cg
    ch = (co // Og) * Cg + r % Cg
    cout = n_rows // Cg
    cin = (cout // Og) * Cg
    acc = tl.zeros((BR, BT), tl.float32)
    t_end = tl.minimum(split * t_split + t_split, T)
    for bi in range(Bsz):
        b = split * 0 + bi  # int64 (row offsets may pass 2^31)
        g_rows = g_ptr + b * cout * T + co[:, None] * T
        x_rows = x_ptr + b * cin * T + ch[:, None] * T
        h_rows = h_ptr + b * cin * P + ch[:, None] * P
        for t0 in range(split * t_split, t_end, BT):
            t = (t0 + tl.arange(0, BT))[None, :]
            m = rmask[:, None] & (t < t_end)
            gt = tl.load(g_rows + t, mask=m, other=0.0).to(tl.float32)
            xt = load_src(x_rows, h_rows, t + k * dil - P, T, P, m, HAS_H).to(tl.float32)
            acc += gt * xt
    tl.store(ws_ptr + split * n_rows * K + r * K + k, tl.sum(acc, 1), mask=rmask)


# ----------------------------------------------------------------------------- launchers


def _prec(dtype: torch.dtype) -> str:
    return "ieee" if dtype == torch.float32 else "tf32"


def _warps(elems: int) -> int:
    return 8 if elems >= 8192 else 4 if elems >= 2048 else 2 if elems >= 512 else 1


def _pow2(n: int, lo: int, hi: int) -> int:
    return min(hi, max(lo, triton.next_power_of_2(max(n, 1))))


def _check_conv(x: torch.Tensor, w: torch.Tensor, groups: int, dilation: int) -> None:
    if not isinstance(x, torch.Tensor) or x.dim() != 3 or x.dtype not in DTYPES:
        got = (f"{x.dtype} {tuple(x.shape)}" if isinstance(x, torch.Tensor)
               else type(x).__name__)
        raise ValueError(f"x must be a 3-D float32/float16/bfloat16 tensor, got {got}")
    if not x.is_contiguous():
        raise ValueError("x must be contiguous")
    if dilation < 1 or groups < 1:
        raise ValueError(f"dilation and groups must be >= 1, got {dilation}, {groups}")
    if w.dim() != 3 or w.shape[0] % groups or w.shape[2] < 1:
        raise ValueError(f"w must be (Cout, Cin/groups, K) with groups={groups} dividing Cout, "
                         f"got {tuple(w.shape)}")
    check_like("w", w, tuple(w.shape), x.dtype, x.device)


def _conv(src, h, w, bias, out, base, step, n_in, Og, groups, strides, P, act, block):
    """Launch the conv body for out[b, o, t] (see the module docstring); block = (rows, times)
    forces the tile (tests walk multi-tile paths with it)."""
    B, n_out, t_out = out.shape
    K = w.shape[2]
    s_wg, s_wo, s_wi = strides
    if not out.numel():
        return out
    hp = h if h is not None else src
    bp = bias if bias is not None else w
    meta = dict(K=K, HAS_H=h is not None, HAS_B=bias is not None, ACT=act)
    with device_guard(src):
        if n_in >= MIN_DOT and Og >= MIN_DOT:
            bm = block[0] if block else _pow2(Og, MIN_DOT, 64)
            bt = block[1] if block else _pow2(t_out, MIN_DOT, 64 if src.element_size() == 4
                                              else 128)
            bk = _pow2(n_in, MIN_DOT, 32)
            n_tt, n_ot = triton.cdiv(t_out, bt), triton.cdiv(Og, bm)
            _conv_dot_kernel[(B * n_tt * groups * n_ot,)](
                src, hp, w, bp, out, src.shape[2], t_out, P, base, step, n_in, Og, groups,
                s_wg, s_wo, s_wi, n_tt, n_ot, PREC=_prec(src.dtype), BM=bm, BK=bk, BT=bt,
                num_warps=4, **meta,
            )
        else:
            bt = block[1] if block else _pow2(t_out, 16, 512)
            bc = block[0] if block else _pow2(n_out, 1, max(1, _ELEM_TILE // bt))
            n_tt, n_ct = triton.cdiv(t_out, bt), triton.cdiv(n_out, bc)
            _conv_elem_kernel[(B * n_tt * n_ct,)](
                src, hp, w, bp, out, src.shape[2], t_out, P, base, step, n_in, Og, n_out,
                s_wg, s_wo, s_wi, n_tt, n_ct, BC=bc, BT=bt, num_warps=_warps(bc * bt), **meta,
            )
    return out


def fwd(x: torch.Tensor, h: torch.Tensor | None, w: torch.Tensor, b: torch.Tensor | None,
        y: torch.Tensor, dilation: int, groups: int, act: int, *,
        block: tuple[int, int] | None = None) -> torch.Tensor:
    """y = act(conv(x~ = [h | x], w) + b) into y (B, Cout, T), x's dtype."""
    _check_conv(x, w, groups, dilation)
    B, cin, T = x.shape
    cout, cg, K = w.shape
    if cg * groups != cin:
        raise ValueError(f"w: expected (Cout, Cin/groups={cin // groups}, K), got "
                         f"{tuple(w.shape)}")
    if act not in ACTS:
        raise ValueError(f"act must be one of {ACTS} (code: name), got {act}")
    P = (K - 1) * dilation
    if h is not None:
        check_like("h", h, (B, cin, P), x.dtype, x.device)
    if b is not None:
        check_like("b", b, (cout,), x.dtype, x.device)
    check_like("y", y, (B, cout, T), x.dtype, x.device)
    og = cout // groups
    return _conv(x, h if P else None, w, b, y, -P, dilation, cg, og, groups,
                 (og * cg * K, cg * K, K), P, act, block)


def bwd_input(g: torch.Tensor, w: torch.Tensor, dx: torch.Tensor, dilation: int, groups: int,
              with_state: bool, *, block: tuple[int, int] | None = None) -> torch.Tensor:
    """dx~ = the adjoint of fwd's x~ (no bias, no act) into dx: (B, Cin, P+T) with_state, else
    its last T columns (B, Cin, T)."""
    _check_conv(g, w, groups, dilation)
    B, cout, T = g.shape
    if w.shape[0] != cout:
        raise ValueError(f"w must have Cout={cout} rows, got {tuple(w.shape)}")
    _, cg, K = w.shape
    P = (K - 1) * dilation
    cin = cg * groups
    check_like("dx", dx, (B, cin, P + T if with_state else T), g.dtype, g.device)
    og = cout // groups
    # dx~[grp*Cg + ci, j] = sum_k sum_i w[grp*Og + i, ci, k] g[grp*Og + i, j - k*d]: the output
    # channel ci walks w's second axis, the reduced channel i its first.
    return _conv(g, None, w, None, dx, 0 if with_state else P, -dilation, og, cg, groups,
                 (og * cg * K, K, cg * K), P, 0, block)


def _splits(T: int, bt: int, programs: int) -> tuple[int, int]:
    """(times per split, splits): enough splits to give about _SPLIT_PROGRAMS programs."""
    n = max(1, min(triton.cdiv(T, bt), triton.cdiv(_SPLIT_PROGRAMS, max(programs, 1))))
    t_split = triton.cdiv(triton.cdiv(T, n), bt) * bt
    return t_split, triton.cdiv(T, t_split)


def bwd_weight(g: torch.Tensor, x: torch.Tensor, h: torch.Tensor | None, dw: torch.Tensor,
               dilation: int, groups: int, *, block: tuple[int, int] | None = None,
               t_split: int | None = None) -> torch.Tensor:
    """dw[co, ci, k] = sum_b sum_t g[b,co,t] x~[b, grp*Cg+ci, t + k*d] into dw, deterministic.
    `t_split` forces the times per partial (a multiple of the time tile; tests)."""
    _check_conv(x, dw, groups, dilation)
    B, cin, T = x.shape
    cout, cg, K = dw.shape
    if cg * groups != cin:
        raise ValueError(f"dw: expected (Cout, Cin/groups={cin // groups}, K), got "
                         f"{tuple(dw.shape)}")
    check_like("g", g, (B, cout, T), x.dtype, x.device)
    P = (K - 1) * dilation
    if h is not None:
        check_like("h", h, (B, cin, P), x.dtype, x.device)
    if not B or not T:
        return dw.zero_()
    og = cout // groups
    hp = h if h is not None and P else x
    meta = dict(K=K, HAS_H=h is not None and P > 0)
    with device_guard(x):
        if cg >= MIN_DOT and og >= MIN_DOT:
            bm = block[0] if block else _pow2(og, MIN_DOT, 64)
            bn = block[0] if block else _pow2(cg, MIN_DOT, 64)
            bt = block[1] if block else _pow2(T, MIN_DOT, 64)
            n_ot, n_it = triton.cdiv(og, bm), triton.cdiv(cg, bn)
            programs = groups * n_ot * n_it * K
            ts, n_split = _splits(T, bt, programs) if t_split is None else (t_split,
                                                                          triton.cdiv(T, t_split))
            ws = torch.empty((n_split, cout, cg, K), dtype=torch.float32, device=x.device)
            _wgrad_dot_kernel[(programs, n_split)](
                g, x, hp, ws, B, T, P, dilation, cg, og, groups, n_ot, n_it, ts,
                PREC=_prec(x.dtype), BM=bm, BN=bn, BT=bt, num_warps=4, **meta,
            )
        else:
            bt = block[1] if block else _pow2(T, 16, 256)
            br = block[0] if block else _pow2(cout * cg, 1, max(1, _ELEM_TILE // bt))
            programs = triton.cdiv(cout * cg, br) * K
            ts, n_split = _splits(T, bt, programs) if t_split is None else (t_split,
                                                                          triton.cdiv(T, t_split))
            ws = torch.empty((n_split, cout, cg, K), dtype=torch.float32, device=x.device)
            _wgrad_elem_kernel[(programs, n_split)](
                g, x, hp, ws, B, T, P, dilation, cg, og, cout * cg, ts, BR=br, BT=bt,
                num_warps=_warps(br * bt), **meta,
            )
    # torch reduces the partials in a fixed order: the same bits every run.
    return dw.copy_(ws.sum(0) if n_split > 1 else ws[0])


def update(x_new: torch.Tensor, state: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None,
           seqlens: torch.Tensor | None, y: torch.Tensor, dilation: int, groups: int, act: int,
           *, block: tuple[int, int] | None = None) -> torch.Tensor:
    """L decode steps into y (B, Cout, L), advancing the state in place: see
    kernels/causal_conv_update.py (imported on first use, as it imports this module)."""
    from .causal_conv_update import update as _update

    return _update(x_new, state, w, b, seqlens, y, dilation, groups, act, block=block)
