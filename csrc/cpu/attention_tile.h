// Tiled building blocks of the CPU attention kernels (attention.cpp, attention_bwd2.cpp).
//
// The extension links no BLAS, so every product of an attention block (S = q k^T, o += P v,
// dP = dO v^T, dV += P^T dO, dK += dS^T q, dQ += dS k) is one outer-product micro-kernel: R <= MR
// output rows x NV column vectors stay in registers while the reduction streams past, each step
// MR broadcasts of A against NV contiguous loads of B. The column (vector) axis is whatever the
// caller packed contiguously: keys for S and dP (B = k^T or v^T panels), head dims for the rest.
// A is read through element strides (a row stride and a reduction stride), so P^T and dS^T
// need no transpose: they are P and dS read column-wise.
//
// Every function here is compiled once per ISA (an inline copy per target, picked by the `isa`
// argument the caller read from isa::active() once per call), so the kernels' own loops around
// them can stay plain code. Each output element is one chain of FMAs over the reduction in a
// fixed order, whatever R, NV or the tile position: bits never depend on how work is cut.
//
// Stable interface (attention_bwd2.cpp includes this header):
//   vec_len<T>(isa)                  lanes of one vector; column counts are multiples of it
//   round_up(n, m)
//   gemm(isa, acc, R, ncols, K, A, ars, aks, B, ldb, C, ldc)        (float and double)
//       C[r*ldc + c] (acc ? += : =) sum_k A[r*ars + k*aks] * B[k*ldb + c],  r < R, c < ncols;
//       ncols a multiple of vec_len (B and C readable / writable that far), k in order 0..K-1.
//   gemm_half(isa, R, K, A, ars, aks, B, ldb, C, ldc)   (float; vec_len >= 2)
//       the same with acc and ncols = vec_len / 2 (narrow head dims without padded lanes).
//   probs_rows(isa, R, n, ncols, S, lds, scale, sub, lim, rowsum)   (float and double)
//       S[r][j] = exp(scale S[r][j] - sub[r]) for j < lim[r] (lim null: n), 0 for the rest of
//       [0, ncols); rowsum (may be null) gets each row's sum. sub = +inf gives a zero row.
//   ds_rows(isa, R, ncols, P, ldp, dP, lddp, Dr, scale)            (float and double)
//       dP[r][j] = scale P[r][j] (dP[r][j] - Dr[r]), j < ncols.
//   dot_rows(isa, R, n, ncols, D, Q, ldq, K, ldk, S, lds)          (float and double)
//       S[r][j] = sum_{d<D} Q[r*ldq + d] K[j*ldk + d] for j < n, 0 up to ncols (few rows).
//   KeyRows<T>{base, row_stride, pool_w}: key j of a slice, one row or (pool_w > 0) the 2x2
//       max of its window; pack_t / pack_r pack keys [k0, k1) transposed / row-major padded;
//       pad_rows copies rows padded to whole vectors.
#pragma once
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>

#include "common/fastmath.h"
#include "common/isa.h"
#include "cpu/causal_conv_tile.h"  // Lanes, loadu / storeu

