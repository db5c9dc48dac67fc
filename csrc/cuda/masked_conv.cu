// CUDA kernels of the region convolution: fwd and bwd_input (bwd_weight:
// masked_conv_weight.cu). Contract: genfast/ops/masked_conv.py; declarations and index
// formulas: csrc/cuda/masked_conv.h; the tap prefix and the tiles: csrc/cuda/masked_conv.cuh.
//
// fwd (M = Cout, N = output pixels of the batch, K = Cin x read taps) and bwd_input (M = Cin,
// N = input pixels, K = Cout x read taps, the gather inverting the stride) are one implicit-GEMM
// kernel over an Op that says how to read each operand: weights staged with consecutive threads
// on consecutive taps, image columns gathered with consecutive threads on consecutive pixels, so
// global loads coalesce. Each output is one thread's sum in ascending K: deterministic.
#include <cuda_runtime.h>

#include <cstdint>

#include "cuda/common.cuh"
#include "cuda/masked_conv.cuh"
#include "cuda/masked_conv.h"

namespace genfast::cuda {
namespace {

using dev::acc_t;
using namespace mc;  // NOLINT: the kernels' shared vocabulary (Geo, Smem, mma, ld, st, ...)

// ---- fwd: M = Cout, N = B*Ho*Wo output pixels, K = Cin * nt -------------------------------
template <typename T>
struct FwdOp {
  const T* x;  // (B, Cin, H, W)
  const T* w;  // (Cout, Cin, kh, kw)
  const T* b;  // (Cout) or null
  T* y;        // (B, Cout, Ho, Wo)
  Geo g;
  bool accumulate;

  GENFAST_MC_HD int64_t M() const { return g.Cout; }
  GENFAST_MC_HD int64_t N() const { return g.B * g.Ho * g.Wo; }
  GENFAST_MC_HD int64_t K() const { return g.Cin * g.nt; }

  struct Col {  // one output pixel: its image's base and its window's top-left corner
    bool in;
    int64_t base, ih0, iw0;
  };
  GENFAST_MC_HD Col column(int64_t p) const {
    if (p >= N()) return {false, 0, 0, 0};
    const int64_t HWo = g.Ho * g.Wo, n = qdiv(p, HWo), pix = p - n * HWo;
    const int64_t i = qdiv(pix, g.Wo), j = pix - i * g.Wo;
    return {true, n * g.Cin * g.H * g.W, i * g.sh - g.pt, j * g.sw - g.pl};
  }
  GENFAST_MC_HD acc_t<T> gather(const Col& c, int64_t k) const {
    if (!c.in || k >= K()) return acc_t<T>(0);
    const int64_t ci = qdiv(k, g.nt);
    const int t = static_cast<int>(k - ci * g.nt), r = t / g.kw, s = t - r * g.kw;
    const int64_t ih = c.ih0 + r, iw = c.iw0 + s;
    if (ih < 0 || ih >= g.H || iw < 0 || iw >= g.W) return acc_t<T>(0);
    return ld(x + c.base + (ci * g.H + ih) * g.W + iw);
  }
  struct Row {  // one reduction index: (input channel, read tap)
    bool in;
    int64_t ci;
    int t;
  };
  GENFAST_MC_HD Row row(int64_t k) const {
    if (k >= K()) return {false, 0, 0};
    const int64_t ci = qdiv(k, g.nt);
    return {true, ci, static_cast<int>(k - ci * g.nt)};
  }
  GENFAST_MC_HD acc_t<T> weight(const Row& r, int64_t co) const {
    return r.in && co < g.Cout ? g.weight(w, co, r.ci, r.t) : acc_t<T>(0);
  }
  GENFAST_MC_HD void store(int64_t co, int64_t p, acc_t<T> v) const {
    const int64_t HWo = g.Ho * g.Wo, n = qdiv(p, HWo);
    T* at = y + (n * g.Cout + co) * HWo + (p - n * HWo);
    if (b != nullptr) v += ld(b + co);
    if (accumulate) v += ld(at);
    st(at, v);
  }
};

// ---- bwd_input: M = Cin, N = B*H*W input pixels, K = Cout * nt -----------------------------
// dx[n,ci,p,q] gathers g[n,co,i,j] where i*sh = p + pt - r and j*sw = q + pl - s.
template <typename T>
struct BwdInputOp {
  const T* gy;  // (B, Cout, Ho, Wo)
  const T* w;   // (Cout, Cin, kh, kw)
  T* dx;        // (B, Cin, H, W)
  Geo g;

