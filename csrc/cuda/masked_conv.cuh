// Device helpers of the region-convolution CUDA kernels (csrc/cuda/masked_conv.cu: fwd and
// bwd_input; masked_conv_weight.cu: bwd_weight): the geometry, the shared-memory tile and its
// register-tile product. Contract: genfast/ops/masked_conv.py. Include only from .cu files.
//
// The read taps of a region are a prefix of the raster order: every pair (co, ci) reads taps
// [0, nf) (the rows above the anchor, then the anchor row's left part), and the anchor tap nf
// = rows * kw + cols is read by the pairs the centre rule allows. So each conv is an implicit
// GEMM whose reduction runs over (channel, tap < nt) only, nt = nf (+1 with an anchor): the
// masked taps are never loaded or multiplied, and the anchor's per-pair mask is applied once,
// when the weight tile is staged. Output tiles live in registers, the reduction is staged in
// shared memory BK at a time (the tile constants below).
#pragma once
#include <cuda_runtime.h>

#include <cstdint>

#include "cuda/common.cuh"

namespace genfast::cuda::mc {

using dev::acc_t;

// Loads and stores in the math type, callable from the host too, like every index helper and
// per-thread phase below: a host program can run the tiling (each tid between the barriers) on
// the CPU and check it against the contract where no GPU is at hand.
#define GENFAST_MC_HD __host__ __device__ __forceinline__
GENFAST_MC_HD float ld(const float* p) { return *p; }
GENFAST_MC_HD double ld(const double* p) { return *p; }
GENFAST_MC_HD float ld(const __half* p) { return __half2float(*p); }
GENFAST_MC_HD float ld(const __nv_bfloat16* p) { return __bfloat162float(*p); }
GENFAST_MC_HD void st(float* p, float v) { *p = v; }
GENFAST_MC_HD void st(double* p, double v) { *p = v; }
GENFAST_MC_HD void st(__half* p, float v) { *p = __float2half_rn(v); }
GENFAST_MC_HD void st(__nv_bfloat16* p, float v) { *p = __float2bfloat16_rn(v); }

// Blocks of 16 x 16 threads own a (16 TM) x (16 TM) output tile, TM x TM registers a thread,
// and stage the reduction BK at a time: each thread loads TM weights and TM gathered values a
// step. TM = 4 (64 x 64) by default; TM = 2 (32 x 32, four times the blocks) for problems too
// small to fill a GPU with 64 x 64 tiles.
constexpr int kThreads = 256;
constexpr int BK = 16;
constexpr int BM = 64, BN = 64;  // the TM = 4 tile (bwd_weight's)
// Row stride 16 TM + 2 (= 2 mod 32 words): the transposed tile stores, 16 consecutive k by two
// rows a warp, hit 32 distinct banks.
constexpr int kPad = 2;
static_assert(kThreads == 16 * 16 && kThreads % BK == 0, "16 x 16 threads, BK divides them");

// Sizes fit in 32 bits for all but the largest batches: the 32-bit quotient is several times
// cheaper than the 64-bit one, and the branch is uniform across a warp in practice.
GENFAST_MC_HD int64_t qdiv(int64_t a, int64_t b) {
  if (((a | b) >> 31) == 0)
    return static_cast<int64_t>(static_cast<uint32_t>(a) / static_cast<uint32_t>(b));
  return a / b;
}

// The geometry every kernel reads; the tap counts follow from the region (file comment).
struct Geo {
  int64_t B, Cin, Cout, H, W, Ho, Wo;
  int kh, kw, KK;  // KK = kh * kw
  int64_t sh, sw, pt, pl;
  int nf, nt;      // taps every pair reads; read taps (nf + 1 with an anchor)
  int center;
  int64_t G;

  // Whether (co, ci) reads the anchor tap (only asked when there is one, so center != 0).
  GENFAST_MC_HD bool centre(int64_t co, int64_t ci) const {
    const int64_t go = co * G / Cout, gi = ci * G / Cin;
    return center == 1 ? gi < go : gi <= go;
  }
  // w[co, ci, t] for a read tap index t < nt, 0 where the pair does not read the anchor.
  template <typename T>
  GENFAST_MC_HD acc_t<T> weight(const T* w, int64_t co, int64_t ci, int t) const {
    if (t >= nf && !centre(co, ci)) return acc_t<T>(0);
    return ld(w + (co * Cin + ci) * KK + t);
  }
};

template <typename A, int TM = 4>
struct Smem {
  A a[BK][16 * TM + kPad];  // the M operand, a[k][m]
  A b[BK][16 * TM + kPad];  // the N operand, b[k][n]
};

// acc[i][j] += sum_k a[k][tm + 16 i] * b[k][tn + 16 j]: strided register tiles, so a warp's
// b reads are 16 consecutive words and its a reads two broadcasts.
template <typename A, int TM>
GENFAST_MC_HD void mma(const Smem<A, TM>& s, A (&acc)[TM][TM], int tm, int tn) {
#pragma unroll
  for (int k = 0; k < BK; ++k) {
    A av[TM], bv[TM];
#pragma unroll
    for (int i = 0; i < TM; ++i) av[i] = s.a[k][tm + 16 * i];
#pragma unroll
    for (int j = 0; j < TM; ++j) bv[j] = s.b[k][tn + 16 * j];
#pragma unroll
    for (int i = 0; i < TM; ++i)
#pragma unroll
      for (int j = 0; j < TM; ++j) acc[i][j] += av[i] * bv[j];
  }
}

// ---- host side ------------------------------------------------------------------------------
constexpr int kInvalid = static_cast<int>(cudaErrorInvalidValue);
constexpr int64_t kLim = int64_t{1} << 31;

inline unsigned grid_dim(int64_t n) {
  return static_cast<unsigned>(n < 1 ? 1 : n < kMaxBlocks ? n : kMaxBlocks);
}

// The sizes every entry point shares. Channel x tap counts and strides / paddings stay below
// 2^31 (tap and window arithmetic); image planes are bounded by Python (check_sizes).
inline bool make_geo(int64_t B, int64_t Cin, int64_t Cout, int64_t H, int64_t W, int64_t Ho,
                     int64_t Wo, int64_t kh, int64_t kw, int64_t sh, int64_t sw, int64_t pt,
                     int64_t pl, int64_t rows, int64_t cols, int center, int64_t G, Geo* g) {
  if (B < 0 || Cin < 0 || Cout < 0 || H < 0 || W < 0 || Ho < 0 || Wo < 0) return false;
  if (kh < 1 || kw < 1 || sh < 1 || sw < 1 || pt < 0 || pl < 0 || G < 1) return false;
  if (rows < 0 || rows > kh || cols < 0 || cols > kw || center < 0 || center > 2) return false;
  if (kh >= kLim || kw >= kLim || kh * kw >= kLim || sh >= kLim || sw >= kLim || pt >= kLim ||
      pl >= kLim || G >= kLim)
    return false;
  const int64_t KK = kh * kw;
  if (Cin * KK >= kLim || Cout * KK >= kLim) return false;
  const int64_t nf = rows * kw + (rows < kh ? cols : 0);
  const bool anchor = rows < kh && cols < kw && (center == 2 || (center == 1 && G > 1));
  *g = Geo{B, Cin, Cout, H, W, Ho, Wo, static_cast<int>(kh), static_cast<int>(kw),
           static_cast<int>(KK), sh, sw, pt, pl, static_cast<int>(nf),
           static_cast<int>(nf + (anchor ? 1 : 0)), center, G};
  return true;
}

}  // namespace genfast::cuda::mc
