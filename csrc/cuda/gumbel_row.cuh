// Row helpers shared by the CUDA kernels of the gumbel and sample stems (csrc/cuda/gumbel.cu,
// csrc/cuda/sample.cu): the noise and row preprocessing of the contract in genfast/ops/gumbel.py,
// the row max pass and the launch shapes, written once. Include from .cu files only.
//
// Work split: a group of C::kThreads threads owns one row, each thread the quads (4 columns, one
// Philox call) rank, rank + kThreads, ...  Short rows (n <= 1024) use sub-warp / warp groups, so
// a 10-class row does not leave 500 threads idle; longer rows use one 512-thread block. When the
// row fits (kItems > 0) every thread keeps its quads in registers, so logits are read from
// global memory once and the noise is drawn once; longer rows re-read x (L2-resident in the
// common case) and redraw the noise in each pass instead.
#pragma once
#include <cuda_runtime.h>

#include <cstdint>

#include "common/philox.h"
#include "cuda/common.cuh"

namespace genfast::cuda::gumbel_rows {

using dev::acc_t;
using dev::Cfg;
using dev::Group;
using dev::NanMaxOp;
using dev::neg_inf;
using dev::Quads;

// g = -log(-log(u)) for the 4 columns of quad q (contract: "Noise"); double math for float64.
template <typename A>
__device__ __forceinline__ void gumbel_quad(uint64_t seed, int64_t row, int64_t q, A (&g)[4]) {
  const Philox4 b = philox_block(seed, static_cast<uint64_t>(row), static_cast<uint64_t>(q));
#pragma unroll
  for (int j = 0; j < 4; ++j) {
    const A u = static_cast<A>(uniform_from_word(b.w[j]));
    g[j] = -dev::dlog(-dev::dlog(u));
  }
}

// x -> x' - m' (contract: "Row preprocessing"). A NaN max takes the first branch, so NaN flows
// into every column of the row.
template <typename A>
struct Shift {
  A m;
  int mode;  // 0: m finite or NaN; 1: m == +inf; 2: m == -inf
  __device__ explicit Shift(A m_) : m(m_), mode(m_ == -neg_inf<A>() ? 1 : m_ == neg_inf<A>() ? 2 : 0) {}
  __device__ __forceinline__ A operator()(A x) const {
    if (mode == 0) return x - m;
    if (mode == 1) return x == -neg_inf<A>() ? A(0) : neg_inf<A>();
    return A(0);
  }
};

// Pass 1 of every op: m with NaN propagation, caching the logits when the row fits.
template <class C, typename T, typename A>
__device__ __forceinline__ A row_max(const Group<C::kThreads>& grp, const Quads<C>& quads,
                                     const T* x, int64_t n, bool vx, A (&c)[C::kSlots][4]) {
  A m = neg_inf<A>();
  quads([&](int i, int64_t q) {
    A v[4];
    dev::load_quad(x, q, n, vx, neg_inf<A>(), v);
#pragma unroll
    for (int j = 0; j < 4; ++j) {
      m = NanMaxOp()(m, v[j]);
      if constexpr (C::kItems > 0) c[i][j] = v[j];
    }
  });
  m = grp.reduce(m, NanMaxOp());
  // max(+0, -0) depends on operand order; canonicalise so every lane holds the same m.
  return m == A(0) ? A(0) : m;
}

// Logits of quad (i, q): from the register cache, or re-read when the row is not cached.
template <class C, typename T, typename A>
__device__ __forceinline__ void x_quad(const A (&c)[C::kSlots][4], int i, const T* x, int64_t q,
                                       int64_t n, bool vx, A (&v)[4]) {
  if constexpr (C::kItems > 0) {
#pragma unroll
    for (int j = 0; j < 4; ++j) v[j] = c[i][j];
  } else {
    dev::load_quad(x, q, n, vx, neg_inf<A>(), v);
  }
}



// Enough blocks to fill any GPU many times over; the grid-stride row loop does the rest (rows
// can exceed gridDim limits and the per-block loop costs nothing).
constexpr int64_t kMaxBlocks = 65535;

// Row length -> launch shape: the smallest group whose register cache holds the row, so short
// rows keep lanes busy; register caches cap at 32 values per thread (16 for double). Groups
// smaller than kMinThreads are skipped (the sampler's radix histograms need whole warps).
template <class C, int kMinThreads = 2, class F>
bool try_cfg(int64_t n, F& f, int& rc) {
  if constexpr (C::kThreads < kMinThreads) {
    return false;
  } else {
    if (n > C::kMaxN) return false;
    rc = f(C{});
    return true;
  }
}

template <typename T, int kMinThreads = 2, class F>
int with_cfg(int64_t n, F&& f) {
  int rc = 0;
  // First config whose kMaxN holds the row; the uncached block config takes the rest.
  constexpr int kMin = kMinThreads;
  bool done = try_cfg<Cfg<4, 1>, kMin>(n, f, rc) || try_cfg<Cfg<8, 1>, kMin>(n, f, rc) ||
              try_cfg<Cfg<16, 1>, kMin>(n, f, rc) || try_cfg<Cfg<32, 1>, kMin>(n, f, rc) ||
              try_cfg<Cfg<32, 2>, kMin>(n, f, rc) || try_cfg<Cfg<32, 4>, kMin>(n, f, rc) ||
              try_cfg<Cfg<32, 8>, kMin>(n, f, rc) || try_cfg<Cfg<512, 2>, kMin>(n, f, rc) ||
              try_cfg<Cfg<512, 4>, kMin>(n, f, rc);
  if constexpr (sizeof(T) < 8) {
    // 32 cached doubles per thread (plus dy in the backward) would spill under 512-thread bounds.
    if (!done) done = try_cfg<Cfg<512, 8>, kMin>(n, f, rc);
  }
  if (!done) try_cfg<Cfg<512, 0>, kMin>(n, f, rc);
  return rc;
}

template <class C>
unsigned grid_for(int64_t rows) {
  const int64_t blocks = (rows + C::kRowsPerBlock - 1) / C::kRowsPerBlock;
  return static_cast<unsigned>(blocks < kMaxBlocks ? blocks : kMaxBlocks);
}

}  // namespace genfast::cuda::gumbel_rows
