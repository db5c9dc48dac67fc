// C++ CPU native sampling loop of a GPT: prefill, per-token decode over the KV cache, cache
// refill with `keep`, head and draw, for B streams in one call, no Python per step. The contract
// (network, packed layout, meta, context / refill rule, noise rows) is the module docstring of
// genfast/ops/attention_generate.py.
//
// A decode step at batch 1 is a chain of GEMVs (3C x C, C x C, 4C x C, C x 4C per layer, V x C
// for the head) that stream every weight once, plus attention over the cache. As in
// lstm_generate.cpp, every matrix is re-laid out once per call into input-major blocks of kOut
// outputs (axpy form: acc[0:kOut] += W_blk[i][0:kOut] * x[i], accumulators in registers over the
// whole input loop, no horizontal sums), and up to kGroup rows share each weight load. A "row"
// is one (stream, position) pair: a decode step runs one row per stream, a prefill / refill runs
// a stream's positions as rows, kRows at a time, so a prefill streams the weights once per kRows
// positions (GEMM-like reuse) instead of once per position. Rows of a pass write their keys and
// values into the cache before any of them attends, and each attends to positions <= its own:
// causal within the pass.
//
// The caches hold each (layer, stream, head) as K^T and V^T, (D, T): scores over the cached
// positions are then an axpy over positions (vectorised along the cache, accumulators in
// registers), and P V a dot product along the same axis for each of the D outputs.
//
// Streams are independent: threads split them and run every step on their own, no barrier. A
// row's arithmetic is the same whatever rows share its pass or group, so results do not depend
// on the thread count.
#include "cpu/attention_generate.h"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <stdexcept>
#include <string>
#include <vector>

#include "common/dtype.h"
#include "common/fastmath.h"
#include "common/parallel.h"
#include "cpu/sample_row.h"

