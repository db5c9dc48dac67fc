// CUDA Gumbel-Softmax / Gumbel-max kernels. The contract (noise stream, hostile-row
// preprocessing, forward / backward / sampling semantics) is the module docstring of
// genfast/ops/gumbel.py; comments below cite its terms (m, x', m', a, A, s, K, t).
//
// Work split: a group of C::kThreads threads owns one row, each thread the quads (4 columns, one
// Philox call) rank, rank + kThreads, ...  Short rows (n <= 1024) use sub-warp / warp groups, so
// a 10-class row does not leave 500 threads idle; longer rows use one 512-thread block. When the
// row fits (kItems > 0) every thread keeps its quads in registers, so logits are read from
// global memory once and the noise is drawn once; longer rows re-read x (L2-resident in the
// common case) and redraw the noise in each pass instead.
#include <cuda_runtime.h>

#include <cfloat>
#include <cmath>
#include <cstdint>

#include "common/philox.h"
#include "cuda/common.cuh"
#include "cuda/gumbel.h"

namespace genfast::cuda {
namespace {

using dev::acc_t;
using dev::ArgMax;
using dev::ArgMaxOp;
using dev::Cfg;
using dev::for_each_row;
using dev::Group;
using dev::MaxOp;
using dev::NanMaxOp;
using dev::neg_inf;
using dev::order_key;
using dev::Quads;
using dev::SumOp;

// g = -log(-log(u)) for the 4 columns of quad q (contract: "Noise"); double math for float64.
template <typename A>
__device__ __forceinline__ void gumbel_quad(uint64_t seed, int64_t row, int64_t q, A (&g)[4]) {
  const Philox4 b = philox_block(seed, static_cast<uint64_t>(row), static_cast<uint64_t>(q));
#pragma unroll
  for (int j = 0; j < 4; ++j) {
    const A u = static_cast<A>(uniform_from_word(b.w[j]));
    g[j] = -dev::dlog(-dev::dlog(u));
  }
}

// x -> x' - m' (contract: "Row preprocessing"). A NaN max takes the first branch, so NaN flows
// into every column of the row.
template <typename A>
struct Shift {
  A m;
  int mode;  // 0: m finite or NaN; 1: m == +inf; 2: m == -inf
  __device__ explicit Shift(A m_) : m(m_), mode(m_ == -neg_inf<A>() ? 1 : m_ == neg_inf<A>() ? 2 : 0) {}
  __device__ __forceinline__ A operator()(A x) const {
    if (mode == 0) return x - m;
    if (mode == 1) return x == -neg_inf<A>() ? A(0) : neg_inf<A>();
    return A(0);
  }
};

// Pass 1 of every op: m with NaN propagation, caching the logits when the row fits.
template <class C, typename T, typename A>
__device__ __forceinline__ A row_max(const Group<C::kThreads>& grp, const Quads<C>& quads,
                                     const T* x, int64_t n, bool vx, A (&c)[C::kSlots][4]) {
  A m = neg_inf<A>();
  quads([&](int i, int64_t q) {
    A v[4];
    dev::load_quad(x, q, n, vx, neg_inf<A>(), v);
#pragma unroll
    for (int j = 0; j < 4; ++j) {
      m = NanMaxOp()(m, v[j]);
      if constexpr (C::kItems > 0) c[i][j] = v[j];
    }
  });
  m = grp.reduce(m, NanMaxOp());
  // max(+0, -0) depends on operand order; canonicalise so every lane holds the same m.
  return m == A(0) ? A(0) : m;
}

// Logits of quad (i, q): from the register cache, or re-read when the row is not cached.
template <class C, typename T, typename A>
__device__ __forceinline__ void x_quad(const A (&c)[C::kSlots][4], int i, const T* x, int64_t q,
                                       int64_t n, bool vx, A (&v)[4]) {
  if constexpr (C::kItems > 0) {
#pragma unroll
    for (int j = 0; j < 4; ++j) v[j] = c[i][j];
  } else {
    dev::load_quad(x, q, n, vx, neg_inf<A>(), v);
  }
}

// Online softmax state over a (a, max of a so far) and s (sum of exp((a - A) * inv_tau)).
template <typename A>
struct SoftState {
  A a, s;
};
template <typename A>
__device__ __forceinline__ SoftState<A> shfl_xor(const SoftState<A>& p, int m) {
  return {dev::shfl_xor(p.a, m), dev::shfl_xor(p.s, m)};
}
template <typename A>
__device__ __forceinline__ void online_add(SoftState<A>& st, A a, A it) {
  if (a > st.a) {
    st.s = st.s * dev::dexp((st.a - a) * it) + A(1);  // st.a == -inf: exp(-inf) = 0
    st.a = a;
  } else if (a != neg_inf<A>()) {  // -inf has weight 0, and -inf - -inf would be NaN
    st.s += dev::dexp((a - st.a) * it);  // NaN a poisons s, as the contract wants
  }
}
template <typename A>
struct SoftOp {
  A it;
  __device__ SoftState<A> operator()(const SoftState<A>& p, const SoftState<A>& q) const {
    const A a = q.a > p.a ? q.a : p.a;
    // An empty partial (s == 0, a == -inf) contributes 0, not 0 * exp(NaN).
    const A sp = p.s == A(0) ? A(0) : p.s * dev::dexp((p.a - a) * it);
    const A sq = q.s == A(0) ? A(0) : q.s * dev::dexp((q.a - a) * it);
    return {a, sp + sq};
  }
};

template <typename A>
struct SoftStats {
  A amax;  // A = max_c a[c]
  A rsum;  // 1 / sum_c exp((a[c] - A) * inv_tau)
};

// Statistics of the soft forward. Cached rows: two exact passes over registers (c holds x on
// entry and exp((a - A) * inv_tau) on exit, one exp per element). Uncached rows: one online pass.
template <class C, typename T, typename A>
__device__ __forceinline__ SoftStats<A> soft_stats(const Group<C::kThreads>& grp,
                                                   const Quads<C>& quads, const T* x, int64_t n,
                                                   bool vx, uint64_t seed, int64_t row,
                                                   const Shift<A>& sh, A it,
                                                   A (&c)[C::kSlots][4]) {
  if constexpr (C::kItems > 0) {
    A amax = neg_inf<A>();
    quads([&](int i, int64_t q) {
      A g[4];
      gumbel_quad(seed, row, q, g);
#pragma unroll
      for (int j = 0; j < 4; ++j) {
        const A a = 4 * q + j < n ? sh(c[i][j]) + g[j] : neg_inf<A>();
        c[i][j] = a;
        amax = MaxOp()(amax, a);
      }
    });
    amax = grp.reduce(amax, MaxOp());
    A sum = 0;
    quads([&](int i, int64_t) {
#pragma unroll
      for (int j = 0; j < 4; ++j) {
        const A e = dev::dexp((c[i][j] - amax) * it);  // padding: exp(-inf) = 0
        c[i][j] = e;
        sum += e;
      }
    });
    sum = grp.reduce(sum, SumOp());
    return {amax, A(1) / sum};
  } else {
    SoftState<A> st{neg_inf<A>(), A(0)};
    quads([&](int, int64_t q) {
      A v[4], g[4];
      dev::load_quad(x, q, n, vx, neg_inf<A>(), v);
      gumbel_quad(seed, row, q, g);
#pragma unroll
      for (int j = 0; j < 4; ++j)
        if (4 * q + j < n) online_add(st, sh(v[j]) + g[j], it);
    });
    st = grp.reduce(st, SoftOp<A>{it});
    return {st.a, A(1) / st.s};
  }
}

// Soft sample y of quad (i, q) after soft_stats. Padding columns hold garbage: never store them.
template <class C, typename T, typename A>
__device__ __forceinline__ void soft_quad(const SoftStats<A>& st, const A (&c)[C::kSlots][4],
                                          int i, const T* x, int64_t q, int64_t n, bool vx,
                                          uint64_t seed, int64_t row, const Shift<A>& sh, A it,
                                          A (&y)[4]) {
  if constexpr (C::kItems > 0) {
#pragma unroll
    for (int j = 0; j < 4; ++j) y[j] = c[i][j] * st.rsum;
  } else {
    A v[4], g[4];
    dev::load_quad(x, q, n, vx, neg_inf<A>(), v);
    gumbel_quad(seed, row, q, g);
#pragma unroll
    for (int j = 0; j < 4; ++j) y[j] = dev::dexp((sh(v[j]) + g[j] - st.amax) * it) * st.rsum;
  }
}

template <typename T, class C>
__global__ void __launch_bounds__(C::kBlock)
    gumbel_fwd_kernel(const T* x,              // logits, (rows, n), row stride xs
                      int64_t xs,              //
                      T* y,                    // output, (rows, n), row stride ys
                      int64_t ys,              //
                      int64_t rows, int64_t n,  //
                      const int64_t* seed_ptr,  // device int64: the Philox key
                      acc_t<T> it,              // inv_tau = 1 / tau, finite, > 0
                      bool hard) {              // write one-hots of argmax a
  using A = acc_t<T>;
  __shared__ alignas(16) unsigned char scratch[Group<C::kThreads>::kScratchBytes];
  const Group<C::kThreads> grp{static_cast<int>(threadIdx.x % C::kThreads), scratch};
  const Quads<C> quads{grp.rank, (n + 3) / 4};
  const uint64_t seed = static_cast<uint64_t>(*seed_ptr);
  for_each_row<C>(rows, [&](int64_t row, bool live) {
    const T* xr = x + row * xs;
    T* yr = y + row * ys;
    const bool vx = dev::vec_ok(xr), vy = dev::vec_ok(yr);
    A c[C::kSlots][4];
    const A m = row_max<C>(grp, quads, xr, n, vx, c);
    const Shift<A> sh(m);
    if (hard) {
      // j = first argmax of a. The contract says a NaN row's outputs are NaN, so such a row is
      // written all-NaN rather than as a one-hot at an arbitrary index.
      ArgMax<A> best{neg_inf<A>(), n};
      quads([&](int i, int64_t q) {
        A v[4], g[4];
        x_quad<C>(c, i, xr, q, n, vx, v);
        gumbel_quad(seed, row, q, g);
#pragma unroll
        for (int j = 0; j < 4; ++j) {
          const A a = sh(v[j]) + g[j];
          if (4 * q + j < n && a > best.v) best = {a, 4 * q + j};
        }
      });
      best = grp.reduce(best, ArgMaxOp());
      if (!live) return;
      const bool nan_row = m != m;
      quads([&](int, int64_t q) {
        A o[4];
#pragma unroll
        for (int j = 0; j < 4; ++j)
          o[j] = nan_row ? dev::quiet_nan<A>() : (4 * q + j == best.i ? A(1) : A(0));
        dev::store_quad(yr, q, n, vy, o);
      });
      return;
    }
    const SoftStats<A> st = soft_stats<C>(grp, quads, xr, n, vx, seed, row, sh, it, c);
    if (!live) return;
    quads([&](int i, int64_t q) {
      A o[4];
      soft_quad<C>(st, c, i, xr, q, n, vx, seed, row, sh, it, o);
      dev::store_quad(yr, q, n, vy, o);
    });
  });
}

template <typename T, class C>
__global__ void __launch_bounds__(C::kBlock)
    gumbel_bwd_kernel(const T* dy, int64_t dys,    // upstream gradient, (rows, n)
                      const T* src, int64_t srcs,  // saved soft y, or the logits if recompute
                      T* dx, int64_t dxs,          // output gradient, (rows, n)
                      int64_t rows, int64_t n,     //
                      const int64_t* seed_ptr,     // device int64 seed (used if recompute)
                      acc_t<T> it,                 // inv_tau
                      bool recompute) {            // regenerate y from logits + seed
  using A = acc_t<T>;
  __shared__ alignas(16) unsigned char scratch[Group<C::kThreads>::kScratchBytes];
  const Group<C::kThreads> grp{static_cast<int>(threadIdx.x % C::kThreads), scratch};
  const Quads<C> quads{grp.rank, (n + 3) / 4};
  const uint64_t seed = static_cast<uint64_t>(*seed_ptr);
  for_each_row<C>(rows, [&](int64_t row, bool live) {
    const T* dyr = dy + row * dys;
    const T* sr = src + row * srcs;
    T* dxr = dx + row * dxs;
    const bool vdy = dev::vec_ok(dyr), vs = dev::vec_ok(sr), vdx = dev::vec_ok(dxr);
    A c[C::kSlots][4];  // y
    A d[C::kSlots][4];  // dy
    // Used only when recompute; otherwise y is read from src.
    Shift<A> sh(A(0));
    SoftStats<A> st{A(0), A(0)};
    if (recompute) {
      sh = Shift<A>(row_max<C>(grp, quads, sr, n, vs, c));
      st = soft_stats<C>(grp, quads, sr, n, vs, seed, row, sh, it, c);
    }
    auto y_quad = [&](int i, int64_t q, A (&yv)[4]) {
      if (recompute) {
        soft_quad<C>(st, c, i, sr, q, n, vs, seed, row, sh, it, yv);
      } else {
        dev::load_quad(sr, q, n, vs, A(0), yv);
      }
    };
    A dot = 0;  // sum_k dy[k] * y[k]
    quads([&](int i, int64_t q) {
      A yv[4], g[4];
      y_quad(i, q, yv);
      dev::load_quad(dyr, q, n, vdy, A(0), g);
#pragma unroll
      for (int j = 0; j < 4; ++j) {
        if (4 * q + j >= n) yv[j] = A(0);  // recomputed padding is garbage, not 0
        dot += g[j] * yv[j];
        if constexpr (C::kItems > 0) c[i][j] = yv[j], d[i][j] = g[j];
      }
    });
    dot = grp.reduce(dot, SumOp());
    if (!live) return;
    quads([&](int i, int64_t q) {
      A yv[4], g[4];
      if constexpr (C::kItems > 0) {
#pragma unroll
        for (int j = 0; j < 4; ++j) yv[j] = c[i][j], g[j] = d[i][j];
      } else {
        y_quad(i, q, yv);
        dev::load_quad(dyr, q, n, vdy, A(0), g);
      }
      A o[4];
#pragma unroll
      for (int j = 0; j < 4; ++j) o[j] = yv[j] * (g[j] - dot) * it;
      dev::store_quad(dxr, q, n, vdx, o);
    });
  });
}

template <typename A>
struct KeyOf {
  using type = uint32_t;
};
template <>
struct KeyOf<double> {
  using type = unsigned long long;
};

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
                  bool use_top_p) {
  using A = acc_t<T>;
  using K = typename KeyOf<A>::type;
  constexpr int kBits = 8 * sizeof(K);
  __shared__ alignas(16) unsigned char scratch[Group<C::kThreads>::kScratchBytes];
  const Group<C::kThreads> grp{static_cast<int>(threadIdx.x % C::kThreads), scratch};
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
      // is finite, marks exactly the +inf entries when m = +inf), and column 0 for an all -inf row,
      // which is what the never-replaced sentinel gives. So one pass over x, no preprocessing.
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
    A c[C::kSlots][4];  // x, then s
    A e[C::kSlots][4];  // exp(s) over K (top_p only)
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
    // K = {c : key(s[c]) >= kt}; kt = 0 keeps every column.
    K kt = 0;
    if (top_k > 0) {
      // t = largest key with count(key >= t) >= top_k, i.e. the key of the top_k-th largest s
      // (duplicates counted). count is monotone in t, so a bitwise search finds it exactly.
      for (int b = kBits - 1; b >= 0; --b) {
        const K cand = kt | (K(1) << b);
        long long cnt = 0;
        quads([&](int i, int64_t q) {
          A s[4];
          s_quad(i, q, s);
#pragma unroll
          for (int j = 0; j < 4; ++j) cnt += (4 * q + j < n && order_key(s[j]) >= cand) ? 1 : 0;
        });
        if (grp.reduce(cnt, SumOp()) >= top_k) kt = cand;
      }
    }
    if (use_top_p) {
      // p = exp(s - max s) / Z over K; max s over K is exactly 0 (the column holding m maps to
      // x' - m' = +0, and K always keeps it), so the weights are exp(s).
      A z = 0;
      quads([&](int i, int64_t q) {
        A s[4];
        s_quad(i, q, s);
#pragma unroll
        for (int j = 0; j < 4; ++j) {
          const A w = (4 * q + j < n && order_key(s[j]) >= kt) ? dev::dexp(s[j]) : A(0);
          if constexpr (C::kItems > 0) e[i][j] = w;
          z += w;
        }
      });
      z = grp.reduce(z, SumOp());
      // t = largest key whose mass(key >= t) / Z >= top_p: the value where the descending walk's
      // running sum first reaches top_p, all ties included. mass is a fixed-order sum of a
      // shrinking set of non-negative terms, so it is monotone in t even in floating point and
      // the bitwise search is exact. If even t = 0 (all of K) misses top_p, K stays unchanged.
      K kp = 0;
      for (int b = kBits - 1; b >= 0; --b) {
        const K cand = kp | (K(1) << b);
        A mass = 0;
        quads([&](int i, int64_t q) {
          A s[4];
          s_quad(i, q, s);
#pragma unroll
          for (int j = 0; j < 4; ++j) {
            const K k = order_key(s[j]);
            if (4 * q + j < n && k >= cand && k >= kt) {
              if constexpr (C::kItems > 0) {
                mass += e[i][j];
              } else {
                mass += dev::dexp(s[j]);
              }
            }
          }
        });
        if (grp.reduce(mass, SumOp()) / z >= top_p) kp = cand;
      }
      kt = kp > kt ? kp : kt;
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

// ---- host side ----------------------------------------------------------------------------

// Enough blocks to fill any GPU many times over; the grid-stride row loop does the rest (rows
// can exceed gridDim limits and the per-block loop costs nothing).
constexpr int64_t kMaxBlocks = 65535;

// Row length -> launch shape: the smallest group whose register cache holds the row, so short
// rows keep lanes busy; register caches cap at 32 values per thread (16 for double).
template <class C, class F>
bool try_cfg(int64_t n, F& f, int& rc) {
  if (n > C::kMaxN) return false;
  rc = f(C{});
  return true;
}

template <typename T, class F>
int with_cfg(int64_t n, F&& f) {
  int rc = 0;
  // First config whose kMaxN holds the row; the uncached block config takes the rest.
  bool done = try_cfg<Cfg<4, 1>>(n, f, rc) || try_cfg<Cfg<8, 1>>(n, f, rc) ||
              try_cfg<Cfg<16, 1>>(n, f, rc) || try_cfg<Cfg<32, 1>>(n, f, rc) ||
              try_cfg<Cfg<32, 2>>(n, f, rc) || try_cfg<Cfg<32, 4>>(n, f, rc) ||
              try_cfg<Cfg<32, 8>>(n, f, rc) || try_cfg<Cfg<512, 2>>(n, f, rc) ||
              try_cfg<Cfg<512, 4>>(n, f, rc);
  if constexpr (sizeof(T) < 8) {
    // 32 cached doubles per thread (plus dy in the backward) would spill under 512-thread bounds.
    if (!done) done = try_cfg<Cfg<512, 8>>(n, f, rc);
  }
  if (!done) try_cfg<Cfg<512, 0>>(n, f, rc);
  return rc;
}

template <class C>
unsigned grid_for(int64_t rows) {
  const int64_t blocks = (rows + C::kRowsPerBlock - 1) / C::kRowsPerBlock;
  return static_cast<unsigned>(blocks < kMaxBlocks ? blocks : kMaxBlocks);
}

}  // namespace

int gumbel_softmax_fwd(const void* x, int64_t x_row_stride, void* y, int64_t y_row_stride,
                       int64_t rows, int64_t n, int dtype, const int64_t* seed, double inv_tau,
                       bool hard, void* stream) {
  if (rows < 0 || n < 0) return static_cast<int>(cudaErrorInvalidValue);
  if (rows == 0 || n == 0) return static_cast<int>(cudaSuccess);
  if (x == nullptr || y == nullptr || seed == nullptr) return static_cast<int>(cudaErrorInvalidValue);
  return with_dtype(dtype, [&](auto tag) {
    using T = typename decltype(tag)::type;
    return with_cfg<T>(n, [&](auto cfg) {
      using C = decltype(cfg);
      gumbel_fwd_kernel<T, C><<<grid_for<C>(rows), C::kBlock, 0, static_cast<cudaStream_t>(stream)>>>(
          static_cast<const T*>(x), x_row_stride, static_cast<T*>(y), y_row_stride, rows, n, seed,
          to_param<acc_t<T>>(inv_tau), hard);
      return static_cast<int>(cudaGetLastError());
    });
  });
}

int gumbel_softmax_bwd(const void* dy, int64_t dy_row_stride, const void* src,
                       int64_t src_row_stride, void* dx, int64_t dx_row_stride, int64_t rows,
                       int64_t n, int dtype, const int64_t* seed, double inv_tau, bool recompute,
                       void* stream) {
  if (rows < 0 || n < 0) return static_cast<int>(cudaErrorInvalidValue);
  if (rows == 0 || n == 0) return static_cast<int>(cudaSuccess);
  if (dy == nullptr || src == nullptr || dx == nullptr || seed == nullptr)
    return static_cast<int>(cudaErrorInvalidValue);
  return with_dtype(dtype, [&](auto tag) {
    using T = typename decltype(tag)::type;
    return with_cfg<T>(n, [&](auto cfg) {
      using C = decltype(cfg);
      gumbel_bwd_kernel<T, C><<<grid_for<C>(rows), C::kBlock, 0, static_cast<cudaStream_t>(stream)>>>(
          static_cast<const T*>(dy), dy_row_stride, static_cast<const T*>(src), src_row_stride,
          static_cast<T*>(dx), dx_row_stride, rows, n, seed, to_param<acc_t<T>>(inv_tau),
          recompute);
      return static_cast<int>(cudaGetLastError());
    });
  });
}

int sample_categorical(const void* x, int64_t x_row_stride, int64_t* out, int64_t rows,
                       int64_t n, int dtype, const int64_t* seed, double inv_temperature,
                       int64_t top_k, double top_p, void* stream) {
  if (rows < 0 || n < 0 || (rows > 0 && n == 0)) return static_cast<int>(cudaErrorInvalidValue);
  if (rows == 0) return static_cast<int>(cudaSuccess);
  if (x == nullptr || out == nullptr || seed == nullptr) return static_cast<int>(cudaErrorInvalidValue);
  const bool greedy = std::isinf(inv_temperature) && inv_temperature > 0;
  const int64_t k = (top_k > 0 && top_k < n) ? top_k : 0;
  const bool use_top_p = top_p < 1.0;
  return with_dtype(dtype, [&](auto tag) {
    using T = typename decltype(tag)::type;
    using A = acc_t<T>;
    return with_cfg<T>(n, [&](auto cfg) {
      using C = decltype(cfg);
      sample_kernel<T, C><<<grid_for<C>(rows), C::kBlock, 0, static_cast<cudaStream_t>(stream)>>>(
          static_cast<const T*>(x), x_row_stride, out, rows, n, seed,
          greedy ? A(1) : to_param<A>(inv_temperature), greedy, k,
          use_top_p ? static_cast<A>(top_p) : A(1), use_top_p);
      return static_cast<int>(cudaGetLastError());
    });
  });
}

const char* error_string(int code) { return cudaGetErrorString(static_cast<cudaError_t>(code)); }

}  // namespace genfast::cuda
