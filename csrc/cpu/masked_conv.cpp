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
// works on into its own zero-padded buffer once. bwd_weight is dot products over flat
// positions: dw[co][ci, tap] = <g_wide[co], x_padded[ci] shifted by the tap>, in fixed chunks of
// (image, position) whose partials are summed in chunk order: the bits do not depend on the
// thread count.
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

struct Geometry {
  int64_t B, Cin, Cout, H, W, Ho, Wo, kh, kw, sh, sw, pt, pl, rows, cols;
  int center;
  int64_t G;
  // The stride-1 plane of a strided conv's outputs: rows (Ho-1)*sh + 1, columns (Wo-1)*sw + 1.
  int64_t ho1() const { return (Ho - 1) * sh + 1; }
  int64_t wo1() const { return (Wo - 1) * sw + 1; }
  int64_t grp(int64_t c, int64_t C) const { return c * G / C; }
  // Whether the pair (co, ci) reads the anchor tap (rows, cols).
  bool anchor_read(int64_t co, int64_t ci) const {
    const int64_t gi = grp(ci, Cin), go = grp(co, Cout);
    return center == 1 ? gi < go : center == 2 && gi <= go;
  }
};

void check_geometry(const char* who, const Geometry& g) {
  const std::string w(who);
  if (g.B < 0 || g.Cin < 0 || g.Cout < 0 || g.H < 0 || g.W < 0 || g.Ho < 0 || g.Wo < 0 ||
      g.kh < 0 || g.kw < 0)
    throw std::invalid_argument(w + ": negative size");
  if (g.sh < 1 || g.sw < 1) throw std::invalid_argument(w + ": stride must be >= 1");
  if (g.pt < 0 || g.pl < 0) throw std::invalid_argument(w + ": padding must be >= 0");
  if (g.rows < 0 || g.rows > g.kh || g.cols < 0 || g.cols > g.kw)
    throw std::invalid_argument(w + ": rows must be in [0, kh] and cols in [0, kw]");
  if (g.center < 0 || g.center > 2) throw std::invalid_argument(w + ": center must be 0, 1 or 2");
  if (g.G < 1) throw std::invalid_argument(w + ": colour groups must be >= 1");
}

struct Tap {
  int64_t r, s;
  bool anchor;
};

// The read taps in the order every sum runs: rows above, the anchor row's left part, the
// anchor (only where some pair reads it).
std::vector<Tap> read_taps(const Geometry& g) {
  std::vector<Tap> taps;
  for (int64_t r = 0; r < g.rows; ++r)
    for (int64_t s = 0; s < g.kw; ++s) taps.push_back({r, s, false});
  if (g.rows < g.kh) {
    for (int64_t s = 0; s < g.cols; ++s) taps.push_back({g.rows, s, false});
    const bool any = g.Cin > 0 && g.Cout > 0 &&
                     (g.center == 2 || (g.center == 1 && g.grp(g.Cout - 1, g.Cout) > 0));
    if (g.cols < g.kw && any) taps.push_back({g.rows, g.cols, true});
  }
  return taps;
}

// Weights packed per block of MR output rows: for each tap, the block's channel range [lo, lo +
// nc) of MR weights each; pairs outside the region get an explicit 0 (the weight there is never
// read, whatever it holds).
template <typename T>
struct Packed {
  std::vector<T> w;
  std::vector<int64_t> woff, lo, nc;  // per block; per (block, tap); per (block, tap)
};

