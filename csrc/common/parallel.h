// A minimal parallel_for over independent items (rows) on plain std::threads.
//
// Not OpenMP: torch ships its own libgomp, and a second OpenMP runtime whose workers spin after
// each region would steal cores from torch (and distort benchmarks) on small machines. A kernel
// call here is milliseconds, so spawning threads per call (tens of microseconds) is noise; tiny
// calls stay on the calling thread.
#pragma once
#include <algorithm>
#include <cstdint>
#include <exception>
#include <thread>
#include <vector>

namespace genfast {

// Below this many elements a call runs single-threaded: the spawn would cost more than it saves.
constexpr int64_t kParallelMinElements = int64_t{1} << 16;

// Calls f(begin, end) on contiguous blocks covering [0, items), one block per thread, block 0 on
// the calling thread. `elements_per_item` sizes the work for the single-thread cut-off. The first
// exception thrown by any block is rethrown here after every thread has joined.
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
  std::vector<std::thread> pool;
  pool.reserve(static_cast<size_t>(threads - 1));
  int64_t t = 1;
  try {
    for (; t < threads; ++t) {
      pool.emplace_back([&, t] {
        try {
          f(block(t), block(t + 1));
        } catch (...) {
          errors[static_cast<size_t>(t)] = std::current_exception();
        }
      });
    }
  } catch (...) {
    // Could not spawn (resource limits): the blocks without a thread run here instead.
  }
  try {
    f(block(0), block(1));
    for (int64_t u = t; u < threads; ++u) f(block(u), block(u + 1));
  } catch (...) {
    errors[0] = std::current_exception();
  }
  for (auto& th : pool) th.join();
  for (auto& e : errors)
    if (e) std::rethrow_exception(e);
}

}  // namespace genfast
