// C++ CPU Gumbel-Softmax / Gumbel-max kernels. The contract (noise stream, hostile rows,
// semantics) is the module docstring of genfast/ops/gumbel.py; this file implements it.
//
// Cost model: a row is a few hundred KB at most, so it lives in L2 and several passes over it
// are cheap; the work is the noise (one Philox block per 4 columns, then two logs per column)
// and one exp per column. Those run over fixed-size column chunks in loops GCC vectorises, with
// libm replaced by fastmath.h for float32. float64 (gradcheck) takes the same code with libm.
#include "cpu/gumbel.h"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

#include "common/dtype.h"
#include "common/fastmath.h"
#include "common/parallel.h"
#include "common/philox.h"


namespace genfast::cpu {
namespace {

// Columns per noise chunk: the words, the noise and the chunk's x and y stay in L1.
constexpr int64_t kChunk = 256;

template <typename T>
constexpr T kInf = std::numeric_limits<T>::infinity();

using fastmath::first_index_of;
using fastmath::lane_sum;
using fastmath::row_max;

// A finite scale past float range would round to +inf: 0 * inf = NaN in the softmax, and a false
// "greedy" in sampling. The largest float keeps the limit's meaning; +inf itself stays.
template <typename T>
T to_scale(double v) {
  constexpr double kMax = std::numeric_limits<T>::max();
  return v == kInf<double> ? kInf<T> : static_cast<T>(std::min(v, kMax));
}

GENFAST_INLINE float flog(float x) { return fastmath::log(x); }
GENFAST_INLINE double flog(double x) { return std::log(x); }
GENFAST_INLINE float fexp(float x) { return fastmath::exp(x); }
GENFAST_INLINE double fexp(double x) { return std::exp(x); }

using fastmath::philox_words;  // the active ISA's copy (common/isa.h)

// Gumbel noise g[0..len) of row `row`, columns c0.. (c0 a multiple of 4): the stream of
// genfast/random.py.
template <typename T>
GENFAST_INLINE void gumbel_chunk(uint64_t seed, uint64_t row, int64_t c0, int64_t len, T* g) {
  alignas(64) uint32_t w[kChunk];  // kChunk / 4 blocks: a whole number of vectors
  const auto q0 = static_cast<uint32_t>(static_cast<uint64_t>(c0) >> 2);  // the stream's 32 bits
  philox_words(seed, row, q0, (len + 3) >> 2, w);
  for (int64_t i = 0; i < len; ++i) {
    // uniform_from_word; w >> 9 < 2^23 fits int32, whose conversion is one SIMD op.
    const float u = (static_cast<float>(static_cast<int32_t>(w[i] >> 9)) + 0.5f) *
                    1.1920928955078125e-07f;
    g[i] = -flog(-flog(static_cast<T>(u)));
  }
}

// (x' - m') of the contract's preprocessing, for every row kind at once: with m = +-inf the
// entries equal to m become 0 and the rest -inf (x - inf) or nothing is left (all equal m).
// float32 masks the bits instead of selecting: GCC turns a select between float results into a
// branch (x - m may trap under its default -ftrapping-math), and a branch blocks vectorisation.
GENFAST_INLINE float shifted(float x, float m) {
  const uint32_t keep = x == m ? 0u : ~0u;
  return fastmath::from_bits(fastmath::bits(x - m) & keep);
}
GENFAST_INLINE double shifted(double x, double m) { return x == m ? 0.0 : x - m; }

// y = softmax((x' - m' + g) * inv_tau), or its hard one-hot, over one row. y is the scratch:
// it first holds a = x' - m' + g, so no row buffer exists besides the output.
template <typename T>
GENFAST_INLINE void fwd_row(const T* x, T* y, int64_t n, uint64_t seed, uint64_t row, T inv_tau,
                            bool hard) {
  bool nan;
  const T m = row_max(x, n, &nan);
  if (nan) {
    std::fill(y, y + n, std::numeric_limits<T>::quiet_NaN());
    return;
  }
  T g[kChunk];
  for (int64_t c0 = 0; c0 < n; c0 += kChunk) {
    const int64_t len = std::min(kChunk, n - c0);
    gumbel_chunk(seed, row, c0, len, g);
    for (int64_t i = 0; i < len; ++i) y[c0 + i] = shifted(x[c0 + i], m) + g[i];
  }
  const T amax = row_max(y, n, &nan);  // finite: the shifted max is 0 and |g| < 17
  if (hard) {
    const int64_t j = first_index_of(y, n, amax);
    std::fill(y, y + n, T(0));
    y[j] = T(1);
    return;
  }
  const T sum = lane_sum<T>(n, [&](int64_t k) {
    const T e = fexp((y[k] - amax) * inv_tau);  // argument <= 0: no overflow for any tau
    y[k] = e;
    return e;
  });
  const T inv = T(1) / sum;  // sum >= 1: the argmax contributes exp(0)
  for (int64_t k = 0; k < n; ++k) y[k] *= inv;
}

// dx = y * (dy - <dy, y>) * inv_tau. In recompute mode y is regenerated into dx (the soft
// forward of the logits in src), so the hard path never stores a soft sample.
template <typename T>
GENFAST_INLINE void bwd_row(const T* dy, const T* src, T* dx, int64_t n, uint64_t seed,
                            uint64_t row, T inv_tau, bool recompute) {
  const T* y = src;
  if (recompute) {
    fwd_row(src, dx, n, seed, row, inv_tau, false);
    y = dx;
  }
  const T dot = lane_sum<T>(n, [&](int64_t k) { return dy[k] * y[k]; });
  for (int64_t k = 0; k < n; ++k) dx[k] = y[k] * (dy[k] - dot) * inv_tau;
}

template <typename T>
struct ScoreProb {
  T s;  // scaled, shifted logit
  T p;  // exp(s - max s), unnormalised
};

// Per-thread scratch of filtered sampling; rows reuse it, so it is allocated once per call.
template <typename T>
struct FilterScratch {
  std::vector<T> s;                  // the row's scores (one row)
  std::vector<T> top;                // top_k candidates
  std::vector<double> mass;          // top_p histogram
  std::vector<ScoreProb<T>> bucket;  // the top_p histogram bucket that holds the threshold
};

// The k-th largest of s[0..n) (duplicates counted, 0 < k < n), -inf if fewer than k exceed -inf.
// One streaming pass keeps only candidates above the k-th largest seen so far, so for small k it
// touches a few k*log(n/k) values instead of partitioning the whole row.
template <typename T>
T kth_largest(const T* s, int64_t n, int64_t k, std::vector<T>& top) {
  const int64_t cap = std::min(n, std::max<int64_t>(4 * k, 1024));
  top.resize(static_cast<size_t>(cap));
  T* b = top.data();
  const auto desc = [](T u, T v) { return u > v; };
  T floor = -kInf<T>;  // k candidates are >= floor: a value <= floor cannot change the answer
  int64_t size = 0;
  for (int64_t c = 0; c < n; ++c) {
    if (!(s[c] > floor)) continue;
    b[size++] = s[c];
    if (size == cap) {
      std::nth_element(b, b + k - 1, b + size, desc);
      size = k;
      floor = b[k - 1];
    }
  }
  if (size < k) return -kInf<T>;
  std::nth_element(b, b + k - 1, b + size, desc);
  return b[k - 1];
}

// Among w[0..k), the largest s whose mass of {s' >= s}, added to `above`, reaches `target`:
// the value where the descending running sum first reaches it. Quickselect on mass, expected
// O(k); -inf if the mass never gets there.
template <typename T>
T mass_select(ScoreProb<T>* w, int64_t k, double above, double target) {
  int64_t lo = 0, hi = k;
  while (lo < hi) {
    const T a = w[lo].s, b = w[lo + (hi - lo) / 2].s, c = w[hi - 1].s;
    const T pivot = std::max(std::min(a, b), std::min(std::max(a, b), c));  // median of three
    int64_t lt = lo, i = lo, gt = hi;  // [lo,lt) > pivot, [lt,gt) == pivot, [gt,hi) < pivot
    while (i < gt) {
      if (w[i].s > pivot)
        std::swap(w[lt++], w[i++]);
      else if (w[i].s < pivot)
        std::swap(w[i], w[--gt]);
      else
        ++i;
    }
    double greater = 0.0, equal = 0.0;
    for (int64_t j = lo; j < lt; ++j) greater += w[j].p;
    for (int64_t j = lt; j < gt; ++j) equal += w[j].p;
    if (above + greater >= target) {
      hi = lt;
    } else if (above + greater + equal >= target) {
      return pivot;
    } else {
      above += greater + equal;
      lo = gt;
    }
  }
  return -kInf<T>;
}

// The top_p threshold over K = {c : s[c] >= t} (t from top_k, or -inf), or t if the mass never
// reaches top_p. No sort: a histogram of the mass over s (bucketed by distance below max s)
// finds the bucket where the descending running sum crosses top_p, and a quickselect inside
// that bucket finds the exact value. Sums run in another order than a sorted cumsum, so the
// result can differ from one only when top_p is within rounding of a partial sum.
template <typename T>
GENFAST_INLINE T top_p_threshold(const T* s, int64_t n, T t, double top_p, FilterScratch<T>& sc) {
  T smax = -kInf<T>, smin = kInf<T>;
  for (int64_t c = 0; c < n; ++c) {
    smax = std::max(smax, s[c]);
    if (s[c] >= t && s[c] > -kInf<T>) smin = std::min(smin, s[c]);
  }
  const int64_t buckets = std::min<int64_t>(std::max<int64_t>(n / 8, 16), 2048);
  // Past 104 below the max, exp flushes to 0: no mass, so no need for resolution there.
  const T range = std::min<T>(std::max<T>(smax - smin, T(1e-30)), T(104));
  const T per = static_cast<T>(buckets) / range;
  const auto bucket_of = [&](T v) {  // v >= t, exp(v - smax) > 0
    const T d = std::min(smax - v, range);
    return std::min(static_cast<int64_t>(d * per), buckets - 1);
  };
  sc.mass.assign(static_cast<size_t>(buckets), 0.0);
  T p[kChunk];
  for (int64_t c0 = 0; c0 < n; c0 += kChunk) {
    const int64_t len = std::min(kChunk, n - c0);
    for (int64_t i = 0; i < len; ++i) p[i] = fexp((s[c0 + i] >= t ? s[c0 + i] : -kInf<T>) - smax);
    for (int64_t i = 0; i < len; ++i)
      if (p[i] > T(0)) sc.mass[static_cast<size_t>(bucket_of(s[c0 + i]))] += p[i];
  }
  double z = 0.0;
  for (double v : sc.mass) z += v;
  const double target = top_p * z;
  double above = 0.0;
  int64_t hit = 0;
  while (hit < buckets && above + sc.mass[static_cast<size_t>(hit)] < target)
    above += sc.mass[static_cast<size_t>(hit++)];
  if (hit == buckets) return t;
  sc.bucket.clear();
  T lowest = kInf<T>;
  for (int64_t c = 0; c < n; ++c) {
    if (!(s[c] >= t) || bucket_of(s[c]) != hit) continue;
    const T pc = fexp(s[c] - smax);
    if (pc > T(0)) {
      sc.bucket.push_back({s[c], pc});
      lowest = std::min(lowest, s[c]);
    }
  }
  const T tp = mass_select(sc.bucket.data(), static_cast<int64_t>(sc.bucket.size()), above, target);
  // A miss means the bucket's mass summed the other way round fell short by a rounding: its
  // whole content is what reaches top_p.
  return std::max(t, tp == -kInf<T> ? lowest : tp);
}

// index = first argmax over K = {c : s[c] >= t} of s[c] + g[c]; greedy when inv_temp is +inf.
template <typename T>
GENFAST_INLINE int64_t sample_row(const T* x, int64_t n, uint64_t seed, uint64_t row,
                                  T inv_temp, int64_t top_k, double top_p,
                                  FilterScratch<T>& sc) {
  bool nan;
  const T m = row_max(x, n, &nan);
  if (nan) return 0;  // any index is allowed; it must only be in range
  if (inv_temp == kInf<T>) return first_index_of(x, n, m);
  T t = -kInf<T>;
  const bool use_k = top_k > 0 && top_k < n;
  if (use_k || top_p < 1.0) {
    sc.s.resize(static_cast<size_t>(n));
    T* s = sc.s.data();
    for (int64_t c = 0; c < n; ++c) s[c] = shifted(x[c], m) * inv_temp;
    if (use_k) t = kth_largest(s, n, top_k, sc.top);
    if (top_p < 1.0) t = top_p_threshold(s, n, t, top_p, sc);
  }
  T best = -kInf<T>;
  int64_t best_i = 0;
  alignas(64) T v[kChunk];
  T g[kChunk];
  for (int64_t c0 = 0; c0 < n; c0 += kChunk) {
    const int64_t len = std::min(kChunk, n - c0);
    gumbel_chunk(seed, row, c0, len, g);
    for (int64_t i = 0; i < len; ++i) {
      const T s = shifted(x[c0 + i], m) * inv_temp;
      v[i] = (s >= t ? s : -kInf<T>) + g[i];  // -inf + g = -inf; see shifted()
    }
    for (int64_t i = len; i < kChunk; ++i) v[i] = -kInf<T>;
    bool unused;
    const T cmax = row_max(v, kChunk, &unused);
    // Strictly greater: an earlier chunk keeps a tie, so the first argmax wins.
    if (cmax > best) {
      best = cmax;
      best_i = c0 + first_index_of(v, len, cmax);
    }
  }
  return best_i;
}

// Row blocks [r0, r1): the unit parallel_for hands a thread, and the unit that is multiversioned
// (one dispatch per block, and the row loops inline into each ISA's copy).
struct FwdArgs {
  const void* x; int64_t xs; void* y; int64_t ys; int64_t n; uint64_t seed; double inv_tau;
  bool hard;
};
struct BwdArgs {
  const void* dy; int64_t dys; const void* src; int64_t srcs; void* dx; int64_t dxs; int64_t n;
  uint64_t seed; double inv_tau; bool recompute;
};
struct SampleArgs {
  const void* x; int64_t xs; int64_t* out; int64_t n; uint64_t seed; double inv_temp;
  int64_t top_k; double top_p;
};

template <typename T>
GENFAST_INLINE void fwd_block(const FwdArgs& a, int64_t r0, int64_t r1) {
  for (int64_t r = r0; r < r1; ++r)
    fwd_row(static_cast<const T*>(a.x) + r * a.xs, static_cast<T*>(a.y) + r * a.ys, a.n, a.seed,
            static_cast<uint64_t>(r), to_scale<T>(a.inv_tau), a.hard);
}

template <typename T>
GENFAST_INLINE void bwd_block(const BwdArgs& a, int64_t r0, int64_t r1) {
  for (int64_t r = r0; r < r1; ++r)
    bwd_row(static_cast<const T*>(a.dy) + r * a.dys, static_cast<const T*>(a.src) + r * a.srcs,
            static_cast<T*>(a.dx) + r * a.dxs, a.n, a.seed, static_cast<uint64_t>(r),
            to_scale<T>(a.inv_tau), a.recompute);
}

template <typename T>
GENFAST_INLINE void sample_block(const SampleArgs& a, int64_t r0, int64_t r1) {
  FilterScratch<T> scratch;  // stays empty unless the call filters
  for (int64_t r = r0; r < r1; ++r)
    a.out[r] = sample_row(static_cast<const T*>(a.x) + r * a.xs, a.n, a.seed,
                          static_cast<uint64_t>(r), to_scale<T>(a.inv_temp), a.top_k, a.top_p,
                          scratch);
}

GENFAST_MULTIVERSIONED(fwd_f32, (const FwdArgs& a, int64_t r0, int64_t r1), (a, r0, r1),
                       fwd_block<float>(a, r0, r1))
GENFAST_MULTIVERSIONED(bwd_f32, (const BwdArgs& a, int64_t r0, int64_t r1), (a, r0, r1),
                       bwd_block<float>(a, r0, r1))
GENFAST_MULTIVERSIONED(sample_f32, (const SampleArgs& a, int64_t r0, int64_t r1), (a, r0, r1),
                       sample_block<float>(a, r0, r1))
void fwd_f64(const FwdArgs& a, int64_t r0, int64_t r1) { fwd_block<double>(a, r0, r1); }
void bwd_f64(const BwdArgs& a, int64_t r0, int64_t r1) { bwd_block<double>(a, r0, r1); }
void sample_f64(const SampleArgs& a, int64_t r0, int64_t r1) { sample_block<double>(a, r0, r1); }

void check_dtype(int dtype) {
  if (dtype != static_cast<int>(DType::Float32) && dtype != static_cast<int>(DType::Float64))
    throw std::invalid_argument("genfast CPU gumbel kernels: dtype code " + std::to_string(dtype) +
                                " is not float32 (0) or float64 (1)");
}

}  // namespace

void gumbel_softmax_fwd(const void* x, int64_t x_row_stride, void* y, int64_t y_row_stride,
                        int64_t rows, int64_t n, int dtype, uint64_t seed, double inv_tau,
                        bool hard, int num_threads) {
  check_dtype(dtype);
  if (rows <= 0 || n <= 0) return;
  const FwdArgs a{x, x_row_stride, y, y_row_stride, n, seed, inv_tau, hard};
  const bool f32 = dtype == static_cast<int>(DType::Float32);
  parallel_for(rows, n, num_threads, [&](int64_t r0, int64_t r1) {
    f32 ? fwd_f32(a, r0, r1) : fwd_f64(a, r0, r1);
  });
}

void gumbel_softmax_bwd(const void* dy, int64_t dy_row_stride, const void* src,
                        int64_t src_row_stride, void* dx, int64_t dx_row_stride, int64_t rows,
                        int64_t n, int dtype, uint64_t seed, double inv_tau, bool recompute,
                        int num_threads) {
  check_dtype(dtype);
  if (rows <= 0 || n <= 0) return;
  const BwdArgs a{dy, dy_row_stride, src, src_row_stride, dx, dx_row_stride, n, seed, inv_tau,
                  recompute};
  const bool f32 = dtype == static_cast<int>(DType::Float32);
  parallel_for(rows, n, num_threads, [&](int64_t r0, int64_t r1) {
    f32 ? bwd_f32(a, r0, r1) : bwd_f64(a, r0, r1);
  });
}

void sample_categorical(const void* x, int64_t x_row_stride, int64_t* out, int64_t rows,
                        int64_t n, int dtype, uint64_t seed, double inv_temperature,
                        int64_t top_k, double top_p, int num_threads) {
  check_dtype(dtype);
  if (rows <= 0 || n <= 0) return;
  const SampleArgs a{x, x_row_stride, out, n, seed, inv_temperature, top_k, top_p};
  const bool f32 = dtype == static_cast<int>(DType::Float32);
  parallel_for(rows, n, num_threads, [&](int64_t r0, int64_t r1) {
    f32 ? sample_f32(a, r0, r1) : sample_f64(a, r0, r1);
  });
}

}  // namespace genfast::cpu
