// CUDA kernels of the gradient penalty (contract: csrc/cuda/gradient_penalty.h): per-row L2
// norms of the critic's input gradient, and the row scaling its backward needs.
//
// The norm is a row reduction: a group of C::kThreads threads owns a row (sub-warp groups for the
// short rows of low-dimensional critics, a warp for medium rows, a 512-thread block for images),
// reads it in quads (one 16- or 8-byte access for 4 columns) and reduces in registers and
// shuffles. The scaling is elementwise: threads walk the flat (row, quad) index space, so a warp
// reads contiguous memory whatever the row length and every SM gets work even for few rows.
#include <cuda_runtime.h>

#include <cstdint>

#include "cuda/common.cuh"
#include "cuda/gradient_penalty.h"

namespace genfast::cuda {
namespace {

using dev::acc_t;
using dev::Cfg;
using dev::for_each_row;
using dev::Group;
using dev::Quads;
using dev::SumOp;

template <typename T, class C>
__global__ void __launch_bounds__(C::kBlock)
    row_norms_kernel(const T* __restrict__ g,  // (rows, d), unit column stride
                     int64_t ld,               // elements between rows of g
                     T* __restrict__ norms,    // (rows,) output, g's dtype
                     int64_t rows, int64_t d) {
  using A = acc_t<T>;
  __shared__ alignas(16) unsigned char scratch[Group<C::kThreads>::kScratchBytes];
  const Group<C::kThreads> grp{static_cast<int>(threadIdx.x % C::kThreads), scratch};
  const Quads<C> quads{grp.rank, (d + 3) / 4};
  for_each_row<C>(rows, [&](int64_t r, bool live) {
    const T* row = g + r * ld;
    const bool vec = dev::vec_ok(row);
    A ss = 0;
    quads([&](int, int64_t q) {
      A x[4];
      dev::load_quad(row, q, d, vec, A(0), x);  // columns past d read as 0
#pragma unroll
      for (int j = 0; j < 4; ++j) ss += x[j] * x[j];
    });
    ss = grp.reduce(ss, SumOp());
    if (live && grp.rank == 0) dev::Io<T>::store1(norms + r, dsqrt(ss));
  });
}

constexpr int kScaleThreads = 256;

// I is the flat index type: uint32 when every (row, quad) index fits, so the per-quad division
// is a 32-bit one; the 64-bit instantiation serves the rest.
template <typename T, typename I>
__global__ void __launch_bounds__(kScaleThreads)
    scale_rows_kernel(const T* __restrict__ g,      // (rows, d), unit column stride
                      int64_t ld,                   // elements between rows of g
                      const T* __restrict__ scale,  // (rows,) per-row factors
                      T* __restrict__ out,          // (rows, d) contiguous output
                      int64_t d,                    // elements per row
                      I nq,                         // quads per row, ceil(d / 4) > 0
                      I total) {                    // rows * nq
  using A = acc_t<T>;
  const I step = static_cast<I>(gridDim.x) * kScaleThreads;
  for (I k = static_cast<I>(blockIdx.x) * kScaleThreads + threadIdx.x; k < total; k += step) {
    const I r = k / nq;
    const int64_t q = static_cast<int64_t>(k - r * nq);
    const T* src = g + static_cast<int64_t>(r) * ld;
    T* dst = out + static_cast<int64_t>(r) * d;
    const A s = static_cast<A>(dev::Io<T>::load1(scale + r));
    A x[4];
    dev::load_quad(src, q, d, dev::vec_ok(src), A(0), x);
    // One product, one rounding: the result torch's own (fp32-opmath) multiply gives.
#pragma unroll
    for (int j = 0; j < 4; ++j) x[j] *= s;
    dev::store_quad(dst, q, d, dev::vec_ok(dst), x);
  }
}

// ---- host side ----------------------------------------------------------------------------

template <typename T, class C>
int launch_norms(const T* g, int64_t ld, T* norms, int64_t rows, int64_t d, cudaStream_t st) {
  const int64_t blocks = (rows + C::kRowsPerBlock - 1) / C::kRowsPerBlock;
  const unsigned grid = static_cast<unsigned>(blocks < kMaxBlocks ? blocks : kMaxBlocks);
  row_norms_kernel<T, C><<<grid, C::kBlock, 0, st>>>(g, ld, norms, rows, d);
  return static_cast<int>(cudaGetLastError());
}

}  // namespace

int gp_row_norms(const void* g, int64_t ld, int64_t rows, int64_t d, int dtype, void* norms,
                 void* stream) {
  if (rows < 0 || d < 0) return static_cast<int>(cudaErrorInvalidValue);
  if (rows == 0) return static_cast<int>(cudaSuccess);
  if (norms == nullptr || (d > 0 && g == nullptr)) return static_cast<int>(cudaErrorInvalidValue);
  if (d == 0) ld = 0;  // no element is read; keep the row pointers at g
  const auto st = static_cast<cudaStream_t>(stream);
  return with_dtype(dtype, [&](auto tag) {
    using T = typename decltype(tag)::type;
    const auto* gp = static_cast<const T*>(g);
    auto* np = static_cast<T*>(norms);
    // The smallest group that gives each thread at most one quad, up to a warp; a warp while
    // each lane has at most 8 quads; a 512-thread block beyond (d > 1024), so one long row
    // keeps many loads in flight.
    const int64_t nq = (d + 3) / 4;
    if (nq <= 4) return launch_norms<T, Cfg<4, 0>>(gp, ld, np, rows, d, st);
    if (nq <= 8) return launch_norms<T, Cfg<8, 0>>(gp, ld, np, rows, d, st);
    if (nq <= 16) return launch_norms<T, Cfg<16, 0>>(gp, ld, np, rows, d, st);
    if (nq <= 256) return launch_norms<T, Cfg<32, 0>>(gp, ld, np, rows, d, st);
    return launch_norms<T, Cfg<512, 0>>(gp, ld, np, rows, d, st);
  });
}

int gp_scale_rows(const void* g, int64_t ld, const void* scale, void* out, int64_t rows,
                  int64_t d, int dtype, void* stream) {
  if (rows < 0 || d < 0) return static_cast<int>(cudaErrorInvalidValue);
  if (rows == 0 || d == 0) return static_cast<int>(cudaSuccess);
  if (g == nullptr || scale == nullptr || out == nullptr)
    return static_cast<int>(cudaErrorInvalidValue);
  const int64_t nq = (d + 3) / 4;
  if (rows > INT64_MAX / nq) return static_cast<int>(cudaErrorInvalidValue);
  const int64_t total = rows * nq;
  const int64_t blocks = (total + kScaleThreads - 1) / kScaleThreads;
  const unsigned grid = static_cast<unsigned>(blocks < kMaxBlocks ? blocks : kMaxBlocks);
  const auto st = static_cast<cudaStream_t>(stream);
  return with_dtype(dtype, [&](auto tag) {
    using T = typename decltype(tag)::type;
    const auto* gp = static_cast<const T*>(g);
    const auto* sp = static_cast<const T*>(scale);
    auto* op = static_cast<T*>(out);
    // uint32 indices only if k + step cannot wrap: total + grid * kScaleThreads < 2^32.
    if (total < (int64_t{1} << 31)) {
      scale_rows_kernel<T, uint32_t><<<grid, kScaleThreads, 0, st>>>(
          gp, ld, sp, op, d, static_cast<uint32_t>(nq), static_cast<uint32_t>(total));
    } else {
      scale_rows_kernel<T, uint64_t><<<grid, kScaleThreads, 0, st>>>(
          gp, ld, sp, op, d, static_cast<uint64_t>(nq), static_cast<uint64_t>(total));
    }
    return static_cast<int>(cudaGetLastError());
  });
}

}  // namespace genfast::cuda
