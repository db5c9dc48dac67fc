// CUDA Gumbel-max sampling (greedy, temperature, top-k, top-p). The contract is the module
// docstring of genfast/ops/sample.py; comments cite its terms (x', m', s, K, t). The row work
// split, the noise and the row preprocessing are csrc/cuda/gumbel_row.cuh, shared with the
// Gumbel-Softmax kernels.
//
// Thresholds by radix select over the order-preserving key of s (dev::order_key: unsigned order
// = float order): 8-bit digits, most significant first, so at most 4 passes for 32-bit keys (8
// for the 64-bit keys of float64), fewer where the candidates share leading digits (kSkip). A
// pass histograms the weights of the row's candidates (the columns whose key matches the digits
// fixed so far) into 256 shared-memory bins with atomics, then one warp finds the highest digit
// at which the weight at or above it reaches the target (a suffix scan across lanes, 8 bins a
// lane). The old bitwise search took 32 block-wide reductions per threshold. Weights are integers (a count for top_k; for top_p the mass
// trunc(exp(s) * 2^S), S = 62 - ceil(log2(n)), as the Triton kernel sums it), so atomics add them
// exactly in any order: the threshold is deterministic run to run, and another backend's differs
// only where its exp() rounds differently.
#include <cuda_runtime.h>

#include <cmath>
#include <cstdint>

#include "cuda/common.cuh"
#include "cuda/gumbel_row.cuh"
#include "cuda/sample.h"

