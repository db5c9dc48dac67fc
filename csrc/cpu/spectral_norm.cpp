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
// A pass is bound by its multiply-adds (two per element of W, even in cache), not by memory, so
// one big weight alone on one core is the wall time of a drop-in layer's call. Weights of at least
// kSplitElements are therefore cut into kParts row blocks whose passes run on separate threads,
// each into its own partial W^T u; the partials are added in a fixed order, so the bits do not
// depend on the thread count.
#include "cpu/spectral_norm.h"

#include <algorithm>
#include <atomic>
#include <cmath>
#include <condition_variable>
#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <stdexcept>
#include <string>
#include <thread>
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

// Weights of at least this many elements are split by rows (~60 us of one core per pass: twice
// a thread start, the cost that splitting saves on two threads); kParts row blocks whatever the
// thread count, so 1, 2 or 4 threads compute the same sums.
constexpr int64_t kSplitElements = int64_t{1} << 19;
constexpr int kParts = 4;

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

// One row block of a split weight: its raw rows of W v into u, its partial W^T (W v) into t
// (iterating), or its partial u . (W v) into *dot (n_iter = 0; t is then scratch of h rows).
template <typename T>
GENFAST_INLINE void part_job(const T* w, int64_t rows, int64_t n, int64_t ld, const T* v, T* u,
                             T* t, bool iterate, T* dot) {
  if (iterate) {
    fused_pass(w, rows, n, ld, v, u, t);
    return;
  }
  gemv_rows(w, rows, n, ld, v, t);
  *dot = fastmath::lane_sum<T>(rows, [&](int64_t k) { return u[k] * t[k]; });
}

GENFAST_MULTIVERSIONED(part_f32, (const float* w, int64_t rows, int64_t n, int64_t ld,
                                  const float* v, float* u, float* t, bool iterate, float* dot),
                       (w, rows, n, ld, v, u, t, iterate, dot),
                       part_job<float>(w, rows, n, ld, v, u, t, iterate, dot))

void part_f64(const double* w, int64_t rows, int64_t n, int64_t ld, const double* v, double* u,
              double* t, bool iterate, double* dot) {
  part_job<double>(w, rows, n, ld, v, u, t, iterate, dot);
}

// body(p) for every p in [0, parts), on the calling thread and up to `helpers` new threads that
// take parts from a shared counter. The caller runs parts until none is left, then waits only for
// the parts a helper has taken. A helper the OS has not scheduled by then (the other cores are
// busy) finds the counter spent and exits without touching body or the caller's data: it is
// detached, so a busy machine costs a thread start, never a wait for a free core, which a join
// would (a drop-in layer's call is ~100 us; a descheduled thread can take milliseconds).
template <class Body>
void race_parts(int parts, int helpers, const Body& body) {
  struct State {
    std::atomic<int> next{0};
    std::mutex mu;
    std::condition_variable cv;
    int active = 0;  // helpers between announcing themselves and finishing their parts
  };
  const auto st = std::make_shared<State>();
  const std::function<void(int)> run = [&body](int p) { body(p); };
  for (int k = 0; k < helpers; ++k) {
    try {
      std::thread([st, &run, parts] {
        {
          std::lock_guard<std::mutex> lock(st->mu);
          ++st->active;  // before taking a part: the caller then waits for this thread
        }
        // `run` may be used only while this thread holds a part: the caller is waiting then.
        for (int p; (p = st->next.fetch_add(1)) < parts;) run(p);
        std::lock_guard<std::mutex> lock(st->mu);
        if (--st->active == 0) st->cv.notify_all();
      }).detach();
    } catch (...) {
      break;  // no thread (resource limits): the caller takes the parts
    }
  }
  for (int p; (p = st->next.fetch_add(1)) < parts;) body(p);
  std::unique_lock<std::mutex> lock(st->mu);
  st->cv.wait(lock, [&] { return st->active == 0; });
}

