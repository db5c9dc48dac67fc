// CUDA whole-network gated PixelCNN generation: every pixel of B images in one launch. The
// contract (packed weights, meta, noise rows, start) is the module docstring of
// genfast/ops/masked_conv_generate.py; csrc/cpu/masked_conv_generate.cpp is the CPU twin.
//
// One CTA per image runs the whole raster loop (fast-pixel-cnn's cached algorithm), as the
// WaveNet generator runs one CTA per stream: a pixel is a chain of small GEMVs through L layers,
// far too little work to spread over SMs with grid-wide barriers. Weights (1-4 MB at the usual
// sizes) stay in L2 and are read through the read-only path. Per CTA a global workspace in the
// math type holds the caches (L2/L1-resident):
//   rings  L x (c+1) x C x (W + 2c): layer l's vertical input, image row q in slot q mod (c+1),
//          channel-major with c zero columns on each side (so taps need no bounds checks);
//          layer 0's ring is x0 = emb[tokens], filled pixel by pixel;
//   hrows  (L-1) x (c + W) x C: row i of the horizontal input of layers 1..L-1, c zero columns
//          on the left;
//   links  L x W x 2C: wl V + bl + bh + cond of row i.
// The zero columns are never written; rows before the image are skipped, not read, so a CTA
// reuses its workspace for its next image without clearing it.
// Row phase (row i, layer by layer): V (2C x W, shared memory) = bv + vconv over the ring, one
// thread per (channel, column) with consecutive columns in consecutive lanes (ring reads are
// coalesced, each weight a warp broadcast); then the link row and v' = gate(V + cond) into the
// next layer's ring. Pixel phase (i, j): per layer the horizontal taps gathered into shared
// memory, u = link + wh taps, z = gate(u), h = (h) + wr z + br; the head; the draw
// (csrc/cuda/draw_block.cuh, the `sample` family's); emb[token] into x0. GEMVs are one warp per
// output row (lanes stride the row, a butterfly sums it: a fixed order, so an image's result does
// not depend on the launch); __syncthreads() orders every phase.
#include <cuda_runtime.h>

#include <cstdint>

#include "cuda/causal_conv.cuh"
#include "cuda/common.cuh"
#include "cuda/draw_block.cuh"
#include "cuda/masked_conv_generate.h"

