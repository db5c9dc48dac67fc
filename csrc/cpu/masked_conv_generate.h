// C++ CPU whole-network gated PixelCNN generation. Contract (the packed layout, meta, the noise
// rows, start): genfast/ops/masked_conv_generate.py.
#pragma once
#include <cstdint>

namespace genfast::cpu {

// Samples the pixels p >= start (raster order p = i*W + j) of B images in one call: per row the
// vertical stacks of every layer, per pixel the horizontal stacks of every layer, the head, the
// Gumbel-max draw of the `sample` family (Philox row p*B + b of `seed`) and the embedding of the
// token. weights: the canonical packed buffer; meta: int64 [L, A, C, E, k] (meta_len 5);
// cond (B, L, 2C) or null; tokens (B, H, W) int64, read at p < start (values in [0, A)) and
// written at p >= start. Buffers are contiguous host memory of dtype 0 (float32) or 1 (float64).
// Bad meta, start or given tokens throw std::invalid_argument before anything is written.
// Images are split over num_threads; the result does not depend on the thread count.
void pixelcnn_generate(const void* weights, const int64_t* meta, int64_t meta_len,
                       const void* cond, int64_t* tokens, int64_t B, int64_t H, int64_t W,
                       int64_t start, uint64_t seed, double inv_temperature, int64_t top_k,
                       double top_p, int dtype, int num_threads);

}  // namespace genfast::cpu
