// CUDA kernels of the region convolution's weight gradient. Contract:
// genfast/ops/masked_conv.py; declarations: csrc/cuda/masked_conv.h; the tap prefix and the
// tiles: csrc/cuda/masked_conv.cuh.
//
// M = Cout, N = Cin x read taps, K = the batch's output pixels: the fwd tiles, with the pixel
// range split into chunks that depend on the sizes only. Each block writes its tile's partial
// sums to a workspace, and a second kernel adds the partials of each weight in chunk order and
// writes exact zeros on the taps no pair reads: the same bits on every run, no atomics.
#include <cuda_runtime.h>

#include <cstdint>

#include "cuda/common.cuh"
#include "cuda/masked_conv.cuh"
#include "cuda/masked_conv.h"

namespace genfast::cuda {
namespace {

using dev::acc_t;
using namespace mc;  // NOLINT: the kernels' shared vocabulary (Geo, Smem, mma, ld, st, ...)

// ---- bwd_weight: M = Cout, N = Cin * nt, K = B*Ho*Wo pixels in chunks ----------------------
// part[z, co, ci*nt + t] = sum over the pixels of chunk z of g[n,co,i,j] * x[n,ci,ih,iw].
template <typename T>
struct BwdWeightOp {
  const T* gy;         // (B, Cout, Ho, Wo)
  const T* x;          // (B, Cin, H, W)
  acc_t<T>* part;      // (splits, Cout, Cin * nt)
  Geo g;
  int64_t chunk;       // pixels a split

  GENFAST_MC_HD int64_t M() const { return g.Cout; }
  GENFAST_MC_HD int64_t N() const { return g.Cin * g.nt; }
  GENFAST_MC_HD int64_t P() const { return g.B * g.Ho * g.Wo; }

  struct Cols {  // the loader's 4 columns lr + 16 u: channel plane offset and tap (r, s)
    bool in[4];
    int64_t off[4];
    int r[4], s[4];
  };
  GENFAST_MC_HD Cols columns(int64_t n0, int lr) const {
    Cols c;
#pragma unroll
    for (int u = 0; u < 4; ++u) {
      const int64_t nn = n0 + lr + 16 * u;
      c.in[u] = nn < N();
      const int64_t ci = c.in[u] ? qdiv(nn, g.nt) : 0;
      const int t = c.in[u] ? static_cast<int>(nn - ci * g.nt) : 0;
      c.off[u] = ci * g.H * g.W, c.r[u] = t / g.kw, c.s[u] = t - c.r[u] * g.kw;
    }
    return c;
  }

  // Stage pixel k0 + tid % BK of the chunk ending at kend: g rows a[k][co] and x columns b[k][n].
  template <typename A>
  GENFAST_MC_HD void stage(Smem<A>& s, int tid, const Cols& c, int64_t m0, int64_t k0,
                           int64_t kend) const {
    const int kk = tid % BK, lr = tid / BK;
    const int64_t k = k0 + kk, HWo = g.Ho * g.Wo;
    const bool kin = k < kend;
    int64_t gbase = 0, xbase = 0, ih0 = 0, iw0 = 0;
    if (kin) {
      const int64_t n = qdiv(k, HWo), pix = k - n * HWo;
      const int64_t i = qdiv(pix, g.Wo), j = pix - i * g.Wo;
      gbase = n * g.Cout * HWo + pix, xbase = n * g.Cin * g.H * g.W;
      ih0 = i * g.sh - g.pt, iw0 = j * g.sw - g.pl;
    }
#pragma unroll
    for (int u = 0; u < 4; ++u) {
      const int64_t co = m0 + lr + 16 * u;
      s.a[kk][lr + 16 * u] = kin && co < g.Cout ? ld(gy + gbase + co * HWo) : A(0);
    }
#pragma unroll
    for (int u = 0; u < 4; ++u) {
      const int64_t ih = ih0 + c.r[u], iw = iw0 + c.s[u];
      const bool ok = kin && c.in[u] && ih >= 0 && ih < g.H && iw >= 0 && iw < g.W;
      s.b[kk][lr + 16 * u] = ok ? ld(x + xbase + c.off[u] + ih * g.W + iw) : A(0);
    }
  }

  template <typename A>
  GENFAST_MC_HD void store(const A (&acc)[4][4], int tid, int64_t z, int64_t m0,
                           int64_t n0) const {
    const int tm = tid / 16, tn = tid % 16;
#pragma unroll
    for (int i = 0; i < 4; ++i) {
      const int64_t m = m0 + tm + 16 * i;
      if (m >= M()) continue;
#pragma unroll
      for (int j = 0; j < 4; ++j) {
        const int64_t n = n0 + tn + 16 * j;
        if (n < N()) part[(z * M() + m) * N() + n] = acc[i][j];
      }
    }
  }

