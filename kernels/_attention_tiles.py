"""What the attention Triton kernels share (kernels/attention.py: the forward and decode;
kernels/_attention_bwd.py: the first-order backward): constants, device helpers (tile loads,
the 2x2 max-pooled key load, the causal key ranges, routed pooled-gradient stores, the dot with
its precision) and the host side's argument checks and per-dtype tile tables. Semantics: the
design in genfast/ops/attention.py."""

from __future__ import annotations

import math

import torch
import triton
import triton.language as tl

DTYPES = (torch.float32, torch.float16, torch.bfloat16)
MAX_HEAD_DIM = 256
DECODE_MAX_N = 16  # query counts up to this may take the split-K decode path
_LOG2E = 1.4426950408889634
LOG2E = tl.constexpr(_LOG2E)  # jit code reads only constexpr globals
LN2 = tl.constexpr(0.6931471805599453)


# ----------------------------------------------------------------------------- device helpers


@triton.jit
def _dot(a, b, acc, PREC: tl.constexpr):
    """acc + a @ b, fp32 accumulation; PREC "ieee" keeps fp32 inputs out of tf32."""
    return tl.dot(a, b, acc, input_precision=PREC)


@triton.jit
def _load_tile(base, rows, rmask, cols, cmask, stride):
    """tile[r, c] = base[rows[r] * stride + cols[c]], 0 where a mask is off."""
    ptr = base + rows.to(tl.int64)[:, None] * stride + cols[None, :]
    return tl.load(ptr, mask=rmask[:, None] & cmask[None, :], other=0.0)


@triton.jit
def _pool_row(j, Wp, Ws):
    """Unpooled row of the top-left corner of pooled key j's 2x2 window."""
    a = j // Wp
    return 2 * a * Ws + 2 * (j - a * Wp)


@triton.jit
def _load_kv(base, j, jmask, cols, cmask, stride, Wp, Ws, POOL: tl.constexpr):
    """Key/value rows j; POOL: the 2x2 window max of pooled key j (unpooled grid Ws wide)."""
    if POOL:
        r = _pool_row(j, Wp, Ws)
        top = tl.maximum(_load_tile(base, r, jmask, cols, cmask, stride),
                         _load_tile(base, r + 1, jmask, cols, cmask, stride))
        bot = tl.maximum(_load_tile(base, r + Ws, jmask, cols, cmask, stride),
                         _load_tile(base, r + Ws + 1, jmask, cols, cmask, stride))
        t = tl.maximum(top, bot)
    else:
        t = _load_tile(base, j, jmask, cols, cmask, stride)
    return t


@triton.jit
def _key_ranges(start_m, off, M, CAUSAL: tl.constexpr, BM: tl.constexpr, BN: tl.constexpr):
    """(hi1, hi2) for the query tile at start_m: key blocks in [0, hi1) are whole and seen by
    every row (no mask); [hi1, hi2) needs the key-bound / causal mask; off = M - N."""
    if CAUSAL:
        # Row start_m sees keys <= start_m + off: whole BN blocks below that need no mask.
        hi1 = tl.maximum(start_m + off + 1, 0) // BN * BN
        hi2 = tl.minimum(tl.maximum(start_m + BM + off, 0), M)
    else:
        hi1 = M // BN * BN
        hi2 = M
    return hi1, hi2


@triton.jit
def _store_routed(src_base, dst_base, j, jmask, cols, cmask, s_src, D, Wp, Ws, g):
    """Route pooled-key gradient g (BN, BD) to the first max of each 2x2 window of src; the
    window's other three positions in dst (row stride D) get 0."""
    r = _pool_row(j, Wp, Ws)
    x00 = _load_tile(src_base, r, jmask, cols, cmask, s_src)
    x01 = _load_tile(src_base, r + 1, jmask, cols, cmask, s_src)
    x10 = _load_tile(src_base, r + Ws, jmask, cols, cmask, s_src)
    x11 = _load_tile(src_base, r + Ws + 1, jmask, cols, cmask, s_src)
    mx = tl.maximum(tl.maximum(x00, x01), tl.maximum(x10, x11))
    s00 = x00 == mx
    s01 = (x01 == mx) & ~s00
    s10 = (x10 == mx) & ~(s00 | s01)
    s11 = ~(s00 | s01 | s10)
    g = g.to(dst_base.dtype.element_ty)
    zero = tl.zeros_like(g)
    m = jmask[:, None] & cmask[None, :]
    col = cols[None, :]
    tl.store(dst_base + r.to(tl.int64)[:, None] * D + col, tl.where(s00, g, zero), mask=m)
    tl.store(dst_base + (r + 1).to(tl.int64)[:, None] * D + col, tl.where(s01, g, zero), mask=m)
    tl.store(dst_base + (r + Ws).to(tl.int64)[:, None] * D + col, tl.where(s10, g, zero), mask=m)
    tl.store(dst_base + (r + Ws + 1).to(tl.int64)[:, None] * D + col, tl.where(s11, g, zero),
             mask=m)


# ----------------------------------------------------------------------------- launchers


def _prec(dtype: torch.dtype) -> str:
    return "ieee" if dtype == torch.float32 else "tf32"


def _pow2(n: int, lo: int = 16) -> int:
    return max(lo, triton.next_power_of_2(max(n, 1)))


