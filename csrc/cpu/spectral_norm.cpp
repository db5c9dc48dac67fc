// C++ CPU spectral-norm power iteration over many weights in one call. Contract:
// csrc/cpu/spectral_norm.h and the module docstring of genfast/ops/spectral_norm.py.
//
// Cost model: an SN-GAN discriminator's weights are a few hundred KB to a few MB, so they sit in
// L2/L3 and the two GEMV passes per iteration are cheap; what torch pays on top is ~8 small op
// launches per layer. Here a whole model is one call: weights are dealt to threads (largest
// first, to the least loaded), and each thread runs its weights' iterations back to back.
//
// Per iteration and weight, ONE pass over W (fused_pass): u = normalize(W v) and W^T u from the
// same rows while they are in cache, then v = normalize(W^T u). No extra pass for sigma: with
// t = W^T u and v = t / max(|t|, eps), u . (W v) = t . v = |t|^2 / max(|t|, eps). With no
// iteration (eval mode) sigma is u . (W v) from one pass.
//
// A weight runs on one thread. Splitting a big one by rows across threads (partials of W^T u
// added in a fixed order) was measured on 2 vCPUs with the drop-in layer's one-weight calls: the
// thread start costs the caller ~20 us and the helper starts late, so the critic's 1M-element
// layers got 10-20% slower (105 -> 127 us), not faster.
#include "cpu/spectral_norm.h"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <numeric>
#include <stdexcept>
#include <string>
#include <vector>

#include "common/dtype.h"
#include "common/fastmath.h"
#include "common/parallel.h"


