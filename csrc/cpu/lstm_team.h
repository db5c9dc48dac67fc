// The thread team of the CPU LSTM kernels (lstm.cpp): one team for a whole call, a barrier
// between the phases of every step, and the call's scratch.
#pragma once
#ifdef __linux__
#include <linux/futex.h>
#include <sys/syscall.h>
#include <unistd.h>
#endif

#include <algorithm>
#include <atomic>
#include <climits>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <new>
#include <thread>
#include <vector>

#include "common/openmp.h"

namespace genfast::lstm_team {

// A phase-counting barrier. Waiters spin first (the next phase is usually microseconds away),
// then sleep on a futex: a team whose cores are shared with other work must not burn the time
// slice its partner needs to arrive.
class Barrier {
 public:
  void wait(int team) {
    if (team <= 1) return;
    const int ph = phase_.load(std::memory_order_acquire);
    if (arrived_.fetch_add(1, std::memory_order_acq_rel) == team - 1) {
      arrived_.store(0, std::memory_order_relaxed);
      phase_.store(ph + 1, std::memory_order_seq_cst);
      if (sleepers_.load(std::memory_order_seq_cst) > 0) wake();
      return;
    }
    for (int spin = 0; spin < kSpins; ++spin) {
      if (phase_.load(std::memory_order_acquire) != ph) return;
#if defined(__x86_64__) || defined(__i386__)
      __builtin_ia32_pause();
#endif
    }
    // Dekker-style with the releaser: it stores the phase then reads sleepers_, we count
    // ourselves in then read the phase (both seq_cst), so one of us sees the other.
    sleepers_.fetch_add(1, std::memory_order_seq_cst);
    while (phase_.load(std::memory_order_seq_cst) == ph) sleep(ph);
    sleepers_.fetch_sub(1, std::memory_order_relaxed);
  }

 private:
  static constexpr int kSpins = 1024;  // tens of microseconds
#ifdef __linux__
  // The futex returns at once if the phase already moved on (EAGAIN), or on a spurious wake.
  void sleep(int ph) {
    syscall(SYS_futex, reinterpret_cast<int*>(&phase_), FUTEX_WAIT_PRIVATE, ph, nullptr, nullptr,
            0);
  }
  void wake() {
    syscall(SYS_futex, reinterpret_cast<int*>(&phase_), FUTEX_WAKE_PRIVATE, INT_MAX, nullptr,
            nullptr, 0);
  }
#else
  void sleep(int) { std::this_thread::yield(); }
  void wake() {}
#endif
  alignas(64) std::atomic<int> arrived_{0};
  alignas(64) std::atomic<int> phase_{0};
  alignas(64) std::atomic<int> sleepers_{0};
};

// Runs f(tid, team) on a team of up to `want` threads that all run together (f waits on
// barriers, so a thread must never run two tids): torch's OpenMP team when found (warm
// threads), else std::threads. The team may come out smaller than asked (nested regions,
// spawn failures); f splits work by the team it gets, which never changes the results.
template <typename F>
void run_team(int want, const F& f) {
  if (want <= 1) return f(0, 1);
  if (const openmp::Runtime* omp = openmp::runtime()) {
    struct Region {
      const openmp::Runtime* omp;
      const F* f;
    } r{omp, &f};
    omp->parallel(
        [](void* p) {
          const auto& r = *static_cast<const Region*>(p);
          (*r.f)(r.omp->thread_num(), r.omp->num_threads());
        },
        &r, static_cast<unsigned>(want), 0u);
    return;
  }
  std::atomic<int> team{0};
  std::vector<std::thread> pool;
  try {
    for (int i = 1; i < want; ++i)
      pool.emplace_back([&team, &f, i] {
        int n;
        while ((n = team.load(std::memory_order_acquire)) == 0) std::this_thread::yield();
        if (i < n) f(i, n);
      });
  } catch (...) {
    // Could not spawn them all: the team is the threads that started.
  }
  const int n = static_cast<int>(pool.size()) + 1;
  team.store(n, std::memory_order_release);
  f(0, n);
  for (auto& th : pool) th.join();
}

// Scratch of the calling thread, kept between calls: a fresh multi-megabyte block per call is
// mmap'ed and page-faulted anew each time (about a millisecond at H = 512, more than a whole
// step at small batch). It grows and is never shrunk.
inline unsigned char* workspace(size_t bytes) {
  thread_local std::unique_ptr<unsigned char[]> block;
  thread_local size_t capacity = 0;
  if (bytes > capacity) {
    block.reset();
    block.reset(new (std::align_val_t(64)) unsigned char[bytes]);
    capacity = bytes;
  }
  return block.get();
}

// Lays buffers out in one 64-byte aligned block: a pass with a null base sizes it, a second
// one hands out the pointers.
struct Layout {
  unsigned char* base = nullptr;
  size_t size = 0;
  template <typename T>
  T* take(int64_t n) {
    T* p = base != nullptr ? reinterpret_cast<T*>(base + size) : nullptr;
    size += (static_cast<size_t>(std::max<int64_t>(n, 0)) * sizeof(T) + 63) & ~size_t{63};
    return p;
  }
};

template <typename F>
inline void carve(const F& assign) {
  Layout sizing;
  assign(sizing);
  Layout l{workspace(sizing.size), 0};
  assign(l);
}

}  // namespace genfast::lstm_team
