// CUDA spectral-norm power iteration: every weight of the table in one launch (contract:
// csrc/cuda/spectral_norm.h and csrc/cpu/spectral_norm.h).
//
// One block per weight; the block reads its row of the (count, 6) table on the device, so the
// host never reads the table and the launch count does not depend on the number of weights.
// Each iteration is two GEMVs over W: t = W v (rows_pass) and s = W^T u (cols_pass).
//
// Cached path (the usual one): u and v live in shared memory in the accumulation type for all
// iterations, so W is read twice per iteration and u, v are rounded to W's dtype once, at the end.
// It needs (max_h + max_w) accumulators of shared memory: up to ~12K fp32 values in the default
// 48 KiB, ~40K with the sm_80 / sm_90 opt-in. Uncached path (bigger vectors): u and v stay in
// global memory in W's dtype, and each GEMV runs twice, once for the norm and once to store the
// normalised result, because there is no float32 scratch to hold the unnormalised vector.
//
// After n_iter >= 1 iterations sigma needs no extra pass: with s = W^T u and v = s / d,
// u . (W v) = (W^T u) . v = ||s||^2 / d exactly (d = max(||s||, eps)).
//
// Limit: a weight is one block (one SM). Many layers in one call fill the GPU; one huge weight
// is bounded by a single SM's bandwidth.
#include <cuda_runtime.h>

#include <cfloat>
#include <cstddef>
#include <cstdint>

#include "cuda/common.cuh"
#include "cuda/spectral_norm.h"