namespace genfast::cuda {
namespace {

using dev::acc_t;
using dev::ArgMax;
using dev::ArgMaxOp;
using dev::for_each_row;
using dev::Group;
using dev::MaxOp;
using dev::neg_inf;
using dev::order_key;
using dev::Quads;
using dev::SumOp;
using gumbel_rows::grid_for;
using gumbel_rows::gumbel_quad;
using gumbel_rows::row_max;
using gumbel_rows::Shift;
using gumbel_rows::with_cfg;

template <typename A>
struct KeyOf {
  using type = uint32_t;
};
template <>
struct KeyOf<double> {
  using type = unsigned long long;
};

constexpr int kBins = 256;  // 8-bit digits

// Result of one digit choice, handed from the choosing warp to the rest of the group.
struct Pick {
  int digit;       // -1: the row's whole candidate weight is below the target
  long long above;  // weight of the keys above the chosen digit's range
};

// Warp-wide: the highest digit d with above + weight(digits >= d) >= target. Lane l owns bins
// 8l .. 8l+7; a suffix scan across lanes gives the weight at and above each lane's lowest bin,
// and the highest lane where that reaches the target walks its own 8 bins. Writes *res (lane L).
__device__ __forceinline__ void pick_digit(const unsigned long long* hist, long long above,
                                           long long target, int lane, Pick* res) {
  long long h[8];
  long long own = 0;
#pragma unroll
  for (int i = 0; i < 8; ++i) {
    h[i] = static_cast<long long>(hist[8 * lane + i]);
    own += h[i];
  }
  long long suffix = own;  // this lane's bins and every higher lane's
#pragma unroll
  for (int off = 1; off < 32; off <<= 1) {
    const long long o = __shfl_down_sync(0xffffffffu, suffix, off);
    if (lane + off < 32) suffix += o;
  }
  const unsigned hit = __ballot_sync(0xffffffffu, above + suffix >= target);
  if (hit == 0) {
    if (lane == 0) *res = {-1, above};
    return;
  }
  if (lane != 31 - __clz(static_cast<int>(hit))) return;
  long long run = above + suffix - own;  // weight above this lane's bins
  int d = 8 * lane;
  for (int i = 7; i >= 0; --i) {
    if (run + h[i] >= target) {
      d = 8 * lane + i;
      break;
    }
    run += h[i];
  }
  *res = {d, run};
}

struct MinOp {
  template <typename V>
  __device__ V operator()(V a, V b) const {
    return b < a ? b : a;
  }
};

// Keys as signed 64-bit values in the same order, for the group reductions (which shuffle long
// long): flipping bit 63 maps unsigned order onto signed order.
template <typename K>
__device__ __forceinline__ long long as_signed(K k) {
  return static_cast<long long>(static_cast<unsigned long long>(k) ^ 0x8000000000000000ull);
}
template <typename K>
__device__ __forceinline__ K as_key(long long v) {
  return static_cast<K>(static_cast<unsigned long long>(v) ^ 0x8000000000000000ull);
}

// Largest key t with sum of w over {key >= t} >= target in this group's row, or 0 (keep every
// column) if the row's whole weight is below the target (`reachable` false). for_each_weight(f)
// calls f(key, w) for each column the thread owns. Called from block-uniform control flow (it
// synchronises the block); groups are >= a warp.
//
// kSkip (rows cached in registers, where a sweep costs no memory traffic): before each pass the
// key range [lo, hi] of the candidates with weight says which leading digits they all share, so
// the pass starts at the first digit where they differ, and a range of one key is the answer.
// Random logits then take about 2.6 passes instead of 4 (about 4.7 instead of 8 for float64).
template <class C, typename K, bool kSkip, class F>
__device__ K radix_threshold(const Group<C::kThreads>& grp, unsigned long long* hist, Pick* res,
                             long long target, bool reachable, F&& for_each_weight) {
  constexpr int kBits = 8 * static_cast<int>(sizeof(K));
  K prefix = 0, fixed = 0, result = 0;  // the chosen digits, and the mask of their bits
  long long above = 0;
  bool done = !reachable;
  int shift = kBits - 8;
  auto narrow = [&]() {
    long long lo = 0x7fffffffffffffffll, hi = -0x7fffffffffffffffll - 1;
    for_each_weight([&](K key, long long w) {
      if (w != 0 && (key & fixed) == prefix) {
        const long long v = as_signed(key);
        lo = v < lo ? v : lo;
        hi = v > hi ? v : hi;
      }
    });
    const K klo = as_key<K>(grp.reduce(lo, MinOp())), khi = as_key<K>(grp.reduce(hi, MaxOp()));
    if (done) return;
    if (klo == khi) {
      result = klo;
      done = true;
      return;
    }
    shift = (63 - __clzll(static_cast<unsigned long long>(klo ^ khi))) / 8 * 8;
    fixed = shift + 8 >= kBits ? K(0) : static_cast<K>(~K(0) << (shift + 8));
    prefix = klo & fixed;
  };
  if constexpr (kSkip) narrow();
  for (int pass = 0; pass < kBits / 8; ++pass) {
    if (!__syncthreads_or(!done)) break;
    for (int b = grp.rank; b < kBins; b += C::kThreads) hist[b] = 0;
    __syncthreads();
    if (!done) {
      for_each_weight([&](K key, long long w) {
        if (w != 0 && (key & fixed) == prefix)
          atomicAdd(&hist[static_cast<int>((key >> shift) & K(kBins - 1))],
                    static_cast<unsigned long long>(w));
      });
    }
    __syncthreads();
    if (grp.rank < 32) pick_digit(hist, above, target, grp.rank, res);
    __syncthreads();
    const Pick p = *res;
    __syncthreads();  // hist and res are reused by the next pass
    if (!done) {
      // Integer weights sum exactly, so a reachable row always finds its digit.
      above = p.above;
      prefix |= static_cast<K>(p.digit < 0 ? 0 : p.digit) << shift;
      fixed |= static_cast<K>(kBins - 1) << shift;
      if constexpr (!kSkip) {
        if (shift == 0) {
          result = prefix;
          done = true;
        }
        shift -= 8;
      }
    }
    if constexpr (kSkip) narrow();
  }
  return result;
}

template <typename T, class C>
__global__ void __launch_bounds__(C::kBlock)
    sample_kernel(const T* x, int64_t xs,      // logits, (rows, n)
                  int64_t* out,                // one index per row
                  int64_t rows, int64_t n,     //
                  const int64_t* seed_ptr,     // device int64 seed
                  acc_t<T> inv_temp,           // finite, > 0 (unused when greedy)
                  bool greedy,                 // inv_temperature == +inf
                  int64_t top_k,               // 0 = off, else 1 <= top_k < n
                  acc_t<T> top_p,              // 0 < top_p < 1 when use_top_p
                  bool use_top_p,              //
                  acc_t<T> scale) {            // 2^S of the fixed-point masses
  using A = acc_t<T>;
  using K = typename KeyOf<A>::type;
  // Radix histograms exist only in configs of whole warps (the launcher sends filtered calls
  // there); a sub-warp config keeps one unused slot rather than 32 rows' worth of bins.
  constexpr bool kRadix = C::kThreads >= 32;
  constexpr bool kSkip = C::kItems > 0;  // narrowing sweeps read registers, not memory
  constexpr int kHists = kRadix ? C::kRowsPerBlock : 1;
  __shared__ alignas(16) unsigned char scratch[Group<C::kThreads>::kScratchBytes];
  __shared__ unsigned long long hists[kHists][kBins];
  __shared__ Pick picks[kHists];
  const Group<C::kThreads> grp{static_cast<int>(threadIdx.x % C::kThreads), scratch};
  const int sub = kRadix ? static_cast<int>(threadIdx.x / C::kThreads) : 0;
  const Quads<C> quads{grp.rank, (n + 3) / 4};
  const uint64_t seed = static_cast<uint64_t>(*seed_ptr);
  for_each_row<C>(rows, [&](int64_t row, bool live) {
    const T* xr = x + row * xs;
    const bool vx = dev::vec_ok(xr);
    // Indices stay in [0, n) whatever the data: a NaN row never beats the sentinel n, which maps
    // to 0 here.
    auto finish = [&](const ArgMax<A>& best) {
      if (live && grp.rank == 0) out[row] = best.i < n ? best.i : 0;
    };
    if (greedy) {
      // First argmax of x' is the first argmax of x (x' keeps the order of x and its ties when m
      // is finite, marks exactly the +inf entries when m = +inf), and column 0 for an all -inf
      // row, which is what the never-replaced sentinel gives. So one pass over x, no
      // preprocessing.
      ArgMax<A> best{neg_inf<A>(), n};
      quads([&](int, int64_t q) {
        A v[4];
        dev::load_quad(xr, q, n, vx, neg_inf<A>(), v);
#pragma unroll
        for (int j = 0; j < 4; ++j)
          if (4 * q + j < n && v[j] > best.v) best = {v[j], 4 * q + j};
      });
      finish(grp.reduce(best, ArgMaxOp()));
      return;
    }
    // exp(s) is cached for the radix passes of top_p only where registers allow: past 16 floats
    // (8 doubles) a thread, a second cache spills under 512-thread bounds (ptxas -v).
    constexpr bool kCacheExp = C::kItems > 0 && C::kItems * sizeof(A) <= 16;
    A c[C::kSlots][4];                      // x, then s
    A e[kCacheExp ? C::kSlots : 1][4];      // exp(s) (top_p only)
    const Shift<A> sh(row_max<C>(grp, quads, xr, n, vx, c));
    auto s_of = [&](A xv) {
      const A s = sh(xv) * inv_temp;
      return s == A(0) ? A(0) : s;  // -0 -> +0: the contract's >= treats them as equal, keys do not
    };
    if constexpr (C::kItems > 0) {
      quads([&](int i, int64_t) {
#pragma unroll
        for (int j = 0; j < 4; ++j) c[i][j] = s_of(c[i][j]);
      });
    }
    auto s_quad = [&](int i, int64_t q, A (&s)[4]) {
      if constexpr (C::kItems > 0) {
#pragma unroll
        for (int j = 0; j < 4; ++j) s[j] = c[i][j];
      } else {
        dev::load_quad(xr, q, n, vx, neg_inf<A>(), s);
#pragma unroll
        for (int j = 0; j < 4; ++j) s[j] = s_of(s[j]);
      }
    };
    K kt = 0;  // K = {c : key(s[c]) >= kt}; 0 keeps every column
    if constexpr (kRadix) {
      unsigned long long* hist = hists[sub];
      if (top_k > 0) {
        // The top_k-th largest s, duplicates counted: every column weighs 1.
        kt = radix_threshold<C, K, kSkip>(grp, hist, &picks[sub], top_k, true, [&](auto&& f) {
          quads([&](int i, int64_t q) {
            A s[4];
            s_quad(i, q, s);
#pragma unroll
            for (int j = 0; j < 4; ++j)
              if (4 * q + j < n) f(order_key(s[j]), 1LL);
          });
        });
      }
      if (use_top_p) {
        // w = exp(s) over K, in fixed point; max s over K is exactly 0 (the column holding m
        // maps to x' - m' = +0, and K always keeps it), so w <= 2^S and no sum overflows.
        auto fixed_point = [&](int64_t col, A s, A w) -> long long {
          return col < n && order_key(s) >= kt ? static_cast<long long>(w * scale) : 0;
        };
        long long z = 0;
        quads([&](int i, int64_t q) {
          A s[4];
          s_quad(i, q, s);
#pragma unroll
          for (int j = 0; j < 4; ++j) {
            const A w = dev::dexp(s[j]);
            if constexpr (kCacheExp) e[i][j] = w;
            z += fixed_point(4 * q + j, s[j], w);
          }
        });
        z = grp.reduce(z, SumOp());
        // ceil(top_p * Z): the smallest integer mass that reaches the fraction top_p.
        const double want = static_cast<double>(top_p) * static_cast<double>(z);
        long long target = static_cast<long long>(want);
        if (static_cast<double>(target) < want) ++target;
        const K kp = radix_threshold<C, K, kSkip>(grp, hist, &picks[sub], target, z >= target,
                                                  [&](auto&& f) {
          quads([&](int i, int64_t q) {
            A s[4];
            s_quad(i, q, s);
#pragma unroll
            for (int j = 0; j < 4; ++j) {
              A w;
              if constexpr (kCacheExp) {
                w = e[i][j];  // cached by the Z pass: no exp per radix pass
              } else {
                w = dev::dexp(s[j]);
              }
              f(order_key(s[j]), fixed_point(4 * q + j, s[j], w));
            }
          });
        });
        kt = kp > kt ? kp : kt;
      }
    }
    // index = first argmax over K of s + g.
    ArgMax<A> best{neg_inf<A>(), n};
    quads([&](int i, int64_t q) {
      A s[4];
      s_quad(i, q, s);
      bool keep[4], any = false;
#pragma unroll
      for (int j = 0; j < 4; ++j) {
        keep[j] = 4 * q + j < n && order_key(s[j]) >= kt;
        any = any || keep[j];
      }
      if (!any) return;  // filtered-out quads (most of the row under top_k) draw no noise
      A g[4];
      gumbel_quad(seed, row, q, g);
#pragma unroll
      for (int j = 0; j < 4; ++j) {
        const A key = s[j] + g[j];
        if (keep[j] && key > best.v) best = {key, 4 * q + j};
      }
    });
    finish(grp.reduce(best, ArgMaxOp()));
  });
}

}  // namespace

int sample_categorical(const void* x, int64_t x_row_stride, int64_t* out, int64_t rows,
                       int64_t n, int dtype, const int64_t* seed, double inv_temperature,
                       int64_t top_k, double top_p, void* stream) {
  if (rows < 0 || n < 0 || (rows > 0 && n == 0)) return static_cast<int>(cudaErrorInvalidValue);
  if (rows == 0) return static_cast<int>(cudaSuccess);
  if (x == nullptr || out == nullptr || seed == nullptr)
    return static_cast<int>(cudaErrorInvalidValue);
  const bool greedy = std::isinf(inv_temperature) && inv_temperature > 0;
  const int64_t k = (!greedy && top_k > 0 && top_k < n) ? top_k : 0;
  const bool use_top_p = !greedy && top_p < 1.0;
  // 2^S with n * 2^S <= 2^62: S = 62 - ceil(log2(n)) (ops/sample.py's contract, Triton's too).
  int ceil_log2 = 0;
  while ((int64_t{1} << ceil_log2) < n) ++ceil_log2;
  const double scale = std::ldexp(1.0, 62 - ceil_log2);
  return with_dtype(dtype, [&](auto tag) {
    using T = typename decltype(tag)::type;
    using A = acc_t<T>;
    auto launch = [&](auto cfg) {
      using C = decltype(cfg);
      sample_kernel<T, C><<<grid_for<C>(rows), C::kBlock, 0, static_cast<cudaStream_t>(stream)>>>(
          static_cast<const T*>(x), x_row_stride, out, rows, n, seed,
          greedy ? A(1) : to_param<A>(inv_temperature), greedy, k,
          use_top_p ? static_cast<A>(top_p) : A(1), use_top_p, static_cast<A>(scale));
      return static_cast<int>(cudaGetLastError());
    };
    // Filtering needs the radix histograms, which exist in configs of whole warps only.
    if (k > 0 || use_top_p) return with_cfg<T, 32>(n, launch);
    return with_cfg<T>(n, launch);
  });
}

}  // namespace genfast::cuda
