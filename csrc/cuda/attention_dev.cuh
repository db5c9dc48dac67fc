// Device code shared by the fused-attention CUDA kernels (csrc/cuda/attention.cu and
// attention_bwd2.cu launch it; contract: csrc/cpu/attention.h, csrc/cuda/attention.h).
//
// Every kernel is a tile loop in shared memory: a CTA owns a block of query rows (forward, dq,
// the double backward's row statistics and its query-side gradients) or of keys (dk / dv and the
// double backward's key-side gradients) and walks the other side tile by tile. The (bq x bk)
// pair values (S, P, dS, ...) are formed by lane groups, one group per row (or key) of the
// CTA's own side; the forward keeps its softmax state and output in those lanes' registers, the
// backward kernels accumulate the pair-matrix x tile products in shared memory (accumulate()).
// Each output value is one thread's fixed-order sum, so results do not depend on the GPU or on
// the grid size, and no kernel uses atomics. No tensor cores yet: SIMT multiply-adds in the math
// type for every dtype. Tiles hold the math type (float, or double for float64); tile sizes are
// chosen per kernel and head dims so the whole working set fits the default 48 KB of shared
// memory (plan_tiles). The primitives below (thread / CTA index, barrier, shared memory) are the
// only GPU-specific calls: tests/cuda_emu/attention_emu.cpp defines them with host threads and
// runs these bodies on the CPU.
#pragma once
#include <cstdint>

#include "cuda/common.cuh"

#ifndef GENFAST_ATTENTION_EMU
namespace genfast::cuda::attn_dev {
constexpr int kThreads = 128;
__device__ __forceinline__ int tid() { return static_cast<int>(threadIdx.x); }
__device__ __forceinline__ int64_t cta() { return blockIdx.x; }
__device__ __forceinline__ int64_t ncta() { return gridDim.x; }
__device__ __forceinline__ void block_sync() { __syncthreads(); }
__device__ __forceinline__ unsigned char* smem() {
  extern __shared__ __align__(16) unsigned char attn_smem[];
  return attn_smem;
}
}  // namespace genfast::cuda::attn_dev
#endif  // else the host emulation harness defines these (a test of the index logic)

