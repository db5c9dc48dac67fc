// CUDA whole-network gated PixelCNN generation (csrc/cuda/masked_conv_generate.cu). Contract (the
// packed layout, meta, the noise rows, start): genfast/ops/masked_conv_generate.py. The
// parameters of csrc/cpu/masked_conv_generate.h but two: the seed is a device int64 (as the
// sample kernel's, so no host synchronisation) and the last is the stream; returns a cudaError_t
// code. meta is the same host (CPU) int64 table as on the CPU; every other pointer is on the
// device. dtype: 0 float32, 1 float64, 2 float16, 3 bfloat16; math in float32 (float64 for
// float64).
#pragma once
#include <cstdint>

namespace genfast::cuda {

// Samples the pixels p >= start (raster order p = i*W + j) of B images in one launch: per row
// the vertical stacks of every layer, per pixel the horizontal stacks of every layer, the head,
// the Gumbel-max draw of the `sample` family (Philox row p*B + b of `seed`) and the embedding of
// the token. weights: the canonical packed buffer; meta: int64 [L, A, C, E, k] (meta_len 5);
// cond (B, L, 2C) or null; tokens (B, H, W) int64, read at p < start (values outside [0, A) are
// clamped: checking them would need a host synchronisation) and written at p >= start. The
// caches live in a stream-ordered workspace (cudaMallocAsync) freed after the launch.
int pixelcnn_generate(const void* weights, const int64_t* meta, int64_t meta_len,
                      const void* cond, int64_t* tokens, int64_t B, int64_t H, int64_t W,
                      int64_t start, const int64_t* seed, double inv_temperature, int64_t top_k,
                      double top_p, int dtype, void* stream);

}  // namespace genfast::cuda
