// CUDA kernels of the gated PixelCNN layer's gate (csrc/cuda/masked_conv_layer.cu). Contract:
// genfast/ops/masked_conv_layer.py. The parameters of csrc/cpu/masked_conv_layer.h but the last,
// which is the stream; each returns a cudaError_t code (cudaErrorInvalidValue for sizes or
// pointers that do not fit). Pointers are device pointers; every tensor is contiguous.
// N = H * W pixels per channel. dtype: 0 float32, 1 float64, 2 float16, 3 bfloat16; math in
// float32 (float64 for float64), one rounding at the store.
#pragma once
#include <cstdint>

namespace genfast::cuda {

// out (B, C, N) = tanh(u[:, :C] + cond[:, :C]) * sigmoid(u[:, C:] + cond[:, C:]) with
// u (B, 2C, N) the pre-activation and cond (B, 2C) one value per (image, channel) broadcast
// over the pixels, or null (zero). Written.
int pixelcnn_gate_fwd(const void* u, const void* cond, void* out, int64_t B, int64_t C,
                      int64_t N, int dtype, void* stream);

// The gate's backward from u, cond and dout = dL/dout (B, C, N); tanh and sigmoid are
// recomputed. With a = u + cond, t = tanh(a[:C]), s = sigmoid(a[C:]):
// g[:, c] = dout * s * (1 - t^2),  g[:, C + c] = dout * t * s * (1 - s).
// du (B, 2C, N) = g, or du += g with accumulate. dcond (B, 2C) = sum over the N pixels of g
// (dcond += that with accumulate), or null (not formed); N == 0 writes zeros (unless
// accumulating). Deterministic: each dcond value is summed by one thread group in a fixed
// assignment and tree that depend on N only (no atomics).
int pixelcnn_gate_bwd(const void* u, const void* cond, const void* dout, void* du, void* dcond,
                      int64_t B, int64_t C, int64_t N, bool accumulate, int dtype, void* stream);

}  // namespace genfast::cuda
