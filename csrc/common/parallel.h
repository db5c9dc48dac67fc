// A minimal parallel_for over independent items (rows, weights, row chunks).
//
// It runs on torch's own OpenMP thread team when torch's runtime is found in the process
// (common/openmp.h: warm threads, a region starts in about a microsecond, no second pool), else
// it spawns std::threads per call (20-100 us each: fine for calls of milliseconds).
#pragma once
#include <algorithm>
#include <cstdint>
#include <exception>
#include <thread>
#include <vector>

#include "common/openmp.h"

namespace genfast {

// Below this many elements a call runs single-threaded: the spawn would cost more than it saves.
constexpr int64_t kParallelMinElements = int64_t{1} << 16;

// Calls f(begin, end) on contiguous blocks covering [0, items), one block per thread (block 0
// on the calling thread). `elements_per_item` sizes the work for the single-thread cut-off.
// The blocks depend only on (items, the thread count asked for), never on how many threads the
// runtime grants, so results do not change with the machine's load. The first exception thrown
// by any block is rethrown here after every block has run.
template <typename F>
void parallel_for(int64_t items, int64_t elements_per_item, int num_threads, const F& f) {
  if (items <= 0) return;
  int64_t threads = std::min<int64_t>(std::max(num_threads, 1), items);
  if (items * std::max<int64_t>(elements_per_item, 1) < kParallelMinElements) threads = 1;
  if (threads == 1) {
    f(int64_t{0}, items);
    return;
  }
  const auto block = [&](int64_t t) { return items * t / threads; };
  std::vector<std::exception_ptr> errors(static_cast<size_t>(threads));
  // Exceptions must not cross an OpenMP region or a thread: each block keeps its own.
  const auto run_block = [&](int64_t t) {
    try {
      f(block(t), block(t + 1));
    } catch (...) {
      errors[static_cast<size_t>(t)] = std::current_exception();
    }
  };
  if (const openmp::Runtime* omp = openmp::runtime()) {
    struct Region {
      const openmp::Runtime* omp;
      int64_t threads;
      const decltype(run_block)* run;
    } region{omp, threads, &run_block};
    omp->parallel(
        [](void* p) {
          const auto& r = *static_cast<const Region*>(p);
          // The runtime may grant fewer threads than asked (nested regions, limits): each
          // thread takes every granted-th block.
          const int64_t granted = r.omp->num_threads();
          for (int64_t t = r.omp->thread_num(); t < r.threads; t += granted) (*r.run)(t);
        },
        &region, static_cast<unsigned>(threads), 0u);
  } else {
    std::vector<std::thread> pool;
    pool.reserve(static_cast<size_t>(threads - 1));
    int64_t t = 1;
    try {
      for (; t < threads; ++t) pool.emplace_back(run_block, t);
    } catch (...) {
      // Could not spawn (resource limits): the blocks without a thread run here instead.
    }
    run_block(0);
    for (int64_t u = t; u < threads; ++u) run_block(u);
    for (auto& th : pool) th.join();
  }
  for (auto& e : errors)
    if (e) std::rethrow_exception(e);
}

}  // namespace genfast
