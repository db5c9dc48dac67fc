// CUDA kernels of the fused WaveNet residual layer (csrc/cuda/causal_conv_layer.cu). Contract:
// genfast/ops/causal_conv_layer.py. The parameters of csrc/cpu/causal_conv_layer.h but the last,
// which is the stream; each returns a cudaError_t code. Pointers are device pointers; every
// tensor is contiguous. dtype: 0 float32, 1 float64, 2 float16, 3 bfloat16; math in float32
// (float64 for float64), one rounding at the store. R residual channels, G = 2*H gate channels
// (H = G/2: the first H rows of the dilated conv are the filter f, the last H the gate q), S
// skip channels.
#pragma once
#include <cstdint>

namespace genfast::cuda {

// a = causal_conv1d(x~ = [h | x], w_dil (G, R, K), b_dil) + cond; z = tanh(f) * sigmoid(q);
// x_out = x + w_res (R, H) z + b_res;  skip_out = skip + w_skip (S, H) z + b_skip.
// h (B, R, P) or null (zeros); cond null (cond_t = 0), (B, G, 1) (cond_t = 1, global) or
// (B, G, T) (cond_t = T, local); skip (B, S, T) or null (zeros); every bias may be null.
int wavenet_layer_fwd(const void* x, const void* h, const void* cond, int64_t cond_t,
                      const void* skip, const void* w_dil, const void* b_dil, const void* w_res,
                      const void* b_res, const void* w_skip, const void* b_skip, void* x_out,
                      void* skip_out, int64_t B, int64_t R, int64_t G, int64_t S, int64_t T,
                      int64_t K, int64_t dilation, int dtype, void* stream);

// Given gx = dL/dx_out and gs = dL/dskip_out (B, R, T) and (B, S, T), recomputes a and z and
// writes da = dL/da (B, G, T), dw_res (R, H) = sum_{b,t} gx z^T and dw_skip (S, H) = sum gs z^T
// (written; deterministic: a fixed summation order, no atomics). The rest of the layer's
// gradient (dx, dh, dw_dil, biases, cond) is formed from da by Python with the conv kernels.
// Takes a stream-ordered workspace of B*H*T math-type values (cudaMallocAsync on the stream).
int wavenet_layer_bwd(const void* x, const void* h, const void* cond, int64_t cond_t,
                      const void* w_dil, const void* b_dil, const void* w_res,
                      const void* w_skip, const void* gx, const void* gs, void* da,
                      void* dw_res, void* dw_skip, int64_t B, int64_t R, int64_t G, int64_t S,
                      int64_t T, int64_t K, int64_t dilation, int dtype, void* stream);

}  // namespace genfast::cuda
