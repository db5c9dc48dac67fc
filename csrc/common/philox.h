// Philox4x32-10, the counter-based RNG every genfast backend shares (genfast/random.py is the
// Python oracle and documents the stream). Header-only, usable from host C++ and CUDA device code.
#pragma once
#include <cstdint>

#if defined(__CUDACC__)
#define GENFAST_HD __host__ __device__ __forceinline__
#else
#define GENFAST_HD inline
#endif

namespace genfast {

struct Philox4 {
  uint32_t w[4];
};

GENFAST_HD uint32_t mulhilo32(uint32_t a, uint32_t b, uint32_t* hi) {
#if defined(__CUDA_ARCH__)
  *hi = __umulhi(a, b);
  return a * b;
#else
  const uint64_t p = static_cast<uint64_t>(a) * b;
  *hi = static_cast<uint32_t>(p >> 32);
  return static_cast<uint32_t>(p);
#endif
}

// One 128-bit block for counter (c0, c1, c2, c3) and key (k0, k1).
GENFAST_HD Philox4 philox4x32_10(uint32_t c0, uint32_t c1, uint32_t c2, uint32_t c3,
                                  uint32_t k0, uint32_t k1) {
#if defined(__CUDACC__)
#pragma unroll
#endif
  for (int r = 0; r < 10; ++r) {
    uint32_t hi0, hi1;
    const uint32_t lo0 = mulhilo32(0xD2511F53u, c0, &hi0);
    const uint32_t lo1 = mulhilo32(0xCD9E8D57u, c2, &hi1);
    c0 = hi1 ^ c1 ^ k0;
    c1 = lo1;
    c2 = hi0 ^ c3 ^ k1;
    c3 = lo0;
    k0 += 0x9E3779B9u;
    k1 += 0xBB67AE85u;
  }
  return Philox4{{c0, c1, c2, c3}};
}

// The block for row `row`, columns 4*quad .. 4*quad+3 of an op's (rows, n) view.
GENFAST_HD Philox4 philox_block(uint64_t seed, uint64_t row, uint64_t quad) {
  return philox4x32_10(static_cast<uint32_t>(quad), static_cast<uint32_t>(row),
                       static_cast<uint32_t>(row >> 32), 0u, static_cast<uint32_t>(seed),
                       static_cast<uint32_t>(seed >> 32));
}

// Uniform in [2^-24, 1 - 2^-24], exact in float: -log(-log(u)) is always finite.
GENFAST_HD float uniform_from_word(uint32_t w) {
  return (static_cast<float>(w >> 9) + 0.5f) * 1.1920928955078125e-07f;  // 2^-23
}

}  // namespace genfast
