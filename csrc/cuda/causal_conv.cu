// CUDA kernels of causal dilated conv1d. Contract: genfast/ops/causal_conv.py; the index formulas
// are in csrc/cuda/causal_conv.h. Every tensor is contiguous, x~ = [h | x] along time.
//
// - fwd, depthwise (groups == Cin == Cout, K <= 4): memory-bound (Mamba shapes), so each block
//   stages a chunk of 128 16-byte vectors of one (b, c) row in shared memory and every thread
//   computes the outputs of its own vector, weights in registers, bias and activation fused.
//   With dilation 1 the taps sit in the thread's own registers but for the first K-1 elements;
//   taps that fall before the chunk (the halo) are a second load from global, an L1/L2 hit.
// - fwd, any other shape, bwd_input: one thread per output element, fp32 accumulator (fp64 for
//   fp64), consecutive threads on consecutive times, so every load of a warp is coalesced and the
//   weights are broadcasts. Correct for any K, dilation and groups; on sm_80+ the op prefers
//   Triton's tensor-core kernels for dense shapes.
// - bwd_weight: one block per (co, ci, k) sums g * x~ over (b, t) in a fixed assignment of
//   elements to threads and a fixed tree, so the bits do not depend on the grid or on timing.
// - update: one block per (b, chunk of groups), the read phase for all L steps, then
//   __syncthreads(), then the write phase, so no output reads a slot written in the same call.
#include <cuda_runtime.h>

#include <cstdint>
#include <cstring>

#include "cuda/causal_conv.h"
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

constexpr int kThreads = 256;  // generic kernels
constexpr int kDwThreads = 128;  // depthwise fwd: threads per row chunk
constexpr int kUpdThreads = 128;

// act: 0 none, 1 silu, 2 relu (NaN stays NaN, as torch's), 3 tanh.
template <typename A>
__device__ __forceinline__ A activate(A u, int act) {
  if (act == 1) return u / (A(1) + dev::dexp(-u));
  if (act == 2) return u < A(0) ? A(0) : u;
  if (act == 3) return dtanh(u);
  return u;
}

// x~[row, j] (x~ index j, time j - P) of a (rows, P + nt) view that is [h | x]; h null: zeros.
template <typename T>
__device__ __forceinline__ acc_t<T> xt(const T* x, const T* h, int64_t row, int64_t j,
                                       int64_t nt, int64_t P) {
  if (j >= P) return ld(x + row * nt + (j - P));
  return h != nullptr ? ld(h + row * P + j) : acc_t<T>(0);
}

// ---- fwd ------------------------------------------------------------------------------------
template <typename T>
__global__ void __launch_bounds__(kThreads)
    fwd_generic(const T* __restrict__ x,  // (B, Cin, nt)
                const T* __restrict__ h,  // (B, Cin, P) or null
                const T* __restrict__ w,  // (Cout, Cg, K)
                const T* __restrict__ b,  // (Cout) or null
                T* __restrict__ y,        // (B, Cout, nt)
                int64_t Cin, int64_t Cout, int64_t nt, int64_t K, int64_t d, int64_t groups,
                int act, int64_t total) {  // total = B * Cout * nt
  using A = acc_t<T>;
  const int64_t Cg = Cin / groups, Og = Cout / groups, P = (K - 1) * d;
  const int64_t step = static_cast<int64_t>(gridDim.x) * kThreads;
  for (int64_t e = static_cast<int64_t>(blockIdx.x) * kThreads + threadIdx.x; e < total;
       e += step) {
    const int64_t t = e % nt, r = e / nt;
    const int64_t co = r % Cout, bi = r / Cout;
    const int64_t row0 = bi * Cin + (co / Og) * Cg;
    const T* wr = w + co * Cg * K;
    A acc = b != nullptr ? ld(b + co) : A(0);
    for (int64_t ci = 0; ci < Cg; ++ci)
      for (int64_t k = 0; k < K; ++k)
        acc += ld(wr + ci * K + k) * xt(x, h, row0 + ci, t + k * d, nt, P);
    st(y + e, activate(acc, act));
  }
}

