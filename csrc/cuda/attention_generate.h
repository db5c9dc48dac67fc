// CUDA native sampling loop of a GPT (csrc/cuda/attention_generate.cu). Contract (the packed
// layout, meta, the context and refill rule, the noise rows): genfast/ops/attention_generate.py;
// csrc/cpu/attention_generate.h is the CPU twin. The parameters of the CPU declaration but two:
// the seed is a device int64 (as lstm_generate's, so no host synchronisation) and the last is the
// stream; returns a cudaError_t code. meta is the same host (CPU) int64 table as on the CPU;
// every other pointer is on the device.
#pragma once
#include <cstdint>

namespace genfast::cuda {

// weights: the packed 1-D buffer of dtype 0 float32, 1 float64, 2 float16 or 3 bfloat16; meta:
// host int64 [L, V, C, Hh, T] (meta_len 5). tokens (B, N) int64: read at p < start (values
// outside [0, V) are clamped: checking them would need a host synchronisation), written at
// p >= start, token p drawn as Philox row p * B + b of *seed. kcache, vcache (L, B, Hh, T, D) of
// the work dtype (float64 for float64 weights, else float32): the KV cache, contents unspecified
// on entry and exit. scratch is not used (the kernel sizes its own workspace, stream-ordered).
// 1 <= start <= N, 1 <= keep <= T; bad meta or sizes: cudaErrorInvalidValue, nothing launched.
int attention_generate(const void* weights, const int64_t* meta, int64_t meta_len,
                       int64_t* tokens, void* kcache, void* vcache, void* scratch, int64_t B,
                       int64_t N, int64_t start, int64_t keep, const int64_t* seed,
                       double inv_temperature, int64_t top_k, double top_p, int dtype,
                       void* stream);

}  // namespace genfast::cuda
