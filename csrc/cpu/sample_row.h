// The row sampler of the `sample` stem (genfast/ops/sample.py is its contract): one row of logits
// -> one index, by Gumbel-max after the temperature / top-k / top-p filter. Shared by the
// sampling kernel (csrc/cpu/sample.cpp) and the generators that sample inside their loop
// (csrc/cpu/causal_conv_generate.cpp), so every CPU draw of the family is the same code.
// Include from .cpp only; sample_row is always_inline, so it is compiled (and vectorised) inside
// the caller's multiversioned copy (common/isa.h).
//
// Thresholds without sorting and without bisection: top_k streams the row once keeping only
// candidates above the running k-th largest (nth_element on a small buffer), top_p bins the
// mass into a histogram over the distance below max s and quickselects inside the one bin where
// the descending running sum crosses top_p. Both are expected O(n) per row.
#pragma once
#include <algorithm>
#include <cstdint>
#include <utility>
#include <vector>

#include "common/fastmath.h"
#include "cpu/gumbel_row.h"

namespace genfast::cpu::sample_rows {

using namespace gumbel_rows;  // noise and row preprocessing, shared with gumbel.cpp

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

}  // namespace genfast::cpu::sample_rows
