// C++ CPU kernels of the fused WaveNet residual layer. Contract: genfast/ops/causal_conv_layer.py.
// Every tensor is contiguous. R residual channels, G = 2*H gate channels (H = G/2: the first
// H rows of the dilated conv are the filter f, the last H the gate q), S skip channels.
// dtype: 0 float32, 1 float64 (anything else throws std::invalid_argument).
//
// Work is split into (b, 64-step time tile) items (causal_conv_layer.cpp). tanh and sigmoid come
// from one exp each with the exponent capped (40 in float32, 350 in float64), so any finite a
// gives finite outputs and gradients (saturated where |a| is large). z's relative error: about
// 3e-7 in float32 (torch's tanh * sigmoid: 2e-7), 7e-16 in float64, measured against float64.
// Results depend on the ISA copy (common/isa.h: FMA contraction), never on num_threads.
#pragma once
#include <cstdint>

namespace genfast::cpu {

// a = causal_conv1d(x~ = [h | x], w_dil (G, R, K), b_dil) + cond; z = tanh(f) * sigmoid(q);
// x_out = x + w_res (R, H) z + b_res;  skip_out = skip + w_skip (S, H) z + b_skip.
// h (B, R, P) or null (zeros); cond null (cond_t = 0), (B, G, 1) (cond_t = 1, global) or
// (B, G, T) (cond_t = T, local); skip (B, S, T) or null (zeros); every bias may be null.
void wavenet_layer_fwd(const void* x, const void* h, const void* cond, int64_t cond_t,
                       const void* skip, const void* w_dil, const void* b_dil, const void* w_res,
                       const void* b_res, const void* w_skip, const void* b_skip, void* x_out,
                       void* skip_out, int64_t B, int64_t R, int64_t G, int64_t S, int64_t T,
                       int64_t K, int64_t dilation, int dtype, int num_threads);

// Given gx = dL/dx_out and gs = dL/dskip_out (B, R, T) and (B, S, T), recomputes a and z and
// writes da = dL/da (B, G, T), dw_res (R, H) = sum_{b,t} gx z^T and dw_skip (S, H) = sum gs z^T
// (written, deterministic for any num_threads: fixed chunks of items, each summed in item order,
// the chunk partials summed in chunk order). Nothing a-sized is read: a, the gate and z are
// recomputed per tile. The rest of the layer's gradient (dx, dh, dw_dil, biases, cond) is
// formed from da by Python with the conv kernels. B or T == 0 writes zero dw_res and dw_skip.
void wavenet_layer_bwd(const void* x, const void* h, const void* cond, int64_t cond_t,
                       const void* w_dil, const void* b_dil, const void* w_res,
                       const void* w_skip, const void* gx, const void* gs, void* da,
                       void* dw_res, void* dw_skip, int64_t B, int64_t R, int64_t G, int64_t S,
                       int64_t T, int64_t K, int64_t dilation, int dtype, int num_threads);

}  // namespace genfast::cpu