namespace genfast::cuda {
namespace {

using cc::dtanh;
using cc::ld;
using cc::sigmoid;
using dev::acc_t;
using dev::Group;
using draw_block::Draw;

constexpr int kThreads = 256;
constexpr int kWarps = kThreads / 32;
constexpr int kBlocksPerSM = 4;  // resident images per SM: each CTA owns a workspace
constexpr int64_t kMetaLen = 5;  // meta = [L, A, C, E, k]

struct Net {
  int64_t L, A, C, E, k, c;
  int64_t layer;  // elements of one packed layer
};

template <typename T>
__device__ __forceinline__ acc_t<T> ldw(const T* p) {
  if constexpr (sizeof(T) == 2) {
    return dev::Io16<T>::to_f(__ldg(reinterpret_cast<const unsigned short*>(p)));
  } else {
    return __ldg(p);
  }
}

// f(o, W[o, :] . v) for o < outs, W row-major (outs, ins), skipping the columns i with
// skip(i) (taps a mask does not read: they may hold anything, even NaN). A warp takes kRows rows
// at a time, lanes stride each row (coalesced), a butterfly sums it, f runs on lane 0.
constexpr int kRows = 4;
template <typename T, typename A, class S, class F>
__device__ __forceinline__ void gemv(const T* W, int64_t outs, int64_t ins, const A* v, S&& skip,
                                     F&& f) {
  const int lane = static_cast<int>(threadIdx.x & 31), warp = static_cast<int>(threadIdx.x >> 5);
  for (int64_t o0 = static_cast<int64_t>(warp) * kRows; o0 < outs; o0 += kWarps * kRows) {
    A acc[kRows];
#pragma unroll
    for (int r = 0; r < kRows; ++r) acc[r] = 0;
#pragma unroll 1
    for (int64_t i = lane; i < ins; i += 32) {
      if (skip(i)) continue;
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

// Row i of every layer: V, the link row (unless the row is all given tokens: links feed only the
// horizontal stacks, which feed only the draws of their own row), and v' into the next layer's
// ring.
template <typename T, typename A>
__device__ void row_phase(const Net& net, const T* layers, const T* cond, A* rings, A* links,
                          A* V, int64_t i, int64_t W, bool need_links) {
  const int64_t C = net.C, c = net.c, k = net.k, WP = W + 2 * c, tid = threadIdx.x;
  const int64_t first = c - i > 0 ? c - i : 0;  // rows r with image row i - c + r >= 0
  for (int64_t l = 0; l < net.L; ++l) {
    const T* wv = layers + l * net.layer;
    const T* bv = wv + 2 * C * C * (c + 1) * k;
    const T* bh = bv + 2 * C + 2 * C * C * (c + 1);
    const T* wl = bh + 2 * C;
    const T* bl = wl + 4 * C * C;
    const A* ring = rings + l * (c + 1) * C * WP;
    const int64_t taps = l == 0 ? c : c + 1;  // mask A skips the current row
    for (int64_t e = tid; e < 2 * C * W; e += kThreads) {
      const int64_t co = e / W, j = e % W;
      A acc = ldw(bv + co);
      const T* wrow = wv + co * C * (c + 1) * k;
      for (int64_t ci = 0; ci < C; ++ci) {
        for (int64_t r = first; r < taps; ++r) {
          const int64_t slot = (i - c + r) % (c + 1);
          const A* in = ring + (slot * C + ci) * WP + j;  // column j - c + s at in[s]
          const T* w = wrow + (ci * (c + 1) + r) * k;
          for (int64_t s = 0; s < k; ++s) acc += ldw(w + s) * in[s];
        }
      }
      V[co * W + j] = acc;
    }
    __syncthreads();
    for (int64_t e = tid; need_links && e < 2 * C * W; e += kThreads) {
      const int64_t co = e / W, j = e % W;
      A acc = ldw(bl + co) + ldw(bh + co);
      if (cond != nullptr) acc += ld(cond + l * 2 * C + co);
      const T* wrow = wl + co * 2 * C;
      for (int64_t c2 = 0; c2 < 2 * C; ++c2) acc += ldw(wrow + c2) * V[c2 * W + j];
      links[(l * W + j) * 2 * C + co] = acc;
    }
    if (l + 1 < net.L) {
      A* next = rings + ((l + 1) * (c + 1) + i % (c + 1)) * C * WP;
      for (int64_t e = tid; e < C * W; e += kThreads) {
        const int64_t ci = e / W, j = e % W;
        A f = V[ci * W + j], g = V[(C + ci) * W + j];
        if (cond != nullptr) {
          f += ld(cond + l * 2 * C + ci);
          g += ld(cond + l * 2 * C + C + ci);
        }
        next[ci * WP + c + j] = dtanh(f) * sigmoid(g);
      }
    }
    __syncthreads();  // the next layer reads its ring; V is rewritten
  }
}

template <typename T>
__global__ void __launch_bounds__(kThreads)
    generate_kernel(const T* __restrict__ wts,  // the packed weights
                    const Net net,              //
                    const T* __restrict__ cond,  // (B, L, 2C) or null
                    int64_t* __restrict__ tokens,  // (B, H, W)
                    int64_t B, int64_t H, int64_t W, int64_t start,
                    acc_t<T>* __restrict__ work, int64_t work_len,  // per CTA
                    const int64_t* __restrict__ seed,  // device int64, as the sample kernel's
                    Draw<acc_t<T>> dr) {
  using A = acc_t<T>;
  const int64_t L = net.L, C = net.C, E = net.E, c = net.c, k = net.k, ncls = net.A;
  const int64_t WP = W + 2 * c, tid = threadIdx.x;
  extern __shared__ __align__(16) unsigned char smem[];
  A* V = reinterpret_cast<A*>(smem);  // 2C x W: the row's vertical pre-activations
  A* u = V + 2 * C * W;               // 2C
  A* z = u + 2 * C;                   // C
  A* h = z + C;                       // C: the horizontal stream at the current pixel
  A* hx = h + C;                      // C x (c+1): the horizontal taps, hx[ci * (c+1) + s]
  A* e = hx + C * (c + 1);            // E
  A* lg = e + E;                      // A: logits, then s
  __shared__ alignas(16) unsigned char scratch[Group<kThreads>::kScratchBytes];
  const Group<kThreads> grp{static_cast<int>(threadIdx.x), scratch};
  const T* layers = wts + ncls * C;
  const T* w1 = layers + L * net.layer;
  const T* b1 = w1 + E * C;
  const T* w2 = b1 + E;
  const T* b2 = w2 + ncls * E;
  A* rings = work + static_cast<int64_t>(blockIdx.x) * work_len;
  A* hrows = rings + L * (c + 1) * C * WP;
  A* links = hrows + (L - 1) * (c + W) * C;
  dr.seed = static_cast<uint64_t>(*seed);
  for (int64_t b = blockIdx.x; b < B; b += gridDim.x) {
    const T* cb = cond == nullptr ? nullptr : cond + b * L * 2 * C;
    int64_t* tok_b = tokens + b * H * W;
    for (int64_t i = 0; i < H; ++i) {
      const bool given = (i + 1) * W <= start;
      row_phase(net, layers, cb, rings, links, V, i, W, !given);
      A* x0 = rings + (i % (c + 1)) * C * WP;  // row i of layer 0's input, column j at c + j
      if (given) {  // only the embedding: row i+1's vertical stacks read it
        for (int64_t e = tid; e < C * W; e += kThreads) {
          const int64_t ci = e / W, j = e % W;
          int64_t tok = tok_b[i * W + j];
          tok = tok < 0 ? 0 : tok >= ncls ? ncls - 1 : tok;  // as below
          x0[ci * WP + c + j] = ldw(wts + tok * C + ci);
        }
        __syncthreads();
        continue;
      }
      for (int64_t j = 0; j < W; ++j) {
        const int64_t p = i * W + j;
        for (int64_t l = 0; l < L; ++l) {
          const T* wh = layers + l * net.layer + 2 * C * C * (c + 1) * k + 2 * C;
          const T* wr = wh + 2 * C * C * (c + 1) + 2 * C + 4 * C * C + 2 * C;
          const T* br = wr + C * C;
          const int64_t taps = l == 0 ? c : c + 1;  // mask A skips the current pixel
          const A* hl = l == 0 ? x0 : hrows + (l - 1) * (c + W) * C;
          for (int64_t t = tid; t < C * (c + 1); t += kThreads) {
            const int64_t ci = t / (c + 1), s = t % (c + 1);  // column j - c + s
            hx[t] = s >= taps ? A(0) : l == 0 ? x0[ci * WP + j + s] : hl[(j + s) * C + ci];
          }
          __syncthreads();
          const A* lk = links + (l * W + j) * 2 * C;
          gemv(wh, 2 * C, C * (c + 1), hx, [&](int64_t t) { return t % (c + 1) >= taps; },
               [&](int64_t o, A acc) { u[o] = acc + lk[o]; });
          __syncthreads();
          for (int64_t o = tid; o < C; o += kThreads) z[o] = dtanh(u[o]) * sigmoid(u[C + o]);
          __syncthreads();
          A* hn = hrows + l * (c + W) * C + c * C;  // layer l+1's row, column j at j * C
          gemv(wr, C, C, z, [](int64_t) { return false; }, [&](int64_t o, A acc) {
            const A out = acc + ldw(br + o) + (l > 0 ? h[o] : A(0));
            h[o] = out;  // read and written by the same thread
            if (l + 1 < L) hn[j * C + o] = out;
          });
          __syncthreads();
        }
        int64_t tok;
        if (p >= start) {
          gemv(w1, E, C, h, [](int64_t) { return false; }, [&](int64_t o, A acc) {
            acc += ldw(b1 + o);
            e[o] = acc > A(0) ? acc : A(0);
          });
          __syncthreads();
          gemv(w2, ncls, E, e, [](int64_t) { return false; },
               [&](int64_t o, A acc) { lg[o] = acc + ldw(b2 + o); });
          __syncthreads();
          const uint64_t row = static_cast<uint64_t>(p) * static_cast<uint64_t>(B) +
                               static_cast<uint64_t>(b);
          tok = draw_block::draw(grp, lg, ncls, dr, row);
          if (tid == 0) tok_b[p] = tok;
        } else {
          // Python checks given tokens on the CPU only: clamp rather than read out of bounds.
          tok = tok_b[p];
          tok = tok < 0 ? 0 : tok >= ncls ? ncls - 1 : tok;
        }
        for (int64_t ci = tid; ci < C; ci += kThreads)
          x0[ci * WP + c + j] = ldw(wts + tok * C + ci);
        __syncthreads();  // later pixels and row i+1 read x0; lg and h are rewritten
      }
    }
  }
}

constexpr int kInvalid = static_cast<int>(cudaErrorInvalidValue);

}  // namespace

int pixelcnn_generate(const void* weights, const int64_t* meta, int64_t meta_len,
                      const void* cond, int64_t* tokens, int64_t B, int64_t H, int64_t W,
                      int64_t start, const int64_t* seed, double inv_temperature, int64_t top_k,
                      double top_p, int dtype, void* stream) {
  // meta is a host table (the CPU twin reads the same tensor): the sizes become launch
  // arguments, so the kernel needs no device copy and the call no synchronisation.
  if (meta == nullptr || meta_len != kMetaLen || B < 0 || H < 0 || W < 0) return kInvalid;
  Net net{meta[0], meta[1], meta[2], meta[3], meta[4], meta[4] / 2, 0};
  if (net.L < 1 || net.A < 2 || net.C < 1 || net.E < 1 || net.k < 1 || net.k % 2 == 0)
    return kInvalid;
  if (start < 0 || start > H * W) return kInvalid;
  if (B == 0 || start == H * W) return static_cast<int>(cudaSuccess);
  if (weights == nullptr || tokens == nullptr || seed == nullptr) return kInvalid;
  if (!(inv_temperature > 0)) return kInvalid;
  const int64_t C = net.C, c = net.c, k = net.k;
  net.layer = 2 * C * C * (c + 1) * k + 2 * C + 2 * C * C * (c + 1) + 2 * C + 4 * C * C + 2 * C +
              C * C + C;
  const int64_t work_len = net.L * (c + 1) * C * (W + 2 * c) + (net.L - 1) * (c + W) * C +
                           net.L * W * 2 * C;
  const auto st = static_cast<cudaStream_t>(stream);
  int device = 0, sms = 0;
  cudaError_t rc = cudaGetDevice(&device);
  if (rc == cudaSuccess) rc = cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device);
  if (rc != cudaSuccess) return static_cast<int>(rc);
  const int64_t cap = static_cast<int64_t>(sms > 0 ? sms : 1) * kBlocksPerSM;
  const int64_t blocks = B < cap ? B : cap;
  return with_dtype(dtype, [&](auto tag) {
    using Ty = typename decltype(tag)::type;
    using A = acc_t<Ty>;
    const Draw<A> dr = draw_block::make_draw<A>(inv_temperature, top_k, top_p, net.A);
    const int64_t vec = 2 * C * W + 2 * C + C + C + C * (c + 1) + net.E + net.A;
    const int64_t bytes = vec * static_cast<int64_t>(sizeof(A));
    if (bytes > 48 * 1024) {
      // Past the default limit: opt in to the device's maximum (227 KB on sm_90), or fail.
      const int want = static_cast<int>(bytes < INT32_MAX ? bytes : INT32_MAX);
      const cudaError_t e = cudaFuncSetAttribute(
          generate_kernel<Ty>, cudaFuncAttributeMaxDynamicSharedMemorySize, want);
      if (e != cudaSuccess) return static_cast<int>(e);
    }
    // The zero columns of the caches must start zero; the rest is written before it is read.
    const size_t work_bytes = static_cast<size_t>(blocks * work_len) * sizeof(A);
    void* work = nullptr;
    cudaError_t e = cudaMallocAsync(&work, work_bytes, st);
    if (e != cudaSuccess) return static_cast<int>(e);
    e = cudaMemsetAsync(work, 0, work_bytes, st);
    if (e == cudaSuccess) {
      generate_kernel<Ty><<<static_cast<unsigned>(blocks), kThreads, static_cast<size_t>(bytes),
                            st>>>(static_cast<const Ty*>(weights), net,
                                  static_cast<const Ty*>(cond), tokens, B, H, W, start,
                                  static_cast<A*>(work), work_len, seed, dr);
      e = cudaGetLastError();
    }
    const cudaError_t f = cudaFreeAsync(work, st);
    return static_cast<int>(e != cudaSuccess ? e : f);
  });
}

}  // namespace genfast::cuda
