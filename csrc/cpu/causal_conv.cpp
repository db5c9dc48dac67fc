// C++ CPU kernels of causal dilated conv1d. The contract (x~ = [h | x], the tap offsets, the
// update's ring and shift modes) is the module docstring of genfast/ops/causal_conv.py and the
// comments of causal_conv.h; this file implements it.
//
// Cost model. fwd and bwd_input are one correlation "out[j] = bias + sum_k W_k src[j + off0 +
// k*step]" (fwd: off0 = -P, step = d; the adjoint: step = -d), a GEMM per time tile run by the
// register-tiled micro-kernel of causal_conv_tile.h. A tile whose taps stay inside the source
// reads it in place; only tiles at the causal edge (or the time tail) copy their taps into a
// zero/history-padded scratch, so the inner loop never tests an index. Depthwise convs (one
// channel per group) have no reuse to tile for: a memory-bound row loop. bwd_weight reduces
// over (b, t): fixed time chunks, one partial dW each, summed in chunk order, so the bits do not
// depend on the thread count. The update kernel (causal_conv_update.cpp) reuses the tile and
// the depthwise row.
#include "cpu/causal_conv.h"

#include <algorithm>
#include <climits>
#include <cstdint>
#include <cstring>
#include <stdexcept>
#include <string>
#include <vector>

#include "common/dtype.h"
#include "common/parallel.h"
#include "cpu/causal_conv_tile.h"

