// CUDA whole-network WaveNet generation: n autoregressive steps of B streams in one launch. The
// contract (packed weights, meta table, rings, pos, noise rows) is the module docstring of
// genfast/ops/causal_conv_generate.py; csrc/cpu/causal_conv_generate.cpp is the CPU twin.
//
// One CTA per stream runs the whole loop: a step is a chain of small GEMVs (a few hundred
// outputs each), far too little work to spread over SMs with a grid-wide barrier per layer, and
// at these sizes the weights (1-4 MB) stay in L2, read through the read-only path every step.
// The per-stream vectors live in shared memory, the dilation queues (rings) in global memory
// (they are the state Python keeps between calls), and __syncthreads() orders the phases.
// GEMVs are one warp per output row: lanes stride the row (coalesced weight loads) and a
// butterfly sums them, a fixed order, so a stream's result does not depend on the launch.
//
// The draw is the `sample` family's (contract: genfast/ops/sample.py), arithmetic as in
// csrc/cuda/sample.cu: s = (x' - m') * inv_temperature, the top_k threshold, the top_p threshold
// on integer masses trunc(exp(s) * 2^S), then the first argmax of s + g over the kept set, g
// from Philox row (steps done) * B + b. The thresholds are found by a bitwise search over the
// order-preserving key of s (one block reduction per bit): the same largest-key answer as the
// sample kernel's radix select, at a cost that does not matter next to 20 layers of GEMVs.
#include <cuda_runtime.h>

#include <cmath>
#include <cstdint>

#include "cuda/causal_conv_generate.h"
#include "cuda/causal_conv.cuh"
#include "cuda/common.cuh"
#include "cuda/draw_block.cuh"

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
using draw_block::Draw;

constexpr int kThreads = 256;
constexpr int kWarps = kThreads / 32;
constexpr int kMaxLayers = 256;
constexpr int64_t kMetaHead = 8;  // meta = [L, A, R, G, S, E, K, input_kind, d_0 .. d_{L-1}]

// The network's sizes, read from the host-side meta table by the launcher.
struct Net {
  int64_t L, A, R, G, S, E, K, kind, H;
  int32_t dil[kMaxLayers];
};

// Weights are read every step by every stream, never written: the read-only (texture) path.
template <typename T>
__device__ __forceinline__ acc_t<T> ldw(const T* p) {
  if constexpr (sizeof(T) == 2) {
    return dev::Io16<T>::to_f(__ldg(reinterpret_cast<const unsigned short*>(p)));
  } else {
    return __ldg(p);
  }
}

// f(o, W[o, :] . v) for o < outs, W row-major (outs, ins). A warp takes kRows rows at a time
// (kRows independent loads in flight per lane instead of one L2 round trip per row); lanes
// stride each row (coalesced), a butterfly sums it, f runs on lane 0. Each row's summation
// order depends only on ins, never on which warp or group of rows holds it. The input loop is
// not unrolled: unrolled, the kernel needs every register of the SM (ptxas -v).
constexpr int kRows = 4;
template <typename T, typename A, class F>
__device__ __forceinline__ void gemv(const T* W, int64_t outs, int64_t ins, const A* v, F&& f) {
  const int lane = static_cast<int>(threadIdx.x & 31), warp = static_cast<int>(threadIdx.x >> 5);
  for (int64_t o0 = static_cast<int64_t>(warp) * kRows; o0 < outs; o0 += kWarps * kRows) {
    A acc[kRows];
#pragma unroll
    for (int r = 0; r < kRows; ++r) acc[r] = 0;
#pragma unroll 1
    for (int64_t i = lane; i < ins; i += 32) {
      const A vi = v[i];
#pragma unroll
      for (int r = 0; r < kRows; ++r)
        if (o0 + r < outs) acc[r] += ldw(W + (o0 + r) * ins + i) * vi;
    }
#pragma unroll
    for (int r = 0; r < kRows; ++r) {
#pragma unroll
      for (int off = 16; off > 0; off >>= 1) acc[r] += dev::shfl_xor(acc[r], off);
      if (lane == 0 && o0 + r < outs) f(o0 + r, acc[r]);
    }
  }
}

