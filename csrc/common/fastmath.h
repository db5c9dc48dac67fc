// Branch-free float32 log/exp for the CPU kernels' hot loops.
//
// libm's logf/expf are opaque calls with special-case branches, so a loop that uses them never
// vectorises; these are plain arithmetic on bits and compile to straight SIMD code under -O3
// (no -ffast-math needed). The polynomials are Cephes' logf/expf (S. L. Moshier): ~1 ulp over the
// ranges the kernels use. Each function states its domain; outside it the result is unspecified,
// except where noted.
#pragma once
#include <cstdint>
#include <cstring>

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
GENFAST_INLINE float log(float x) {
  const uint32_t b = bits(x);
  // x = 2^e * f with f in [0.5, 1).
  float e = static_cast<float>(static_cast<int32_t>(b >> 23) - 126);
  const float f = from_bits((b & 0x007FFFFFu) | 0x3F000000u);
  // Recentre f to [sqrt(1/2), sqrt(2)) so the polynomial's argument t = f - 1 is small and,
  // near x = 1, exact: log stays accurate relative to its (tiny) value there, which
  // -log(-log(u)) needs for u close to 1.
  const bool lo = f < 0.707106781186547524f;
  const float t = (lo ? f + f : f) - 1.0f;
  e = lo ? e - 1.0f : e;
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

// e^x for x <= 88 (above that 2^n overflows; callers pass x <= 0). x below the
// smallest normal's log (-87.34) flushes to 0, so -inf -> 0; NaN -> NaN.
GENFAST_INLINE float exp(float x) {
  constexpr float kMin = -87.3365447505531f;  // log(FLT_MIN)
  const float xc = x < kMin ? kMin : x;
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
  // 2^n from n + 127 in the exponent field; n >= -126 after the clamp, so it is a normal.
  const float scale = from_bits((bits(s) - 0x4B400000u + 127u) << 23);
  const float y = er * scale;
  return x < kMin ? 0.0f : y;
}

}  // namespace genfast::fastmath
