// The wide-plane layout and the register tile of the CPU region convolution (masked_conv.cpp).
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
#include <cstring>

#include "cpu/causal_conv_tile.h"

namespace genfast::masked_tile {

using conv_tile::loadu;
using conv_tile::Shape;
using conv_tile::storeu;

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

// One MR x NR tile: out[m*ldo + q] = sum_t sum_{c < nc[t]} wp[...][m] * src[t][c*ld + off + q]
// for every m < MR, q < NR (wp: per tap, nc[t] packed columns of MR weights). The sum runs over
// taps, then channels, whatever the tiling, so no output depends on the thread count.
template <typename T, int Isa>
GENFAST_INLINE void region_tile(const T* wp, int64_t ntap, const T* const* src, const int64_t* nc,
                                int64_t ld, int64_t off, T* out, int64_t ldo) {
  using S = Shape<T, Isa>;
  using V = typename S::V;
  constexpr int MR = S::MR, NV = S::NV, VL = S::VL;
  V acc[MR][NV];
#pragma GCC unroll 16
  for (int m = 0; m < MR; ++m)
#pragma GCC unroll 4
    for (int j = 0; j < NV; ++j) acc[m][j] = V{};
  for (int64_t t = 0; t < ntap; ++t) {
    const T* s = src[t] + off;
    for (int64_t c = 0, n = nc[t]; c < n; ++c, s += ld, wp += MR) {
      V xv[NV];
#pragma GCC unroll 4
      for (int j = 0; j < NV; ++j) xv[j] = loadu<V>(s + j * VL);
#pragma GCC unroll 16
      for (int m = 0; m < MR; ++m) {
        const T w = wp[m];
#pragma GCC unroll 4
        for (int j = 0; j < NV; ++j) acc[m][j] += w * xv[j];
      }
    }
  }
#pragma GCC unroll 16
  for (int m = 0; m < MR; ++m)
#pragma GCC unroll 4
    for (int j = 0; j < NV; ++j) storeu(out + m * ldo + j * VL, acc[m][j]);
}

#pragma GCC diagnostic pop

}  // namespace genfast::masked_tile