// One 16-byte vector of N = 16 / sizeof(T) elements, converted to the math type.
template <typename T>
struct Vec {
  static constexpr int N = 16 / static_cast<int>(sizeof(T));
  __device__ static void load(const T* p, acc_t<T> (&v)[N]) {
    T e[N];
    const uint4 raw = *reinterpret_cast<const uint4*>(p);
    memcpy(e, &raw, sizeof(raw));
#pragma unroll
    for (int j = 0; j < N; ++j) v[j] = ld(e + j);
  }
  __device__ static void store(T* p, const acc_t<T> (&v)[N]) {
    T e[N];
#pragma unroll
    for (int j = 0; j < N; ++j) st(e + j, v[j]);
    uint4 raw;
    memcpy(&raw, e, sizeof(raw));
    *reinterpret_cast<uint4*>(p) = raw;
  }
};

template <typename T>
__device__ __forceinline__ bool aligned16(const T* p) {
  return (reinterpret_cast<uintptr_t>(p) & 15) == 0;
}

// Depthwise: y[b,c,t] = act(b[c] + sum_k w[c,k] * x~[b,c,t + k*d]). A block iteration owns the
// chunk [t0, t0 + 128*N) of one (b, c) row; thread i the N times t0 + i*N ...
template <typename T, int K, bool kD1>
__global__ void __launch_bounds__(kDwThreads)
    fwd_depthwise(const T* __restrict__ x, const T* __restrict__ h, const T* __restrict__ w,
                  const T* __restrict__ b, T* __restrict__ y,
                  int64_t C, int64_t nt, int64_t d,  // d == 1 when kD1
                  int act, int64_t rows, int64_t chunks) {  // rows = B * C
  using A = acc_t<T>;
  constexpr int N = Vec<T>::N;
  constexpr int kChunk = kDwThreads * N;
  __shared__ A tile[kChunk];
  const int64_t P = (K - 1) * d;
  const int tid = static_cast<int>(threadIdx.x);
  for (int64_t blk = blockIdx.x; blk < rows * chunks; blk += gridDim.x) {
    const int64_t row = blk / chunks, t0 = (blk % chunks) * kChunk;
    const int64_t c = row % C;
    const T* xr = x + row * nt;
    T* yr = y + row * nt;
    A wk[K];
#pragma unroll
    for (int k = 0; k < K; ++k) wk[k] = ld(w + c * K + k);
    const A bias = b != nullptr ? ld(b + c) : A(0);
    const int64_t t = t0 + static_cast<int64_t>(tid) * N;
    A v[N];
    if (t + N <= nt && aligned16(xr + t)) {
      Vec<T>::load(xr + t, v);
    } else {
#pragma unroll
      for (int j = 0; j < N; ++j) v[j] = t + j < nt ? ld(xr + t + j) : A(0);
    }
#pragma unroll
    for (int j = 0; j < N; ++j) tile[tid * N + j] = v[j];
    __syncthreads();
    // Time s of this row (s < t + N <= the chunk's end): the tile, or the halo from global.
    auto at = [&](int local, int64_t s) -> A {
      if (local >= 0) return tile[local];
      if (s >= 0) return ld(xr + s);
      return h != nullptr ? ld(h + row * P + (P + s)) : A(0);
    };
    A out[N];
#pragma unroll
    for (int j = 0; j < N; ++j) {
      A acc = bias;
#pragma unroll
      for (int k = 0; k < K; ++k) {
        const int back = K - 1 - k;  // taps back, times d
        if constexpr (kD1) {
          // Compile-time register index where the tap is the thread's own element.
          if (j >= back) {
            acc += wk[k] * v[j >= back ? j - back : 0];
          } else {
            acc += wk[k] * at(tid * N + j - back, t + j - back);
          }
        } else {
          const int64_t off = back * d;
          const int64_t local = static_cast<int64_t>(tid) * N + j - off;
          acc += wk[k] * at(local >= 0 ? static_cast<int>(local) : -1, t + j - off);
        }
      }
      out[j] = activate(acc, act);
    }
    if (t + N <= nt && aligned16(yr + t)) {
      Vec<T>::store(yr + t, out);
    } else {
#pragma unroll
      for (int j = 0; j < N; ++j)
        if (t + j < nt) st(yr + t + j, out[j]);
    }
    __syncthreads();  // the tile is refilled by the next iteration
  }
}

