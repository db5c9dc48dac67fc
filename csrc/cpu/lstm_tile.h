// Register-tiled building blocks of the CPU LSTM recurrence (lstm.cpp).
//
// Per step the recurrence is a skinny GEMM (B rows of h against the packed recurrent weights)
// whose output is consumed at once by pointwise math, so the tiles keep MR batch rows x a few
// vectors of output columns in registers while the reduction streams packed weight panels past
// them (k-major, one contiguous vector per gate or column block per k: every FMA group is MR
// broadcasts against contiguous loads). The forward's panel interleaves the four gates of the
// same VL hidden units, so one tile holds i, f, g, o of those units and the cell update runs on
// the tile's result before it leaves the core. Each output value is one chain of FMAs over k in
// a fixed order, whatever the tile's row count or position: the bits never depend on how rows
// and columns are cut among threads or tiles.
#pragma once
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>

#include "common/fastmath.h"
#include "common/isa.h"
#include "cpu/causal_conv_tile.h"  // Lanes, loadu/storeu, tanh_fast, GENFAST_CONV_ISA_COPIES

namespace genfast::lstm_tile {

#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wpsabi"  // vector types cross only always_inline calls

using conv_tile::loadu;
using conv_tile::storeu;

// Register budget per copy. The gate tile holds MR x 4 accumulators, the column tile MR x NV:
// AVX-512 24 of its 32 zmm (plus four weight loads and broadcasts), AVX2 12 of 16 ymm, SSE2
// (no FMA: a product temporary) 12 of 16 xmm.
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

// acc[m][g] += sum_k a[k][m] * wp[k][g][0..VL) for k < K: the forward's gate tile (wp is one
// panel, (K, 4, VL) k-major; a the tile's rows packed k-major, (K, MR), by pack_rows: one
// pointer and constant offsets, so the loop needs no register per row).
template <typename T, int Isa, int MR>
GENFAST_INLINE void gate_tile(const T* wp, int64_t K, const T* a,
                              typename Shape<T, Isa>::V (&acc)[MR][4]) {
  using V = typename Shape<T, Isa>::V;
  constexpr int VL = Shape<T, Isa>::VL;
  for (int64_t k = 0; k < K; ++k, wp += 4 * VL) {
    V w[4];
#pragma GCC unroll 4
    for (int g = 0; g < 4; ++g) w[g] = loadu<V>(wp + g * VL);
#pragma GCC unroll 8
    for (int m = 0; m < MR; ++m) {
      const T am = a[k * MR + m];
#pragma GCC unroll 4
      for (int g = 0; g < 4; ++g) acc[m][g] += am * w[g];
    }
  }
}

// acc[m][v] = sum_k a[k][m] * wp[v * pstride + k * ks + 0..VL) for k < K: NV column vectors,
// each its own (K, VL) panel pstride apart (ks = VL), or a row-major matrix read in place
// (pstride = VL, ks = its row length); a as for gate_tile.
template <typename T, int Isa, int MR, int NV>
GENFAST_INLINE void col_tile(const T* wp, int64_t pstride, int64_t ks, int64_t K, const T* a,
                             typename Shape<T, Isa>::V (&acc)[MR][NV]) {
  using V = typename Shape<T, Isa>::V;
#pragma GCC unroll 8
  for (int m = 0; m < MR; ++m)
#pragma GCC unroll 4
    for (int v = 0; v < NV; ++v) acc[m][v] = V{};
  for (int64_t k = 0; k < K; ++k) {
    V w[NV];
#pragma GCC unroll 4
    for (int v = 0; v < NV; ++v) w[v] = loadu<V>(wp + v * pstride + k * ks);
#pragma GCC unroll 8
    for (int m = 0; m < MR; ++m) {
      const T am = a[k * MR + m];
#pragma GCC unroll 4
      for (int v = 0; v < NV; ++v) acc[m][v] += am * w[v];
    }
  }
}

// sigmoid for float32 from e = exp(-|x|) in (0, 1]: 1 / (1 + e) for x >= 0, e / (1 + e) below,
// so neither side overflows and small results keep their relative accuracy. The halves are
// blended with bit masks (a float select would become a branch; see fastmath::log); NaN stays
// NaN.
GENFAST_INLINE float sigmoid(float x) {
  using fastmath::bits;
  using fastmath::from_bits;
  const uint32_t xb = bits(x), ab = xb & 0x7FFFFFFFu;
  const float e = fastmath::exp(-from_bits(ab < 0x42D00000u ? ab : 0x42D00000u));  // |x| <= 104
  const float d = 1.0f + e;
  const float pos = 1.0f / d, neg = e / d;
  const uint32_t m_neg = 0u - (xb >> 31);
  const uint32_t m_nan = 0u - static_cast<uint32_t>(ab > 0x7F800000u);
  const uint32_t r = (bits(pos) & ~m_neg) | (bits(neg) & m_neg);
  return from_bits((r & ~m_nan) | (xb & m_nan));
}
GENFAST_INLINE double sigmoid(double x) { return 1.0 / (1.0 + std::exp(-x)); }

using conv_tile::tanh_fast;

// The cell update on one tile row of VL hidden units, in place: G (4, VL) holds the
// pre-activations in and the activated i, f, g, o out; c the state; h = o tanh(c) out.
template <typename T, int VL>
GENFAST_INLINE void cell_fwd(T* G, T* c, T* h) {
  for (int l = 0; l < VL; ++l) {
    const T i = sigmoid(G[l]), f = sigmoid(G[VL + l]), g = tanh_fast(G[2 * VL + l]);
    const T o = sigmoid(G[3 * VL + l]);
    const T cn = f * c[l] + i * g;
    G[l] = i, G[VL + l] = f, G[2 * VL + l] = g, G[3 * VL + l] = o;
    c[l] = cn;
    h[l] = o * tanh_fast(cn);
  }
}

// The cell's backward on one row of VL hidden units: gt (4, VL) the activated gates, cs = c
// after the step, cp = c before it, dht the gradient of h tilde; dc (the running dc) in/out;
// dG (4, VL) out.
template <typename T, int VL>
GENFAST_INLINE void cell_bwd(const T* gt, const T* cs, const T* cp, const T* dht, T* dc,
                             T* dG) {
  for (int l = 0; l < VL; ++l) {
    const T i = gt[l], f = gt[VL + l], g = gt[2 * VL + l], o = gt[3 * VL + l];
    const T tc = tanh_fast(cs[l]);
    const T d = dht[l];
    const T dcn = dc[l] + d * o * (T(1) - tc * tc);
    dG[l] = dcn * g * i * (T(1) - i);
    dG[VL + l] = dcn * cp[l] * f * (T(1) - f);
    dG[2 * VL + l] = dcn * i * (T(1) - g * g);
    dG[3 * VL + l] = d * tc * o * (T(1) - o);
    dc[l] = dcn * f;
  }
}

// dst[0..VL) = src[0..n) then zeros (the constant-size copy is a vector move).
template <typename T, int VL>
GENFAST_INLINE void load_lanes(T* dst, const T* src, int64_t n) {
  if (n == VL) {
    std::memcpy(dst, src, VL * sizeof(T));
    return;
  }
  std::memcpy(dst, src, static_cast<size_t>(n) * sizeof(T));
  for (int64_t l = n; l < VL; ++l) dst[l] = T(0);
}
template <typename T, int N>
GENFAST_INLINE void store_lanes(T* dst, const T* src, int64_t n) {
  if (n == N)
    std::memcpy(dst, src, N * sizeof(T));
  else
    std::memcpy(dst, src, static_cast<size_t>(n) * sizeof(T));
}

// Row-count (and column-vector count) dispatch: buf holds R rows of 4 vectors (gate_rows: the
// initial pre-activations in, G out; col_rows: the NV result vectors out).
template <typename T, int Isa, int R>
GENFAST_INLINE void gate_run(const T* wp, int64_t K, const T* a, T* buf) {
  if constexpr (R <= Shape<T, Isa>::MR) {
    using V = typename Shape<T, Isa>::V;
    constexpr int VL = Shape<T, Isa>::VL;
    V acc[R][4];
#pragma GCC unroll 8
    for (int m = 0; m < R; ++m)
#pragma GCC unroll 4
      for (int g = 0; g < 4; ++g) acc[m][g] = loadu<V>(buf + (m * 4 + g) * VL);
    gate_tile<T, Isa, R>(wp, K, a, acc);
#pragma GCC unroll 8
    for (int m = 0; m < R; ++m)
#pragma GCC unroll 4
      for (int g = 0; g < 4; ++g) storeu(buf + (m * 4 + g) * VL, acc[m][g]);
  }
}

template <typename T, int Isa>
GENFAST_INLINE void gate_rows(int64_t r, const T* wp, int64_t K, const T* a, T* buf) {
  switch (r) {
    case 1: return gate_run<T, Isa, 1>(wp, K, a, buf);
    case 2: return gate_run<T, Isa, 2>(wp, K, a, buf);
    case 3: return gate_run<T, Isa, 3>(wp, K, a, buf);
    case 4: return gate_run<T, Isa, 4>(wp, K, a, buf);
    case 5: return gate_run<T, Isa, 5>(wp, K, a, buf);
    default: return gate_run<T, Isa, 6>(wp, K, a, buf);
  }
}

template <typename T, int Isa, int R, int NV>
GENFAST_INLINE void col_run(const T* wp, int64_t ps, int64_t ks, int64_t K, const T* a,
                            T* buf) {
  if constexpr (R <= Shape<T, Isa>::MR) {
    using V = typename Shape<T, Isa>::V;
    constexpr int VL = Shape<T, Isa>::VL;
    V acc[R][NV];
    col_tile<T, Isa, R, NV>(wp, ps, ks, K, a, acc);
#pragma GCC unroll 8
    for (int m = 0; m < R; ++m)
#pragma GCC unroll 4
      for (int v = 0; v < NV; ++v) storeu(buf + (m * 4 + v) * VL, acc[m][v]);
  }
}

template <typename T, int Isa, int R>
GENFAST_INLINE void col_nv(int64_t nv, const T* wp, int64_t ps, int64_t ks, int64_t K, const T* a,
                           T* buf) {
  switch (nv) {
    case 1: return col_run<T, Isa, R, 1>(wp, ps, ks, K, a, buf);
    case 2: return col_run<T, Isa, R, 2>(wp, ps, ks, K, a, buf);
    case 3: return col_run<T, Isa, R, 3>(wp, ps, ks, K, a, buf);
    default: return col_run<T, Isa, R, 4>(wp, ps, ks, K, a, buf);
  }
}

template <typename T, int Isa>
GENFAST_INLINE void col_rows(int64_t r, int64_t nv, const T* wp, int64_t ps, int64_t ks, int64_t K,
                             const T* a, T* buf) {
  switch (r) {
    case 1: return col_nv<T, Isa, 1>(nv, wp, ps, ks, K, a, buf);
    case 2: return col_nv<T, Isa, 2>(nv, wp, ps, ks, K, a, buf);
    case 3: return col_nv<T, Isa, 3>(nv, wp, ps, ks, K, a, buf);
    case 4: return col_nv<T, Isa, 4>(nv, wp, ps, ks, K, a, buf);
    case 5: return col_nv<T, Isa, 5>(nv, wp, ps, ks, K, a, buf);
    default: return col_nv<T, Isa, 6>(nv, wp, ps, ks, K, a, buf);
  }
}

// The rows act[0 .. na) of A (row stride lda) cut into nb even blocks (block i: rows
// [na*i/nb, na*(i+1)/nb)), each packed k-major for the tiles: block i at ap + r0 * K, (K, r).
template <typename T>
inline void pack_rows(const T* A, int64_t lda, const int64_t* act, int64_t na, int64_t nb,
                      int64_t K, T* ap) {
  for (int64_t ib = 0; ib < nb; ++ib) {
    const int64_t r0 = na * ib / nb, r = na * (ib + 1) / nb - r0;
    T* d = ap + r0 * K;
    for (int64_t m = 0; m < r; ++m) {
      const T* src = A + act[r0 + m] * lda;
      for (int64_t k = 0; k < K; ++k) d[k * r + m] = src[k];
    }
  }
}

// The forward's gates without packed weights (short calls, where packing w_hh would cost more
// than the steps): buf[m][g][l] += h_m . w_hh[g*H + j + l] for l < n, dot products whose VL
// lanes stay apart until a fixed-order total (conv_tile::dot_tile).
template <typename T, int Isa, int R>
GENFAST_INLINE void direct_run(const T* w, int64_t H, int64_t P, const T* const* a, int64_t j,
                               int64_t n, T* buf) {
  if constexpr (R <= Shape<T, Isa>::MR) {
    using V = typename Shape<T, Isa>::V;
    constexpr int VL = Shape<T, Isa>::VL;
    for (int64_t l = 0; l < n; ++l) {
      const T* wr[4];
      for (int g = 0; g < 4; ++g) wr[g] = w + (g * H + j + l) * P;
      V acc[R][4];
      for (int m = 0; m < R; ++m)
        for (int g = 0; g < 4; ++g) acc[m][g] = V{};
      conv_tile::dot_tile<T, Isa, R, 4>(a, wr, P, acc);
      for (int m = 0; m < R; ++m)
        for (int g = 0; g < 4; ++g)
          buf[(m * 4 + g) * VL + l] += conv_tile::lane_total<T>(acc[m][g]);
    }
  }
}

template <typename T, int Isa>
GENFAST_INLINE void direct_rows(int64_t r, const T* w, int64_t H, int64_t P, const T* const* a,
                                int64_t j, int64_t n, T* buf) {
  switch (r) {
    case 1: return direct_run<T, Isa, 1>(w, H, P, a, j, n, buf);
    case 2: return direct_run<T, Isa, 2>(w, H, P, a, j, n, buf);
    case 3: return direct_run<T, Isa, 3>(w, H, P, a, j, n, buf);
    case 4: return direct_run<T, Isa, 4>(w, H, P, a, j, n, buf);
    case 5: return direct_run<T, Isa, 5>(w, H, P, a, j, n, buf);
    default: return direct_run<T, Isa, 6>(w, H, P, a, j, n, buf);
  }
}

// Packs panels u0 .. u1 - 1 of the forward's gate panels: wp[u][k][g][l] = w_hh[g*H + u*VL +
// l][k] (zero past unit H), w_hh (4H, P) row-major. A transpose: it runs in blocks of kKB
// columns, so each source cache line is read once and the block written stays in L1.
constexpr int64_t kKB = 16;
template <typename T>
void pack_gates(const T* w, T* wp, int64_t H, int64_t P, int64_t VL, int64_t u0, int64_t u1) {
  for (int64_t u = u0; u < u1; ++u) {
    T* dst = wp + u * P * 4 * VL;
    for (int64_t k0 = 0; k0 < P; k0 += kKB) {
      const int64_t kn = std::min(kKB, P - k0);
      for (int64_t g = 0; g < 4; ++g)
        for (int64_t l = 0; l < VL; ++l) {
          const int64_t j = u * VL + l;
          T* d = dst + (k0 * 4 + g) * VL + l;
          if (j >= H) {
            for (int64_t k = 0; k < kn; ++k) d[k * 4 * VL] = T(0);
            continue;
          }
          const T* src = w + (g * H + j) * P + k0;
          for (int64_t k = 0; k < kn; ++k) d[k * 4 * VL] = src[k];
        }
    }
  }
}

// Packs column vectors v0 .. v1 - 1 of the (K, C) matrix m[k][c] = w[k*sk + c*sc]:
// wp[v][k][l] = m[k][v*VL + l] (zero past column C). Rows of w along c (sc == 1) copy
// straight; a transposed source (sc != 1) goes in blocks of kKB like pack_gates.
template <typename T>
void pack_cols(const T* w, int64_t sk, int64_t sc, int64_t K, int64_t C, int64_t VL, T* wp,
               int64_t v0, int64_t v1) {
  for (int64_t v = v0; v < v1; ++v) {
    T* dst = wp + v * K * VL;
    const int64_t n = std::min(VL, C - v * VL);
    if (sc == 1) {
      for (int64_t k = 0; k < K; ++k) {
        std::memcpy(dst + k * VL, w + k * sk + v * VL, static_cast<size_t>(n) * sizeof(T));
        for (int64_t l = n; l < VL; ++l) dst[k * VL + l] = T(0);
      }
      continue;
    }
    for (int64_t k0 = 0; k0 < K; k0 += kKB) {
      const int64_t kn = std::min(kKB, K - k0);
      for (int64_t l = 0; l < VL; ++l)
        for (int64_t k = 0; k < kn; ++k)
          dst[(k0 + k) * VL + l] = l < n ? w[(k0 + k) * sk + (v * VL + l) * sc] : T(0);
    }
  }
}

#pragma GCC diagnostic pop

}  // namespace genfast::lstm_tile