namespace genfast::cpu {
namespace {

using namespace sample_rows;  // sample_row, FilterScratch, to_scale

// Outputs per weight block: 256 bytes, 4 zmm of independent FMA chains per row; kGroup rows of
// them use 16 of the 32 zmm registers, leaving room for the weight loads.
template <typename T>
constexpr int64_t kOut = 256 / sizeof(T);
template <typename T>
constexpr int64_t kVec = 64 / sizeof(T);  // one zmm of T
constexpr int kGroup = 4;
constexpr int64_t kRows = 16;  // rows per pass: weight reuse in prefill vs buffer size

struct Meta {
  int64_t L, V, C, Hh, T, D;
};

const char* const kWho = "attention_generate: ";

int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }
int64_t round_up(int64_t a, int64_t b) { return ceil_div(a, b) * b; }

Meta parse_meta(const int64_t* meta, int64_t meta_len) {
  if (meta == nullptr || meta_len != 5)
    throw std::invalid_argument(std::string(kWho) + "meta must hold 5 entries [L, V, C, Hh, T]");
  Meta m{meta[0], meta[1], meta[2], meta[3], meta[4], 0};
  // Bounds that keep every size product below 2^62 (the weights alone would be exabytes).
  constexpr int64_t kMax = int64_t{1} << 20;
  for (const int64_t v : {m.L, m.V, m.C, m.Hh, m.T})
    if (v < 1 || v > kMax)
      throw std::invalid_argument(std::string(kWho) + "meta has a size out of range (L, V, C, " +
                                  "Hh, T each in [1, 2^20])");
  if (m.C % m.Hh != 0)
    throw std::invalid_argument(std::string(kWho) + "meta's C (" + std::to_string(m.C) +
                                ") must be a multiple of Hh (" + std::to_string(m.Hh) + ")");
  m.D = m.C / m.Hh;
  return m;
}

// A buffer of T whose data starts on a 64-byte boundary (whole-zmm loads of blocks and rows).
template <typename T>
struct Buf {
  std::vector<T> v;
  T* p = nullptr;
  void resize(size_t n) {
    v.assign(n + 64 / sizeof(T), T(0));
    const auto a = reinterpret_cast<std::uintptr_t>(v.data());
    p = v.data() + ((64 - a % 64) % 64) / sizeof(T);
  }
};

struct Mat {
  int64_t in, nb;  // inputs, output blocks
  size_t w, b;     // offsets of the blocks [nb][in][kOut] and the bias [nb * kOut]
};

template <typename T>
struct Layer {
  const T *ln1w, *ln1b, *ln2w, *ln2b;
  Mat attn, proj, fc, proj2;
};

// The network of one call: embeddings and LayerNorm parameters read in place, every matrix
// blocked (zero-padded to whole blocks, so rows padded the same way need no bounds checks).
template <typename T>
struct Net {
  Meta m;
  int64_t Cp, C3p, C4p, Vp;  // C, 3C, 4C, V rounded up to kOut
  const T *wte, *wpe, *lnfw, *lnfb;
  std::vector<Layer<T>> layers;
  Mat head;
  Buf<T> w;
};

template <typename T>
Mat add_mat(T* dst, size_t& used, const T* src, const T* bias, int64_t O, int64_t I) {
  constexpr int64_t W = kOut<T>;
  const int64_t nb = ceil_div(O, W);
  const Mat a{I, nb, used, used + static_cast<size_t>(nb * I * W)};
  used = a.b + static_cast<size_t>(nb * W);
  T* d = dst + a.w;
  for (int64_t o = 0; o < O; ++o)
    for (int64_t i = 0; i < I; ++i) d[((o / W) * I + i) * W + o % W] = src[o * I + i];
  if (bias != nullptr) std::copy(bias, bias + O, dst + a.b);
  return a;
}

template <typename T>
void build_net(Net<T>& n, const T* src, const Meta& m) {
  constexpr int64_t W = kOut<T>;
  const int64_t C = m.C, V = m.V;
  n.m = m;
  n.Cp = round_up(C, W), n.C3p = round_up(3 * C, W), n.C4p = round_up(4 * C, W);
  n.Vp = round_up(V, W);
  const int64_t per_layer = n.C3p * (C + 1) + n.Cp * (C + 1) + n.C4p * (C + 1) + n.Cp * (4 * C + 1);
  n.w.resize(static_cast<size_t>(m.L * per_layer + n.Vp * (C + 1)));
  size_t used = 0;
  const T* p = src;
  n.wte = p, p += V * C;
  n.wpe = p, p += m.T * C;
  n.layers.resize(static_cast<size_t>(m.L));
  for (auto& l : n.layers) {
    l.ln1w = p, l.ln1b = p + C, p += 2 * C;
    l.attn = add_mat(n.w.p, used, p, p + 3 * C * C, 3 * C, C), p += 3 * C * C + 3 * C;
    l.proj = add_mat(n.w.p, used, p, p + C * C, C, C), p += C * C + C;
    l.ln2w = p, l.ln2b = p + C, p += 2 * C;
    l.fc = add_mat(n.w.p, used, p, p + 4 * C * C, 4 * C, C), p += 4 * C * C + 4 * C;
    l.proj2 = add_mat(n.w.p, used, p, p + 4 * C * C, C, 4 * C), p += 4 * C * C + C;
  }
  n.lnfw = p, n.lnfb = p + C, p += 2 * C;
  n.head = add_mat<T>(n.w.p, used, p, nullptr, V, C);  // no bias: stays zero
}

// acc[s][0:W] += sum over i < ins of w[i][0:W] * x[s][i], for NS rows.
template <typename T, int NS>
GENFAST_INLINE void block_gemv(const T* __restrict w, int64_t ins, const T* const* x,
                               T (*acc)[kOut<T>]) {
  constexpr int64_t W = kOut<T>;
  for (int64_t i = 0; i < ins; ++i) {
    const T* wi = w + i * W;
    for (int s = 0; s < NS; ++s) {
      const T v = x[s][i];
      for (int64_t o = 0; o < W; ++o) acc[s][o] += wi[o] * v;
    }
  }
}

// One output block of NS rows: out = W x + b (kAdd: out += W x + b, the residual).
template <typename T, int NS, bool kAdd>
GENFAST_INLINE void gemv_group(const T* w, const T* bias, int64_t ins, const T* const* x,
                               T* const* out, int64_t off) {
  constexpr int64_t W = kOut<T>;
  alignas(64) T acc[NS][W];
  for (int s = 0; s < NS; ++s) std::copy(bias, bias + W, acc[s]);
  block_gemv<T, NS>(w, ins, x, acc);
  for (int s = 0; s < NS; ++s) {
    T* o = out[s] + off;
    for (int64_t k = 0; k < W; ++k) o[k] = kAdd ? o[k] + acc[s][k] : acc[s][k];
  }
}

// R rows through matrix a; each block is read once from memory, then from L1 for the other
// row groups. A switch, not a lambda, picks the group size, so the code stays inside the
// caller's ISA copy (a lambda's body would be compiled for the baseline ISA).
template <typename T, bool kAdd>
GENFAST_INLINE void linear(const Net<T>& net, const Mat& a, int64_t R, const T* const* x,
                           T* const* out) {
  constexpr int64_t W = kOut<T>;
  for (int64_t b = 0; b < a.nb; ++b) {
    const T* w = net.w.p + a.w + b * a.in * W;
    const T* bias = net.w.p + a.b + b * W;
    for (int64_t g = 0; g < R; g += kGroup) {
      switch (std::min<int64_t>(kGroup, R - g)) {
        case 4: gemv_group<T, 4, kAdd>(w, bias, a.in, x + g, out + g, b * W); break;
        case 3: gemv_group<T, 3, kAdd>(w, bias, a.in, x + g, out + g, b * W); break;
        case 2: gemv_group<T, 2, kAdd>(w, bias, a.in, x + g, out + g, b * W); break;
        default: gemv_group<T, 1, kAdd>(w, bias, a.in, x + g, out + g, b * W); break;
      }
    }
  }
}

// Sum of a[0..n) in kVec-lane partial sums (a vectorisable order, fixed for every row).
template <typename T>
GENFAST_INLINE T vsum(const T* a, int64_t n) {
  constexpr int64_t K = kVec<T>;
  T acc[K] = {};
  int64_t i = 0;
  for (; i + K <= n; i += K)
    for (int64_t k = 0; k < K; ++k) acc[k] += a[i + k];
  for (int64_t k = 0; i + k < n; ++k) acc[k] += a[i + k];
  T t = T(0);
  for (int64_t k = 0; k < K; ++k) t += acc[k];
  return t;
}

// LayerNorm over C (eps 1e-5, biased variance); tmp holds C values.
template <typename T>
GENFAST_INLINE void layer_norm(const T* x, int64_t C, const T* w, const T* b, T* out, T* tmp) {
  const T mean = vsum(x, C) / T(C);
  for (int64_t i = 0; i < C; ++i) tmp[i] = (x[i] - mean) * (x[i] - mean);
  const T rstd = T(1) / std::sqrt(vsum(tmp, C) / T(C) + T(1e-5));
  for (int64_t i = 0; i < C; ++i) out[i] = (x[i] - mean) * rstd * w[i] + b[i];
}

// Exact GELU 0.5 u (1 + erf(u / sqrt 2)). float64: libm's erf, as torch's scalar path. float32:
// written through erfc(|u| / sqrt 2) (Numerical Recipes' erfcc, relative error < 1.2e-7
// everywhere), so both tails keep their relative accuracy, and branch-free (fast exp, copysign)
// so the loop vectorises: u >= 0 gives u - u/2 erfc, u < 0 gives u/2 erfc.
GENFAST_INLINE double gelu(double u) { return u * 0.5 * (1.0 + std::erf(u * M_SQRT1_2)); }
GENFAST_INLINE float gelu(float u) {
  const float z = std::fabs(u) * 0.70710678118654752f;
  const float t = 1.0f / (1.0f + 0.5f * z);
  float q = 0.17087277f * t - 0.82215223f;
  q = q * t + 1.48851587f;
  q = q * t - 1.13520398f;
  q = q * t + 0.27886807f;
  q = q * t - 0.18628806f;
  q = q * t + 0.09678418f;
  q = q * t + 0.37409196f;
  q = q * t + 1.00002368f;
  q = q * t - 1.26551223f;
  const float erfc = t * fastmath::exp(q - z * z);
  const float s = std::copysign(1.0f, u), half = 0.5f * u;
  return half * (1.0f + s) - s * half * erfc;
}

GENFAST_INLINE float exp_(float x) { return fastmath::exp(x); }  // x <= 0 here
GENFAST_INLINE double exp_(double x) { return std::exp(x); }

// acc[0:len] += sum over d < D of q[d] * k[d * ld + 0:len]: one block of scores (len = kOut, a
// constant once inlined, in the main loop).
template <typename T>
GENFAST_INLINE void score_block(const T* __restrict q, const T* __restrict k, int64_t D,
                                int64_t ld, int64_t len, T* __restrict acc) {
  for (int64_t d = 0; d < D; ++d) {
    const T qd = q[d];
    const T* kd = k + d * ld;
    for (int64_t o = 0; o < len; ++o) acc[o] += qd * kd[o];
  }
}

// acc[c][k] += sum over blocks j of s[j + k] * v[c * ld + j + k], c < NC: NC independent chains
// of kVec-lane partial sums share each load of s (whole vectors; the caller adds the tail).
template <typename T, int NC>
GENFAST_INLINE void pv_block(const T* __restrict s, const T* __restrict v, int64_t n, int64_t ld,
                             T (*acc)[kVec<T>]) {
  constexpr int64_t K = kVec<T>;
  for (int64_t j = 0; j + K <= n; j += K)
    for (int c = 0; c < NC; ++c)
      for (int64_t k = 0; k < K; ++k) acc[c][k] += s[j + k] * v[c * ld + j + k];
}

// y[0:NC] = (s . v_c) * inv_z for the NC rows v_c = v + c * ld, each a sum of kVec-lane partials.
template <typename T, int NC>
GENFAST_INLINE void pv_rows(const T* s, const T* v, int64_t n, int64_t ld, T inv_z, T* y) {
  constexpr int64_t K = kVec<T>;
  alignas(64) T acc[NC][K] = {};
  pv_block<T, NC>(s, v, n, ld, acc);
  const int64_t j = n / K * K;
  for (int c = 0; c < NC; ++c) {
    for (int64_t k = 0; j + k < n; ++k) acc[c][k] += s[j + k] * v[c * ld + j + k];
    T t = T(0);
    for (int64_t k = 0; k < K; ++k) t += acc[c][k];
    y[c] = t * inv_z;
  }
}

// One head of one row: y = softmax(q K^T / sqrt D) V over cache positions [0, n), with kt, vt
// the head's K^T, V^T (D rows of stride T); s holds n scores.
template <typename T>
GENFAST_INLINE void attend(const T* q, const T* kt, const T* vt, int64_t n, int64_t T_,
                           int64_t D, T scale, T* s, T* y) {
  constexpr int64_t W = kOut<T>, K = kVec<T>;
  int64_t j0 = 0;
  for (; j0 + W <= n; j0 += W) {
    alignas(64) T acc[W] = {};
    score_block(q, kt + j0, D, T_, W, acc);
    for (int64_t o = 0; o < W; ++o) s[j0 + o] = acc[o] * scale;
  }
  if (j0 < n) {  // the same sums, in the same order, over the last partial block
    alignas(64) T acc[W] = {};
    score_block(q, kt + j0, D, T_, n - j0, acc);
    for (int64_t o = 0; o < n - j0; ++o) s[j0 + o] = acc[o] * scale;
  }
  T mx[K];
  for (int64_t k = 0; k < K; ++k) mx[k] = s[0];
  for (int64_t j = 0; j < n; j += K)
    for (int64_t k = 0; k < K && j + k < n; ++k) mx[k] = s[j + k] > mx[k] ? s[j + k] : mx[k];
  T m = mx[0];
  for (int64_t k = 1; k < K; ++k) m = mx[k] > m ? mx[k] : m;
  for (int64_t j = 0; j < n; ++j) s[j] = exp_(s[j] - m);
  const T inv_z = T(1) / vsum(s, n);
  int64_t d = 0;
  for (; d + 4 <= D; d += 4) pv_rows<T, 4>(s, vt + d * T_, n, T_, inv_z, y + d);
  for (; d < D; ++d) pv_rows<T, 1>(s, vt + d * T_, n, T_, inv_z, y + d);
}

// Attention is its own multiversioned function, not inlined into the step's large body: there
// GCC kept the score accumulators in memory (a store and a load per FMA). The dispatch costs a
// switch per (row, head, layer).
GENFAST_MULTIVERSIONED(attend_f32, (const float* q, const float* kt, const float* vt, int64_t n,
                                    int64_t ld, int64_t D, float scale, float* s, float* y),
                       (q, kt, vt, n, ld, D, scale, s, y),
                       attend<float>(q, kt, vt, n, ld, D, scale, s, y))
GENFAST_MULTIVERSIONED(attend_f64, (const double* q, const double* kt, const double* vt, int64_t n,
                                    int64_t ld, int64_t D, double scale, double* s, double* y),
                       (q, kt, vt, n, ld, D, scale, s, y),
                       attend<double>(q, kt, vt, n, ld, D, scale, s, y))
inline void attend_any(const float* q, const float* kt, const float* vt, int64_t n, int64_t ld,
                       int64_t D, float scale, float* s, float* y) {
  attend_f32(q, kt, vt, n, ld, D, scale, s, y);
}
inline void attend_any(const double* q, const double* kt, const double* vt, int64_t n,
                       int64_t ld, int64_t D, double scale, double* s, double* y) {
  attend_f64(q, kt, vt, n, ld, D, scale, s, y);
}

struct Call {
  int64_t* tokens;
  int64_t B, N, start, keep;
  uint64_t seed;
  double inv_temp;
  int64_t top_k;
  double top_p;
  void *kc, *vc;
};

// One thread's buffers: kRows rows of activations (each padded to whole blocks) and the rows'
// (stream, position, token).
template <typename T>
struct Work {
  Buf<T> x, a, qkv, y, h, logits, tmp;
  FilterScratch<T> filter;
  int64_t stream[kRows], pos[kRows], tok[kRows];
  bool want[kRows];  // the row's logits are drawn from
  explicit Work(const Net<T>& n) {
    x.resize(size_t(kRows * n.Cp)), a.resize(size_t(kRows * n.Cp));
    qkv.resize(size_t(kRows * n.C3p)), y.resize(size_t(kRows * n.Cp));
    h.resize(size_t(kRows * n.C4p)), logits.resize(size_t(kRows * n.Vp));
    tmp.resize(size_t(std::max(n.m.C, n.m.T)));
    // The sampler's scratch at full size up front: no allocation inside the loop.
    for (auto* v : {&filter.s, &filter.top}) v->reserve(size_t(n.Vp));
    filter.mass.reserve(2048);
    filter.bucket.reserve(size_t(n.Vp));
  }
};

// The rows of wk through the network: every layer writes the rows' keys and values at their
// positions, then each row attends to its stream's positions <= its own. Rows with `want` get
// their token drawn into tokens[stream, p].
template <typename T>
GENFAST_INLINE void run_rows(const Net<T>& net, const Call& c, Work<T>& wk, int64_t R,
                             int64_t p) {
  const Meta& m = net.m;
  const int64_t C = m.C, D = m.D, T_ = m.T;
  const T scale = T(1) / std::sqrt(T(D));
  T* kc = static_cast<T*>(c.kc);
  T* vc = static_cast<T*>(c.vc);
  const T *ain[kRows], *yin[kRows], *hin[kRows];
  T *x[kRows], *a[kRows], *qkv[kRows], *y[kRows], *h[kRows];
  for (int64_t r = 0; r < R; ++r) {
    x[r] = wk.x.p + r * net.Cp;
    ain[r] = a[r] = wk.a.p + r * net.Cp;
    qkv[r] = wk.qkv.p + r * net.C3p;
    yin[r] = y[r] = wk.y.p + r * net.Cp;
    hin[r] = h[r] = wk.h.p + r * net.C4p;
    const T *e = net.wte + wk.tok[r] * C, *pe = net.wpe + wk.pos[r] * C;
    for (int64_t i = 0; i < C; ++i) x[r][i] = e[i] + pe[i];
  }
  for (int64_t l = 0; l < m.L; ++l) {
    const Layer<T>& ly = net.layers[size_t(l)];
    for (int64_t r = 0; r < R; ++r) layer_norm(x[r], C, ly.ln1w, ly.ln1b, a[r], wk.tmp.p);
    linear<T, false>(net, ly.attn, R, ain, qkv);
    for (int64_t r = 0; r < R; ++r) {
      const int64_t slab = (l * c.B + wk.stream[r]) * m.Hh * T_ * D, t = wk.pos[r];
      for (int64_t i = 0; i < C; ++i) {  // column i = h D + d of k / v -> row d of head h
        kc[slab + i * T_ + t] = qkv[r][C + i];
        vc[slab + i * T_ + t] = qkv[r][2 * C + i];
      }
    }
    for (int64_t r = 0; r < R; ++r) {
      const int64_t slab = (l * c.B + wk.stream[r]) * m.Hh * T_ * D;
      for (int64_t hd = 0; hd < m.Hh; ++hd)
        attend_any(qkv[r] + hd * D, kc + slab + hd * D * T_, vc + slab + hd * D * T_,
               wk.pos[r] + 1, T_, D, scale, wk.tmp.p, y[r] + hd * D);
    }
    linear<T, true>(net, ly.proj, R, yin, x);
    for (int64_t r = 0; r < R; ++r) layer_norm(x[r], C, ly.ln2w, ly.ln2b, a[r], wk.tmp.p);
    linear<T, false>(net, ly.fc, R, ain, h);
    for (int64_t r = 0; r < R; ++r)
      for (int64_t i = 0; i < 4 * C; ++i) h[r][i] = gelu(h[r][i]);
    linear<T, true>(net, ly.proj2, R, hin, x);
  }
  const T* hx[kRows];
  T* lg[kRows];
  int64_t nw = 0;
  for (int64_t r = 0; r < R; ++r) {
    if (!wk.want[r]) continue;
    layer_norm(x[r], C, net.lnfw, net.lnfb, a[r], wk.tmp.p);
    hx[nw] = a[r], lg[nw] = wk.logits.p + nw * net.Vp, ++nw;
  }
  linear<T, false>(net, net.head, nw, hx, lg);
  const T inv_temp = to_scale<T>(c.inv_temp);
  for (int64_t r = 0, k = 0; r < R; ++r) {
    if (!wk.want[r]) continue;
    const uint64_t row = uint64_t(p) * uint64_t(c.B) + uint64_t(wk.stream[r]);
    c.tokens[wk.stream[r] * c.N + p] =
        sample_row(lg[k++], m.V, c.seed, row, inv_temp, c.top_k, c.top_p, wk.filter);
  }
}

// Every draw of streams [b0, b1). All streams share the cache length, so each step is the same
// kind (prefill, refill or append) for all of them.
template <typename T>
GENFAST_INLINE void run_streams(const Net<T>& net, const Call& c, Work<T>& wk, int64_t b0,
                                int64_t b1) {
  const int64_t T_ = net.m.T;
  int64_t len = 0;  // cached positions
  for (int64_t p = c.start; p < c.N; ++p) {
    const bool reset = p == c.start || len == T_;
    const int64_t lo = p == c.start ? std::max<int64_t>(0, p - T_) : reset ? p - c.keep : p - 1;
    const int64_t P = p - lo, pos0 = reset ? 0 : len;
    int64_t R = 0;
    for (int64_t b = b0; b < b1; ++b)
      for (int64_t j = 0; j < P; ++j) {
        wk.stream[R] = b, wk.pos[R] = pos0 + j, wk.tok[R] = c.tokens[b * c.N + lo + j];
        wk.want[R] = j == P - 1;
        if (++R == kRows) run_rows(net, c, wk, R, p), R = 0;
      }
    if (R > 0) run_rows(net, c, wk, R, p);
    len = pos0 + P;
  }
}

GENFAST_MULTIVERSIONED(run_f32, (const Net<float>& net, const Call& c, Work<float>& wk,
                                 int64_t b0, int64_t b1),
                       (net, c, wk, b0, b1), run_streams<float>(net, c, wk, b0, b1))
GENFAST_MULTIVERSIONED(run_f64, (const Net<double>& net, const Call& c, Work<double>& wk,
                                 int64_t b0, int64_t b1),
                       (net, c, wk, b0, b1), run_streams<double>(net, c, wk, b0, b1))

template <typename T>
void generate(const void* weights, const Meta& m, const Call& c, int num_threads) {
  Net<T> net;
  build_net(net, static_cast<const T*>(weights), m);
  // MACs per stream over the call, the unit of parallel_for's single-thread cut-off.
  const int64_t work = (c.N - c.start) * (m.L * (12 * m.C * m.C + 2 * m.T * m.C) + m.V * m.C);
  parallel_for(c.B, work, num_threads, [&](int64_t b0, int64_t b1) {
    Work<T> wk(net);
    if constexpr (sizeof(T) == 4)
      run_f32(net, c, wk, b0, b1);
    else
      run_f64(net, c, wk, b0, b1);
  });
}

}  // namespace

