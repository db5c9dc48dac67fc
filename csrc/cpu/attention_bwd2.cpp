// C++ CPU double backward of fused attention (contract: cpu/attention.h and
// genfast/ops/attention.py). Per (batch, head) slice, with P recomputed from q, k and the saved
// lse, dP = dO v^T, X = s (gq k^T + q gk^T), Y = dO gv^T:
//   D = rowsum(dO * o), r = rowsum(P X), a = rowsum(P Y), c = rowsum(P X dP), w = a + c - 2 r D
//   dS = P (dP - D), U = P (Y + X (dP - D) - r dP - w), Z = P (X - r)
//   GQ = s (dS gk + U k),  GdO = P gv + Z v,  GK = s (dS^T gq + U^T q),  GV = Z^T dO.
//
// Two passes over the slice, each a parallel_for over fixed work items, so every output
// element is summed in one fixed order whatever the thread count:
//   A. items (slice, kRows query rows): sweep the key tiles once for the row statistics
//      (stored: D, r, w per row, O(N)), then again for GQ and GdO of those rows.
//   B. items (slice, kTile keys): sweep every query row that sees the tile for GK and GV.
// P, dP, X and Y are recomputed per (row, key tile) from the inputs: nothing N x M is stored,
// each thread holds a few (D x kTile) tiles. Recomputing in B costs one more sweep than a
// single key-parallel gradient sweep, and buys O(N) extra memory and no cross-thread sums.
//
// A (row, tile) step is vectorised over the tile's keys: the key-side tensors are packed
// transposed (D x kTile, zero-padded), so each score row is a broadcast-FMA over the tile, and
// GK / GV accumulate transposed the same way. GQ / GdO take row-major k, v, gk, gv in place.
// Causal (bottom-right): tiles past a row block's last visible key are skipped, entries past
// a row's last key get P = 0; a row that sees no key is skipped, its gradients stay 0.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <vector>

#include "common/dtype.h"
#include "common/fastmath.h"
#include "common/parallel.h"
#include "cpu/attention.h"

