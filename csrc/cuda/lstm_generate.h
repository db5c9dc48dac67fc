// CUDA native sampling loop of an LSTM language model (csrc/cuda/lstm_generate.cu). Contract (the
// packed layout, meta, the state, the noise rows, start, offset): genfast/ops/lstm_generate.py.
// The parameters of csrc/cpu/lstm_generate.h but two: the seed is a device int64 (as the sample
// kernel's, so no host synchronisation) and the last is the stream; returns a cudaError_t code.
// meta is the same host (CPU) int64 table as on the CPU; every other pointer is on the device.
// dtype: 0 float32, 1 float64, 2 float16, 3 bfloat16; math and the state during the call in
// float32 (float64 for float64), h and c stored back in the model dtype.
//
// One persistent cooperative kernel for every batch size: a step of a batch-1 stream is a chain
// of GEMVs over the whole model (2 x 512: 12 MB of float32 weights), far more than one CTA can
// read per microsecond, so each layer step splits its hidden units over up to one CTA per SM
// (each CTA the four gate rows of its units, for every stream), with a grid barrier after each
// layer; the head splits its rows over the CTAs the same way, then after a barrier each stream's
// draw is done by one CTA (csrc/cuda/draw_block.cuh, the `sample` family's). Streams go through a
// CTA's rows 1-8 at a time, each weight read feeding every stream of the group, so large batches
// reuse the weights (a CTA per stream would read the whole model once per stream and step).
// A CTA's weight rows (its units' gate rows of every layer, its head rows) are copied into its
// shared memory once per call when they fit (2 x 512 float32 on 128 SMs: 96 KB a CTA; sm_80 and
// newer), else read from L2 every step. Needs a device with cooperative launch
// (cudaErrorNotSupported otherwise); the workspace (the float32/float64 state and logits) is
// stream-ordered (cudaMallocAsync) and freed after the launch. Each dot product is one warp's, lanes striding the row and a butterfly summing it: the
// order depends on neither the batch, the grid nor the device, so a stream's tokens do not
// either.
#pragma once
#include <cstdint>

namespace genfast::cuda {

// weights: the packed 1-D buffer [tab (V, 4H), w_hh0 (4H, H), per layer l >= 1: w_ih (4H, H),
// w_hh (4H, H), b (4H); w_out (V, H), b_out (V)]; meta: host int64 [L, V, H] (meta_len 3).
// tokens (B, N) int64: read at p < start (values outside [0, V) are clamped: checking them
// would need a host synchronisation), written at p >= start. h, c (L, B, H): the state before
// token 0 on entry, before token N-1 on return. Token p (p >= start) is drawn from the logits
// after token p-1 as Philox row (offset + p)*B + b of *seed. 1 <= start <= N, offset >= 0.
int lstm_generate(const void* weights, const int64_t* meta, int64_t meta_len, int64_t* tokens,
                  void* h, void* c, int64_t B, int64_t N, int64_t start, int64_t offset,
                  const int64_t* seed, double inv_temperature, int64_t top_k, double top_p,
                  int dtype, void* stream);

}  // namespace genfast::cuda
