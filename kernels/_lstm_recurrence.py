"""The fused whole-sequence LSTM recurrence in Triton (recurrence_fwd / recurrence_bwd), and the
device helpers and launcher checks it shares with the GEMM path's cells (kernels/lstm.py, which
re-exports this module's public names; the op calls them as genfast.kernels.lstm.*).

Semantics: the contract in genfast/ops/lstm.py (equations: the issue-9 design, section 1); gate
order i, f, g, o along the 4H axis, as torch's. No projection (P == H): one program per block of
batch rows runs all T steps in one launch. w_hh is re-read from L2 every step (4H x H <= 512 KB in
fp16 at H = 256); h lives in a double-buffered global scratch (one tl.debug_barrier per step
orders this step's writes before the next step's reads of the whole row), c / dc in a float32
scratch that only the thread owning an element touches. The step's GEMM runs in hidden blocks of
BN columns over BK-wide reduction chunks, tl.dot when every tile dimension is >= 16 (hidden sizes
>= 16; batch rows are padded to 16), a broadcast-and-sum otherwise. The backward has two phases
per step, each closed by a barrier: the pointwise dG of every hidden block (stored to dgx[t],
which is also the GEMM's operand, so dh = dG w_hh sees dG in the data dtype exactly as the GEMM
path's torch matmul does), then dh = dgx[t] w_hh into an fp32 scratch that phase 1 of the next
step reads whole.

Math in fp32 for every data dtype, one rounding per store; h enters the next step's dot in the
data dtype (it is y[t], as on the GEMM path). tanh x = 2 sigmoid(2x) - 1 (saturates instead of
inf / inf, as kernels/causal_conv.py's tanh). Under TRITON_INTERPRET=1 everything runs on CPU
tensors (the tests); the barriers are then no-ops, as programs run one after another.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ._launch import check_count, check_like, device_guard
from .causal_conv import DTYPES, _pow2, _prec
from .masked_conv import MIN_DOT, _mm

WORK = torch.float32
MAX_RECURRENCE_H = 256  # w_hh of 4H x H: 512 KB of fp16 re-read per step and row block from L2
_INT32_MAX = 2**31 - 1


# ----------------------------------------------------------------------------- device helpers


@triton.jit
def _tanh(x):
    return 2.0 * tl.sigmoid(2.0 * x) - 1.0


@triton.jit
def _lengths(len_ptr, rows, rmask, T, HAS_LEN: tl.constexpr):
    """Active-step bound of each row: lengths[b] (steps t < it are active), or T."""
    if HAS_LEN:
        n = tl.load(len_ptr + rows, mask=rmask, other=0)
    else:
        n = tl.zeros(rows.shape, tl.int64) + T
    return n


@triton.jit
def _load4(ptr, off, H, mask):
    """The i, f, g, o column blocks at `off` of a (rows, 4H) buffer, in fp32."""
    a = tl.load(ptr + off, mask=mask, other=0.0).to(tl.float32)
    b = tl.load(ptr + off + H, mask=mask, other=0.0).to(tl.float32)
    c = tl.load(ptr + off + 2 * H, mask=mask, other=0.0).to(tl.float32)
    d = tl.load(ptr + off + 3 * H, mask=mask, other=0.0).to(tl.float32)
    return a, b, c, d


@triton.jit
def _store4(ptr, off, H, a, b, c, d, mask):
    ty = ptr.dtype.element_ty
    tl.store(ptr + off, a.to(ty), mask=mask)
    tl.store(ptr + off + H, b.to(ty), mask=mask)
    tl.store(ptr + off + 2 * H, c.to(ty), mask=mask)
    tl.store(ptr + off + 3 * H, d.to(ty), mask=mask)


@triton.jit
def _cell(a_i, a_f, a_g, a_o, c):
    """The activations, the new c and ht = o tanh(c) from the pre-activations and the old c."""
    i = tl.sigmoid(a_i)
    f = tl.sigmoid(a_f)
    g = _tanh(a_g)
    o = tl.sigmoid(a_o)
    c = f * c + i * g
    return i, f, g, o, c, o * _tanh(c)


@triton.jit
def _cell_grads(dht, dc, i, f, g, o, ct, cp):
    """The cell's backward (design section 1): dG's four blocks and the dc carried to t - 1.
    Rows loaded as zeros (inactive ones) give dG = 0 exactly: every term has a zero factor."""
    tc = _tanh(ct)
    dc = dc + dht * o * (1.0 - tc * tc)
    return (dc * g * i * (1.0 - i), dc * cp * f * (1.0 - f), dc * i * (1.0 - g * g),
            dht * tc * o * (1.0 - o), dc * f)


@triton.jit
def _copy_out(src_ptr, dst_ptr, r64, rm, H, BN: tl.constexpr):
    """dst[rows] = src[rows] (B, H) with one rounding to dst's dtype."""
    for j0 in range(0, H, BN):
        j = j0 + tl.arange(0, BN)
        mr = rm[:, None] & (j < H)[None, :]
        v = tl.load(src_ptr + r64 * H + j[None, :], mask=mr, other=0.0)
        tl.store(dst_ptr + r64 * H + j[None, :], v.to(dst_ptr.dtype.element_ty), mask=mr)


