// CUDA native sampling loop of an LSTM language model: every step of B streams in one launch.
// The contract (packed weights, meta, the state, start, offset, the noise rows) is the module
// docstring of genfast/ops/lstm_generate.py; csrc/cpu/lstm_generate.cpp is the CPU twin.
//
// One cooperative persistent kernel (the header says why not a CTA per stream). Per step and
// layer, CTA k owns hidden units [k U, (k+1) U): the rows g H + j (g = i, f, g, o) of w_ih / w_hh
// for its units, for every stream. Streams pass through in groups of kG: the group's input
// vectors ([x; h] of each stream) are staged in shared memory, each warp computes whole rows
// (lanes stride the row: coalesced weight loads, each weight times the kG vectors), the gate
// pre-activations go through shared memory to the fused cell update, and the new h / c land in a
// float32 (float64) workspace. A grid barrier ends the layer. The head splits its V rows the
// same way into a logits buffer; after a barrier CTA k draws the streams b = k mod grid (the
// block-wide sampler of draw_block.cuh) and writes the tokens; a barrier, the next step.
// Barriers per step: L, plus 2 when the step samples. When they fit, the CTA's weight rows are
// copied into shared memory before the first step ("weights resident on chip"); the dot products
// read either copy in the same order, so caching never changes a result.
//
// The state has two h buffers used in turn (step p reads h_l from buffer (p-1) % 2 and writes
// the other), so no CTA overwrites an h another still reads; each c element is read and written
// by one CTA only. Everything written during the kernel (state, logits, drawn tokens) is read
// back through L2 (__ldcg): other CTAs wrote it, and a stale L1 line must never be read.
#include <cooperative_groups.h>
#include <cuda_runtime.h>

#include <cstdint>

#include "cuda/causal_conv.cuh"
#include "cuda/common.cuh"
#include "cuda/draw_block.cuh"
#include "cuda/lstm_generate.h"

