// C++ CPU kernels of fused attention, forward (+ KV-cache decode) and first-order backward
// (contract: genfast/ops/attention.py; signatures: attention.h; tiles: attention_tile.h).
//
// Forward: per (batch, head) slice the keys of the work unit are packed once into panels (k^T
// (Dk, M) so S = q k^T has keys on the vector axis; v row-major padded to whole vectors, or read
// in place when already so), max-pooling 2x2 on the way when asked. Query blocks of BM rows then
// sweep key blocks of BN with the online softmax (running max m, sum l, accumulator rescale): the
// N x M matrix never exists. Bottom-right causal: key blocks past a query block's diagonal are
// never visited, the diagonal ones masked per row. Every row's result depends only on the fixed
// key blocking, so the forward cuts rows among threads freely.
// Decode (N <= 16 with long M): B * Hh slices do not fill the threads, so the keys are split in
// a number of parts that depends on M only; each part keeps a partial (m, l, acc) and a combine
// pass merges them in part order: the bits do not depend on the thread count.
// Backward: units are (slice, key chunk), the chunk count a function of the shape only. A unit
// sweeps its key blocks (outer) over the query blocks that see them (inner), recomputing P from
// lse, keeps dK, dV of its keys in local accumulators and a private dQ; chunks' dQ are summed in
// chunk order. Pooled keys: the gradient of a pooled key goes to the first maximum of its 2x2
// window (order (0,0), (0,1), (1,0), (1,1)), the other rows get 0.
#include "cpu/attention.h"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <vector>

#include "common/dtype.h"
#include "common/parallel.h"
#include "cpu/attention_tile.h"