# ----------------------------------------------------------------------------- recurrence


@triton.jit
def _rec_fwd_kernel(gx_ptr, w_ptr, len_ptr, y_ptr, gates_ptr, call_ptr, hT_ptr, cT_ptr,
                    hbuf_ptr, cbuf_ptr, T, B, H,
                    HAS_LEN: tl.constexpr, SAVE: tl.constexpr, REVERSE: tl.constexpr,
                    DOT: tl.constexpr, PREC: tl.constexpr, BB: tl.constexpr, BN: tl.constexpr,
                    BK: tl.constexpr):
    rows = tl.program_id(0) * BB + tl.arange(0, BB)
    rm = rows < B
    r64 = rows.to(tl.int64)[:, None]
    n = _lengths(len_ptr, rows, rm, T, HAS_LEN)
    ty = y_ptr.dtype.element_ty
    for s in range(T):
        if REVERSE:
            t = T - 1 - s
        else:
            t = s
        act = rm & (t < n)
        a2 = act[:, None]
        # h of the previous step in buffer s % 2, this step's into the other one.
        h_in = hbuf_ptr + (s % 2) * B * H
        h_out = hbuf_ptr + ((s + 1) % 2) * B * H
        g_t = t.to(tl.int64) * B * (4 * H)
        s_t = t.to(tl.int64) * B * H
        for j0 in range(0, H, BN):
            j = j0 + tl.arange(0, BN)
            jm = j < H
            m = a2 & jm[None, :]
            mr = rm[:, None] & jm[None, :]
            goff = r64 * (4 * H) + j[None, :]
            soff = r64 * H + j[None, :]
            a_i, a_f, a_g, a_o = _load4(gx_ptr + g_t, goff, H, m)
            for k0 in range(0, H, BK):
                k = k0 + tl.arange(0, BK)
                km = k < H
                hk = tl.load(h_in + r64 * H + k[None, :], mask=rm[:, None] & km[None, :],
                             other=0.0)
                wm = km[:, None] & jm[None, :]
                wp = w_ptr + j[None, :] * H + k[:, None]  # (BK, BN) tile of w_hh^T
                a_i = _mm(hk, tl.load(wp, mask=wm, other=0.0), a_i, DOT, PREC)
                a_f = _mm(hk, tl.load(wp + H * H, mask=wm, other=0.0), a_f, DOT, PREC)
                a_g = _mm(hk, tl.load(wp + 2 * H * H, mask=wm, other=0.0), a_g, DOT, PREC)
                a_o = _mm(hk, tl.load(wp + 3 * H * H, mask=wm, other=0.0), a_o, DOT, PREC)
            i, f, g, o, c, h = _cell(a_i, a_f, a_g, a_o,
                                     tl.load(cbuf_ptr + soff, mask=m, other=0.0))
            tl.store(cbuf_ptr + soff, c, mask=m)
            h = h.to(ty)
            # Inactive rows carry h over (the double buffer needs every row written).
            h_old = tl.load(h_in + soff, mask=mr, other=0.0)
            tl.store(h_out + soff, tl.where(a2, h, h_old), mask=mr)
            tl.store(y_ptr + s_t + soff, tl.where(a2, h, 0.0).to(ty), mask=mr)
            if SAVE:
                _store4(gates_ptr + g_t, goff, H, i, f, g, o, m)
                tl.store(call_ptr + s_t + soff, c, mask=m)
        tl.debug_barrier()
    _copy_out(hbuf_ptr + (T % 2) * B * H, hT_ptr, r64, rm, H, BN)
    _copy_out(cbuf_ptr, cT_ptr, r64, rm, H, BN)


