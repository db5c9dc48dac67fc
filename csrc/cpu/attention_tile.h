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
//   probs_rows(isa, R, n, ncols, S, lds, scale, sub, lim, rowsum)   (float and double)
//       S[r][j] = exp(scale S[r][j] - sub[r]) for j < lim[r] (lim null: n), 0 for the rest of
//       [0, ncols); rowsum (may be null) gets each row's sum. sub = +inf gives a zero row.
//   ds_rows(isa, R, ncols, P, ldp, dP, lddp, Dr, scale)            (float and double)
//       dP[r][j] = scale P[r][j] (dP[r][j] - Dr[r]), j < ncols.
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

#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wpsabi"  // vector types cross only always_inline calls

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

GENFAST_ATTN_COPIES(probs_rows,
                    (int64_t R, int64_t n, int64_t ncols, float* S, int64_t lds, float scale,
                     const float* sub, const int64_t* lim, float* rowsum),
                    (R, n, ncols, S, lds, scale, sub, lim, rowsum),
                    probs_body<float>(R, n, ncols, S, lds, scale, sub, lim, rowsum))
GENFAST_ATTN_COPIES(probs_rows,
                    (int64_t R, int64_t n, int64_t ncols, double* S, int64_t lds, double scale,
                     const double* sub, const int64_t* lim, double* rowsum),
                    (R, n, ncols, S, lds, scale, sub, lim, rowsum),
                    probs_body<double>(R, n, ncols, S, lds, scale, sub, lim, rowsum))

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

#pragma GCC diagnostic pop

}  // namespace genfast::attn_tile
