// C++ CPU kernels of the gated PixelCNN layer's gate (contract: genfast/ops/masked_conv_layer.py).
// The layer's convolutions are region convs (masked_conv.h); these are its one fused pointwise
// step and that step's backward. Every tensor is contiguous. N = H * W pixels per channel.
// dtype: 0 float32, 1 float64 (anything else throws std::invalid_argument); math in the data
// dtype. Results depend on the ISA copy (common/isa.h), never on num_threads.
#pragma once
#include <cstdint>

namespace genfast::cpu {

// out (B, C, N) = tanh(u[:, :C] + cond[:, :C]) * sigmoid(u[:, C:] + cond[:, C:]) with
// u (B, 2C, N) the pre-activation and cond (B, 2C) one value per (image, channel) broadcast
// over the pixels, or null (zero). Written.
void pixelcnn_gate_fwd(const void* u, const void* cond, void* out, int64_t B, int64_t C,
                       int64_t N, int dtype, int num_threads);

// The gate's backward from u, cond and dout = dL/dout (B, C, N); tanh and sigmoid are
// recomputed (nothing but u is kept from the forward). With a = u + cond, t = tanh(a[:C]),
// s = sigmoid(a[C:]):  g[:, c] = dout * s * (1 - t^2),  g[:, C + c] = dout * t * s * (1 - s).
// du (B, 2C, N) = g, or du += g with accumulate. dcond (B, 2C) = sum over the N pixels of g
// (dcond += that with accumulate), or null (not formed). Each dcond value is summed by one
// work item in a fixed order: the same bits for every num_threads.
void pixelcnn_gate_bwd(const void* u, const void* cond, const void* dout, void* du, void* dcond,
                       int64_t B, int64_t C, int64_t N, bool accumulate, int dtype,
                       int num_threads);

}  // namespace genfast::cpu
