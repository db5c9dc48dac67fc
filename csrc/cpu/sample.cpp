// C++ CPU Gumbel-max sampling (greedy, temperature, top-k, top-p). The contract is the module
// docstring of genfast/ops/sample.py; the noise and row preprocessing are shared with the gumbel
// stem through csrc/cpu/gumbel_row.h, the row sampler with the generators through
// csrc/cpu/sample_row.h.
#include "cpu/sample.h"

#include <cstdint>

#include "common/dtype.h"
#include "common/fastmath.h"
#include "common/parallel.h"
#include "cpu/sample_row.h"

namespace genfast::cpu {
namespace {

using namespace sample_rows;  // sample_row, FilterScratch, to_scale

// Row blocks [r0, r1): the unit parallel_for hands a thread, and the unit that is multiversioned.
struct SampleArgs {
  const void* x; int64_t xs; int64_t* out; int64_t n; uint64_t seed; double inv_temp;
  int64_t top_k; double top_p;
};

template <typename T>
GENFAST_INLINE void sample_block(const SampleArgs& a, int64_t r0, int64_t r1) {
  FilterScratch<T> scratch;  // stays empty unless the call filters
  for (int64_t r = r0; r < r1; ++r)
    a.out[r] = sample_row(static_cast<const T*>(a.x) + r * a.xs, a.n, a.seed,
                          static_cast<uint64_t>(r), to_scale<T>(a.inv_temp), a.top_k, a.top_p,
                          scratch);
}

GENFAST_MULTIVERSIONED(sample_f32, (const SampleArgs& a, int64_t r0, int64_t r1), (a, r0, r1),
                       sample_block<float>(a, r0, r1))
void sample_f64(const SampleArgs& a, int64_t r0, int64_t r1) { sample_block<double>(a, r0, r1); }

}  // namespace

void sample_categorical(const void* x, int64_t x_row_stride, int64_t* out, int64_t rows,
                        int64_t n, int dtype, uint64_t seed, double inv_temperature,
                        int64_t top_k, double top_p, int num_threads) {
  const bool f32 = cpu_is_float32(dtype, "sample kernel");
  if (rows <= 0 || n <= 0) return;
  const SampleArgs a{x, x_row_stride, out, n, seed, inv_temperature, top_k, top_p};
  parallel_for(rows, n, num_threads, [&](int64_t r0, int64_t r1) {
    f32 ? sample_f32(a, r0, r1) : sample_f64(a, r0, r1);
  });
}

}  // namespace genfast::cpu