// A weight of >= kSplitElements: each iteration runs its kParts row blocks on up to num_threads
// threads, then adds their partial W^T u in block order and normalizes (O(h + n), one thread).
template <typename T, class Part>
float run_split(const Job& j, int n_iter, double eps_d, int num_threads, Part part) {
  const T* w = static_cast<const T*>(j.w);
  T* u = static_cast<T*>(j.u);
  T* v = static_cast<T*>(j.v);
  const T eps = static_cast<T>(eps_d);
  const int64_t h = j.h, n = j.n;
  int64_t edge[kParts + 1];
  for (int p = 0; p <= kParts; ++p) edge[p] = p == kParts ? h : (h * p / kParts) & ~int64_t{3};
  const bool iterate = n_iter > 0;
  const int64_t width = iterate ? n : h;  // a block's partial W^T u, or its rows of W v
  std::vector<T> partial(static_cast<size_t>(kParts * width));
  T dots[kParts] = {};
  const auto pass = [&] {
    race_parts(kParts, std::min(num_threads, kParts) - 1, [&](int p) {
      part(w + edge[p] * j.ld, edge[p + 1] - edge[p], n, j.ld, v, u + edge[p],
           partial.data() + (iterate ? p * n : edge[p]), iterate, dots + p);
    });
  };
  if (!iterate) {
    pass();
    T s = 0;
    for (int p = 0; p < kParts; ++p) s += dots[p];
    return static_cast<float>(s);
  }
  T nt = 0;
  for (int it = 0; it < n_iter; ++it) {
    pass();
    const T c = std::max(normalize(u, h, eps), eps);
    const T* t = partial.data();
    for (int64_t k = 0; k < n; ++k) {
      T s = t[k];
      for (int p = 1; p < kParts; ++p) s += t[p * n + k];
      v[k] = s / c;
    }
    nt = normalize(v, n, eps);
  }
  return static_cast<float>(nt * nt / std::max(nt, eps));
}

}  // namespace

void spectral_norm_power_iteration(int64_t count, const int64_t* meta, int dtype, int n_iter,
                                   double eps, float* sigma, int num_threads) {
  if (dtype != static_cast<int>(DType::Float32) && dtype != static_cast<int>(DType::Float64))
    throw std::invalid_argument("genfast CPU spectral_norm kernel: dtype code " +
                                std::to_string(dtype) + " is not float32 (0) or float64 (1)");
  if (count <= 0) return;
  const bool f32 = dtype == static_cast<int>(DType::Float32);
  std::vector<Job> jobs(static_cast<size_t>(count));
  std::vector<int64_t> work(static_cast<size_t>(count));
  std::vector<int64_t> order;  // the weights not split, dealt to threads below
  int64_t total = 0;
  for (int64_t i = 0; i < count; ++i) {
    const int64_t* m = meta + 6 * i;
    jobs[i] = Job{reinterpret_cast<const void*>(static_cast<uintptr_t>(m[0])),
                  reinterpret_cast<void*>(static_cast<uintptr_t>(m[1])),
                  reinterpret_cast<void*>(static_cast<uintptr_t>(m[2])), m[3], m[4], m[5]};
    if (m[3] * m[4] >= kSplitElements) {
      sigma[i] = f32 ? run_split<float>(jobs[i], n_iter, eps, num_threads, part_f32)
                     : run_split<double>(jobs[i], n_iter, eps, num_threads, part_f64);
      continue;
    }
    // Vector work too, so a weight with an empty side still counts for something.
    work[i] = m[3] * m[4] + m[3] + m[4] + 1;
    total += work[i];
    order.push_back(i);
  }
  if (order.empty()) return;
  // A thread start costs 20-100 us, and on a machine whose other cores are busy the new thread
  // waits for one: below ~4M multiply-adds (~150 us of one core) a call stays on this thread.
  const int64_t passes = std::max(1, 2 * n_iter);  // multiply-adds per weight per iteration
  const auto left = static_cast<int64_t>(order.size());
  const int64_t threads = total * passes < kMinParallelWork
                              ? 1
                              : std::max<int64_t>(1, std::min<int64_t>(num_threads, left));
  // Deal weights to threads, largest first, each to the least loaded: a model's layers differ
  // in size by 100x, and the biggest decides the wall time.
  std::stable_sort(order.begin(), order.end(), [&](int64_t a, int64_t b) { return work[a] > work[b]; });
  std::vector<std::vector<int64_t>> share(static_cast<size_t>(threads));
  std::vector<int64_t> load(static_cast<size_t>(threads), 0);
  for (int64_t i : order) {
    const auto t = std::min_element(load.begin(), load.end()) - load.begin();
    share[t].push_back(i);
    load[t] += work[i];
  }
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