namespace genfast::cpu {
namespace {

using namespace conv_tile;

#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wpsabi"  // vector types cross only always_inline calls

// out (B, groups*mg, tout) = bias + sum_k sum_c w[g][m][c][k] * src[b, g*cr + c, j + off0 +
// k*step], where a source index < 0 reads h (B, groups*cr, hlen; its last column is index -1)
// or 0, and an index >= tsrc reads 0.
struct Corr {
  const void* src;
  const void* h;
  int64_t hlen;
  const void* w;  // packed (pack_weights) for the tiled path, raw (C, 1, K) for depthwise
  const void* bias;
  void* out;
  int64_t B, groups, cr, mg, tsrc, tout, K, off0, step;
  int64_t tt;  // time-tile length (items are (b, tile) or (row, tile))
  int act;
};

template <typename T, int Isa>
GENFAST_INLINE void corr_items(const Corr& a, int64_t i0, int64_t i1) {
  using S = Shape<T, Isa>;
  constexpr int MR = S::MR, NR = S::NR;
  const T* src = static_cast<const T*>(a.src);
  const T* h = static_cast<const T*>(a.h);
  const T* wp = static_cast<const T*>(a.w);
  const T* bias = static_cast<const T*>(a.bias);
  T* out = static_cast<T*>(a.out);
  const int64_t ntiles = (a.tout + a.tt - 1) / a.tt, nmb = (a.mg + MR - 1) / MR;
  const int64_t cin = a.groups * a.cr, cout = a.groups * a.mg;
  std::vector<T> scratch(static_cast<size_t>(a.K * a.cr * a.tt));
  std::vector<const T*> tap(static_cast<size_t>(a.K));
  std::vector<int64_t> ld(static_cast<size_t>(a.K));
  for (int64_t item = i0; item < i1; ++item) {
    const int64_t b = item / ntiles, j0 = (item % ntiles) * a.tt;
    const int64_t n = std::min(a.tt, a.tout - j0), npad = (n + NR - 1) / NR * NR;
    for (int64_t g = 0; g < a.groups; ++g) {
      const T* s0 = src + (b * cin + g * a.cr) * a.tsrc;
      const T* h0 = h != nullptr ? h + (b * cin + g * a.cr) * a.hlen : nullptr;
      for (int64_t k = 0; k < a.K; ++k) {
        const int64_t start = j0 + a.off0 + k * a.step;
        if (start >= 0 && start + npad <= a.tsrc) {
          tap[k] = s0 + start;
          ld[k] = a.tsrc;
          continue;
        }
        T* sk = scratch.data() + k * a.cr * npad;
        for (int64_t c = 0; c < a.cr; ++c)
          tap_row(s0 + c * a.tsrc, h0 != nullptr ? h0 + c * a.hlen : nullptr, a.hlen, a.tsrc,
                  start, npad, sk + c * npad);
        tap[k] = sk;
        ld[k] = npad;
      }
      // Output-row blocks outermost: the block's packed weights stay in L1 while the tile's
      // columns stream from L2.
      for (int64_t mb = 0; mb < nmb; ++mb) {
        const int rows = static_cast<int>(std::min<int64_t>(MR, a.mg - mb * MR));
        const T* wb = wp + ((g * nmb + mb) * a.K * a.cr) * MR;
        const T* bb = bias != nullptr ? bias + g * a.mg + mb * MR : nullptr;
        T* ob = out + (b * cout + g * a.mg + mb * MR) * a.tout + j0;
        for (int64_t t = 0; t < n; t += NR)
          tile<T, Isa>(wb, a.K, a.cr, tap.data(), ld.data(), t, bb, ob + t, a.tout, rows,
                       static_cast<int>(std::min<int64_t>(NR, n - t)));
        if (a.act != 0)
          for (int m = 0; m < rows; ++m) activate(ob + m * a.tout, n, a.act);
      }
    }
  }
}

// Depthwise (cr = mg = 1): item = (row b*C + c, time tile).
template <typename T, int Isa>
GENFAST_INLINE void depthwise_items(const Corr& a, int64_t i0, int64_t i1) {
  constexpr int NR = Shape<T, Isa>::NR;
  const T* src = static_cast<const T*>(a.src);
  const T* h = static_cast<const T*>(a.h);
  const T* w = static_cast<const T*>(a.w);
  const T* bias = static_cast<const T*>(a.bias);
  const int64_t ntiles = (a.tout + a.tt - 1) / a.tt;
  std::vector<T> scratch(static_cast<size_t>(a.K * (a.tt + NR)));
  std::vector<const T*> tap(static_cast<size_t>(2 * a.K));
  // Outputs in [lo, hi) read every tap in place; only the edges go through tap_row's copies.
  int64_t lo = INT64_MIN, hi = INT64_MAX;
  for (int64_t k = 0; k < a.K; ++k) {
    lo = std::max(lo, -a.off0 - k * a.step);
    hi = std::min(hi, a.tsrc - a.off0 - k * a.step);
  }
  for (int64_t item = i0; item < i1; ++item) {
    const int64_t row = item / ntiles, c = row % a.groups, j0 = (item % ntiles) * a.tt;
    const int64_t j1 = std::min(a.tout, j0 + a.tt);
    const T* hrow = h != nullptr ? h + row * a.hlen : nullptr;
    T* o = static_cast<T*>(a.out) + row * a.tout;
    const int64_t cuts[4] = {j0, std::clamp(lo, j0, j1), std::clamp(std::max(lo, hi), j0, j1), j1};
    for (int s = 0; s < 3; ++s) {
      const int64_t s0 = cuts[s], n = cuts[s + 1] - s0;
      if (n <= 0) continue;
      for (int64_t k = 0; k < a.K; ++k)
        tap[k] = tap_row(src + row * a.tsrc, hrow, a.hlen, a.tsrc, s0 + a.off0 + k * a.step, n,
                         scratch.data() + k * a.tt);
      depthwise_row<T, Isa>(tap.data(), w + c * a.K, a.K, bias != nullptr ? bias[c] : T(0),
                            o + s0, n, scratch.data() + a.K * a.tt, tap.data() + a.K);
    }
    activate(o + j0, j1 - j0, a.act);
  }
}

GENFAST_CONV_ISA_COPIES(corr_f32, (const Corr& a, int64_t i0, int64_t i1), (a, i0, i1),
                        corr_items<float, kIsa>(a, i0, i1))
GENFAST_CONV_ISA_COPIES(corr_f64, (const Corr& a, int64_t i0, int64_t i1), (a, i0, i1),
                        corr_items<double, kIsa>(a, i0, i1))
GENFAST_CONV_ISA_COPIES(depthwise_f32, (const Corr& a, int64_t i0, int64_t i1), (a, i0, i1),
                        depthwise_items<float, kIsa>(a, i0, i1))
GENFAST_CONV_ISA_COPIES(depthwise_f64, (const Corr& a, int64_t i0, int64_t i1), (a, i0, i1),
                        depthwise_items<double, kIsa>(a, i0, i1))

// Runs the correlation: packs the weights (once per call; C_out*C_in*K values) for the active
// copy's tile shape, then (b, time tile) items in parallel. Each output is summed in the same
// order whatever the tiling, so the result does not depend on the thread count.
template <typename T>
void run_corr(Corr a, const T* w, bool trans, int num_threads) {
  const int isa = isa::active();
  const int nr = tile_nr<T>(isa);
  const bool depthwise = a.cr == 1 && a.mg == 1;
  std::vector<T> wp;
  if (!depthwise) {
    const int mr = tile_mr<T>(isa);
    wp.resize(static_cast<size_t>(packed_size(a.groups, a.mg, a.cr, a.K, mr)));
    pack_weights(w, wp.data(), a.groups, a.mg, a.cr, a.K, mr, trans);
    a.w = wp.data();
    // About 64 KB of tap columns per tile: they stay in L2 while every output-row block of
    // the tile passes over them.
    const int64_t fit = (int64_t{1} << 14) / std::max<int64_t>(1, a.cr * a.K) / nr * nr;
    a.tt = std::clamp<int64_t>(fit, nr, 1024);
  } else {
    a.w = w;
    a.tt = 2048;
  }
  const int64_t ntiles = (a.tout + a.tt - 1) / a.tt;
  const int64_t rows = depthwise ? a.B * a.groups : a.B;
  const int64_t work = a.tt * a.K * (depthwise ? 1 : a.groups * a.mg * a.cr);
  constexpr bool f32 = sizeof(T) == 4;
  parallel_for(rows * ntiles, work, num_threads, [&](int64_t i0, int64_t i1) {
    if (depthwise)
      f32 ? depthwise_f32(isa, a, i0, i1) : depthwise_f64(isa, a, i0, i1);
    else
      f32 ? corr_f32(isa, a, i0, i1) : corr_f64(isa, a, i0, i1);
  });
}

// dW partials: item i covers the flattened (b, t) range [i*chunk, (i+1)*chunk) and writes
// part[i] (Cout, Cg, K). A range is cut where a tap's source crosses from the history (or
// zeros) into x, so each (range, tap) is one contiguous row: x, h, or a zero row.
struct Wgrad {
  const void* g;
  const void* x;
  const void* h;
  void* part;
  int64_t B, groups, cg, og, T, K, d, P, chunk;
  int64_t msplit, mrows;  // item = (chunk, slice of mrows output rows per group)
};

struct Range {
  int64_t b, s0, len;
};
// Bounds the zero row (sources before x without a history) when the chunks are long.
constexpr int64_t kMaxRange = 4096;

template <typename T, int Isa, int MW, int NW>
GENFAST_INLINE void wgrad_items(const Wgrad& a, int64_t i0, int64_t i1) {
  using V = typename Shape<T, Isa>::V;
  const T* du = static_cast<const T*>(a.g);
  const T* x = static_cast<const T*>(a.x);
  const T* h = static_cast<const T*>(a.h);
  const int64_t ckk = a.cg * a.K, wsize = a.groups * a.og * ckk, bt = a.B * a.T;
  const std::vector<T> zeros(static_cast<size_t>(std::min(a.chunk, kMaxRange)), T(0));
  std::vector<Range> ranges;
  std::vector<int64_t> cuts;
  std::vector<const T*> ap, bp;
  for (int64_t it = i0; it < i1; ++it) {
    const int64_t item = it / a.msplit, mlo = (it % a.msplit) * a.mrows;
    const int64_t mhi = std::min(a.og, mlo + a.mrows);
    ranges.clear();
    for (int64_t f = item * a.chunk, f1 = std::min(bt, f + a.chunk); f < f1;) {
      const int64_t b = f / a.T, t0 = f % a.T, t1 = std::min(a.T, t0 + (f1 - f));
      cuts.assign({t0, t1});
      for (int64_t k = 0; k < a.K; ++k)
        if (a.P - k * a.d > t0 && a.P - k * a.d < t1) cuts.push_back(a.P - k * a.d);
      std::sort(cuts.begin(), cuts.end());
      for (size_t i = 0; i + 1 < cuts.size(); ++i)
        for (int64_t s = cuts[i]; s < cuts[i + 1]; s += kMaxRange)
          ranges.push_back({b, s, std::min(kMaxRange, cuts[i + 1] - s)});
      f += t1 - t0;
    }
    const int64_t nr = static_cast<int64_t>(ranges.size());
    ap.resize(static_cast<size_t>(nr * a.og));
    bp.resize(static_cast<size_t>(nr * ckk));
    T* part = static_cast<T*>(a.part) + item * wsize;
    for (int64_t g = 0; g < a.groups; ++g) {
      for (int64_t r = 0; r < nr; ++r) {
        const Range& q = ranges[r];
        for (int64_t m = 0; m < a.og; ++m)
          ap[r * a.og + m] = du + ((q.b * a.groups + g) * a.og + m) * a.T + q.s0;
        for (int64_t c = 0; c < a.cg; ++c) {
          const int64_t ch = (q.b * a.groups + g) * a.cg + c;
          for (int64_t k = 0; k < a.K; ++k) {
            const int64_t idx = q.s0 + k * a.d - a.P;
            bp[r * ckk + c * a.K + k] = idx >= 0         ? x + ch * a.T + idx
                                        : h != nullptr ? h + ch * a.P + q.s0 + k * a.d
                                                       : zeros.data();
          }
        }
      }
      for (int64_t m0 = mlo; m0 < mhi; m0 += MW)
        for (int64_t n0 = 0; n0 < ckk; n0 += NW) {
          V acc[MW][NW];
          for (int m = 0; m < MW; ++m)
            for (int n = 0; n < NW; ++n) acc[m][n] = V{};
          const T* am[MW];
          const T* bn[NW];
          for (int64_t r = 0; r < nr; ++r) {
            // Rows past the block's edge repeat the last row; their sums are never stored.
            for (int m = 0; m < MW; ++m) am[m] = ap[r * a.og + std::min(m0 + m, a.og - 1)];
            for (int n = 0; n < NW; ++n) bn[n] = bp[r * ckk + std::min(n0 + n, ckk - 1)];
            dot_tile<T, Isa, MW, NW>(am, bn, ranges[r].len, acc);
          }
          for (int m = 0; m < MW && m0 + m < mhi; ++m)
            for (int n = 0; n < NW && n0 + n < ckk; ++n)
              part[(g * a.og + m0 + m) * ckk + n0 + n] = lane_total<T>(acc[m][n]);
        }
    }
  }
}

// Tiles of Shape's MW x NW rows, or 1 x NW when a group has a single output row (depthwise),
// where a taller tile would be mostly padding.
template <typename T, int Isa>
GENFAST_INLINE void wgrad_dispatch(const Wgrad& a, int64_t i0, int64_t i1) {
  using S = Shape<T, Isa>;
  if (a.og >= S::MW)
    wgrad_items<T, Isa, S::MW, S::NW>(a, i0, i1);
  else
    wgrad_items<T, Isa, 1, 4>(a, i0, i1);
}

GENFAST_CONV_ISA_COPIES(wgrad_f32, (const Wgrad& a, int64_t i0, int64_t i1), (a, i0, i1),
                        wgrad_dispatch<float, kIsa>(a, i0, i1))
GENFAST_CONV_ISA_COPIES(wgrad_f64, (const Wgrad& a, int64_t i0, int64_t i1), (a, i0, i1),
                        wgrad_dispatch<double, kIsa>(a, i0, i1))

template <typename T>
void run_wgrad(Wgrad a, T* dw, int num_threads) {
  const int64_t wsize = a.groups * a.og * a.cg * a.K, bt = a.B * a.T;
  if (bt == 0) {
    std::fill(dw, dw + wsize, T(0));
    return;
  }
  // The chunking depends on the shapes only. Partials are capped at 2^22 values in all.
  const int64_t cap = std::max<int64_t>(1, (int64_t{1} << 22) / wsize);
  const int64_t nchunks = std::min((bt + 1023) / 1024, cap);
  a.chunk = (bt + nchunks - 1) / nchunks;
  const int64_t items = (bt + a.chunk - 1) / a.chunk;
  // When the cap leaves few chunks, the output rows are split too (slices of whole MW-row
  // tiles), so big weights still spread over threads. Each dW value is summed by one item in
  // the same order whatever the split.
  const int isa = isa::active();
  const int64_t mw = a.og >= tile_mw<T>(isa) ? tile_mw<T>(isa) : 1;  // wgrad_dispatch's choice
  const int64_t mtiles = (a.og + mw - 1) / mw;
  a.msplit = std::min(mtiles, (16 + items - 1) / items);
  a.mrows = (mtiles + a.msplit - 1) / a.msplit * mw;
  std::vector<T> part(static_cast<size_t>(items * wsize));
  a.part = part.data();
  parallel_for(items * a.msplit, a.chunk * wsize / a.msplit, num_threads,
               [&](int64_t i0, int64_t i1) {
                 sizeof(T) == 4 ? wgrad_f32(isa, a, i0, i1) : wgrad_f64(isa, a, i0, i1);
               });
  parallel_for(wsize, items, num_threads, [&](int64_t e0, int64_t e1) {
    for (int64_t e = e0; e < e1; ++e) {
      T s = part[e];
      for (int64_t i = 1; i < items; ++i) s += part[i * wsize + e];
      dw[e] = s;
    }
  });
}

#pragma GCC diagnostic pop

}  // namespace

void causal_conv1d_fwd(const void* x, const void* h, const void* w, const void* b, void* y,
                       int64_t B, int64_t Cin, int64_t Cout, int64_t T, int64_t K,
                       int64_t dilation, int64_t groups, int act, int dtype, int num_threads) {
  const bool f32 = cpu_is_float32(dtype, "causal_conv1d_fwd");
  check_conv("causal_conv1d_fwd", B, Cin, Cout, T, K, dilation, groups);
  check_act("causal_conv1d_fwd", act);
  if (B == 0 || Cout == 0 || T == 0) return;
  const int64_t P = (K - 1) * dilation;
  const Corr a{x, h, P, nullptr, b, y, B, groups, Cin / groups, Cout / groups, T, T, K, -P,
               dilation, 0, act};
  f32 ? run_corr(a, static_cast<const float*>(w), false, num_threads)
      : run_corr(a, static_cast<const double*>(w), false, num_threads);
}

void causal_conv1d_bwd_input(const void* g, const void* w, void* dx, int64_t B, int64_t Cin,
                             int64_t Cout, int64_t T, int64_t K, int64_t dilation, int64_t groups,
                             bool with_state, int dtype, int num_threads) {
  const bool f32 = cpu_is_float32(dtype, "causal_conv1d_bwd_input");
  check_conv("causal_conv1d_bwd_input", B, Cin, Cout, T, K, dilation, groups);
  const int64_t P = (K - 1) * dilation, tout = with_state ? P + T : T;
  if (B == 0 || Cin == 0 || tout == 0) return;
  // dx~[j] reads g[j - k*d]; without the state, output t is dx~[P + t].
  const Corr a{g, nullptr, 0, nullptr, nullptr, dx, B, groups, Cout / groups, Cin / groups,
               T, tout, K, with_state ? 0 : P, -dilation, 0, 0};
  f32 ? run_corr(a, static_cast<const float*>(w), true, num_threads)
      : run_corr(a, static_cast<const double*>(w), true, num_threads);
}

void causal_conv1d_bwd_weight(const void* g, const void* x, const void* h, void* dw, int64_t B,
                              int64_t Cin, int64_t Cout, int64_t T, int64_t K, int64_t dilation,
                              int64_t groups, int dtype, int num_threads) {
  const bool f32 = cpu_is_float32(dtype, "causal_conv1d_bwd_weight");
  check_conv("causal_conv1d_bwd_weight", B, Cin, Cout, T, K, dilation, groups);
  if (Cout == 0 || Cin == 0) return;
  const Wgrad a{g, x, h, nullptr, B, groups, Cin / groups, Cout / groups, T, K, dilation,
                (K - 1) * dilation, 0};
  f32 ? run_wgrad(a, static_cast<float*>(dw), num_threads)
      : run_wgrad(a, static_cast<double*>(dw), num_threads);
}

}  // namespace genfast::cpu
