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
// depend on the thread count. update is a few GEMVs per step: plain loops.
#include "cpu/causal_conv.h"

#include <algorithm>
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

// Row `row` of a tap's source read over [start, start + len): in place when inside the row,
// else a padded copy in `scratch`. The copy runs in index segments, never a select between
// loads: GCC if-converts such a select into an unconditional load of both sides, which would
// read through a null history pointer.
template <typename T>
GENFAST_INLINE const T* tap_row(const T* row, const T* hrow, int64_t hlen, int64_t n,
                                int64_t start, int64_t len, T* scratch) {
  if (start >= 0 && start + len <= n) return row + start;
  const auto upto = [&](int64_t j) { return std::clamp<int64_t>(j - start, 0, len); };
  int64_t i = 0;
  for (const int64_t e = upto(hrow != nullptr ? -hlen : 0); i < e; ++i) scratch[i] = T(0);
  for (const int64_t e = upto(0); i < e; ++i) scratch[i] = hrow[hlen + start + i];
  for (const int64_t e = upto(n); i < e; ++i) scratch[i] = row[start + i];
  for (; i < len; ++i) scratch[i] = T(0);
  return scratch;
}

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

// One depthwise row: o[i] = b0 + sum_k wc[k] * tap[k][i], i < n. The tail runs as one more
// full vector block through zero-padded copies (pad: K*NR values, pad_tap: K pointers), so
// every column gets the same instructions and the update kernel reproduces these bits.
template <typename T, int Isa>
GENFAST_INLINE void depthwise_row(const T* const* tap, const T* wc, int64_t K, T b0, T* o,
                                  int64_t n, T* pad, const T** pad_tap) {
  using S = Shape<T, Isa>;
  using V = typename S::V;
  constexpr int NV = S::NV, VL = S::VL, NR = S::NR;
  const auto block = [&](const T* const* src, int64_t i, T* dst) {
    V acc[NV];
    for (int j = 0; j < NV; ++j) acc[j] = V{} + b0;
    for (int64_t k = 0; k < K; ++k) {
      const T wk = wc[k];
      for (int j = 0; j < NV; ++j) acc[j] += wk * loadu<V>(src[k] + i + j * VL);
    }
    for (int j = 0; j < NV; ++j) storeu(dst + j * VL, acc[j]);
  };
  int64_t i = 0;
  for (; i + NR <= n; i += NR) block(tap, i, o + i);
  if (i == n) return;
  for (int64_t k = 0; k < K; ++k) {
    T* p = pad + k * NR;
    for (int64_t j = 0; j < NR; ++j) p[j] = i + j < n ? tap[k][i + j] : T(0);
    pad_tap[k] = p;
  }
  T out[NR];
  block(pad_tap, 0, out);
  std::memcpy(o + i, out, static_cast<size_t>(n - i) * sizeof(T));
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
  for (int64_t item = i0; item < i1; ++item) {
    const int64_t row = item / ntiles, c = row % a.groups, j0 = (item % ntiles) * a.tt;
    const int64_t n = std::min(a.tt, a.tout - j0);
    const T* hrow = h != nullptr ? h + row * a.hlen : nullptr;
    for (int64_t k = 0; k < a.K; ++k)
      tap[k] = tap_row(src + row * a.tsrc, hrow, a.hlen, a.tsrc, j0 + a.off0 + k * a.step, n,
                       scratch.data() + k * a.tt);
    T* o = static_cast<T*>(a.out) + row * a.tout + j0;
    depthwise_row<T, Isa>(tap.data(), w + c * a.K, a.K, bias != nullptr ? bias[c] : T(0), o, n,
                          scratch.data() + a.K * a.tt, tap.data() + a.K);
    activate(o, n, a.act);
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
  for (int64_t item = i0; item < i1; ++item) {
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
      for (int64_t m0 = 0; m0 < a.og; m0 += MW)
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
          for (int m = 0; m < MW && m0 + m < a.og; ++m)
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
  std::vector<T> part(static_cast<size_t>(items * wsize));
  a.part = part.data();
  const int isa = isa::active();
  parallel_for(items, a.chunk * wsize, num_threads, [&](int64_t i0, int64_t i1) {
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

struct Update {
  const void* x_new;
  void* state;
  const void* w;  // packed as fwd's (pack_weights), raw (C, 1, K) when depthwise
  const void* bias;
  const int64_t* seqlens;
  void* y;
  int64_t Cin, Cout, L, S, K, d, groups;
  int act;
};

GENFAST_INLINE int64_t pymod(int64_t q, int64_t s) { return ((q % s) + s) % s; }

// Streams [b0, b1): each owns its state rows, so streams run in parallel. The taps of the L new
// steps are gathered into K rows of lpad columns per channel (tap k's column i is step i's
// position minus (K-1-k)*d), then fwd's tile or depthwise row runs over them: the same sums in
// the same order, so a chain of updates gives fwd's bits on the same ISA copy. Every output is
// computed before the state is written, so none reads a slot this call overwrote.
template <typename T, int Isa>
GENFAST_INLINE void update_streams(const Update& a, int64_t b0, int64_t b1) {
  using Sh = Shape<T, Isa>;
  constexpr int MR = Sh::MR, NR = Sh::NR;
  const int64_t cg = a.Cin / a.groups, og = a.Cout / a.groups, L = a.L, S = a.S, K = a.K;
  const int64_t lpad = (L + NR - 1) / NR * NR, nmb = (og + MR - 1) / MR;
  const bool depthwise = cg == 1 && og == 1;
  const T* w = static_cast<const T*>(a.w);
  const T* bias = static_cast<const T*>(a.bias);
  std::vector<T> taps(static_cast<size_t>(K * a.Cin * lpad)), pad(static_cast<size_t>(K * NR));
  std::vector<const T*> src(static_cast<size_t>(2 * K));
  std::vector<int64_t> ld(static_cast<size_t>(K), lpad);
  for (int64_t b = b0; b < b1; ++b) {
    const T* xn = static_cast<const T*>(a.x_new) + b * a.Cin * L;
    T* st = static_cast<T*>(a.state) + b * a.Cin * S;
    T* y = static_cast<T*>(a.y) + b * a.Cout * L;
    const int64_t n0 = a.seqlens != nullptr ? a.seqlens[b] : 0;
    for (int64_t k = 0; k < K; ++k) {
      const int64_t lag = (K - 1 - k) * a.d;
      // Step i reads position i - lag (relative to the call's first step): the state for
      // i < lag, x_new after. Index segments, not selects (see tap_row).
      const int64_t nh = std::min(L, lag);
      const int64_t slot0 = nh == 0 ? 0 : a.seqlens != nullptr ? pymod(n0 - lag, S) : S - lag;
      for (int64_t c = 0; c < a.Cin; ++c) {
        T* row = taps.data() + (k * a.Cin + c) * lpad;
        const T* sr = st + c * S;
        for (int64_t i = 0, s = slot0; i < nh; ++i, s = s + 1 == S ? 0 : s + 1) row[i] = sr[s];
        for (int64_t i = nh; i < L; ++i) row[i] = xn[c * L + i - lag];
        for (int64_t i = L; i < lpad; ++i) row[i] = T(0);
      }
    }
    if (depthwise) {
      for (int64_t c = 0; c < a.Cin; ++c) {
        for (int64_t k = 0; k < K; ++k) src[k] = taps.data() + (k * a.Cin + c) * lpad;
        depthwise_row<T, Isa>(src.data(), w + c * K, K, bias != nullptr ? bias[c] : T(0),
                              y + c * L, L, pad.data(), src.data() + K);
      }
    } else {
      for (int64_t g = 0; g < a.groups; ++g) {
        for (int64_t k = 0; k < K; ++k) src[k] = taps.data() + (k * a.Cin + g * cg) * lpad;
        for (int64_t mb = 0; mb < nmb; ++mb) {
          const int rows = static_cast<int>(std::min<int64_t>(MR, og - mb * MR));
          const T* wb = w + ((g * nmb + mb) * K * cg) * MR;
          const T* bb = bias != nullptr ? bias + g * og + mb * MR : nullptr;
          for (int64_t t = 0; t < L; t += NR)
            tile<T, Isa>(wb, K, cg, src.data(), ld.data(), t, bb, y + (g * og + mb * MR) * L + t,
                         L, rows, static_cast<int>(std::min<int64_t>(NR, L - t)));
        }
      }
    }
    for (int64_t co = 0; co < a.Cout; ++co) activate(y + co * L, L, a.act);
    if (S == 0) continue;
    for (int64_t c = 0; c < a.Cin; ++c) {
      T* sr = st + c * S;
      const T* xr = xn + c * L;
      if (a.seqlens != nullptr) {
        for (int64_t i = std::max<int64_t>(0, L - S); i < L; ++i) sr[pymod(n0 + i, S)] = xr[i];
      } else if (L >= S) {
        std::memcpy(sr, xr + L - S, static_cast<size_t>(S) * sizeof(T));
      } else {
        std::memmove(sr, sr + L, static_cast<size_t>(S - L) * sizeof(T));
        std::memcpy(sr + S - L, xr, static_cast<size_t>(L) * sizeof(T));
      }
    }
  }
}

GENFAST_CONV_ISA_COPIES(update_f32, (const Update& a, int64_t b0, int64_t b1), (a, b0, b1),
                        update_streams<float, kIsa>(a, b0, b1))
GENFAST_CONV_ISA_COPIES(update_f64, (const Update& a, int64_t b0, int64_t b1), (a, b0, b1),
                        update_streams<double, kIsa>(a, b0, b1))

template <typename T>
void run_update(Update a, int64_t B, int num_threads) {
  const int isa = isa::active();
  const int64_t cg = a.Cin / a.groups, og = a.Cout / a.groups;
  std::vector<T> wp;
  if (!(cg == 1 && og == 1)) {
    const int mr = tile_mr<T>(isa);
    wp.resize(static_cast<size_t>(packed_size(a.groups, og, cg, a.K, mr)));
    pack_weights(static_cast<const T*>(a.w), wp.data(), a.groups, og, cg, a.K, mr, false);
    a.w = wp.data();
  }
  parallel_for(B, a.L * a.Cout * std::max<int64_t>(1, cg * a.K), num_threads,
               [&](int64_t b0, int64_t b1) {
                 sizeof(T) == 4 ? update_f32(isa, a, b0, b1) : update_f64(isa, a, b0, b1);
               });
}

#pragma GCC diagnostic pop

// Sizes that would index out of bounds are refused here too (Python checks first, with the
// user-facing messages).
void check_conv(const char* who, int64_t B, int64_t Cin, int64_t Cout, int64_t T, int64_t K,
                int64_t dilation, int64_t groups) {
  const std::string w(who);
  if (B < 0 || Cin < 0 || Cout < 0 || T < 0) throw std::invalid_argument(w + ": negative size");
  if (K < 1) throw std::invalid_argument(w + ": K must be >= 1, got " + std::to_string(K));
  if (dilation < 1)
    throw std::invalid_argument(w + ": dilation must be >= 1, got " + std::to_string(dilation));
  if (K - 1 > ((int64_t{1} << 31) - 1) / dilation)
    throw std::invalid_argument(w + ": (K-1)*dilation overflows (K=" + std::to_string(K) +
                                ", dilation=" + std::to_string(dilation) + ")");
  if (groups < 1 || Cin % groups != 0 || Cout % groups != 0)
    throw std::invalid_argument(w + ": groups=" + std::to_string(groups) +
                                " must divide Cin=" + std::to_string(Cin) +
                                " and Cout=" + std::to_string(Cout));
}

void check_act(const char* who, int act) {
  if (act < 0 || act > 3)
    throw std::invalid_argument(std::string(who) + ": activation code " + std::to_string(act) +
                                " is not 0 (none), 1 (silu), 2 (relu) or 3 (tanh)");
}

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

void causal_conv1d_update(const void* x_new, void* state, const void* w, const void* b,
                          const int64_t* seqlens, void* y, int64_t B, int64_t Cin, int64_t Cout,
                          int64_t L, int64_t S, int64_t K, int64_t dilation, int64_t groups,
                          int act, int dtype, int num_threads) {
  const bool f32 = cpu_is_float32(dtype, "causal_conv1d_update");
  check_conv("causal_conv1d_update", B, Cin, Cout, L, K, dilation, groups);
  check_act("causal_conv1d_update", act);
  if (S < (K - 1) * dilation)
    throw std::invalid_argument("causal_conv1d_update: state length S=" + std::to_string(S) +
                                " is shorter than (K-1)*dilation=" +
                                std::to_string((K - 1) * dilation));
  if (B == 0 || L == 0) return;
  const Update a{x_new, state, w, b, seqlens, y, Cin, Cout, L, S, K, dilation, groups, act};
  f32 ? run_update<float>(a, B, num_threads) : run_update<double>(a, B, num_threads);
}

}  // namespace genfast::cpu
