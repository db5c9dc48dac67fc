// CUDA kernels of the fused WaveNet residual layer. Contract: genfast/ops/causal_conv_layer.py;
// declarations: csrc/cuda/causal_conv_layer.h.
//
// Forward: one block iteration per (b, tile of TT times). The dilated conv a (G x TT) goes to
// shared memory, the gate overwrites its first H rows with z, and both 1x1 projections read z
// from there, so a and z never touch global memory. Every phase maps consecutive threads to
// consecutive times (coalesced x, cond, skip) and a warp to one channel (weights broadcast).
// Math in fp32 (fp64 for fp64); x_out = x + (w_res z + b_res) is rounded once, at the store.
//
// Backward: the same tile recomputes a, then each thread of (h, t) forms dz from gx and gs,
// writes both halves of da and z (math type, a stream-ordered workspace). A second kernel reduces
// dw_res and dw_skip, one block per weight, in a fixed assignment of (b, t) to threads and a
// fixed tree: deterministic, with no atomics.
#include <cuda_runtime.h>

#include <cstdint>

#include "cuda/causal_conv_layer.h"
#include "cuda/causal_conv.cuh"
#include "cuda/common.cuh"

namespace genfast::cuda {
namespace {

using cc::dtanh;
using cc::ld;
using cc::pymod;
using cc::sigmoid;
using cc::st;

using dev::acc_t;
using dev::Group;
using dev::Io;
using dev::SumOp;

constexpr int kThreads = 256;
constexpr int64_t kSmemBytes = 48 * 1024;  // the default dynamic shared memory limit

// Shapes and pointers both kernels read.
template <typename T>
struct Layer {
  const T* x;      // (B, R, T)
  const T* h;      // (B, R, P) or null
  const T* cond;   // (B, G, cond_t) or null
  const T* w_dil;  // (G, R, K)
  const T* b_dil;  // (G) or null
  int64_t cond_t, R, G, S, nt, K, d;  // nt: the time length T
};

// a[gc][tt] for the tile at t0 (rows of TT floats in smem); times past T are 0.
template <typename T, typename A>
__device__ void conv_tile(const Layer<T>& p, int64_t bi, int64_t t0, int TT, A* a) {
  const int64_t P = (p.K - 1) * p.d;
  for (int64_t e = threadIdx.x; e < p.G * TT; e += kThreads) {
    const int64_t gc = e / TT, t = t0 + e % TT;
    A acc = 0;
    if (t < p.nt) {
      acc = p.b_dil != nullptr ? ld(p.b_dil + gc) : A(0);
      if (p.cond != nullptr)
        acc += ld(p.cond + (bi * p.G + gc) * p.cond_t + (p.cond_t == 1 ? 0 : t));
      const T* w = p.w_dil + gc * p.R * p.K;
      for (int64_t r = 0; r < p.R; ++r) {
        const int64_t row = bi * p.R + r;
        for (int64_t k = 0; k < p.K; ++k) {
          const int64_t j = t + k * p.d;  // x~ index
          const A xv = j >= P ? ld(p.x + row * p.nt + (j - P))
                              : (p.h != nullptr ? ld(p.h + row * P + j) : A(0));
          acc += ld(w + r * p.K + k) * xv;
        }
      }
    }
    a[e] = acc;
  }
}

template <typename T>
__global__ void __launch_bounds__(kThreads)
    layer_fwd_kernel(Layer<T> p,
                     const T* __restrict__ skip,    // (B, S, T) or null
                     const T* __restrict__ w_res,   // (R, H)
                     const T* __restrict__ b_res,   // (R) or null
                     const T* __restrict__ w_skip,  // (S, H)
                     const T* __restrict__ b_skip,  // (S) or null
                     T* __restrict__ x_out,         // (B, R, T)
                     T* __restrict__ skip_out,      // (B, S, T)
                     int64_t B, int TT) {
  using A = acc_t<T>;
  extern __shared__ __align__(16) unsigned char smem[];
  A* a = reinterpret_cast<A*>(smem);  // (G, TT); rows [0, H) become z
  const int64_t H = p.G / 2, tiles = (p.nt + TT - 1) / TT;
  for (int64_t blk = blockIdx.x; blk < B * tiles; blk += gridDim.x) {
    const int64_t bi = blk / tiles, t0 = (blk % tiles) * TT;
    conv_tile(p, bi, t0, TT, a);
    __syncthreads();
    for (int64_t e = threadIdx.x; e < H * TT; e += kThreads)  // one thread reads f, q, writes z
      a[e] = dtanh(a[e]) * sigmoid(a[e + H * TT]);
    __syncthreads();
    for (int64_t e = threadIdx.x; e < (p.R + p.S) * TT; e += kThreads) {
      const int64_t o = e / TT, tt = e % TT, t = t0 + tt;
      if (t >= p.nt) continue;
      const bool res = o < p.R;
      const int64_t oc = res ? o : o - p.R;
      const T* w = (res ? w_res : w_skip) + oc * H;
      const T* bias = res ? b_res : b_skip;
      A acc = bias != nullptr ? ld(bias + oc) : A(0);
      for (int64_t hh = 0; hh < H; ++hh) acc += ld(w + hh) * a[hh * TT + tt];
      if (res) {
        const int64_t at = (bi * p.R + oc) * p.nt + t;
        st(x_out + at, ld(p.x + at) + acc);
      } else {
        const int64_t at = (bi * p.S + oc) * p.nt + t;
        st(skip_out + at, (skip != nullptr ? ld(skip + at) : A(0)) + acc);
      }
    }
    __syncthreads();  // a is refilled by the next tile
  }
}

template <typename T>
__global__ void __launch_bounds__(kThreads)
    layer_bwd_kernel(Layer<T> p,
                     const T* __restrict__ w_res,   // (R, H)
                     const T* __restrict__ w_skip,  // (S, H)
                     const T* __restrict__ gx,      // (B, R, T)
                     const T* __restrict__ gs,      // (B, S, T)
                     T* __restrict__ da,            // (B, G, T)
                     acc_t<T>* __restrict__ z,      // (B, H, T) workspace
                     int64_t B, int TT) {
  using A = acc_t<T>;
  extern __shared__ __align__(16) unsigned char smem[];
  A* a = reinterpret_cast<A*>(smem);
  const int64_t H = p.G / 2, tiles = (p.nt + TT - 1) / TT;
  for (int64_t blk = blockIdx.x; blk < B * tiles; blk += gridDim.x) {
    const int64_t bi = blk / tiles, t0 = (blk % tiles) * TT;
    conv_tile(p, bi, t0, TT, a);
    __syncthreads();
    for (int64_t e = threadIdx.x; e < H * TT; e += kThreads) {
      const int64_t hh = e / TT, t = t0 + e % TT;
      if (t >= p.nt) continue;
      const A tf = dtanh(a[e]), sq = sigmoid(a[e + H * TT]);
      A dz = 0;
      for (int64_t r = 0; r < p.R; ++r)
        dz += ld(w_res + r * H + hh) * ld(gx + (bi * p.R + r) * p.nt + t);
      for (int64_t s = 0; s < p.S; ++s)
        dz += ld(w_skip + s * H + hh) * ld(gs + (bi * p.S + s) * p.nt + t);
      st(da + (bi * p.G + hh) * p.nt + t, dz * sq * (A(1) - tf * tf));
      st(da + (bi * p.G + H + hh) * p.nt + t, dz * tf * sq * (A(1) - sq));
      z[(bi * H + hh) * p.nt + t] = tf * sq;
    }
    __syncthreads();
  }
}

// dw_res[r, h] = sum_{b,t} gx[b,r,t] z[b,h,t] (o < R*H), then dw_skip likewise with gs.
template <typename T>
__global__ void __launch_bounds__(kThreads)
    layer_dw_kernel(const T* __restrict__ gx, const T* __restrict__ gs,
                    const acc_t<T>* __restrict__ z, T* __restrict__ dw_res,
                    T* __restrict__ dw_skip, int64_t B, int64_t R, int64_t H, int64_t S,
                    int64_t nt) {
  using A = acc_t<T>;
  __shared__ alignas(16) unsigned char scratch[Group<kThreads>::kScratchBytes];
  const Group<kThreads> grp{static_cast<int>(threadIdx.x), scratch};
  for (int64_t o = blockIdx.x; o < (R + S) * H; o += gridDim.x) {
    const bool res = o < R * H;
    const int64_t oo = res ? o : o - R * H, c = oo / H, hh = oo % H;
    const T* g = res ? gx : gs;
    const int64_t C = res ? R : S;
    A acc = 0;
    for (int64_t bi = 0; bi < B; ++bi) {
      const T* gr = g + (bi * C + c) * nt;
      const A* zr = z + (bi * H + hh) * nt;
      for (int64_t t = threadIdx.x; t < nt; t += kThreads) acc += ld(gr + t) * zr[t];
    }
    acc = grp.reduce(acc, SumOp());
    if (threadIdx.x == 0) st((res ? dw_res : dw_skip) + oo, acc);
  }
}

// ---- host side ------------------------------------------------------------------------------
constexpr int kInvalid = static_cast<int>(cudaErrorInvalidValue);

unsigned grid_of(int64_t blocks) {
  return static_cast<unsigned>(blocks < 1 ? 1 : blocks < kMaxBlocks ? blocks : kMaxBlocks);
}

bool sizes_ok(int64_t B, int64_t R, int64_t G, int64_t S, int64_t T, int64_t K, int64_t d,
              int64_t cond_t) {
  if (B < 0 || R < 0 || G < 0 || G % 2 != 0 || S < 0 || T < 0 || K < 1 || d < 1) return false;
  if (cond_t != 0 && cond_t != 1 && cond_t != T) return false;
  return K - 1 <= (int64_t{1} << 31) / d;
}

// Times per tile: 32 (a warp of consecutive times) while the (G, TT) tile fits the default
// shared memory; fewer for very wide layers; 0 when even one column does not fit.
template <typename A>
int tile_of(int64_t G) {
  int tt = 32;
  while (tt > 0 && G * tt * static_cast<int64_t>(sizeof(A)) > kSmemBytes) tt /= 2;
  return tt;
}

}  // namespace

int wavenet_layer_fwd(const void* x, const void* h, const void* cond, int64_t cond_t,
                      const void* skip, const void* w_dil, const void* b_dil, const void* w_res,
                      const void* b_res, const void* w_skip, const void* b_skip, void* x_out,
                      void* skip_out, int64_t B, int64_t R, int64_t G, int64_t S, int64_t T,
                      int64_t K, int64_t dilation, int dtype, void* stream) {
  if (!sizes_ok(B, R, G, S, T, K, dilation, cond_t)) return kInvalid;
  if (B * T == 0 || R + S == 0) return static_cast<int>(cudaSuccess);
  if ((R > 0 && (x == nullptr || x_out == nullptr)) || (S > 0 && skip_out == nullptr) ||
      (G > 0 && (w_dil == nullptr || (R > 0 && w_res == nullptr) ||
                 (S > 0 && w_skip == nullptr))) ||
      (cond_t > 0 && G > 0 && cond == nullptr))
    return kInvalid;
  const auto st = static_cast<cudaStream_t>(stream);
  return with_dtype(dtype, [&](auto tag) {
    using Ty = typename decltype(tag)::type;
    using A = acc_t<Ty>;
    const int TT = tile_of<A>(G);
    if (TT == 0) return kInvalid;
    const Layer<Ty> p{static_cast<const Ty*>(x), static_cast<const Ty*>(h),
                      cond_t > 0 ? static_cast<const Ty*>(cond) : nullptr,
                      static_cast<const Ty*>(w_dil), static_cast<const Ty*>(b_dil),
                      cond_t, R, G, S, T, K, dilation};
    const int64_t tiles = (T + TT - 1) / TT;
    const size_t smem = static_cast<size_t>(G > 0 ? G : 1) * TT * sizeof(A);
    layer_fwd_kernel<Ty><<<grid_of(B * tiles), kThreads, smem, st>>>(
        p, static_cast<const Ty*>(skip), static_cast<const Ty*>(w_res),
        static_cast<const Ty*>(b_res), static_cast<const Ty*>(w_skip),
        static_cast<const Ty*>(b_skip), static_cast<Ty*>(x_out), static_cast<Ty*>(skip_out), B,
        TT);
    return static_cast<int>(cudaGetLastError());
  });
}

int wavenet_layer_bwd(const void* x, const void* h, const void* cond, int64_t cond_t,
                      const void* w_dil, const void* b_dil, const void* w_res,
                      const void* w_skip, const void* gx, const void* gs, void* da,
                      void* dw_res, void* dw_skip, int64_t B, int64_t R, int64_t G, int64_t S,
                      int64_t T, int64_t K, int64_t dilation, int dtype, void* stream) {
  if (!sizes_ok(B, R, G, S, T, K, dilation, cond_t)) return kInvalid;
  const int64_t H = G / 2;
  if (H == 0) return static_cast<int>(cudaSuccess);  // da, dw_res, dw_skip are all empty
  const bool data = B * T > 0;
  if ((data && (da == nullptr || w_dil == nullptr || (R > 0 && (x == nullptr || gx == nullptr ||
                                                                 w_res == nullptr)) ||
                (S > 0 && (gs == nullptr || w_skip == nullptr)) ||
                (cond_t > 0 && cond == nullptr))) ||
      (R > 0 && dw_res == nullptr) || (S > 0 && dw_skip == nullptr))
    return kInvalid;
  const auto st = static_cast<cudaStream_t>(stream);
  return with_dtype(dtype, [&](auto tag) {
    using Ty = typename decltype(tag)::type;
    using A = acc_t<Ty>;
    const int TT = tile_of<A>(G);
    if (TT == 0) return kInvalid;
    A* z = nullptr;
    if (data) {
      // Stream-ordered, so no host synchronisation; freed after the reduction on the same stream.
      const cudaError_t rc =
          cudaMallocAsync(reinterpret_cast<void**>(&z), B * H * T * sizeof(A), st);
      if (rc != cudaSuccess) return static_cast<int>(rc);
      const Layer<Ty> p{static_cast<const Ty*>(x), static_cast<const Ty*>(h),
                        cond_t > 0 ? static_cast<const Ty*>(cond) : nullptr,
                        static_cast<const Ty*>(w_dil), static_cast<const Ty*>(b_dil),
                        cond_t, R, G, S, T, K, dilation};
      const int64_t tiles = (T + TT - 1) / TT;
      layer_bwd_kernel<Ty><<<grid_of(B * tiles), kThreads, G * TT * sizeof(A), st>>>(
          p, static_cast<const Ty*>(w_res), static_cast<const Ty*>(w_skip),
          static_cast<const Ty*>(gx), static_cast<const Ty*>(gs), static_cast<Ty*>(da), z, B,
          TT);
      const cudaError_t launch = cudaGetLastError();
      if (launch != cudaSuccess) {
        cudaFreeAsync(z, st);
        return static_cast<int>(launch);
      }
    }
    // With no data the sums are empty: the kernel writes zeros and never reads z, gx or gs.
    layer_dw_kernel<Ty><<<grid_of((R + S) * H), kThreads, 0, st>>>(
        static_cast<const Ty*>(gx), static_cast<const Ty*>(gs), z, static_cast<Ty*>(dw_res),
        static_cast<Ty*>(dw_skip), data ? B : 0, R, H, S, T);
    const cudaError_t launch = cudaGetLastError();
    if (z != nullptr) {
      const cudaError_t rc = cudaFreeAsync(z, st);
      if (launch == cudaSuccess && rc != cudaSuccess) return static_cast<int>(rc);
    }
    return static_cast<int>(launch);
  });
}

}  // namespace genfast::cuda
