// Device code of the attention double backward (launched by csrc/cuda/attention_bwd2.cu). With
// P recomputed from lse, dP = dO v^T, X = s (gq k^T + q gk^T), Y = dO gv^T (the design note's
// names; gq / gk / gv null read as zeros) the kernels run two sweeps:
//   stats: per query row D = dO.o, r = sum P X, and w = a + c - 2 r D with a = sum P Y,
//          c = sum P X dP (the row sums the gradients below need before any of them);
//   gradq: per query block  GQ = s dS gk + s U k  and  GdO = P gv + Z v;
//   gradk: per key block    GK = s dS^T gq + s U^T q  and  GV = Z^T dO;
// with dS = P (dP - D), W = Y + X (dP - D) - r dP, U = P (W - w), Z = P (X - r). No pooling
// (the caller pools and routes). Deterministic as the first backward: fixed-order sums, no
// atomics.
#pragma once
#include "cuda/attention_dev.cuh"

namespace genfast::cuda::attn_dev {

template <typename A>
struct PairVals {
  A p, dp, x, y;  // zero for masked pairs and for pairs past the tiles
};

// Tiles of one (query block, key block) step: rows q, gq, dO; keys k, gk, v, gv.
template <typename A>
struct Tiles2 {
  A *q, *gq, *dO, *k, *gk, *v, *gv;
};

// The values of this lane's pairs: query-major (lane groups per query row, partners are keys)
// or key-major (groups per key, partners are query rows). Absent gq / gk / gv skip their dots.
template <bool kKeyMajor, typename A>
__device__ void lane_pairs(const Args& a, const Tiles2<A>& t, const A* slse, int64_t i0, int nq,
                           int64_t j0, int nk, const Lanes& L, PairVals<A> (&v)[kPairU]) {
  const int64_t pk = pad(a.Dk), pv = pad(a.Dv), Dk = a.Dk, Dv = a.Dv;
  const int ny = kKeyMajor ? a.bq : a.bk;
  const A scale = scale_of<A>(a);
  A s[kPairU], dp[kPairU], x1[kPairU], x2[kPairU], y[kPairU];
#pragma unroll
  for (int u = 0; u < kPairU; ++u) x1[u] = 0, x2[u] = 0, y[u] = 0;
  if constexpr (kKeyMajor) {
    const int64_t j = L.x;
    lane_dots(s, t.k + j * pk, t.q, pk, L, ny, Dk);
    lane_dots(dp, t.v + j * pv, t.dO, pv, L, ny, Dv);
    if (a.gq != nullptr) lane_dots(x1, t.k + j * pk, t.gq, pk, L, ny, Dk);
    if (a.gk != nullptr) lane_dots(x2, t.gk + j * pk, t.q, pk, L, ny, Dk);
    if (a.gv != nullptr) lane_dots(y, t.gv + j * pv, t.dO, pv, L, ny, Dv);
  } else {
    const int64_t i = L.x;
    lane_dots(s, t.q + i * pk, t.k, pk, L, ny, Dk);
    lane_dots(dp, t.dO + i * pv, t.v, pv, L, ny, Dv);
    if (a.gq != nullptr) lane_dots(x1, t.gq + i * pk, t.k, pk, L, ny, Dk);
    if (a.gk != nullptr) lane_dots(x2, t.q + i * pk, t.gk, pk, L, ny, Dk);
    if (a.gv != nullptr) lane_dots(y, t.dO + i * pv, t.gv, pv, L, ny, Dv);
  }
#pragma unroll
  for (int u = 0; u < kPairU; ++u) {
    const int yy = L.c + L.G * u, i = kKeyMajor ? yy : L.x, j = kKeyMajor ? L.x : yy;
    v[u] = PairVals<A>{0, 0, 0, 0};
    if (yy >= ny || i >= nq || j >= nk || slse[i] == neg_inf<A>() || !visible(a, i0 + i, j0 + j))
      continue;
    v[u] = PairVals<A>{dexp(scale * s[u] - slse[i]), dp[u], scale * (x1[u] + x2[u]), y[u]};
  }
}

template <typename T, typename A>
__device__ void load_query_tiles(const Args& a, const Tiles2<A>& t, int64_t bh, int64_t i0,
                                 int nq) {
  const int64_t Dk = a.Dk, Dv = a.Dv, off_k = bh * a.N * Dk, off_v = bh * a.N * Dv;
  const T* gq = static_cast<const T*>(a.gq);
  load_rows(t.q, a.bq, pad(Dk), static_cast<const T*>(a.q) + off_k, Dk, i0, nq, Dk);
  load_rows(t.gq, a.bq, pad(Dk), gq ? gq + off_k : gq, Dk, i0, nq, Dk);
  load_rows(t.dO, a.bq, pad(Dv), static_cast<const T*>(a.dout) + off_v, Dv, i0, nq, Dv);
}

template <typename T, typename A>
__device__ void load_key_tiles(const Args& a, const Tiles2<A>& t, int64_t bh, int64_t j0,
                               int nk) {
  const int64_t Dk = a.Dk, Dv = a.Dv, off_k = bh * a.M * Dk, off_v = bh * a.M * Dv;
  const T* gk = static_cast<const T*>(a.gk);
  const T* gv = static_cast<const T*>(a.gv);
  load_keys(t.k, a.bk, pad(Dk), static_cast<const T*>(a.k) + off_k, Dk, j0, nk, Dk, 0);
  load_keys(t.gk, a.bk, pad(Dk), gk ? gk + off_k : gk, Dk, j0, nk, Dk, 0);
  load_keys(t.v, a.bk, pad(Dv), static_cast<const T*>(a.v) + off_v, Dv, j0, nk, Dv, 0);
  load_keys(t.gv, a.bk, pad(Dv), gv ? gv + off_v : gv, Dv, j0, nk, Dv, 0);
}

// lse, D, r, w of query rows [i0, i0 + nq) from the stats sweep (rows past nq: lse = -inf).
template <typename A>
__device__ void load_stats2(const Args& a, A* s, int64_t row0, int nq) {
  const A* src[4] = {static_cast<const A*>(a.lse), static_cast<const A*>(a.ws_D),
                     static_cast<const A*>(a.ws_r), static_cast<const A*>(a.ws_w)};
  for (int i = tid(); i < a.bq; i += kThreads)
    for (int c = 0; c < 4; ++c)
      s[c * a.bq + i] = i < nq ? src[c][row0 + i] : (c == 0 ? neg_inf<A>() : A(0));
}

template <typename T>
__device__ void stats_body(const Args& a) {
  using A = acc_t<T>;
  const int bq = a.bq, bk = a.bk;
  const int64_t N = a.N, M = a.M, pk = pad(a.Dk), pv = pad(a.Dv), pp = int64_t{bq} * bk;
  Tiles2<A> t;
  t.q = reinterpret_cast<A*>(smem());
  t.gq = t.q + bq * pk, t.dO = t.gq + bq * pk, t.k = t.dO + bq * pv, t.gk = t.k + bk * pk;
  t.v = t.gk + bk * pk, t.gv = t.v + bk * pv;
  A* m1 = t.gv + bk * pv;  // P X, P Y, P X dP of the step's pairs
  A* m2 = m1 + pp;
  A* m3 = m2 + pp;
  A *slse = m3 + pp, *sD = slse + bq, *sr = sD + bq, *sa = sr + bq, *sc = sa + bq;
  const int64_t nqb = (N + bq - 1) / bq, nwork = a.BH * nqb;
  for (int64_t w = cta(); w < nwork; w += ncta()) {
    const int64_t qb = w % nqb, bh = w / nqb, i0 = qb * bq, row0 = bh * N + i0;
    const int nq = static_cast<int>(lo<int64_t>(bq, N - i0));
    load_query_tiles<T>(a, t, bh, i0, nq);
    const T* o = static_cast<const T*>(a.o) + row0 * a.Dv;
    const T* g = static_cast<const T*>(a.dout) + row0 * a.Dv;
    for (int i = tid(); i < bq; i += kThreads) {
      A d = 0;
      for (int64_t c = 0; i < nq && c < a.Dv; ++c) d += ld(g + i * a.Dv + c) * ld(o + i * a.Dv + c);
      slse[i] = i < nq ? static_cast<const A*>(a.lse)[row0 + i] : neg_inf<A>();
      sD[i] = d, sr[i] = 0, sa[i] = 0, sc[i] = 0;
    }
    const int64_t ke = a.causal ? lo(M, i0 + nq + M - N) : M;
    block_sync();
    for (int64_t j0 = 0; j0 < ke; j0 += bk) {
      const int nk = static_cast<int>(lo<int64_t>(bk, ke - j0));
      load_key_tiles<T>(a, t, bh, j0, nk);
      block_sync();
      {
        const Lanes L = lanes_of(bq);
        PairVals<A> v[kPairU];
        lane_pairs<false>(a, t, slse, i0, nq, j0, nk, L, v);
#pragma unroll
        for (int u = 0; u < kPairU; ++u) {
          const int j = L.c + L.G * u;
          if (j >= bk) continue;
          const int64_t e = L.x * bk + j;
          m1[e] = v[u].p * v[u].x, m2[e] = v[u].p * v[u].y, m3[e] = v[u].p * v[u].x * v[u].dp;
        }
      }
      block_sync();
      for (int i = tid(); i < bq; i += kThreads)
        for (int j = 0; j < nk; ++j)
          sr[i] += m1[i * bk + j], sa[i] += m2[i * bk + j], sc[i] += m3[i * bk + j];
      block_sync();
    }
    for (int i = tid(); i < nq; i += kThreads) {
      static_cast<A*>(a.ws_D)[row0 + i] = sD[i];
      static_cast<A*>(a.ws_r)[row0 + i] = sr[i];
      static_cast<A*>(a.ws_w)[row0 + i] = sa[i] + sc[i] - 2 * sr[i] * sD[i];
    }
    block_sync();
  }
}

// dS, U, Z (and P when sp is given) of every pair of the step's tiles.
template <bool kKeyMajor, typename A>
__device__ void pair_grads(const Args& a, const Tiles2<A>& t, const A* st4, A* sp, A* sds, A* su,
                           A* sz, int64_t i0, int nq, int64_t j0, int nk) {
  const int bq = a.bq, bk = a.bk;
  const A *slse = st4, *sD = st4 + bq, *sr = sD + bq, *sw = sr + bq;
  const Lanes L = lanes_of(kKeyMajor ? bk : bq);
  const int ny = kKeyMajor ? bq : bk;
  PairVals<A> v[kPairU];
  lane_pairs<kKeyMajor>(a, t, slse, i0, nq, j0, nk, L, v);
#pragma unroll
  for (int u = 0; u < kPairU; ++u) {
    const int y = L.c + L.G * u;
    if (y >= ny) continue;
    const int i = kKeyMajor ? y : L.x;
    const int64_t e = kKeyMajor ? int64_t{y} * bk + L.x : int64_t{L.x} * bk + y;
    const A dpd = v[u].dp - sD[i];
    const A W = v[u].y + v[u].x * dpd - sr[i] * v[u].dp;
    if (sp != nullptr) sp[e] = v[u].p;
    sds[e] = v[u].p * dpd, su[e] = v[u].p * (W - sw[i]), sz[e] = v[u].p * (v[u].x - sr[i]);
  }
}

template <typename T>
__device__ void gradq_body(const Args& a) {
  using A = acc_t<T>;
  const int bq = a.bq, bk = a.bk;
  const int64_t N = a.N, M = a.M, Dk = a.Dk, Dv = a.Dv, pk = pad(Dk), pv = pad(Dv);
  const int64_t pp = int64_t{bq} * bk;
  Tiles2<A> t;
  t.q = reinterpret_cast<A*>(smem());
  t.gq = t.q + bq * pk, t.dO = t.gq + bq * pk, t.k = t.dO + bq * pv, t.gk = t.k + bk * pk;
  t.v = t.gk + bk * pk, t.gv = t.v + bk * pv;
  A* sGq = t.gv + bk * pv;
  A* sGdo = sGq + bq * pk;
  A* sp = sGdo + bq * pv;
  A *sds = sp + pp, *su = sds + pp, *sz = su + pp, *st4 = sz + pp;
  const A scale = scale_of<A>(a);
  const int64_t nqb = (N + bq - 1) / bq, nwork = a.BH * nqb;
  for (int64_t w = cta(); w < nwork; w += ncta()) {
    const int64_t qb = w % nqb, bh = w / nqb, i0 = qb * bq, row0 = bh * N + i0;
    const int nq = static_cast<int>(lo<int64_t>(bq, N - i0));
    load_query_tiles<T>(a, t, bh, i0, nq);
    load_stats2(a, st4, row0, nq);
    fill(sGq, bq * pk, A(0));
    fill(sGdo, bq * pv, A(0));
    const int64_t ke = a.causal ? lo(M, i0 + nq + M - N) : M;
    block_sync();
    for (int64_t j0 = 0; j0 < ke; j0 += bk) {
      const int nk = static_cast<int>(lo<int64_t>(bk, ke - j0));
      load_key_tiles<T>(a, t, bh, j0, nk);
      block_sync();
      pair_grads<false>(a, t, st4, sp, sds, su, sz, i0, nq, j0, nk);
      block_sync();
      {  // GQ += s (dS gk + U k), GdO += P gv + Z v
        const A* cq[2] = {sds, su};
        const A* rq[2] = {t.gk, t.k};
        const A* co[2] = {sp, sz};
        const A* ro[2] = {t.gv, t.v};
        accumulate(sGq, pk, nq, Dk, nk, scale, cq, bk, 1, rq, pk);
        accumulate(sGdo, pv, nq, Dv, nk, A(1), co, bk, 1, ro, pv);
      }
      block_sync();
    }
    T* Gq = static_cast<T*>(a.Gq) + row0 * Dk;
    T* Gdo = static_cast<T*>(a.Gdo) + row0 * Dv;
    for (int64_t e = tid(); e < nq * Dk; e += kThreads) st(Gq + e, sGq[(e / Dk) * pk + e % Dk]);
    for (int64_t e = tid(); e < nq * Dv; e += kThreads) st(Gdo + e, sGdo[(e / Dv) * pv + e % Dv]);
    block_sync();
  }
}

template <typename T>
__device__ void gradk_body(const Args& a) {
  using A = acc_t<T>;
  const int bq = a.bq, bk = a.bk;
  const int64_t N = a.N, M = a.M, Dk = a.Dk, Dv = a.Dv, pk = pad(Dk), pv = pad(Dv);
  const int64_t pp = int64_t{bq} * bk;
  Tiles2<A> t;
  t.k = reinterpret_cast<A*>(smem());
  t.gk = t.k + bk * pk, t.v = t.gk + bk * pk, t.gv = t.v + bk * pv;
  A* sGk = t.gv + bk * pv;
  A* sGv = sGk + bk * pk;
  t.q = sGv + bk * pv, t.gq = t.q + bq * pk, t.dO = t.gq + bq * pk;
  A* sds = t.dO + bq * pv;
  A *su = sds + pp, *sz = su + pp, *st4 = sz + pp;
  const A scale = scale_of<A>(a);
  const int64_t nkb = (M + bk - 1) / bk, nwork = a.BH * nkb;
  for (int64_t w = cta(); w < nwork; w += ncta()) {
    const int64_t kb = w % nkb, bh = w / nkb, j0 = kb * bk;
    const int nk = static_cast<int>(lo<int64_t>(bk, M - j0));
    load_key_tiles<T>(a, t, bh, j0, nk);
    fill(sGk, bk * pk, A(0));
    fill(sGv, bk * pv, A(0));
    const int64_t istart = a.causal ? hi<int64_t>(0, j0 - (M - N)) : 0;
    block_sync();
    for (int64_t i0 = istart; i0 < N; i0 += bq) {
      const int nq = static_cast<int>(lo<int64_t>(bq, N - i0));
      load_query_tiles<T>(a, t, bh, i0, nq);
      load_stats2(a, st4, bh * N + i0, nq);
      block_sync();
      pair_grads<true, A>(a, t, st4, nullptr, sds, su, sz, i0, nq, j0, nk);
      block_sync();
      {  // GK += s (dS^T gq + U^T q), GV += Z^T dO
        const A* ck[2] = {sds, su};
        const A* rk[2] = {t.gq, t.q};
        const A* cv[1] = {sz};
        const A* rv[1] = {t.dO};
        accumulate(sGk, pk, nk, Dk, nq, scale, ck, 1, bk, rk, pk);
        accumulate(sGv, pv, nk, Dv, nq, A(1), cv, 1, bk, rv, pv);
      }
      block_sync();
    }
    T* Gk = static_cast<T*>(a.Gk) + (bh * M + j0) * Dk;
    T* Gv = static_cast<T*>(a.Gv) + (bh * M + j0) * Dv;
    for (int64_t e = tid(); e < nk * Dk; e += kThreads) st(Gk + e, sGk[(e / Dk) * pk + e % Dk]);
    for (int64_t e = tid(); e < nk * Dv; e += kThreads) st(Gv + e, sGv[(e / Dv) * pv + e % Dv]);
    block_sync();
  }
}

}  // namespace genfast::cuda::attn_dev
