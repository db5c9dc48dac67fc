// SIMD building blocks of the CPU kernels' hot loops: branch-free float32 log/exp, and the
// Philox stream (philox.h) computed in SIMD lanes on x86-64.
//
// libm's logf/expf are opaque calls with special-case branches, so a loop that uses them never
// vectorises; these are plain arithmetic on bits and compile to straight SIMD code under -O3
// (no -ffast-math needed). The polynomials are Cephes' logf/expf (S. L. Moshier): ~1 ulp over the
// ranges the kernels use. Each function states its domain; outside it the result is unspecified,
// except where noted.
#pragma once
#include <cstdint>
#include <cstring>
#include <limits>

#include "common/isa.h"
#include "common/philox.h"

#define GENFAST_INLINE inline __attribute__((always_inline))

namespace genfast::fastmath {

GENFAST_INLINE uint32_t bits(float x) {
  uint32_t u;
  std::memcpy(&u, &x, sizeof u);
  return u;
}

GENFAST_INLINE float from_bits(uint32_t u) {
  float x;
  std::memcpy(&x, &u, sizeof x);
  return x;
}

// Natural log for finite, positive, normal x (denormals, 0, inf and NaN are not handled: the
// Gumbel transform only ever feeds it u in [2^-24, 1) and -log(u) in [6e-8, 17]).
//
// No select anywhere: GCC (under its default -ftrapping-math) turns a select between float
// results back into a branch, and a branch stops the loop from vectorising. Integer bit tricks
// do not.
GENFAST_INLINE float log(float x) {
  // x = 2^e * f with f in [sqrt(1/2), sqrt(2)), from integer arithmetic on the bits (positive
  // floats order like their bits): t = f - 1 is small and, near x = 1, exact, so log stays
  // accurate relative to its tiny value there, which -log(-log(u)) needs for u close to 1.
  const uint32_t off = bits(x) - 0x3F3504F3u;  // bits of sqrt(1/2)
  const float e = static_cast<float>(static_cast<int32_t>(off) >> 23);
  const float t = from_bits(bits(x) - (off & 0xFF800000u)) - 1.0f;
  const float z = t * t;
  float p = 7.0376836292e-2f;
  p = p * t - 1.1514610310e-1f;
  p = p * t + 1.1676998740e-1f;
  p = p * t - 1.2420140846e-1f;
  p = p * t + 1.4249322787e-1f;
  p = p * t - 1.6668057665e-1f;
  p = p * t + 2.0000714765e-1f;
  p = p * t - 2.4999993993e-1f;
  p = p * t + 3.3333331174e-1f;
  float y = p * t * z;
  // ln2 split in two so e * ln2_hi is exact (ln2_hi has 9 significant bits, |e| < 2^8).
  y += e * -2.12194440e-4f;
  y += -0.5f * z;
  return (t + y) + e * 0.693359375f;
}

// e^x for x <= 88 (above that 2^n overflows; callers pass x <= 0). Results below FLT_MIN's
// neighbourhood (x < -87.68) flush to 0, so -inf -> 0. NaN gives NaN or 0 (callers never pass
// one: a row with a NaN never reaches exp).
GENFAST_INLINE float exp(float x) {
  // Every x below kLow flushes anyway; the clamp keeps n >= -150, so the exponent can't wrap.
  // It is an unsigned min on the bits (negative floats order in reverse, positive ones sit
  // below every negative): a float compare against a constant lets GCC fold the clamped path
  // to a constant 0, which leaves a branch and no vectorised loop (see log).
  constexpr uint32_t kLow = 0xC2D00000u;  // bits of -104.0f
  const float xc = from_bits(bits(x) < kLow ? bits(x) : kLow);
  // Round x*log2(e) to the nearest integer n with the 1.5*2^23 trick: no float->int conversion
  // (undefined for NaN in C++), and n's bits fall out of the sum's mantissa directly.
  constexpr float kShift = 12582912.0f;
  const float s = xc * 1.44269504088896341f + kShift;
  const float n = s - kShift;
  // r = x - n*ln2 in two steps (Cody-Waite), exact enough for |r| <= ln2/2.
  float r = xc - n * 0.693359375f;
  r = r - n * -2.12194440e-4f;
  float p = 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  const float er = p * (r * r) + r + 1.0f;
  // 2^n from the biased exponent b = n + 127; b <= 0 (below the normal range) gives scale 0 via
  // a mask from b's sign rather than a select (see log).
  const int32_t b = static_cast<int32_t>(bits(s) - 0x4B400000u) + 127;
  const uint32_t scale = (static_cast<uint32_t>(b) << 23) & ~static_cast<uint32_t>(b >> 31);
  return er * from_bits(scale);
}

// Row reductions. kLanes independent accumulators: that order is what lets GCC vectorise a float
// reduction without -ffast-math, with enough vector registers in flight to hide the latency.
constexpr int kLanes = 32;

// Max ignoring NaN; *has_nan says whether the row holds one.
template <typename T>
GENFAST_INLINE T row_max(const T* x, int64_t n, bool* has_nan) {
  T mx[kLanes], z[kLanes];
  for (int j = 0; j < kLanes; ++j) mx[j] = -std::numeric_limits<T>::infinity(), z[j] = T(0);
  int64_t i = 0;
  for (; i + kLanes <= n; i += kLanes) {
    for (int j = 0; j < kLanes; ++j) {
      const T v = x[i + j];
      mx[j] = v > mx[j] ? v : mx[j];
      z[j] += v * T(0);  // NaN iff some v is NaN or +-inf: a cheap filter for the exact check
    }
  }
  for (int j = 0; i + j < n; ++j) {
    const T v = x[i + j];
    mx[j] = v > mx[j] ? v : mx[j];
    z[j] += v * T(0);
  }
  T m = mx[0], zs = z[0];
  for (int j = 1; j < kLanes; ++j) m = mx[j] > m ? mx[j] : m, zs += z[j];
  *has_nan = false;
  if (zs != zs)
    for (int64_t k = 0; k < n && !*has_nan; ++k) *has_nan = x[k] != x[k];
  return m;
}

// Sum of f(i) over [0, n); the partial sums also round less than one running sum would.
template <typename T, typename F>
GENFAST_INLINE T lane_sum(int64_t n, F f) {
  T s[kLanes] = {};
  int64_t i = 0;
  for (; i + kLanes <= n; i += kLanes)
    for (int j = 0; j < kLanes; ++j) s[j] += f(i + j);
  for (int j = 0; i + j < n; ++j) s[j] += f(i + j);
  T t = T(0);
  for (int j = 0; j < kLanes; ++j) t += s[j];
  return t;
}

// First index of v in x[0..n), or n - 1 if absent: an index that must stay in range does.
template <typename T>
GENFAST_INLINE int64_t first_index_of(const T* x, int64_t n, T v) {
  int64_t i = 0;
  while (i < n - 1 && x[i] != v) ++i;
  return i;
}

#ifdef GENFAST_X86_SIMD
// Philox4x32-10 needs 32x32->64-bit products. GCC vectorises philox_block's scalar code badly
// (it widens to 64-bit lanes and repacks, or synthesises a 64-bit multiply from shifts: no faster
// than scalar on AVX2). Here each 64-bit lane carries one 32-bit word in its low half, which is
// exactly what (v)pmuludq multiplies; the high halves hold garbage that is never read, so a round
// is 2 multiplies, 2 shifts and 4 xors for 2/4/8 blocks at once (SSE2/AVX2/AVX-512).
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wpsabi"  // vector types cross only always_inline calls
typedef uint64_t u64x2 __attribute__((vector_size(16)));
typedef uint64_t u64x4 __attribute__((vector_size(32)));
typedef uint64_t u64x8 __attribute__((vector_size(64)));

// Plain inline, not always_inline: GCC checks always_inline targets before philox_lanes itself is
// inlined into the function of the matching target.
inline u64x2 mul_lo32(u64x2 a, u64x2 b) {
  return reinterpret_cast<u64x2>(_mm_mul_epu32(reinterpret_cast<__m128i>(a),
                                               reinterpret_cast<__m128i>(b)));
}
__attribute__((target("avx2"))) inline u64x4 mul_lo32(u64x4 a, u64x4 b) {
  return reinterpret_cast<u64x4>(_mm256_mul_epu32(reinterpret_cast<__m256i>(a),
                                                  reinterpret_cast<__m256i>(b)));
}
__attribute__((target("avx512f"))) inline u64x8 mul_lo32(u64x8 a, u64x8 b) {
  // The zero-masked form with every lane on is the same instruction; the plain one trips GCC 12's
  // -Wmaybe-uninitialized false positive on _mm512_undefined_epi32 (GCC PR 105593).
  return reinterpret_cast<u64x8>(_mm512_maskz_mul_epu32(static_cast<__mmask8>(0xFF),
                                                        reinterpret_cast<__m512i>(a),
                                                        reinterpret_cast<__m512i>(b)));
}

// The words of Philox blocks (seed, row, quad) for quads q0 .. q0 + quads - 1, in column order
// (w[4q + j] = word j of block q0 + q), bit-identical to philox_block. Whole vectors are
// computed: w must hold 4 * quads rounded up to a multiple of 8 blocks.
template <typename V>
GENFAST_INLINE void philox_lanes(uint64_t seed, uint64_t row, uint32_t q0, int64_t quads,
                                 uint32_t* w) {
  constexpr int L = sizeof(V) / sizeof(uint64_t);
  const V lo = V{} + 0xFFFFFFFFu, m0 = V{} + 0xD2511F53u, m1 = V{} + 0xCD9E8D57u;
  const V r1 = V{} + static_cast<uint32_t>(row), r2 = V{} + static_cast<uint32_t>(row >> 32);
  V k0[10], k1[10], lane;
  uint32_t a0 = static_cast<uint32_t>(seed), a1 = static_cast<uint32_t>(seed >> 32);
  for (int r = 0; r < 10; ++r, a0 += 0x9E3779B9u, a1 += 0xBB67AE85u) {
    k0[r] = V{} + a0;
    k1[r] = V{} + a1;
  }
  for (int i = 0; i < L; ++i) lane[i] = static_cast<uint64_t>(i);
  for (int64_t q = 0; q < quads; q += L) {
    V x0 = (lane + (q0 + static_cast<uint64_t>(q))) & lo, x1 = r1, x2 = r2, x3 = V{};
#pragma GCC unroll 10
    for (int r = 0; r < 10; ++r) {
      const V p0 = mul_lo32(x0, m0), p1 = mul_lo32(x2, m1);
      x0 = (p1 >> 32) ^ x1 ^ k0[r];
      x1 = p1;
      x2 = (p0 >> 32) ^ x3 ^ k1[r];
      x3 = p0;
    }
    // Pairs (x0, x1) and (x2, x3) of each block into 64-bit lanes, then interleave the blocks.
    const V a = (x0 & lo) | (x1 << 32), b = (x2 & lo) | (x3 << 32);
    V o0, o1;
    if constexpr (L == 2) {
      o0 = __builtin_shufflevector(a, b, 0, 2);
      o1 = __builtin_shufflevector(a, b, 1, 3);
    } else if constexpr (L == 4) {
      o0 = __builtin_shufflevector(a, b, 0, 4, 1, 5);
      o1 = __builtin_shufflevector(a, b, 2, 6, 3, 7);
    } else {
      o0 = __builtin_shufflevector(a, b, 0, 8, 1, 9, 2, 10, 3, 11);
      o1 = __builtin_shufflevector(a, b, 4, 12, 5, 13, 6, 14, 7, 15);
    }
    std::memcpy(w + 4 * q, &o0, sizeof(V));
    std::memcpy(w + 4 * q + 2 * L, &o1, sizeof(V));
  }
}
#pragma GCC diagnostic pop

#ifdef GENFAST_ISA_X86
GENFAST_TARGET_AVX512 inline void philox_words_avx512(uint64_t seed, uint64_t row, uint32_t q0,
                                                      int64_t quads, uint32_t* w) {
  philox_lanes<u64x8>(seed, row, q0, quads, w);
}
GENFAST_TARGET_AVX2 inline void philox_words_avx2(uint64_t seed, uint64_t row, uint32_t q0,
                                                  int64_t quads, uint32_t* w) {
  philox_lanes<u64x4>(seed, row, q0, quads, w);
}
#endif  // GENFAST_ISA_X86
#endif  // GENFAST_X86_SIMD

// w[0..4*quads) = the words of blocks q0.. of `row`, in column order; w holds whole vectors of
// blocks (4 * quads rounded up to a multiple of 32 words). Called once per chunk of columns, so
// it reads the active ISA (isa.h) itself: the words are the same on every copy.
inline void philox_words(uint64_t seed, uint64_t row, uint32_t q0, int64_t quads, uint32_t* w) {
#ifdef GENFAST_X86_SIMD
  switch (isa::active()) {
#ifdef GENFAST_ISA_X86
    case isa::kAvx512: return philox_words_avx512(seed, row, q0, quads, w);
    case isa::kAvx2: return philox_words_avx2(seed, row, q0, quads, w);
#endif
    case isa::kBase: return philox_lanes<u64x2>(seed, row, q0, quads, w);  // SSE2: x86-64's base
    default: break;
  }
#endif
  for (int64_t q = 0; q < quads; ++q) {
    const Philox4 b = philox_block(seed, row, q0 + static_cast<uint64_t>(q));
    for (int j = 0; j < 4; ++j) w[4 * q + j] = b.w[j];
  }
}

// out[r * ld + c] = the stream's uniform of (row0 + r, c) for a (rows, n) block: the Philox path
// of the kernels on its own, so tests can compare it bit for bit with genfast.random.
inline void philox_uniform_rows(uint64_t seed, uint64_t row0, int64_t rows, int64_t n,
                                int64_t ld, float* out) {
  constexpr int64_t kChunk = 256;
  alignas(64) uint32_t w[kChunk];
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t c0 = 0; c0 < n; c0 += kChunk) {
      const int64_t len = n - c0 < kChunk ? n - c0 : kChunk;
      philox_words(seed, row0 + static_cast<uint64_t>(r), static_cast<uint32_t>(c0 >> 2),
                   (len + 3) >> 2, w);
      for (int64_t i = 0; i < len; ++i) out[r * ld + c0 + i] = uniform_from_word(w[i]);
    }
}

}  // namespace genfast::fastmath
