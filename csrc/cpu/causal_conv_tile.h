// Register-tiled building blocks of the CPU causal-conv kernels (causal_conv.cpp), written once
// so the fused WaveNet layer (causal_conv_layer.cpp) can reuse them.
//
// The extension links no BLAS, so the GEMM speed of the dense convs comes from one outer-product
// micro-kernel: a tile of MR output rows x NR time columns lives in registers while the
// reduction (taps x input channels) streams past it. Time is the vector axis because (B, C, T)
// tensors have unit time stride, so a column load is one contiguous vector load and a weight is
// one broadcast; every FMA group is 2*MR FMAs against NV vector loads and MR broadcasts, which
// keeps the loop FMA-bound. GCC's generic vector types (no intrinsics) give each ISA copy its
// own register width; the tile shape is chosen per copy so the accumulators fill, but do not
// spill, its register file.
#pragma once
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <stdexcept>
#include <string>

#include "common/fastmath.h"
#include "common/isa.h"

// GENFAST_CONV_ISA_COPIES(name, (params), (args), body): one copy of `body` per ISA, like
// GENFAST_MULTIVERSIONED, but the body sees `constexpr int kIsa` (tile shapes depend on the
// register file) and the dispatcher `name(int isa, params)` takes the ISA from its caller, which
// read isa::active() once and packed the weights for that copy's tile shape.
#define GENFAST_CONV_UNPAREN(...) __VA_ARGS__
#ifdef GENFAST_ISA_X86
#define GENFAST_CONV_ISA_COPIES(name, params, args, ...)                                     \
  GENFAST_TARGET_AVX512 void name##_avx512 params {                                          \
    [[maybe_unused]] constexpr int kIsa = ::genfast::isa::kAvx512;                           \
    __VA_ARGS__;                                                                             \
  }                                                                                          \
  GENFAST_TARGET_AVX2 void name##_avx2 params {                                              \
    [[maybe_unused]] constexpr int kIsa = ::genfast::isa::kAvx2;                             \
    __VA_ARGS__;                                                                             \
  }                                                                                          \
  GENFAST_TARGET_BASE void name##_base params {                                              \
    [[maybe_unused]] constexpr int kIsa = ::genfast::isa::kBase;                             \
    __VA_ARGS__;                                                                             \
  }                                                                                          \
  GENFAST_TARGET_SCALAR void name##_scalar params {                                          \
    [[maybe_unused]] constexpr int kIsa = ::genfast::isa::kScalar;                           \
    __VA_ARGS__;                                                                             \
  }                                                                                          \
  void name(int isa, GENFAST_CONV_UNPAREN params) {                                          \
    switch (isa) {                                                                           \
      case ::genfast::isa::kAvx512: return name##_avx512 args;                               \
      case ::genfast::isa::kAvx2: return name##_avx2 args;                                   \
      case ::genfast::isa::kScalar: return name##_scalar args;                               \
      default: return name##_base args;                                                      \
    }                                                                                        \
  }
#else
#define GENFAST_CONV_ISA_COPIES(name, params, args, ...)                                     \
  GENFAST_TARGET_BASE void name##_base params {                                              \
    [[maybe_unused]] constexpr int kIsa = ::genfast::isa::kBase;                             \
    __VA_ARGS__;                                                                             \
  }                                                                                          \
  GENFAST_TARGET_SCALAR void name##_scalar params {                                          \
    [[maybe_unused]] constexpr int kIsa = ::genfast::isa::kScalar;                           \
    __VA_ARGS__;                                                                             \
  }                                                                                          \
  void name(int isa, GENFAST_CONV_UNPAREN params) {                                          \
    if (isa == ::genfast::isa::kScalar) return name##_scalar args;                           \
    return name##_base args;                                                                 \
  }
#endif