template <typename T>
Packed<T> pack_region(const T* w, const Geometry& g, const std::vector<Tap>& taps, bool trans,
                      int mr) {
  const int64_t mout = trans ? g.Cin : g.Cout, cred = trans ? g.Cout : g.Cin;
  const int64_t nmb = (mout + mr - 1) / mr, ntap = static_cast<int64_t>(taps.size());
  const auto read = [&](int64_t m, int64_t c) {
    return trans ? g.anchor_read(c, m) : g.anchor_read(m, c);
  };
  Packed<T> p;
  p.woff.resize(static_cast<size_t>(nmb));
  p.lo.resize(static_cast<size_t>(nmb * ntap));
  p.nc.resize(static_cast<size_t>(nmb * ntap));
  for (int64_t mb = 0; mb < nmb; ++mb) {
    p.woff[mb] = static_cast<int64_t>(p.w.size());
    const int64_t m1 = std::min(mout, (mb + 1) * mr);
    for (int64_t t = 0; t < ntap; ++t) {
      const Tap& tp = taps[t];
      int64_t lo = 0, hi = cred;
      if (tp.anchor) {
        lo = cred, hi = 0;
        for (int64_t m = mb * mr; m < m1; ++m)
          for (int64_t c = 0; c < cred; ++c)
            if (read(m, c)) lo = std::min(lo, c), hi = std::max(hi, c + 1);
        if (hi <= lo) lo = hi = 0;
      }
      p.lo[mb * ntap + t] = lo;
      p.nc[mb * ntap + t] = hi - lo;
      for (int64_t c = lo; c < hi; ++c)
        for (int m = 0; m < mr; ++m) {
          const int64_t row = mb * mr + m, co = trans ? c : row, ci = trans ? row : c;
          const bool in = row < mout && (!tp.anchor || read(row, c));
          p.w.push_back(in ? w[((co * g.Cin + ci) * g.kh + tp.r) * g.kw + tp.s] : T(0));
        }
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
  int64_t ntap;
  const int64_t* shift;  // per tap: dr*L + dc
  const void* wp;
  const int64_t *woff, *lo, *nc;
  int64_t tt, nchunk;  // flat positions per item, items per image
  bool accumulate;
};

template <typename T, int Isa>
GENFAST_INLINE void corr_items(const Corr& a, int64_t i0, int64_t i1) {
  using S = Shape<T, Isa>;
  constexpr int MR = S::MR, NR = S::NR;
  const T* src = static_cast<const T*>(a.src);
  const T* bias = static_cast<const T*>(a.bias);
  const T* wp = static_cast<const T*>(a.wp);
  T* out = static_cast<T*>(a.out);
  const Wide& w = a.lay;
  const int64_t nmb = (a.mout + MR - 1) / MR;
  std::vector<T> buf(static_cast<size_t>(a.cred * w.P), T(0));
  std::vector<T> sc(static_cast<size_t>(MR * a.tt));
  std::vector<const T*> tap(static_cast<size_t>(a.ntap));
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
      const int64_t* lo = a.lo + mb * a.ntap;
      for (int64_t t = 0; t < a.ntap; ++t)
        tap[t] = buf.data() + lo[t] * w.P + w.off + a.shift[t];
      const T* wb = wp + a.woff[mb];
      for (int64_t q = 0; q < len; q += NR)
        region_tile<T, Isa>(wb, a.ntap, tap.data(), a.nc + mb * a.ntap, w.P, p0 + q,
                            sc.data() + q, a.tt);
      // The rows of O this run covers, kept where they land on the output lattice.
      const int rows = static_cast<int>(std::min<int64_t>(MR, a.mout - mb * MR));
      const int64_t u0 = p0 / w.L, u1 = (p0 + len - 1) / w.L;
      for (int m = 0; m < rows; ++m) {
        const int64_t co = mb * MR + m;
        const T b = bias != nullptr ? bias[co] : T(0);
        T* y = out + (n * a.mout + co) * a.hy * a.wy;
        const T* s = sc.data() + m * a.tt - p0;
        for (int64_t u = u0; u <= u1; ++u) {
          if (u % a.osh != 0) continue;
          T* yr = y + (u / a.osh) * a.wy;
          const T* sr = s + u * w.L;
          const int64_t v0 = std::max<int64_t>(p0 - u * w.L, 0);
          const int64_t v1 = std::min(p0 + len - u * w.L, a.wo);
          if (a.osw == 1) {
            if (a.accumulate)
              for (int64_t v = v0; v < v1; ++v) yr[v] += sr[v] + b;
            else
              for (int64_t v = v0; v < v1; ++v) yr[v] = sr[v] + b;
            continue;
          }
          for (int64_t v = (v0 + a.osw - 1) / a.osw * a.osw; v < v1; v += a.osw)
            yr[v / a.osw] = a.accumulate ? yr[v / a.osw] + (sr[v] + b) : sr[v] + b;
        }
      }
    }
  }
}

