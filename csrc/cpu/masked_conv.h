// C++ CPU kernels of the region convolution behind masked_conv2d and the gated PixelCNN stacks.
// Contract: genfast/ops/masked_conv.py. Every tensor is contiguous (Python makes it so).
// dtype: 0 float32, 1 float64 (the CPU set); math in the data dtype, one rounding at the store.
//
// x (B, Cin, H, W), w (Cout, Cin, kh, kw): the FULL weight, of which only the region's taps are
// read. Tap (r, s) is read for the pair (co, ci) iff r < rows, or r == rows and s < cols, or
// r == rows and s == cols and the centre rule holds: center 0 never, 1 grp(ci) < grp(co),
// 2 grp(ci) <= grp(co), with grp(c, C) = (c * G) / C (integer division; G colour groups).
// Output (B, Cout, Ho, Wo); output (i, j) reads x[i*sh - pt + r, j*sw - pl + s], 0 outside.
#pragma once
#include <cstdint>

namespace genfast::cpu {

// y = b + sum over read taps (accumulate: y += that instead; b may be null).
void masked_conv2d_fwd(const void* x, const void* w, const void* b, void* y, int64_t B,
                       int64_t Cin, int64_t Cout, int64_t H, int64_t W, int64_t Ho, int64_t Wo,
                       int64_t kh, int64_t kw, int64_t sh, int64_t sw, int64_t pt, int64_t pl,
                       int64_t rows, int64_t cols, int center, int64_t G, bool accumulate,
                       int dtype, int num_threads);

// The adjoint of fwd in x (no bias): dx (B, Cin, H, W) = sum over read taps (co, r, s) and
// outputs (i, j) with i*sh - pt + r = p, j*sw - pl + s = q of w[co,ci,r,s] * g[n,co,i,j].
// g (B, Cout, Ho, Wo). Written, not accumulated.
void masked_conv2d_bwd_input(const void* g, const void* w, void* dx, int64_t B, int64_t Cin,
                             int64_t Cout, int64_t H, int64_t W, int64_t Ho, int64_t Wo,
                             int64_t kh, int64_t kw, int64_t sh, int64_t sw, int64_t pt,
                             int64_t pl, int64_t rows, int64_t cols, int center, int64_t G,
                             int dtype, int num_threads);

// dw (Cout, Cin, kh, kw) = sum_{n,i,j} g[n,co,i,j] * x[n, ci, i*sh - pt + r, j*sw - pl + s] on
// the read taps, exactly 0 on the others. Written. Deterministic: the same bits for any
// num_threads (each value summed by one thread in a fixed order; no atomics). Holds transient
// copies of g (transposed) and x (zero-padded), about the size of both inputs; fwd and
// bwd_input hold one padded image per thread.
void masked_conv2d_bwd_weight(const void* g, const void* x, void* dw, int64_t B, int64_t Cin,
                              int64_t Cout, int64_t H, int64_t W, int64_t Ho, int64_t Wo,
                              int64_t kh, int64_t kw, int64_t sh, int64_t sw, int64_t pt,
                              int64_t pl, int64_t rows, int64_t cols, int center, int64_t G,
                              int dtype, int num_threads);

}  // namespace genfast::cpu
