// C++ CPU kernels of the region convolution (contract: genfast/ops/masked_conv.py and
// masked_conv.h). Only the region's taps are read: a 7x7 mask-B conv costs 25 of 49 taps.
//
// Cost model. Every kernel is a stride-1 correlation on wide planes (masked_conv_tile.h): fwd
// reads x through taps (r - pt, s - pl); bwd_input reads g through the flipped taps (pt - r,
// pl - s) with the transposed weights. A stride > 1 is folded in by zero insertion: fwd computes
// the stride-1 plane and keeps every sh-th row and sw-th column; bwd_input places g at rows
// i*sh, columns j*sw of its source plane; bwd_weight does the same to g. That costs sh*sw times
// the work of a direct strided kernel; stride 1 (every PixelCNN conv) pays nothing for it.
// fwd / bwd_input items are (image, run of flat positions); each thread copies the image it
// works on into its own zero-padded buffer once. bwd_weight is the same shifted GEMM reduced
// over positions instead: dw[co][ci, tap] = sum_p g[co][p] * x_padded[ci][p + shift(tap)], an
// outer-product tile over (ci, tap) x co with g transposed once, each value summed by one
// thread in position order: the bits do not depend on the thread count.
#include "cpu/masked_conv.h"

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <memory>
#include <stdexcept>
#include <string>
#include <vector>

#include "common/dtype.h"
#include "common/parallel.h"
#include "cpu/causal_conv_tile.h"
#include "cpu/masked_conv_tile.h"