namespace genfast::conv_tile {

#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wpsabi"  // vector types cross only always_inline calls

template <typename T, int N>
struct Lanes {
  typedef T V __attribute__((vector_size(N * sizeof(T))));
};
template <typename T>
struct Lanes<T, 1> {  // the scalar copy: no SIMD type at all
  typedef T V;
};

// Register budget per copy: AVX-512 has 32 zmm (MR*NV = 24 accumulators, three column loads and
// a broadcast; measured 3-5% faster than 8 x 2 on Zen 4), AVX2 16 ymm (12, plus two column
// loads and a broadcast), SSE2 16 xmm without FMA (8, plus a product temporary).
template <typename T, int Isa>
struct Shape {
  static constexpr int kBytes = Isa == isa::kAvx512 ? 64
                                : Isa == isa::kAvx2 ? 32
                                : Isa == isa::kBase ? 16
                                                    : static_cast<int>(sizeof(T));
  static constexpr int VL = kBytes / static_cast<int>(sizeof(T));
  using V = typename Lanes<T, VL>::V;
  static constexpr int MR = Isa == isa::kAvx512 ? 8 : Isa == isa::kAvx2 ? 6 : 4;
  static constexpr int NV = Isa == isa::kScalar ? 4 : Isa == isa::kAvx512 ? 3 : 2;
  static constexpr int NR = VL * NV;
  // bwd_weight's tile: MW x NW dot products whose time lanes stay apart until the end.
  static constexpr int MW = Isa == isa::kAvx512 ? 6 : 4;
  static constexpr int NW = Isa == isa::kAvx512 ? 4 : 3;
};

// Runtime views of Shape, for the code that packs weights before choosing a copy.
template <typename T>
inline int tile_mr(int isa) {
  switch (isa) {
    case isa::kAvx512: return Shape<T, isa::kAvx512>::MR;
    case isa::kAvx2: return Shape<T, isa::kAvx2>::MR;
    case isa::kScalar: return Shape<T, isa::kScalar>::MR;
    default: return Shape<T, isa::kBase>::MR;
  }
}
template <typename T>
inline int tile_nr(int isa) {
  switch (isa) {
    case isa::kAvx512: return Shape<T, isa::kAvx512>::NR;
    case isa::kAvx2: return Shape<T, isa::kAvx2>::NR;
    case isa::kScalar: return Shape<T, isa::kScalar>::NR;
    default: return Shape<T, isa::kBase>::NR;
  }
}

template <typename T>
inline int tile_mw(int isa) {
  switch (isa) {
    case isa::kAvx512: return Shape<T, isa::kAvx512>::MW;
    case isa::kAvx2: return Shape<T, isa::kAvx2>::MW;
    case isa::kScalar: return Shape<T, isa::kScalar>::MW;
    default: return Shape<T, isa::kBase>::MW;
  }
}

template <typename V, typename T>
GENFAST_INLINE V loadu(const T* p) {
  V v;
  std::memcpy(&v, p, sizeof v);
  return v;
}
template <typename V, typename T>
GENFAST_INLINE void storeu(T* p, const V& v) {
  std::memcpy(p, &v, sizeof v);
}
// Lanes summed in a fixed order (the result must not depend on anything but the data).
template <typename T, typename V>
GENFAST_INLINE T lane_total(const V& v) {
  constexpr int n = sizeof(V) / sizeof(T);
  T a[n];
  std::memcpy(a, &v, sizeof v);
  T s = a[0];
  for (int i = 1; i < n; ++i) s += a[i];
  return s;
}

// Packs w (M_all, C, K) (row-major, the conv weight layout) for the micro-kernel: for each group
// g and block of mr output rows, wp[g][block][k][c][mr], rows past m_per_group zero. `trans`
// packs w^T instead (the adjoint conv: output rows = w's dim 1, reduction = w's dim 0), where
// w is (groups*C, m_per_group, K).
template <typename T>
inline void pack_weights(const T* w, T* wp, int64_t groups, int64_t m_per_group, int64_t c_red,
                         int64_t K, int mr, bool trans) {
  const int64_t nmb = (m_per_group + mr - 1) / mr;
  for (int64_t g = 0; g < groups; ++g)
    for (int64_t mb = 0; mb < nmb; ++mb)
      for (int64_t k = 0; k < K; ++k)
        for (int64_t c = 0; c < c_red; ++c)
          for (int m = 0; m < mr; ++m, ++wp) {
            const int64_t row = mb * mr + m;
            if (row >= m_per_group) {
              *wp = T(0);
            } else if (!trans) {
              *wp = w[((g * m_per_group + row) * c_red + c) * K + k];
            } else {
              *wp = w[((g * c_red + c) * m_per_group + row) * K + k];
            }
          }
}
inline int64_t packed_size(int64_t groups, int64_t m_per_group, int64_t c_red, int64_t K,
                           int mr) {
  return groups * ((m_per_group + mr - 1) / mr) * K * c_red * mr;
}

// One MR x NR output tile: out[m*ldo + t] = bias[m] + sum_k sum_c wp[(k*nc + c)*MR + m] *
// src[k][c*ld[k] + off + t], for m < rows, t < cols. Each src[k] + off must be readable for NR
// columns of nc rows. The sum runs bias first, then k, then c, whatever the tiling: the update
// kernel runs this same tile over gathered taps, so its steps reproduce fwd's bits.
template <typename T, int Isa>
GENFAST_INLINE void tile(const T* wp, int64_t nk, int64_t nc, const T* const* src,
                         const int64_t* ld, int64_t off, const T* bias, T* out, int64_t ldo,
                         int rows, int cols) {
  using S = Shape<T, Isa>;
  using V = typename S::V;
  constexpr int MR = S::MR, NV = S::NV, VL = S::VL;
  T b0[MR] = {};
  if (bias != nullptr)
    for (int m = 0; m < rows; ++m) b0[m] = bias[m];
  V acc[MR][NV];
#pragma GCC unroll 16
  for (int m = 0; m < MR; ++m)
#pragma GCC unroll 4
    for (int j = 0; j < NV; ++j) acc[m][j] = V{} + b0[m];
  for (int64_t k = 0; k < nk; ++k) {
    const T* s = src[k] + off;
    const int64_t l = ld[k];
    for (int64_t c = 0; c < nc; ++c, s += l, wp += MR) {
      V xv[NV];
#pragma GCC unroll 4
      for (int j = 0; j < NV; ++j) xv[j] = loadu<V>(s + j * VL);
#pragma GCC unroll 16
      for (int m = 0; m < MR; ++m) {
        const T w = wp[m];
#pragma GCC unroll 4
        for (int j = 0; j < NV; ++j) acc[m][j] += w * xv[j];
      }
    }
  }
  if (rows == MR && cols == S::NR) {
#pragma GCC unroll 16
    for (int m = 0; m < MR; ++m)
#pragma GCC unroll 4
      for (int j = 0; j < NV; ++j) storeu(out + m * ldo + j * VL, acc[m][j]);
    return;
  }
  T buf[MR][S::NR];
  for (int m = 0; m < MR; ++m)
    for (int j = 0; j < NV; ++j) storeu(&buf[m][j * VL], acc[m][j]);
  for (int m = 0; m < rows; ++m) std::memcpy(out + m * ldo, buf[m], cols * sizeof(T));
}

// acc[m][n] += a[m][i] * b[n][i] for i < len, lane by lane (bwd_weight's reduction over time).
// The tail (len % VL) is read through a zero-padded copy, so no load passes the rows' ends.
template <typename T, int Isa, int MW, int NW>
GENFAST_INLINE void dot_tile(const T* const* a, const T* const* b, int64_t len,
                             typename Shape<T, Isa>::V (&acc)[MW][NW]) {
  using V = typename Shape<T, Isa>::V;
  constexpr int VL = Shape<T, Isa>::VL;
  int64_t i = 0;
  for (; i + VL <= len; i += VL) {
    V bv[NW];
#pragma GCC unroll 8
    for (int n = 0; n < NW; ++n) bv[n] = loadu<V>(b[n] + i);
#pragma GCC unroll 8
    for (int m = 0; m < MW; ++m) {
      const V av = loadu<V>(a[m] + i);
#pragma GCC unroll 8
      for (int n = 0; n < NW; ++n) acc[m][n] += av * bv[n];
    }
  }
  if (i == len) return;
  const int64_t r = len - i;
  T pad[VL];
  V bv[NW];
  for (int n = 0; n < NW; ++n) {
    for (int l = 0; l < VL; ++l) pad[l] = l < r ? b[n][i + l] : T(0);
    bv[n] = loadu<V>(pad);
  }
  for (int m = 0; m < MW; ++m) {
    for (int l = 0; l < VL; ++l) pad[l] = l < r ? a[m][i + l] : T(0);
    const V av = loadu<V>(pad);
    for (int n = 0; n < NW; ++n) acc[m][n] += av * bv[n];
  }
}

// One depthwise row: o[i] = b0 + sum_k wc[k] * tap[k][i], i < n. The tail runs as one more
// full vector block through zero-padded copies (pad: K*NR values, pad_tap: K pointers), so
// every column gets the same instructions and the update kernel reproduces these bits.
template <typename T, int Isa>
GENFAST_INLINE void depthwise_row(const T* const* tap, const T* wc, int64_t K, T b0, T* o,
                                  int64_t n, T* pad, const T** pad_tap) {
  using S = Shape<T, Isa>;
  using V = typename S::V;
  constexpr int NV = S::NV, VL = S::VL, NR = S::NR;
  const auto block = [&](const T* const* src, int64_t i, T* dst) {
    V acc[NV];
    for (int j = 0; j < NV; ++j) acc[j] = V{} + b0;
    for (int64_t k = 0; k < K; ++k) {
      const T wk = wc[k];
      for (int j = 0; j < NV; ++j) acc[j] += wk * loadu<V>(src[k] + i + j * VL);
    }
    for (int j = 0; j < NV; ++j) storeu(dst + j * VL, acc[j]);
  };
  int64_t i = 0;
  for (; i + NR <= n; i += NR) block(tap, i, o + i);
  if (i == n) return;
  for (int64_t k = 0; k < K; ++k) {
    T* p = pad + k * NR;
    for (int64_t j = 0; j < NR; ++j) p[j] = i + j < n ? tap[k][i + j] : T(0);
    pad_tap[k] = p;
  }
  T out[NR];
  block(pad_tap, 0, out);
  std::memcpy(o + i, out, static_cast<size_t>(n - i) * sizeof(T));
}

#pragma GCC diagnostic pop

// Row `row` of a tap's source read over [start, start + len): in place when inside the row,
// else a padded copy in `scratch`. The copy runs in index segments, never a select between
// loads: GCC if-converts such a select into an unconditional load of both sides, which would
// read through a null history pointer.
template <typename T>
GENFAST_INLINE const T* tap_row(const T* row, const T* hrow, int64_t hlen, int64_t n,
                                int64_t start, int64_t len, T* scratch) {
  if (start >= 0 && start + len <= n) return row + start;
  const auto upto = [&](int64_t j) { return std::clamp<int64_t>(j - start, 0, len); };
  int64_t i = 0;
  for (const int64_t e = upto(hrow != nullptr ? -hlen : 0); i < e; ++i) scratch[i] = T(0);
  for (const int64_t e = upto(0); i < e; ++i) scratch[i] = hrow[hlen + start + i];
  for (const int64_t e = upto(n); i < e; ++i) scratch[i] = row[start + i];
  for (; i < len; ++i) scratch[i] = T(0);
  return scratch;
}

// The conv kernels refuse sizes that would index out of bounds here too (Python checks first,
// with the user-facing messages).
inline void check_conv(const char* who, int64_t B, int64_t Cin, int64_t Cout, int64_t T,
                       int64_t K, int64_t dilation, int64_t groups) {
  const std::string w(who);
  if (B < 0 || Cin < 0 || Cout < 0 || T < 0) throw std::invalid_argument(w + ": negative size");
  if (K < 1) throw std::invalid_argument(w + ": K must be >= 1, got " + std::to_string(K));
  if (dilation < 1)
    throw std::invalid_argument(w + ": dilation must be >= 1, got " + std::to_string(dilation));
  if (K - 1 > ((int64_t{1} << 31) - 1) / dilation)
    throw std::invalid_argument(w + ": (K-1)*dilation overflows (K=" + std::to_string(K) +
                                ", dilation=" + std::to_string(dilation) + ")");
  if (groups < 1 || Cin % groups != 0 || Cout % groups != 0)
    throw std::invalid_argument(w + ": groups=" + std::to_string(groups) +
                                " must divide Cin=" + std::to_string(Cin) +
                                " and Cout=" + std::to_string(Cout));
}

inline void check_act(const char* who, int act) {
  if (act < 0 || act > 3)
    throw std::invalid_argument(std::string(who) + ": activation code " + std::to_string(act) +
                                " is not 0 (none), 1 (silu), 2 (relu) or 3 (tanh)");
}

// Activation codes of the contract: 0 none, 1 silu, 2 relu, 3 tanh, applied in place to a row
// of pre-activations. float32 uses fastmath's branch-free exp so the loop vectorises; the
// clamps keep its argument in range (silu: exp(88) is finite). NaN stays NaN.
GENFAST_INLINE float silu(float u) {
  const float a = u > -88.0f ? u : -88.0f;
  return u / (1.0f + fastmath::exp(-a));
}
// tanh(|u|) = 1 - 2/(e^{2|u|} + 1) loses all relative accuracy near 0 (cancellation), so
// |u| < 0.625 takes Cephes' tanhf polynomial instead. The pieces are blended with bit masks
// (a float select would become a branch and stop the vectoriser; see fastmath::log). |u| is
// clamped to 44 on its bits, where float tanh is 1 already.
GENFAST_INLINE float tanh_fast(float u) {
  using fastmath::bits;
  using fastmath::from_bits;
  const uint32_t ub = bits(u), ab = ub & 0x7FFFFFFFu;
  const float a = from_bits(ab < 0x42300000u ? ab : 0x42300000u);  // min(|u|, 44)
  const float big = 1.0f - 2.0f / (fastmath::exp(2.0f * a) + 1.0f);
  const float z = a * a;
  float p = -5.70498872745e-3f;
  p = p * z + 2.06390887954e-2f;
  p = p * z - 5.37397155531e-2f;
  p = p * z + 1.33314422036e-1f;
  p = p * z - 3.33332819422e-1f;
  const float small = p * z * a + a;
  const uint32_t m_small = 0u - static_cast<uint32_t>(ab < 0x3F200000u);  // |u| < 0.625
  const uint32_t m_nan = 0u - static_cast<uint32_t>(ab > 0x7F800000u);
  const uint32_t r = ((bits(small) & m_small) | (bits(big) & ~m_small)) | (ub & 0x80000000u);
  return from_bits((r & ~m_nan) | (ub & m_nan));
}
GENFAST_INLINE double silu(double u) { return u / (1.0 + std::exp(-u)); }
GENFAST_INLINE double tanh_fast(double u) { return std::tanh(u); }

template <typename T>
GENFAST_INLINE void activate(T* y, int64_t n, int act) {
  switch (act) {
    case 1:
      for (int64_t i = 0; i < n; ++i) y[i] = silu(y[i]);
      break;
    case 2:
      for (int64_t i = 0; i < n; ++i) y[i] = y[i] < T(0) ? T(0) : y[i];  // NaN stays NaN
      break;
    case 3:
      for (int64_t i = 0; i < n; ++i) y[i] = tanh_fast(y[i]);
      break;
    default:
      break;
  }
}

}  // namespace genfast::conv_tile