def _check_qkv(q, k, v, pool_hw, causal, scale):
    """Sizes (B, Hh, N, M, Sk, Dk, Dv, Wp, Ws) and the float scale, after checking what the
    kernels rely on."""
    for name, t in (("q", q), ("k", k), ("v", v)):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
        if t.dim() != 4:
            raise ValueError(f"{name} must be 4-D (B, Hh, rows, D), got shape {tuple(t.shape)}")
        if t.dtype not in DTYPES or t.dtype != q.dtype or t.device != q.device:
            raise TypeError(f"{name} must be float32, float16 or bfloat16 like q ({q.dtype} on "
                            f"{q.device}), got {t.dtype} on {t.device}")
        if t.size(3) > 1 and t.stride(3) != 1:
            raise ValueError(f"{name} must have a unit last stride, got {tuple(t.stride())}")
        if min(t.stride()) < 0 or max(t.shape) > 2**31 - 1:
            raise ValueError(f"{name} needs strides >= 0 and sizes < 2**31")
    B, Hh, N, Dk = q.shape
    Sk, Dv = k.size(2), v.size(3)
    if tuple(k.shape) != (B, Hh, Sk, Dk) or tuple(v.shape[:3]) != (B, Hh, Sk):
        raise ValueError(f"k must be (B, Hh, Sk, Dk) and v (B, Hh, Sk, Dv) for q of shape "
                         f"{tuple(q.shape)}, got {tuple(k.shape)} and {tuple(v.shape)}")
    for name, d in (("Dk", Dk), ("Dv", Dv)):
        if not 1 <= d <= MAX_HEAD_DIM:
            raise ValueError(f"head dim {name} must be in [1, {MAX_HEAD_DIM}], got {d}")
    if pool_hw is None:
        M, Wp, Ws = Sk, 1, 1
    else:
        if (len(pool_hw) != 2 or any(isinstance(x, bool) or not isinstance(x, int) or x < 0
                                     for x in pool_hw)):
            raise ValueError(f"pool_hw must be None or two ints >= 0, got {pool_hw!r}")
        Hs, Ws = pool_hw
        if Hs * Ws != Sk:
            raise ValueError(f"pool_hw {tuple(pool_hw)} needs {Hs * Ws} key rows, k has {Sk}")
        M, Wp = (Hs // 2) * (Ws // 2), max(Ws // 2, 1)
    if not isinstance(causal, bool):
        raise TypeError(f"causal must be a bool, got {type(causal).__name__}")
    scale = 1.0 / math.sqrt(Dk) if scale is None else float(scale)
    if not math.isfinite(scale):
        raise ValueError(f"scale must be finite, got {scale}")
    return B, Hh, N, M, Sk, Dk, Dv, Wp, Ws, scale


def _check_block(block):
    if block is not None and (len(block) != 2 or any(b < 16 or b & (b - 1) for b in block)):
        raise ValueError(f"block must be two powers of two >= 16, got {block!r}")
    return block


# (BM, BN, warps, stages) by head-dim bound, 16-bit / fp32 (the fp32 "ieee" dots are FMA
# loops whose operands sit in registers: smaller tiles). Each was compiled for sm_90 and its
# ptxas report read: no register spills. _fit then trims them to the device's shared memory.
_FWD = {True: ((64, (128, 64, 4, 3)), (128, (128, 64, 8, 3)), (256, (64, 32, 8, 2))),
        False: ((32, (64, 32, 4, 2)), (64, (64, 32, 8, 2)), (256, (32, 16, 8, 2)))}
_DKDV = {True: ((64, (32, 128, 8, 3)), (128, (32, 64, 8, 2)), (256, (32, 32, 8, 2))),
         False: ((64, (16, 64, 8, 2)), (128, (16, 32, 8, 2)), (256, (16, 16, 8, 1)))}
_DQ = {True: ((64, (128, 32, 4, 3)), (128, (64, 32, 8, 2)), (256, (32, 32, 8, 2))),
       False: ((64, (64, 32, 8, 2)), (128, (32, 16, 8, 2)), (256, (16, 16, 8, 1)))}


def _config(table, q: torch.Tensor, bd: int, block) -> list[int]:
    """[BM, BN, warps, stages] for head dim bd (the padded max of Dk, Dv); `block` forces the
    tiles. The interpreter takes 16 x 16 tiles: small test shapes still walk several."""
    if not q.is_cuda:
        cfg = [16, 16, 4, 1]
    else:
        cfg = list(next(c for bound, c in table[q.dtype != torch.float32] if bd <= bound))
    if _check_block(block) is not None:
        cfg[:2] = block
    return cfg


def _fit(q: torch.Tensor, cfg: list[int], walk: int, row: int, fixed: int,
         copies: int = 1) -> list[int]:
    """cfg with the pipeline's shared memory within the device's: stages x the walked tile
    cfg[walk] x `row` bytes x `copies` (pooled K/V stream four raw tiles) plus `fixed` bytes
    loaded once; one stage has no async copies, only the tile itself. Fewer stages down to 2,
    then narrower walked tiles down to 16, then 1 stage."""
    if not q.is_cuda:
        return cfg
    props = torch.cuda.get_device_properties(q.device)
    limit = getattr(props, "shared_memory_per_block_optin", 101376) - 2048  # slack: scratch
    need = (lambda: (cfg[3] * copies if cfg[3] > 1 else 1) * cfg[walk] * row + fixed)
    while cfg[3] > 2 and need() > limit:
        cfg[3] -= 1
    while cfg[walk] > 16 and need() > limit:
        cfg[walk] //= 2
    if need() > limit:
        cfg[3] = 1
    return cfg