// ---- bwd_input ------------------------------------------------------------------------------
template <typename T>
__global__ void __launch_bounds__(kThreads)
    bwd_input_generic(const T* __restrict__ g,  // (B, Cout, nt)
                      const T* __restrict__ w,  // (Cout, Cg, K)
                      T* __restrict__ dx,       // (B, Cin, lout)
                      int64_t Cin, int64_t Cout, int64_t nt, int64_t K, int64_t d,
                      int64_t groups, int64_t lout, int64_t j0,  // dx[..., jo] = dx~[..., j0+jo]
                      int64_t total) {                           // B * Cin * lout
  using A = acc_t<T>;
  const int64_t Cg = Cin / groups, Og = Cout / groups;
  const int64_t step = static_cast<int64_t>(gridDim.x) * kThreads;
  for (int64_t e = static_cast<int64_t>(blockIdx.x) * kThreads + threadIdx.x; e < total;
       e += step) {
    const int64_t j = e % lout + j0, r = e / lout;
    const int64_t cin = r % Cin, bi = r / Cin;
    const int64_t gr = cin / Cg, ci = cin % Cg;
    A acc = 0;
    for (int64_t k = 0; k < K; ++k) {
      const int64_t s = j - k * d;
      if (s < 0 || s >= nt) continue;
      for (int64_t co = gr * Og; co < (gr + 1) * Og; ++co)
        acc += ld(w + (co * Cg + ci) * K + k) * ld(g + (bi * Cout + co) * nt + s);
    }
    st(dx + e, acc);
  }
}

// ---- bwd_weight -----------------------------------------------------------------------------
template <typename T>
__global__ void __launch_bounds__(kThreads)
    bwd_weight_kernel(const T* __restrict__ g,  // (B, Cout, nt)
                      const T* __restrict__ x,  // (B, Cin, nt)
                      const T* __restrict__ h,  // (B, Cin, P) or null
                      T* __restrict__ dw,       // (Cout, Cg, K)
                      int64_t B, int64_t Cin, int64_t Cout, int64_t nt, int64_t K, int64_t d,
                      int64_t groups) {
  using A = acc_t<T>;
  __shared__ alignas(16) unsigned char scratch[Group<kThreads>::kScratchBytes];
  const Group<kThreads> grp{static_cast<int>(threadIdx.x), scratch};
  const int64_t Cg = Cin / groups, Og = Cout / groups, P = (K - 1) * d;
  const int64_t outs = Cout * Cg * K;
  for (int64_t o = blockIdx.x; o < outs; o += gridDim.x) {
    const int64_t co = o / (Cg * K), ci = (o / K) % Cg, k = o % K;
    const int64_t cin = (co / Og) * Cg + ci;
    A acc = 0;
    for (int64_t bi = 0; bi < B; ++bi) {
      const T* gr = g + (bi * Cout + co) * nt;
      for (int64_t t = threadIdx.x; t < nt; t += kThreads)
        acc += ld(gr + t) * xt(x, h, bi * Cin + cin, t + k * d, nt, P);
    }
    acc = grp.reduce(acc, SumOp());
    if (threadIdx.x == 0) st(dw + o, acc);
  }
}

