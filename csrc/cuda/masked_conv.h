// CUDA kernels of the region convolution behind masked_conv2d and the gated PixelCNN stacks
// (csrc/cuda/masked_conv.cu). Contract: genfast/ops/masked_conv.py. The parameters of
// csrc/cpu/masked_conv.h but the last, which is the stream; each returns a cudaError_t code
// (cudaErrorInvalidValue for sizes or pointers that do not fit). Pointers are device pointers;
// every tensor is contiguous (Python makes it so). dtype: 0 float32, 1 float64, 2 float16,
// 3 bfloat16; math in float32 (float64 for float64), one rounding at the store.
//
// x (B, Cin, H, W), w (Cout, Cin, kh, kw): the FULL weight, of which only the region's taps are
// read. Tap (r, s) is read for the pair (co, ci) iff r < rows, or r == rows and s < cols, or
// r == rows and s == cols and the centre rule holds: center 0 never, 1 grp(ci) < grp(co),
// 2 grp(ci) <= grp(co), with grp(c, C) = (c * G) / C (integer division; G colour groups).
// Output (B, Cout, Ho, Wo); output (i, j) reads x[i*sh - pt + r, j*sw - pl + s], 0 outside.
#pragma once
#include <cstdint>

namespace genfast::cuda {

// y = b + sum over read taps (accumulate: y += that instead; b may be null).
int masked_conv2d_fwd(const void* x, const void* w, const void* b, void* y, int64_t B,
                      int64_t Cin, int64_t Cout, int64_t H, int64_t W, int64_t Ho, int64_t Wo,
                      int64_t kh, int64_t kw, int64_t sh, int64_t sw, int64_t pt, int64_t pl,
                      int64_t rows, int64_t cols, int center, int64_t G, bool accumulate,
                      int dtype, void* stream);

// The adjoint of fwd in x (no bias): dx (B, Cin, H, W) = sum over read taps (co, r, s) and
// outputs (i, j) with i*sh - pt + r = p, j*sw - pl + s = q of w[co,ci,r,s] * g[n,co,i,j].
// g (B, Cout, Ho, Wo). Written, not accumulated.
int masked_conv2d_bwd_input(const void* g, const void* w, void* dx, int64_t B, int64_t Cin,
                            int64_t Cout, int64_t H, int64_t W, int64_t Ho, int64_t Wo,
                            int64_t kh, int64_t kw, int64_t sh, int64_t sw, int64_t pt,
                            int64_t pl, int64_t rows, int64_t cols, int center, int64_t G,
                            int dtype, void* stream);

// dw (Cout, Cin, kh, kw) = sum_{n,i,j} g[n,co,i,j] * x[n, ci, i*sh - pt + r, j*sw - pl + s] on
// the read taps, exactly 0 on the others. Written. Deterministic: the pixel range is split in a
// way that depends on the sizes only, and the partial sums are added in a fixed order by a
// second kernel (no atomics: the same bits on every run and every GPU). Takes a stream-ordered
// workspace (cudaMallocAsync on the stream).
int masked_conv2d_bwd_weight(const void* g, const void* x, void* dw, int64_t B, int64_t Cin,
                             int64_t Cout, int64_t H, int64_t W, int64_t Ho, int64_t Wo,
                             int64_t kh, int64_t kw, int64_t sh, int64_t sw, int64_t pt,
                             int64_t pl, int64_t rows, int64_t cols, int center, int64_t G,
                             int dtype, void* stream);

}  // namespace genfast::cuda