  // dw[e] (e = (co * Cin + ci) * KK + t): the partials of chunks 0, 1, ... added in that order
  // on read taps, exactly 0 elsewhere.
  GENFAST_MC_HD void reduce(T* dw, int64_t e, int64_t splits) const {
    const int64_t pair = qdiv(e, g.KK), co = qdiv(pair, g.Cin), ci = pair - co * g.Cin;
    const int t = static_cast<int>(e - pair * g.KK);
    acc_t<T> v = 0;
    if (t < g.nf || (t < g.nt && g.centre(co, ci))) {
      const acc_t<T>* p = part + co * N() + ci * g.nt + t;
      for (int64_t zz = 0; zz < splits; ++zz) v += p[zz * M() * N()];
    }
    st(dw + e, v);
  }
};

template <typename T>
__global__ void __launch_bounds__(kThreads) bwd_weight_partial(BwdWeightOp<T> op) {
  using A = acc_t<T>;
  __shared__ Smem<A> s;
  const int tid = static_cast<int>(threadIdx.x);
  const int64_t mtiles = (op.M() + BM - 1) / BM, ntiles = (op.N() + BN - 1) / BN;
  const int64_t z = blockIdx.z, kbeg = z * op.chunk, P = op.P();
  const int64_t kend = kbeg + op.chunk < P ? kbeg + op.chunk : P;
  for (int64_t mt = blockIdx.y; mt < mtiles; mt += gridDim.y) {
    for (int64_t nt = blockIdx.x; nt < ntiles; nt += gridDim.x) {
      const auto cols = op.columns(nt * BN, tid / BK);
      A acc[4][4] = {};
      for (int64_t k0 = kbeg; k0 < kend; k0 += BK) {
        op.stage(s, tid, cols, mt * BM, k0, kend);
        __syncthreads();
        mma(s, acc, tid / 16, tid % 16);
        __syncthreads();
      }
      op.store(acc, tid, z, mt * BM, nt * BN);
    }
  }
}

template <typename T>
__global__ void __launch_bounds__(kThreads)
    bwd_weight_reduce(BwdWeightOp<T> op, T* __restrict__ dw, int64_t splits) {
  const int64_t total = op.g.Cout * op.g.Cin * op.g.KK;
  const int64_t step = static_cast<int64_t>(gridDim.x) * kThreads;
  for (int64_t e = static_cast<int64_t>(blockIdx.x) * kThreads + threadIdx.x; e < total;
       e += step)
    op.reduce(dw, e, splits);
}

// ---- host side ------------------------------------------------------------------------------
// bwd_weight splits the pixels until about this many blocks run (a function of the sizes only,
// so the summation order, and the bits, are the same on every GPU), but not below kMinChunk
// pixels a block.
constexpr int64_t kTargetBlocks = 1024;
constexpr int64_t kMinChunk = 512;

// The pixel chunks: about kTargetBlocks blocks in all, chunks of at least kMinChunk pixels, a
// multiple of BK; every chunk non-empty.
void plan_splits(int64_t P, int64_t M, int64_t N, int64_t* splits, int64_t* chunk) {
  const int64_t tiles = ((M + BM - 1) / BM) * ((N + BN - 1) / BN);
  const int64_t by_size = (P + kMinChunk - 1) / kMinChunk;
  const int64_t by_grid = kTargetBlocks / tiles > 1 ? kTargetBlocks / tiles : 1;
  int64_t s = by_size < by_grid ? by_size : by_grid;
  if (s > kMaxBlocks) s = kMaxBlocks;
  *chunk = ((P + s - 1) / s + BK - 1) / BK * BK;
  *splits = (P + *chunk - 1) / *chunk;
}

}  // namespace

int masked_conv2d_bwd_weight(const void* g, const void* x, void* dw, int64_t B, int64_t Cin,
                             int64_t Cout, int64_t H, int64_t W, int64_t Ho, int64_t Wo,
                             int64_t kh, int64_t kw, int64_t sh, int64_t sw, int64_t pt,
                             int64_t pl, int64_t rows, int64_t cols, int center, int64_t G,
                             int dtype, void* stream) {
  Geo geo;
  if (!make_geo(B, Cin, Cout, H, W, Ho, Wo, kh, kw, sh, sw, pt, pl, rows, cols, center, G, &geo))
    return kInvalid;
  const int64_t total = Cout * Cin * geo.KK;
  if (total == 0) return static_cast<int>(cudaSuccess);
  const int64_t P = B * Ho * Wo, M = Cout, N = Cin * geo.nt;
  const bool data = P > 0 && N > 0;
  if (dw == nullptr || (data && (g == nullptr || (H * W > 0 && x == nullptr)))) return kInvalid;
  int64_t splits = 0, chunk = 0;
  if (data) plan_splits(P, M, N, &splits, &chunk);
  const auto st = static_cast<cudaStream_t>(stream);
  return with_dtype(dtype, [&](auto tag) {
    using Ty = typename decltype(tag)::type;
    using A = acc_t<Ty>;
    A* part = nullptr;
    const auto op_with = [&](A* p) {
      return BwdWeightOp<Ty>{static_cast<const Ty*>(g), static_cast<const Ty*>(x), p, geo, chunk};
    };
    if (data) {
      // Stream-ordered, so no host synchronisation; freed after the reduction on the same stream.
      const cudaError_t rc = cudaMallocAsync(reinterpret_cast<void**>(&part),
                                             static_cast<size_t>(splits * M * N) * sizeof(A), st);
      if (rc != cudaSuccess) return static_cast<int>(rc);
      const dim3 grid(grid_dim((N + BN - 1) / BN), grid_dim((M + BM - 1) / BM),
                      static_cast<unsigned>(splits));
      bwd_weight_partial<Ty><<<grid, kThreads, 0, st>>>(op_with(part));
      const cudaError_t launch = cudaGetLastError();
      if (launch != cudaSuccess) {
        cudaFreeAsync(part, st);
        return static_cast<int>(launch);
      }
    }
    // With no data the sums are empty: the reduction writes zeros and never reads part.
    bwd_weight_reduce<Ty><<<grid_dim((total + kThreads - 1) / kThreads), kThreads, 0, st>>>(
        op_with(part), static_cast<Ty*>(dw), splits);
    const cudaError_t launch = cudaGetLastError();
    if (part != nullptr) {
      const cudaError_t rc = cudaFreeAsync(part, st);
      if (launch == cudaSuccess && rc != cudaSuccess) return static_cast<int>(rc);
    }
    return static_cast<int>(launch);
  });
}

}  // namespace genfast::cuda