#define GENFAST_ATTN_UNPAREN(...) __VA_ARGS__
// Inline (one definition across translation units) copies of `body` per ISA, each seeing
// constexpr kIsa, and the dispatcher `name(int isa, params)`.
#ifdef GENFAST_ISA_X86
#define GENFAST_ATTN_COPIES(name, params, args, ...)                                          \
  inline GENFAST_TARGET_AVX512 void name##_avx512 params {                                    \
    [[maybe_unused]] constexpr int kIsa = ::genfast::isa::kAvx512;                            \
    __VA_ARGS__;                                                                              \
  }                                                                                           \
  inline GENFAST_TARGET_AVX2 void name##_avx2 params {                                        \
    [[maybe_unused]] constexpr int kIsa = ::genfast::isa::kAvx2;                              \
    __VA_ARGS__;                                                                              \
  }                                                                                           \
  inline GENFAST_TARGET_BASE void name##_base params {                                        \
    [[maybe_unused]] constexpr int kIsa = ::genfast::isa::kBase;                              \
    __VA_ARGS__;                                                                              \
  }                                                                                           \
  inline GENFAST_TARGET_SCALAR void name##_scalar params {                                    \
    [[maybe_unused]] constexpr int kIsa = ::genfast::isa::kScalar;                            \
    __VA_ARGS__;                                                                              \
  }                                                                                           \
  inline void name(int isa, GENFAST_ATTN_UNPAREN params) {                                    \
    switch (isa) {                                                                            \
      case ::genfast::isa::kAvx512: return name##_avx512 args;                                \
      case ::genfast::isa::kAvx2: return name##_avx2 args;                                    \
      case ::genfast::isa::kScalar: return name##_scalar args;                                \
      default: return name##_base args;                                                       \
    }                                                                                         \
  }
#else
#define GENFAST_ATTN_COPIES(name, params, args, ...)                                          \
  inline GENFAST_TARGET_BASE void name##_base params {                                        \
    [[maybe_unused]] constexpr int kIsa = ::genfast::isa::kBase;                              \
    __VA_ARGS__;                                                                              \
  }                                                                                           \
  inline GENFAST_TARGET_SCALAR void name##_scalar params {                                    \
    [[maybe_unused]] constexpr int kIsa = ::genfast::isa::kScalar;                            \
    __VA_ARGS__;                                                                              \
  }                                                                                           \
  inline void name(int isa, GENFAST_ATTN_UNPAREN params) {                                    \
    if (isa == ::genfast::isa::kScalar) return name##_scalar args;                            \
    return name##_base args;                                                                  \
  }
#endif

