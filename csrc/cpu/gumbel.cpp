// C++ CPU Gumbel-Softmax kernels. The contract (noise stream, hostile rows, semantics) is the
// module docstring of genfast/ops/gumbel.py; this file implements it. The Gumbel-max sampler is
// csrc/cpu/sample.cpp; both share the row helpers of csrc/cpu/gumbel_row.h.
//
// Cost model: a row is a few hundred KB at most, so it lives in L2 and several passes over it
// are cheap; the work is the noise (one Philox block per 4 columns, then two logs per column)
// and one exp per column. Those run over fixed-size column chunks in loops GCC vectorises, with
// libm replaced by fastmath.h for float32. float64 (gradcheck) takes the same code with libm.
#include "cpu/gumbel.h"

#include <algorithm>
#include <cstdint>
#include <limits>

#include "common/dtype.h"
#include "common/fastmath.h"
#include "common/parallel.h"
#include "cpu/gumbel_row.h"

namespace genfast::cpu {
namespace {

using namespace gumbel_rows;  // noise and row preprocessing, shared with sample.cpp

// y = softmax((x' - m' + g) * inv_tau), or its hard one-hot, over one row. y is the scratch:
// it first holds a = x' - m' + g, so no row buffer exists besides the output.
template <typename T>
GENFAST_INLINE void fwd_row(const T* x, T* y, int64_t n, uint64_t seed, uint64_t row, T inv_tau,
                            bool hard) {
  bool nan;
  const T m = row_max(x, n, &nan);
  if (nan) {
    std::fill(y, y + n, std::numeric_limits<T>::quiet_NaN());
    return;
  }
  T g[kChunk];
  for (int64_t c0 = 0; c0 < n; c0 += kChunk) {
    const int64_t len = std::min(kChunk, n - c0);
    gumbel_chunk(seed, row, c0, len, g);
    for (int64_t i = 0; i < len; ++i) y[c0 + i] = shifted(x[c0 + i], m) + g[i];
  }
  const T amax = row_max(y, n, &nan);  // finite: the shifted max is 0 and |g| < 17
  if (hard) {
    const int64_t j = first_index_of(y, n, amax);
    std::fill(y, y + n, T(0));
    y[j] = T(1);
    return;
  }
  const T sum = lane_sum<T>(n, [&](int64_t k) {
    const T e = fexp((y[k] - amax) * inv_tau);  // argument <= 0: no overflow for any tau
    y[k] = e;
    return e;
  });
  const T inv = T(1) / sum;  // sum >= 1: the argmax contributes exp(0)
  for (int64_t k = 0; k < n; ++k) y[k] *= inv;
}

// dx = y * (dy - <dy, y>) * inv_tau. In recompute mode y is regenerated into dx (the soft
// forward of the logits in src), so the hard path never stores a soft sample.
template <typename T>
GENFAST_INLINE void bwd_row(const T* dy, const T* src, T* dx, int64_t n, uint64_t seed,
                            uint64_t row, T inv_tau, bool recompute) {
  const T* y = src;
  if (recompute) {
    fwd_row(src, dx, n, seed, row, inv_tau, false);
    y = dx;
  }
  const T dot = lane_sum<T>(n, [&](int64_t k) { return dy[k] * y[k]; });
  for (int64_t k = 0; k < n; ++k) dx[k] = y[k] * (dy[k] - dot) * inv_tau;
}

// Row blocks [r0, r1): the unit parallel_for hands a thread, and the unit that is multiversioned
// (one dispatch per block, and the row loops inline into each ISA's copy).
struct FwdArgs {
  const void* x; int64_t xs; void* y; int64_t ys; int64_t n; uint64_t seed; double inv_tau;
  bool hard;
};
struct BwdArgs {
  const void* dy; int64_t dys; const void* src; int64_t srcs; void* dx; int64_t dxs; int64_t n;
  uint64_t seed; double inv_tau; bool recompute;
};

template <typename T>
GENFAST_INLINE void fwd_block(const FwdArgs& a, int64_t r0, int64_t r1) {
  for (int64_t r = r0; r < r1; ++r)
    fwd_row(static_cast<const T*>(a.x) + r * a.xs, static_cast<T*>(a.y) + r * a.ys, a.n, a.seed,
            static_cast<uint64_t>(r), to_scale<T>(a.inv_tau), a.hard);
}

template <typename T>
GENFAST_INLINE void bwd_block(const BwdArgs& a, int64_t r0, int64_t r1) {
  for (int64_t r = r0; r < r1; ++r)
    bwd_row(static_cast<const T*>(a.dy) + r * a.dys, static_cast<const T*>(a.src) + r * a.srcs,
            static_cast<T*>(a.dx) + r * a.dxs, a.n, a.seed, static_cast<uint64_t>(r),
            to_scale<T>(a.inv_tau), a.recompute);
}

GENFAST_MULTIVERSIONED(fwd_f32, (const FwdArgs& a, int64_t r0, int64_t r1), (a, r0, r1),
                       fwd_block<float>(a, r0, r1))
GENFAST_MULTIVERSIONED(bwd_f32, (const BwdArgs& a, int64_t r0, int64_t r1), (a, r0, r1),
                       bwd_block<float>(a, r0, r1))
void fwd_f64(const FwdArgs& a, int64_t r0, int64_t r1) { fwd_block<double>(a, r0, r1); }
void bwd_f64(const BwdArgs& a, int64_t r0, int64_t r1) { bwd_block<double>(a, r0, r1); }

}  // namespace

void gumbel_softmax_fwd(const void* x, int64_t x_row_stride, void* y, int64_t y_row_stride,
                        int64_t rows, int64_t n, int dtype, uint64_t seed, double inv_tau,
                        bool hard, int num_threads) {
  const bool f32 = cpu_is_float32(dtype, "gumbel kernels");
  if (rows <= 0 || n <= 0) return;
  const FwdArgs a{x, x_row_stride, y, y_row_stride, n, seed, inv_tau, hard};
  parallel_for(rows, n, num_threads, [&](int64_t r0, int64_t r1) {
    f32 ? fwd_f32(a, r0, r1) : fwd_f64(a, r0, r1);
  });
}

void gumbel_softmax_bwd(const void* dy, int64_t dy_row_stride, const void* src,
                        int64_t src_row_stride, void* dx, int64_t dx_row_stride, int64_t rows,
                        int64_t n, int dtype, uint64_t seed, double inv_tau, bool recompute,
                        int num_threads) {
  const bool f32 = cpu_is_float32(dtype, "gumbel kernels");
  if (rows <= 0 || n <= 0) return;
  const BwdArgs a{dy, dy_row_stride, src, src_row_stride, dx, dx_row_stride, n, seed, inv_tau,
                  recompute};
  parallel_for(rows, n, num_threads, [&](int64_t r0, int64_t r1) {
    f32 ? bwd_f32(a, r0, r1) : bwd_f64(a, r0, r1);
  });
}

}  // namespace genfast::cpu