GENFAST_CONV_ISA_COPIES(corr_f32, (const Corr& a, int64_t i0, int64_t i1), (a, i0, i1),
                        corr_items<float, kIsa>(a, i0, i1))
GENFAST_CONV_ISA_COPIES(corr_f64, (const Corr& a, int64_t i0, int64_t i1), (a, i0, i1),
                        corr_items<double, kIsa>(a, i0, i1))

// The shifts of the taps on a layout; `flip` gives the adjoint's (pt - r, pl - s).
std::vector<int64_t> tap_shifts(const std::vector<Tap>& taps, const Geometry& g, int64_t L,
                                bool flip) {
  std::vector<int64_t> sh;
  for (const Tap& t : taps) {
    const int64_t dr = t.r - g.pt, dc = t.s - g.pl;
    sh.push_back(flip ? -dr * L - dc : dr * L + dc);
  }
  return sh;
}

// The extreme tap offsets (dr, dc) of fwd; the adjoint's are their negatives.
void tap_bounds(const std::vector<Tap>& taps, const Geometry& g, int64_t* b) {
  b[0] = b[2] = INT64_MAX, b[1] = b[3] = INT64_MIN;
  for (const Tap& t : taps) {
    b[0] = std::min(b[0], t.r - g.pt), b[1] = std::max(b[1], t.r - g.pt);
    b[2] = std::min(b[2], t.s - g.pl), b[3] = std::max(b[3], t.s - g.pl);
  }
}

