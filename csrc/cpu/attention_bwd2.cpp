// C++ CPU double backward of fused attention (contract: cpu/attention.h and
// genfast/ops/attention.py). Per (batch, head) slice, with P recomputed from q, k and the saved
// lse, dP = dO v^T, X = s (gq k^T + q gk^T), Y = dO gv^T:
//   D = rowsum(dO * o), r = rowsum(P X), a = rowsum(P Y), c = rowsum(P X dP), w = a + c - 2 r D
//   dS = P (dP - D), U = P (Y + X (dP - D) - r dP - w), Z = P (X - r)
//   GQ = s (dS gk + U k),  GdO = P gv + Z v,  GK = s (dS^T gq + U^T q),  GV = Z^T dO.
//
// Two passes over the slice, each a parallel_for over fixed work items, so every output
// element is summed in one fixed order whatever the thread count:
//   A. items (slice, kBM query rows): sweep the key tiles once for the row statistics
//      (stored: D, r, w per row, O(N)), then again for GQ and GdO of those rows.
//   B. items (slice, kBN keys): sweep the query blocks that see the tile for GK and GV.
// The (kBM x kBN) tiles of P, dP, X, Y are recomputed wherever needed: nothing N x M is kept,
// a thread holds four tiles and a few packed panels. (One key-parallel gradient sweep would
// save B's recomputation, but then GQ / GdO would need sums across threads.)
//
// Every product is attn_tile::gemm, the attention family's register-tiled micro-kernel:
// scores against transposed key panels (keys on the vector axis), GQ / GdO against row-major
// key panels, GK / GV reading the coefficient tiles column-wise (no transpose). Head dims are
// padded to kPad so every column count is whole vectors on every ISA. The element-wise steps
// (statistics, coefficients) run in place on the tiles. Causal (bottom-right): tiles past a
// block's last visible key are skipped and entries past a row's last key get P = 0, so a row
// that sees no key contributes nothing and gets zero gradients.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <vector>

#include "common/dtype.h"
#include "common/fastmath.h"
#include "common/isa.h"
#include "common/parallel.h"
#include "cpu/attention.h"
#pragma GCC diagnostic ignored "-Wpsabi"  // attention_tile.h: vector types cross only inline calls
#include "cpu/attention_tile.h"