template <typename T>
__global__ void __launch_bounds__(kThreads)
    generate_kernel(const T* __restrict__ wts,    // the packed weights
                    const Net net,                //
                    const T* __restrict__ gcond,  // (B, L, G) or null
                    const T* __restrict__ lcond,  // (B, n, L, G) or null
                    T* __restrict__ rings,        // (B, ring_len)
                    int64_t* __restrict__ pos,    // (B, 2): steps done, previous token
                    int64_t* __restrict__ tokens,  // (B, n)
                    int64_t B, int64_t n, int64_t ring_len,
                    const int64_t* __restrict__ seed,  // device int64, as the sample kernel's
                    Draw<acc_t<T>> dr) {
  using A = acc_t<T>;
  const int64_t L = net.L, R = net.R, G = net.G, H = net.H, S = net.S, E = net.E, K = net.K;
  const int64_t ncls = net.A;
  extern __shared__ __align__(16) unsigned char smem[];
  A* x = reinterpret_cast<A*>(smem);  // R: the residual stream
  A* skip = x + R;                    // S
  A* taps = skip + S;                 // R*K, as w_dil's rows: taps[r*K + k]
  A* a = taps + R * K;                // G
  A* z = a + G;                       // H
  A* e = z + H;                       // E
  A* lg = e + E;                      // A: logits, then s
  __shared__ alignas(16) unsigned char scratch[Group<kThreads>::kScratchBytes];
  const Group<kThreads> grp{static_cast<int>(threadIdx.x), scratch};
  const int tid = static_cast<int>(threadIdx.x);
  const int64_t layer_len = G * R * K + G + R * H + R + S * H + S;
  const T* head = wts + (net.kind == 0 ? ncls * R : 2 * R) + L * layer_len;
  dr.seed = static_cast<uint64_t>(*seed);
  for (int64_t b = blockIdx.x; b < B; b += gridDim.x) {
    int64_t p = pos[2 * b], tok = pos[2 * b + 1];
    // Python checks the tokens; a bad one is clamped here rather than read out of bounds.
    tok = tok < 0 ? 0 : tok >= ncls ? ncls - 1 : tok;
    T* ring_b = rings + b * ring_len;
    for (int64_t i = 0; i < n; ++i) {
      for (int64_t r = tid; r < R; r += kThreads) {
        if (net.kind == 0) {
          x[r] = ldw(wts + tok * R + r);
        } else {
          const A v = static_cast<A>(tok) * A(2) / static_cast<A>(ncls - 1) - A(1);
          x[r] = ldw(wts + r) * v + ldw(wts + R + r);
        }
      }
      for (int64_t s = tid; s < S; s += kThreads) skip[s] = 0;
      __syncthreads();
      const T* lw = wts + (net.kind == 0 ? ncls * R : 2 * R);
      T* ring = ring_b;
      for (int64_t l = 0; l < L; ++l, lw += layer_len) {
        const int64_t d = net.dil[l], M = (K - 1) * d;
        // Taps of positions p - (K-1-k)*d (< 0: the zero-initialised ring), then the layer's
        // input into the slot of its oldest tap, which has just been read.
        for (int64_t j = tid; j < R * K; j += kThreads) {
          const int64_t r = j / K, k = j % K;
          taps[j] = k == K - 1 ? x[r] : ld(ring + pymod(p - (K - 1 - k) * d, M) * R + r);
        }
        __syncthreads();
        if (M > 0)
          for (int64_t r = tid; r < R; r += kThreads)
            Io<T>::store1(ring + pymod(p, M) * R + r, x[r]);
        const T* w_dil = lw;
        const T* b_dil = w_dil + G * R * K;
        const T* w_res = b_dil + G;
        const T* b_res = w_res + R * H;
        const T* w_skip = b_res + R;
        const T* b_skip = w_skip + S * H;
        gemv(w_dil, G, R * K, taps, [&](int64_t g, A acc) {
          acc += ldw(b_dil + g);
          if (gcond != nullptr) acc += ld(gcond + (b * L + l) * G + g);
          if (lcond != nullptr) acc += ld(lcond + ((b * n + i) * L + l) * G + g);
          a[g] = acc;
        });
        __syncthreads();
        for (int64_t hh = tid; hh < H; hh += kThreads)
          z[hh] = dtanh(a[hh]) * sigmoid(a[H + hh]);
        __syncthreads();
        gemv(w_res, R, H, z, [&](int64_t r, A acc) { x[r] += acc + ldw(b_res + r); });
        gemv(w_skip, S, H, z, [&](int64_t s, A acc) { skip[s] += acc + ldw(b_skip + s); });
        __syncthreads();
        ring += M * R;
      }
      for (int64_t s = tid; s < S; s += kThreads) skip[s] = skip[s] > A(0) ? skip[s] : A(0);
      __syncthreads();
      const T* w1 = head;
      const T* b1 = w1 + E * S;
      const T* w2 = b1 + E;
      const T* b2 = w2 + ncls * E;
      gemv(w1, E, S, skip, [&](int64_t j, A acc) {
        acc += ldw(b1 + j);
        e[j] = acc > A(0) ? acc : A(0);
      });
      __syncthreads();
      gemv(w2, ncls, E, e, [&](int64_t c, A acc) { lg[c] = acc + ldw(b2 + c); });
      __syncthreads();
      const uint64_t row = static_cast<uint64_t>(p) * static_cast<uint64_t>(B) +
                           static_cast<uint64_t>(b);
      tok = draw_block::draw(grp, lg, ncls, dr, row);
      if (tid == 0) tokens[b * n + i] = tok;
      ++p;
      __syncthreads();  // lg, x and skip are rewritten by the next step
    }
    if (tid == 0) {
      pos[2 * b] = p;
      pos[2 * b + 1] = tok;
    }
  }
}