// ---- update ---------------------------------------------------------------------------------
template <typename T>
__global__ void __launch_bounds__(kUpdThreads)
    update_kernel(const T* __restrict__ xn,   // (B, Cin, L)
                  T* __restrict__ state,      // (B, Cin, S), read then written
                  const T* __restrict__ w,    // (Cout, Cg, K)
                  const T* __restrict__ b,    // (Cout) or null
                  const int64_t* __restrict__ seqlens,  // (B) ring mode, or null: shift mode
                  T* __restrict__ y,          // (B, Cout, L)
                  int64_t B, int64_t Cin, int64_t Cout, int64_t L, int64_t S, int64_t K,
                  int64_t d, int64_t groups, int act,
                  int64_t gpb) {  // groups per block
  using A = acc_t<T>;
  const int64_t Cg = Cin / groups, Og = Cout / groups;
  const int64_t chunks = (groups + gpb - 1) / gpb;
  const int tid = static_cast<int>(threadIdx.x);
  for (int64_t blk = blockIdx.x; blk < B * chunks; blk += gridDim.x) {
    const int64_t bi = blk / chunks, g0 = (blk % chunks) * gpb;
    const int64_t g1 = g0 + gpb < groups ? g0 + gpb : groups;
    const bool ring = seqlens != nullptr;
    const int64_t nb = ring ? seqlens[bi] : 0;
    const T* xb = xn + bi * Cin * L;
    T* sb = state + bi * Cin * S;
    // Read phase: the value at tap distance `back` of new step i of channel cin.
    auto tap = [&](int64_t cin, int64_t i, int64_t back) -> A {
      if (i >= back) return ld(xb + cin * L + (i - back));
      if (ring) return S > 0 ? ld(sb + cin * S + pymod(nb + i - back, S)) : A(0);
      return ld(sb + cin * S + (S + i - back));  // back <= P <= S, so >= 0
    };
    const int64_t nout = (g1 - g0) * Og * L;
    for (int64_t e = tid; e < nout; e += kUpdThreads) {
      const int64_t co = g0 * Og + e / L, i = e % L;
      const int64_t c0 = (co / Og) * Cg;
      A acc = b != nullptr ? ld(b + co) : A(0);
      for (int64_t ci = 0; ci < Cg; ++ci)
        for (int64_t k = 0; k < K; ++k)
          acc += ld(w + (co * Cg + ci) * K + k) * tap(c0 + ci, i, (K - 1 - k) * d);
      st(y + (bi * Cout + co) * L + i, activate(acc, act));
    }
    __syncthreads();
    // Write phase, over this block's input channels [c_lo, c_lo + nch).
    const int64_t c_lo = g0 * Cg, nch = (g1 - g0) * Cg;
    if (ring) {
      // Only the last min(L, S) steps survive; their slots are distinct.
      const int64_t first = L > S ? L - S : 0;
      const int64_t nw = nch * (L - first);
      for (int64_t e = tid; e < nw; e += kUpdThreads) {
        const int64_t c = c_lo + e / (L - first), i = first + e % (L - first);
        sb[c * S + pymod(nb + i, S)] = xb[c * L + i];
      }
    } else {
      // state[c, s] = [state | x_new][c, L + s], in flat chunks of the block: a chunk's reads
      // (same channel, higher index) are never slots an earlier chunk wrote.
      const int64_t total = nch * S;
      for (int64_t base = 0; base < total; base += kUpdThreads) {
        const int64_t f = base + tid;
        T v{};
        int64_t c = 0, s = 0;
        if (f < total) {
          c = c_lo + f / S, s = f % S;
          v = L + s < S ? sb[c * S + L + s] : xb[c * L + (L + s - S)];
        }
        __syncthreads();
        if (f < total) sb[c * S + s] = v;
        __syncthreads();
      }
    }
    __syncthreads();
  }
}

// ---- host side ------------------------------------------------------------------------------
constexpr int kInvalid = static_cast<int>(cudaErrorInvalidValue);