namespace genfast::cpu {
namespace {

constexpr int64_t kTile = 64;  // keys per tile: the vector axis of every per-row step
constexpr int64_t kRows = 32;  // query rows per pass-A item

GENFAST_INLINE float exp_t(float x) { return fastmath::exp(x); }
GENFAST_INLINE double exp_t(double x) { return std::exp(x); }

template <typename T>
struct Ctx {
  const T *q, *k, *v, *o, *lse, *dout, *gq, *gk, *gv;
  T *Gq, *Gk, *Gv, *Gdout;
  T* stats;  // (slices, N, 3): D, r, w per query row
  int64_t N, M, Dk, Dv;
  bool causal;
  T scale;
  bool has_x() const { return gq || gk; }
  // Keys row i sees: [0, visible(i)).
  int64_t visible(int64_t i) const {
    return causal ? std::clamp<int64_t>(i + M - N + 1, 0, M) : M;
  }
};

// One slice's key tile [j0, j0 + nb), packed transposed and zero-padded to kTile columns.
template <typename T>
struct Tile {
  std::vector<T> k, gk, v, gv;
  int64_t j0 = 0, nb = 0;
  Tile(int64_t Dk, int64_t Dv)
      : k(Dk * kTile), gk(Dk * kTile), v(Dv * kTile), gv(Dv * kTile) {}
};

template <typename T>
GENFAST_INLINE void pack(const T* src, int64_t D, int64_t nb, T* dst) {
  for (int64_t d = 0; d < D; ++d) {
    T* row = dst + d * kTile;
    for (int64_t j = 0; j < nb; ++j) row[j] = src[j * D + d];
    for (int64_t j = nb; j < kTile; ++j) row[j] = T(0);
  }
}

template <typename T>
GENFAST_INLINE void load_tile(const Ctx<T>& c, int64_t bh, int64_t j0, Tile<T>& t) {
  t.j0 = j0;
  t.nb = std::min(kTile, c.M - j0);
  const int64_t ok = (bh * c.M + j0) * c.Dk, ov = (bh * c.M + j0) * c.Dv;
  pack(c.k + ok, c.Dk, t.nb, t.k.data());
  if (c.gk) pack(c.gk + ok, c.Dk, t.nb, t.gk.data());
  if (c.has_x()) pack(c.v + ov, c.Dv, t.nb, t.v.data());
  if (c.gv) pack(c.gv + ov, c.Dv, t.nb, t.gv.data());
}

// acc[j] += sum_d x[d] * packed[d][j]: one broadcast-FMA row per d over the whole tile.
template <typename T>
GENFAST_INLINE void row_times_tile(const T* x, const T* packed, int64_t D, T* acc) {
  for (int64_t d = 0; d < D; ++d) {
    const T xd = x[d];
    const T* p = packed + d * kTile;
    for (int64_t j = 0; j < kTile; ++j) acc[j] += xd * p[j];
  }
}

// acc[d][j] += x[d] * coef[j]: the transposed outer-product update of GK / GV.
template <typename T>
GENFAST_INLINE void row_times_tile_outer(const T* x, const T* coef, int64_t D, T* acc) {
  for (int64_t d = 0; d < D; ++d) {
    const T xd = x[d];
    T* a = acc + d * kTile;
    for (int64_t j = 0; j < kTile; ++j) a[j] += xd * coef[j];
  }
}

// P, dP, X, Y of query row i (slice bh) against tile t; P = 0 from column lim on.
template <typename T>
struct RowTile {
  alignas(64) T p[kTile], dp[kTile], x[kTile], y[kTile];
};

template <typename T>
GENFAST_INLINE void row_tile(const Ctx<T>& c, int64_t bh, int64_t i, const Tile<T>& t,
                             int64_t lim, RowTile<T>& rt) {
  const int64_t row = bh * c.N + i;
  const T* qi = c.q + row * c.Dk;
  const T* doi = c.dout + row * c.Dv;
  alignas(64) T s[kTile] = {};
  row_times_tile(qi, t.k.data(), c.Dk, s);
  const T lse = c.lse[row];
  for (int64_t j = 0; j < kTile; ++j) rt.p[j] = exp_t(c.scale * s[j] - lse);
  for (int64_t j = lim; j < kTile; ++j) rt.p[j] = T(0);  // masked or padding: any exp above
  if (c.has_x()) {
    for (int64_t j = 0; j < kTile; ++j) rt.x[j] = T(0), rt.dp[j] = T(0);
    if (c.gq) row_times_tile(c.gq + row * c.Dk, t.k.data(), c.Dk, rt.x);
    if (c.gk) row_times_tile(qi, t.gk.data(), c.Dk, rt.x);
    for (int64_t j = 0; j < kTile; ++j) rt.x[j] *= c.scale;
    row_times_tile(doi, t.v.data(), c.Dv, rt.dp);
  }
  if (c.gv) {
    for (int64_t j = 0; j < kTile; ++j) rt.y[j] = T(0);
    row_times_tile(doi, t.gv.data(), c.Dv, rt.y);
  }
}

// The per-entry coefficients of the gradient sweeps: ds = dS, u = U, z = Z (tile-wide).
template <typename T>
GENFAST_INLINE void coefficients(const Ctx<T>& c, const RowTile<T>& rt, T D, T r, T w, T* ds,
                                 T* u, T* z) {
  const bool hx = c.has_x(), hy = c.gv != nullptr;
  for (int64_t j = 0; j < kTile; ++j) {
    const T p = rt.p[j];
    T wj = hy ? rt.y[j] : T(0);
    if (hx) {
      const T dpd = rt.dp[j] - D;
      ds[j] = p * dpd;
      wj += rt.x[j] * dpd - r * rt.dp[j];
      z[j] = p * (rt.x[j] - r);
    }
    u[j] = p * (wj - w);
  }
}

// Pass A for query rows [i0, i1) of slice bh: statistics, then GQ and GdO.
template <typename T>
GENFAST_INLINE void query_block(const Ctx<T>& c, int64_t bh, int64_t i0, int64_t i1,
                                Tile<T>& t) {
  const bool hx = c.has_x(), hy = c.gv != nullptr;
  const int64_t Dk = c.Dk, Dv = c.Dv;
  std::fill(c.Gq + (bh * c.N + i0) * Dk, c.Gq + (bh * c.N + i1) * Dk, T(0));
  std::fill(c.Gdout + (bh * c.N + i0) * Dv, c.Gdout + (bh * c.N + i1) * Dv, T(0));
  const int64_t last = c.visible(i1 - 1);  // the block's widest row (visible grows with i)
  if (last <= 0) return;
  // Lane accumulators of r, a, c per row (kTile lanes, summed in lane order at the end).
  alignas(64) T acc[kRows][3][kTile];
  std::memset(acc, 0, sizeof acc);
  RowTile<T> rt;
  T* st = c.stats + (bh * c.N) * 3;
  for (int64_t i = i0; i < i1; ++i) {
    const int64_t row = bh * c.N + i;
    st[i * 3] = hx ? fastmath::lane_sum<T>(Dv, [&](int64_t d) {
      return c.dout[row * Dv + d] * c.o[row * Dv + d];
    }) : T(0);
  }
  for (int64_t j0 = 0; j0 < last; j0 += kTile) {
    load_tile(c, bh, j0, t);
    for (int64_t i = i0; i < i1; ++i) {
      const int64_t lim = std::min(c.visible(i) - j0, t.nb);
      if (lim <= 0) continue;
      row_tile(c, bh, i, t, lim, rt);
      T(&a)[3][kTile] = acc[i - i0];
      for (int64_t j = 0; j < kTile; ++j) {
        if (hx) a[0][j] += rt.p[j] * rt.x[j], a[2][j] += rt.p[j] * rt.x[j] * rt.dp[j];
        if (hy) a[1][j] += rt.p[j] * rt.y[j];
      }
    }
  }
  for (int64_t i = i0; i < i1; ++i) {
    T sum[3] = {};
    for (int m = 0; m < 3; ++m)
      for (int64_t j = 0; j < kTile; ++j) sum[m] += acc[i - i0][m][j];
    const T D = st[i * 3];
    st[i * 3 + 1] = sum[0];
    st[i * 3 + 2] = sum[1] + sum[2] - 2 * sum[0] * D;
  }
  alignas(64) T ds[kTile], u[kTile], z[kTile];
  for (int64_t j0 = 0; j0 < last; j0 += kTile) {
    load_tile(c, bh, j0, t);
    const int64_t kr = bh * c.M + j0;
    for (int64_t i = i0; i < i1; ++i) {
      const int64_t lim = std::min(c.visible(i) - j0, t.nb);
      if (lim <= 0) continue;
      row_tile(c, bh, i, t, lim, rt);
      const T* s = st + i * 3;
      coefficients(c, rt, s[0], s[1], s[2], ds, u, z);
      T* gqi = c.Gq + (bh * c.N + i) * Dk;
      T* gdi = c.Gdout + (bh * c.N + i) * Dv;
      for (int64_t j = 0; j < lim; ++j) {
        const T* kj = c.k + (kr + j) * Dk;
        const T uj = u[j];
        for (int64_t d = 0; d < Dk; ++d) gqi[d] += uj * kj[d];
        if (c.gk) {
          const T* gkj = c.gk + (kr + j) * Dk;
          const T dsj = ds[j];
          for (int64_t d = 0; d < Dk; ++d) gqi[d] += dsj * gkj[d];
        }
        if (hy) {
          const T* gvj = c.gv + (kr + j) * Dv;
          const T pj = rt.p[j];
          for (int64_t d = 0; d < Dv; ++d) gdi[d] += pj * gvj[d];
        }
        if (hx) {
          const T* vj = c.v + (kr + j) * Dv;
          const T zj = z[j];
          for (int64_t d = 0; d < Dv; ++d) gdi[d] += zj * vj[d];
        }
      }
    }
  }
  for (int64_t n = (bh * c.N + i0) * Dk; n < (bh * c.N + i1) * Dk; ++n) c.Gq[n] *= c.scale;
}

// Pass B for key tile [j0, j0 + kTile) of slice bh: GK and GV, accumulated transposed
// (D x kTile: the same broadcast-FMA rows as the scores) and written back at the end.
template <typename T>
GENFAST_INLINE void key_block(const Ctx<T>& c, int64_t bh, int64_t j0, Tile<T>& t, T* gkt,
                              T* gvt) {
  const bool hx = c.has_x();
  const int64_t Dk = c.Dk, Dv = c.Dv;
  load_tile(c, bh, j0, t);
  std::fill(gkt, gkt + Dk * kTile, T(0));
  if (hx) std::fill(gvt, gvt + Dv * kTile, T(0));
  // Rows before i_first see none of the tile (causal); later rows see more of it.
  const int64_t i_first = c.causal ? std::clamp<int64_t>(j0 - (c.M - c.N), 0, c.N) : 0;
  RowTile<T> rt;
  alignas(64) T ds[kTile], u[kTile], z[kTile];
  const T* st = c.stats + (bh * c.N) * 3;
  for (int64_t i = i_first; i < c.N; ++i) {
    const int64_t lim = std::min(c.visible(i) - j0, t.nb);
    if (lim <= 0) continue;
    row_tile(c, bh, i, t, lim, rt);
    coefficients(c, rt, st[i * 3], st[i * 3 + 1], st[i * 3 + 2], ds, u, z);
    const int64_t row = bh * c.N + i;
    row_times_tile_outer(c.q + row * Dk, u, Dk, gkt);
    if (c.gq) row_times_tile_outer(c.gq + row * Dk, ds, Dk, gkt);
    if (hx) row_times_tile_outer(c.dout + row * Dv, z, Dv, gvt);
  }
  T* gk = c.Gk + (bh * c.M + j0) * Dk;
  T* gv = c.Gv + (bh * c.M + j0) * Dv;
  for (int64_t j = 0; j < t.nb; ++j)
    for (int64_t d = 0; d < Dk; ++d) gk[j * Dk + d] = c.scale * gkt[d * kTile + j];
  for (int64_t j = 0; j < t.nb; ++j)
    for (int64_t d = 0; d < Dv; ++d) gv[j * Dv + d] = hx ? gvt[d * kTile + j] : T(0);
}

template <typename T>
GENFAST_INLINE void query_items(const Ctx<T>& c, int64_t it0, int64_t it1) {
  const int64_t per = (c.N + kRows - 1) / kRows;
  Tile<T> t(c.Dk, c.Dv);
  for (int64_t it = it0; it < it1; ++it) {
    const int64_t bh = it / per, i0 = it % per * kRows;
    query_block(c, bh, i0, std::min(i0 + kRows, c.N), t);
  }
}

template <typename T>
GENFAST_INLINE void key_items(const Ctx<T>& c, int64_t it0, int64_t it1) {
  const int64_t per = (c.M + kTile - 1) / kTile;
  Tile<T> t(c.Dk, c.Dv);
  std::vector<T> gkt(c.Dk * kTile), gvt(c.Dv * kTile);
  for (int64_t it = it0; it < it1; ++it)
    key_block(c, it / per, it % per * kTile, t, gkt.data(), gvt.data());
}

GENFAST_MULTIVERSIONED(query_f32, (const Ctx<float>& c, int64_t a, int64_t b), (c, a, b),
                       query_items<float>(c, a, b))
GENFAST_MULTIVERSIONED(query_f64, (const Ctx<double>& c, int64_t a, int64_t b), (c, a, b),
                       query_items<double>(c, a, b))
GENFAST_MULTIVERSIONED(key_f32, (const Ctx<float>& c, int64_t a, int64_t b), (c, a, b),
                       key_items<float>(c, a, b))
GENFAST_MULTIVERSIONED(key_f64, (const Ctx<double>& c, int64_t a, int64_t b), (c, a, b),
                       key_items<double>(c, a, b))
void query_run(const Ctx<float>& c, int64_t a, int64_t b) { query_f32(c, a, b); }
void query_run(const Ctx<double>& c, int64_t a, int64_t b) { query_f64(c, a, b); }
void key_run(const Ctx<float>& c, int64_t a, int64_t b) { key_f32(c, a, b); }
void key_run(const Ctx<double>& c, int64_t a, int64_t b) { key_f64(c, a, b); }

template <typename T>
void bwd2(const void* q, const void* k, const void* v, const void* o, const void* lse,
          const void* dout, const void* gq, const void* gk, const void* gv, void* Gq, void* Gk,
          void* Gv, void* Gdout, int64_t BH, int64_t N, int64_t M, int64_t Dk, int64_t Dv,
          bool causal, double scale, int num_threads) {
  const auto in = [](const void* p) { return static_cast<const T*>(p); };
  std::vector<T> stats(static_cast<size_t>(BH * N * 3));
  const Ctx<T> c{in(q), in(k), in(v), in(o), in(lse), in(dout), in(gq), in(gk), in(gv),
                 static_cast<T*>(Gq), static_cast<T*>(Gk), static_cast<T*>(Gv),
                 static_cast<T*>(Gdout), stats.data(), N, M, Dk, Dv, causal,
                 static_cast<T>(scale)};
  // Multiply-adds per (query, key) pair, the unit of parallel_for's single-thread cut-off.
  const int64_t pair = 3 * Dk + 3 * Dv;
  if (N > 0) {
    const int64_t items = BH * ((N + kRows - 1) / kRows);
    parallel_for(items, kRows * M * pair * 2, num_threads,
                 [&](int64_t a, int64_t b) { query_run(c, a, b); });
  }
  if (M > 0) {
    const int64_t items = BH * ((M + kTile - 1) / kTile);
    parallel_for(items, kTile * N * pair, num_threads,
                 [&](int64_t a, int64_t b) { key_run(c, a, b); });
  }
}

}  // namespace

void attention_bwd2(const void* q, const void* k, const void* v, const void* o, const void* lse,
                    const void* dout, const void* gq, const void* gk, const void* gv, void* Gq,
                    void* Gk, void* Gv, void* Gdout, int64_t B, int64_t Hh, int64_t N,
                    int64_t M, int64_t Dk, int64_t Dv, bool causal, double scale, int dtype,
                    int num_threads) {
  const bool f32 = cpu_is_float32(dtype, "attention_bwd2");
  const int64_t BH = B * Hh;
  if (BH <= 0) return;
  if (!gq && !gk && !gv) {  // no cotangent: every gradient is 0, nothing to recompute
    const int64_t e = f32 ? sizeof(float) : sizeof(double);
    const auto zero = [e](void* p, int64_t n) {
      if (n > 0) std::memset(p, 0, static_cast<size_t>(e * n));
    };
    zero(Gq, BH * N * Dk), zero(Gdout, BH * N * Dv), zero(Gk, BH * M * Dk), zero(Gv, BH * M * Dv);
    return;
  }
  (f32 ? bwd2<float> : bwd2<double>)(q, k, v, o, lse, dout, gq, gk, gv, Gq, Gk, Gv, Gdout, BH,
                                     N, M, Dk, Dv, causal, scale, num_threads);
}

}  // namespace genfast::cpu