namespace genfast::attn_tile {

// Vector types cross only always_inline calls, so no ABI is at stake; GCC reports -Wpsabi at
// the template instantiation points, past any pop, so the warning stays off for includers.
#pragma GCC diagnostic ignored "-Wpsabi"

// Register budget per copy: AVX-512 24 of 32 zmm accumulators (4 B loads and a broadcast
// besides), AVX2 12 of 16 ymm, SSE2 (no FMA: a product temporary) 12 of 16 xmm.
template <typename T, int Isa>
struct Shape {
  static constexpr int kBytes = Isa == isa::kAvx512 ? 64
                                : Isa == isa::kAvx2 ? 32
                                : Isa == isa::kBase ? 16
                                                    : static_cast<int>(sizeof(T));
  static constexpr int VL = kBytes / static_cast<int>(sizeof(T));
  using V = typename conv_tile::Lanes<T, VL>::V;
  static constexpr int MR = Isa == isa::kAvx512 ? 6 : Isa == isa::kScalar ? 2 : 3;
  static constexpr int NV = 4;
};

template <typename T>
inline int vec_len(int isa) {
  switch (isa) {
    case isa::kAvx512: return Shape<T, isa::kAvx512>::VL;
    case isa::kAvx2: return Shape<T, isa::kAvx2>::VL;
    case isa::kScalar: return Shape<T, isa::kScalar>::VL;
    default: return Shape<T, isa::kBase>::VL;
  }
}

inline int64_t round_up(int64_t n, int64_t m) { return (n + m - 1) / m * m; }

template <typename T, int Isa, int R, int NV, bool Acc>
GENFAST_INLINE void micro(const T* A, int64_t ars, int64_t aks, const T* B, int64_t ldb,
                          int64_t K, T* C, int64_t ldc) {
  using V = typename Shape<T, Isa>::V;
  constexpr int VL = Shape<T, Isa>::VL;
  V acc[R][NV];
#pragma GCC unroll 8
  for (int r = 0; r < R; ++r)
#pragma GCC unroll 4
    for (int v = 0; v < NV; ++v)
      acc[r][v] = Acc ? conv_tile::loadu<V>(C + r * ldc + v * VL) : V{};
  for (int64_t k = 0; k < K; ++k) {
    V b[NV];
#pragma GCC unroll 4
    for (int v = 0; v < NV; ++v) b[v] = conv_tile::loadu<V>(B + k * ldb + v * VL);
    const T* a = A + k * aks;
#pragma GCC unroll 8
    for (int r = 0; r < R; ++r) {
      const T ar = a[r * ars];
#pragma GCC unroll 4
      for (int v = 0; v < NV; ++v) acc[r][v] += ar * b[v];
    }
  }
#pragma GCC unroll 8
  for (int r = 0; r < R; ++r)
#pragma GCC unroll 4
    for (int v = 0; v < NV; ++v) conv_tile::storeu(C + r * ldc + v * VL, acc[r][v]);
}

template <typename T, int Isa, int R, bool Acc>
GENFAST_INLINE void micro_nv(int nv, const T* A, int64_t ars, int64_t aks, const T* B,
                             int64_t ldb, int64_t K, T* C, int64_t ldc) {
  if constexpr (R <= Shape<T, Isa>::MR) {
    switch (nv) {
      case 1: return micro<T, Isa, R, 1, Acc>(A, ars, aks, B, ldb, K, C, ldc);
      case 2: return micro<T, Isa, R, 2, Acc>(A, ars, aks, B, ldb, K, C, ldc);
      case 3: return micro<T, Isa, R, 3, Acc>(A, ars, aks, B, ldb, K, C, ldc);
      default: return micro<T, Isa, R, 4, Acc>(A, ars, aks, B, ldb, K, C, ldc);
    }
  }
}

template <typename T, int Isa, bool Acc>
GENFAST_INLINE void gemm_body(int64_t R, int64_t ncols, int64_t K, const T* A, int64_t ars,
                              int64_t aks, const T* B, int64_t ldb, T* C, int64_t ldc) {
  constexpr int VL = Shape<T, Isa>::VL, MR = Shape<T, Isa>::MR, NV = Shape<T, Isa>::NV;
  const int64_t nvec = ncols / VL;
  for (int64_t c0 = 0; c0 < nvec; c0 += NV) {
    const int nv = static_cast<int>(std::min<int64_t>(NV, nvec - c0));
    const T* b = B + c0 * VL;
    for (int64_t r0 = 0; r0 < R; r0 += MR) {
      const T* a = A + r0 * ars;
      T* c = C + r0 * ldc + c0 * VL;
      switch (std::min<int64_t>(MR, R - r0)) {
        case 1: micro_nv<T, Isa, 1, Acc>(nv, a, ars, aks, b, ldb, K, c, ldc); break;
        case 2: micro_nv<T, Isa, 2, Acc>(nv, a, ars, aks, b, ldb, K, c, ldc); break;
        case 3: micro_nv<T, Isa, 3, Acc>(nv, a, ars, aks, b, ldb, K, c, ldc); break;
        case 4: micro_nv<T, Isa, 4, Acc>(nv, a, ars, aks, b, ldb, K, c, ldc); break;
        case 5: micro_nv<T, Isa, 5, Acc>(nv, a, ars, aks, b, ldb, K, c, ldc); break;
        default: micro_nv<T, Isa, 6, Acc>(nv, a, ars, aks, b, ldb, K, c, ldc); break;
      }
    }
  }
}

GENFAST_INLINE float exp_t(float x) { return fastmath::exp(x); }
GENFAST_INLINE double exp_t(double x) { return std::exp(x); }

template <typename To, typename From>
GENFAST_INLINE To bitcast(const From& x) {
  static_assert(sizeof(To) == sizeof(From));
  To y;
  std::memcpy(&y, &x, sizeof y);
  return y;
}

// fastmath::exp on a whole float32 vector (same polynomial and bits; the scalar copy calls it):
// written on vector types because a loop around the scalar function only vectorises when GCC
// sees it alone, and the softmax rows want it fused with their max and sum.
template <typename V>
GENFAST_INLINE V vexp(const V& x) {
  if constexpr (sizeof(V) == sizeof(float)) {
    return fastmath::exp(x);
  } else {
    constexpr int n = sizeof(V) / sizeof(float);
    using U = typename conv_tile::Lanes<uint32_t, n>::V;
    using I = typename conv_tile::Lanes<int32_t, n>::V;
    constexpr uint32_t kLow = 0xC2D00000u;  // -104.0f: everything below flushes to 0
    U xb = bitcast<U>(x);
    xb = xb < kLow ? xb : U{} + kLow;
    const V xc = bitcast<V>(xb);
    constexpr float kShift = 12582912.0f;
    const V s = xc * 1.44269504088896341f + kShift;
    const V k = s - kShift;
    V r = xc - k * 0.693359375f;
    r = r - k * -2.12194440e-4f;
    V p = V{} + 1.9875691500e-4f;
    p = p * r + 1.3981999507e-3f;
    p = p * r + 8.3334519073e-3f;
    p = p * r + 4.1665795894e-2f;
    p = p * r + 1.6666665459e-1f;
    p = p * r + 5.0000001201e-1f;
    const V er = p * (r * r) + r + 1.0f;
    const I b = (bitcast<I>(s) - 0x4B400000) + 127;
    const U scale = (bitcast<U>(b) << 23) & ~bitcast<U>(b >> 31);
    return er * bitcast<V>(scale);
  }
}

// Horizontal max / sum of a vector, halving in a fixed order.
template <typename T, int VL>
GENFAST_INLINE T hmax(const typename conv_tile::Lanes<T, VL>::V& v) {
  if constexpr (VL == 1) {
    return v;
  } else {
    using H = typename conv_tile::Lanes<T, VL / 2>::V;
    H a, b;
    std::memcpy(&a, &v, sizeof a);
    std::memcpy(&b, reinterpret_cast<const char*>(&v) + sizeof a, sizeof b);
    return hmax<T, VL / 2>(a > b ? a : b);
  }
}
template <typename T, int VL>
GENFAST_INLINE T hsum(const typename conv_tile::Lanes<T, VL>::V& v) {
  if constexpr (VL == 1) {
    return v;
  } else {
    using H = typename conv_tile::Lanes<T, VL / 2>::V;
    H a, b;
    std::memcpy(&a, &v, sizeof a);
    std::memcpy(&b, reinterpret_cast<const char*>(&v) + sizeof a, sizeof b);
    return hsum<T, VL / 2>(a + b);
  }
}

// Lanes [0, VL) of vector i of a row hold columns i*VL + lane: true where that column is < e.
template <int VL>
GENFAST_INLINE typename conv_tile::Lanes<int32_t, VL>::V lanes_below(int64_t i, int64_t e) {
  using I = typename conv_tile::Lanes<int32_t, VL>::V;
  I iota;
  if constexpr (VL == 1) {
    iota = 0;
  } else {
    for (int l = 0; l < VL; ++l) iota[l] = l;
  }
  const int32_t lim = static_cast<int32_t>(std::min<int64_t>(e - i * VL, VL));
  return iota < lim;
}

template <typename T>
GENFAST_INLINE void probs_body(int64_t R, int64_t n, int64_t ncols, T* S, int64_t lds, T scale,
                               const T* sub, const int64_t* lim, T* rowsum) {
  for (int64_t r = 0; r < R; ++r) {
    T* s = S + r * lds;
    const int64_t e = std::max<int64_t>(0, std::min(lim ? lim[r] : n, n));
    const T m = sub[r];
    for (int64_t j = 0; j < e; ++j) s[j] = exp_t(s[j] * scale - m);
    for (int64_t j = e; j < ncols; ++j) s[j] = T(0);
    if (rowsum) rowsum[r] = fastmath::lane_sum<T>(e, [&](int64_t j) { return s[j]; });
  }
}

// probs_body for float32 on whole vectors (ncols is a multiple of VL).
template <int Isa>
GENFAST_INLINE void probs_vec(int64_t R, int64_t n, int64_t ncols, float* S, int64_t lds,
                              float scale, const float* sub, const int64_t* lim, float* rowsum) {
  using V = typename Shape<float, Isa>::V;
  constexpr int VL = Shape<float, Isa>::VL;
  const int64_t nv = ncols / VL;
  for (int64_t r = 0; r < R; ++r) {
    float* s = S + r * lds;
    const int64_t e = std::max<int64_t>(0, std::min(lim ? lim[r] : n, n));
    const float m = sub[r];
    V sum = V{};
    for (int64_t i = 0; i < nv; ++i) {
      V p = vexp(conv_tile::loadu<V>(s + i * VL) * scale - m);
      if ((i + 1) * VL > e) p = lanes_below<VL>(i, e) ? p : V{};
      conv_tile::storeu(s + i * VL, p);
      sum += p;
    }
    if (rowsum) rowsum[r] = hsum<float, VL>(sum);
  }
}

// S[r][j] = sum_d Q[r][d] K[j][d] as dot products over d, keys read in place (rows of K, row
// stride ldk): for a few query rows, packing k^T would cost more than the products.
template <typename T, int Isa>
GENFAST_INLINE void dot_body(int64_t R, int64_t n, int64_t ncols, int64_t D, const T* Q,
                             int64_t ldq, const T* K, int64_t ldk, T* S, int64_t lds) {
  using V = typename Shape<T, Isa>::V;
  constexpr int VL = Shape<T, Isa>::VL;
  const int64_t dv = D / VL * VL;
  for (int64_t r = 0; r < R; ++r) {
    const T* q = Q + r * ldq;
    T* s = S + r * lds;
    for (int64_t j = 0; j < n; ++j) {
      const T* k = K + j * ldk;
      V acc = V{};
      for (int64_t d = 0; d < dv; d += VL)
        acc += conv_tile::loadu<V>(q + d) * conv_tile::loadu<V>(k + d);
      T t = hsum<T, VL>(acc);
      for (int64_t d = dv; d < D; ++d) t += q[d] * k[d];
      s[j] = t;
    }
    for (int64_t j = n; j < ncols; ++j) s[j] = T(0);
  }
}

template <typename T>
GENFAST_INLINE void ds_body(int64_t R, int64_t ncols, const T* P, int64_t ldp, T* dP,
                            int64_t lddp, const T* Dr, T scale) {
  for (int64_t r = 0; r < R; ++r) {
    const T* p = P + r * ldp;
    T* d = dP + r * lddp;
    const T dr = Dr[r];
    for (int64_t j = 0; j < ncols; ++j) d[j] = scale * p[j] * (d[j] - dr);
  }
}

#define GENFAST_ATTN_GEMM_PARAMS(T)                                                         \
  (bool acc, int64_t R, int64_t ncols, int64_t K, const T* A, int64_t ars, int64_t aks,      \
   const T* B, int64_t ldb, T* C, int64_t ldc)
#define GENFAST_ATTN_GEMM_BODY(T)                                                           \
  if (acc)                                                                                  \
    gemm_body<T, kIsa, true>(R, ncols, K, A, ars, aks, B, ldb, C, ldc);                     \
  else                                                                                      \
    gemm_body<T, kIsa, false>(R, ncols, K, A, ars, aks, B, ldb, C, ldc)
GENFAST_ATTN_COPIES(gemm, GENFAST_ATTN_GEMM_PARAMS(float),
                    (acc, R, ncols, K, A, ars, aks, B, ldb, C, ldc),
                    GENFAST_ATTN_GEMM_BODY(float))
GENFAST_ATTN_COPIES(gemm, GENFAST_ATTN_GEMM_PARAMS(double),
                    (acc, R, ncols, K, A, ars, aks, B, ldb, C, ldc),
                    GENFAST_ATTN_GEMM_BODY(double))

// Half-width accumulation C += A B for ncols == vec_len / 2 exactly (Dk <= 8 floats on
// AVX-512): one full-width vector per row would waste half its lanes, and the row tile of the
// full kernel (MR = 6) leaves too few independent FMA chains to hide latency; half vectors in
// 12-row tiles fix both. Each element is still one FMA chain over k in order (same bits).
template <typename T, int Isa, int R>
GENFAST_INLINE void micro_half(const T* A, int64_t ars, int64_t aks, const T* B, int64_t ldb,
                               int64_t K, T* C, int64_t ldc) {
  constexpr int W = Shape<T, Isa>::VL > 1 ? Shape<T, Isa>::VL / 2 : 1;
  using V = typename conv_tile::Lanes<T, W>::V;
  V acc[R];
#pragma GCC unroll 12
  for (int r = 0; r < R; ++r) acc[r] = conv_tile::loadu<V>(C + r * ldc);
  for (int64_t k = 0; k < K; ++k) {
    const V b = conv_tile::loadu<V>(B + k * ldb);
    const T* a = A + k * aks;
#pragma GCC unroll 12
    for (int r = 0; r < R; ++r) acc[r] += a[r * ars] * b;
  }
#pragma GCC unroll 12
  for (int r = 0; r < R; ++r) conv_tile::storeu(C + r * ldc, acc[r]);
}

template <typename T, int Isa>
GENFAST_INLINE void gemm_half_body(int64_t R, int64_t K, const T* A, int64_t ars, int64_t aks,
                                   const T* B, int64_t ldb, T* C, int64_t ldc) {
  int64_t r0 = 0;
  for (; r0 + 12 <= R; r0 += 12)
    micro_half<T, Isa, 12>(A + r0 * ars, ars, aks, B, ldb, K, C + r0 * ldc, ldc);
  for (; r0 + 4 <= R; r0 += 4)
    micro_half<T, Isa, 4>(A + r0 * ars, ars, aks, B, ldb, K, C + r0 * ldc, ldc);
  for (; r0 < R; ++r0) micro_half<T, Isa, 1>(A + r0 * ars, ars, aks, B, ldb, K, C + r0 * ldc, ldc);
}

#define GENFAST_ATTN_GEMM_HALF_PARAMS(T)                                                    \
  (int64_t R, int64_t K, const T* A, int64_t ars, int64_t aks, const T* B, int64_t ldb, T* C, \
   int64_t ldc)
GENFAST_ATTN_COPIES(gemm_half, GENFAST_ATTN_GEMM_HALF_PARAMS(float),
                    (R, K, A, ars, aks, B, ldb, C, ldc),
                    gemm_half_body<float, kIsa>(R, K, A, ars, aks, B, ldb, C, ldc))

GENFAST_ATTN_COPIES(probs_rows,
                    (int64_t R, int64_t n, int64_t ncols, float* S, int64_t lds, float scale,
                     const float* sub, const int64_t* lim, float* rowsum),
                    (R, n, ncols, S, lds, scale, sub, lim, rowsum),
                    probs_vec<kIsa>(R, n, ncols, S, lds, scale, sub, lim, rowsum))
GENFAST_ATTN_COPIES(probs_rows,
                    (int64_t R, int64_t n, int64_t ncols, double* S, int64_t lds, double scale,
                     const double* sub, const int64_t* lim, double* rowsum),
                    (R, n, ncols, S, lds, scale, sub, lim, rowsum),
                    probs_body<double>(R, n, ncols, S, lds, scale, sub, lim, rowsum))

#define GENFAST_ATTN_DOT(T)                                                                 \
  GENFAST_ATTN_COPIES(dot_rows,                                                             \
                      (int64_t R, int64_t n, int64_t ncols, int64_t D, const T* Q, int64_t ldq, \
                       const T* K, int64_t ldk, T* S, int64_t lds),                         \
                      (R, n, ncols, D, Q, ldq, K, ldk, S, lds),                             \
                      dot_body<T, kIsa>(R, n, ncols, D, Q, ldq, K, ldk, S, lds))
GENFAST_ATTN_DOT(float)
GENFAST_ATTN_DOT(double)

GENFAST_ATTN_COPIES(ds_rows,
                    (int64_t R, int64_t ncols, const float* P, int64_t ldp, float* dP,
                     int64_t lddp, const float* Dr, float scale),
                    (R, ncols, P, ldp, dP, lddp, Dr, scale),
                    ds_body<float>(R, ncols, P, ldp, dP, lddp, Dr, scale))
GENFAST_ATTN_COPIES(ds_rows,
                    (int64_t R, int64_t ncols, const double* P, int64_t ldp, double* dP,
                     int64_t lddp, const double* Dr, double scale),
                    (R, ncols, P, ldp, dP, lddp, Dr, scale),
                    ds_body<double>(R, ncols, P, ldp, dP, lddp, Dr, scale))

// Where key j of a slice lives: one row, or the 2x2 window of an (ph, pw) grid (pw > 0).
template <typename T>
struct KeyRows {
  const T* base;
  int64_t sn, pw;
  GENFAST_INLINE int64_t first(int64_t j) const {
    if (pw == 0) return j;
    const int64_t w = pw / 2;
    return 2 * (j / w) * pw + 2 * (j % w);
  }
  // row d of key j: the max of the window, taken in window order.
  GENFAST_INLINE void load(int64_t j, int64_t D, T* out) const {
    const int64_t r = first(j);
    const T* a = base + r * sn;
    if (pw == 0) {
      std::memcpy(out, a, static_cast<size_t>(D) * sizeof(T));
      return;
    }
    const T *b = a + sn, *c = a + pw * sn, *e = c + sn;
    for (int64_t d = 0; d < D; ++d) {
      T m = a[d];
      m = b[d] > m ? b[d] : m;
      m = c[d] > m ? c[d] : m;
      m = e[d] > m ? e[d] : m;
      out[d] = m;
    }
  }
};

// Keys [k0, k1) as a transposed panel: dst[d * ld + jj], columns [k1 - k0, ld) zero.
template <typename T>
inline void pack_t(const KeyRows<T>& kr, int64_t D, int64_t k0, int64_t k1, T* dst, int64_t ld,
            T* tmp) {
  for (int64_t jj = 0; jj < k1 - k0; ++jj) {
    kr.load(k0 + jj, D, tmp);
    for (int64_t d = 0; d < D; ++d) dst[d * ld + jj] = tmp[d];
  }
  for (int64_t d = 0; d < D; ++d)
    for (int64_t jj = k1 - k0; jj < ld; ++jj) dst[d * ld + jj] = T(0);
}

// Keys [k0, k1) row-major, rows padded with zeros to Dp.
template <typename T>
inline void pack_r(const KeyRows<T>& kr, int64_t D, int64_t Dp, int64_t k0, int64_t k1, T* dst) {
  for (int64_t jj = 0; jj < k1 - k0; ++jj) {
    kr.load(k0 + jj, D, dst + jj * Dp);
    for (int64_t d = D; d < Dp; ++d) dst[jj * Dp + d] = T(0);
  }
}

// rows [0, R) of a (R, D) matrix (row stride sn) padded to Dp columns.
template <typename T>
inline void pad_rows(const T* src, int64_t sn, int64_t R, int64_t D, int64_t Dp, T* dst) {
  for (int64_t r = 0; r < R; ++r) {
    std::memcpy(dst + r * Dp, src + r * sn, static_cast<size_t>(D) * sizeof(T));
    for (int64_t d = D; d < Dp; ++d) dst[r * Dp + d] = T(0);
  }
}


}  // namespace genfast::attn_tile
