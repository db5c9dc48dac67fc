// Device code of the persistent LSTM kernels (csrc/cuda/lstm.cu launches them; contract:
// genfast/ops/lstm.py, csrc/cuda/lstm.h). Include only from lstm.cu.
//
// One cooperative grid runs the whole recurrence. CTA c owns hidden units [c*U, c*U + U) (all 4
// gate rows of each: the pointwise cell of a unit needs its 4 pre-activations) and, for the
// projection, output columns [c*V, c*V + V) of P. Its weight slices sit in shared memory for
// all steps, in the data dtype (half the bytes for float16 / bfloat16):
//   forward          W1 = w_hh rows of its units (4U x P);  W2 = w_hr rows of its columns (V x H)
//   backward, no w_hr W1 = w_hh columns of its units, transposed (U x 4H)
//   backward, w_hr    W1 = w_hr columns of its units, transposed (U x P)  (dht = dh w_hr)
//                     W2 = w_hh columns of its P-block, transposed (V x 4H)  (dh = dG w_hh)
// Every matrix product is the same block GEMV: out[r][b] = sum_k W[r][k] X[b][k], with X = the
// exchanged vectors (h, ht, dh or dG of every sequence) staged from global memory into shared
// memory S rows at a time. Exchange goes through outputs the contract writes anyway (y[t] holds
// h, dgx[t] holds dG), so a step needs one grid barrier; the projection adds one more (ht, then
// dh, through a workspace). Reading h from y works because a sequence's active steps are
// contiguous in step order: the h before an active step is y of the previous step, or h0.
// A warp computes kR rows x kNB sequences: lanes split k in quads, then a butterfly sums each
// value. Each value's summation order depends on K only, so results do not depend on the GPU.
#pragma once
#include <cstdint>

#include "cuda/causal_conv.cuh"
#include "cuda/common.cuh"

#ifndef GENFAST_LSTM_EMU
#include <cooperative_groups.h>
namespace genfast::cuda::lstm_dev {
constexpr int kThreads = 256;
__device__ __forceinline__ int tid() { return static_cast<int>(threadIdx.x); }
__device__ __forceinline__ int cta() { return static_cast<int>(blockIdx.x); }
__device__ __forceinline__ void block_sync() { __syncthreads(); }
// A grid-scope barrier with acquire/release semantics: plain loads after it see every CTA's
// stores before it (the launch must be cooperative).
__device__ __forceinline__ void grid_sync() { cooperative_groups::this_grid().sync(); }
template <typename A>
__device__ __forceinline__ A warp_xor(A v, int m) {
  return __shfl_xor_sync(0xffffffffu, v, m);
}
__device__ __forceinline__ unsigned char* smem() {
  extern __shared__ __align__(16) unsigned char lstm_smem[];
  return lstm_smem;
}
}  // namespace genfast::cuda::lstm_dev
#endif  // else the host emulation harness defines these (a test of the index logic)

