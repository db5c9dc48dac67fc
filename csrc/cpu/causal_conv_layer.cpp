// C++ CPU kernels of the fused WaveNet residual layer (contract: causal_conv_layer.h and
// genfast/ops/causal_conv_layer.py).
//
// Work item: (batch b, time tile of kTile steps). Per tile, everything stays in L1/L2:
//   A (G x kTile)       = the dilated conv as a GEMM over the K*R (tap, channel) pairs,
//   Z (H x kTile)       = tanh(f) * sigmoid(q) from A + bias + cond,
//   O ((R+S) x kTile)   = [w_res; w_skip] Z, added to x / skip in the epilogue.
// The backward recomputes A and the gate per tile (nothing a-sized is kept between passes),
// forms dz = [w_res; w_skip]^T [gx; gs] with the same micro-kernel, writes da, and adds
// [gx; gs] z^T into the partial sum of its chunk. Chunks are fixed runs of work items that
// depend on the problem size only, each summed in item order and the partials summed in chunk
// order, so dw_res / dw_skip have the same bits for every thread count.
//
// The extension links no BLAS: the one micro-kernel below is an outer-product update of
// kMR rows x kNC time steps held in registers (time is the vector axis, one broadcast weight
// per row), compiled per ISA by GENFAST_MULTIVERSIONED; GCC keeps acc in registers and emits
// broadcast FMAs from the plain loops (checked with objdump: 6 zmm accumulators on avx512, 12
// ymm on avx2; 6 x 16 measured best of 4..8 x 16..64 on both).
#include "cpu/causal_conv_layer.h"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <vector>

#include "common/dtype.h"
#include "common/fastmath.h"
#include "common/isa.h"
#include "common/parallel.h"

