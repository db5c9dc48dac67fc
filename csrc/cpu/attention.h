// C++ CPU kernels of fused attention (op stem `attention`). Contract (the math, the causal rule,
// empty rows, pooled keys, the double-backward formulas): genfast/ops/attention.py.
// Layout per (batch, head) slice: q (N, Dk), k (Sk, Dk), v (Sk, Dv), o (N, Dv), lse (N).
// Causal is bottom-right aligned: query i sees key j iff j <= i + (M - N); a row that sees no
// key gets o = 0, lse = -inf and zero gradients. pool_h, pool_w > 0: k / v rows are a
// pool_h x pool_w grid (Sk = pool_h * pool_w) max-pooled 2x2 on load, M = (pool_h/2)*(pool_w/2)
// (never with causal); else pool_h == pool_w == 0 and M == Sk. dtype: 0 float32, 1 float64;
// math and lse in that dtype. Results do not depend on num_threads.
#pragma once
#include <cstdint>

namespace genfast::cpu {

// o = softmax(scale q k^T, masked) v, and lse (log-sum-exp per row) unless lse is null.
// q, k, v are strided views (element strides per batch, head and row; the last dim is unit);
// o (B, Hh, N, Dv) and lse (B, Hh, N) are contiguous. Small N with long M (KV-cache decode)
// splits the keys over threads.
void attention_fwd(const void* q, const void* k, const void* v, void* o, void* lse, int64_t B,
                   int64_t Hh, int64_t N, int64_t M, int64_t Sk, int64_t Dk, int64_t Dv,
                   int64_t sq_b, int64_t sq_h, int64_t sq_n, int64_t sk_b, int64_t sk_h,
                   int64_t sk_n, int64_t sv_b, int64_t sv_h, int64_t sv_n, int64_t pool_h,
                   int64_t pool_w, bool causal, double scale, int dtype, int num_threads);

// First-order backward from the saved o and lse: dq (B, Hh, N, Dk), dk (B, Hh, Sk, Dk),
// dv (B, Hh, Sk, Dv); with pooling dk / dv have the unpooled shape, the pooled gradient routed
// to the first maximum of each 2x2 window and 0 elsewhere. Every buffer contiguous.
void attention_bwd(const void* q, const void* k, const void* v, const void* o, const void* lse,
                   const void* dout, void* dq, void* dk, void* dv, int64_t B, int64_t Hh,
                   int64_t N, int64_t M, int64_t Sk, int64_t Dk, int64_t Dv, int64_t pool_h,
                   int64_t pool_w, bool causal, double scale, int dtype, int num_threads);

// Double backward: the gradients Gq, Gk, Gv, Gdout of <gq, dq> + <gk, dk> + <gv, dv> w.r.t.
// q, k, v, dout, where (dq, dk, dv) is attention_bwd's result. gq / gk / gv null mean zeros.
// No pooling (the caller pools and routes). Every buffer contiguous.
void attention_bwd2(const void* q, const void* k, const void* v, const void* o, const void* lse,
                    const void* dout, const void* gq, const void* gk, const void* gv, void* Gq,
                    void* Gk, void* Gv, void* Gdout, int64_t B, int64_t Hh, int64_t N,
                    int64_t M, int64_t Dk, int64_t Dv, bool causal, double scale, int dtype,
                    int num_threads);

}  // namespace genfast::cpu