namespace genfast::cuda::lstm_dev {

using cc::dtanh;
using cc::ld;
using cc::sigmoid;
using cc::st;
using dev::acc_t;

constexpr int kWarps = kThreads / 32;
constexpr int kR = 2;   // weight rows per warp item
constexpr int kNB = 4;  // sequences per warp item; S (staged rows) is a multiple of it

__host__ __device__ inline int64_t align16(int64_t v) { return (v + 15) & ~int64_t{15}; }
__host__ __device__ inline int64_t round_up(int64_t v, int64_t m) { return (v + m - 1) / m * m; }

// The launch plan: ownership and the shared-memory layout (byte offsets), computed on the host
// by plan_layout and passed by value, so host sizing and device carving cannot disagree.
struct Plan {
  int B, H, P, U, V, S;  // S: sequences staged per GEMV chunk
  int rows1, K1, rows2, K2, Kx, rows_out, n_st2;
  int64_t w1, w2, x, out, st1, st2, len, total;
};

// es: bytes of the data dtype, ea: of the work dtype. Sizes in int64 first: a caller compares
// total with the device's limit before anything is narrowed.
__host__ __device__ inline void plan_layout(Plan& p, bool proj, bool bwd, int es, int ea) {
  const int64_t U = p.U, V = p.V, H4 = 4 * int64_t{p.H};
  int64_t rows1, K1, rows2 = 0, K2 = 0, n2 = 0;
  if (!bwd) {
    rows1 = 4 * U, K1 = round_up(p.P, 4);
    if (proj) rows2 = round_up(V, kR), K2 = round_up(p.H, 4);
  } else if (!proj) {
    rows1 = round_up(U, kR), K1 = H4, n2 = U;
  } else {
    rows1 = round_up(U, kR), K1 = round_up(p.P, 4), rows2 = round_up(V, kR), K2 = H4, n2 = V;
  }
  const int64_t Kx = K1 > K2 ? K1 : K2, rows_out = rows1 > rows2 ? rows1 : rows2;
  p.rows1 = static_cast<int>(rows1), p.K1 = static_cast<int>(K1);
  p.rows2 = static_cast<int>(rows2), p.K2 = static_cast<int>(K2);
  p.Kx = static_cast<int>(Kx), p.rows_out = static_cast<int>(rows_out);
  p.n_st2 = static_cast<int>(n2);
  p.w1 = 0;
  p.w2 = align16(rows1 * K1 * es);
  p.x = align16(p.w2 + rows2 * K2 * es);
  p.out = align16(p.x + int64_t{p.S} * Kx * ea);
  p.st1 = align16(p.out + rows_out * p.B * ea);  // fwd: c; bwd: dc (U x B)
  p.st2 = align16(p.st1 + U * p.B * ea);         // bwd: dh (U or V x B)
  p.len = align16(p.st2 + n2 * p.B * ea);
  p.total = align16(p.len + int64_t{p.B} * 4);
}

__device__ __forceinline__ int clamp_count(int64_t v, int64_t hi) {
  return static_cast<int>(v < 0 ? 0 : v > hi ? hi : v);
}

// Stage rows b0 .. b0+S-1 of the exchanged vectors: X[bb][k] = row(b0+bb)[k] for k < K, zero for
// k in [K, K4) and for rows past nb or without a source (row() == nullptr: an inactive step). A
// thread moves quads: one vector load where the source row is aligned (common.cuh's load_quad).
template <typename A, typename Src, class RowOf>
__device__ __forceinline__ void stage(A* X, int S, int nb, int K, int K4, int b0, RowOf&& row) {
  const int nq = K4 / 4;
  for (int e = tid(); e < S * nq; e += kThreads) {
    const int bb = e / nq, q = e - bb * nq;
    const Src* r = bb < nb ? row(b0 + bb) : nullptr;
    A v[4] = {A(0), A(0), A(0), A(0)};
    if (r != nullptr) dev::load_quad(r, q, K, dev::vec_ok(r), A(0), v);
    dev::Io<A>::store4(X + static_cast<int64_t>(bb) * K4 + 4 * q, v);
  }
}

// out[r * B + b0 + n] = sum_k W[r][k] X[n][k] for r < rows (a multiple of kR), n < nb; W and X
// rows are K long (a multiple of 4, zero-padded). Warp-uniform item loop: every lane reaches the
// butterflies.
template <typename Ty, typename A>
__device__ __forceinline__ void gemv(const Ty* W, int rows, int K, const A* X, int nb, A* out,
                                     int B, int b0) {
  const int lane = tid() & 31, warp = tid() >> 5;
  const int groups = rows / kR, quads = (nb + kNB - 1) / kNB;
  for (int item = warp; item < groups * quads; item += kWarps) {
    const int g = item / quads, q = item - g * quads;
    const Ty* w = W + static_cast<int64_t>(g) * kR * K;
    const A* x = X + static_cast<int64_t>(q) * kNB * K;
    A acc[kR][kNB];
#pragma unroll
    for (int r = 0; r < kR; ++r)
#pragma unroll
      for (int n = 0; n < kNB; ++n) acc[r][n] = A(0);
    for (int k = lane * 4; k < K; k += 128) {
      A wv[kR][4], xv[kNB][4];
#pragma unroll
      for (int r = 0; r < kR; ++r) dev::Io<Ty>::load4(w + static_cast<int64_t>(r) * K + k, wv[r]);
#pragma unroll
      for (int n = 0; n < kNB; ++n) dev::Io<A>::load4(x + static_cast<int64_t>(n) * K + k, xv[n]);
#pragma unroll
      for (int r = 0; r < kR; ++r)
#pragma unroll
        for (int n = 0; n < kNB; ++n)
#pragma unroll
          for (int j = 0; j < 4; ++j) acc[r][n] += wv[r][j] * xv[n][j];
    }
#pragma unroll
    for (int r = 0; r < kR; ++r)
#pragma unroll
      for (int n = 0; n < kNB; ++n) {
        A v = acc[r][n];
#pragma unroll
        for (int off = 16; off > 0; off >>= 1) v += warp_xor(v, off);
        if (lane == 0 && q * kNB + n < nb) out[(g * kR + r) * B + b0 + q * kNB + n] = v;
      }
  }
}

// Copies a weight slice into shared memory: W[r][k] = src(r, k) (a global pointer or nullptr for
// the zero padding), walking e so that consecutive threads read consecutive global addresses:
// along k for row slices, along r for transposed (column) slices.
template <typename Ty, class At>
__device__ __forceinline__ void load_slice(Ty* W, int rows, int K, bool transposed, At&& at) {
  using A = acc_t<Ty>;
  for (int e = tid(); e < rows * K; e += kThreads) {
    int r, k;
    if (transposed) k = e / rows, r = e - k * rows;
    else r = e / K, k = e - r * K;
    const Ty* p = at(r, k);
    st(W + static_cast<int64_t>(r) * K + k, p != nullptr ? ld(p) : A(0));
  }
}

// Step-order helpers: the step before t in the forward's order, and whether t is a sequence's
// first / last active step (len = its clamped length, t < len).
__device__ __forceinline__ int64_t fwd_prev(int64_t t, bool reverse) {
  return reverse ? t + 1 : t - 1;
}
__device__ __forceinline__ bool first_step(int64_t t, int len, bool reverse) {
  return reverse ? t == len - 1 : t == 0;
}
__device__ __forceinline__ bool last_step(int64_t t, int len, bool reverse) {
  return reverse ? t == 0 : t == len - 1;
}

}  // namespace genfast::cuda::lstm_dev

#include "cuda/lstm_persist_body.cuh"