namespace genfast::cpu {
namespace {

constexpr int64_t kTile = 64;  // time steps per work item: the A tile (64 x 64 fp32) is 16 KB
constexpr int kMR = 6;         // rows per micro-kernel call (kMR x kNC accumulators)
constexpr int kNC = 16;        // time steps per micro-kernel call (1 zmm / 2 ymm per row)
constexpr int64_t kChunks = 64;  // most dW partials of one backward (thread-count independent)

static_assert(kTile % kNC == 0, "a tile is whole micro-kernel columns");

int64_t round_up(int64_t n, int64_t m) { return (n + m - 1) / m * m; }

// acc[m][j] = sum_{p < np} w(p, m) * src[p][col + j], starting from 0 or (`add`) from c, then
// stored to c. src is a table of row pointers, not a stride: with `base + p * ld` GCC
// vectorises across p instead of along time and spills the accumulators (25x slower); adding
// to c after the sum let GCC accumulate in memory, unvectorised (3x slower).
template <typename T, typename W>
GENFAST_INLINE void micro(int64_t np, W w, const T* const* src, int64_t col, T* c, int64_t ldc,
                          bool add) {
  T acc[kMR][kNC];
#pragma GCC unroll 8
  for (int m = 0; m < kMR; ++m)
#pragma GCC unroll 32
    for (int j = 0; j < kNC; ++j) acc[m][j] = add ? c[m * ldc + j] : T(0);
  for (int64_t p = 0; p < np; ++p) {
    const T* x = src[p] + col;
#pragma GCC unroll 8
    for (int m = 0; m < kMR; ++m) {
      const T wm = w(p, m);
#pragma GCC unroll 32
      for (int j = 0; j < kNC; ++j) acc[m][j] += wm * x[j];
    }
  }
#pragma GCC unroll 8
  for (int m = 0; m < kMR; ++m) {
    T* cm = c + m * ldc;
#pragma GCC unroll 32
    for (int j = 0; j < kNC; ++j) cm[j] = acc[m][j];
  }
}

// c[blk*kMR + m][0, ncol) (+)= sum_{p < np} w[blk][p][m] * src[p][0, ncol) for nblk blocks
// of kMR rows; c has row stride ncol. Weights packed so the kMR broadcasts of a step are
// contiguous (reading them from kMR separate rows instead, GCC gave up vectorising).
template <typename T, bool kAdd>
GENFAST_INLINE void gemm_packed_t(int64_t nblk, int64_t np, const T* w, const T* const* src,
                                  int64_t ncol, T* c) {
  for (int64_t blk = 0; blk < nblk; ++blk) {
    const T* wb = w + blk * np * kMR;
    for (int64_t col = 0; col < ncol; col += kNC)
      micro<T>(np, [&](int64_t p, int m) { return wb[p * kMR + m]; }, src, col,
               c + blk * kMR * ncol + col, ncol, kAdd);
  }
}

// The GEMMs are their own multiversioned units: inlined into the big tile functions, GCC's
// register allocation of the accumulators fell apart (the backward ran 3x slower).
GENFAST_MULTIVERSIONED(gemm_set_f32,
                       (int64_t nblk, int64_t np, const float* w, const float* const* src,
                        int64_t ncol, float* c),
                       (nblk, np, w, src, ncol, c),
                       gemm_packed_t<float, false>(nblk, np, w, src, ncol, c))
GENFAST_MULTIVERSIONED(gemm_add_f32,
                       (int64_t nblk, int64_t np, const float* w, const float* const* src,
                        int64_t ncol, float* c),
                       (nblk, np, w, src, ncol, c),
                       gemm_packed_t<float, true>(nblk, np, w, src, ncol, c))
inline void gemm_packed(int64_t nblk, int64_t np, const float* w, const float* const* src,
                        int64_t ncol, bool add, float* c) {
  (add ? gemm_add_f32 : gemm_set_f32)(nblk, np, w, src, ncol, c);
}
inline void gemm_packed(int64_t nblk, int64_t np, const double* w, const double* const* src,
                        int64_t ncol, bool add, double* c) {
  (add ? gemm_packed_t<double, true> : gemm_packed_t<double, false>)(nblk, np, w, src, ncol, c);
}

// Gate pieces from one exp each: e1 = e^{-2f}, e2 = e^{-q}, tanh f = (1-e1)/(1+e1),
// sigmoid q = 1/(1+e2). The exponents are capped (40 in float, 350 in double) so the product
// (1+e1)(1+e2) stays finite: no inf/inf NaN for large |a|; tanh and sigmoid are already
// saturated to the last bit there. Large positive f, q flush e1, e2 to 0, which is exact.
GENFAST_INLINE float gate_exp(float u) {
  // min(u, 40) on the signed bits (negative floats sort below every positive one): a float
  // select would become a branch and stop the loop from vectorising (see fastmath::log).
  const int32_t ub = static_cast<int32_t>(fastmath::bits(u));
  const int32_t cap = static_cast<int32_t>(fastmath::bits(40.0f));
  return fastmath::exp(fastmath::from_bits(static_cast<uint32_t>(ub < cap ? ub : cap)));
}
GENFAST_INLINE double gate_exp(double u) { return std::exp(std::min(u, 350.0)); }

// (1 + e1) tanh f, i.e. 1 - e1, without its cancellation near f = 0 (where 1 - e1 would lose
// all relative accuracy): below |f| = 0.625 Cephes' tanhf polynomial (~1 ulp) times (1 + e1).
// The choice is a mask on the bits, not a float select (which would stop vectorisation).
GENFAST_INLINE float tanh_num(float f, float e1) {
  const float z = f * f;
  float p = -5.70498872745e-3f;
  p = p * z + 2.06390887954e-2f;
  p = p * z - 5.37397155531e-2f;
  p = p * z + 1.33314422036e-1f;
  p = p * z - 3.33332819422e-1f;
  const float small = (p * z * f + f) * (1.0f + e1);
  const uint32_t m = (fastmath::bits(f) & 0x7FFFFFFFu) < 0x3F200000u ? 0xFFFFFFFFu : 0u;
  return fastmath::from_bits((fastmath::bits(small) & m) |
                             (fastmath::bits(1.0f - e1) & ~m));
}
GENFAST_INLINE double tanh_num(double f, double) { return -std::expm1(std::min(-2 * f, 350.0)); }

// Everything one tile pass needs; T-typed pointers, sizes of the call.
template <typename T>
struct Layer {
  const T *x, *h, *cond, *skip, *b_dil, *b_res, *b_skip;
  int64_t cond_t, B, R, G, H, S, T_, K, d, P, ntiles;
  const T* wd;  // [G/kMR blocks][K*R pairs][kMR]: w_dil packed, zero rows past G
  const T* wo;  // [(R+S)/kMR blocks][H][kMR]: [w_res; w_skip] packed (forward projection)
  const T* wt;  // [H/kMR blocks][R+S][kMR]: its transpose (backward dz)
  T *x_out, *skip_out;                 // forward
  const T *gx, *gs;                    // backward
  T* da;
  int64_t Gp, Op, Hp, Hz;  // G, R+S, H rounded to kMR; H rounded to kNC (dW columns)
};

// Per-thread tile buffers, allocated once per block of work items.
template <typename T>
struct Scratch {
  std::vector<const T*> src;   // K*R (tap, channel) row pointers, then Op gradient rows
  std::vector<const T*> zrow;  // rows of z (H of them), then rows of z^T (kTile)
  std::vector<T> xs, a, z, o, zt, gp;
  explicit Scratch(const Layer<T>& L)
      : src(static_cast<size_t>(std::max(L.K * L.R, L.Op))),
        xs(static_cast<size_t>(std::max(L.K * L.R, L.R + L.S) * kTile)),
        a(static_cast<size_t>(std::max(L.Gp, L.Op) * kTile)),
        z(static_cast<size_t>(std::max<int64_t>(L.Hp, 1) * kTile)),
        o(static_cast<size_t>(std::max(L.Op, L.Hp) * kTile)),
        zt(static_cast<size_t>(kTile * L.Hz)),
        gp(static_cast<size_t>(L.Op * kTile)) {
    for (int64_t hh = 0; hh < L.H; ++hh) zrow.push_back(z.data() + hh * kTile);
    for (int64_t j = 0; j < kTile; ++j) zrow.push_back(zt.data() + j * L.Hz);
  }
};

// A = w_dil * x~ for the tile at t0 (n = valid steps): rows read straight from x where the
// whole tile window lies inside it, else gathered from [h | x] with zeros past T.
template <typename T>
GENFAST_INLINE void conv_tile(const Layer<T>& L, Scratch<T>& s, int64_t b, int64_t t0) {
  const int64_t np = L.K * L.R;
  const T* xb = L.x + b * L.R * L.T_;
  const T* hb = L.h ? L.h + b * L.R * L.P : nullptr;
  for (int64_t k = 0; k < L.K; ++k) {
    const int64_t off = t0 - L.P + k * L.d;
    for (int64_t r = 0; r < L.R; ++r) {
      const T* row = xb + r * L.T_;
      const int64_t p = k * L.R + r;
      if (off >= 0 && off + kTile <= L.T_) {
        s.src[p] = row + off;
        continue;
      }
      T* dst = s.xs.data() + p * kTile;
      for (int64_t j = 0; j < kTile; ++j) {
        const int64_t tt = off + j;
        dst[j] = tt >= L.T_ ? T(0) : tt >= 0 ? row[tt] : hb ? hb[r * L.P + L.P + tt] : T(0);
      }
      s.src[p] = dst;
    }
  }
  gemm_packed(L.Gp / kMR, np, L.wd, s.src.data(), kTile, false, s.a.data());
}

// Row g of a, bias and conditioning included, for the n valid steps of the tile at t0.
template <typename T>
GENFAST_INLINE void finish_row(const Layer<T>& L, T* a, int64_t b, int64_t g, int64_t t0,
                               int64_t n) {
  T add = L.b_dil ? L.b_dil[g] : T(0);
  if (L.cond && L.cond_t == 1) add += L.cond[b * L.G + g];
  if (L.cond && L.cond_t != 1) {
    const T* c = L.cond + (b * L.G + g) * L.cond_t + t0;
    for (int64_t j = 0; j < n; ++j) a[j] += add + c[j];
  } else {
    for (int64_t j = 0; j < n; ++j) a[j] += add;
  }
}

template <typename T>
GENFAST_INLINE void fwd_tile(const Layer<T>& L, Scratch<T>& s, int64_t b, int64_t t0) {
  const int64_t n = std::min(kTile, L.T_ - t0);
  conv_tile(L, s, b, t0);
  T* a = s.a.data();
  T* z = s.z.data();
  for (int64_t g = 0; g < L.G; ++g) finish_row(L, a + g * kTile, b, g, t0, n);
  for (int64_t hh = 0; hh < L.H; ++hh) {
    const T* f = a + hh * kTile;
    const T* q = a + (L.H + hh) * kTile;
    T* zr = z + hh * kTile;
    for (int64_t j = 0; j < n; ++j) {
      const T e1 = gate_exp(T(-2) * f[j]), e2 = gate_exp(-q[j]);
      zr[j] = tanh_num(f[j], e1) / ((T(1) + e1) * (T(1) + e2));
    }
  }
  gemm_packed(L.Op / kMR, L.H, L.wo, s.zrow.data(), kTile, false, s.o.data());
  for (int64_t r = 0; r < L.R; ++r) {
    const int64_t i = (b * L.R + r) * L.T_ + t0;
    const T* orow = s.o.data() + r * kTile;
    const T br = L.b_res ? L.b_res[r] : T(0);
    for (int64_t j = 0; j < n; ++j) L.x_out[i + j] = L.x[i + j] + (orow[j] + br);
  }
  for (int64_t c = 0; c < L.S; ++c) {
    const int64_t i = (b * L.S + c) * L.T_ + t0;
    const T* orow = s.o.data() + (L.R + c) * kTile;
    const T bs = L.b_skip ? L.b_skip[c] : T(0);
    if (L.skip)
      for (int64_t j = 0; j < n; ++j) L.skip_out[i + j] = L.skip[i + j] + (orow[j] + bs);
    else
      for (int64_t j = 0; j < n; ++j) L.skip_out[i + j] = orow[j] + bs;
  }
}

// Backward of one tile; dw ((R+S) x Hz) accumulates [gx; gs] z^T over the tile's steps.
template <typename T>
GENFAST_INLINE void bwd_tile(const Layer<T>& L, Scratch<T>& s, int64_t b, int64_t t0, T* dw) {
  const int64_t n = std::min(kTile, L.T_ - t0);
  const int64_t no = L.R + L.S;
  conv_tile(L, s, b, t0);
  T* a = s.a.data();  // rows [0, H): tanh f, rows [H, G): sigmoid q, after the gate loop
  T* z = s.z.data();
  for (int64_t g = 0; g < L.G; ++g) finish_row(L, a + g * kTile, b, g, t0, n);
  for (int64_t hh = 0; hh < L.H; ++hh) {
    T* f = a + hh * kTile;
    T* q = a + (L.H + hh) * kTile;
    T* zr = z + hh * kTile;
    for (int64_t j = 0; j < n; ++j) {
      const T e1 = gate_exp(T(-2) * f[j]), e2 = gate_exp(-q[j]);
      const T p1 = T(1) + e1, p2 = T(1) + e2;
      const T r = T(1) / (p1 * p2);
      const T th = tanh_num(f[j], e1) * p2 * r, sg = p1 * r;
      f[j] = th;
      q[j] = sg;
      zr[j] = th * sg;
    }
  }
  // [gx; gs] rows of this tile; the tail tile reads a zero-padded copy.
  for (int64_t o = 0; o < no; ++o) {
    const T* row = o < L.R ? L.gx + ((b * L.R + o) * L.T_ + t0)
                           : L.gs + ((b * L.S + (o - L.R)) * L.T_ + t0);
    if (n == kTile) {
      s.src[o] = row;
    } else {
      T* dst = s.xs.data() + o * kTile;
      for (int64_t j = 0; j < kTile; ++j) dst[j] = j < n ? row[j] : T(0);
      s.src[o] = dst;
    }
  }
  T* dz = s.o.data();
  gemm_packed(L.Hp / kMR, no, L.wt, s.src.data(), kTile, false, dz);
  for (int64_t hh = 0; hh < L.H; ++hh) {
    const T* th = a + hh * kTile;
    const T* sg = a + (L.H + hh) * kTile;
    const T* d = dz + hh * kTile;
    T* df = L.da + (b * L.G + hh) * L.T_ + t0;
    T* dq = L.da + (b * L.G + L.H + hh) * L.T_ + t0;
    for (int64_t j = 0; j < n; ++j) {
      df[j] = d[j] * sg[j] * (T(1) - th[j] * th[j]);
      dq[j] = d[j] * th[j] * sg[j] * (T(1) - sg[j]);
    }
  }
  // z^T, time-major with Hz columns (zeros past H), the broadcast side of the dW update.
  T* zt = s.zt.data();
  for (int64_t j = 0; j < n; ++j)
    for (int64_t hh = 0; hh < L.Hz; ++hh) zt[j * L.Hz + hh] = hh < L.H ? z[hh * kTile + j] : T(0);
  // [gx; gs] packed [o block][j][kMR] (zero rows past R+S) as the broadcast side.
  T* gp = s.gp.data();
  for (int64_t o = 0; o < L.Op; ++o)
    for (int64_t j = 0; j < n; ++j)
      gp[((o / kMR) * n + j) * kMR + o % kMR] = o < no ? s.src[o][j] : T(0);
  gemm_packed(L.Op / kMR, n, gp, s.zrow.data() + L.H, L.Hz, true, dw);
}

// Each tile touches a few lines of 100+ rows far apart, too many streams for the hardware
// prefetcher: the next tile's rows are requested one whole tile ahead (the fwd epilogue
// spent most of its time in store misses without this).
template <typename T>
GENFAST_INLINE void prefetch_rows(const T* base, int64_t rows, int64_t ld, int64_t t0, int64_t n,
                                  bool write) {
  if (!base) return;
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t j = 0; j < n; j += 64 / static_cast<int64_t>(sizeof(T))) {
      if (write) __builtin_prefetch(base + r * ld + t0 + j, 1);
      else __builtin_prefetch(base + r * ld + t0 + j, 0);
    }
}

template <typename T>
GENFAST_INLINE void prefetch_item(const Layer<T>& L, int64_t i, bool bwd) {
  const int64_t b = i / L.ntiles, t0 = (i % L.ntiles) * kTile, n = std::min(kTile, L.T_ - t0);
  prefetch_rows(L.x + b * L.R * L.T_, L.R, L.T_, t0, n, false);
  if (bwd) {
    prefetch_rows(L.gx + b * L.R * L.T_, L.R, L.T_, t0, n, false);
    prefetch_rows(L.gs + b * L.S * L.T_, L.S, L.T_, t0, n, false);
    prefetch_rows(L.da + b * L.G * L.T_, L.G, L.T_, t0, n, true);
  } else {
    if (L.skip) prefetch_rows(L.skip + b * L.S * L.T_, L.S, L.T_, t0, n, false);
    prefetch_rows(L.x_out + b * L.R * L.T_, L.R, L.T_, t0, n, true);
    prefetch_rows(L.skip_out + b * L.S * L.T_, L.S, L.T_, t0, n, true);
  }
}

template <typename T>
GENFAST_INLINE void fwd_block(const Layer<T>& L, int64_t i0, int64_t i1) {
  Scratch<T> s(L);
  for (int64_t i = i0; i < i1; ++i) {
    if (i + 1 < i1) prefetch_item(L, i + 1, false);
    fwd_tile(L, s, i / L.ntiles, (i % L.ntiles) * kTile);
  }
}

// Chunks [c0, c1): each sums its items into part[c] ((R+S) x Hz, kMR-padded rows).
template <typename T>
GENFAST_INLINE void bwd_block(const Layer<T>& L, T* part, int64_t nchunks, int64_t c0,
                              int64_t c1) {
  Scratch<T> s(L);
  const int64_t items = L.B * L.ntiles, size = round_up(L.R + L.S, kMR) * L.Hz;
  for (int64_t c = c0; c < c1; ++c) {
    T* dw = part + c * size;
    std::fill(dw, dw + size, T(0));
    const int64_t i1 = items * (c + 1) / nchunks;
    for (int64_t i = items * c / nchunks; i < i1; ++i) {
      if (i + 1 < items) prefetch_item(L, i + 1, true);
      bwd_tile(L, s, i / L.ntiles, (i % L.ntiles) * kTile, dw);
    }
  }
}

GENFAST_MULTIVERSIONED(fwd_f32, (const Layer<float>& L, int64_t i0, int64_t i1), (L, i0, i1),
                       fwd_block<float>(L, i0, i1))
GENFAST_MULTIVERSIONED(bwd_f32,
                       (const Layer<float>& L, float* part, int64_t nc, int64_t c0, int64_t c1),
                       (L, part, nc, c0, c1), bwd_block<float>(L, part, nc, c0, c1))

// The call's arguments as they cross the boundary (unused ones null).
struct Args {
  const void *x, *h, *cond, *skip, *w_dil, *b_dil, *w_res, *b_res, *w_skip, *b_skip, *gx, *gs;
  void *x_out, *skip_out, *da, *dw_res, *dw_skip;
  int64_t cond_t, B, R, G, S, T, K, d;
};

// Typed view of the call plus the packed weights (a few KB, packed once per call).
template <typename T>
struct Packed {
  Layer<T> L{};
  std::vector<T> wd, wo, wt;
  explicit Packed(const Args& a) {
    const auto in = [](const void* p) { return static_cast<const T*>(p); };
    const auto out = [](void* p) { return static_cast<T*>(p); };
    L.x = in(a.x), L.h = in(a.h), L.cond = in(a.cond), L.skip = in(a.skip);
    L.b_dil = in(a.b_dil), L.b_res = in(a.b_res), L.b_skip = in(a.b_skip);
    L.gx = in(a.gx), L.gs = in(a.gs);
    L.x_out = out(a.x_out), L.skip_out = out(a.skip_out), L.da = out(a.da);
    const int64_t R = a.R, S = a.S, G = a.G, K = a.K, H = G / 2, no = R + S;
    L.cond_t = a.cond ? a.cond_t : 0;
    L.B = a.B, L.R = R, L.G = G, L.H = H, L.S = S, L.T_ = a.T, L.K = K, L.d = a.d;
    L.P = (K - 1) * a.d;
    L.ntiles = (a.T + kTile - 1) / kTile;
    L.Gp = round_up(G, kMR), L.Op = round_up(no, kMR), L.Hp = round_up(H, kMR);
    L.Hz = round_up(H, kNC);
    const T *wdil = in(a.w_dil), *wres = in(a.w_res), *wskip = in(a.w_skip);
    wd.assign(static_cast<size_t>(L.Gp * K * R), T(0));
    for (int64_t g = 0; g < G; ++g)
      for (int64_t r = 0; r < R; ++r)
        for (int64_t k = 0; k < K; ++k)
          wd[((g / kMR) * K * R + k * R + r) * kMR + g % kMR] = wdil[(g * R + r) * K + k];
    wo.assign(static_cast<size_t>(L.Op * H), T(0));
    wt.assign(static_cast<size_t>(L.Hp * no), T(0));
    for (int64_t o = 0; o < no; ++o)
      for (int64_t hh = 0; hh < H; ++hh) {
        const T w = o < R ? wres[o * H + hh] : wskip[(o - R) * H + hh];
        wo[((o / kMR) * H + hh) * kMR + o % kMR] = w;
        wt[((hh / kMR) * no + o) * kMR + hh % kMR] = w;
      }
    L.wd = wd.data(), L.wo = wo.data(), L.wt = wt.data();
  }
};

template <typename T>
void layer_fwd(const Args& a, int num_threads) {
  const Packed<T> pk(a);
  const Layer<T>& L = pk.L;
  const int64_t work = kTile * (L.G * L.K * L.R + (L.R + L.S) * L.H);
  parallel_for(L.B * L.ntiles, work, num_threads, [&](int64_t i0, int64_t i1) {
    if constexpr (sizeof(T) == 4) fwd_f32(L, i0, i1); else fwd_block<T>(L, i0, i1);
  });
}

template <typename T>
void layer_bwd(const Args& a, int num_threads) {
  const Packed<T> pk(a);
  const Layer<T>& L = pk.L;
  const int64_t R = L.R, H = L.H, items = L.B * L.ntiles, nc = std::min(items, kChunks);
  const int64_t size = L.Op * L.Hz;
  std::vector<T> part(static_cast<size_t>(std::max<int64_t>(nc, 1) * size), T(0));
  const int64_t work = (items / std::max<int64_t>(nc, 1) + 1) * 2 * kTile *
                       (L.G * L.K * R + 2 * (R + L.S) * H);
  parallel_for(nc, work, num_threads, [&](int64_t c0, int64_t c1) {
    if constexpr (sizeof(T) == 4) bwd_f32(L, part.data(), nc, c0, c1);
    else bwd_block<T>(L, part.data(), nc, c0, c1);
  });
  // Partials summed in chunk order: the bits depend on the chunking only, not on the threads.
  for (int64_t c = 1; c < nc; ++c)
    for (int64_t i = 0; i < size; ++i) part[i] += part[c * size + i];
  T* dres = static_cast<T*>(a.dw_res);
  T* dskip = static_cast<T*>(a.dw_skip);
  for (int64_t o = 0; o < R + L.S; ++o)
    for (int64_t hh = 0; hh < H; ++hh)
      (o < R ? dres[o * H + hh] : dskip[(o - R) * H + hh]) = part[o * L.Hz + hh];
}

}  // namespace

