// Which instruction set the CPU kernels' hot loops run with, chosen at run time.
//
// The build's baseline is SSE2 (x86-64's), so a loop marked GENFAST_MULTIVERSIONED is compiled
// into one copy per ISA below, each with its own target attribute, and a small dispatcher picks
// the copy of the active ISA at every call (one switch per row block, not per element). Unlike
// GCC's target_clones + ifunc, which the dynamic loader resolves once for good, the choice can be
// overridden, so CI runs every copy the machine can execute, not only the one it would pick:
//
//   GENFAST_ISA=avx512|avx2|sse2|scalar|auto   read when genfast._C loads
//   genfast._C.set_isa(name)                   switch in-process (tests)
//
//   avx512  x86-64-v4 copy (AVX-512 F/BW/CD/DQ/VL, FMA), Philox in 8 lanes
//   avx2    x86-64-v3 copy (AVX2, FMA), Philox in 4 lanes
//   sse2    the baseline copy (auto-vectorised to SSE2), Philox in 2 lanes
//   scalar  the baseline copy with GCC's loop and SLP vectorisers off, and the scalar
//           philox_block loop: no SIMD arithmetic anywhere (the path non-x86 builds take)
//
// A name the CPU cannot execute raises instead of dying with SIGILL. GCC only (the arch-level
// target names need it): elsewhere, and off x86-64, only the baseline and scalar copies exist.
// FMA contraction makes avx2/avx512 results differ from sse2/scalar in the last bits; the
// Philox words are integer arithmetic and identical on every copy.
#pragma once
#include <atomic>
#include <cstdlib>
#include <stdexcept>
#include <string>

#if defined(__x86_64__) && defined(__GNUC__) && defined(__has_builtin)
#if __has_builtin(__builtin_shufflevector)  // GCC >= 12, clang
#include <immintrin.h>
#define GENFAST_X86_SIMD 1
#endif
#endif

#if defined(GENFAST_X86_SIMD) && !defined(__clang__)
#define GENFAST_ISA_X86 1
#define GENFAST_TARGET_AVX512 __attribute__((target("arch=x86-64-v4"), noinline))
#define GENFAST_TARGET_AVX2 __attribute__((target("arch=x86-64-v3"), noinline))
#endif

#if defined(__GNUC__) && !defined(__clang__)
#define GENFAST_TARGET_SCALAR \
  __attribute__((optimize("no-tree-vectorize", "no-tree-slp-vectorize"), noinline))
#else
#define GENFAST_TARGET_SCALAR __attribute__((noinline))  // clang: vectorisers stay on
#endif
#define GENFAST_TARGET_BASE __attribute__((noinline))

namespace genfast::isa {

enum Isa : int { kScalar = 0, kBase = 1, kAvx2 = 2, kAvx512 = 3 };
constexpr int kCount = 4;

#ifdef GENFAST_X86_SIMD
constexpr const char* kNames[kCount] = {"scalar", "sse2", "avx2", "avx512"};
#else
constexpr const char* kNames[kCount] = {"scalar", "baseline", "avx2", "avx512"};
#endif

// Whether this build has the copy and this CPU (and OS: the XSAVE state) can run it.
inline bool supported(int isa) {
  if (isa == kScalar || isa == kBase) return true;
#ifdef GENFAST_ISA_X86
  __builtin_cpu_init();
  if (isa == kAvx2) return __builtin_cpu_supports("x86-64-v3");
  if (isa == kAvx512) return __builtin_cpu_supports("x86-64-v4");
#endif
  return false;
}

inline int best() {
  for (int i = kCount - 1; i > 0; --i)
    if (supported(i)) return i;
  return kScalar;
}

inline std::string supported_names() {
  std::string s;
  for (int i = 0; i < kCount; ++i)
    if (supported(i)) s += std::string(s.empty() ? "" : ", ") + kNames[i];
  return s;
}

// One value for the whole shared object (C++17 inline variable); -1 until first use.
inline std::atomic<int> g_active{-1};

inline int active() {
  int v = g_active.load(std::memory_order_relaxed);
  if (v < 0) {
    v = best();
    g_active.store(v, std::memory_order_relaxed);
  }
  return v;
}

// name: one of kNames or "auto" (the best this CPU runs). `what` names the setting in errors.
inline void set(const std::string& name, const char* what) {
  int isa = -1;
  if (name == "auto") isa = best();
  for (int i = 0; i < kCount; ++i)
    if (name == kNames[i]) isa = i;
  if (isa < 0)
    throw std::invalid_argument(std::string(what) + ": unknown ISA '" + name +
                                "'; expected auto, " + kNames[kAvx512] + ", " + kNames[kAvx2] +
                                ", " + kNames[kBase] + " or " + kNames[kScalar]);
  if (!supported(isa))
    throw std::runtime_error(std::string(what) + ": '" + name + "' cannot run here (" +
#ifdef GENFAST_ISA_X86
                             "this CPU lacks it"
#else
                             "this build has no such copy"
#endif
                             "); supported: " + supported_names());
  g_active.store(isa, std::memory_order_relaxed);
}

// At module load: GENFAST_ISA if set and not empty, else the best copy.
inline void init_from_env() {
  const char* env = std::getenv("GENFAST_ISA");
  set(env && *env ? std::string(env) : std::string("auto"), "GENFAST_ISA");
}

inline const char* active_name() { return kNames[active()]; }

}  // namespace genfast::isa

// Defines `void name params` that runs the statement `body` in the copy of the active ISA; `args`
// forwards params. Mark the unit that a thread runs (a block of rows), so the body's always_inline
// loops are compiled, and vectorised, inside each copy.
#ifdef GENFAST_ISA_X86
#define GENFAST_MULTIVERSIONED(name, params, args, ...)                    \
  GENFAST_TARGET_AVX512 void name##_avx512 params { __VA_ARGS__; }         \
  GENFAST_TARGET_AVX2 void name##_avx2 params { __VA_ARGS__; }             \
  GENFAST_TARGET_BASE void name##_base params { __VA_ARGS__; }             \
  GENFAST_TARGET_SCALAR void name##_scalar params { __VA_ARGS__; }         \
  void name params {                                                       \
    switch (::genfast::isa::active()) {                                    \
      case ::genfast::isa::kAvx512: return name##_avx512 args;             \
      case ::genfast::isa::kAvx2: return name##_avx2 args;                 \
      case ::genfast::isa::kScalar: return name##_scalar args;             \
      default: return name##_base args;                                    \
    }                                                                      \
  }
#else
#define GENFAST_MULTIVERSIONED(name, params, args, ...)                    \
  GENFAST_TARGET_BASE void name##_base params { __VA_ARGS__; }             \
  GENFAST_TARGET_SCALAR void name##_scalar params { __VA_ARGS__; }         \
  void name params {                                                       \
    if (::genfast::isa::active() == ::genfast::isa::kScalar) return name##_scalar args; \
    return name##_base args;                                               \
  }
#endif
