// C++ CPU kernels of the gradient penalty: per-sample gradient norms and their row scaling.
// The contract (layout, accumulation, non-finite rows) is the module docstring of
// genfast/ops/gradient_penalty.py; this file implements it.
//
// Cost model: both kernels are one streaming pass over the (rows, d) gradient, memory-bound.
// The norm reads d values and writes one; scaling reads d and writes d. The sums use
// fastmath::lane_sum's independent accumulators, which is what lets GCC vectorise a float
// reduction without -ffast-math.
#include "cpu/gradient_penalty.h"

#include <cmath>
#include <cstdint>
#include <stdexcept>
#include <string>

#include "common/dtype.h"
#include "common/fastmath.h"
#include "common/parallel.h"


namespace genfast::cpu {
namespace {

struct NormArgs {
  const void* g; int64_t ld; int64_t d; void* norms;
};
struct ScaleArgs {
  const void* g; int64_t ld; const void* scale; void* out; int64_t d;
};

// T is the storage type and the accumulation type (float32 data accumulates in float32, float64
// in float64: the contract).
template <typename T>
GENFAST_INLINE void norm_block(const NormArgs& a, int64_t r0, int64_t r1) {
  const T* g = static_cast<const T*>(a.g);
  T* norms = static_cast<T*>(a.norms);
  for (int64_t r = r0; r < r1; ++r) {
    const T* row = g + r * a.ld;
    norms[r] = std::sqrt(fastmath::lane_sum<T>(a.d, [&](int64_t k) { return row[k] * row[k]; }));
  }
}

template <typename T>
GENFAST_INLINE void scale_block(const ScaleArgs& a, int64_t r0, int64_t r1) {
  const T* g = static_cast<const T*>(a.g);
  const T* scale = static_cast<const T*>(a.scale);
  T* out = static_cast<T*>(a.out);
  for (int64_t r = r0; r < r1; ++r) {
    const T* row = g + r * a.ld;
    T* o = out + r * a.d;
    const T s = scale[r];
    for (int64_t k = 0; k < a.d; ++k) o[k] = s * row[k];
  }
}

GENFAST_MULTIVERSIONED(norm_f32, (const NormArgs& a, int64_t r0, int64_t r1), (a, r0, r1),
                       norm_block<float>(a, r0, r1))
GENFAST_MULTIVERSIONED(scale_f32, (const ScaleArgs& a, int64_t r0, int64_t r1), (a, r0, r1),
                       scale_block<float>(a, r0, r1))
void norm_f64(const NormArgs& a, int64_t r0, int64_t r1) { norm_block<double>(a, r0, r1); }
void scale_f64(const ScaleArgs& a, int64_t r0, int64_t r1) { scale_block<double>(a, r0, r1); }

}  // namespace

void gp_row_norms(const void* g, int64_t ld, int64_t rows, int64_t d, int dtype, void* norms,
                  int num_threads) {
  const bool f32 = cpu_is_float32(dtype, "gradient-penalty kernels");
  if (rows <= 0) return;
  const NormArgs a{g, ld, d, norms};  // d == 0: lane_sum of nothing, every norm is 0
  parallel_for(rows, d, num_threads, [&](int64_t r0, int64_t r1) {
    f32 ? norm_f32(a, r0, r1) : norm_f64(a, r0, r1);
  });
}

void gp_scale_rows(const void* g, int64_t ld, const void* scale, void* out, int64_t rows,
                   int64_t d, int dtype, int num_threads) {
  const bool f32 = cpu_is_float32(dtype, "gradient-penalty kernels");
  if (rows <= 0 || d <= 0) return;
  const ScaleArgs a{g, ld, scale, out, d};
  parallel_for(rows, d, num_threads, [&](int64_t r0, int64_t r1) {
    f32 ? scale_f32(a, r0, r1) : scale_f64(a, r0, r1);
  });
}

}  // namespace genfast::cpu