@triton.jit
def _rec_bwd_kernel(w_ptr, c0_ptr, len_ptr, gates_ptr, call_ptr, dy_ptr, dgx_ptr, dh0_ptr,
                    dc0_ptr, dhbuf_ptr, dcbuf_ptr, T, B, H,
                    HAS_LEN: tl.constexpr, HAS_C0: tl.constexpr, HAS_DY: tl.constexpr,
                    REVERSE: tl.constexpr, DOT: tl.constexpr, PREC: tl.constexpr,
                    BB: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr):
    rows = tl.program_id(0) * BB + tl.arange(0, BB)
    rm = rows < B
    r64 = rows.to(tl.int64)[:, None]
    n = _lengths(len_ptr, rows, rm, T, HAS_LEN)
    for s in range(T):
        if REVERSE:  # the forward ran T-1 .. 0: undo it 0 .. T-1
            t = s
            tp = t + 1
        else:
            t = T - 1 - s
            tp = t - 1
        # Step tp (the previous one in the forward's order) ran iff it is active; reversed, a
        # sequence starts at lengths[b] - 1, so its first step has no active predecessor.
        tp_b = tl.zeros(rows.shape, tl.int64) + tp
        has_prev = (tp_b >= 0) & (tp_b < n) & (tp_b < T)
        act = rm & (t < n)
        a2 = act[:, None]
        g_t = t.to(tl.int64) * B * (4 * H)
        s_t = t.to(tl.int64) * B * H
        s_p = tp.to(tl.int64) * B * H
        # Phase 1: dG of every hidden block into dgx[t] (zero rows where inactive).
        for j0 in range(0, H, BN):
            j = j0 + tl.arange(0, BN)
            jm = j[None, :] < H
            m = a2 & jm
            goff = r64 * (4 * H) + j[None, :]
            soff = r64 * H + j[None, :]
            dht = tl.load(dhbuf_ptr + soff, mask=m, other=0.0)
            if HAS_DY:
                dht += tl.load(dy_ptr + s_t + soff, mask=m, other=0.0).to(tl.float32)
            i, f, g, o = _load4(gates_ptr + g_t, goff, H, m)
            ct = tl.load(call_ptr + s_t + soff, mask=m, other=0.0)
            cp = tl.load(call_ptr + s_p + soff, mask=m & has_prev[:, None], other=0.0)
            if HAS_C0:
                first = m & (has_prev == 0)[:, None]
                cp += tl.load(c0_ptr + soff, mask=first, other=0.0).to(tl.float32)
            dc = tl.load(dcbuf_ptr + soff, mask=m, other=0.0)
            d_i, d_f, d_g, d_o, dc = _cell_grads(dht, dc, i, f, g, o, ct, cp)
            tl.store(dcbuf_ptr + soff, dc, mask=m)
            _store4(dgx_ptr + g_t, goff, H, d_i, d_f, d_g, d_o, rm[:, None] & jm)
        tl.debug_barrier()
        # Phase 2: dh = dgx[t] w_hh for the active rows; inactive rows keep theirs.
        for j0 in range(0, H, BN):
            j = j0 + tl.arange(0, BN)
            jm = j < H
            acc = tl.zeros((BB, BN), tl.float32)
            for k0 in range(0, 4 * H, BK):
                k = k0 + tl.arange(0, BK)
                km = k < 4 * H
                a = tl.load(dgx_ptr + g_t + r64 * (4 * H) + k[None, :],
                            mask=rm[:, None] & km[None, :], other=0.0)
                w = tl.load(w_ptr + k[:, None] * H + j[None, :], mask=km[:, None] & jm[None, :],
                            other=0.0)
                acc = _mm(a, w, acc, DOT, PREC)
            tl.store(dhbuf_ptr + r64 * H + j[None, :], acc, mask=a2 & jm[None, :])
        tl.debug_barrier()
    _copy_out(dhbuf_ptr, dh0_ptr, r64, rm, H, BN)
    _copy_out(dcbuf_ptr, dc0_ptr, r64, rm, H, BN)


# ----------------------------------------------------------------------------- launchers


