// The geometry, the wide-plane layout and the register tiles of the CPU region convolution
// (masked_conv.cpp).
//
// A stride-1 2-D correlation out[i][j] = sum_t sum_c W_t[m][c] * src[c][i + dr_t][j + dc_t] is
// a sum of shifted GEMMs once both planes share one row stride L and src carries zero margins:
// flattened, out[p] reads src[p + dr_t*L + dc_t] for every p, so a tap is a pointer offset and
// the inner loop never tests an index. Output columns j in [Wo, L) are computed and dropped
// (L - Wo is the larger column margin only: the right margin of one row is the left margin of
// the next, so a 28-wide plane with a 7-wide kernel costs 31/28, not 34/28). The tile is
// causal_conv_tile.h's outer product (MR output channels x NR flat positions in registers), but
// each tap carries its own channel range: a region's anchor tap reads, per output channel, only
// the channels its colour group allows (a prefix or a suffix), so its range is the block's.
#pragma once
#include <algorithm>
#include <cstdint>
#include <climits>
#include <cstring>
#include <stdexcept>
#include <string>
#include <vector>

#include "cpu/causal_conv_tile.h"

namespace genfast::masked_tile {

using conv_tile::loadu;
using conv_tile::Shape;
using conv_tile::storeu;

// The call's geometry (masked_conv.h's parameters) and the taps it reads.
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

inline void check_geometry(const char* who, const Geometry& g) {
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
inline std::vector<Tap> read_taps(const Geometry& g) {
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

// The shifts of the taps on a layout; `flip` gives the adjoint's (pt - r, pl - s).
inline std::vector<int64_t> tap_shifts(const std::vector<Tap>& taps, const Geometry& g,
                                       int64_t L, bool flip) {
  std::vector<int64_t> sh;
  for (const Tap& t : taps) {
    const int64_t dr = t.r - g.pt, dc = t.s - g.pl;
    sh.push_back(flip ? -dr * L - dc : dr * L + dc);
  }
  return sh;
}

// The extreme tap offsets (dr, dc) of fwd (0 without taps); the adjoint's are their negatives.
inline void tap_bounds(const std::vector<Tap>& taps, const Geometry& g, int64_t* b) {
  b[0] = b[1] = b[2] = b[3] = 0;
  if (taps.empty()) return;
  b[0] = b[2] = INT64_MAX, b[1] = b[3] = INT64_MIN;
  for (const Tap& t : taps) {
    b[0] = std::min(b[0], t.r - g.pt), b[1] = std::max(b[1], t.r - g.pt);
    b[2] = std::min(b[2], t.s - g.pl), b[3] = std::max(b[3], t.s - g.pl);
  }
}

// Where a plane sits in its zero-padded, row-stride-L copy.
struct Wide {
  int64_t L;      // row stride shared by the padded source and the computed output plane
  int64_t off;    // flat index of source (row 0, column 0) in its padded copy
  int64_t P;      // padded copy size per channel (reads of every NR-wide tile included)
  int64_t n_out;  // flat positions of the computed output plane: Ho * L
};

// The layout of a correlation from an (Hs, Ws) source to an (Ho, Wo) output whose taps shift by
// dr in [drmin, drmax], dc in [dcmin, dcmax]. A read of column c < 0 lands in the previous
// row's columns >= Ws (zeros: L >= Ws - dcmin), one of column c >= Ws in this row's (L >= Wo +
// dcmax); rows above take `top` zero rows (one more, for the column wrap of the first row).
inline Wide wide_layout(int64_t Hs, int64_t Ws, int64_t Ho, int64_t Wo, int64_t drmin,
                        int64_t drmax, int64_t dcmin, int64_t dcmax, int64_t nr) {
  Wide a{};
  a.L = std::max({Ws + std::max<int64_t>(0, -dcmin), Wo + std::max<int64_t>(0, dcmax),
                  int64_t{1}});
  a.off = (std::max<int64_t>(0, -drmin) + 1) * a.L;
  a.n_out = Ho * a.L;
  const int64_t tiles_end = (a.n_out + nr - 1) / nr * nr;
  a.P = std::max(a.off + Hs * a.L, a.off + tiles_end + std::max<int64_t>(0, drmax) * a.L +
                                       std::max<int64_t>(0, dcmax)) + nr;
  return a;
}

// Places an (h, w) plane at rows u*ssh, columns v*ssw of dst (row stride L): ssh, ssw > 1 is
// the zero insertion that turns a strided conv's adjoint into a stride-1 correlation. Writes
// only the data positions: dst's zeros are written once and stay for every later plane.
template <typename T>
inline void place_plane(const T* src, int64_t h, int64_t w, int64_t ssh, int64_t ssw, int64_t L,
                        T* dst) {
  for (int64_t u = 0; u < h; ++u) {
    T* row = dst + u * ssh * L;
    const T* s = src + u * w;
    if (ssw == 1) {
      std::memcpy(row, s, static_cast<size_t>(w) * sizeof(T));
    } else {
      for (int64_t v = 0; v < w; ++v) row[v * ssw] = s[v];
    }
  }
}

#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wpsabi"  // vector types cross only always_inline calls

// One MR x (NVT vectors) tile: out[m*ldo + q] = sum_c sum_t wp[..][m] * src[c*ld + shift[t] + q]
// for m < MR, q < NVT*VL, over the nfull full taps and, for c in [alo, ahi), the anchor tap
// (shift[nfull]); wp holds MR weights per (c, tap) in that order. Channels outermost: the taps
// of one channel read one small window of its plane, which stays in L1 (taps outermost would
// stream every channel's rows from L2 once per tap). The sum order depends on nothing but
// the shapes, so no output depends on the tiling or the thread count. A run's last tile takes
// the fewest vectors that cover it (NVT < NV). The shape is causal_conv_tile.h's Shape (8 x 3
// on AVX-512: 24 accumulators, three loads and a broadcast, no spill).
template <typename T, int Isa, int NVT>
GENFAST_INLINE void region_tile(const T* wp, int64_t cred, int64_t nfull, const int64_t* shift,
                                int64_t alo, int64_t ahi, const T* src, int64_t ld, T* out,
                                int64_t ldo) {
  using V = typename Shape<T, Isa>::V;
  constexpr int MR = Shape<T, Isa>::MR, VL = Shape<T, Isa>::VL;
  V acc[MR][NVT];
#pragma GCC unroll 16
  for (int m = 0; m < MR; ++m)
#pragma GCC unroll 4
    for (int j = 0; j < NVT; ++j) acc[m][j] = V{};
  const auto channel = [&](const T* s, int64_t ntap) __attribute__((always_inline)) {
    for (int64_t t = 0; t < ntap; ++t, wp += MR) {
      const T* st = s + shift[t];
      V xv[NVT];
#pragma GCC unroll 4
      for (int j = 0; j < NVT; ++j) xv[j] = loadu<V>(st + j * VL);
#pragma GCC unroll 16
      for (int m = 0; m < MR; ++m) {
        const T w = wp[m];
#pragma GCC unroll 4
        for (int j = 0; j < NVT; ++j) acc[m][j] += w * xv[j];
      }
    }
  };
  int64_t c = 0;
  for (; c < alo; ++c) channel(src + c * ld, nfull);
  for (; c < ahi; ++c) channel(src + c * ld, nfull + 1);
  for (; c < cred; ++c) channel(src + c * ld, nfull);
#pragma GCC unroll 16
  for (int m = 0; m < MR; ++m)
#pragma GCC unroll 4
    for (int j = 0; j < NVT; ++j) storeu(out + m * ldo + j * VL, acc[m][j]);
}

// region_tile over `len` <= NR positions: full width, or the narrowest that covers them.
template <typename T, int Isa, typename... A>
GENFAST_INLINE void region_tile_n(int64_t len, A... args) {
  using C = Shape<T, Isa>;
  const int64_t nv = (len + C::VL - 1) / C::VL;
  if constexpr (C::NV > 1)
    if (nv == 1) return region_tile<T, Isa, 1>(args...);
  if constexpr (C::NV > 2)
    if (nv == 2) return region_tile<T, Isa, 2>(args...);
  if constexpr (C::NV > 3)
    if (nv == 3) return region_tile<T, Isa, 3>(args...);
  region_tile<T, Isa, C::NV>(args...);
}

// bwd_weight's tile: MW columns (input channel, tap) x NW output channels in registers while
// the reduction over flat positions p streams past: per p, NV vector loads of g^T[p][co..]
// (output channels are the vector axis: g is transposed once, so the loads are contiguous)
// and MW scalars of x, one per column, as broadcasts. An outer product like fwd's, so no lane
// sums and no unaligned row loads; the accumulators persist in `acc` across calls, so the
// reduction can run in position blocks that keep g^T in L2.
template <typename T, int Isa>
struct WShape {
  static constexpr int VL = Shape<T, Isa>::VL;
  static constexpr int NV = Isa == isa::kAvx512 || Isa == isa::kScalar ? 4 : 2;
  static constexpr int MW = Isa == isa::kAvx512 || Isa == isa::kAvx2 ? 6 : 4;
  static constexpr int NW = VL * NV;
};
template <typename T>
inline int wtile_vl(int isa) {
  switch (isa) {
    case isa::kAvx512: return WShape<T, isa::kAvx512>::VL;
    case isa::kAvx2: return WShape<T, isa::kAvx2>::VL;
    case isa::kScalar: return WShape<T, isa::kScalar>::VL;
    default: return WShape<T, isa::kBase>::VL;
  }
}
template <typename T>
inline int wtile_nv(int isa) {
  switch (isa) {
    case isa::kAvx512: return WShape<T, isa::kAvx512>::NV;
    case isa::kAvx2: return WShape<T, isa::kAvx2>::NV;
    case isa::kScalar: return WShape<T, isa::kScalar>::NV;
    default: return WShape<T, isa::kBase>::NV;
  }
}
template <typename T>
inline int wtile_mw(int isa) {
  switch (isa) {
    case isa::kAvx512: return WShape<T, isa::kAvx512>::MW;
    case isa::kAvx2: return WShape<T, isa::kAvx2>::MW;
    case isa::kScalar: return WShape<T, isa::kScalar>::MW;
    default: return WShape<T, isa::kBase>::MW;
  }
}

// acc[m*NW + n] (+)= sum over rows u < nrows, columns v < wo of x[m][p] * gt[p*ldg + n],
// p = u*L + v, for m < MW, n < NW = NV*VL; `first` starts from 0. The wide plane's columns v
// >= wo hold g = 0 and are skipped (a tenth of a 28-wide plane). Rows, then columns, run in
// order, so each sum's order depends on the shapes only. NV is at most WShape's, fewer when
// C_out needs fewer vectors (a 16-channel conv takes one).
template <typename T, int Isa, int NV>
GENFAST_INLINE void wgrad_tile(const T* const* x, const T* gt, int64_t ldg, int64_t nrows,
                               int64_t L, int64_t wo, T* acc_mem, bool first) {
  using W = WShape<T, Isa>;
  using V = typename Shape<T, Isa>::V;
  constexpr int MW = W::MW, VL = W::VL, NW = NV * VL;
  V acc[MW][NV];
#pragma GCC unroll 8
  for (int m = 0; m < MW; ++m)
#pragma GCC unroll 4
    for (int j = 0; j < NV; ++j) acc[m][j] = first ? V{} : loadu<V>(acc_mem + m * NW + j * VL);
  const T* xm[MW];
#pragma GCC unroll 8
  for (int m = 0; m < MW; ++m) xm[m] = x[m];
  for (int64_t u = 0; u < nrows; ++u) {
    const T* g = gt + u * L * ldg;
    for (int64_t v = 0, p = u * L; v < wo; ++v, ++p, g += ldg) {
      V gv[NV];
#pragma GCC unroll 4
      for (int j = 0; j < NV; ++j) gv[j] = loadu<V>(g + j * VL);
#pragma GCC unroll 8
      for (int m = 0; m < MW; ++m) {
        const T xv = xm[m][p];
#pragma GCC unroll 4
        for (int j = 0; j < NV; ++j) acc[m][j] += xv * gv[j];
      }
    }
  }
#pragma GCC unroll 8
  for (int m = 0; m < MW; ++m)
#pragma GCC unroll 4
    for (int j = 0; j < NV; ++j) storeu(acc_mem + m * NW + j * VL, acc[m][j]);
}

#pragma GCC diagnostic pop

}  // namespace genfast::masked_tile
