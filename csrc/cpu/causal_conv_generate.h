// C++ CPU whole-network WaveNet generation. Contract (the packed layout, the state, the noise
// rows): genfast/ops/causal_conv_generate.py.
#pragma once
#include <cstdint>

namespace genfast::cpu {

// Runs n autoregressive steps for B streams in one call: input -> L residual layers (ring
// queues in `rings`) -> skip head -> Gumbel-max sample of the `sample` family -> next input.
// weights: the canonical packed buffer; meta: int64 table of meta_len entries; gcond (B, L, G)
// or null; lcond (B, n, L, G) or null; rings (B, sum_l (K-1)*d_l*R) and pos (B, 2) = (steps
// done, previous token) are updated in place so the next call continues exactly; tokens (B, n).
// Every buffer is contiguous host memory of dtype 0 (float32) or 1 (float64); seed keys the
// Philox stream, whose row p*B + b draws step p of stream b. Bad meta or pos values throw
// std::invalid_argument before anything is written. Streams are split over num_threads with
// no barrier between steps; the result does not depend on the thread count.
void wavenet_generate(const void* weights, const int64_t* meta, int64_t meta_len,
                      const void* gcond, const void* lcond, void* rings, int64_t* pos,
                      int64_t* tokens, int64_t B, int64_t n, uint64_t seed,
                      double inv_temperature, int64_t top_k, double top_p, int dtype,
                      int num_threads);

}  // namespace genfast::cpu
