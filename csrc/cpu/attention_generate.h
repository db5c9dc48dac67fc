// C++ CPU native sampling loop of a GPT (token + position embedding -> L pre-LN Transformer
// blocks with a KV cache -> final LayerNorm -> head -> sample -> next token) in one call.
// Contract (the network, packed layout, meta, the context / refill rule, the noise rows):
// genfast/ops/attention_generate.py (/work/notes/gen10-design.md until it lands).
#pragma once
#include <cstdint>

namespace genfast::cpu {

// weights: the packed 1-D buffer [wte (V, C)] [wpe (T, C)], per layer [ln1_w, ln1_b (C),
// W_attn (3C, C), b_attn (3C), W_proj (C, C), b_proj (C), ln2_w, ln2_b (C), W_fc (4C, C),
// b_fc (4C), W_proj2 (C, 4C), b_proj2 (C)], [lnf_w, lnf_b (C), W_head (V, C)], row-major,
// absent biases as zeros; meta: int64 [L, V, C, Hh, T] (meta_len 5, C % Hh == 0).
// tokens (B, N) int64: read at p < start (values in [0, V)), drawn at p = start .. N-1 with
// the `sample` family's draw (csrc/cpu/sample_row.h) from the logits of the context as Philox
// row p * B + b of `seed`. Context: the first draw empties the cache and fills it with tokens
// [max(0, p - T), p); later draws append token p - 1, or, when the cache holds T positions,
// empty it and refill it with tokens [p - keep, p). 1 <= start <= N, 1 <= keep <= T.
// kcache, vcache: L * B * Hh * T * D elements each (D = C / Hh) of the weights' dtype, scratch
// B * (10 C + V + T): workspaces whose contents are unspecified on entry and exit (this backend
// keeps its own layout in the caches and does not touch scratch). Buffers are contiguous host
// memory of dtype 0 (float32) or 1 (float64); float64 computes in float64, float32 in float32.
// Bad meta, sizes, start, keep or given tokens throw std::invalid_argument before anything is
// written. The result does not depend on num_threads.
void attention_generate(const void* weights, const int64_t* meta, int64_t meta_len,
                        int64_t* tokens, void* kcache, void* vcache, void* scratch, int64_t B,
                        int64_t N, int64_t start, int64_t keep, uint64_t seed,
                        double inv_temperature, int64_t top_k, double top_p, int dtype,
                        int num_threads);

}  // namespace genfast::cpu
