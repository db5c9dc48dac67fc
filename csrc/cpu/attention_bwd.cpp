// C++ CPU kernel of fused attention's first-order backward (contract: genfast/ops/attention.py;
// signature: attention.h; tiles: attention_tile.h; the forward: attention.cpp).
//
// Units are (slice, key chunk); the chunk count depends on the shape only (enough units for
// any thread count when B * Hh is small), so the bits do not depend on the thread count. A unit
// packs its keys once (k^T and v^T panels for S = q k^T and dP = dO v^T, k row-major for dQ),
// then sweeps its key blocks (outer) over the query blocks that see them (inner; bottom-right
// causal skips the blocks above the diagonal): P = exp(s S - lse) recomputed, dS = s P (dP - D)
// with D = rowsum(dO o), dV += P^T dO and dK += dS^T q in the unit's key accumulators, dQ +=
// dS k in its private dQ. Chunks' dQ are summed in chunk order after all units ran. Pooled
// keys: dk / dv of a pooled key go to the first maximum of its 2x2 window, every other row 0.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <type_traits>
#include <vector>

#include "common/dtype.h"
#include "common/parallel.h"
#include "cpu/attention.h"
#include "cpu/attention_tile.h"

namespace genfast::cpu {
namespace {

using namespace attn_tile;

constexpr int64_t BM = 64;         // query rows per block
constexpr int64_t BN = 64;         // keys per block (a multiple of every vec_len)
constexpr int64_t kMinUnits = 16;  // key chunks per slice so that slices * chunks reach this

template <typename T>
struct Bwd {
  const T *q, *k, *v, *o, *lse, *dout;
  T *dq, *dk, *dv;
  int64_t B, Hh, N, M, Sk, Dk, Dv, ph, pw;
  bool causal;
  T scale;
  int isa;
  int64_t VL, Dkp, Dvp, chunks, nkb;
  T* part;  // chunks > 1: dQ per (slice, chunk), (N, Dk)
  int64_t KW = 0;  // lanes Dk is padded to: VL, or VL / 2 on the half-width dK / dQ path
};

template <typename T>
struct BwdWork {
  std::vector<T> kt, vt, kp, dkp, dvp, qp, dop, dq, dr, lu, s, dp, tmp;
  std::vector<int64_t> lim;
  int64_t ldkt = 0;
};

// Writes the pooled gradient g (R keys from k0, row stride ld) of one of k / v to the unpooled
// rows of out: each window's first maximum in x gets it, the window's other rows 0. On vector
// types with masks: GCC leaves a scalar loop of float compares and selects branchy.
template <typename T, int Isa>
GENFAST_INLINE void route_body(const T* x, const T* g, int64_t ld, int64_t k0, int64_t R,
                               int64_t D, int64_t pw, T* out) {
  constexpr int W = Isa == isa::kScalar ? 1 : (Isa == isa::kBase ? 16 : 32) / sizeof(T);
  using V = typename conv_tile::Lanes<T, W>::V;
  const KeyRows<T> kr{x, D, pw};
  for (int64_t jj = 0; jj < R; ++jj) {
    const int64_t r0 = kr.first(k0 + jj);
    const T *xa = x + r0 * D, *xb = xa + D, *xc = xa + pw * D, *xd = xc + D;
    T *oa = out + r0 * D, *ob = oa + D, *oc = oa + pw * D, *od = oc + D;
    const T* gj = g + jj * ld;
    int64_t d = 0;
    if constexpr (W > 1) {
      using conv_tile::loadu;
      using conv_tile::storeu;
      for (; d + W <= D; d += W) {
        const V a = loadu<V>(xa + d), b = loadu<V>(xb + d), c = loadu<V>(xc + d);
        const V e = loadu<V>(xd + d), gd = loadu<V>(gj + d);
        V m = a;
        m = b > m ? b : m;
        m = c > m ? c : m;
        m = e > m ? e : m;
        const auto ta = a == m, tb = (b == m) & ~ta, tc = (c == m) & ~ta & ~tb;
        const auto td = ~(ta | tb | tc);
        storeu(oa + d, ta ? gd : V{});
        storeu(ob + d, tb ? gd : V{});
        storeu(oc + d, tc ? gd : V{});
        storeu(od + d, td ? gd : V{});
      }
    }
    for (; d < D; ++d) {
      const T a = xa[d], b = xb[d], c = xc[d], e = xd[d], gd = gj[d];
      T m = a;
      m = b > m ? b : m;
      m = c > m ? c : m;
      m = e > m ? e : m;
      const int w = a == m ? 0 : b == m ? 1 : c == m ? 2 : 3;
      oa[d] = w == 0 ? gd : T(0);
      ob[d] = w == 1 ? gd : T(0);
      oc[d] = w == 2 ? gd : T(0);
      od[d] = w == 3 ? gd : T(0);
    }
  }
}

#define GENFAST_ATTN_ROUTE(T)                                                               \
  GENFAST_ATTN_COPIES(route,                                                                \
                      (const T* x, const T* g, int64_t ld, int64_t k0, int64_t R, int64_t D, \
                       int64_t pw, T* out),                                                 \
                      (x, g, ld, k0, R, D, pw, out),                                        \
                      route_body<T, kIsa>(x, g, ld, k0, R, D, pw, out))
GENFAST_ATTN_ROUTE(float)
GENFAST_ATTN_ROUTE(double)

template <typename T>
void bwd_unit(const Bwd<T>& a, int64_t slice, int64_t c, BwdWork<T>& w) {
  const int64_t N = a.N, M = a.M, Dk = a.Dk, Dv = a.Dv, VL = a.VL;
  const int64_t ka = a.nkb * c / a.chunks * BN, kb = std::min(M, a.nkb * (c + 1) / a.chunks * BN);
  const int64_t R = kb - ka, shift = M - N;
  const T* q = a.q + slice * N * Dk;
  const T* k = a.k + slice * a.Sk * Dk;
  const T* v = a.v + slice * a.Sk * Dv;
  const T* o = a.o + slice * N * Dv;
  const T* dout = a.dout + slice * N * Dv;
  const T* lse = a.lse + slice * N;
  T* dk = a.dk + slice * a.Sk * Dk;
  T* dv = a.dv + slice * a.Sk * Dv;
  const KeyRows<T> kr{k, Dk, a.pw}, vr{v, Dv, a.pw};

  // Panels of this chunk's keys; q / dO padded to whole vectors unless already so.
  w.ldkt = round_up(std::max<int64_t>(R, 1), VL);
  w.kt.resize(static_cast<size_t>(Dk * w.ldkt));
  w.vt.resize(static_cast<size_t>(Dv * w.ldkt));
  w.tmp.resize(static_cast<size_t>(std::max(Dk, Dv)));
  pack_t(kr, Dk, ka, kb, w.kt.data(), w.ldkt, w.tmp.data());
  pack_t(vr, Dv, ka, kb, w.vt.data(), w.ldkt, w.tmp.data());
  const bool k_direct = a.pw == 0 && Dk % a.KW == 0;
  const T* kp = k + ka * Dk;
  int64_t ldk = Dk;
  if (!k_direct) {
    w.kp.resize(static_cast<size_t>(R * a.Dkp));
    pack_r(kr, Dk, a.Dkp, ka, kb, w.kp.data());
    kp = w.kp.data(), ldk = a.Dkp;
  }
  // The query rows that see any of these keys: i + shift >= ka.
  const int64_t qfirst = a.causal ? std::clamp<int64_t>(ka - shift, 0, N) / BM * BM : 0;
  const int64_t nq = N - qfirst;
  const T* qp = q + qfirst * Dk;
  int64_t ldq = Dk;
  if (Dk % a.KW != 0) {
    w.qp.resize(static_cast<size_t>(nq * a.Dkp));
    pad_rows(qp, Dk, nq, Dk, a.Dkp, w.qp.data());
    qp = w.qp.data(), ldq = a.Dkp;
  }
  const T* dop = dout + qfirst * Dv;
  int64_t lddo = Dv;
  if (Dv % VL != 0) {
    w.dop.resize(static_cast<size_t>(nq * a.Dvp));
    pad_rows(dop, Dv, nq, Dv, a.Dvp, w.dop.data());
    dop = w.dop.data(), lddo = a.Dvp;
  }
  w.dr.resize(static_cast<size_t>(nq));
  w.lu.resize(static_cast<size_t>(nq));
  for (int64_t i = 0; i < nq; ++i) {
    const T* x = dout + (qfirst + i) * Dv;
    const T* y = o + (qfirst + i) * Dv;
    T s = 0;
    for (int64_t d = 0; d < Dv; ++d) s += x[d] * y[d];
    w.dr[i] = s;
    const T l = lse[qfirst + i];
    // A row without keys: P = exp(S - inf) = 0, so every gradient through it is 0.
    w.lu[i] = l == -std::numeric_limits<T>::infinity() ? std::numeric_limits<T>::infinity() : l;
  }
  w.dkp.assign(static_cast<size_t>(R * a.Dkp), T(0));
  w.dvp.assign(static_cast<size_t>(R * a.Dvp), T(0));
  w.dq.assign(static_cast<size_t>(nq * a.Dkp), T(0));
  w.s.resize(static_cast<size_t>(BM * BN));
  w.dp.resize(static_cast<size_t>(BM * BN));
  w.lim.resize(BM);

  for (int64_t j0 = ka; j0 < kb; j0 += BN) {
    const int64_t bn = std::min(BN, kb - j0), ncols = round_up(bn, VL), jj = j0 - ka;
    const int64_t qs = a.causal ? std::clamp<int64_t>(j0 - shift, 0, N) / BM * BM : 0;
    for (int64_t q0 = qs; q0 < N; q0 += BM) {
      const int64_t bm = std::min(BM, N - q0), qi = q0 - qfirst;
      gemm(a.isa, false, bm, ncols, Dk, q + q0 * Dk, Dk, 1, w.kt.data() + jj, w.ldkt,
           w.s.data(), BN);
      const int64_t* lim = nullptr;
      if (a.causal && q0 + shift < j0 + bn - 1) {  // the diagonal crosses this block
        for (int64_t r = 0; r < bm; ++r) w.lim[r] = q0 + r + shift - j0 + 1;
        lim = w.lim.data();
      }
      probs_rows(a.isa, bm, bn, ncols, w.s.data(), BN, a.scale, w.lu.data() + qi, lim,
                 static_cast<T*>(nullptr));
      gemm(a.isa, false, bm, ncols, Dv, dout + q0 * Dv, Dv, 1, w.vt.data() + jj, w.ldkt,
           w.dp.data(), BN);
      ds_rows(a.isa, bm, ncols, w.s.data(), BN, w.dp.data(), BN, w.dr.data() + qi, a.scale);
      gemm(a.isa, true, bn, a.Dvp, bm, w.s.data(), 1, BN, dop + qi * lddo, lddo,
           w.dvp.data() + jj * a.Dvp, a.Dvp);
      if constexpr (std::is_same_v<T, float>) {
        if (a.KW != VL) {
          gemm_half(a.isa, bn, bm, w.dp.data(), 1, BN, qp + qi * ldq, ldq,
                    w.dkp.data() + jj * a.Dkp, a.Dkp);
          gemm_half(a.isa, bm, bn, w.dp.data(), BN, 1, kp + jj * ldk, ldk,
                    w.dq.data() + qi * a.Dkp, a.Dkp);
          continue;
        }
      }
      gemm(a.isa, true, bn, a.Dkp, bm, w.dp.data(), 1, BN, qp + qi * ldq, ldq,
           w.dkp.data() + jj * a.Dkp, a.Dkp);
      gemm(a.isa, true, bm, a.Dkp, bn, w.dp.data(), BN, 1, kp + jj * ldk, ldk,
           w.dq.data() + qi * a.Dkp, a.Dkp);
    }
  }

  if (a.pw == 0) {
    for (int64_t j = 0; j < R; ++j) {
      std::memcpy(dk + (ka + j) * Dk, w.dkp.data() + j * a.Dkp, Dk * sizeof(T));
      std::memcpy(dv + (ka + j) * Dv, w.dvp.data() + j * a.Dvp, Dv * sizeof(T));
    }
  } else {
    route(a.isa, k, w.dkp.data(), a.Dkp, ka, R, Dk, a.pw, dk);
    route(a.isa, v, w.dvp.data(), a.Dvp, ka, R, Dv, a.pw, dv);
    if (c == 0) {  // rows in no window (an odd grid's last row / column) get 0
      for (int64_t r = 0; r < a.Sk; ++r) {
        const int64_t y = r / a.pw, x = r % a.pw;
        if (y < a.ph / 2 * 2 && x < a.pw / 2 * 2) continue;
        std::fill(dk + r * Dk, dk + (r + 1) * Dk, T(0));
        std::fill(dv + r * Dv, dv + (r + 1) * Dv, T(0));
      }
    }
  }
  T* dst = a.chunks == 1 ? a.dq + slice * N * Dk : a.part + (slice * a.chunks + c) * N * Dk;
  std::fill(dst, dst + qfirst * Dk, T(0));
  for (int64_t i = 0; i < nq; ++i)
    std::memcpy(dst + (qfirst + i) * Dk, w.dq.data() + i * a.Dkp, Dk * sizeof(T));
}

template <typename T>
void bwd_typed(const void* q, const void* k, const void* v, const void* o, const void* lse,
               const void* dout, void* dq, void* dk, void* dv, int64_t B, int64_t Hh, int64_t N,
               int64_t M, int64_t Sk, int64_t Dk, int64_t Dv, int64_t pool_h, int64_t pool_w,
               bool causal, double scale, int num_threads) {
  Bwd<T> a{static_cast<const T*>(q), static_cast<const T*>(k), static_cast<const T*>(v),
           static_cast<const T*>(o), static_cast<const T*>(lse), static_cast<const T*>(dout),
           static_cast<T*>(dq), static_cast<T*>(dk), static_cast<T*>(dv), B, Hh, N, M, Sk, Dk,
           Dv, pool_h, pool_w, causal, static_cast<T>(scale), isa::active(), 0, 0, 0, 1, 0,
           nullptr};
  const int64_t slices = B * Hh;
  if (slices == 0) return;
  if (N == 0 || M == 0) {  // nothing attends: every gradient is 0
    std::fill(a.dq, a.dq + slices * N * Dk, T(0));
    std::fill(a.dk, a.dk + slices * Sk * Dk, T(0));
    std::fill(a.dv, a.dv + slices * Sk * Dv, T(0));
    return;
  }
  a.VL = vec_len<T>(a.isa);
  // Head dims of at most half a vector (SAGAN's Dk = 8 on AVX-512) take the half-width dK / dQ
  // products: full vectors would pad them to twice their width (measured: see the commit).
  a.KW = std::is_same_v<T, float> && a.VL >= 2 && Dk <= a.VL / 2 ? a.VL / 2 : a.VL;
  a.Dkp = round_up(std::max<int64_t>(Dk, 1), a.KW);
  a.Dvp = round_up(std::max<int64_t>(Dv, 1), a.VL);
  a.nkb = (M + BN - 1) / BN;
  a.chunks = std::clamp<int64_t>((kMinUnits + slices - 1) / slices, 1, a.nkb);
  std::vector<T> part;
  if (a.chunks > 1) {
    part.resize(static_cast<size_t>(slices * a.chunks * N * Dk));
    a.part = part.data();
  }
  parallel_for(slices * a.chunks, N * (M / a.chunks) * (Dk + Dv), num_threads,
               [&](int64_t u0, int64_t u1) {
                 BwdWork<T> w;
                 for (int64_t u = u0; u < u1; ++u) bwd_unit(a, u / a.chunks, u % a.chunks, w);
               });
  if (a.chunks > 1)
    parallel_for(slices * N, a.chunks * Dk, num_threads, [&](int64_t i0, int64_t i1) {
      for (int64_t i = i0; i < i1; ++i) {
        const int64_t slice = i / N, r = i % N;
        T* d = a.dq + i * Dk;
        for (int64_t e = 0; e < Dk; ++e) d[e] = T(0);
        for (int64_t c = 0; c < a.chunks; ++c) {
          const T* p = a.part + ((slice * a.chunks + c) * N + r) * Dk;
          for (int64_t e = 0; e < Dk; ++e) d[e] += p[e];
        }
      }
    });
}

}  // namespace

void attention_bwd(const void* q, const void* k, const void* v, const void* o, const void* lse,
                   const void* dout, void* dq, void* dk, void* dv, int64_t B, int64_t Hh,
                   int64_t N, int64_t M, int64_t Sk, int64_t Dk, int64_t Dv, int64_t pool_h,
                   int64_t pool_w, bool causal, double scale, int dtype, int num_threads) {
  if (cpu_is_float32(dtype, "attention_bwd"))
    bwd_typed<float>(q, k, v, o, lse, dout, dq, dk, dv, B, Hh, N, M, Sk, Dk, Dv, pool_h, pool_w,
                     causal, scale, num_threads);
  else
    bwd_typed<double>(q, k, v, o, lse, dout, dq, dk, dv, B, Hh, N, M, Sk, Dk, Dv, pool_h,
                      pool_w, causal, scale, num_threads);
}

}  // namespace genfast::cpu