unsigned grid_of(int64_t work, int64_t per_block) {
  const int64_t blocks = (work + per_block - 1) / per_block;
  return static_cast<unsigned>(blocks < 1 ? 1 : blocks < kMaxBlocks ? blocks : kMaxBlocks);
}

// The sizes every entry point shares; P = (K-1)*d must not overflow.
bool sizes_ok(int64_t B, int64_t Cin, int64_t Cout, int64_t T, int64_t K, int64_t d,
              int64_t groups) {
  if (B < 0 || Cin < 0 || Cout < 0 || T < 0 || K < 1 || d < 1 || groups < 1) return false;
  if (Cin % groups != 0 || Cout % groups != 0) return false;
  return K - 1 <= (int64_t{1} << 31) / d;  // P < 2^31 + d, far from any int64 product limit
}

template <typename T, int K>
int launch_depthwise(const T* x, const T* h, const T* w, const T* b, T* y, int64_t B, int64_t C,
                     int64_t nt, int64_t d, int act, cudaStream_t st) {
  constexpr int64_t kChunk = kDwThreads * Vec<T>::N;
  const int64_t rows = B * C, chunks = (nt + kChunk - 1) / kChunk;
  const unsigned grid = grid_of(rows * chunks, 1);
  if (d == 1)
    fwd_depthwise<T, K, true><<<grid, kDwThreads, 0, st>>>(x, h, w, b, y, C, nt, 1, act, rows,
                                                            chunks);
  else
    fwd_depthwise<T, K, false><<<grid, kDwThreads, 0, st>>>(x, h, w, b, y, C, nt, d, act, rows,
                                                             chunks);
  return static_cast<int>(cudaGetLastError());
}

}  // namespace

int causal_conv1d_fwd(const void* x, const void* h, const void* w, const void* b, void* y,
                      int64_t B, int64_t Cin, int64_t Cout, int64_t T, int64_t K,
                      int64_t dilation, int64_t groups, int act, int dtype, void* stream) {
  if (!sizes_ok(B, Cin, Cout, T, K, dilation, groups) || act < 0 || act > 3) return kInvalid;
  const int64_t total = B * Cout * T;
  if (total == 0) return static_cast<int>(cudaSuccess);
  if (y == nullptr || w == nullptr || (Cin > 0 && x == nullptr)) return kInvalid;
  const auto st = static_cast<cudaStream_t>(stream);
  return with_dtype(dtype, [&](auto tag) {
    using Ty = typename decltype(tag)::type;
    const auto* xp = static_cast<const Ty*>(x);
    const auto* hp = static_cast<const Ty*>(h);
    const auto* wp = static_cast<const Ty*>(w);
    const auto* bp = static_cast<const Ty*>(b);
    auto* yp = static_cast<Ty*>(y);
    if (groups == Cin && groups == Cout) {
      switch (K) {
        case 1: return launch_depthwise<Ty, 1>(xp, hp, wp, bp, yp, B, Cin, T, dilation, act, st);
        case 2: return launch_depthwise<Ty, 2>(xp, hp, wp, bp, yp, B, Cin, T, dilation, act, st);
        case 3: return launch_depthwise<Ty, 3>(xp, hp, wp, bp, yp, B, Cin, T, dilation, act, st);
        case 4: return launch_depthwise<Ty, 4>(xp, hp, wp, bp, yp, B, Cin, T, dilation, act, st);
        default: break;
      }
    }
    fwd_generic<Ty><<<grid_of(total, kThreads), kThreads, 0, st>>>(
        xp, hp, wp, bp, yp, Cin, Cout, T, K, dilation, groups, act, total);
    return static_cast<int>(cudaGetLastError());
  });
}