namespace genfast::cpu {
namespace {

// Independent accumulators per row dot: lets GCC vectorise the float reduction without
// -ffast-math (the order is fixed, so results do not depend on the ISA chosen at load time).
constexpr int kLanes = 16;

// Multiply-adds below which a call runs on the calling thread (see the call site).
constexpr int64_t kMinParallelWork = int64_t{1} << 22;

struct Job {
  const void* w;  // (h, n) row-major, row stride ld
  void* u;        // (h)
  void* v;        // (n)
  int64_t h, n, ld;
};

// out[r] = W[r, :] . x for every row; four rows per pass share the loads of x.
template <typename T>
GENFAST_INLINE void gemv_rows(const T* __restrict w, int64_t h, int64_t n, int64_t ld,
                              const T* __restrict x, T* __restrict out) {
  int64_t r = 0;
  for (; r + 4 <= h; r += 4) {
    const T* w0 = w + r * ld;
    const T* w1 = w0 + ld;
    const T* w2 = w1 + ld;
    const T* w3 = w2 + ld;
    T a0[kLanes] = {}, a1[kLanes] = {}, a2[kLanes] = {}, a3[kLanes] = {};
    int64_t j = 0;
    for (; j + kLanes <= n; j += kLanes) {
      for (int l = 0; l < kLanes; ++l) {
        const T xv = x[j + l];
        a0[l] += w0[j + l] * xv;
        a1[l] += w1[j + l] * xv;
        a2[l] += w2[j + l] * xv;
        a3[l] += w3[j + l] * xv;
      }
    }
    for (int l = 0; j + l < n; ++l) {
      const T xv = x[j + l];
      a0[l] += w0[j + l] * xv;
      a1[l] += w1[j + l] * xv;
      a2[l] += w2[j + l] * xv;
      a3[l] += w3[j + l] * xv;
    }
    T s0 = 0, s1 = 0, s2 = 0, s3 = 0;
    for (int l = 0; l < kLanes; ++l) s0 += a0[l], s1 += a1[l], s2 += a2[l], s3 += a3[l];
    out[r] = s0, out[r + 1] = s1, out[r + 2] = s2, out[r + 3] = s3;
  }
  for (; r < h; ++r) {
    const T* w0 = w + r * ld;
    out[r] = fastmath::lane_sum<T>(n, [&](int64_t k) { return w0[k] * x[k]; });
  }
}

// One pass over W for both products of an iteration: each block of four rows is dotted with v
// (u_raw = W v) and, while the rows are still in L1/L2, added into t with those dots as weights
// (t = W^T u_raw). Since u = u_raw / c for a scalar c, W^T u = t / c: the same iteration as two
// passes, with W read once, which halves the memory traffic of weights that miss the cache.
template <typename T>
GENFAST_INLINE void fused_pass(const T* __restrict w, int64_t h, int64_t n, int64_t ld,
                               const T* __restrict v, T* __restrict u, T* __restrict t) {
  std::fill(t, t + n, T(0));
  int64_t r = 0;
  for (; r + 4 <= h; r += 4) {
    gemv_rows(w + r * ld, 4, n, ld, v, u + r);
    const T* w0 = w + r * ld;
    const T* w1 = w0 + ld;
    const T* w2 = w1 + ld;
    const T* w3 = w2 + ld;
    const T c0 = u[r], c1 = u[r + 1], c2 = u[r + 2], c3 = u[r + 3];
    for (int64_t j = 0; j < n; ++j) t[j] += (c0 * w0[j] + c1 * w1[j]) + (c2 * w2[j] + c3 * w3[j]);
  }
  for (; r < h; ++r) {
    const T* w0 = w + r * ld;
    gemv_rows(w0, 1, n, ld, v, u + r);
    const T c0 = u[r];
    for (int64_t j = 0; j < n; ++j) t[j] += c0 * w0[j];
  }
}

template <typename T>
GENFAST_INLINE T norm(const T* x, int64_t n) {
  return std::sqrt(fastmath::lane_sum<T>(n, [&](int64_t k) { return x[k] * x[k]; }));
}

// x /= max(|x|, eps), as F.normalize (a division, not a reciprocal product: same rounding);
// returns |x|.
template <typename T>
GENFAST_INLINE T normalize(T* x, int64_t n, T eps) {
  const T nrm = norm(x, n);
  const T d = std::max(nrm, eps);
  for (int64_t k = 0; k < n; ++k) x[k] /= d;
  return nrm;
}

// n_iter power iterations on one weight, then its sigma. `scratch` is per-thread working space.
template <typename T>
GENFAST_INLINE float run_job(const Job& j, int n_iter, double eps_d, std::vector<T>& scratch) {
  const T* w = static_cast<const T*>(j.w);
  T* u = static_cast<T*>(j.u);
  T* v = static_cast<T*>(j.v);
  const T eps = static_cast<T>(eps_d);
  if (n_iter <= 0) {
    scratch.resize(static_cast<size_t>(j.h));
    gemv_rows(w, j.h, j.n, j.ld, v, scratch.data());
    const T* wv = scratch.data();
    return static_cast<float>(fastmath::lane_sum<T>(j.h, [&](int64_t k) { return u[k] * wv[k]; }));
  }
  scratch.resize(static_cast<size_t>(j.n));
  T* t = scratch.data();
  T nt = 0;
  for (int it = 0; it < n_iter; ++it) {
    fused_pass(w, j.h, j.n, j.ld, v, u, t);  // u = W v (raw), t = W^T u (raw)
    const T c = std::max(normalize(u, j.h, eps), eps);
    for (int64_t k = 0; k < j.n; ++k) v[k] = t[k] / c;  // W^T u for the normalized u
    nt = normalize(v, j.n, eps);
  }
  return static_cast<float>(nt * nt / std::max(nt, eps));
}

// One thread's share: its jobs back to back. Multiversioned so the inlined loops get AVX2/512.
GENFAST_MULTIVERSIONED(run_f32, (const Job* jobs, const int64_t* ids, int64_t count, int n_iter,
                                 double eps, float* sigma),
                       (jobs, ids, count, n_iter, eps, sigma),
                       std::vector<float> scratch;
                       for (int64_t i = 0; i < count; ++i)
                           sigma[ids[i]] = run_job<float>(jobs[ids[i]], n_iter, eps, scratch))

void run_f64(const Job* jobs, const int64_t* ids, int64_t count, int n_iter, double eps,
             float* sigma) {
  std::vector<double> scratch;
  for (int64_t i = 0; i < count; ++i) sigma[ids[i]] = run_job<double>(jobs[ids[i]], n_iter, eps, scratch);
}

}  // namespace

void spectral_norm_power_iteration(int64_t count, const int64_t* meta, int dtype, int n_iter,
                                   double eps, float* sigma, int num_threads) {
  if (dtype != static_cast<int>(DType::Float32) && dtype != static_cast<int>(DType::Float64))
    throw std::invalid_argument("genfast CPU spectral_norm kernel: dtype code " +
                                std::to_string(dtype) + " is not float32 (0) or float64 (1)");
  if (count <= 0) return;
  std::vector<Job> jobs(static_cast<size_t>(count));
  std::vector<int64_t> work(static_cast<size_t>(count));
  int64_t total = 0;
  for (int64_t i = 0; i < count; ++i) {
    const int64_t* m = meta + 6 * i;
    jobs[i] = Job{reinterpret_cast<const void*>(static_cast<uintptr_t>(m[0])),
                  reinterpret_cast<void*>(static_cast<uintptr_t>(m[1])),
                  reinterpret_cast<void*>(static_cast<uintptr_t>(m[2])), m[3], m[4], m[5]};
    // Vector work too, so a weight with an empty side still counts for something.
    work[i] = m[3] * m[4] + m[3] + m[4] + 1;
    total += work[i];
  }
  // A thread start costs 20-100 us, and on a machine whose other cores are busy the new thread
  // waits for one: below ~4M multiply-adds (~150 us of one core) a call stays on this thread.
  const int64_t passes = std::max(1, 2 * n_iter);  // multiply-adds per weight per iteration
  const int64_t threads = total * passes < kMinParallelWork
                              ? 1
                              : std::max<int64_t>(1, std::min<int64_t>(num_threads, count));
  // Deal weights to threads, largest first, each to the least loaded: a model's layers differ
  // in size by 100x, and the biggest decides the wall time.
  std::vector<int64_t> order(static_cast<size_t>(count));
  std::iota(order.begin(), order.end(), int64_t{0});
  std::stable_sort(order.begin(), order.end(), [&](int64_t a, int64_t b) { return work[a] > work[b]; });
  std::vector<std::vector<int64_t>> share(static_cast<size_t>(threads));
  std::vector<int64_t> load(static_cast<size_t>(threads), 0);
  for (int64_t i : order) {
    const auto t = std::min_element(load.begin(), load.end()) - load.begin();
    share[t].push_back(i);
    load[t] += work[i];
  }
  const bool f32 = dtype == static_cast<int>(DType::Float32);
  // kParallelMinElements per item: the cut-off above has decided already.
  parallel_for(threads, kParallelMinElements, static_cast<int>(threads), [&](int64_t t0, int64_t t1) {
    for (int64_t t = t0; t < t1; ++t) {
      const auto& ids = share[t];
      const auto n = static_cast<int64_t>(ids.size());
      f32 ? run_f32(jobs.data(), ids.data(), n, n_iter, eps, sigma)
          : run_f64(jobs.data(), ids.data(), n, n_iter, eps, sigma);
    }
  });
}

}  // namespace genfast::cpu
