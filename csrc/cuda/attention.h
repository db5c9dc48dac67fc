// CUDA kernels of fused attention (op stem `attention`): the parameters of csrc/cpu/attention.h
// (the contract: the math, the bottom-right causal rule, empty rows -> o = 0 and lse = -inf,
// pooled keys) but the last, which is the stream; each returns a cudaError_t code (0 on
// success). Pointers are device pointers. dtype: 0 float32, 1 float64, 2 float16, 3 bfloat16;
// math in float32 (float64 for float64); lse is float32, or float64 for float64.
// Head dims Dk, Dv must be in [1, 256] and sizes >= 0 (else cudaErrorInvalidValue, nothing
// launched); pool_h, pool_w are both 0 or both > 0 with Sk == pool_h * pool_w and
// M == (pool_h / 2) * (pool_w / 2), and pooling excludes causal.
// Every kernel is deterministic (fixed-order sums, no atomics) and independent of the GPU.
// The forward of short query blocks against long keys (decode) splits the keys over CTAs and
// takes a stream-ordered workspace (cudaMallocAsync) for the partials; the backward takes one of
// B*Hh*N, the double backward of 3*B*Hh*N math-type values.
#pragma once
#include <cstdint>

namespace genfast::cuda {

// o = softmax(scale q k^T, masked) v and lse (null: not written). q, k, v strided as in
// csrc/cpu/attention.h; o (B, Hh, N, Dv) and lse (B, Hh, N) contiguous.
int attention_fwd(const void* q, const void* k, const void* v, void* o, void* lse, int64_t B,
                  int64_t Hh, int64_t N, int64_t M, int64_t Sk, int64_t Dk, int64_t Dv,
                  int64_t sq_b, int64_t sq_h, int64_t sq_n, int64_t sk_b, int64_t sk_h,
                  int64_t sk_n, int64_t sv_b, int64_t sv_h, int64_t sv_n, int64_t pool_h,
                  int64_t pool_w, bool causal, double scale, int dtype, void* stream);

// dq (B, Hh, N, Dk), dk (B, Hh, Sk, Dk), dv (B, Hh, Sk, Dv), every row written (pooled: the
// first maximum of each 2x2 window gets the gradient, all other rows 0). Contiguous buffers.
int attention_bwd(const void* q, const void* k, const void* v, const void* o, const void* lse,
                  const void* dout, void* dq, void* dk, void* dv, int64_t B, int64_t Hh,
                  int64_t N, int64_t M, int64_t Sk, int64_t Dk, int64_t Dv, int64_t pool_h,
                  int64_t pool_w, bool causal, double scale, int dtype, void* stream);

// Gq, Gk, Gv, Gdout of <gq, dq> + <gk, dk> + <gv, dv>; gq / gk / gv null mean zeros. No pooling.
int attention_bwd2(const void* q, const void* k, const void* v, const void* o, const void* lse,
                   const void* dout, const void* gq, const void* gk, const void* gv, void* Gq,
                   void* Gk, void* Gv, void* Gdout, int64_t B, int64_t Hh, int64_t N, int64_t M,
                   int64_t Dk, int64_t Dv, bool causal, double scale, int dtype, void* stream);

}  // namespace genfast::cuda