template <typename T>
void run_corr(const Geometry& g, const T* w, const T* src, const T* bias, T* out, bool adjoint,
              bool accumulate, int num_threads) {
  const std::vector<Tap> taps = read_taps(g);
  const int isa = isa::active();
  const int mr = tile_mr<T>(isa), nr = tile_nr<T>(isa);
  Corr a{};
  a.src = src, a.bias = bias, a.out = out, a.B = g.B, a.accumulate = accumulate;
  a.ntap = static_cast<int64_t>(taps.size());
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
  if (a.ntap == 0 || a.cred == 0) {  // nothing is read: the output is the bias (or 0)
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
  a.shift = shift.data(), a.wp = p.w.data(), a.woff = p.woff.data(), a.lo = p.lo.data();
  a.nc = p.nc.data();
  // About 256 KB of source columns per run: they stay in L2 while every output block of the
  // run passes over them. Runs get shorter when there are too few images to feed the threads.
  const int64_t n_out = a.lay.n_out;
  int64_t tt = std::max<int64_t>(1, (int64_t{1} << 16) / a.cred);
  const int64_t want = (4 * int64_t{std::max(num_threads, 1)} + g.B - 1) / std::max<int64_t>(g.B, 1);
  tt = std::min(tt, (n_out + want - 1) / want);
  a.tt = std::clamp<int64_t>((tt + nr - 1) / nr * nr, nr, (n_out + nr - 1) / nr * nr);
  a.nchunk = (n_out + a.tt - 1) / a.tt;
  const int64_t work = a.tt * a.ntap * a.cred * a.mout;
  parallel_for(g.B * a.nchunk, work, num_threads, [&](int64_t i0, int64_t i1) {
    sizeof(T) == 4 ? corr_f32(isa, a, i0, i1) : corr_f64(isa, a, i0, i1);
  });
}

// dW partials: item = (chunk of the flattened (image, flat position) range, slice of mrows
// output channels); it writes part[chunk][co][ci*ntap + tap] for its slice.
struct Wgrad {
  const void* gw;  // g placed on the wide output plane: (B, Cout, n_out), zero off the lattice
  const void* xp;  // x in its padded copy: (B, Cin, P)
  void* part;
  int64_t B, Cin, Cout, ntap;
  const int64_t* shift;
  Wide lay;
  int64_t chunk, msplit, mrows;
};

struct Range {
  int64_t n, p0, len;
};

template <typename T, int Isa, int MW, int NW>
GENFAST_INLINE void wgrad_items(const Wgrad& a, int64_t i0, int64_t i1) {
  using V = typename Shape<T, Isa>::V;
  const T* gw = static_cast<const T*>(a.gw);
  const T* xp = static_cast<const T*>(a.xp);
  const Wide& w = a.lay;
  const int64_t ncol = a.Cin * a.ntap, total = a.B * w.n_out;
  std::vector<Range> ranges;
  for (int64_t it = i0; it < i1; ++it) {
    const int64_t chunk = it / a.msplit, mlo = (it % a.msplit) * a.mrows;
    const int64_t mhi = std::min(a.Cout, mlo + a.mrows);
    ranges.clear();
    for (int64_t f = chunk * a.chunk, f1 = std::min(total, f + a.chunk); f < f1;) {
      const int64_t n = f / w.n_out, p0 = f % w.n_out, len = std::min(w.n_out - p0, f1 - f);
      ranges.push_back({n, p0, len});
      f += len;
    }
    T* part = static_cast<T*>(a.part) + chunk * a.Cout * ncol;
    for (int64_t m0 = mlo; m0 < mhi; m0 += MW)
      for (int64_t n0 = 0; n0 < ncol; n0 += NW) {
        V acc[MW][NW];
        for (int m = 0; m < MW; ++m)
          for (int k = 0; k < NW; ++k) acc[m][k] = V{};
        const T* am[MW];
        const T* bn[NW];
        for (const Range& q : ranges) {
          // Rows past the block's edge repeat the last row; their sums are never stored.
          for (int m = 0; m < MW; ++m)
            am[m] = gw + (q.n * a.Cout + std::min(m0 + m, a.Cout - 1)) * w.n_out + q.p0;
          for (int k = 0; k < NW; ++k) {
            const int64_t col = std::min(n0 + k, ncol - 1), ci = col / a.ntap;
            bn[k] = xp + (q.n * a.Cin + ci) * w.P + w.off + a.shift[col % a.ntap] + q.p0;
          }
          dot_tile<T, Isa, MW, NW>(am, bn, q.len, acc);
        }
        for (int m = 0; m < MW && m0 + m < mhi; ++m)
          for (int k = 0; k < NW && n0 + k < ncol; ++k)
            part[(m0 + m) * ncol + n0 + k] = lane_total<T>(acc[m][k]);
      }
  }
}

template <typename T, int Isa>
GENFAST_INLINE void wgrad_dispatch(const Wgrad& a, int64_t i0, int64_t i1) {
  using S = Shape<T, Isa>;
  wgrad_items<T, Isa, S::MW, S::NW>(a, i0, i1);
}

GENFAST_CONV_ISA_COPIES(wgrad_f32, (const Wgrad& a, int64_t i0, int64_t i1), (a, i0, i1),
                        wgrad_dispatch<float, kIsa>(a, i0, i1))
GENFAST_CONV_ISA_COPIES(wgrad_f64, (const Wgrad& a, int64_t i0, int64_t i1), (a, i0, i1),
                        wgrad_dispatch<double, kIsa>(a, i0, i1))

#pragma GCC diagnostic pop

template <typename T>
void run_wgrad(const Geometry& g, const T* gy, const T* x, T* dw, int num_threads) {
  const int64_t wsize = g.Cout * g.Cin * g.kh * g.kw;
  std::fill(dw, dw + wsize, T(0));
  const std::vector<Tap> taps = read_taps(g);
  const int64_t ntap = static_cast<int64_t>(taps.size()), ncol = g.Cin * ntap;
  if (ntap == 0 || g.B == 0 || g.Cout == 0 || g.Cin == 0) return;
  const int isa = isa::active();
  int64_t b[4];
  tap_bounds(taps, g, b);
  Wgrad a{};
  a.B = g.B, a.Cin = g.Cin, a.Cout = g.Cout, a.ntap = ntap;
  a.lay = wide_layout(g.H, g.W, g.ho1(), g.wo1(), b[0], b[1], b[2], b[3], tile_nr<T>(isa));
  const std::vector<int64_t> shift = tap_shifts(taps, g, a.lay.L, false);
  a.shift = shift.data();
  const Wide& w = a.lay;
  // Both operands in their wide layouts, for every image (a pass over memory; the dot
  // products then read contiguous runs). Each plane is zeroed and placed by one thread.
  std::unique_ptr<T[]> gw(new T[static_cast<size_t>(g.B * g.Cout * w.n_out)]);
  std::unique_ptr<T[]> xp(new T[static_cast<size_t>(g.B * g.Cin * w.P)]);
  parallel_for(g.B * (g.Cout + g.Cin), w.P, num_threads, [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) {
      const int64_t n = r / (g.Cout + g.Cin), c = r % (g.Cout + g.Cin);
      if (c < g.Cout) {
        T* d = gw.get() + (n * g.Cout + c) * w.n_out;
        std::fill(d, d + w.n_out, T(0));
        place_plane(gy + (n * g.Cout + c) * g.Ho * g.Wo, g.Ho, g.Wo, g.sh, g.sw, w.L, d);
      } else {
        T* d = xp.get() + (n * g.Cin + c - g.Cout) * w.P;
        std::fill(d, d + w.P, T(0));
        place_plane(x + (n * g.Cin + c - g.Cout) * g.H * g.W, g.H, g.W, 1, 1, w.L, d + w.off);
      }
    }
  });
  a.gw = gw.get(), a.xp = xp.get();
  // The chunking depends on the shapes only. Partials are capped at 2^22 values in all.
  const int64_t psize = g.Cout * ncol, total = g.B * w.n_out;
  const int64_t cap = std::max<int64_t>(1, (int64_t{1} << 22) / psize);
  const int64_t nchunks = std::min((total + 8191) / 8192, cap);
  a.chunk = (total + nchunks - 1) / nchunks;
  const int64_t items = (total + a.chunk - 1) / a.chunk;
  // With few chunks the output channels are split too (whole MW-row tiles), so big weights
  // still spread over threads; each dW value is summed by one item whatever the split.
  const int64_t mw = tile_mw<T>(isa), mtiles = (g.Cout + mw - 1) / mw;
  a.msplit = std::min(mtiles, (16 + items - 1) / items);
  a.mrows = (mtiles + a.msplit - 1) / a.msplit * mw;
  std::vector<T> part(static_cast<size_t>(items * psize));
  a.part = part.data();
  parallel_for(items * a.msplit, a.chunk * psize / a.msplit, num_threads,
               [&](int64_t i0, int64_t i1) {
                 sizeof(T) == 4 ? wgrad_f32(isa, a, i0, i1) : wgrad_f64(isa, a, i0, i1);
               });
  parallel_for(g.Cout, ncol * items, num_threads, [&](int64_t c0, int64_t c1) {
    for (int64_t co = c0; co < c1; ++co)
      for (int64_t ci = 0; ci < g.Cin; ++ci)
        for (int64_t t = 0; t < ntap; ++t) {
          const Tap& tp = taps[t];
          if (tp.anchor && !g.anchor_read(co, ci)) continue;  // stays exactly 0
          const int64_t e = co * ncol + ci * ntap + t;
          T s = part[e];
          for (int64_t i = 1; i < items; ++i) s += part[i * psize + e];
          dw[((co * g.Cin + ci) * g.kh + tp.r) * g.kw + tp.s] = s;
        }
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
