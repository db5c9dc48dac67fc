"""Philox4x32-10 and the uniform / Gumbel transforms of genfast's noise stream, in Triton.

genfast/random.py is the oracle and documents the stream (version 1); csrc/common/philox.h is
the C++/CUDA copy. The words drawn here are bit-identical to both, which is what lets tests
compare sampled indices across backends exactly.

Element (row r, column c) of an op's (rows, n) view uses word ``c & 3`` of the block for counter
``(c >> 2, lo32(r), hi32(r), 0)`` under key ``(lo32(seed), hi32(seed))``. Kernels draw a whole
(rows, columns) tile at once: one Philox call per four columns of a row, the four result words
interleaved back into column order. Shared by kernels/gumbel.py and kernels/sample.py.
"""

import triton
import triton.language as tl


@triton.jit
def philox4x32_10(c0, c1, c2, c3, k0, k1):
    """Ten Philox4x32 rounds on uint32 tensors: counter (c0, c1, c2, c3), key (k0, k1)."""
    # Written out rather than taken from tl.philox: the stream is a cross-backend contract and
    # must not move if Triton ever changes its own generator. Products and key sums wrap mod
    # 2^32 by design (the low half of the 64-bit product), so overflow checks are off.
    for _ in tl.static_range(10):
        hi0 = tl.umulhi(c0, 0xD2511F53)
        lo0 = tl.mul(c0, 0xD2511F53, sanitize_overflow=False)
        hi1 = tl.umulhi(c2, 0xCD9E8D57)
        lo1 = tl.mul(c2, 0xCD9E8D57, sanitize_overflow=False)
        c0 = hi1 ^ c1 ^ k0
        c1 = lo1
        c2 = hi0 ^ c3 ^ k1
        c3 = lo0
        k0 = tl.add(k0, 0x9E3779B9, sanitize_overflow=False)
        k1 = tl.add(k1, 0xBB67AE85, sanitize_overflow=False)
    return c0, c1, c2, c3


@triton.jit
def seed_key(seed_ptr):
    """The Philox key: low and high uint32 halves of the int64 seed stored at seed_ptr."""
    # Loaded on the device, so drawing a seed from a torch.Generator never syncs the host.
    seed = tl.load(seed_ptr).to(tl.uint64, bitcast=True)
    return (seed & 0xFFFFFFFF).to(tl.uint32), (seed >> 32).to(tl.uint32)


@triton.jit
def philox_tile(k0, k1, rows, col0, BLOCK: tl.constexpr):
    """uint32 words of columns col0 .. col0 + BLOCK - 1 of each row in `rows` (int64, shape
    (R,)), in column order: shape (R, BLOCK). col0 must be a multiple of 4."""
    tl.static_assert(BLOCK % 4 == 0, "BLOCK must be a multiple of 4")
    quad = ((col0 >> 2) + tl.arange(0, BLOCK // 4)).to(tl.uint32)
    zero = tl.zeros([rows.shape[0], BLOCK // 4], dtype=tl.uint32)
    w0, w1, w2, w3 = philox4x32_10(
        zero + quad[None, :],
        zero + rows.to(tl.uint32)[:, None],
        zero + (rows >> 32).to(tl.uint32)[:, None],
        zero,
        k0,
        k1,
    )
    # Word c & 3 of quad c >> 2 must land at position c. w[r, q, i, j] = word 2i + j of quad q,
    # so the row-major flattening of each row is w0 w1 w2 w3 of quad 0, then of quad 1, ... This
    # is tl.interleave(tl.interleave(w0, w2), tl.interleave(w1, w3)) with one reshape instead of
    # three (interleave is join + reshape), which the interpreter also runs far faster.
    w = tl.join(tl.join(w0, w2), tl.join(w1, w3))
    return tl.reshape(w, [rows.shape[0], BLOCK])


@triton.jit
def uniform(words):
    """float32 u = ((word >> 9) + 0.5) * 2^-23: exact, in [2^-24, 1 - 2^-24], never 0 or 1."""
    return ((words >> 9).to(tl.float32) + 0.5) * 1.1920928955078125e-07


@triton.jit
def gumbel(words):
    """Standard Gumbel noise -log(-log(u)), float32; finite (|g| < 17) since 0 < u < 1."""
    # tl.log lowers to libdevice's accurate logf on NVIDIA, not to an absolute-error approximate
    # instruction: near u = 1, -log(u) is ~6e-8 and must keep its relative precision, because
    # those draws are the largest noise values, the ones that decide argmaxes.
    return -tl.log(-tl.log(uniform(words)))


@triton.jit
def gumbel_tile(k0, k1, rows, col0, BLOCK: tl.constexpr):
    """Gumbel noise of columns col0 .. col0 + BLOCK - 1 of each row in `rows`, (R, BLOCK) fp32."""
    return gumbel(philox_tile(k0, k1, rows, col0, BLOCK))