constexpr int kInvalid = static_cast<int>(cudaErrorInvalidValue);

}  // namespace

int wavenet_generate(const void* weights, const int64_t* meta, int64_t meta_len,
                     const void* gcond, const void* lcond, void* rings, int64_t* pos,
                     int64_t* tokens, int64_t B, int64_t n, const int64_t* seed,
                     double inv_temperature, int64_t top_k, double top_p, int dtype,
                     void* stream) {
  // meta is a host table (the CPU twin reads the same tensor): the sizes become launch
  // arguments, so the kernel needs no device copy and the call no synchronisation.
  if (meta == nullptr || meta_len < kMetaHead || B < 0 || n < 0) return kInvalid;
  Net net{meta[0], meta[1], meta[2], meta[3], meta[4], meta[5], meta[6], meta[7], meta[3] / 2, {}};
  if (net.L < 0 || net.L > kMaxLayers || meta_len != kMetaHead + net.L) return kInvalid;
  if (net.A < 2 || net.R < 1 || net.G < 2 || net.G % 2 != 0 || net.S < 1 || net.E < 1 ||
      net.K < 1 || (net.kind != 0 && net.kind != 1))
    return kInvalid;
  int64_t ring_len = 0;
  for (int64_t l = 0; l < net.L; ++l) {
    const int64_t d = meta[kMetaHead + l];
    if (d < 1 || d > INT32_MAX || net.K - 1 > (int64_t{1} << 31) / d) return kInvalid;
    net.dil[l] = static_cast<int32_t>(d);
    ring_len += (net.K - 1) * d * net.R;
  }
  if (B == 0 || n == 0) return static_cast<int>(cudaSuccess);
  if (weights == nullptr || pos == nullptr || tokens == nullptr || seed == nullptr ||
      (ring_len > 0 && rings == nullptr))
    return kInvalid;
  if (!(inv_temperature > 0)) return kInvalid;
  const auto st = static_cast<cudaStream_t>(stream);
  return with_dtype(dtype, [&](auto tag) {
    using Ty = typename decltype(tag)::type;
    using A = acc_t<Ty>;
    const Draw<A> dr = draw_block::make_draw<A>(inv_temperature, top_k, top_p, net.A);
    const int64_t vec = net.R + net.S + net.R * net.K + net.G + net.H + net.E + net.A;
    const int64_t bytes = vec * static_cast<int64_t>(sizeof(A));
    if (bytes > 48 * 1024) {
      // Past the default limit: opt in to the device's maximum (227 KB on sm_90), or fail.
      const int want = static_cast<int>(bytes < INT32_MAX ? bytes : INT32_MAX);
      const cudaError_t rc = cudaFuncSetAttribute(
          generate_kernel<Ty>, cudaFuncAttributeMaxDynamicSharedMemorySize, want);
      if (rc != cudaSuccess) return static_cast<int>(rc);
    }
    const auto blocks = static_cast<unsigned>(B < kMaxBlocks ? B : kMaxBlocks);
    generate_kernel<Ty><<<blocks, kThreads, static_cast<size_t>(bytes), st>>>(
        static_cast<const Ty*>(weights), net, static_cast<const Ty*>(gcond),
        static_cast<const Ty*>(lcond), static_cast<Ty*>(rings), pos, tokens, B, n, ring_len,
        seed, dr);
    return static_cast<int>(cudaGetLastError());
  });
}

}  // namespace genfast::cuda