def _lead(name: str, t: object, ndim: int, dtypes) -> tuple[int, ...]:
    """The shape of the tensor that sets the sizes (its last size 4H); the others are checked
    against it with check_like (exact shape, dtype, device, contiguous)."""
    if not isinstance(t, torch.Tensor) or t.dtype not in dtypes:
        got = f"{t.dtype}" if isinstance(t, torch.Tensor) else type(t).__name__
        want = "float32" if dtypes == (WORK,) else "float32, float16 or bfloat16"
        raise TypeError(f"{name} must be a {want} tensor, got {got}")
    if t.dim() != ndim or t.shape[-1] % 4:
        raise ValueError(f"{name} must be {ndim}-D with a last size 4H, got {tuple(t.shape)}")
    check_like(name, t, tuple(t.shape), t.dtype, t.device)
    H = t.shape[-1] // 4
    # Row offsets are int64; column offsets (< 4H) and w_hh offsets (< 4H * H) are int32.
    if 4 * H * max(H, 1) > _INT32_MAX:
        raise ValueError(f"{name}: hidden size {H} too large for int32 column offsets")
    return tuple(t.shape[:-1]) + (H,)


def _check(device: torch.device, lengths: torch.Tensor | None, B: int, **tensors) -> None:
    """name=(tensor or None, shape, dtype) for each further argument; lengths (B,) int64."""
    for name, (t, shape, dtype) in tensors.items():
        if t is not None:
            check_like(name, t, shape, dtype, device)
    if lengths is not None:
        check_like("lengths", lengths, (B,), torch.int64, device)


def _pair(a: str, ta: object, b: str, tb: object) -> None:
    if (ta is None) != (tb is None):
        raise ValueError(f"{a} and {b} must both be given (training) or both None")

def supports_recurrence(H: int, B: int) -> bool:
    """Whether the fused recurrence (recurrence_fwd / recurrence_bwd) is the path for hidden
    size H (without projection) and batch B. Each program re-reads all of w_hh every step, so it
    pays while w_hh (4H x H) stays small next to the two launches per step of the GEMM path:
    H <= MAX_RECURRENCE_H. Any batch (rows are split into blocks of 16, one program each)."""
    check_count("H", H)
    check_count("B", B)
    return 1 <= H <= MAX_RECURRENCE_H