void attention_generate(const void* weights, const int64_t* meta, int64_t meta_len,
                        int64_t* tokens, void* kcache, void* vcache, void* scratch, int64_t B,
                        int64_t N, int64_t start, int64_t keep, uint64_t seed,
                        double inv_temperature, int64_t top_k, double top_p, int dtype,
                        int num_threads) {
  (void)scratch;  // the per-thread row buffers replace it (see the header)
  const bool f32 = cpu_is_float32(dtype, "attention_generate kernel");
  const Meta m = parse_meta(meta, meta_len);
  const std::string who(kWho);
  if (B < 0 || N < 0) throw std::invalid_argument(who + "negative B or N");
  if (start < 1 || start > std::max<int64_t>(N, 1))
    throw std::invalid_argument(who + "start must be in [1, N]");
  if (keep < 1 || keep > m.T) throw std::invalid_argument(who + "keep must be in [1, T]");
  if (B == 0) return;
  if (tokens == nullptr) throw std::invalid_argument(who + "null tokens pointer");
  for (int64_t b = 0; b < B; ++b)
    for (int64_t p = 0; p < std::min(start, N); ++p)
      if (tokens[b * N + p] < 0 || tokens[b * N + p] >= m.V)
        throw std::invalid_argument(who + "tokens[" + std::to_string(b) + ", " +
                                    std::to_string(p) + "] must be in [0, V)");
  if (start >= N) return;
  if (weights == nullptr || kcache == nullptr || vcache == nullptr)
    throw std::invalid_argument(who + "null data pointer");
  const Call call{tokens, B, N, start, keep, seed, inv_temperature, top_k, top_p, kcache, vcache};
  f32 ? generate<float>(weights, m, call, num_threads)
      : generate<double>(weights, m, call, num_threads);
}

}  // namespace genfast::cpu