int causal_conv1d_bwd_input(const void* g, const void* w, void* dx, int64_t B, int64_t Cin,
                            int64_t Cout, int64_t T, int64_t K, int64_t dilation, int64_t groups,
                            bool with_state, int dtype, void* stream) {
  if (!sizes_ok(B, Cin, Cout, T, K, dilation, groups)) return kInvalid;
  const int64_t P = (K - 1) * dilation;
  const int64_t lout = with_state ? P + T : T;
  const int64_t total = B * Cin * lout;
  if (total == 0) return static_cast<int>(cudaSuccess);
  if (dx == nullptr || w == nullptr || (T > 0 && Cout > 0 && g == nullptr)) return kInvalid;
  const auto st = static_cast<cudaStream_t>(stream);
  return with_dtype(dtype, [&](auto tag) {
    using Ty = typename decltype(tag)::type;
    bwd_input_generic<Ty><<<grid_of(total, kThreads), kThreads, 0, st>>>(
        static_cast<const Ty*>(g), static_cast<const Ty*>(w), static_cast<Ty*>(dx), Cin, Cout, T,
        K, dilation, groups, lout, with_state ? 0 : P, total);
    return static_cast<int>(cudaGetLastError());
  });
}

int causal_conv1d_bwd_weight(const void* g, const void* x, const void* h, void* dw, int64_t B,
                             int64_t Cin, int64_t Cout, int64_t T, int64_t K, int64_t dilation,
                             int64_t groups, int dtype, void* stream) {
  if (!sizes_ok(B, Cin, Cout, T, K, dilation, groups)) return kInvalid;
  const int64_t outs = Cout * (Cin / groups) * K;
  if (outs == 0) return static_cast<int>(cudaSuccess);
  if (dw == nullptr || (B * T > 0 && (g == nullptr || x == nullptr))) return kInvalid;
  const auto st = static_cast<cudaStream_t>(stream);
  return with_dtype(dtype, [&](auto tag) {
    using Ty = typename decltype(tag)::type;
    bwd_weight_kernel<Ty><<<grid_of(outs, 1), kThreads, 0, st>>>(
        static_cast<const Ty*>(g), static_cast<const Ty*>(x), static_cast<const Ty*>(h),
        static_cast<Ty*>(dw), B, Cin, Cout, T, K, dilation, groups);
    return static_cast<int>(cudaGetLastError());
  });
}

int causal_conv1d_update(const void* x_new, void* state, const void* w, const void* b,
                         const int64_t* seqlens, void* y, int64_t B, int64_t Cin, int64_t Cout,
                         int64_t L, int64_t S, int64_t K, int64_t dilation, int64_t groups,
                         int act, int dtype, void* stream) {
  if (!sizes_ok(B, Cin, Cout, L, K, dilation, groups) || act < 0 || act > 3) return kInvalid;
  if (S < (K - 1) * dilation) return kInvalid;  // the taps must fit in the state
  if (B == 0 || L == 0 || (Cin == 0 && Cout == 0)) return static_cast<int>(cudaSuccess);
  if (w == nullptr || (Cout > 0 && y == nullptr) || (Cin > 0 && x_new == nullptr) ||
      (Cin > 0 && S > 0 && state == nullptr))
    return kInvalid;
  const int64_t Cg = Cin / groups, Og = Cout / groups;
  const int64_t widest = Cg > Og ? Cg : Og;
  const int64_t gpb = widest >= kUpdThreads ? 1 : kUpdThreads / (widest > 0 ? widest : 1);
  const int64_t chunks = (groups + gpb - 1) / gpb;
  const auto st = static_cast<cudaStream_t>(stream);
  return with_dtype(dtype, [&](auto tag) {
    using Ty = typename decltype(tag)::type;
    update_kernel<Ty><<<grid_of(B * chunks, 1), kUpdThreads, 0, st>>>(
        static_cast<const Ty*>(x_new), static_cast<Ty*>(state), static_cast<const Ty*>(w),
        static_cast<const Ty*>(b), seqlens, static_cast<Ty*>(y), B, Cin, Cout, L, S, K, dilation,
        groups, act, gpb);
    return static_cast<int>(cudaGetLastError());
  });
}

}  // namespace genfast::cuda
