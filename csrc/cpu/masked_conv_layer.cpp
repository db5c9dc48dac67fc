// C++ CPU kernels of the gated PixelCNN layer's gate (contract: masked_conv_layer.h and
// genfast/ops/masked_conv_layer.py).
//
// Work item: (image b, channel c < C), the pair of rows u[b, c] (filter) and u[b, C + c]
// (gate) over the N pixels; each item writes its own rows and its own two dcond values, so no
// item reads another's result and the bits never depend on the thread count. The element loops
// run kLanes pixels at a time with per-lane partial sums (fastmath.h's lane_sum pattern), which
// is what lets GCC vectorise the recomputed exp and the dcond reduction without -ffast-math.
#include "cpu/masked_conv_layer.h"

#include <algorithm>
#include <cmath>
#include <cstdint>

#include "common/dtype.h"
#include "common/fastmath.h"
#include "common/isa.h"
#include "common/parallel.h"

namespace genfast::cpu {
namespace {

using fastmath::kLanes;

// Gate pieces from one exp each (the WaveNet layer's scheme, causal_conv_layer.cpp):
// e1 = e^{-2f}, e2 = e^{-q}, tanh f = (1 - e1) / (1 + e1), sigmoid q = 1 / (1 + e2). The
// exponents are capped (40 in float, 350 in double) so (1 + e1)(1 + e2) stays finite: no
// inf/inf NaN for large |a|, where tanh and sigmoid are saturated to the last bit anyway.
GENFAST_INLINE float gate_exp(float u, int32_t cap) {
  // min(u, 40) on the signed bits: a float select would become a branch and stop the loop
  // from vectorising (see fastmath::log).
  const int32_t ub = static_cast<int32_t>(fastmath::bits(u));
  return fastmath::exp(fastmath::from_bits(static_cast<uint32_t>(ub < cap ? ub : cap)));
}
GENFAST_INLINE double gate_exp(double u, int32_t) { return std::exp(std::min(u, 350.0)); }

// The bits of the float cap 40, hidden from the optimiser: with a known constant GCC folds the
// capped path to exp(40) and branches on it, which kept the avx2 and sse2 copies scalar.
GENFAST_INLINE int32_t exp_cap() {
  int32_t cap = static_cast<int32_t>(fastmath::bits(40.0f));
  asm("" : "+r"(cap));
  return cap;
}

// (1 + e1) tanh f, i.e. 1 - e1, without its cancellation near f = 0: below |f| = 0.625
// Cephes' tanhf polynomial (~1 ulp) times (1 + e1), chosen by a bit mask (no float select).
GENFAST_INLINE float tanh_num(float f, float e1) {
  const float z = f * f;
  float p = -5.70498872745e-3f;
  p = p * z + 2.06390887954e-2f;
  p = p * z - 5.37397155531e-2f;
  p = p * z + 1.33314422036e-1f;
  p = p * z - 3.33332819422e-1f;
  const float small = (p * z * f + f) * (1.0f + e1);
  // A signed compare (|f|'s bits are non-negative as int32): AVX2 has no unsigned one, and
  // GCC's avx2 copy left the whole loop scalar with it.
  const int32_t af = static_cast<int32_t>(fastmath::bits(f) & 0x7FFFFFFFu);
  const uint32_t m = af < 0x3F200000 ? 0xFFFFFFFFu : 0u;
  return fastmath::from_bits((fastmath::bits(small) & m) | (fastmath::bits(1.0f - e1) & ~m));
}
GENFAST_INLINE double tanh_num(double f, double) { return -std::expm1(std::min(-2 * f, 350.0)); }

template <typename T>
struct Gate {
  const T *u, *cond, *dout;
  T *out, *du, *dcond;
  int64_t C, N;
};

template <typename T>
GENFAST_INLINE void fwd_row(const T* f, const T* q, T cf, T cq, T* out, int64_t n) {
  const int32_t cap = exp_cap();
  for (int64_t j = 0; j < n; ++j) {
    const T a = f[j] + cf, b = q[j] + cq;
    const T e1 = gate_exp(T(-2) * a, cap), e2 = gate_exp(-b, cap);
    out[j] = tanh_num(a, e1) / ((T(1) + e1) * (T(1) + e2));
  }
}

// The backward of kLanes pixels into gf, gq: a loop of its own, so the stores to du and the
// lane sums do not keep it from vectorising (avx512 does; GCC 12 leaves the avx2 copy scalar).
template <typename T>
GENFAST_INLINE void bwd_lanes(const T* f, const T* q, T cf, T cq, const T* d, T* gf, T* gq,
                              int32_t cap) {
  for (int j = 0; j < kLanes; ++j) {
    const T a = f[j] + cf, b = q[j] + cq;
    const T e1 = gate_exp(T(-2) * a, cap), e2 = gate_exp(-b, cap);
    const T p1 = T(1) + e1, p2 = T(1) + e2;
    const T r = T(1) / (p1 * p2);
    const T t = tanh_num(a, e1) * p2 * r, s = p1 * r;
    gf[j] = d[j] * s * (T(1) - t * t);
    gq[j] = d[j] * t * s * (T(1) - s);
  }
}

template <typename T, bool kAcc>
GENFAST_INLINE void bwd_row(const T* f, const T* q, T cf, T cq, const T* d, T* df, T* dq,
                            int64_t n, T* dcf, T* dcq) {
  T sf[kLanes] = {}, sq[kLanes] = {}, gf[kLanes], gq[kLanes];
  const int32_t cap = exp_cap();
  for (int64_t i = 0; i < n; i += kLanes) {
    const int64_t m = std::min<int64_t>(kLanes, n - i);
    if (m == kLanes) {
      bwd_lanes(f + i, q + i, cf, cq, d + i, gf, gq, cap);
    } else {  // the tail through zero-padded copies (a zero dout gives zero gradients)
      T ft[kLanes] = {}, qt[kLanes] = {}, dt[kLanes] = {};
      for (int64_t j = 0; j < m; ++j) ft[j] = f[i + j], qt[j] = q[i + j], dt[j] = d[i + j];
      bwd_lanes(ft, qt, cf, cq, dt, gf, gq, cap);
    }
    for (int64_t j = 0; j < m; ++j) {
      df[i + j] = kAcc ? df[i + j] + gf[j] : gf[j];
      dq[i + j] = kAcc ? dq[i + j] + gq[j] : gq[j];
    }
    for (int j = 0; j < kLanes; ++j) sf[j] += gf[j], sq[j] += gq[j];
  }
  if (!dcf) return;
  T tf = T(0), tq = T(0);
  for (int j = 0; j < kLanes; ++j) tf += sf[j], tq += sq[j];
  *dcf = kAcc ? *dcf + tf : tf;
  *dcq = kAcc ? *dcq + tq : tq;
}

template <typename T>
GENFAST_INLINE void fwd_block(const Gate<T>& g, int64_t i0, int64_t i1) {
  for (int64_t i = i0; i < i1; ++i) {
    const int64_t b = i / g.C, c = i % g.C, C2 = 2 * g.C;
    const T* f = g.u + (b * C2 + c) * g.N;
    const T* q = g.u + (b * C2 + g.C + c) * g.N;
    const T cf = g.cond ? g.cond[b * C2 + c] : T(0);
    const T cq = g.cond ? g.cond[b * C2 + g.C + c] : T(0);
    fwd_row(f, q, cf, cq, g.out + (b * g.C + c) * g.N, g.N);
  }
}

template <typename T, bool kAcc>
GENFAST_INLINE void bwd_block(const Gate<T>& g, int64_t i0, int64_t i1) {
  for (int64_t i = i0; i < i1; ++i) {
    const int64_t b = i / g.C, c = i % g.C, C2 = 2 * g.C;
    const int64_t rf = (b * C2 + c) * g.N, rq = (b * C2 + g.C + c) * g.N;
    const T cf = g.cond ? g.cond[b * C2 + c] : T(0);
    const T cq = g.cond ? g.cond[b * C2 + g.C + c] : T(0);
    T* dcf = g.dcond ? g.dcond + b * C2 + c : nullptr;
    T* dcq = g.dcond ? g.dcond + b * C2 + g.C + c : nullptr;
    bwd_row<T, kAcc>(g.u + rf, g.u + rq, cf, cq, g.dout + (b * g.C + c) * g.N, g.du + rf,
                     g.du + rq, g.N, dcf, dcq);
  }
}

GENFAST_MULTIVERSIONED(fwd_f32, (const Gate<float>& g, int64_t i0, int64_t i1), (g, i0, i1),
                       fwd_block<float>(g, i0, i1))
GENFAST_MULTIVERSIONED(bwd_set_f32, (const Gate<float>& g, int64_t i0, int64_t i1), (g, i0, i1),
                       (bwd_block<float, false>(g, i0, i1)))
GENFAST_MULTIVERSIONED(bwd_acc_f32, (const Gate<float>& g, int64_t i0, int64_t i1), (g, i0, i1),
                       (bwd_block<float, true>(g, i0, i1)))

template <typename T>
void gate_fwd(const Gate<T>& g, int64_t B, int num_threads) {
  parallel_for(B * g.C, g.N * 2, num_threads, [&](int64_t i0, int64_t i1) {
    if constexpr (sizeof(T) == 4) fwd_f32(g, i0, i1); else fwd_block<T>(g, i0, i1);
  });
}

template <typename T>
void gate_bwd(const Gate<T>& g, int64_t B, bool acc, int num_threads) {
  parallel_for(B * g.C, g.N * 4, num_threads, [&](int64_t i0, int64_t i1) {
    if constexpr (sizeof(T) == 4) {
      (acc ? bwd_acc_f32 : bwd_set_f32)(g, i0, i1);
    } else {
      if (acc) bwd_block<T, true>(g, i0, i1); else bwd_block<T, false>(g, i0, i1);
    }
  });
}

template <typename T>
Gate<T> view(const void* u, const void* cond, const void* dout, void* out, void* du,
             void* dcond, int64_t C, int64_t N) {
  return Gate<T>{static_cast<const T*>(u), static_cast<const T*>(cond),
                 static_cast<const T*>(dout), static_cast<T*>(out), static_cast<T*>(du),
                 static_cast<T*>(dcond), C, N};
}

}  // namespace

void pixelcnn_gate_fwd(const void* u, const void* cond, void* out, int64_t B, int64_t C,
                       int64_t N, int dtype, int num_threads) {
  const bool f32 = cpu_is_float32(dtype, "pixelcnn gate");
  if (B <= 0 || C <= 0 || N <= 0) return;
  if (f32)
    gate_fwd(view<float>(u, cond, nullptr, out, nullptr, nullptr, C, N), B, num_threads);
  else
    gate_fwd(view<double>(u, cond, nullptr, out, nullptr, nullptr, C, N), B, num_threads);
}

void pixelcnn_gate_bwd(const void* u, const void* cond, const void* dout, void* du, void* dcond,
                       int64_t B, int64_t C, int64_t N, bool accumulate, int dtype,
                       int num_threads) {
  const bool f32 = cpu_is_float32(dtype, "pixelcnn gate");
  if (B <= 0 || C <= 0) return;
  // N == 0 still writes dcond (zeros) unless accumulating: the items run with empty rows.
  N = std::max<int64_t>(N, 0);
  if (f32)
    gate_bwd(view<float>(u, cond, dout, nullptr, du, dcond, C, N), B, accumulate, num_threads);
  else
    gate_bwd(view<double>(u, cond, dout, nullptr, du, dcond, C, N), B, accumulate,
             num_threads);
}

}  // namespace genfast::cpu
