// CUDA kernels of the gated PixelCNN layer's gate. Contract: genfast/ops/masked_conv_layer.py;
// declarations: csrc/cuda/masked_conv_layer.h. The layer's convolutions are region convs
// (csrc/cuda/masked_conv.cu); these are its one fused pointwise step and that step's backward.
//
// - fwd: one thread per output element, grid-stride, consecutive threads on consecutive pixels
//   (both halves of u and out coalesce; cond is one broadcast value per row).
// - bwd: one group of threads per (image, channel) row of N pixels: a warp for short rows
//   (8 rows a block), a whole block above 1024 pixels. Each thread recomputes tanh / sigmoid for
//   its pixels, writes both halves of du and keeps the two running sums of dcond; the group then
//   reduces them by a fixed tree (common.cuh's Group), so dcond has the same bits on every run.
#include <cuda_runtime.h>

#include <cstdint>

#include "cuda/causal_conv.cuh"
#include "cuda/common.cuh"
#include "cuda/masked_conv_layer.h"

namespace genfast::cuda {
namespace {

using cc::dtanh;
using cc::ld;
using cc::sigmoid;
using cc::st;

using dev::acc_t;
using dev::Group;
using dev::SumOp;

constexpr int kThreads = 256;
constexpr int64_t kWarpRowMax = 1024;  // rows up to this many pixels take a warp each

template <typename T>
__global__ void __launch_bounds__(kThreads)
    gate_fwd_kernel(const T* __restrict__ u,     // (B, 2C, N)
                    const T* __restrict__ cond,  // (B, 2C) or null
                    T* __restrict__ out,         // (B, C, N)
                    int64_t C, int64_t N, int64_t total) {  // total = B * C * N
  using A = acc_t<T>;
  const int64_t step = static_cast<int64_t>(gridDim.x) * kThreads;
  for (int64_t e = static_cast<int64_t>(blockIdx.x) * kThreads + threadIdx.x; e < total;
       e += step) {
    const int64_t row = e / N, n = e - row * N;  // row = b * C + c
    const int64_t b = row / C, c = row - b * C;
    const int64_t f = (b * 2 * C + c) * N + n, q = f + C * N;
    A af = ld(u + f), aq = ld(u + q);
    if (cond != nullptr) af += ld(cond + b * 2 * C + c), aq += ld(cond + b * 2 * C + C + c);
    st(out + e, dtanh(af) * sigmoid(aq));
  }
}

// kT threads per row (32: a warp, several rows a block; kThreads: the whole block). The row
// loop is block-uniform: groups past the last row run on a clamped row without writing, so every
// thread reaches the group reduction's shuffles and barriers.
template <typename T, int kT>
__global__ void __launch_bounds__(kThreads)
    gate_bwd_kernel(const T* __restrict__ u,     // (B, 2C, N)
                    const T* __restrict__ cond,  // (B, 2C) or null
                    const T* __restrict__ dout,  // (B, C, N)
                    T* __restrict__ du,          // (B, 2C, N)
                    T* __restrict__ dcond,       // (B, 2C) or null
                    int64_t C, int64_t N, int64_t rows, bool accumulate) {  // rows = B * C
  using A = acc_t<T>;
  constexpr int kRowsPerBlock = kThreads / kT;
  __shared__ alignas(16) unsigned char scratch[Group<kT>::kScratchBytes];
  const Group<kT> grp{static_cast<int>(threadIdx.x) % kT, scratch};
  const int64_t sub = threadIdx.x / kT;
  for (int64_t r0 = static_cast<int64_t>(blockIdx.x) * kRowsPerBlock; r0 < rows;
       r0 += static_cast<int64_t>(gridDim.x) * kRowsPerBlock) {
    const bool live = r0 + sub < rows;
    const int64_t row = live ? r0 + sub : rows - 1;
    const int64_t b = row / C, c = row - b * C;
    const int64_t f0 = (b * 2 * C + c) * N, q0 = f0 + C * N, o0 = row * N;
    const A cf = cond != nullptr ? ld(cond + b * 2 * C + c) : A(0);
    const A cq = cond != nullptr ? ld(cond + b * 2 * C + C + c) : A(0);
    A sf = 0, sq = 0;
    for (int64_t n = grp.rank; n < N; n += kT) {
      const A t = dtanh(ld(u + f0 + n) + cf), s = sigmoid(ld(u + q0 + n) + cq);
      const A d = ld(dout + o0 + n);
      const A gf = d * s * (A(1) - t * t), gq = d * t * s * (A(1) - s);
      if (live) {
        st(du + f0 + n, accumulate ? ld(du + f0 + n) + gf : gf);
        st(du + q0 + n, accumulate ? ld(du + q0 + n) + gq : gq);
      }
      sf += gf, sq += gq;
    }
    if (dcond != nullptr) {  // uniform: every thread of the block takes the same branch
      sf = grp.reduce(sf, SumOp());
      sq = grp.reduce(sq, SumOp());
      if (live && grp.rank == 0) {
        T* pf = dcond + b * 2 * C + c;
        T* pq = pf + C;
        st(pf, accumulate ? ld(pf) + sf : sf);
        st(pq, accumulate ? ld(pq) + sq : sq);
      }
    }
  }
}

// ---- host side ------------------------------------------------------------------------------
constexpr int kInvalid = static_cast<int>(cudaErrorInvalidValue);

unsigned grid_of(int64_t blocks) {
  return static_cast<unsigned>(blocks < 1 ? 1 : blocks < kMaxBlocks ? blocks : kMaxBlocks);
}

}  // namespace

int pixelcnn_gate_fwd(const void* u, const void* cond, void* out, int64_t B, int64_t C,
                      int64_t N, int dtype, void* stream) {
  if (B < 0 || C < 0 || N < 0) return kInvalid;
  const int64_t total = B * C * N;
  if (total == 0) return static_cast<int>(cudaSuccess);
  if (u == nullptr || out == nullptr) return kInvalid;
  const auto st = static_cast<cudaStream_t>(stream);
  return with_dtype(dtype, [&](auto tag) {
    using Ty = typename decltype(tag)::type;
    gate_fwd_kernel<Ty><<<grid_of((total + kThreads - 1) / kThreads), kThreads, 0, st>>>(
        static_cast<const Ty*>(u), static_cast<const Ty*>(cond), static_cast<Ty*>(out), C, N,
        total);
    return static_cast<int>(cudaGetLastError());
  });
}

int pixelcnn_gate_bwd(const void* u, const void* cond, const void* dout, void* du, void* dcond,
                      int64_t B, int64_t C, int64_t N, bool accumulate, int dtype, void* stream) {
  if (B < 0 || C < 0 || N < 0) return kInvalid;
  const int64_t rows = B * C;
  if (rows == 0 || (N == 0 && (dcond == nullptr || accumulate)))
    return static_cast<int>(cudaSuccess);
  if (N > 0 && (u == nullptr || dout == nullptr || du == nullptr)) return kInvalid;
  const auto st = static_cast<cudaStream_t>(stream);
  return with_dtype(dtype, [&](auto tag) {
    using Ty = typename decltype(tag)::type;
    const auto* up = static_cast<const Ty*>(u);
    const auto* cp = static_cast<const Ty*>(cond);
    const auto* dp = static_cast<const Ty*>(dout);
    auto* dup = static_cast<Ty*>(du);
    auto* dcp = static_cast<Ty*>(dcond);
    if (N <= kWarpRowMax)
      gate_bwd_kernel<Ty, 32><<<grid_of((rows + 7) / 8), kThreads, 0, st>>>(
          up, cp, dp, dup, dcp, C, N, rows, accumulate);
    else
      gate_bwd_kernel<Ty, kThreads><<<grid_of(rows), kThreads, 0, st>>>(
          up, cp, dp, dup, dcp, C, N, rows, accumulate);
    return static_cast<int>(cudaGetLastError());
  });
}

}  // namespace genfast::cuda
