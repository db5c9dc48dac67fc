// Device code of the first-order attention backward (launched by csrc/cuda/attention.cu): P is
// recomputed from q, k and the saved lse with the forward's summation order for S (P stays within
// rounding of the forward's), and a row with lse = -inf contributes nothing.
//   dkdv: one work item per (batch*head, key block); it walks the query blocks that can see its
//         keys and accumulates dV = P^T dO and dK = s dS^T q in shared memory, then writes every
//         row of dk / dv (pooled: the value goes to the first maximum of the 2x2 window, the
//         other three rows and the rows no window covers get 0).
//   dq:   one work item per (batch*head, query block); dQ = s dS K over the visible key blocks.
// Deterministic: each gradient element is one thread's fixed-order sum, no atomics.
#pragma once
#include "cuda/attention_dev.cuh"

namespace genfast::cuda::attn_dev {

// D_i = dout_i . o_i, one thread per row.
template <typename T>
__device__ void rowdot_body(const Args& a) {
  using A = acc_t<T>;
  const T* o = static_cast<const T*>(a.o);
  const T* g = static_cast<const T*>(a.dout);
  for (int64_t r = cta() * kThreads + tid(); r < a.BH * a.N; r += ncta() * kThreads) {
    A s = 0;
    for (int64_t d = 0; d < a.Dv; ++d) s += ld(g + r * a.Dv + d) * ld(o + r * a.Dv + d);
    static_cast<A*>(a.ws_D)[r] = s;
  }
}

// P_ij and dS_ij = P_ij (dP_ij - D_i) for every pair of the tiles; zero where masked. Key-major
// (dkdv: lane groups per key) or query-major (dq: lane groups per query row); sp null: P not kept.
template <bool kKeyMajor, typename A>
__device__ void pair_ds(const Args& a, A* sp, A* sds, const A* sq, const A* sdo, const A* slse,
                        const A* sD, const A* sk, const A* sv, int64_t i0, int nq, int64_t j0,
                        int nk) {
  const int bq = a.bq, bk = a.bk;
  const int64_t pk = pad(a.Dk), pv = pad(a.Dv);
  const A scale = scale_of<A>(a), ninf = neg_inf<A>();
  const Lanes L = lanes_of(kKeyMajor ? bk : bq);
  const int ny = kKeyMajor ? bq : bk;
  A s[kPairU], dp[kPairU];
  if constexpr (kKeyMajor) {
    lane_dots(s, sk + L.x * pk, sq, pk, L, ny, a.Dk);
    lane_dots(dp, sv + L.x * pv, sdo, pv, L, ny, a.Dv);
  } else {
    lane_dots(s, sq + L.x * pk, sk, pk, L, ny, a.Dk);
    lane_dots(dp, sdo + L.x * pv, sv, pv, L, ny, a.Dv);
  }
#pragma unroll
  for (int u = 0; u < kPairU; ++u) {
    const int y = L.c + L.G * u;
    if (y >= ny) continue;
    const int i = kKeyMajor ? y : L.x, j = kKeyMajor ? L.x : y;
    A p = 0, ds = 0;
    if (i < nq && j < nk && slse[i] != ninf && visible(a, i0 + i, j0 + j)) {
      p = dexp(scale * s[u] - slse[i]);
      ds = p * (dp[u] - sD[i]);
    }
    if (sp != nullptr) sp[i * bk + j] = p;
    sds[i * bk + j] = ds;
  }
}

// lse and D of query rows [i0, i0 + nq) (rows past nq: lse = -inf).
template <typename A>
__device__ void load_row_stats(const Args& a, A* slse, A* sD, int64_t row0, int nq) {
  for (int i = tid(); i < a.bq; i += kThreads) {
    slse[i] = i < nq ? static_cast<const A*>(a.lse)[row0 + i] : neg_inf<A>();
    sD[i] = i < nq ? static_cast<const A*>(a.ws_D)[row0 + i] : A(0);
  }
}

// Writes the accumulated pooled gradient tile g (keys [j0, j0 + nk)) to the unpooled rows of
// out: the first maximum of each window (raw, the k or v the forward pooled) gets the value.
template <typename T, typename A>
__device__ void route_pooled(T* out, const T* raw, const A* g, int64_t ldt, int64_t j0, int nk,
                             int64_t D, int64_t pool_w) {
  const int64_t off[4] = {0, D, pool_w * D, (pool_w + 1) * D};
  for (int64_t e = tid(); e < nk * D; e += kThreads) {
    const int64_t j = e / D, d = e - j * D, base = pooled_row(j0 + j, pool_w) * D + d;
    int arg = 0;
    A best = ld(raw + base);
    for (int t = 1; t < 4; ++t) {
      const A x = ld(raw + base + off[t]);
      if (x > best) best = x, arg = t;
    }
    for (int t = 0; t < 4; ++t) st(out + base + off[t], t == arg ? g[j * ldt + d] : A(0));
  }
}

// The t-th row of an Hs x Ws grid that no 2x2 window covers: first the last column of the
// covered rows (odd Ws), then the whole last row (odd Hs).
__host__ __device__ inline int64_t dropped_row(int64_t t, int64_t Hs, int64_t Ws) {
  const int64_t c1 = (Ws & 1) ? 2 * (Hs / 2) : 0;
  return t < c1 ? t * Ws + Ws - 1 : (Hs - 1) * Ws + (t - c1);
}
__host__ __device__ inline int64_t dropped_rows(int64_t Hs, int64_t Ws) {
  return Hs * Ws - 4 * (Hs / 2) * (Ws / 2);
}

// Key blocks of the key-side kernels; pooled calls keep at least one (it zeroes the rows no
// window covers, which exist even when M == 0).
__host__ __device__ inline int64_t key_blocks(int64_t M, int bk, bool pooled) {
  const int64_t n = (M + bk - 1) / bk;
  return pooled && n == 0 ? 1 : n;
}

template <typename T>
__device__ void dkdv_body(const Args& a) {
  using A = acc_t<T>;
  const int bq = a.bq, bk = a.bk;
  const int64_t Dk = a.Dk, Dv = a.Dv, N = a.N, M = a.M, pk = pad(Dk), pv = pad(Dv);
  A* sk = reinterpret_cast<A*>(smem());
  A* sv = sk + bk * pk;
  A* sdk = sv + bk * pv;
  A* sdv = sdk + bk * pk;
  A* sq = sdv + bk * pv;
  A* sdo = sq + bq * pk;
  A* sp = sdo + bq * pv;
  A* sds = sp + bq * bk;
  A* slse = sds + bq * bk;
  A* sD = slse + bq;
  const A scale = scale_of<A>(a);
  const bool pooled = a.pool_w > 0;
  const int64_t nkb = key_blocks(M, bk, pooled), nwork = a.BH * nkb;
  for (int64_t w = cta(); w < nwork; w += ncta()) {
    const int64_t kb = w % nkb, bh = w / nkb, j0 = kb * bk;
    const int nk = static_cast<int>(hi<int64_t>(0, lo<int64_t>(bk, M - j0)));
    const T* q = static_cast<const T*>(a.q) + bh * N * Dk;
    const T* g = static_cast<const T*>(a.dout) + bh * N * Dv;
    const T* k = static_cast<const T*>(a.k) + bh * a.Sk * Dk;
    const T* v = static_cast<const T*>(a.v) + bh * a.Sk * Dv;
    load_keys(sk, bk, pk, k, Dk, j0, nk, Dk, a.pool_w);
    load_keys(sv, bk, pv, v, Dv, j0, nk, Dv, a.pool_w);
    fill(sdk, bk * pk, A(0));
    fill(sdv, bk * pv, A(0));
    // First query that sees key j0; none when the block is empty.
    const int64_t istart = nk == 0 ? N : (a.causal ? hi<int64_t>(0, j0 - (M - N)) : 0);
    block_sync();
    for (int64_t i0 = istart; i0 < N; i0 += bq) {
      const int nq = static_cast<int>(lo<int64_t>(bq, N - i0));
      load_rows(sq, bq, pk, q, Dk, i0, nq, Dk);
      load_rows(sdo, bq, pv, g, Dv, i0, nq, Dv);
      load_row_stats(a, slse, sD, bh * N + i0, nq);
      block_sync();
      pair_ds<true>(a, sp, sds, sq, sdo, slse, sD, sk, sv, i0, nq, j0, nk);
      block_sync();
      {  // dV += P^T dO, dK += s dS^T q (pair matrices indexed [i * bk + j])
        const A* cp[1] = {sp};
        const A* cs[1] = {sds};
        const A* rdo[1] = {sdo};
        const A* rq[1] = {sq};
        accumulate(sdv, pv, nk, Dv, nq, A(1), cp, 1, bk, rdo, pv);
        accumulate(sdk, pk, nk, Dk, nq, scale, cs, 1, bk, rq, pk);
      }
      block_sync();
    }
    T* dk = static_cast<T*>(a.dk) + bh * a.Sk * Dk;
    T* dv = static_cast<T*>(a.dv) + bh * a.Sk * Dv;
    if (!pooled) {
      for (int64_t e = tid(); e < nk * Dk; e += kThreads)
        st(dk + j0 * Dk + e, sdk[(e / Dk) * pk + e % Dk]);
      for (int64_t e = tid(); e < nk * Dv; e += kThreads)
        st(dv + j0 * Dv + e, sdv[(e / Dv) * pv + e % Dv]);
    } else {
      route_pooled(dk, k, sdk, pk, j0, nk, Dk, a.pool_w);
      route_pooled(dv, v, sdv, pv, j0, nk, Dv, a.pool_w);
      const int64_t nd = dropped_rows(a.pool_h, a.pool_w), Dmax = hi(Dk, Dv);
      for (int64_t t = kb; t < nd; t += nkb) {
        const int64_t r = dropped_row(t, a.pool_h, a.pool_w);
        for (int64_t d = tid(); d < Dmax; d += kThreads) {
          if (d < Dk) st(dk + r * Dk + d, A(0));
          if (d < Dv) st(dv + r * Dv + d, A(0));
        }
      }
    }
    block_sync();
  }
}

template <typename T>
__device__ void dq_body(const Args& a) {
  using A = acc_t<T>;
  const int bq = a.bq, bk = a.bk;
  const int64_t Dk = a.Dk, Dv = a.Dv, N = a.N, M = a.M, pk = pad(Dk), pv = pad(Dv);
  A* sq = reinterpret_cast<A*>(smem());
  A* sdq = sq + bq * pk;
  A* sdo = sdq + bq * pk;
  A* sk = sdo + bq * pv;
  A* sv = sk + bk * pk;
  A* sds = sv + bk * pv;
  A* slse = sds + bq * bk;
  A* sD = slse + bq;
  const A scale = scale_of<A>(a);
  const int64_t nqb = (N + bq - 1) / bq, nwork = a.BH * nqb;
  for (int64_t w = cta(); w < nwork; w += ncta()) {
    const int64_t qb = w % nqb, bh = w / nqb, i0 = qb * bq;
    const int nq = static_cast<int>(lo<int64_t>(bq, N - i0));
    const T* k = static_cast<const T*>(a.k) + bh * a.Sk * Dk;
    const T* v = static_cast<const T*>(a.v) + bh * a.Sk * Dv;
    load_rows(sq, bq, pk, static_cast<const T*>(a.q) + bh * N * Dk, Dk, i0, nq, Dk);
    load_rows(sdo, bq, pv, static_cast<const T*>(a.dout) + bh * N * Dv, Dv, i0, nq, Dv);
    load_row_stats(a, slse, sD, bh * N + i0, nq);
    fill(sdq, bq * pk, A(0));
    const int64_t ke = a.causal ? lo(M, i0 + nq + M - N) : M;
    block_sync();
    for (int64_t j0 = 0; j0 < ke; j0 += bk) {
      const int nk = static_cast<int>(lo<int64_t>(bk, ke - j0));
      load_keys(sk, bk, pk, k, Dk, j0, nk, Dk, a.pool_w);
      load_keys(sv, bk, pv, v, Dv, j0, nk, Dv, a.pool_w);
      block_sync();
      pair_ds<false, A>(a, nullptr, sds, sq, sdo, slse, sD, sk, sv, i0, nq, j0, nk);
      block_sync();
      {  // dQ += s dS K
        const A* cs[1] = {sds};
        const A* rk[1] = {sk};
        accumulate(sdq, pk, nq, Dk, nk, scale, cs, bk, 1, rk, pk);
      }
      block_sync();
    }
    T* dq = static_cast<T*>(a.dq) + (bh * N + i0) * Dk;
    for (int64_t e = tid(); e < nq * Dk; e += kThreads) st(dq + e, sdq[(e / Dk) * pk + e % Dk]);
    block_sync();
  }
}

}  // namespace genfast::cuda::attn_dev
