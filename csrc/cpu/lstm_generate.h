// C++ CPU native sampling loop of an LSTM language model (embedding -> L-layer LSTM -> head ->
// sample -> next token, N steps in one call). Contract (the packed layout, meta, the state, the
// noise rows, start): genfast/ops/lstm_generate.py.
#pragma once
#include <cstdint>

namespace genfast::cpu {

// weights: the packed 1-D buffer [tab (V, 4H) = emb w_ih0^T + b_ih0 + b_hh0, w_hh0 (4H, H),
// per layer l >= 1: w_ih (4H, H), w_hh (4H, H), b (4H) = b_ih + b_hh; w_out (V, H), b_out (V)];
// meta: int64 [L, V, H] (meta_len 3). tokens (B, N) int64: read at p < start (values in [0, V),
// token N-1 is never read), written at p >= start. h, c (L, B, H): the state BEFORE consuming
// token 0 on entry, the state before consuming token N-1 on return. For p = 1 .. N-1: token
// p-1 goes through the stack, logits = w_out h_L + b_out; for p >= start, token p is the
// `sample` family's draw (csrc/cpu/sample_row.h; inv_temperature, top_k, top_p) from the
// logits as Philox row (offset + p)*B + b of `seed`. 1 <= start <= N; offset >= 0 is the
// position of token 0 in the whole stream (continuation calls). Buffers are contiguous host
// memory of dtype 0 (float32) or 1 (float64); float64 computes in float64, float32 in float32.
// Bad meta, sizes, start, offset or given tokens throw std::invalid_argument before anything is
// written.
// The result does not depend on num_threads.
void lstm_generate(const void* weights, const int64_t* meta, int64_t meta_len, int64_t* tokens,
                   void* h, void* c, int64_t B, int64_t N, int64_t start, int64_t offset,
                   uint64_t seed, double inv_temperature, int64_t top_k, double top_p, int dtype,
                   int num_threads);

}  // namespace genfast::cpu