def _rec_blocks(B: int, H: int, K: int, block: int | None, dtype: torch.dtype) -> dict:
    """Tiles of the recurrence: BN hidden columns, BK reduction (K wide), BB batch rows."""
    if block is not None:
        if block < 2 or block & (block - 1):
            raise ValueError(f"block must be a power of two >= 2, got {block}")
        bn = bk = block
    else:
        bn = _pow2(H, 2, 64)
        # fp32 tiles of 32 take ~68 KB of shared memory at sm_90 (over sm_75's 64 KB); 16: ~35.
        bk = _pow2(K, 2, 32 if H >= MIN_DOT and dtype != torch.float32 else 16)
    dot = bn >= MIN_DOT and bk >= MIN_DOT
    # tl.dot pads the batch rows to 16; the broadcast-and-sum body keeps (BB, BK, BN) <= 4096.
    bb = MIN_DOT if dot else _pow2(B, 2, max(2, 4096 // (bn * bk)))
    return dict(DOT=dot, BB=bb, BN=bn, BK=bk, num_warps=4, PREC=_prec(dtype))


def recurrence_fwd(gx: torch.Tensor, w_hh: torch.Tensor, h0: torch.Tensor | None,
                   c0: torch.Tensor | None, lengths: torch.Tensor | None, y: torch.Tensor,
                   gates: torch.Tensor | None, c_all: torch.Tensor | None, hT: torch.Tensor,
                   cT: torch.Tensor, reverse: bool, *, block: int | None = None) -> None:
    """The whole forward recurrence of one layer without projection, one launch; in place.

    gx (T, B, 4H) data dtype (float32, float16 or bfloat16): x w_ih^T + b for every step.
    w_hh (4H, H) data dtype. h0, c0 (B, H) data dtype, or None for zeros. lengths (B,) int64 or
    None (all T): step t of row b is active iff t < lengths[b]. Steps run t = 0 .. T-1, or
    T-1 .. 0 when reverse. Out: y (T, B, H) data dtype (h at active steps, 0 at inactive ones);
    gates (T, B, 4H) and c_all (T, B, H) float32, the activated i, f, g, o and c after each
    active step (inactive steps untouched), or both None (inference); hT, cT (B, H) data dtype,
    the state after each row's last active step. Gate math and c in fp32; h enters the next
    step's product in the data dtype. All tensors contiguous on one device. block forces the
    hidden and reduction tile (power of two >= 2; the tests walk several tiles with it)."""
    T, B, H = _lead("gx", gx, 3, DTYPES)
    dt, dev = gx.dtype, gx.device
    _pair("gates", gates, "c_all", c_all)
    _check(dev, lengths, B, w_hh=(w_hh, (4 * H, H), dt), h0=(h0, (B, H), dt),
           c0=(c0, (B, H), dt), y=(y, (T, B, H), dt), gates=(gates, (T, B, 4 * H), WORK),
           c_all=(c_all, (T, B, H), WORK), hT=(hT, (B, H), dt), cT=(cT, (B, H), dt))
    if B * H == 0:
        return
    hbuf = torch.empty(2, B, H, dtype=dt, device=dev)  # h before / after a step (ping-pong)
    hbuf[0] = 0 if h0 is None else h0
    cbuf = torch.zeros(B, H, dtype=WORK, device=dev) if c0 is None else c0.to(WORK, copy=True)
    blocks = _rec_blocks(B, H, H, block, dt)
    with device_guard(gx):
        _rec_fwd_kernel[(triton.cdiv(B, blocks["BB"]),)](
            gx, w_hh, lengths if lengths is not None else gx, y,
            gates if gates is not None else cbuf, c_all if c_all is not None else cbuf,
            hT, cT, hbuf, cbuf, T, B, H, HAS_LEN=lengths is not None, SAVE=gates is not None,
            REVERSE=bool(reverse), **blocks)


def recurrence_bwd(w_hh: torch.Tensor, c0: torch.Tensor | None, lengths: torch.Tensor | None,
                   gates: torch.Tensor, c_all: torch.Tensor, dy: torch.Tensor | None,
                   dhT: torch.Tensor | None, dcT: torch.Tensor | None, dgx: torch.Tensor,
                   dh0: torch.Tensor, dc0: torch.Tensor, reverse: bool, *,
                   block: int | None = None) -> None:
    """The whole backward recurrence (first order) of one layer without projection, one launch;
    in place.

    w_hh (4H, H) data dtype (float32, float16 or bfloat16; it sets the data dtype). c0 (B, H)
    data dtype or None (zeros). lengths (B,) int64 or None, reverse: as given to recurrence_fwd.
    gates (T, B, 4H), c_all (T, B, H) float32: what recurrence_fwd saved. dy (T, B, H), dhT,
    dcT (B, H) data dtype, or None for zeros. Steps run in the reverse of the forward's order;
    inactive steps pass (dh, dc) through. Out: dgx (T, B, 4H) data dtype, the gradient of the
    pre-activations (0 at inactive steps); dh0, dc0 (B, H) data dtype, the gradients of the
    initial state. The cell math in fp32, dh and dc carried in fp32; dh = dG w_hh takes dG in
    the data dtype (as stored in dgx). All tensors contiguous on one device; block as in
    recurrence_fwd."""
    T, B, H = _lead("gates", gates, 3, (WORK,))
    if not isinstance(w_hh, torch.Tensor) or w_hh.dtype not in DTYPES:
        raise TypeError(f"w_hh must be a float32, float16 or bfloat16 tensor, got "
                        f"{getattr(w_hh, 'dtype', type(w_hh).__name__)}")
    dt, dev = w_hh.dtype, gates.device
    _check(dev, lengths, B, w_hh=(w_hh, (4 * H, H), dt), c0=(c0, (B, H), dt),
           c_all=(c_all, (T, B, H), WORK), dy=(dy, (T, B, H), dt), dhT=(dhT, (B, H), dt),
           dcT=(dcT, (B, H), dt), dgx=(dgx, (T, B, 4 * H), dt), dh0=(dh0, (B, H), dt),
           dc0=(dc0, (B, H), dt))
    if c_all is None:
        raise ValueError("c_all (saved by recurrence_fwd) is required")
    if B * H == 0:
        return

    def state(v: torch.Tensor | None) -> torch.Tensor:  # dh / dc, carried in fp32
        return torch.zeros(B, H, dtype=WORK, device=dev) if v is None else v.to(WORK, copy=True)

    dhbuf, dcbuf = state(dhT), state(dcT)
    blocks = _rec_blocks(B, H, 4 * H, block, dt)
    with device_guard(gates):
        _rec_bwd_kernel[(triton.cdiv(B, blocks["BB"]),)](
            w_hh, c0 if c0 is not None else w_hh, lengths if lengths is not None else dhbuf,
            gates, c_all, dy if dy is not None else dgx, dgx, dh0, dc0, dhbuf, dcbuf, T, B, H,
            HAS_LEN=lengths is not None, HAS_C0=c0 is not None, HAS_DY=dy is not None,
            REVERSE=bool(reverse), **blocks)