void wavenet_layer_fwd(const void* x, const void* h, const void* cond, int64_t cond_t,
                       const void* skip, const void* w_dil, const void* b_dil, const void* w_res,
                       const void* b_res, const void* w_skip, const void* b_skip, void* x_out,
                       void* skip_out, int64_t B, int64_t R, int64_t G, int64_t S, int64_t T,
                       int64_t K, int64_t dilation, int dtype, int num_threads) {
  const bool f32 = cpu_is_float32(dtype, "wavenet layer");
  if (B <= 0 || T <= 0) return;
  const Args a{x, h, cond, skip, w_dil, b_dil, w_res, b_res, w_skip, b_skip, nullptr, nullptr,
               x_out, skip_out, nullptr, nullptr, nullptr, cond_t, B, R, G, S, T, K, dilation};
  (f32 ? layer_fwd<float> : layer_fwd<double>)(a, num_threads);
}

void wavenet_layer_bwd(const void* x, const void* h, const void* cond, int64_t cond_t,
                       const void* w_dil, const void* b_dil, const void* w_res,
                       const void* w_skip, const void* gx, const void* gs, void* da,
                       void* dw_res, void* dw_skip, int64_t B, int64_t R, int64_t G, int64_t S,
                       int64_t T, int64_t K, int64_t dilation, int dtype, int num_threads) {
  const bool f32 = cpu_is_float32(dtype, "wavenet layer");
  // B or T == 0 still writes dw_res and dw_skip (zeros).
  const Args a{x, h, cond, nullptr, w_dil, b_dil, w_res, nullptr, w_skip, nullptr, gx, gs,
               nullptr, nullptr, da, dw_res, dw_skip, cond_t, std::max<int64_t>(B, 0), R, G, S,
               std::max<int64_t>(T, 0), K, dilation};
  (f32 ? layer_bwd<float> : layer_bwd<double>)(a, num_threads);
}

}  // namespace genfast::cpu