namespace genfast::cuda {
namespace {

namespace cg = cooperative_groups;
using cc::dtanh;
using cc::ld;
using cc::sigmoid;
using cc::st;
using dev::acc_t;
using dev::Group;
using draw_block::Draw;

constexpr int kThreads = 256;
constexpr int kWarps = kThreads / 32;
constexpr int kMaxGroup = 8;  // streams per pass over a CTA's rows
constexpr int64_t kMetaLen = 3;  // meta = [L, V, H]
constexpr int64_t kDefaultSmem = 48 * 1024;

template <typename T>
struct Args {
  const T* w;  // packed weights
  int64_t* tokens;  // (B, N)
  T* h;  // (L, B, H) model dtype, in / out
  T* c;
  acc_t<T>* hb;  // (2, L, B, H): h before / after a step, the buffers in turn
  acc_t<T>* cs;  // (L, B, H)
  acc_t<T>* lg;  // (B, V) logits of the step
  int64_t L, V, H, B, N, start, offset;
  int64_t U;  // hidden units per CTA
  int64_t Uv;  // head rows per CTA
  int64_t vec_len;  // math-type elements of the staged vectors (or one logits row)
  int64_t cached;  // 1: the CTA's weight rows are copied into shared memory once per call
  const int64_t* seed;  // device int64
  Draw<acc_t<T>> dr;
};

// Weights are never written: the read-only path.
template <typename T>
__device__ __forceinline__ acc_t<T> ldw(const T* p) {
  if constexpr (sizeof(T) == 2) {
    return dev::Io16<T>::to_f(__ldg(reinterpret_cast<const unsigned short*>(p)));
  } else {
    return __ldg(p);
  }
}

// Values other CTAs wrote during the kernel: from L2, never a stale L1 line.
__device__ __forceinline__ float ldc(const float* p) { return __ldcg(p); }
__device__ __forceinline__ double ldc(const double* p) { return __ldcg(p); }
__device__ __forceinline__ int64_t ldc(const int64_t* p) {
  return static_cast<int64_t>(__ldcg(reinterpret_cast<const long long*>(p)));
}

// A weight: from the CTA's shared-memory copy, or from global memory (read-only path).
template <bool kSmem, typename T>
__device__ __forceinline__ acc_t<T> ldrow(const T* p) {
  if constexpr (kSmem) {
    return static_cast<acc_t<T>>(dev::Io<T>::load1(p));
  } else {
    return ldw(p);
  }
}

// acc[b] += w[0, n) . v[b stride + (0, n)] for the kG staged streams. Each lane sums the columns
// lane, lane + 32, ... in order, whatever kG (a stream's sum does not depend on its group), with
// kInFlight weight loads issued before their FMAs: at batch 1 a row is a few such rounds, each an
// L2 (or shared memory) round trip.
constexpr int kInFlight = 8;
template <int kG, bool kSmem, typename T, typename A>
__device__ __forceinline__ void warp_dot(const T* w, int64_t n, const A* v, int64_t stride,
                                         A (&acc)[kG]) {
  const int lane = static_cast<int>(threadIdx.x & 31);
#pragma unroll 1
  for (int64_t i0 = lane; i0 < n; i0 += 32 * kInFlight) {
    A wv[kInFlight];
#pragma unroll
    for (int k = 0; k < kInFlight; ++k)
      wv[k] = i0 + 32 * k < n ? ldrow<kSmem>(w + i0 + 32 * k) : A(0);
#pragma unroll
    for (int k = 0; k < kInFlight; ++k) {
      const int64_t i = i0 + 32 * k;
      if (i < n) {
#pragma unroll
        for (int b = 0; b < kG; ++b) acc[b] += wv[k] * v[b * stride + i];
      }
    }
  }
#pragma unroll
  for (int b = 0; b < kG; ++b) {
#pragma unroll
    for (int off = 16; off > 0; off >>= 1) acc[b] += dev::shfl_xor(acc[b], off);
  }
}

// Where layer l's rows start in a CTA's weight cache: 4U rows of H (layer 0: w_hh0), then per
// layer 4U rows of 2H ([w_ih | w_hh]); the head's Uv rows of H after the last layer.
__device__ __forceinline__ int64_t layer_cache_offset(int64_t U, int64_t H, int64_t l) {
  return l == 0 ? 0 : 4 * U * H * (2 * l - 1);
}

// Copies this CTA's weight rows (its units' gate rows of every layer, its head rows) into the
// shared-memory cache, in layer_cache_offset's layout.
template <typename T>
__device__ void fill_cache(const Args<T>& a, T* cache) {
  const int64_t H = a.H, tid = threadIdx.x;
  const int64_t j0 = static_cast<int64_t>(blockIdx.x) * a.U;
  const int64_t nu = H - j0 < a.U ? H - j0 : a.U;
  const T* w_hh0 = a.w + a.V * 4 * H;
  for (int64_t l = 0; l < a.L; ++l) {
    const int64_t K = l == 0 ? H : 2 * H;
    const T* lw = l == 0 ? w_hh0 : w_hh0 + 4 * H * H + (l - 1) * (8 * H * H + 4 * H);
    T* dst = cache + layer_cache_offset(a.U, H, l);
    for (int64_t t = tid; t < 4 * nu * K; t += kThreads) {
      const int64_t lr = t / K, i = t % K, r = (lr / nu) * H + j0 + lr % nu;
      dst[t] = l == 0 ? w_hh0[r * H + i] : i < H ? lw[r * H + i] : lw[4 * H * H + r * H + i - H];
    }
  }
  const int64_t v0 = static_cast<int64_t>(blockIdx.x) * a.Uv;
  const int64_t nv = a.V - v0 < a.Uv ? a.V - v0 : a.Uv;
  const T* w_out = w_hh0 + 4 * H * H + (a.L - 1) * (8 * H * H + 4 * H);
  T* dst = cache + layer_cache_offset(a.U, H, a.L);
  for (int64_t t = tid; t < nv * H; t += kThreads) dst[t] = w_out[v0 * H + t];
}

// Layer l of step p on this CTA's hidden units: reads h_{l-1} (new, hout) and h_l (hin), writes
// h_l into hout and c_l in place. Block-uniform control flow.
template <typename T, int kG>
__device__ void layer_step(const Args<T>& a, int64_t l, int64_t p, const acc_t<T>* hin,
                           acc_t<T>* hout, acc_t<T>* vec, acc_t<T>* part, const T* cache) {
  using A = acc_t<T>;
  const int64_t H = a.H, B = a.B;
  const int64_t j0 = static_cast<int64_t>(blockIdx.x) * a.U;
  const int64_t nu = H - j0 < a.U ? H - j0 : a.U;
  if (nu <= 0) return;
  const int tid = static_cast<int>(threadIdx.x), warp = tid >> 5, lane = tid & 31;
  const int64_t K = l == 0 ? H : 2 * H;  // staged columns per stream: [h] or [x; h]
  const T* w_hh0 = a.w + a.V * 4 * H;
  // Layer l >= 1: [w_ih, w_hh, b] (lw: its w_ih); layer 0: w_hh0, its input side is tab.
  const T* lw = l == 0 ? w_hh0 : w_hh0 + 4 * H * H + (l - 1) * (8 * H * H + 4 * H);
  const T* w_hh = l == 0 ? w_hh0 : lw + 4 * H * H;
  for (int64_t g0 = 0; g0 < B; g0 += kG) {
    const int64_t nb = B - g0 < kG ? B - g0 : kG;
    for (int64_t t = tid; t < kG * K; t += kThreads) {
      const int64_t b = t / K, i = t % K, s = g0 + b;
      A v = 0;
      if (b < nb)
        v = l == 0 ? ldc(hin + s * H + i)
            : i < H ? ldc(hout + ((l - 1) * B + s) * H + i)
                    : ldc(hin + (l * B + s) * H + i - H);
      vec[b * K + i] = v;
    }
    __syncthreads();
    for (int64_t lr = warp; lr < 4 * nu; lr += kWarps) {
      const int64_t r = (lr / nu) * H + j0 + lr % nu;  // gate lr / nu, unit j0 + lr % nu
      A acc[kG];
#pragma unroll
      for (int b = 0; b < kG; ++b) acc[b] = 0;
      // Input half (layers >= 1), then recurrent half: the same order from either copy.
      if (a.cached) {
        const T* row = cache + layer_cache_offset(a.U, H, l) + lr * K;
        if (l > 0) warp_dot<kG, true>(row, H, vec, K, acc);
        warp_dot<kG, true>(row + K - H, H, vec + K - H, K, acc);
      } else {
        if (l > 0) warp_dot<kG, false>(lw + r * H, H, vec, K, acc);
        warp_dot<kG, false>(w_hh + r * H, H, vec + K - H, K, acc);
      }
      if (lane == 0) {
#pragma unroll
        for (int b = 0; b < kG; ++b) part[lr * kG + b] = acc[b];
      }
    }
    __syncthreads();
    for (int64_t t = tid; t < nu * nb; t += kThreads) {
      const int64_t u = t / nb, b = t % nb, s = g0 + b, j = j0 + u;
      const T* bias;  // layer 0: its folded input side, the token's tab row
      if (l == 0) {
        // The token fed at step p; Python checks given tokens on the CPU only: clamp.
        int64_t tok = ldc(a.tokens + s * a.N + p - 1);
        tok = tok < 0 ? 0 : tok >= a.V ? a.V - 1 : tok;
        bias = a.w + tok * 4 * H;
      } else {
        bias = lw + 8 * H * H;
      }
      A gate[4];
#pragma unroll
      for (int g = 0; g < 4; ++g) gate[g] = part[(g * nu + u) * kG + b] + ldw(bias + g * H + j);
      A* cp = a.cs + (l * B + s) * H + j;
      const A cn = sigmoid(gate[1]) * ldc(cp) + sigmoid(gate[0]) * dtanh(gate[2]);
      *cp = cn;
      hout[(l * B + s) * H + j] = sigmoid(gate[3]) * dtanh(cn);
    }
    __syncthreads();  // vec and part are restaged by the next group
  }
}

// logits (B, V) = w_out h_{L-1} + b_out on this CTA's head rows.
template <typename T, int kG>
__device__ void head_step(const Args<T>& a, const acc_t<T>* hout, acc_t<T>* vec,
                          const T* cache) {
  using A = acc_t<T>;
  const int64_t H = a.H, B = a.B, V = a.V;
  const int64_t v0 = static_cast<int64_t>(blockIdx.x) * a.Uv;
  const int64_t nv = V - v0 < a.Uv ? V - v0 : a.Uv;
  if (nv <= 0) return;
  const int tid = static_cast<int>(threadIdx.x), warp = tid >> 5, lane = tid & 31;
  const T* w_out = a.w + a.V * 4 * H + 4 * H * H + (a.L - 1) * (8 * H * H + 4 * H);
  const T* b_out = w_out + V * H;
  const A* top = hout + (a.L - 1) * B * H;
  for (int64_t g0 = 0; g0 < B; g0 += kG) {
    const int64_t nb = B - g0 < kG ? B - g0 : kG;
    for (int64_t t = tid; t < kG * H; t += kThreads) {
      const int64_t b = t / H;
      vec[t] = b < nb ? ldc(top + (g0 + b) * H + t % H) : A(0);
    }
    __syncthreads();
    for (int64_t lr = warp; lr < nv; lr += kWarps) {
      const int64_t v = v0 + lr;
      A acc[kG];
#pragma unroll
      for (int b = 0; b < kG; ++b) acc[b] = 0;
      if (a.cached)
        warp_dot<kG, true>(cache + layer_cache_offset(a.U, H, a.L) + lr * H, H, vec, H, acc);
      else
        warp_dot<kG, false>(w_out + v * H, H, vec, H, acc);
      if (lane == 0) {
        const A bv = ldw(b_out + v);
#pragma unroll
        for (int b = 0; b < kG; ++b)
          if (b < nb) a.lg[(g0 + b) * V + v] = acc[b] + bv;
      }
    }
    __syncthreads();
  }
}

template <typename T, int kG>
__global__ void __launch_bounds__(kThreads) generate_kernel(const Args<T> a) {
  using A = acc_t<T>;
  extern __shared__ __align__(16) unsigned char smem[];
  A* vec = reinterpret_cast<A*>(smem);  // staged vectors, or the logits row of a draw
  A* part = vec + a.vec_len;  // (4U, kG) gate pre-activations
  T* cache = reinterpret_cast<T*>(part + 4 * a.U * kG);  // this CTA's weight rows, if cached
  __shared__ alignas(16) unsigned char scratch[Group<kThreads>::kScratchBytes];
  const int tid = static_cast<int>(threadIdx.x);
  const Group<kThreads> grp{tid, scratch};
  cg::grid_group grid = cg::this_grid();
  const int64_t LBH = a.L * a.B * a.H, B = a.B, V = a.V;
  const int64_t first = static_cast<int64_t>(blockIdx.x) * kThreads + tid;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * kThreads;
  for (int64_t i = first; i < LBH; i += stride) {
    a.hb[i] = ld(a.h + i);
    a.cs[i] = ld(a.c + i);
  }
  if (a.cached) fill_cache(a, cache);
  Draw<A> dr = a.dr;
  dr.seed = static_cast<uint64_t>(*a.seed);
  grid.sync();
  for (int64_t p = 1; p < a.N; ++p) {
    const A* hin = a.hb + ((p - 1) & 1) * LBH;
    A* hout = a.hb + (p & 1) * LBH;
    for (int64_t l = 0; l < a.L; ++l) {
      layer_step<T, kG>(a, l, p, hin, hout, vec, part, cache);
      grid.sync();
    }
    if (p < a.start) continue;  // a given token: only the state advances
    head_step<T, kG>(a, hout, vec, cache);
    grid.sync();
    for (int64_t b = blockIdx.x; b < B; b += gridDim.x) {
      for (int64_t c = tid; c < V; c += kThreads) vec[c] = ldc(a.lg + b * V + c);
      __syncthreads();
      const uint64_t row = static_cast<uint64_t>(a.offset + p) * static_cast<uint64_t>(B) +
                           static_cast<uint64_t>(b);
      const int64_t tok = draw_block::draw(grp, vec, V, dr, row);
      if (tid == 0) a.tokens[b * a.N + p] = tok;
      __syncthreads();  // vec is the next stream's row
    }
    grid.sync();  // the next step's layer 0 reads the tokens
  }
  const A* last = a.hb + ((a.N - 1) & 1) * LBH;
  for (int64_t i = first; i < LBH; i += stride) {
    st(a.h + i, ldc(last + i));
    st(a.c + i, ldc(a.cs + i));
  }
}

// Dynamic shared memory of a group of kG streams: the staged vectors (or a logits row) and the
// gate pre-activations of 4U rows; the weight cache comes after them.
template <typename A>
int64_t smem_bytes(int64_t kG, int64_t vec_len, int64_t U) {
  return (vec_len + 4 * U * kG) * static_cast<int64_t>(sizeof(A));
}

template <typename Ty, int kG>
int launch(Args<Ty> a, int64_t grid, int64_t cache_bytes, cudaStream_t st) {
  using A = acc_t<Ty>;
  const int64_t bytes = smem_bytes<A>(kG, a.vec_len, a.U) + (a.cached ? cache_bytes : 0);
  auto* kern = generate_kernel<Ty, kG>;
  cudaError_t rc = cudaSuccess;
  if (bytes > kDefaultSmem) {
    // Past the default limit: opt in to the device's maximum (227 KB on sm_90), or fail.
    rc = cudaFuncSetAttribute(kern, cudaFuncAttributeMaxDynamicSharedMemorySize,
                              static_cast<int>(bytes < INT32_MAX ? bytes : INT32_MAX));
    if (rc != cudaSuccess) return static_cast<int>(rc);
  }
  int per_sm = 0;
  rc = cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, kern, kThreads,
                                                     static_cast<size_t>(bytes));
  if (rc != cudaSuccess) return static_cast<int>(rc);
  // grid <= the SM count (the launcher's choice): one resident CTA per SM is all it needs.
  if (per_sm < 1) return static_cast<int>(cudaErrorCooperativeLaunchTooLarge);
  void* args[] = {&a};
  rc = cudaLaunchCooperativeKernel(reinterpret_cast<const void*>(kern),
                                   dim3(static_cast<unsigned>(grid)), dim3(kThreads), args,
                                   static_cast<size_t>(bytes), st);
  return static_cast<int>(rc);
}

constexpr int kInvalid = static_cast<int>(cudaErrorInvalidValue);

}  // namespace