namespace genfast::cpu {
namespace {

using namespace conv_tile;
using namespace masked_tile;

// Weights packed per block of MR output rows, in region_tile's order: for each reduction
// channel c, the full taps, then the anchor tap where c is in the block's anchor range [alo,
// ahi), MR weights each. Pairs outside the region get an explicit 0 (the weight there is
// never read, whatever it holds). The anchor is read_taps' last tap when present.
template <typename T>
struct Packed {
  std::vector<T> w;
  std::vector<int64_t> woff, alo, ahi;  // per block
};

template <typename T>
Packed<T> pack_region(const T* w, const Geometry& g, const std::vector<Tap>& taps, bool trans,
                      int mr) {
  const int64_t mout = trans ? g.Cin : g.Cout, cred = trans ? g.Cout : g.Cin;
  const int64_t nmb = (mout + mr - 1) / mr, ntap = static_cast<int64_t>(taps.size());
  const bool anchor = ntap > 0 && taps.back().anchor;
  const int64_t nfull = anchor ? ntap - 1 : ntap;
  const auto read = [&](int64_t m, int64_t c) {
    return trans ? g.anchor_read(c, m) : g.anchor_read(m, c);
  };
  Packed<T> p;
  p.woff.resize(static_cast<size_t>(nmb));
  p.alo.resize(static_cast<size_t>(nmb));
  p.ahi.resize(static_cast<size_t>(nmb));
  for (int64_t mb = 0; mb < nmb; ++mb) {
    p.woff[mb] = static_cast<int64_t>(p.w.size());
    const int64_t m1 = std::min(mout, (mb + 1) * mr);
    int64_t lo = cred, hi = 0;
    if (anchor)
      for (int64_t m = mb * mr; m < m1; ++m)
        for (int64_t c = 0; c < cred; ++c)
          if (read(m, c)) lo = std::min(lo, c), hi = std::max(hi, c + 1);
    if (hi <= lo) lo = hi = 0;
    p.alo[mb] = lo, p.ahi[mb] = hi;
    for (int64_t c = 0; c < cred; ++c)
      for (int64_t t = 0; t < (c >= lo && c < hi ? ntap : nfull); ++t)
        for (int m = 0; m < mr; ++m) {
          const Tap& tp = taps[t];
          const int64_t row = mb * mr + m, co = trans ? c : row, ci = trans ? row : c;
          const bool in = row < mout && (!tp.anchor || read(row, c));
          p.w.push_back(in ? w[((co * g.Cin + ci) * g.kh + tp.r) * g.kw + tp.s] : T(0));
        }
  }
  return p;
}

#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wpsabi"  // vector types cross only always_inline calls

// out[n][m] (hy, wy) (=, or += with accumulate) bias[m] + O[i*osh][j*osw], where the computed
// plane O (ho rows of the wide layout) = sum over taps and channels of src (B, cred, hs, ws)
// placed at rows u*ssh, columns v*ssw.
struct Corr {
  const void* src;
  const void* bias;
  void* out;
  int64_t B, cred, mout, hs, ws, ssh, ssw, wo, osh, osw, hy, wy;
  Wide lay;
  int64_t nfull;         // taps read by every pair (the anchor, if any, follows them)
  const int64_t* shift;  // per tap: dr*L + dc
  const void* wp;
  const int64_t *woff, *alo, *ahi;
  int64_t tt, nchunk;  // flat positions per item, items per image
  bool accumulate;
};

template <typename T, int Isa>
GENFAST_INLINE void corr_items(const Corr& a, int64_t i0, int64_t i1) {
  constexpr int MR = Shape<T, Isa>::MR, NR = Shape<T, Isa>::NR;
  const T* src = static_cast<const T*>(a.src);
  const T* bias = static_cast<const T*>(a.bias);
  const T* wp = static_cast<const T*>(a.wp);
  T* out = static_cast<T*>(a.out);
  const Wide& w = a.lay;
  const int64_t nmb = (a.mout + MR - 1) / MR;
  std::vector<T> buf(static_cast<size_t>(a.cred * w.P), T(0));
  std::vector<T> sc(static_cast<size_t>(MR * a.tt));
  int64_t placed = -1;
  for (int64_t item = i0; item < i1; ++item) {
    const int64_t n = item / a.nchunk, p0 = (item % a.nchunk) * a.tt;
    const int64_t len = std::min(a.tt, w.n_out - p0);
    if (n != placed) {
      for (int64_t c = 0; c < a.cred; ++c)
        place_plane(src + (n * a.cred + c) * a.hs * a.ws, a.hs, a.ws, a.ssh, a.ssw, w.L,
                    buf.data() + c * w.P + w.off);
      placed = n;
    }
    for (int64_t mb = 0; mb < nmb; ++mb) {
      const T* wb = wp + a.woff[mb];
      for (int64_t q = 0; q < len; q += NR)
        region_tile_n<T, Isa>(std::min<int64_t>(NR, len - q), wb, a.cred, a.nfull, a.shift,
                              a.alo[mb], a.ahi[mb], buf.data() + w.off + p0 + q, w.P,
                              sc.data() + q, a.tt);
      // The rows of O this run covers, kept where they land on the output lattice.
      const int rows = static_cast<int>(std::min<int64_t>(MR, a.mout - mb * MR));
      const int64_t u0 = p0 / w.L, u1 = (p0 + len - 1) / w.L;
      for (int m = 0; m < rows; ++m) {
        const int64_t co = mb * MR + m;
        const T b = bias != nullptr ? bias[co] : T(0);
        T* y = out + (n * a.mout + co) * a.hy * a.wy;
        for (int64_t u = u0; u <= u1; ++u) {
          if (u % a.osh != 0) continue;
          T* yr = y + (u / a.osh) * a.wy;
          const int64_t v0 = std::max<int64_t>(p0 - u * w.L, 0);
          const int64_t v1 = std::min(p0 + len - u * w.L, a.wo);
          if (v1 <= v0) continue;
          // Row u's column v0 is run position u*L + v0 - p0 (>= 0).
          const T* sr = sc.data() + m * a.tt + (u * w.L + v0 - p0);
          if (a.osw == 1) {
            T* yv = yr + v0;
            if (a.accumulate)
              for (int64_t k = 0; k < v1 - v0; ++k) yv[k] += sr[k] + b;
            else
              for (int64_t k = 0; k < v1 - v0; ++k) yv[k] = sr[k] + b;
            continue;
          }
          for (int64_t v = (v0 + a.osw - 1) / a.osw * a.osw; v < v1; v += a.osw) {
            const T val = sr[v - v0] + b;
            yr[v / a.osw] = a.accumulate ? yr[v / a.osw] + val : val;
          }
        }
      }
    }
  }
}

GENFAST_CONV_ISA_COPIES(corr_f32, (const Corr& a, int64_t i0, int64_t i1), (a, i0, i1),
                        corr_items<float, kIsa>(a, i0, i1))
GENFAST_CONV_ISA_COPIES(corr_f64, (const Corr& a, int64_t i0, int64_t i1), (a, i0, i1),
                        corr_items<double, kIsa>(a, i0, i1))

template <typename T>
void run_corr(const Geometry& g, const T* w, const T* src, const T* bias, T* out, bool adjoint,
              bool accumulate, int num_threads) {
  const std::vector<Tap> taps = read_taps(g);
  const int isa = isa::active();
  const int mr = tile_mr<T>(isa), nr = tile_nr<T>(isa);
  Corr a{};
  a.src = src, a.bias = bias, a.out = out, a.B = g.B, a.accumulate = accumulate;
  const int64_t ntap = static_cast<int64_t>(taps.size());
  a.nfull = ntap > 0 && taps.back().anchor ? ntap - 1 : ntap;
  int64_t b[4];
  tap_bounds(taps, g, b);
  if (!adjoint) {
    a.cred = g.Cin, a.mout = g.Cout, a.hs = g.H, a.ws = g.W, a.ssh = a.ssw = 1;
    a.osh = g.sh, a.osw = g.sw, a.hy = g.Ho, a.wy = g.Wo, a.wo = g.wo1();
    a.lay = wide_layout(g.H, g.W, g.ho1(), g.wo1(), b[0], b[1], b[2], b[3], nr);
  } else {
    a.cred = g.Cout, a.mout = g.Cin, a.hs = g.Ho, a.ws = g.Wo, a.ssh = g.sh, a.ssw = g.sw;
    a.osh = a.osw = 1, a.hy = g.H, a.wy = g.W, a.wo = g.W;
    a.lay = wide_layout(g.ho1(), g.wo1(), g.H, g.W, -b[1], -b[0], -b[3], -b[2], nr);
  }
  const int64_t yplane = a.hy * a.wy;
  if (ntap == 0 || a.cred == 0) {  // nothing is read: the output is the bias (or 0)
    parallel_for(g.B * a.mout, yplane, num_threads, [&](int64_t r0, int64_t r1) {
      for (int64_t r = r0; r < r1; ++r) {
        const T v = bias != nullptr ? bias[r % a.mout] : T(0);
        T* y = out + r * yplane;
        for (int64_t i = 0; i < yplane; ++i) y[i] = accumulate ? y[i] + v : v;
      }
    });
    return;
  }
  const std::vector<int64_t> shift = tap_shifts(taps, g, a.lay.L, adjoint);
  const Packed<T> p = pack_region(w, g, taps, adjoint, mr);
  a.shift = shift.data(), a.wp = p.w.data(), a.woff = p.woff.data(), a.alo = p.alo.data();
  a.ahi = p.ahi.data();
  // About 256 KB of source columns per run: they stay in L2 while every output block of the
  // run passes over them. Runs get shorter when there are too few images to feed the threads.
  const int64_t n_out = a.lay.n_out;
  int64_t tt = std::max<int64_t>(1, (int64_t{1} << 16) / a.cred);
  const int64_t want = (4 * int64_t{std::max(num_threads, 1)} + g.B - 1) / std::max<int64_t>(g.B, 1);
  tt = std::min(tt, (n_out + want - 1) / want);
  a.tt = std::clamp<int64_t>((tt + nr - 1) / nr * nr, nr, (n_out + nr - 1) / nr * nr);
  a.nchunk = (n_out + a.tt - 1) / a.tt;
  const int64_t work = a.tt * ntap * a.cred * a.mout;
  parallel_for(g.B * a.nchunk, work, num_threads, [&](int64_t i0, int64_t i1) {
    sizeof(T) == 4 ? corr_f32(isa, a, i0, i1) : corr_f64(isa, a, i0, i1);
  });
}

// bwd_weight: dw[co][ci, tap] = sum over (image, flat position p) of g^T[n][p][co] *
// x_padded[n][ci][p + shift(tap)]. Items are tiles of MW columns (ci, tap); each runs the
// whole reduction for its columns, in blocks of whole rows (about kBlock positions) in
// the same order for every tile, keeping its accumulators in `acc` between blocks. Each dw
// value is summed by one item in a fixed order: no partials, the same bits for any split.
struct Wgrad {
  const void* gt;  // g^T on the wide output plane: (B, n_out, ldg), zero off the lattice
  const void* xp;  // x in its padded copy: (B, Cin, P)
  void* dw;
  int64_t B, Cin, Cout, kh, kw, ntap, ldg, nv;  // nv: vectors of output channels per tile
  int64_t wo;  // columns of the wide plane that hold g (the rest are zero)
  const int64_t* shift;
  const Tap* taps;
  const Geometry* geo;
  Wide lay;
};

// Positions per block: g^T's block (kBlock x ldg) stays in L2 while every tile passes over it.
constexpr int64_t kBlock = 1024;

template <typename T, int Isa, int NV>
GENFAST_INLINE void wgrad_items(const Wgrad& a, int64_t i0, int64_t i1) {
  constexpr int MW = WShape<T, Isa>::MW, NW = NV * WShape<T, Isa>::VL;
  const T* gt = static_cast<const T*>(a.gt);
  const T* xp = static_cast<const T*>(a.xp);
  T* dw = static_cast<T*>(a.dw);
  const Wide& w = a.lay;
  const int64_t ncol = a.Cin * a.ntap, ncb = a.ldg / NW;
  std::vector<T> acc(static_cast<size_t>((i1 - i0) * ncb * MW * NW));
  const T* xr[MW];
  const int64_t ho = w.n_out / w.L, rows_per_block = std::max<int64_t>(1, kBlock / w.L);
  bool first = true;
  for (int64_t n = 0; n < a.B; ++n)
    for (int64_t u0 = 0; u0 < ho; u0 += rows_per_block, first = false) {
      const int64_t nrows = std::min(rows_per_block, ho - u0), p0 = u0 * w.L;
      for (int64_t it = i0; it < i1; ++it) {
        for (int m = 0; m < MW; ++m) {
          // Columns past the last repeat it; their sums are never stored.
          const int64_t col = std::min(it * MW + m, ncol - 1), ci = col / a.ntap;
          xr[m] = xp + (n * a.Cin + ci) * w.P + w.off + a.shift[col % a.ntap] + p0;
        }
        for (int64_t cb = 0; cb < ncb; ++cb)
          wgrad_tile<T, Isa, NV>(xr, gt + (n * w.n_out + p0) * a.ldg + cb * NW, a.ldg, nrows,
                                 w.L, a.wo, acc.data() + ((it - i0) * ncb + cb) * MW * NW,
                                 first);
      }
    }
  const Geometry& g = *a.geo;
  for (int64_t it = i0; it < i1; ++it)
    for (int m = 0; m < MW && it * MW + m < ncol; ++m) {
      const int64_t col = it * MW + m, ci = col / a.ntap;
      const Tap& tp = a.taps[col % a.ntap];
      for (int64_t co = 0; co < a.Cout; ++co) {
        if (tp.anchor && !g.anchor_read(co, ci)) continue;  // stays exactly 0
        const int64_t cb = co / NW;
        dw[((co * a.Cin + ci) * a.kh + tp.r) * a.kw + tp.s] =
            acc[static_cast<size_t>((((it - i0) * ncb + cb) * MW + m) * NW + co % NW)];
      }
    }
}

template <typename T, int Isa>
GENFAST_INLINE void wgrad_dispatch(const Wgrad& a, int64_t i0, int64_t i1) {
  constexpr int NV = WShape<T, Isa>::NV;
  if constexpr (NV > 1)
    if (a.nv == 1) return wgrad_items<T, Isa, 1>(a, i0, i1);
  if constexpr (NV > 2)
    if (a.nv == 2) return wgrad_items<T, Isa, 2>(a, i0, i1);
  if constexpr (NV > 3)
    if (a.nv == 3) return wgrad_items<T, Isa, 3>(a, i0, i1);
  wgrad_items<T, Isa, NV>(a, i0, i1);
}

GENFAST_CONV_ISA_COPIES(wgrad_f32, (const Wgrad& a, int64_t i0, int64_t i1), (a, i0, i1),
                        wgrad_dispatch<float, kIsa>(a, i0, i1))
GENFAST_CONV_ISA_COPIES(wgrad_f64, (const Wgrad& a, int64_t i0, int64_t i1), (a, i0, i1),
                        wgrad_dispatch<double, kIsa>(a, i0, i1))

#pragma GCC diagnostic pop

template <typename T>
void run_wgrad(const Geometry& g, const T* gy, const T* x, T* dw, int num_threads) {
  std::fill(dw, dw + g.Cout * g.Cin * g.kh * g.kw, T(0));
  const std::vector<Tap> taps = read_taps(g);
  const int64_t ntap = static_cast<int64_t>(taps.size());
  if (ntap == 0 || g.B == 0 || g.Cout == 0 || g.Cin == 0) return;
  const int isa = isa::active();
  const int64_t vl = wtile_vl<T>(isa), mw = wtile_mw<T>(isa);
  int64_t b[4];
  tap_bounds(taps, g, b);
  Wgrad a{};
  a.B = g.B, a.Cin = g.Cin, a.Cout = g.Cout, a.kh = g.kh, a.kw = g.kw, a.ntap = ntap;
  a.nv = std::min<int64_t>(wtile_nv<T>(isa), (g.Cout + vl - 1) / vl);
  a.ldg = (g.Cout + a.nv * vl - 1) / (a.nv * vl) * (a.nv * vl), a.taps = taps.data(), a.geo = &g, a.dw = dw;
  a.lay = wide_layout(g.H, g.W, g.ho1(), g.wo1(), b[0], b[1], b[2], b[3], 1);
  a.wo = g.wo1();
  const std::vector<int64_t> shift = tap_shifts(taps, g, a.lay.L, false);
  a.shift = shift.data();
  const Wide& w = a.lay;
  // Both operands in their layouts, for every image (one pass over memory; the tiles then
  // read contiguous runs): g transposed onto the wide plane, x into its padded copy.
  std::unique_ptr<T[]> gt(new T[static_cast<size_t>(g.B * w.n_out * a.ldg)]);
  std::unique_ptr<T[]> xp(new T[static_cast<size_t>(g.B * g.Cin * w.P)]);
  parallel_for(g.B * (1 + g.Cin), w.P, num_threads, [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) {
      const int64_t n = r / (1 + g.Cin), c = r % (1 + g.Cin);
      if (c == 0) {
        T* d = gt.get() + n * w.n_out * a.ldg;
        std::fill(d, d + w.n_out * a.ldg, T(0));
        for (int64_t i = 0; i < g.Ho; ++i)
          for (int64_t j = 0; j < g.Wo; ++j) {
            T* o = d + (i * g.sh * w.L + j * g.sw) * a.ldg;
            const T* s = gy + (n * g.Cout * g.Ho + i) * g.Wo + j;
            for (int64_t co = 0; co < g.Cout; ++co) o[co] = s[co * g.Ho * g.Wo];
          }
      } else {
        T* d = xp.get() + (n * g.Cin + c - 1) * w.P;
        std::fill(d, d + w.P, T(0));
        place_plane(x + (n * g.Cin + c - 1) * g.H * g.W, g.H, g.W, 1, 1, w.L, d + w.off);
      }
    }
  });
  a.gt = gt.get(), a.xp = xp.get();
  const int64_t tiles = (g.Cin * ntap + mw - 1) / mw;
  parallel_for(tiles, g.B * w.n_out * mw * a.ldg, num_threads, [&](int64_t i0, int64_t i1) {
    sizeof(T) == 4 ? wgrad_f32(isa, a, i0, i1) : wgrad_f64(isa, a, i0, i1);
  });
}

}  // namespace

