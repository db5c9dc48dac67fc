// CUDA Gumbel-Softmax kernels. The contract (noise stream, hostile-row preprocessing, forward /
// backward semantics) is the module docstring of genfast/ops/gumbel.py; comments below cite its
// terms (m, x', m', a, A). The row work split, the noise and the preprocessing are
// csrc/cuda/gumbel_row.cuh, shared with the sampler (csrc/cuda/sample.cu).
#include <cuda_runtime.h>

#include <cfloat>
#include <cmath>
#include <cstdint>

#include "cuda/common.cuh"
#include "cuda/gumbel.h"
#include "cuda/gumbel_row.cuh"

namespace genfast::cuda {
namespace {

using dev::acc_t;
using dev::ArgMax;
using dev::ArgMaxOp;
using dev::for_each_row;
using dev::Group;
using dev::MaxOp;
using dev::neg_inf;
using dev::Quads;
using dev::SumOp;
using gumbel_rows::grid_for;
using gumbel_rows::gumbel_quad;
using gumbel_rows::row_max;
using gumbel_rows::Shift;
using gumbel_rows::with_cfg;
using gumbel_rows::x_quad;

// Online softmax state over a (a, max of a so far) and s (sum of exp((a - A) * inv_tau)).
template <typename A>
struct SoftState {
  A a, s;
};
template <typename A>
__device__ __forceinline__ SoftState<A> shfl_xor(const SoftState<A>& p, int m) {
  return {dev::shfl_xor(p.a, m), dev::shfl_xor(p.s, m)};
}
template <typename A>
__device__ __forceinline__ void online_add(SoftState<A>& st, A a, A it) {
  if (a > st.a) {
    st.s = st.s * dev::dexp((st.a - a) * it) + A(1);  // st.a == -inf: exp(-inf) = 0
    st.a = a;
  } else if (a != neg_inf<A>()) {  // -inf has weight 0, and -inf - -inf would be NaN
    st.s += dev::dexp((a - st.a) * it);  // NaN a poisons s, as the contract wants
  }
}
template <typename A>
struct SoftOp {
  A it;
  __device__ SoftState<A> operator()(const SoftState<A>& p, const SoftState<A>& q) const {
    const A a = q.a > p.a ? q.a : p.a;
    // An empty partial (s == 0, a == -inf) contributes 0, not 0 * exp(NaN).
    const A sp = p.s == A(0) ? A(0) : p.s * dev::dexp((p.a - a) * it);
    const A sq = q.s == A(0) ? A(0) : q.s * dev::dexp((q.a - a) * it);
    return {a, sp + sq};
  }
};

template <typename A>
struct SoftStats {
  A amax;  // A = max_c a[c]
  A rsum;  // 1 / sum_c exp((a[c] - A) * inv_tau)
};

// Statistics of the soft forward. Cached rows: two exact passes over registers (c holds x on
// entry and exp((a - A) * inv_tau) on exit, one exp per element). Uncached rows: one online pass.
template <class C, typename T, typename A>
__device__ __forceinline__ SoftStats<A> soft_stats(const Group<C::kThreads>& grp,
                                                   const Quads<C>& quads, const T* x, int64_t n,
                                                   bool vx, uint64_t seed, int64_t row,
                                                   const Shift<A>& sh, A it,
                                                   A (&c)[C::kSlots][4]) {
  if constexpr (C::kItems > 0) {
    A amax = neg_inf<A>();
    quads([&](int i, int64_t q) {
      A g[4];
      gumbel_quad(seed, row, q, g);
#pragma unroll
      for (int j = 0; j < 4; ++j) {
        const A a = 4 * q + j < n ? sh(c[i][j]) + g[j] : neg_inf<A>();
        c[i][j] = a;
        amax = MaxOp()(amax, a);
      }
    });
    amax = grp.reduce(amax, MaxOp());
    A sum = 0;
    quads([&](int i, int64_t) {
#pragma unroll
      for (int j = 0; j < 4; ++j) {
        const A e = dev::dexp((c[i][j] - amax) * it);  // padding: exp(-inf) = 0
        c[i][j] = e;
        sum += e;
      }
    });
    sum = grp.reduce(sum, SumOp());
    return {amax, A(1) / sum};
  } else {
    SoftState<A> st{neg_inf<A>(), A(0)};
    quads([&](int, int64_t q) {
      A v[4], g[4];
      dev::load_quad(x, q, n, vx, neg_inf<A>(), v);
      gumbel_quad(seed, row, q, g);
#pragma unroll
      for (int j = 0; j < 4; ++j)
        if (4 * q + j < n) online_add(st, sh(v[j]) + g[j], it);
    });
    st = grp.reduce(st, SoftOp<A>{it});
    return {st.a, A(1) / st.s};
  }
}

// Soft sample y of quad (i, q) after soft_stats. Padding columns hold garbage: never store them.
template <class C, typename T, typename A>
__device__ __forceinline__ void soft_quad(const SoftStats<A>& st, const A (&c)[C::kSlots][4],
                                          int i, const T* x, int64_t q, int64_t n, bool vx,
                                          uint64_t seed, int64_t row, const Shift<A>& sh, A it,
                                          A (&y)[4]) {
  if constexpr (C::kItems > 0) {
#pragma unroll
    for (int j = 0; j < 4; ++j) y[j] = c[i][j] * st.rsum;
  } else {
    A v[4], g[4];
    dev::load_quad(x, q, n, vx, neg_inf<A>(), v);
    gumbel_quad(seed, row, q, g);
#pragma unroll
    for (int j = 0; j < 4; ++j) y[j] = dev::dexp((sh(v[j]) + g[j] - st.amax) * it) * st.rsum;
  }
}

template <typename T, class C>
__global__ void __launch_bounds__(C::kBlock)
    gumbel_fwd_kernel(const T* x,              // logits, (rows, n), row stride xs
                      int64_t xs,              //
                      T* y,                    // output, (rows, n), row stride ys
                      int64_t ys,              //
                      int64_t rows, int64_t n,  //
                      const int64_t* seed_ptr,  // device int64: the Philox key
                      acc_t<T> it,              // inv_tau = 1 / tau, finite, > 0
                      bool hard) {              // write one-hots of argmax a
  using A = acc_t<T>;
  __shared__ alignas(16) unsigned char scratch[Group<C::kThreads>::kScratchBytes];
  const Group<C::kThreads> grp{static_cast<int>(threadIdx.x % C::kThreads), scratch};
  const Quads<C> quads{grp.rank, (n + 3) / 4};
  const uint64_t seed = static_cast<uint64_t>(*seed_ptr);
  for_each_row<C>(rows, [&](int64_t row, bool live) {
    const T* xr = x + row * xs;
    T* yr = y + row * ys;
    const bool vx = dev::vec_ok(xr), vy = dev::vec_ok(yr);
    A c[C::kSlots][4];
    const A m = row_max<C>(grp, quads, xr, n, vx, c);
    const Shift<A> sh(m);
    if (hard) {
      // j = first argmax of a. The contract says a NaN row's outputs are NaN, so such a row is
      // written all-NaN rather than as a one-hot at an arbitrary index.
      ArgMax<A> best{neg_inf<A>(), n};
      quads([&](int i, int64_t q) {
        A v[4], g[4];
        x_quad<C>(c, i, xr, q, n, vx, v);
        gumbel_quad(seed, row, q, g);
#pragma unroll
        for (int j = 0; j < 4; ++j) {
          const A a = sh(v[j]) + g[j];
          if (4 * q + j < n && a > best.v) best = {a, 4 * q + j};
        }
      });
      best = grp.reduce(best, ArgMaxOp());
      if (!live) return;
      const bool nan_row = m != m;
      quads([&](int, int64_t q) {
        A o[4];
#pragma unroll
        for (int j = 0; j < 4; ++j)
          o[j] = nan_row ? dev::quiet_nan<A>() : (4 * q + j == best.i ? A(1) : A(0));
        dev::store_quad(yr, q, n, vy, o);
      });
      return;
    }
    const SoftStats<A> st = soft_stats<C>(grp, quads, xr, n, vx, seed, row, sh, it, c);
    if (!live) return;
    quads([&](int i, int64_t q) {
      A o[4];
      soft_quad<C>(st, c, i, xr, q, n, vx, seed, row, sh, it, o);
      dev::store_quad(yr, q, n, vy, o);
    });
  });
}

template <typename T, class C>
__global__ void __launch_bounds__(C::kBlock)
    gumbel_bwd_kernel(const T* dy, int64_t dys,    // upstream gradient, (rows, n)
                      const T* src, int64_t srcs,  // saved soft y, or the logits if recompute
                      T* dx, int64_t dxs,          // output gradient, (rows, n)
                      int64_t rows, int64_t n,     //
                      const int64_t* seed_ptr,     // device int64 seed (used if recompute)
                      acc_t<T> it,                 // inv_tau
                      bool recompute) {            // regenerate y from logits + seed
  using A = acc_t<T>;
  __shared__ alignas(16) unsigned char scratch[Group<C::kThreads>::kScratchBytes];
  const Group<C::kThreads> grp{static_cast<int>(threadIdx.x % C::kThreads), scratch};
  const Quads<C> quads{grp.rank, (n + 3) / 4};
  const uint64_t seed = static_cast<uint64_t>(*seed_ptr);
  for_each_row<C>(rows, [&](int64_t row, bool live) {
    const T* dyr = dy + row * dys;
    const T* sr = src + row * srcs;
    T* dxr = dx + row * dxs;
    const bool vdy = dev::vec_ok(dyr), vs = dev::vec_ok(sr), vdx = dev::vec_ok(dxr);
    A c[C::kSlots][4];  // y
    A d[C::kSlots][4];  // dy
    // Used only when recompute; otherwise y is read from src.
    Shift<A> sh(A(0));
    SoftStats<A> st{A(0), A(0)};
    if (recompute) {
      sh = Shift<A>(row_max<C>(grp, quads, sr, n, vs, c));
      st = soft_stats<C>(grp, quads, sr, n, vs, seed, row, sh, it, c);
    }
    auto y_quad = [&](int i, int64_t q, A (&yv)[4]) {
      if (recompute) {
        soft_quad<C>(st, c, i, sr, q, n, vs, seed, row, sh, it, yv);
      } else {
        dev::load_quad(sr, q, n, vs, A(0), yv);
      }
    };
    A dot = 0;  // sum_k dy[k] * y[k]
    quads([&](int i, int64_t q) {
      A yv[4], g[4];
      y_quad(i, q, yv);
      dev::load_quad(dyr, q, n, vdy, A(0), g);
#pragma unroll
      for (int j = 0; j < 4; ++j) {
        if (4 * q + j >= n) yv[j] = A(0);  // recomputed padding is garbage, not 0
        dot += g[j] * yv[j];
        if constexpr (C::kItems > 0) c[i][j] = yv[j], d[i][j] = g[j];
      }
    });
    dot = grp.reduce(dot, SumOp());
    if (!live) return;
    quads([&](int i, int64_t q) {
      A yv[4], g[4];
      if constexpr (C::kItems > 0) {
#pragma unroll
        for (int j = 0; j < 4; ++j) yv[j] = c[i][j], g[j] = d[i][j];
      } else {
        y_quad(i, q, yv);
        dev::load_quad(dyr, q, n, vdy, A(0), g);
      }
      A o[4];
#pragma unroll
      for (int j = 0; j < 4; ++j) o[j] = yv[j] * (g[j] - dot) * it;
      dev::store_quad(dxr, q, n, vdx, o);
    });
  });
}

}  // namespace

int gumbel_softmax_fwd(const void* x, int64_t x_row_stride, void* y, int64_t y_row_stride,
                       int64_t rows, int64_t n, int dtype, const int64_t* seed, double inv_tau,
                       bool hard, void* stream) {
  if (rows < 0 || n < 0) return static_cast<int>(cudaErrorInvalidValue);
  if (rows == 0 || n == 0) return static_cast<int>(cudaSuccess);
  if (x == nullptr || y == nullptr || seed == nullptr) return static_cast<int>(cudaErrorInvalidValue);
  return with_dtype(dtype, [&](auto tag) {
    using T = typename decltype(tag)::type;
    return with_cfg<T>(n, [&](auto cfg) {
      using C = decltype(cfg);
      gumbel_fwd_kernel<T, C><<<grid_for<C>(rows), C::kBlock, 0, static_cast<cudaStream_t>(stream)>>>(
          static_cast<const T*>(x), x_row_stride, static_cast<T*>(y), y_row_stride, rows, n, seed,
          to_param<acc_t<T>>(inv_tau), hard);
      return static_cast<int>(cudaGetLastError());
    });
  });
}

int gumbel_softmax_bwd(const void* dy, int64_t dy_row_stride, const void* src,
                       int64_t src_row_stride, void* dx, int64_t dx_row_stride, int64_t rows,
                       int64_t n, int dtype, const int64_t* seed, double inv_tau, bool recompute,
                       void* stream) {
  if (rows < 0 || n < 0) return static_cast<int>(cudaErrorInvalidValue);
  if (rows == 0 || n == 0) return static_cast<int>(cudaSuccess);
  if (dy == nullptr || src == nullptr || dx == nullptr || seed == nullptr)
    return static_cast<int>(cudaErrorInvalidValue);
  return with_dtype(dtype, [&](auto tag) {
    using T = typename decltype(tag)::type;
    return with_cfg<T>(n, [&](auto cfg) {
      using C = decltype(cfg);
      gumbel_bwd_kernel<T, C><<<grid_for<C>(rows), C::kBlock, 0, static_cast<cudaStream_t>(stream)>>>(
          static_cast<const T*>(dy), dy_row_stride, static_cast<const T*>(src), src_row_stride,
          static_cast<T*>(dx), dx_row_stride, rows, n, seed, to_param<acc_t<T>>(inv_tau),
          recompute);
      return static_cast<int>(cudaGetLastError());
    });
  });
}

const char* error_string(int code) { return cudaGetErrorString(static_cast<cudaError_t>(code)); }

}  // namespace genfast::cuda