int lstm_generate(const void* weights, const int64_t* meta, int64_t meta_len, int64_t* tokens,
                  void* h, void* c, int64_t B, int64_t N, int64_t start, int64_t offset,
                  const int64_t* seed, double inv_temperature, int64_t top_k, double top_p,
                  int dtype, void* stream) {
  // meta is a host table (the CPU twin reads the same tensor): the sizes become launch
  // arguments, so the kernel needs no device copy and the call no synchronisation.
  if (meta == nullptr || meta_len != kMetaLen || B < 0 || N < 0) return kInvalid;
  const int64_t L = meta[0], V = meta[1], H = meta[2];
  if (L < 1 || V < 1 || H < 1 || start < 1 || start > (N > 1 ? N : 1) || offset < 0)
    return kInvalid;
  if (!(inv_temperature > 0)) return kInvalid;
  if (B == 0 || N <= 1) return static_cast<int>(cudaSuccess);  // no step to run
  if (weights == nullptr || tokens == nullptr || h == nullptr || c == nullptr || seed == nullptr)
    return kInvalid;
  const auto st = static_cast<cudaStream_t>(stream);
  int device = 0, sms = 0, coop = 0, optin = 0;
  cudaError_t rc = cudaGetDevice(&device);
  if (rc == cudaSuccess) rc = cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device);
  if (rc == cudaSuccess) rc = cudaDeviceGetAttribute(&coop, cudaDevAttrCooperativeLaunch, device);
  if (rc == cudaSuccess)
    rc = cudaDeviceGetAttribute(&optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, device);
  if (rc != cudaSuccess) return static_cast<int>(rc);
  if (!coop) return static_cast<int>(cudaErrorNotSupported);
  // At least 2 units (8 rows) per CTA, so every warp has a row; at most one CTA per SM.
  const int64_t max_grid = sms > 0 ? sms : 1;
  int64_t U = (H + max_grid - 1) / max_grid;
  U = U < 2 ? 2 : U;
  const int64_t grid = (H + U - 1) / U;
  const int64_t Uv = (V + grid - 1) / grid;
  const int64_t kmax = L > 1 ? 2 * H : H;  // staged columns per stream
  return with_dtype(dtype, [&](auto tag) {
    using Ty = typename decltype(tag)::type;
    using A = acc_t<Ty>;
    // Streams per pass: up to kMaxGroup. The CTA's weight rows stay in shared memory when they
    // fit beside the vectors of at least one stream (2 x 512 float32 on 128 SMs: 96 KB), else
    // they are read from L2 every step and the group shrinks until the vectors fit the default
    // 48 KB (the rows then serve fewer streams per read).
    int64_t g_max = 1;
    while (g_max < kMaxGroup && g_max < B) g_max *= 2;
    const auto vec_len = [&](int64_t k) { return k * kmax > V ? k * kmax : V; };
    const int64_t cache_bytes =
        (4 * U * H * (2 * L - 1) + Uv * H) * static_cast<int64_t>(sizeof(Ty));
    const int64_t limit = static_cast<int64_t>(optin) - 1024;  // static smem and slack
    int64_t g = g_max;
    while (g > 1 && smem_bytes<A>(g, vec_len(g), U) + cache_bytes > limit) g /= 2;
    const bool cached = smem_bytes<A>(g, vec_len(g), U) + cache_bytes <= limit;
    if (!cached) {
      g = g_max;
      while (g > 1 && smem_bytes<A>(g, vec_len(g), U) > kDefaultSmem) g /= 2;
    }
    Args<Ty> a{static_cast<const Ty*>(weights), tokens, static_cast<Ty*>(h), static_cast<Ty*>(c),
               nullptr, nullptr, nullptr, L, V, H, B, N, start, offset, U, Uv, vec_len(g),
               cached ? 1 : 0, seed, draw_block::make_draw<A>(inv_temperature, top_k, top_p, V)};
    const int64_t LBH = L * B * H;
    const size_t work_bytes = static_cast<size_t>(3 * LBH + B * V) * sizeof(A);
    void* work = nullptr;
    cudaError_t e = cudaMallocAsync(&work, work_bytes, st);
    if (e != cudaSuccess) return static_cast<int>(e);
    a.hb = static_cast<A*>(work);
    a.cs = a.hb + 2 * LBH;
    a.lg = a.cs + LBH;
    int r = 0;
    switch (g) {
      case 1: r = launch<Ty, 1>(a, grid, cache_bytes, st); break;
      case 2: r = launch<Ty, 2>(a, grid, cache_bytes, st); break;
      case 4: r = launch<Ty, 4>(a, grid, cache_bytes, st); break;
      default: r = launch<Ty, kMaxGroup>(a, grid, cache_bytes, st); break;
    }
    const cudaError_t f = cudaFreeAsync(work, st);
    return r != 0 ? r : static_cast<int>(f);
  });
}

}  // namespace genfast::cuda