  GENFAST_MC_HD int64_t M() const { return g.Cin; }
  GENFAST_MC_HD int64_t N() const { return g.B * g.H * g.W; }
  GENFAST_MC_HD int64_t K() const { return g.Cout * g.nt; }

  struct Col {  // one input pixel: its image's base in g, p + pt and q + pl
    bool in;
    int64_t base, ph, qw;
  };
  GENFAST_MC_HD Col column(int64_t p) const {
    if (p >= N()) return {false, 0, 0, 0};
    const int64_t HW = g.H * g.W, n = qdiv(p, HW), pix = p - n * HW;
    const int64_t i = qdiv(pix, g.W), j = pix - i * g.W;
    return {true, n * g.Cout * g.Ho * g.Wo, i + g.pt, j + g.pl};
  }
  GENFAST_MC_HD acc_t<T> gather(const Col& c, int64_t k) const {
    if (!c.in || k >= K()) return acc_t<T>(0);
    const int64_t co = qdiv(k, g.nt);
    const int t = static_cast<int>(k - co * g.nt), r = t / g.kw, s = t - r * g.kw;
    const int64_t ii = c.ph - r, jj = c.qw - s;
    if (ii < 0 || jj < 0) return acc_t<T>(0);
    const int64_t i = qdiv(ii, g.sh), j = qdiv(jj, g.sw);
    if (i * g.sh != ii || j * g.sw != jj || i >= g.Ho || j >= g.Wo) return acc_t<T>(0);
    return ld(gy + c.base + (co * g.Ho + i) * g.Wo + j);
  }
  struct Row {  // one reduction index: (output channel, read tap)
    bool in;
    int64_t co;
    int t;
  };
  GENFAST_MC_HD Row row(int64_t k) const {
    if (k >= K()) return {false, 0, 0};
    const int64_t co = qdiv(k, g.nt);
    return {true, co, static_cast<int>(k - co * g.nt)};
  }
  GENFAST_MC_HD acc_t<T> weight(const Row& r, int64_t ci) const {
    return r.in && ci < g.Cin ? g.weight(w, r.co, ci, r.t) : acc_t<T>(0);
  }
  GENFAST_MC_HD void store(int64_t ci, int64_t p, acc_t<T> v) const {
    const int64_t HW = g.H * g.W, n = qdiv(p, HW);
    st(dx + (n * g.Cin + ci) * HW + (p - n * HW), v);
  }
};

// The per-thread phases of the tile loop (a host emulation runs them for every tid between
// the points where the kernels synchronise).
// Stage the K step at k0: weights a[k][m] (consecutive threads on consecutive taps) and the
// gathered columns b[k][n] (consecutive threads on consecutive pixels).
template <int TM, class Op, typename A>
GENFAST_MC_HD void gemm_stage(const Op& op, Smem<A, TM>& s, int tid,
                              const typename Op::Col& col, int64_t m0, int64_t k0) {
  constexpr int kN = 16 * TM;  // tile columns
  const int tm = tid / 16;
  const auto r = op.row(k0 + tid % BK);
#pragma unroll
  for (int u = 0; u < TM; ++u) s.a[tid % BK][tm + 16 * u] = op.weight(r, m0 + tm + 16 * u);
#pragma unroll
  for (int u = 0; u < TM; ++u) {
    const int kk = tid / kN + (kThreads / kN) * u;
    s.b[kk][tid % kN] = op.gather(col, k0 + kk);
  }
}

template <int TM, class Op, typename A>
GENFAST_MC_HD void gemm_store(const Op& op, const A (&acc)[TM][TM], int tid, int64_t m0,
                              int64_t n0) {
  const int tm = tid / 16, tn = tid % 16;
#pragma unroll
  for (int i = 0; i < TM; ++i) {
    const int64_t m = m0 + tm + 16 * i;
    if (m >= op.M()) continue;
#pragma unroll
    for (int j = 0; j < TM; ++j) {
      const int64_t n = n0 + tn + 16 * j;
      if (n < op.N()) op.store(m, n, acc[i][j]);
    }
  }
}

// out[m, n] = sum_k weight(k, m) * gather(n, k), over (m tile, n tile) blocks, grid-stride.
template <typename T, int TM, class Op>
__global__ void __launch_bounds__(kThreads) conv_gemm(Op op) {
  using A = acc_t<T>;
  constexpr int kT = 16 * TM;  // tile side
  __shared__ Smem<A, TM> s;
  const int tid = static_cast<int>(threadIdx.x);
  const int64_t K = op.K(), mtiles = (op.M() + kT - 1) / kT, ntiles = (op.N() + kT - 1) / kT;
  for (int64_t mt = blockIdx.y; mt < mtiles; mt += gridDim.y) {
    for (int64_t nt = blockIdx.x; nt < ntiles; nt += gridDim.x) {
      const auto col = op.column(nt * kT + tid % kT);  // this thread's gather column
      A acc[TM][TM] = {};
      for (int64_t k0 = 0; k0 < K; k0 += BK) {
        gemm_stage<TM>(op, s, tid, col, mt * kT, k0);
        __syncthreads();
        mma(s, acc, tid / 16, tid % 16);
        __syncthreads();  // the tiles are refilled by the next step
      }
      gemm_store<TM>(op, acc, tid, mt * kT, nt * kT);
    }
  }
}

// Below this many 64 x 64 tiles (a few per SM of a large GPU) the 32 x 32 tiles run instead.
constexpr int64_t kSmallTiles = 512;

template <typename T, class Op>
int launch_gemm(const Op& op, int64_t M, int64_t N, cudaStream_t st) {
  // Every output is summed in ascending K whatever the tile, so the choice changes no bits.
  if (((M + 63) / 64) * ((N + 63) / 64) < kSmallTiles) {
    const dim3 grid(grid_dim((N + 31) / 32), grid_dim((M + 31) / 32));
    conv_gemm<T, 2, Op><<<grid, kThreads, 0, st>>>(op);
  } else {
    const dim3 grid(grid_dim((N + 63) / 64), grid_dim((M + 63) / 64));
    conv_gemm<T, 4, Op><<<grid, kThreads, 0, st>>>(op);
  }
  return static_cast<int>(cudaGetLastError());
}

}  // namespace

int masked_conv2d_fwd(const void* x, const void* w, const void* b, void* y, int64_t B,
                      int64_t Cin, int64_t Cout, int64_t H, int64_t W, int64_t Ho, int64_t Wo,
                      int64_t kh, int64_t kw, int64_t sh, int64_t sw, int64_t pt, int64_t pl,
                      int64_t rows, int64_t cols, int center, int64_t G, bool accumulate,
                      int dtype, void* stream) {
  Geo g;
  if (!make_geo(B, Cin, Cout, H, W, Ho, Wo, kh, kw, sh, sw, pt, pl, rows, cols, center, G, &g))
    return kInvalid;
  const int64_t N = B * Ho * Wo;
  if (N * Cout == 0) return static_cast<int>(cudaSuccess);
  // Pointers to tensors with no elements may be null (empty tensors have no storage).
  if (y == nullptr || (Cin > 0 && w == nullptr) || (Cin * H * W > 0 && x == nullptr))
    return kInvalid;
  const auto st = static_cast<cudaStream_t>(stream);
  return with_dtype(dtype, [&](auto tag) {
    using Ty = typename decltype(tag)::type;
    const FwdOp<Ty> op{static_cast<const Ty*>(x), static_cast<const Ty*>(w),
                       static_cast<const Ty*>(b), static_cast<Ty*>(y), g, accumulate};
    return launch_gemm<Ty>(op, Cout, N, st);
  });
}

int masked_conv2d_bwd_input(const void* g, const void* w, void* dx, int64_t B, int64_t Cin,
                            int64_t Cout, int64_t H, int64_t W, int64_t Ho, int64_t Wo,
                            int64_t kh, int64_t kw, int64_t sh, int64_t sw, int64_t pt,
                            int64_t pl, int64_t rows, int64_t cols, int center, int64_t G,
                            int dtype, void* stream) {
  Geo geo;
  if (!make_geo(B, Cin, Cout, H, W, Ho, Wo, kh, kw, sh, sw, pt, pl, rows, cols, center, G, &geo))
    return kInvalid;
  const int64_t N = B * H * W;
  if (N * Cin == 0) return static_cast<int>(cudaSuccess);
  if (dx == nullptr || (Cout > 0 && w == nullptr) || (Cout * Ho * Wo > 0 && g == nullptr))
    return kInvalid;
  const auto st = static_cast<cudaStream_t>(stream);
  return with_dtype(dtype, [&](auto tag) {
    using Ty = typename decltype(tag)::type;
    const BwdInputOp<Ty> op{static_cast<const Ty*>(g), static_cast<const Ty*>(w),
                            static_cast<Ty*>(dx), geo};
    return launch_gemm<Ty>(op, Cin, N, st);
  });
}

}  // namespace genfast::cuda