namespace genfast::cpu {
namespace {

namespace at = attn_tile;

constexpr int64_t kBN = 64;   // keys per tile
constexpr int64_t kBM = 32;   // query rows per block (four kBM x kBN tiles: 32 KB of float32)
constexpr int64_t kPad = 16;  // head dims padded to whole vectors of every copy

template <typename T>
struct Ctx {
  const T *q, *k, *v, *o, *lse, *dout, *gq, *gk, *gv;
  T *Gq, *Gk, *Gv, *Gdout;
  T* stats;  // (slices, N, 3): D, r, w per query row
  int64_t N, M, Dk, Dv, dkp, dvp;
  bool causal;
  T scale;
  int isa;
  bool has_x() const { return gq || gk; }
  // Keys row i sees: [0, visible(i)).
  int64_t visible(int64_t i) const {
    return causal ? std::clamp<int64_t>(i + M - N + 1, 0, M) : M;
  }
};

// One thread's buffers, sized once per parallel_for block. Key panels hold `cap` tiles: pass
// A packs a whole slice once (its items are consecutive query blocks, mostly of one slice),
// pass B the one tile of its item.
template <typename T>
struct Work {
  int64_t cap, packed = -1;         // tiles held; the slice they belong to (pass A)
  std::vector<T> kt, gkt, vt, gvt;  // transposed key tiles: (D, kBN), columns past nb zero
  std::vector<T> kr, gkr, vr, gvr;  // row-major key tiles, rows padded: (kBN, Dp)
  std::vector<T> qr, gqr, dor;      // query block row-major, rows padded: (kBM, Dp)
  std::vector<T> p, x, dp, y;       // (kBM, kBN) tiles; then dS in dp, U in y, Z in x
  std::vector<T> acc1, acc2, sub;
  std::vector<int64_t> lim;
  Work(const Ctx<T>& c, int64_t cap_, bool rows)
      : cap(cap_), kt(cap * c.Dk * kBN), gkt(c.gk ? kt.size() : 0),
        vt(c.has_x() ? cap * c.Dv * kBN : 0), gvt(c.gv ? cap * c.Dv * kBN : 0),
        kr(rows ? cap * kBN * c.dkp : 0), gkr(c.gk ? kr.size() : 0),
        vr(rows && c.has_x() ? cap * kBN * c.dvp : 0), gvr(rows && c.gv ? cap * kBN * c.dvp : 0),
        qr(kBM * c.dkp), gqr(qr.size()), dor(kBM * c.dvp),
        p(kBM * kBN), x(p.size()), dp(p.size()), y(p.size()),
        acc1(std::max(kBM * std::max(c.dkp, 3 * kBN), kBN * c.dkp)),
        acc2(std::max(kBM, kBN) * c.dvp), sub(kBM), lim(kBM) {}
};

// rows [0, nb) of src (D columns) into dst: transposed (D, kBN) or row-major (kBN, Dp); the
// padding is zero.
template <typename T>
void pack_t(const T* src, int64_t D, int64_t nb, T* dst) {
  for (int64_t d = 0; d < D; ++d) {
    T* row = dst + d * kBN;
    for (int64_t j = 0; j < nb; ++j) row[j] = src[j * D + d];
    std::fill(row + nb, row + kBN, T(0));
  }
}
template <typename T>
void pack_r(const T* src, int64_t D, int64_t Dp, int64_t nb, int64_t rows, T* dst) {
  std::fill(dst, dst + rows * Dp, T(0));
  for (int64_t j = 0; j < nb; ++j) std::copy(src + j * D, src + (j + 1) * D, dst + j * Dp);
}

// Packs key tile `tile` of slice bh into panel slot `slot`: transposed, and row-major when the
// Work has row panels.
template <typename T>
void load_keys(const Ctx<T>& c, int64_t bh, int64_t tile, int64_t slot, Work<T>& w) {
  const int64_t j0 = tile * kBN, nb = std::min(kBN, c.M - j0);
  const int64_t ok = (bh * c.M + j0) * c.Dk, ov = (bh * c.M + j0) * c.Dv;
  const int64_t st = slot * kBN, sk = st * c.Dk, sv = st * c.Dv;
  pack_t(c.k + ok, c.Dk, nb, w.kt.data() + sk);
  if (c.gk) pack_t(c.gk + ok, c.Dk, nb, w.gkt.data() + sk);
  if (c.has_x()) pack_t(c.v + ov, c.Dv, nb, w.vt.data() + sv);
  if (c.gv) pack_t(c.gv + ov, c.Dv, nb, w.gvt.data() + sv);
  if (w.kr.empty()) return;
  const int64_t rk = st * c.dkp, rv = st * c.dvp;
  pack_r(c.k + ok, c.Dk, c.dkp, nb, kBN, w.kr.data() + rk);
  if (c.gk) pack_r(c.gk + ok, c.Dk, c.dkp, nb, kBN, w.gkr.data() + rk);
  if (c.has_x()) pack_r(c.v + ov, c.Dv, c.dvp, nb, kBN, w.vr.data() + rv);
  if (c.gv) pack_r(c.gv + ov, c.Dv, c.dvp, nb, kBN, w.gvr.data() + rv);
}

// P, X (unscaled), dP, Y of query rows [i0, i0 + R) against the packed key tile [j0, j0 + nb).
template <typename T>
void tiles(const Ctx<T>& c, int64_t bh, int64_t i0, int64_t R, int64_t j0, int64_t nb,
           int64_t slot, Work<T>& w) {
  const int64_t row = bh * c.N + i0, sk = slot * kBN * c.Dk, sv = slot * kBN * c.Dv;
  const T* q = c.q + row * c.Dk;
  const T* dout = c.dout + row * c.Dv;
  at::gemm(c.isa, false, R, kBN, c.Dk, q, c.Dk, 1, w.kt.data() + sk, kBN, w.p.data(), kBN);
  for (int64_t r = 0; r < R; ++r) w.lim[r] = c.visible(i0 + r) - j0, w.sub[r] = c.lse[row + r];
  at::probs_rows(c.isa, R, nb, kBN, w.p.data(), kBN, c.scale, w.sub.data(), w.lim.data(),
                 static_cast<T*>(nullptr));
  if (c.has_x()) {
    if (c.gq)
      at::gemm(c.isa, false, R, kBN, c.Dk, c.gq + row * c.Dk, c.Dk, 1, w.kt.data() + sk, kBN,
               w.x.data(), kBN);
    if (c.gk)
      at::gemm(c.isa, c.gq != nullptr, R, kBN, c.Dk, q, c.Dk, 1, w.gkt.data() + sk, kBN, w.x.data(),
               kBN);
    at::gemm(c.isa, false, R, kBN, c.Dv, dout, c.Dv, 1, w.vt.data() + sv, kBN, w.dp.data(), kBN);
  }
  if (c.gv)
    at::gemm(c.isa, false, R, kBN, c.Dv, dout, c.Dv, 1, w.gvt.data() + sv, kBN, w.y.data(), kBN);
}

// In place: dp <- dS, y <- U, x <- Z (rows [0, R) of the tiles; st: the rows' D, r, w).
template <typename T>
GENFAST_INLINE void coefficients(const Ctx<T>& c, int64_t R, const T* st, Work<T>& w) {
  const bool hx = c.has_x(), hy = c.gv != nullptr;
  for (int64_t r = 0; r < R; ++r) {
    const T D = st[r * 3], rr = st[r * 3 + 1], ww = st[r * 3 + 2], s = c.scale;
    T *p = w.p.data() + r * kBN, *x = w.x.data() + r * kBN, *dp = w.dp.data() + r * kBN,
      *y = w.y.data() + r * kBN;
    if (hx && hy) {
      for (int64_t j = 0; j < kBN; ++j) {
        const T xs = s * x[j], dpd = dp[j] - D;
        y[j] = p[j] * (y[j] + xs * dpd - rr * dp[j] - ww);
        dp[j] = p[j] * dpd;
        x[j] = p[j] * (xs - rr);
      }
    } else if (hx) {
      for (int64_t j = 0; j < kBN; ++j) {
        const T xs = s * x[j], dpd = dp[j] - D;
        y[j] = p[j] * (xs * dpd - rr * dp[j] - ww);
        dp[j] = p[j] * dpd;
        x[j] = p[j] * (xs - rr);
      }
    } else {
      for (int64_t j = 0; j < kBN; ++j) y[j] = p[j] * (y[j] - ww);
    }
  }
}

// Pass A for query rows [i0, i0 + R) of slice bh: statistics, then GQ and GdO.
template <typename T>
GENFAST_INLINE void query_block(const Ctx<T>& c, int64_t bh, int64_t i0, int64_t R,
                                Work<T>& w) {
  const bool hx = c.has_x(), hy = c.gv != nullptr;
  const int64_t last = c.visible(i0 + R - 1);  // the block's widest row (visible grows with i)
  T* st = c.stats + (bh * c.N + i0) * 3;
  T* lanes = w.acc1.data();  // per row: kBN lanes each of r, a, c
  std::fill(lanes, lanes + R * 3 * kBN, T(0));
  for (int64_t r = 0; r < R; ++r) {
    const T* d = c.dout + (bh * c.N + i0 + r) * c.Dv;
    const T* o = c.o + (bh * c.N + i0 + r) * c.Dv;
    st[r * 3] = hx ? fastmath::lane_sum<T>(c.Dv, [&](int64_t e) { return d[e] * o[e]; }) : T(0);
  }
  if (w.packed != bh) {
    for (int64_t t = 0; t * kBN < c.M; ++t) load_keys(c, bh, t, t, w);
    w.packed = bh;
  }
  for (int64_t j0 = 0; j0 < last; j0 += kBN) {
    const int64_t nb = std::min(kBN, c.M - j0);
    tiles(c, bh, i0, R, j0, nb, j0 / kBN, w);
    for (int64_t r = 0; r < R; ++r) {
      const T *p = w.p.data() + r * kBN, *x = w.x.data() + r * kBN,
              *dp = w.dp.data() + r * kBN, *y = w.y.data() + r * kBN;
      T* a = lanes + r * 3 * kBN;
      if (hx)
        for (int64_t j = 0; j < kBN; ++j) {
          const T px = p[j] * x[j];
          a[j] += px, a[2 * kBN + j] += px * dp[j];
        }
      if (hy)
        for (int64_t j = 0; j < kBN; ++j) a[kBN + j] += p[j] * y[j];
    }
  }
  for (int64_t r = 0; r < R; ++r) {
    T sum[3] = {};
    for (int m = 0; m < 3; ++m)
      for (int64_t j = 0; j < kBN; ++j) sum[m] += lanes[(r * 3 + m) * kBN + j];
    const T s = c.scale;  // X was summed unscaled
    st[r * 3 + 1] = s * sum[0];
    st[r * 3 + 2] = sum[1] + s * sum[2] - 2 * s * sum[0] * st[r * 3];
  }
  T *accq = w.acc1.data(), *acco = w.acc2.data();
  std::fill(accq, accq + R * c.dkp, T(0));
  std::fill(acco, acco + R * c.dvp, T(0));
  for (int64_t j0 = 0; j0 < last; j0 += kBN) {
    const int64_t nb = std::min(kBN, c.M - j0);
    tiles(c, bh, i0, R, j0, nb, j0 / kBN, w);
    coefficients(c, R, st, w);
    const int64_t rk = j0 * c.dkp, rv = j0 * c.dvp;  // this tile's row-major panels
    const auto at_ = [](const std::vector<T>& b, int64_t off) {
      return b.empty() ? nullptr : b.data() + off;  // absent cotangents have no panels
    };
    const T *kr = at_(w.kr, rk), *gkr = at_(w.gkr, rk), *vr = at_(w.vr, rv), *gvr = at_(w.gvr, rv);
    at::gemm(c.isa, true, R, c.dkp, nb, w.y.data(), kBN, 1, kr, c.dkp, accq, c.dkp);
    if (c.gk) at::gemm(c.isa, true, R, c.dkp, nb, w.dp.data(), kBN, 1, gkr, c.dkp, accq, c.dkp);
    if (hy) at::gemm(c.isa, true, R, c.dvp, nb, w.p.data(), kBN, 1, gvr, c.dvp, acco, c.dvp);
    if (hx) at::gemm(c.isa, true, R, c.dvp, nb, w.x.data(), kBN, 1, vr, c.dvp, acco, c.dvp);
  }
  for (int64_t r = 0; r < R; ++r) {
    T* gq = c.Gq + (bh * c.N + i0 + r) * c.Dk;
    T* gd = c.Gdout + (bh * c.N + i0 + r) * c.Dv;
    for (int64_t d = 0; d < c.Dk; ++d) gq[d] = c.scale * accq[r * c.dkp + d];
    std::copy(acco + r * c.dvp, acco + r * c.dvp + c.Dv, gd);
  }
}

// Pass B for key tile [j0, j0 + nb) of slice bh: GK and GV over the query blocks that see it.
template <typename T>
GENFAST_INLINE void key_block(const Ctx<T>& c, int64_t bh, int64_t j0, Work<T>& w) {
  const bool hx = c.has_x();
  const int64_t nb = std::min(kBN, c.M - j0);
  load_keys(c, bh, j0 / kBN, 0, w);
  T *acck = w.acc1.data(), *accv = w.acc2.data();
  std::fill(acck, acck + kBN * c.dkp, T(0));
  std::fill(accv, accv + kBN * c.dvp, T(0));
  // Rows before i_first see none of the tile (causal); blocks stay aligned to kBM, so each
  // element's sum runs over the same blocks as in every other split.
  const int64_t i_first = c.causal ? std::clamp<int64_t>(j0 - (c.M - c.N), 0, c.N) : 0;
  for (int64_t i0 = i_first / kBM * kBM; i0 < c.N; i0 += kBM) {
    const int64_t R = std::min(kBM, c.N - i0), row = bh * c.N + i0;
    tiles(c, bh, i0, R, j0, nb, 0, w);
    coefficients(c, R, c.stats + row * 3, w);
    at::pad_rows(c.q + row * c.Dk, c.Dk, R, c.Dk, c.dkp, w.qr.data());
    at::gemm(c.isa, true, nb, c.dkp, R, w.y.data(), 1, kBN, w.qr.data(), c.dkp, acck, c.dkp);
    if (c.gq) {
      at::pad_rows(c.gq + row * c.Dk, c.Dk, R, c.Dk, c.dkp, w.gqr.data());
      at::gemm(c.isa, true, nb, c.dkp, R, w.dp.data(), 1, kBN, w.gqr.data(), c.dkp, acck,
               c.dkp);
    }
    if (hx) {
      at::pad_rows(c.dout + row * c.Dv, c.Dv, R, c.Dv, c.dvp, w.dor.data());
      at::gemm(c.isa, true, nb, c.dvp, R, w.x.data(), 1, kBN, w.dor.data(), c.dvp, accv, c.dvp);
    }
  }
  for (int64_t j = 0; j < nb; ++j) {
    T* gk = c.Gk + (bh * c.M + j0 + j) * c.Dk;
    T* gv = c.Gv + (bh * c.M + j0 + j) * c.Dv;
    for (int64_t d = 0; d < c.Dk; ++d) gk[d] = c.scale * acck[j * c.dkp + d];
    std::copy(accv + j * c.dvp, accv + j * c.dvp + c.Dv, gv);
  }
}

template <typename T>
GENFAST_INLINE void query_items(const Ctx<T>& c, int64_t it0, int64_t it1) {
  const int64_t per = (c.N + kBM - 1) / kBM;
  Work<T> w(c, (c.M + kBN - 1) / kBN, true);
  for (int64_t it = it0; it < it1; ++it) {
    const int64_t bh = it / per, i0 = it % per * kBM;
    query_block(c, bh, i0, std::min(kBM, c.N - i0), w);
  }
}

template <typename T>
GENFAST_INLINE void key_items(const Ctx<T>& c, int64_t it0, int64_t it1) {
  const int64_t per = (c.M + kBN - 1) / kBN;
  Work<T> w(c, 1, false);
  for (int64_t it = it0; it < it1; ++it) key_block(c, it / per, it % per * kBN, w);
}

// The item loops are compiled per ISA for their element-wise steps; the products inside
// dispatch on c.isa themselves.
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
                 static_cast<T*>(Gdout), stats.data(), N, M, Dk, Dv,
                 at::round_up(Dk, kPad), at::round_up(Dv, kPad), causal,
                 static_cast<T>(scale), isa::active()};
  // Multiply-adds per (query, key) pair, the unit of parallel_for's single-thread cut-off.
  const int64_t pair = 3 * Dk + 3 * Dv;
  if (N > 0) {
    const int64_t items = BH * ((N + kBM - 1) / kBM);
    parallel_for(items, kBM * M * pair * 2, num_threads,
                 [&](int64_t a, int64_t b) { query_run(c, a, b); });
  }
  if (M > 0) {
    const int64_t items = BH * ((M + kBN - 1) / kBN);
    parallel_for(items, kBN * N * pair, num_threads,
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
