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
// Threads. Weights are dealt whole to threads (each thread runs its weights back to back), except
// big ones (>= kSplitElements): those are cut into kChunks row chunks that the threads share, each
// chunk's partial W^T u kept apart and the partials added in chunk order. A drop-in layer calls
// with ONE weight, so without the split its 1M-element layers ran on one core while torch's mv
// used two. The chunking depends on the shape only, so sigma, u and v are bitwise the same for
// any thread count and whether the weight comes alone or in a group. The regions run on torch's
// OpenMP team (common/parallel.h): an earlier split on per-call std::threads lost more to the
// thread start (~20 us, and a late start beside torch's spinning workers) than it gained.
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

// After a pass: normalize u, v = W^T u for the normalized u, normalize v; returns |W^T u|.
template <typename T>
GENFAST_INLINE T finish_iteration(T* u, T* v, const T* t, int64_t h, int64_t n, T eps) {
  const T c = std::max(normalize(u, h, eps), eps);
  for (int64_t k = 0; k < n; ++k) v[k] = t[k] / c;
  return normalize(v, n, eps);
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
    nt = finish_iteration(u, v, t, j.h, j.n, eps);
  }
  return static_cast<float>(nt * nt / std::max(nt, eps));
}

// Weights with at least this many elements are split into kChunks row chunks (see the top).
constexpr int64_t kSplitElements = int64_t{1} << 18;
constexpr int64_t kChunks = 8;

GENFAST_INLINE bool is_split(const Job& j) { return j.h >= kChunks * 4 && j.h * j.n >= kSplitElements; }

GENFAST_INLINE int64_t chunk_row(const Job& j, int64_t c) { return j.h * c / kChunks; }

// Chunk c of a split weight: its rows' part of the iteration pass (u rows, partial W^T u into
// part, n values) or, with no iteration, its rows' part of u . (W v) into part[0].
template <typename T>
GENFAST_INLINE void run_chunk(const Job& j, int64_t c, int n_iter, T* part) {
  const T* w = static_cast<const T*>(j.w);
  T* u = static_cast<T*>(j.u);
  const T* v = static_cast<const T*>(j.v);
  const int64_t r0 = chunk_row(j, c), rows = chunk_row(j, c + 1) - r0;
  const T* wc = w + r0 * j.ld;
  if (n_iter > 0) {
    fused_pass(wc, rows, j.n, j.ld, v, u + r0, part);
    return;
  }
  std::vector<T> wv(static_cast<size_t>(rows));
  gemv_rows(wc, rows, j.n, j.ld, v, wv.data());
  part[0] = fastmath::lane_sum<T>(rows, [&](int64_t k) { return u[r0 + k] * wv[k]; });
}

// A split weight: every pass's chunks in parallel, the partials added in chunk order.
template <typename T>
float run_split(const Job& j, int n_iter, double eps_d, int num_threads,
                void (*chunk)(const Job&, int64_t, int, T*)) {
  const T eps = static_cast<T>(eps_d);
  const int64_t stride = n_iter > 0 ? j.n : 1;
  std::vector<T> parts(static_cast<size_t>(kChunks * stride));
  const auto pass = [&](int it) {
    parallel_for(kChunks, j.h * j.n / kChunks, num_threads, [&](int64_t c0, int64_t c1) {
      for (int64_t c = c0; c < c1; ++c) chunk(j, c, it, parts.data() + c * stride);
    });
  };
  if (n_iter <= 0) {
    pass(0);
    T s = 0;
    for (int64_t c = 0; c < kChunks; ++c) s += parts[static_cast<size_t>(c)];
    return static_cast<float>(s);
  }
  std::vector<T> t(static_cast<size_t>(j.n));
  T nt = 0;
  for (int it = 0; it < n_iter; ++it) {
    pass(1);
    std::copy(parts.begin(), parts.begin() + j.n, t.begin());
    for (int64_t c = 1; c < kChunks; ++c) {
      const T* pc = parts.data() + c * j.n;
      for (int64_t k = 0; k < j.n; ++k) t[k] += pc[k];
    }
    nt = finish_iteration(static_cast<T*>(j.u), static_cast<T*>(j.v), t.data(), j.h, j.n, eps);
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

GENFAST_MULTIVERSIONED(chunk_f32, (const Job& j, int64_t c, int n_iter, float* part),
                       (j, c, n_iter, part), run_chunk<float>(j, c, n_iter, part))

void chunk_f64(const Job& j, int64_t c, int n_iter, double* part) {
  run_chunk<double>(j, c, n_iter, part);
}

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
  const bool f32 = dtype == static_cast<int>(DType::Float32);
  std::vector<Job> jobs;  // the weights dealt whole to threads
  std::vector<int64_t> index, work;
  int64_t total = 0;
  for (int64_t i = 0; i < count; ++i) {
    const int64_t* m = meta + 6 * i;
    const Job job{reinterpret_cast<const void*>(static_cast<uintptr_t>(m[0])),
                  reinterpret_cast<void*>(static_cast<uintptr_t>(m[1])),
                  reinterpret_cast<void*>(static_cast<uintptr_t>(m[2])), m[3], m[4], m[5]};
    if (is_split(job)) {  // big: all threads on its chunks, now
      sigma[i] = f32 ? run_split<float>(job, n_iter, eps, num_threads, chunk_f32)
                     : run_split<double>(job, n_iter, eps, num_threads, chunk_f64);
      continue;
    }
    jobs.push_back(job);
    index.push_back(i);
    // Vector work too, so a weight with an empty side still counts for something.
    work.push_back(m[3] * m[4] + m[3] + m[4] + 1);
    total += work.back();
  }
  count = static_cast<int64_t>(jobs.size());
  if (count == 0) return;
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
  // Each thread writes its jobs' sigma by job number, then into the caller's order.
  std::vector<float> out(static_cast<size_t>(count));
  // kParallelMinElements per item: the cut-off above has decided already.
  parallel_for(threads, kParallelMinElements, static_cast<int>(threads), [&](int64_t t0, int64_t t1) {
    for (int64_t t = t0; t < t1; ++t) {
      const auto& ids = share[t];
      const auto n = static_cast<int64_t>(ids.size());
      f32 ? run_f32(jobs.data(), ids.data(), n, n_iter, eps, out.data())
          : run_f64(jobs.data(), ids.data(), n, n_iter, eps, out.data());
    }
  });
  for (int64_t k = 0; k < count; ++k) sigma[index[k]] = out[k];
}

}  // namespace genfast::cpu