namespace genfast::cuda {
namespace {

using dev::acc_t;
using dev::Group;
using dev::Io;
using dev::SumOp;

constexpr int kThreads = 256;  // threads per block (one weight)

// Rounds a vector length up to whole quads, so v's shared array starts 16-byte aligned.
__host__ __device__ constexpr int64_t pad4(int64_t n) { return (n + 3) & ~int64_t{3}; }

// max(||x||, eps) from sum x^2. A NaN norm stays NaN: fmax would replace it by eps and hide a
// NaN weight behind a finite sigma.
template <typename A>
__device__ __forceinline__ A denominator(A sum_sq, A eps) {
  const A norm = dsqrt(sum_sq);
  return norm < eps ? eps : norm;
}

template <typename T>
__device__ __forceinline__ acc_t<T> load_acc(const T* p) {
  return static_cast<acc_t<T>>(Io<T>::load1(p));
}

// Sum over rows r of epi(r, W[r, :] . x), x(j) giving the vector's column j. A group of g lanes
// (a power of two, the fewest covering the row's quads, at most a warp) owns a row: short rows
// keep lanes busy, long rows get a whole warp. epi runs in one lane per row.
// Block-uniform control flow only: it ends in a block reduction (two __syncthreads).
template <typename T, typename A, class X, class Epi>
__device__ A rows_pass(const Group<kThreads>& grp, const T* W, int64_t h, int64_t w, int64_t ld,
                       X&& x, Epi&& epi) {
  const int64_t nq = (w + 3) / 4;
  int g = 1;
  while (g < 32 && g < nq) g <<= 1;
  const int lane = static_cast<int>(threadIdx.x) & (g - 1);
  const int64_t per_sweep = kThreads / g;
  A part = 0;
  for (int64_t r0 = 0; r0 < h; r0 += per_sweep) {  // same trip count in every thread
    const int64_t r = r0 + static_cast<int64_t>(threadIdx.x) / g;
    A dot = 0;
    if (r < h) {
      const T* row = W + r * ld;
      const bool vec = dev::vec_ok(row);
#pragma unroll 4
      for (int64_t q = lane; q < nq; q += g) {
        A wq[4];
        dev::load_quad(row, q, w, vec, A(0), wq);
#pragma unroll
        for (int j = 0; j < 4; ++j)
          if (4 * q + j < w) dot += wq[j] * x(4 * q + j);  // x is read in bounds only
      }
    }
    // Butterfly inside each aligned group of g lanes; all 32 lanes of every warp execute it
    // (rows past h contribute 0), as the full shuffle mask requires.
    for (int off = g >> 1; off > 0; off >>= 1) dot += dev::shfl_xor(dot, off);
    if (r < h && lane == 0) part += epi(r, dot);
  }
  return grp.reduce(part, SumOp());
}

// For every column j: s_j = sum_i W[i, j] y(i), then part += epi(j, s_j) in one thread. The block
// is a (R x cq_n) grid: cq_n adjacent threads take adjacent column quads (a warp reads up to 128
// contiguous columns of a row) and R row partitions split the rows, so a narrow weight still
// uses every thread. The R partial sums of a column meet in a shared-memory tree of fixed order
// (deterministic, so the uncached path's two runs of this pass agree bit for bit).
// red: 4 * kThreads accumulators of shared memory. Block-uniform control flow only.
template <typename T, typename A, class Y, class Epi>
__device__ A cols_pass(const Group<kThreads>& grp, A* red, const T* W, int64_t h, int64_t w,
                       int64_t ld, Y&& y, Epi&& epi) {
  const int64_t nq = (w + 3) / 4;
  int cq_n = 1;
  while (cq_n < kThreads && cq_n < nq) cq_n <<= 1;
  const int R = kThreads / cq_n;
  const int cq = static_cast<int>(threadIdx.x) & (cq_n - 1);
  const int rp = static_cast<int>(threadIdx.x) / cq_n;
  A* mine = red + 4 * threadIdx.x;  // thread (rp, cq) = rp * cq_n + cq
  A part = 0;
  for (int64_t q0 = 0; q0 < nq; q0 += cq_n) {  // same trip count in every thread
    const int64_t q = q0 + cq;
    A acc[4] = {A(0), A(0), A(0), A(0)};
    if (q < nq) {
      for (int64_t i = rp; i < h; i += R) {
        const T* row = W + i * ld;
        A wq[4];
        dev::load_quad(row, q, w, dev::vec_ok(row), A(0), wq);
        const A yi = y(i);
#pragma unroll
        for (int j = 0; j < 4; ++j) acc[j] += wq[j] * yi;
      }
    }
#pragma unroll
    for (int j = 0; j < 4; ++j) mine[j] = acc[j];
    __syncthreads();
    // Step st: partitions rp < st add partition rp + st (same cq), which nobody writes now.
    for (int st = R >> 1; st > 0; st >>= 1) {
      if (rp < st) {
        const A* other = mine + 4 * st * cq_n;
#pragma unroll
        for (int j = 0; j < 4; ++j) mine[j] += other[j];
      }
      __syncthreads();
    }
    if (rp == 0 && q < nq) {
#pragma unroll
      for (int j = 0; j < 4; ++j)
        if (4 * q + j < w) part += epi(4 * q + j, mine[j]);
    }
    __syncthreads();  // red is rewritten by the next sweep
  }
  return grp.reduce(part, SumOp());
}

template <typename T, bool kCached>
__global__ void __launch_bounds__(kThreads)
    power_iteration_kernel(int64_t count,                     // weights in the table
                           const int64_t* __restrict__ meta,  // (count, 6): W, u, v, h, w, ld
                           int n_iter,                        // power iterations, >= 0
                           acc_t<T> eps,                      // x / max(||x||, eps)
                           float* __restrict__ sigma,         // (count,) output
                           int64_t max_h,                     // bound on h: shared u size
                           int64_t max_w) {                   // bound on w: shared v size
  using A = acc_t<T>;
  // Dynamic shared memory: the block reduction's scratch, cols_pass's tree, then (cached) u, v.
  extern __shared__ __align__(16) unsigned char smem[];
  const Group<kThreads> grp{static_cast<int>(threadIdx.x), smem};
  A* red = reinterpret_cast<A*>(smem + Group<kThreads>::kScratchBytes);
  A* us = red + 4 * kThreads;                // cached only
  A* vs = us + (kCached ? pad4(max_h) : 0);  // cached only
  for (int64_t k = blockIdx.x; k < count; k += gridDim.x) {  // block-uniform
    const int64_t* e = meta + 6 * k;
    const T* W = reinterpret_cast<const T*>(e[0]);
    T* u = reinterpret_cast<T*>(e[1]);
    T* v = reinterpret_cast<T*>(e[2]);
    const int64_t h = e[3], w = e[4], ld = e[5];
    __syncthreads();  // the previous weight's last reads of us / vs are done
    // Python checked the table; a row that would still write out of bounds (shared vectors
    // sized by max_h / max_w) or read through a null pointer gets sigma = NaN, u and v untouched.
    // W is only read: its rows may overlap (ld < w, even 0 for one row repeated).
    const bool ok = h >= 0 && w >= 0 && h <= max_h && w <= max_w && ld >= 0 &&
                    (h == 0 || u != nullptr) && (w == 0 || v != nullptr) &&
                    (h == 0 || w == 0 || W != nullptr);
    if (!ok) {
      if (threadIdx.x == 0) sigma[k] = dev::quiet_nan<float>();
      continue;
    }
    A sig;
    if constexpr (kCached) {
      for (int64_t j = threadIdx.x; j < w; j += kThreads) vs[j] = load_acc(v + j);
      if (n_iter == 0)
        for (int64_t i = threadIdx.x; i < h; i += kThreads) us[i] = load_acc(u + i);
      __syncthreads();
      auto v_at = [&](int64_t j) { return vs[j]; };
      auto u_at = [&](int64_t i) { return us[i]; };
      if (n_iter == 0) {
        sig = rows_pass<T, A>(grp, W, h, w, ld, v_at, [&](int64_t r, A t) { return us[r] * t; });
      } else {
        A s_sq = 0, s_den = 1;
        for (int it = 0; it < n_iter; ++it) {
          // rows_pass and cols_pass end in a block reduction, whose __syncthreads also publish
          // the vector entries their epilogues wrote.
          const A t_sq = rows_pass<T, A>(grp, W, h, w, ld, v_at, [&](int64_t r, A t) {
            us[r] = t;
            return t * t;
          });
          const A t_den = denominator(t_sq, eps);
          for (int64_t i = threadIdx.x; i < h; i += kThreads) us[i] /= t_den;
          __syncthreads();
          s_sq = cols_pass<T, A>(grp, red, W, h, w, ld, u_at, [&](int64_t j, A s) {
            vs[j] = s;
            return s * s;
          });
          s_den = denominator(s_sq, eps);
          for (int64_t j = threadIdx.x; j < w; j += kThreads) vs[j] /= s_den;
          __syncthreads();
        }
        for (int64_t i = threadIdx.x; i < h; i += kThreads) Io<T>::store1(u + i, us[i]);
        for (int64_t j = threadIdx.x; j < w; j += kThreads) Io<T>::store1(v + j, vs[j]);
        sig = s_sq / s_den;
      }
    } else {
      auto v_at = [&](int64_t j) { return load_acc(v + j); };
      auto u_at = [&](int64_t i) { return load_acc(u + i); };
      if (n_iter == 0) {
        sig = rows_pass<T, A>(grp, W, h, w, ld, v_at,
                              [&](int64_t r, A t) { return load_acc(u + r) * t; });
      } else {
        A s_sq = 0, s_den = 1;
        for (int it = 0; it < n_iter; ++it) {
          // Each pass runs twice (norm, then normalised store): the same code in the same order
          // recomputes the same values. The block reduction ending each pass makes its global
          // stores visible to the whole block before the next pass reads them.
          const A t_sq =
              rows_pass<T, A>(grp, W, h, w, ld, v_at, [](int64_t, A t) { return t * t; });
          const A t_den = denominator(t_sq, eps);
          rows_pass<T, A>(grp, W, h, w, ld, v_at, [&](int64_t r, A t) {
            Io<T>::store1(u + r, t / t_den);
            return A(0);
          });
          s_sq = cols_pass<T, A>(grp, red, W, h, w, ld, u_at, [](int64_t, A s) { return s * s; });
          s_den = denominator(s_sq, eps);
          cols_pass<T, A>(grp, red, W, h, w, ld, u_at, [&](int64_t j, A s) {
            Io<T>::store1(v + j, s / s_den);
            return A(0);
          });
        }
        sig = s_sq / s_den;
      }
    }
    if (threadIdx.x == 0) sigma[k] = static_cast<float>(sig);
  }
}

// ---- host side ----------------------------------------------------------------------------

}  // namespace

int spectral_norm_power_iteration(int64_t count, const int64_t* meta, int dtype, int n_iter,
                                  double eps, float* sigma, int64_t max_h, int64_t max_w,
                                  void* stream) {
  if (count < 0 || n_iter < 0 || max_h < 0 || max_w < 0 || !(eps > 0))
    return static_cast<int>(cudaErrorInvalidValue);
  if (count == 0) return static_cast<int>(cudaSuccess);
  if (meta == nullptr || sigma == nullptr) return static_cast<int>(cudaErrorInvalidValue);
  const auto st = static_cast<cudaStream_t>(stream);
  const unsigned grid = static_cast<unsigned>(count < kMaxBlocks ? count : kMaxBlocks);
  return with_dtype(dtype, [&](auto tag) {
    using T = typename decltype(tag)::type;
    using A = acc_t<T>;
    const A e = to_param<A>(eps);
    const size_t base = Group<kThreads>::kScratchBytes + 4 * kThreads * sizeof(A);
    int device = 0, optin = 0;
    cudaError_t err = cudaGetDevice(&device);
    if (err == cudaSuccess)
      err = cudaDeviceGetAttribute(&optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, device);
    if (err != cudaSuccess) return static_cast<int>(err);
    // Accumulators of shared memory left for u and v (compared before adding: no overflow).
    const int64_t room = (static_cast<int64_t>(optin) - static_cast<int64_t>(base)) /
                         static_cast<int64_t>(sizeof(A));
    const bool cached = max_h <= room && max_w <= room && pad4(max_h) + pad4(max_w) <= room;
    if (cached) {
      const size_t bytes = base + static_cast<size_t>(pad4(max_h) + pad4(max_w)) * sizeof(A);
      const auto kernel = power_iteration_kernel<T, true>;
      if (bytes > 48 * 1024) {  // beyond the default: opt in (sm_75: 64 KiB, sm_80+: more)
        err = cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                   static_cast<int>(bytes));
        if (err != cudaSuccess) return static_cast<int>(err);
      }
      kernel<<<grid, kThreads, bytes, st>>>(count, meta, n_iter, e, sigma, max_h, max_w);
    } else {
      power_iteration_kernel<T, false><<<grid, kThreads, base, st>>>(count, meta, n_iter, e,
                                                                     sigma, max_h, max_w);
    }
    return static_cast<int>(cudaGetLastError());
  });
}

}  // namespace genfast::cuda
