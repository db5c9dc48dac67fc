// CUDA whole-network WaveNet generation (csrc/cuda/causal_conv_generate.cu). Contract (the
// packed layout, the state, the noise rows): genfast/ops/causal_conv_generate.py. The parameters
// of csrc/cpu/causal_conv_generate.h but two: the seed is a device int64 (as the sample
// kernel's, so no host synchronisation) and the last is the stream; returns a cudaError_t code.
// meta is the same host (CPU) int64 table as on the CPU; every other pointer is on the device.
// dtype: 0 float32, 1 float64, 2 float16, 3 bfloat16; math in float32 (float64 for float64),
// rings stored in the model dtype.
#pragma once
#include <cstdint>

namespace genfast::cuda {

// Runs n autoregressive steps for B streams in one call: input -> L residual layers (ring
// queues in `rings`) -> skip head -> Gumbel-max sample of the `sample` family -> next input.
// weights: the canonical packed buffer; meta: int64 table of meta_len entries; gcond (B, L, G)
// or null; lcond (B, n, L, G) or null; rings (B, sum_l (K-1)*d_l*R) and pos (B, 2) = (steps
// done, previous token) are updated in place so the next call continues exactly; tokens (B, n).
int wavenet_generate(const void* weights, const int64_t* meta, int64_t meta_len,
                     const void* gcond, const void* lcond, void* rings, int64_t* pos,
                     int64_t* tokens, int64_t B, int64_t n, const int64_t* seed,
                     double inv_temperature, int64_t top_k, double top_p, int dtype,
                     void* stream);

}  // namespace genfast::cuda
