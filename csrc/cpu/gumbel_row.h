// Row helpers shared by the C++ CPU kernels of the gumbel and sample stems (csrc/cpu/gumbel.cpp,
// csrc/cpu/sample.cpp): the noise of the contract's "Noise" section and the row preprocessing of
// its "Row preprocessing" section (genfast/ops/gumbel.py), written once. Include from .cpp only.
#pragma once
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>

#include "common/fastmath.h"

namespace genfast::cpu::gumbel_rows {

// Columns per noise chunk: the words, the noise and the chunk's x and y stay in L1.
constexpr int64_t kChunk = 256;

template <typename T>
constexpr T kInf = std::numeric_limits<T>::infinity();

using fastmath::first_index_of;
using fastmath::lane_sum;
using fastmath::row_max;

// A finite scale past float range would round to +inf: 0 * inf = NaN in the softmax, and a false
// "greedy" in sampling. The largest float keeps the limit's meaning; +inf itself stays.
template <typename T>
inline T to_scale(double v) {
  constexpr double kMax = std::numeric_limits<T>::max();
  return v == kInf<double> ? kInf<T> : static_cast<T>(std::min(v, kMax));
}

GENFAST_INLINE float flog(float x) { return fastmath::log(x); }
GENFAST_INLINE double flog(double x) { return std::log(x); }
GENFAST_INLINE float fexp(float x) { return fastmath::exp(x); }
GENFAST_INLINE double fexp(double x) { return std::exp(x); }

using fastmath::philox_words;  // the active ISA's copy (common/isa.h)

// Gumbel noise g[0..len) of row `row`, columns c0.. (c0 a multiple of 4): the stream of
// genfast/random.py.
template <typename T>
GENFAST_INLINE void gumbel_chunk(uint64_t seed, uint64_t row, int64_t c0, int64_t len, T* g) {
  alignas(64) uint32_t w[kChunk];  // kChunk / 4 blocks: a whole number of vectors
  const auto q0 = static_cast<uint32_t>(static_cast<uint64_t>(c0) >> 2);  // the stream's 32 bits
  philox_words(seed, row, q0, (len + 3) >> 2, w);
  for (int64_t i = 0; i < len; ++i) {
    // uniform_from_word; w >> 9 < 2^23 fits int32, whose conversion is one SIMD op.
    const float u = (static_cast<float>(static_cast<int32_t>(w[i] >> 9)) + 0.5f) *
                    1.1920928955078125e-07f;
    g[i] = -flog(-flog(static_cast<T>(u)));
  }
}

// (x' - m') of the contract's preprocessing, for every row kind at once: with m = +-inf the
// entries equal to m become 0 and the rest -inf (x - inf) or nothing is left (all equal m).
// float32 masks the bits instead of selecting: GCC turns a select between float results into a
// branch (x - m may trap under its default -ftrapping-math), and a branch blocks vectorisation.
GENFAST_INLINE float shifted(float x, float m) {
  const uint32_t keep = x == m ? 0u : ~0u;
  return fastmath::from_bits(fastmath::bits(x - m) & keep);
}
GENFAST_INLINE double shifted(double x, double m) { return x == m ? 0.0 : x - m; }

}  // namespace genfast::cpu::gumbel_rows