void masked_conv2d_fwd(const void* x, const void* w, const void* b, void* y, int64_t B,
                       int64_t Cin, int64_t Cout, int64_t H, int64_t W, int64_t Ho, int64_t Wo,
                       int64_t kh, int64_t kw, int64_t sh, int64_t sw, int64_t pt, int64_t pl,
                       int64_t rows, int64_t cols, int center, int64_t G, bool accumulate,
                       int dtype, int num_threads) {
  const bool f32 = cpu_is_float32(dtype, "masked_conv2d_fwd");
  const Geometry g{B, Cin, Cout, H, W, Ho, Wo, kh, kw, sh, sw, pt, pl, rows, cols, center, G};
  check_geometry("masked_conv2d_fwd", g);
  if (B == 0 || Cout == 0 || Ho == 0 || Wo == 0) return;
  if (f32)
    run_corr(g, static_cast<const float*>(w), static_cast<const float*>(x),
             static_cast<const float*>(b), static_cast<float*>(y), false, accumulate,
             num_threads);
  else
    run_corr(g, static_cast<const double*>(w), static_cast<const double*>(x),
             static_cast<const double*>(b), static_cast<double*>(y), false, accumulate,
             num_threads);
}

void masked_conv2d_bwd_input(const void* gy, const void* w, void* dx, int64_t B, int64_t Cin,
                             int64_t Cout, int64_t H, int64_t W, int64_t Ho, int64_t Wo,
                             int64_t kh, int64_t kw, int64_t sh, int64_t sw, int64_t pt,
                             int64_t pl, int64_t rows, int64_t cols, int center, int64_t G,
                             int dtype, int num_threads) {
  const bool f32 = cpu_is_float32(dtype, "masked_conv2d_bwd_input");
  const Geometry g{B, Cin, Cout, H, W, Ho, Wo, kh, kw, sh, sw, pt, pl, rows, cols, center, G};
  check_geometry("masked_conv2d_bwd_input", g);
  if (B == 0 || Cin == 0 || H == 0 || W == 0) return;
  if (Ho == 0 || Wo == 0) {  // no output reads x: its gradient is 0
    const int64_t n = B * Cin * H * W;
    f32 ? std::memset(dx, 0, static_cast<size_t>(n) * 4)
        : std::memset(dx, 0, static_cast<size_t>(n) * 8);
    return;
  }
  if (f32)
    run_corr(g, static_cast<const float*>(w), static_cast<const float*>(gy), static_cast<const float*>(nullptr),
             static_cast<float*>(dx), true, false, num_threads);
  else
    run_corr(g, static_cast<const double*>(w), static_cast<const double*>(gy), static_cast<const double*>(nullptr),
             static_cast<double*>(dx), true, false, num_threads);
}

void masked_conv2d_bwd_weight(const void* gy, const void* x, void* dw, int64_t B, int64_t Cin,
                              int64_t Cout, int64_t H, int64_t W, int64_t Ho, int64_t Wo,
                              int64_t kh, int64_t kw, int64_t sh, int64_t sw, int64_t pt,
                              int64_t pl, int64_t rows, int64_t cols, int center, int64_t G,
                              int dtype, int num_threads) {
  const bool f32 = cpu_is_float32(dtype, "masked_conv2d_bwd_weight");
  Geometry g{B, Cin, Cout, H, W, Ho, Wo, kh, kw, sh, sw, pt, pl, rows, cols, center, G};
  check_geometry("masked_conv2d_bwd_weight", g);
  if (Ho == 0 || Wo == 0) g.B = 0;  // no output: dw is 0
  if (f32)
    run_wgrad(g, static_cast<const float*>(gy), static_cast<const float*>(x),
              static_cast<float*>(dw), num_threads);
  else
    run_wgrad(g, static_cast<const double*>(gy), static_cast<const double*>(x),
              static_cast<double*>(dw), num_threads);
}

}  // namespace genfast::cpu
