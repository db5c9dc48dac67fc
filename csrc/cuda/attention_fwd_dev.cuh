// Device code of the attention forward (launched by csrc/cuda/attention.cu): the tiled online
// softmax and the combine of the key-split (decode) partials. Shared helpers: attention_dev.cuh.
#pragma once
#include "cuda/attention_dev.cuh"

namespace genfast::cuda::attn_dev {

// ---- forward -------------------------------------------------------------------------------

// One work item per (batch*head, query block, key split). Query row i of the block belongs to a
// group of G = kThreads / bq consecutive threads; lane c of the group computes the scores of keys
// c, c + G, ... of each key tile in registers and owns the output columns c, c + G, ... of the
// row, so the online softmax (running max m, sum l, rescaled accumulator) stays in registers,
// every lane of a group holding the same m and l (same values, same order). Tiles past the causal
// horizon of the block's last row are never loaded.
constexpr int kMaxU = (64 * 16 + kThreads - 1) / kThreads;   // keys per lane (bk * bq <= 1024)
constexpr int kMaxW = (256 * 16 + kThreads - 1) / kThreads;  // columns per lane (Dv <= 256)
static_assert(kThreads % 16 == 0, "a query block of up to 16 rows splits the CTA evenly");

template <typename T>
__device__ void fwd_body(const Args& a) {
  using A = acc_t<T>;
  const int bq = a.bq, bk = a.bk, G = kThreads / bq;
  const int64_t Dk = a.Dk, Dv = a.Dv, N = a.N, M = a.M, pk = pad(Dk), pv = pad(Dv);
  A* sq = reinterpret_cast<A*>(smem());
  A* sk = sq + bq * pk;
  A* sv = sk + bk * pk;
  A* ss = sv + bk * pv;
  A* smax = ss + bq * bk;   // per-lane partial row maxima
  A* ssum = smax + kThreads;  // per-lane partial row sums
  const A scale = scale_of<A>(a), ninf = neg_inf<A>();
  const int i = tid() / G, c = tid() % G;
  const int64_t nqb = (N + bq - 1) / bq, nwork = a.BH * nqb * a.nsplit;
  for (int64_t w = cta(); w < nwork; w += ncta()) {
    const int64_t split = w % a.nsplit, qb = (w / a.nsplit) % nqb, bh = w / a.nsplit / nqb;
    const int64_t b = bh / a.Hh, h = bh % a.Hh, i0 = qb * bq;
    const int nq = static_cast<int>(lo<int64_t>(bq, N - i0));
    const T* q = static_cast<const T*>(a.q) + b * a.sq_b + h * a.sq_h;
    const T* k = static_cast<const T*>(a.k) + b * a.sk_b + h * a.sk_h;
    const T* v = static_cast<const T*>(a.v) + b * a.sv_b + h * a.sv_h;
    const int64_t ks = split * a.chunk;
    int64_t ke = lo(M, ks + a.chunk);
    if (a.causal) ke = lo(ke, i0 + nq + M - N);
    load_rows(sq, bq, pk, q, a.sq_n, i0, nq, Dk);
    A m = ninf, l = 0, acc[kMaxW];
#pragma unroll
    for (int u = 0; u < kMaxW; ++u) acc[u] = 0;
    for (int64_t j0 = ks; j0 < ke; j0 += bk) {
      const int nk = static_cast<int>(lo<int64_t>(bk, ke - j0));
      load_keys(sk, bk, pk, k, a.sk_n, j0, nk, Dk, a.pool_w);
      load_keys(sv, bk, pv, v, a.sv_n, j0, nk, Dv, a.pool_w);
      block_sync();
      // Each lane's dot products share the q element they read; every sum still runs over d
      // in order from 0, as the backward's recomputation of S does.
      A s[kMaxU];
#pragma unroll
      for (int u = 0; u < kMaxU; ++u) s[u] = 0;
      for (int64_t d = 0; d < Dk; ++d) {
        const A x = sq[i * pk + d];
#pragma unroll
        for (int u = 0; u < kMaxU; ++u) {
          const int j = c + G * u;
          if (j < bk) s[u] += x * sk[j * pk + d];
        }
      }
      A pmax = ninf;
#pragma unroll
      for (int u = 0; u < kMaxU; ++u) {
        const int j = c + G * u;
        s[u] = j < nk && i < nq && visible(a, i0 + i, j0 + j) ? scale * s[u] : ninf;
        pmax = s[u] > pmax ? s[u] : pmax;
      }
      smax[tid()] = pmax;
      block_sync();
      A mx = m;
      for (int g = 0; g < G; ++g) mx = smax[i * G + g] > mx ? smax[i * G + g] : mx;
      // Nothing visible yet: m stays -inf, l and acc 0.
      const A al = mx == ninf ? A(1) : dexp(m - mx);
      A psum = 0;
#pragma unroll
      for (int u = 0; u < kMaxU; ++u) {
        const int j = c + G * u;
        const A p = mx == ninf ? A(0) : dexp(s[u] - mx);
        if (j < bk) ss[i * bk + j] = p;
        psum += p;
      }
      ssum[tid()] = psum;
      block_sync();
      A sum = 0;
      for (int g = 0; g < G; ++g) sum += ssum[i * G + g];
      l = l * al + sum, m = mx;
#pragma unroll
      for (int u = 0; u < kMaxW; ++u) {
        const int64_t d = c + int64_t{G} * u;
        if (d >= Dv) break;
        A t = 0;
        for (int j = 0; j < nk; ++j) t += ss[i * bk + j] * sv[j * pv + d];
        acc[u] = acc[u] * al + t;
      }
      block_sync();  // the next tile overwrites sk, sv, ss
    }
    const int64_t row = bh * N + i0 + i;
    if (i < nq && a.nsplit == 1) {
      T* o = static_cast<T*>(a.out) + row * Dv;
#pragma unroll
      for (int u = 0; u < kMaxW; ++u) {
        const int64_t d = c + int64_t{G} * u;
        if (d < Dv) st(o + d, l > 0 ? acc[u] / l : A(0));
      }
      if (c == 0 && a.lse != nullptr) static_cast<A*>(a.lse)[row] = l > 0 ? m + dlog(l) : ninf;
    } else if (i < nq) {
      const int64_t pw = row * a.nsplit + split;
      A* wacc = static_cast<A*>(a.ws_acc) + pw * Dv;
#pragma unroll
      for (int u = 0; u < kMaxW; ++u) {
        const int64_t d = c + int64_t{G} * u;
        if (d < Dv) wacc[d] = acc[u];
      }
      if (c == 0) static_cast<A*>(a.ws_m)[pw] = m, static_cast<A*>(a.ws_l)[pw] = l;
    }
    block_sync();  // the next work item overwrites sq
  }
}

// Merges the key splits: one thread per output element, splits in order.
template <typename T>
__device__ void combine_body(const Args& a) {
  using A = acc_t<T>;
  const A ninf = neg_inf<A>();
  const int64_t ns = a.nsplit, total = a.BH * a.N * a.Dv;
  const A* wm = static_cast<const A*>(a.ws_m);
  const A* wl = static_cast<const A*>(a.ws_l);
  const A* wacc = static_cast<const A*>(a.ws_acc);
  for (int64_t e = cta() * kThreads + tid(); e < total; e += ncta() * kThreads) {
    const int64_t row = e / a.Dv, d = e - row * a.Dv;
    A mx = ninf;
    for (int64_t s = 0; s < ns; ++s) mx = wm[row * ns + s] > mx ? wm[row * ns + s] : mx;
    A l = 0, acc = 0;
    if (mx != ninf) {
      for (int64_t s = 0; s < ns; ++s) {
        const A f = dexp(wm[row * ns + s] - mx);
        l += wl[row * ns + s] * f;
        acc += wacc[(row * ns + s) * a.Dv + d] * f;
      }
    }
    st(static_cast<T*>(a.out) + e, l > 0 ? acc / l : A(0));
    if (d == 0 && a.lse != nullptr) static_cast<A*>(a.lse)[row] = l > 0 ? mx + dlog(l) : ninf;
  }
}

}  // namespace genfast::cuda::attn_dev