namespace genfast::cpu {
namespace {

using namespace attn_tile;

constexpr int64_t BM = 64;          // query rows per block
constexpr int64_t BN = 128;         // keys per block (a multiple of every vec_len)
constexpr int64_t kDecodeRows = 16;  // N at most this: the decode path may split keys
constexpr int64_t kSplitKeys = 256;  // keys per decode part (at least)
constexpr int64_t kMaxSplits = 64;
constexpr int64_t kDotRows = 4;  // N at most this: scores by dot products on k in place

// One online-softmax step on a block S (R rows, lim[r] visible keys of bn, row stride lds): P
// replaces S (zero past lim up to bn), m / l update, acc rows (dvp wide) rescaled.
template <typename T>
GENFAST_INLINE void online_body(int64_t R, int64_t bn, T* S, int64_t lds, T scale,
                                const int64_t* lim, T* m, T* l, T* acc, int64_t dvp) {
  constexpr T kNegInf = -std::numeric_limits<T>::infinity();
  for (int64_t r = 0; r < R; ++r) {
    T* s = S + r * lds;
    const int64_t e = std::max<int64_t>(0, std::min(lim[r], bn));
    if (e == 0) {
      for (int64_t j = 0; j < bn; ++j) s[j] = T(0);
      continue;
    }
    T mx[fastmath::kLanes];
    for (int i = 0; i < fastmath::kLanes; ++i) mx[i] = kNegInf;
    int64_t j = 0;
    for (; j + fastmath::kLanes <= e; j += fastmath::kLanes)
      for (int i = 0; i < fastmath::kLanes; ++i) {
        const T x = s[j + i] * scale;
        mx[i] = x > mx[i] ? x : mx[i];
      }
    for (int i = 0; j + i < e; ++i) {
      const T x = s[j + i] * scale;
      mx[i] = x > mx[i] ? x : mx[i];
    }
    T mb = mx[0];
    for (int i = 1; i < fastmath::kLanes; ++i) mb = mx[i] > mb ? mx[i] : mb;
    const T mold = m[r], mnew = mb > mold ? mb : mold;
    for (int64_t t = 0; t < e; ++t) s[t] = exp_t(s[t] * scale - mnew);
    for (int64_t t = e; t < bn; ++t) s[t] = T(0);
    const T sum = fastmath::lane_sum<T>(e, [&](int64_t t) { return s[t]; });
    if (mold == kNegInf) {
      l[r] = sum;
    } else if (mnew != mold) {
      const T alpha = exp_t(mold - mnew);
      l[r] = l[r] * alpha + sum;
      T* a = acc + r * dvp;
      for (int64_t d = 0; d < dvp; ++d) a[d] *= alpha;
    } else {
      l[r] += sum;
    }
    m[r] = mnew;
  }
}

// online_body for float32 on whole vectors: the row's BN scores stay in registers from the max
// through the exp to the sum.
template <int Isa>
GENFAST_INLINE void online_vec(int64_t R, int64_t bn, float* S, int64_t lds, float scale,
                               const int64_t* lim, float* m, float* l, float* acc, int64_t dvp) {
  using V = typename Shape<float, Isa>::V;
  constexpr int VL = Shape<float, Isa>::VL;
  constexpr float kNegInf = -std::numeric_limits<float>::infinity();
  const int64_t nv = (bn + VL - 1) / VL;
  V x[BN / VL];
  for (int64_t r = 0; r < R; ++r) {
    float* s = S + r * lds;
    const int64_t e = std::max<int64_t>(0, std::min(lim[r], bn));
    if (e == 0) {
      for (int64_t i = 0; i < nv; ++i) conv_tile::storeu(s + i * VL, V{});
      continue;
    }
    V mx = V{} + kNegInf;
    for (int64_t i = 0; i < nv; ++i) {
      x[i] = conv_tile::loadu<V>(s + i * VL) * scale;
      if ((i + 1) * VL > e) x[i] = lanes_below<VL>(i, e) ? x[i] : V{} + kNegInf;
      mx = mx > x[i] ? mx : x[i];
    }
    const float mb = hmax<float, VL>(mx), mold = m[r], mnew = mb > mold ? mb : mold;
    V sum = V{};
    for (int64_t i = 0; i < nv; ++i) {
      const V p = vexp(x[i] - mnew);
      conv_tile::storeu(s + i * VL, p);
      sum += p;
    }
    const float total = hsum<float, VL>(sum);
    if (mold == kNegInf) {
      l[r] = total;
    } else if (mnew != mold) {
      const float alpha = fastmath::exp(mold - mnew);
      l[r] = l[r] * alpha + total;
      float* a = acc + r * dvp;
      for (int64_t d = 0; d < dvp; ++d) a[d] *= alpha;
    } else {
      l[r] += total;
    }
    m[r] = mnew;
  }
}

GENFAST_ATTN_COPIES(online_step,
                    (int64_t R, int64_t bn, float* S, int64_t lds, float scale,
                     const int64_t* lim, float* m, float* l, float* acc, int64_t dvp),
                    (R, bn, S, lds, scale, lim, m, l, acc, dvp),
                    online_vec<kIsa>(R, bn, S, lds, scale, lim, m, l, acc, dvp))

#define GENFAST_ATTN_ONLINE(T)                                                              \
  GENFAST_ATTN_COPIES(online_step,                                                          \
                      (int64_t R, int64_t bn, T* S, int64_t lds, T scale, const int64_t* lim, \
                       T* m, T* l, T* acc, int64_t dvp),                                    \
                      (R, bn, S, lds, scale, lim, m, l, acc, dvp),                          \
                      online_body<T>(R, bn, S, lds, scale, lim, m, l, acc, dvp))
GENFAST_ATTN_ONLINE(double)

template <typename T>
struct Fwd {
  const T *q, *k, *v;
  T *o, *lse;
  int64_t B, Hh, N, M, Sk, Dk, Dv;
  int64_t sq_b, sq_h, sq_n, sk_b, sk_h, sk_n, sv_b, sv_h, sv_n;
  int64_t pw;
  bool causal;
  T scale;
  int isa;
  int64_t VL, Dvp;
  bool v_direct;  // v read in place (not pooled, Dv a whole number of vectors)
  bool k_direct;  // S by dot products on k in place (few rows, not pooled): no k^T panel
};

// Per-thread buffers of the forward, sized for panels of up to `keys` keys.
template <typename T>
struct FwdWork {
  std::vector<T> kt, vp, s, acc, m, l, tmp;
  std::vector<int64_t> lim;
  int64_t ldkt = 0;
  void size(const Fwd<T>& a, int64_t keys) {
    ldkt = round_up(std::max<int64_t>(keys, 1), a.VL);
    if (!a.k_direct) kt.resize(static_cast<size_t>(a.Dk * ldkt));
    if (!a.v_direct) vp.resize(static_cast<size_t>(keys * a.Dvp));
    s.resize(static_cast<size_t>(BM * BN));
    acc.resize(static_cast<size_t>(BM * a.Dvp));
    m.resize(BM), l.resize(BM), lim.resize(BM);
    tmp.resize(static_cast<size_t>(std::max(a.Dk, a.Dv)));
  }
};

// Packs keys [k0, k1) of slice (b, h) into w's panels; returns (v panel, its row stride).
template <typename T>
std::pair<const T*, int64_t> pack_fwd(const Fwd<T>& a, int64_t b, int64_t h, int64_t k0,
                                      int64_t k1, FwdWork<T>& w) {
  const KeyRows<T> kr{a.k + b * a.sk_b + h * a.sk_h, a.sk_n, a.pw};
  const KeyRows<T> vr{a.v + b * a.sv_b + h * a.sv_h, a.sv_n, a.pw};
  if (!a.k_direct) pack_t(kr, a.Dk, k0, k1, w.kt.data(), w.ldkt, w.tmp.data());
  if (a.v_direct) return {vr.base + k0 * a.sv_n, a.sv_n};
  pack_r(vr, a.Dv, a.Dvp, k0, k1, w.vp.data());
  return {w.vp.data(), a.Dvp};
}

// Query rows [q0, q0 + bm) of slice (b, h) against keys [k0, k1) (packed from kbase on):
// w.m, w.l, w.acc start fresh and end with the block's unnormalised state.
template <typename T>
void attend(const Fwd<T>& a, int64_t b, int64_t h, int64_t q0, int64_t bm, int64_t k0,
            int64_t k1, int64_t kbase, const T* vpan, int64_t ldv, FwdWork<T>& w) {
  std::fill(w.m.begin(), w.m.end(), -std::numeric_limits<T>::infinity());
  std::fill(w.l.begin(), w.l.end(), T(0));
  std::fill(w.acc.begin(), w.acc.end(), T(0));
  const int64_t shift = a.M - a.N;  // query i sees keys j <= i + shift
  if (a.causal) k1 = std::min(k1, q0 + bm + shift);
  const T* qs = a.q + b * a.sq_b + h * a.sq_h + q0 * a.sq_n;
  for (int64_t j0 = k0; j0 < k1; j0 += BN) {
    const int64_t bn = std::min(BN, k1 - j0), ncols = round_up(bn, a.VL);
    if (a.k_direct)
      dot_rows(a.isa, bm, bn, ncols, a.Dk, qs, a.sq_n,
               a.k + b * a.sk_b + h * a.sk_h + j0 * a.sk_n, a.sk_n, w.s.data(), BN);
    else
      gemm(a.isa, false, bm, ncols, a.Dk, qs, a.sq_n, 1, w.kt.data() + (j0 - kbase), w.ldkt,
           w.s.data(), BN);
    for (int64_t r = 0; r < bm; ++r) w.lim[r] = a.causal ? q0 + r + shift - j0 + 1 : bn;
    online_step(a.isa, bm, bn, w.s.data(), BN, a.scale, w.lim.data(), w.m.data(), w.l.data(),
                w.acc.data(), a.Dvp);
    gemm(a.isa, true, bm, a.Dvp, bn, w.s.data(), BN, 1, vpan + (j0 - kbase) * ldv, ldv,
         w.acc.data(), a.Dvp);
  }
}

template <typename T>
void fwd_rows(const Fwd<T>& a, int64_t slice, int64_t qa, int64_t qb, FwdWork<T>& w) {
  const int64_t b = slice / a.Hh, h = slice % a.Hh;
  const int64_t kend =
      a.causal ? std::clamp<int64_t>(qb + a.M - a.N, 0, a.M) : a.M;  // keys these rows see
  const auto [vpan, ldv] = pack_fwd(a, b, h, 0, kend, w);
  for (int64_t q0 = qa; q0 < qb; q0 += BM) {
    const int64_t bm = std::min(BM, qb - q0);
    attend(a, b, h, q0, bm, 0, kend, 0, vpan, ldv, w);
    for (int64_t r = 0; r < bm; ++r) {
      const int64_t i = slice * a.N + q0 + r;
      const T l = w.l[r];
      const T inv = l > T(0) ? T(1) / l : T(0);
      for (int64_t d = 0; d < a.Dv; ++d) a.o[i * a.Dv + d] = w.acc[r * a.Dvp + d] * inv;
      if (a.lse)
        a.lse[i] = l > T(0) ? w.m[r] + std::log(l) : -std::numeric_limits<T>::infinity();
    }
  }
}

template <typename T>
void fwd_run(const Fwd<T>& a, int num_threads) {
  const int64_t slices = a.B * a.Hh;
  const int64_t nkb = (a.M + BN - 1) / BN;
  const int64_t splits =
      a.N <= kDecodeRows ? std::min<int64_t>({a.M / kSplitKeys, kMaxSplits, nkb}) : 1;
  if (splits >= 2) {
    // Partial (m, l, acc) per (slice, part), merged in part order.
    const int64_t per = a.N * (2 + a.Dvp);
    std::vector<T> part(static_cast<size_t>(slices * splits * per));
    parallel_for(slices * splits, a.N * (a.M / splits) * (a.Dk + a.Dv), num_threads,
                 [&](int64_t u0, int64_t u1) {
                   FwdWork<T> w;
                   w.size(a, (nkb + splits - 1) / splits * BN);
                   for (int64_t u = u0; u < u1; ++u) {
                     const int64_t slice = u / splits, s = u % splits;
                     const int64_t b = slice / a.Hh, h = slice % a.Hh;
                     const int64_t k0 = nkb * s / splits * BN,
                                   k1 = std::min(a.M, nkb * (s + 1) / splits * BN);
                     const auto [vpan, ldv] = pack_fwd(a, b, h, k0, k1, w);
                     attend(a, b, h, 0, a.N, k0, k1, k0, vpan, ldv, w);
                     T* p = part.data() + u * per;
                     std::copy(w.m.begin(), w.m.begin() + a.N, p);
                     std::copy(w.l.begin(), w.l.begin() + a.N, p + a.N);
                     std::copy(w.acc.begin(), w.acc.begin() + a.N * a.Dvp, p + 2 * a.N);
                   }
                 });
    parallel_for(slices * a.N, splits * a.Dv, num_threads, [&](int64_t i0, int64_t i1) {
      for (int64_t i = i0; i < i1; ++i) {
        const int64_t slice = i / a.N, r = i % a.N;
        const T* p0 = part.data() + slice * splits * per;
        T mm = -std::numeric_limits<T>::infinity();
        for (int64_t s = 0; s < splits; ++s) {
          const T* p = p0 + s * per;
          if (p[a.N + r] > T(0)) mm = std::max(mm, p[r]);
        }
        T L = 0;
        T* o = a.o + i * a.Dv;
        std::fill(o, o + a.Dv, T(0));
        for (int64_t s = 0; s < splits; ++s) {
          const T* p = p0 + s * per;
          if (!(p[a.N + r] > T(0))) continue;
          const T f = std::exp(p[r] - mm);
          L += p[a.N + r] * f;
          const T* acc = p + 2 * a.N + r * a.Dvp;
          for (int64_t d = 0; d < a.Dv; ++d) o[d] += acc[d] * f;
        }
        const T inv = L > T(0) ? T(1) / L : T(0);
        for (int64_t d = 0; d < a.Dv; ++d) o[d] *= inv;
        if (a.lse) a.lse[i] = L > T(0) ? mm + std::log(L) : -std::numeric_limits<T>::infinity();
      }
    });
    return;
  }
  // Rows are independent: cut each slice into enough row chunks to feed the threads.
  const int64_t nqb = (a.N + BM - 1) / BM;
  const int64_t want = 2 * static_cast<int64_t>(std::max(num_threads, 1));
  const int64_t chunks = std::clamp<int64_t>((want + slices - 1) / slices, 1, nqb);
  parallel_for(slices * chunks, (a.N / chunks) * a.M * (a.Dk + a.Dv), num_threads,
               [&](int64_t u0, int64_t u1) {
                 FwdWork<T> w;
                 w.size(a, a.M);
                 for (int64_t u = u0; u < u1; ++u) {
                   const int64_t slice = u / chunks, c = u % chunks;
                   const int64_t qa = nqb * c / chunks * BM,
                                 qb = std::min(a.N, nqb * (c + 1) / chunks * BM);
                   if (qa < qb) fwd_rows(a, slice, qa, qb, w);
                 }
               });
}

}  // namespace

template <typename T>
static void fwd_typed(const void* q, const void* k, const void* v, void* o, void* lse,
                      int64_t B, int64_t Hh, int64_t N, int64_t M, int64_t Sk, int64_t Dk,
                      int64_t Dv, int64_t sq_b, int64_t sq_h, int64_t sq_n, int64_t sk_b,
                      int64_t sk_h, int64_t sk_n, int64_t sv_b, int64_t sv_h, int64_t sv_n,
                      int64_t pool_w, bool causal, double scale, int num_threads) {
  Fwd<T> a{static_cast<const T*>(q), static_cast<const T*>(k), static_cast<const T*>(v),
           static_cast<T*>(o), static_cast<T*>(lse), B, Hh, N, M, Sk, Dk, Dv, sq_b, sq_h, sq_n,
           sk_b, sk_h, sk_n, sv_b, sv_h, sv_n, pool_w, causal, static_cast<T>(scale),
           isa::active(), 0, 0, false, false};
  a.VL = vec_len<T>(a.isa);
  a.Dvp = round_up(std::max<int64_t>(Dv, 1), a.VL);
  a.v_direct = pool_w == 0 && Dv % a.VL == 0 && Dv > 0;
  a.k_direct = pool_w == 0 && N <= kDotRows;
  if (B * Hh * N == 0) return;
  if (M == 0 || Dv == 0) {
    // No key (or nothing to average): o = 0; lse = -inf without keys, else the row's lse.
    std::fill(a.o, a.o + B * Hh * N * Dv, T(0));
    if (M == 0 && a.lse) std::fill(a.lse, a.lse + B * Hh * N, -std::numeric_limits<T>::infinity());
    if (M == 0 || !a.lse) return;
  }
  if (Dv == 0) {
    // lse still needs the scores: run with a one-column zero v.
    std::vector<T> zeros(static_cast<size_t>(Sk), T(0)), otmp(static_cast<size_t>(B * Hh * N));
    Fwd<T> b2 = a;
    b2.v = zeros.data(), b2.sv_b = 0, b2.sv_h = 0, b2.sv_n = 1, b2.Dv = 1, b2.o = otmp.data();
    b2.Dvp = a.VL, b2.v_direct = false;
    fwd_run(b2, num_threads);
    return;
  }
  fwd_run(a, num_threads);
}

void attention_fwd(const void* q, const void* k, const void* v, void* o, void* lse, int64_t B,
                   int64_t Hh, int64_t N, int64_t M, int64_t Sk, int64_t Dk, int64_t Dv,
                   int64_t sq_b, int64_t sq_h, int64_t sq_n, int64_t sk_b, int64_t sk_h,
                   int64_t sk_n, int64_t sv_b, int64_t sv_h, int64_t sv_n, int64_t pool_h,
                   int64_t pool_w, bool causal, double scale, int dtype, int num_threads) {
  (void)pool_h;
  if (cpu_is_float32(dtype, "attention_fwd"))
    fwd_typed<float>(q, k, v, o, lse, B, Hh, N, M, Sk, Dk, Dv, sq_b, sq_h, sq_n, sk_b, sk_h,
                     sk_n, sv_b, sv_h, sv_n, pool_w, causal, scale, num_threads);
  else
    fwd_typed<double>(q, k, v, o, lse, B, Hh, N, M, Sk, Dk, Dv, sq_b, sq_h, sq_n, sk_b, sk_h,
                      sk_n, sv_b, sv_h, sv_n, pool_w, causal, scale, num_threads);
}

}  // namespace genfast::cpu