namespace genfast::cuda::attn_dev {

using dev::acc_t;
using dev::dexp;
using dev::dlog;
using dev::Io;
using dev::neg_inf;

constexpr int64_t kSmemBudget = 48 * 1024;  // dynamic shared memory without an opt-in

// Kernel kinds, for the tile plan.
enum Kind { kFwd = 0, kDkDv, kDq, kStats, kGradQ, kGradK };

template <typename X>
__host__ __device__ inline X lo(X a, X b) {
  return a < b ? a : b;
}
template <typename X>
__host__ __device__ inline X hi(X a, X b) {
  return a < b ? b : a;
}
// Tile row stride: odd, so threads reading the same column of consecutive key rows hit
// different shared-memory banks.
__host__ __device__ inline int64_t pad(int64_t d) { return d | 1; }

// Elements (of the math type) of a kernel's shared-memory working set.
__host__ __device__ inline int64_t tile_elems(int kind, int64_t bq, int64_t bk, int64_t Dk,
                                              int64_t Dv) {
  const int64_t pk = pad(Dk), pv = pad(Dv), pp = bq * bk;
  switch (kind) {
    case kFwd: return bq * pk + bk * (pk + pv) + pp + 2 * kThreads;
    case kDkDv: return 2 * bk * (pk + pv) + bq * (pk + pv) + 2 * pp + 2 * bq;
    case kDq: return bq * (2 * pk + pv) + bk * (pk + pv) + pp + 2 * bq;
    case kStats: return bq * (2 * pk + pv) + 2 * bk * (pk + pv) + 3 * pp + 5 * bq;
    case kGradQ: return bq * (3 * pk + 2 * pv) + 2 * bk * (pk + pv) + 4 * pp + 4 * bq;
    default: return 3 * bk * (pk + pv) + bq * (2 * pk + pv) + 3 * pp + 4 * bq;  // kGradK
  }
}

struct Tiles {
  int bq, bk;     // query rows and keys per tile
  int64_t bytes;  // dynamic shared memory of the launch
};

// Largest tiles (from 16 queries x 64 keys for the forward, 16 x 32 otherwise) whose working set
// fits the budget: halve the larger side first. Head dims <= 256 always fit (1 x 1 needs at most
// 18 rows of 257 doubles). `rows` (the forward's N) caps bq at the power of two that holds them:
// a decode step's one query row then gets every lane of its CTA.
__host__ __device__ inline Tiles plan_tiles(int kind, int64_t Dk, int64_t Dv, int64_t ea,
                                            int64_t rows = 16) {
  int bq = 16, bk = kind == kFwd ? 64 : 32;
  while (bq > 1 && bq / 2 >= rows) bq /= 2;
  while (tile_elems(kind, bq, bk, Dk, Dv) * ea > kSmemBudget && (bq > 1 || bk > 1)) {
    if (bk >= bq && bk > 1) bk /= 2;
    else bq /= 2;
  }
  return {bq, bk, tile_elems(kind, bq, bk, Dk, Dv) * ea};
}

// Key splits of the forward: short query blocks against long key ranges (KV-cache decode) do
// not fill the GPU with one CTA per (batch, head, query block), so the keys are cut into
// `nsplit` chunks of `chunk` keys (a multiple of bk), each a CTA writing a partial (m, l, acc)
// that a combine kernel merges (flash-decoding). The split depends on the shape only, so results
// do not depend on the GPU.
struct Split {
  int64_t nsplit, chunk;
};
constexpr int64_t kDecodeRows = 16;   // queries per (batch, head) that count as decode
constexpr int64_t kTargetCtas = 256;  // about two waves on the largest GPUs
__host__ __device__ inline Split plan_split(int64_t BH, int64_t N, int64_t M, int bq, int bk) {
  const int64_t ktiles = (M + bk - 1) / bk, ctas = BH * ((N + bq - 1) / bq);
  if (N > kDecodeRows || ktiles < 4 || ctas >= kTargetCtas || BH == 0) return {1, hi<int64_t>(M, 1)};
  const int64_t want = lo<int64_t>(ktiles / 2, (kTargetCtas + ctas - 1) / ctas);
  const int64_t chunk = (ktiles + want - 1) / want * bk;
  return {(M + chunk - 1) / chunk, chunk};
}

// Everything a kernel reads; each kernel uses its part. Element strides (batch, head, row) of
// q, k, v; every other buffer is contiguous (B, Hh, rows, D), or (B, Hh, rows) for row values.
struct Args {
  const void *q, *k, *v, *o, *dout, *gq, *gk, *gv;
  void *out, *lse;                  // forward outputs (lse is an input of the backward kernels)
  void *dq, *dk, *dv;               // first backward
  void *Gq, *Gk, *Gv, *Gdo;         // double backward
  void *ws_m, *ws_l, *ws_acc;       // forward key-split partials (math type)
  void *ws_D, *ws_r, *ws_w;         // row statistics (math type): D, and r, w for bwd2
  int64_t Hh, BH, N, M, Sk, Dk, Dv;
  int64_t sq_b, sq_h, sq_n, sk_b, sk_h, sk_n, sv_b, sv_h, sv_n;
  int64_t pool_h, pool_w;           // 0: no pooling
  bool causal;
  float scale_f;                    // scale in the math type (float clamped to FLT_MAX)
  double scale_d;
  int bq, bk;
  int64_t nsplit, chunk;            // forward key split (1, M) when not split
};

template <typename A>
__device__ __forceinline__ A scale_of(const Args& a) {
  if constexpr (sizeof(A) == sizeof(float)) return a.scale_f;
  else return a.scale_d;
}

// First of the 4 unpooled rows of pooled key j; the window is rows r, r+1, r+W, r+W+1, in the
// order (0,0), (0,1), (1,0), (1,1).
__host__ __device__ inline int64_t pooled_row(int64_t j, int64_t pool_w) {
  const int64_t wp = pool_w / 2;
  return 2 * (j / wp) * pool_w + 2 * (j % wp);
}

template <typename T>
__device__ __forceinline__ acc_t<T> ld(const T* p) {
  return static_cast<acc_t<T>>(Io<T>::load1(p));
}
template <typename T, typename A>
__device__ __forceinline__ void st(T* p, A v) {
  Io<T>::store1(p, v);
}

// This thread's elements e = tid(), tid() + kThreads, ... of a tile with D columns, walked as
// (row, column) pairs: one division when it starts, none per step (the loaders run once per
// element of every tile; a 64-bit division per element would cost more than the loads).
struct RowCol {
  int r, c, sr, sc, D;
  __device__ __forceinline__ explicit RowCol(int64_t cols)
      : r(tid() / static_cast<int>(cols)), c(tid() % static_cast<int>(cols)),
        sr(kThreads / static_cast<int>(cols)), sc(kThreads % static_cast<int>(cols)),
        D(static_cast<int>(cols)) {}
  __device__ __forceinline__ void next() {
    r += sr, c += sc;
    if (c >= D) c -= D, ++r;
  }
};

// Rows [r0, r0 + n) of a matrix with row stride rs into a tile of `cap` rows (row stride ldt);
// rows past n, and every row of a null matrix, read as zeros.
template <typename T, typename A>
__device__ void load_rows(A* dst, int cap, int64_t ldt, const T* src, int64_t rs, int64_t r0,
                          int n, int64_t D) {
  for (RowCol p(D); p.r < cap; p.next())
    dst[p.r * ldt + p.c] = (src != nullptr && p.r < n) ? ld(src + (r0 + p.r) * rs + p.c) : A(0);
}

// Keys [j0, j0 + n) into a tile; pooled (pool_w > 0): each key is the per-channel max of its
// 2x2 window (the first of equal values; the choice matters only to the backward's routing).
template <typename T, typename A>
__device__ void load_keys(A* dst, int cap, int64_t ldt, const T* src, int64_t rs, int64_t j0,
                          int n, int64_t D, int64_t pool_w) {
  int64_t row = -1;  // unpooled row of the window of key p.r (computed when p.r changes)
  int at = -1;
  for (RowCol p(D); p.r < cap; p.next()) {
    A val = 0;
    if (src != nullptr && p.r < n) {
      if (pool_w > 0) {
        if (at != p.r) row = pooled_row(j0 + p.r, pool_w), at = p.r;
        const T* q = src + row * rs + p.c;
        val = ld(q);
        const int64_t off[3] = {rs, pool_w * rs, (pool_w + 1) * rs};
        for (int t = 0; t < 3; ++t) {
          const A x = ld(q + off[t]);
          val = x > val ? x : val;
        }
      } else {
        val = ld(src + (j0 + p.r) * rs + p.c);
      }
    }
    dst[p.r * ldt + p.c] = val;
  }
}

template <typename A>
__device__ __forceinline__ A dot(const A* x, const A* y, int64_t n) {
  A s = 0;
  for (int64_t d = 0; d < n; ++d) s += x[d] * y[d];
  return s;
}

// Lane layout of the backward kernels' pair step: a group of G = kThreads / nx lanes per x (a
// query row or a key of the tile), lane c taking the partners y = c, c + G, ... (< ny). A lane
// reads x's element once per d for all its partners. Tiles have bq * bk <= 16 * 32 pairs.
constexpr int kPairU = (16 * 32 + kThreads - 1) / kThreads;
struct Lanes {
  int x, c, G;
};
__device__ __forceinline__ Lanes lanes_of(int nx) {
  const int G = kThreads / nx;
  return {tid() / G, tid() % G, G};
}

// out[u] = x . Y[c + G u] for this lane's partners (0 past ny). Every sum runs over d in order
// from 0, the order of dot(x, y) and of the forward's scores.
template <typename A>
__device__ __forceinline__ void lane_dots(A (&out)[kPairU], const A* x, const A* Y, int64_t ld,
                                          const Lanes& L, int ny, int64_t D) {
#pragma unroll
  for (int u = 0; u < kPairU; ++u) out[u] = 0;
  for (int64_t d = 0; d < D; ++d) {
    const A xv = x[d];
#pragma unroll
    for (int u = 0; u < kPairU; ++u) {
      const int y = L.c + L.G * u;
      if (y < ny) out[u] += xv * Y[y * ld + d];
    }
  }
}

// out[x][d] += f * sum_{y < ny} sum_t C_t[x cx + y cy] R_t[y][d] for x < nx, d < D (the
// backward kernels' products of a pair matrix with a tile). A thread owns 2 x 4 outputs: rows
// x0, x0 + 1 and columns d0 + u ceil(D/4), so a warp reads consecutive columns (no bank
// conflicts) and 6 shared loads feed 8 multiply-adds per term.
template <int NT, typename A>
__device__ void accumulate(A* out, int64_t ldo, int nx, int64_t D, int ny, A f,
                           const A* const (&C)[NT], int64_t cx, int64_t cy,
                           const A* const (&R)[NT], int64_t ldr) {
  const int64_t nd = (D + 3) / 4, items = (nx + 1) / 2 * nd;
  for (int64_t e = tid(); e < items; e += kThreads) {
    const int64_t x0 = 2 * (e / nd), d0 = e % nd;
    const bool two = x0 + 1 < nx;
    A acc[2][4] = {};
    for (int y = 0; y < ny; ++y) {
#pragma unroll
      for (int t = 0; t < NT; ++t) {
        const A c0 = C[t][x0 * cx + y * cy], c1 = two ? C[t][(x0 + 1) * cx + y * cy] : A(0);
#pragma unroll
        for (int u = 0; u < 4; ++u) {
          const int64_t d = d0 + nd * u;
          const A r = d < D ? R[t][y * ldr + d] : A(0);
          acc[0][u] += c0 * r, acc[1][u] += c1 * r;
        }
      }
    }
#pragma unroll
    for (int u = 0; u < 4; ++u) {
      const int64_t d = d0 + nd * u;
      if (d >= D) continue;
      out[x0 * ldo + d] += f * acc[0][u];
      if (two) out[(x0 + 1) * ldo + d] += f * acc[1][u];
    }
  }
}

template <typename A>
__device__ __forceinline__ void fill(A* p, int64_t n, A v) {
  for (int64_t e = tid(); e < n; e += kThreads) p[e] = v;
}

// Causal horizon: query i sees key j iff j <= i + (M - N) (bottom-right aligned).
__device__ __forceinline__ bool visible(const Args& a, int64_t i, int64_t j) {
  return !a.causal || j <= i + (a.M - a.N);
}

}  // namespace genfast::cuda::attn_dev
