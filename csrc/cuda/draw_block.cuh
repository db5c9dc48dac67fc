// The `sample` family's draw of one row by a whole CTA, for the generators that sample inside a
// persistent loop (csrc/cuda/masked_conv_generate.cu; the same code as the draw of
// csrc/cuda/causal_conv_generate.cu). Contract: genfast/ops/sample.py; arithmetic as in
// csrc/cuda/sample.cu: s = (x' - m') * inv_temperature, the top_k threshold, the top_p threshold
// on integer masses trunc(exp(s) * 2^S), then the first argmax of s + g over the kept set, g from
// the Philox row given. Thresholds by a bitwise search over the order-preserving key of s (one
// block reduction per bit): the sample kernel's largest-key answer, at a cost that does not
// matter next to a network's GEMVs. Include from .cu files only.
#pragma once
#include <cuda_runtime.h>

#include <cmath>
#include <cstdint>

#include "cuda/common.cuh"
#include "cuda/gumbel_row.cuh"

namespace genfast::cuda::draw_block {

using dev::ArgMax;
using dev::ArgMaxOp;
using dev::Group;
using dev::NanMaxOp;
using dev::neg_inf;
using dev::order_key;
using dev::SumOp;

// The draw's parameters (ops/sample.py's contract; 0 / false where a filter is off).
template <typename A>
struct Draw {
  uint64_t seed;  // set by the kernel from the device-side seed
  A inv_temp;
  bool greedy;
  int64_t top_k;  // 0 = off, else 1 <= top_k < n
  A top_p;
  bool use_top_p;
  A scale;  // 2^S of the fixed-point masses
};

// Largest key t (bitwise, most significant bit first) with sum of weight(c) over
// {c : key(s[c]) >= t} >= target. Block-uniform: every reduction result is the same everywhere.
template <int kThreads, typename A, class W>
__device__ auto key_search(const Group<kThreads>& grp, const A* s, int64_t n, long long target,
                           W&& weight) {
  using K = decltype(order_key(A(0)));
  constexpr int kBits = 8 * static_cast<int>(sizeof(K));
  K t = 0;
  for (int bit = kBits - 1; bit >= 0; --bit) {
    const K cand = t | (K(1) << bit);
    long long mass = 0;
    for (int64_t c = threadIdx.x; c < n; c += kThreads)
      if (order_key(s[c]) >= cand) mass += weight(c);
    if (grp.reduce(mass, SumOp()) >= target) t = cand;
  }
  return t;
}

// The index drawn from the logits x[0, n) (shared memory, overwritten with s). Call from
// block-uniform control flow; the result is the same in every thread.
template <int kThreads, typename A>
__device__ int64_t draw(const Group<kThreads>& grp, A* x, int64_t n, const Draw<A>& dr,
                        uint64_t row) {
  A m = neg_inf<A>();
  for (int64_t c = threadIdx.x; c < n; c += kThreads) m = NanMaxOp()(m, x[c]);
  m = grp.reduce(m, NanMaxOp());
  if (m != m) return 0;  // a NaN row: any index in range is allowed
  if (dr.greedy) {
    ArgMax<A> best{neg_inf<A>(), n};
    for (int64_t c = threadIdx.x; c < n; c += kThreads)
      if (x[c] > best.v) best = {x[c], c};
    best = grp.reduce(best, ArgMaxOp());
    return best.i < n ? best.i : 0;
  }
  const gumbel_rows::Shift<A> sh(m == A(0) ? A(0) : m);
  __syncthreads();  // every thread has read x before it becomes s
  for (int64_t c = threadIdx.x; c < n; c += kThreads) {
    const A v = sh(x[c]) * dr.inv_temp;
    x[c] = v == A(0) ? A(0) : v;  // -0 -> +0: keys must treat them as equal
  }
  __syncthreads();
  using K = decltype(order_key(A(0)));
  K kt = 0;
  if (dr.top_k > 0) kt = key_search(grp, x, n, dr.top_k, [](int64_t) { return 1LL; });
  if (dr.use_top_p) {
    const K k0 = kt;
    auto mass = [&](int64_t c) -> long long {
      return order_key(x[c]) >= k0 ? static_cast<long long>(dev::dexp(x[c]) * dr.scale) : 0;
    };
    long long z = 0;
    for (int64_t c = threadIdx.x; c < n; c += kThreads) z += mass(c);
    z = grp.reduce(z, SumOp());
    const double want = static_cast<double>(dr.top_p) * static_cast<double>(z);
    long long target = static_cast<long long>(want);
    if (static_cast<double>(target) < want) ++target;
    if (z >= target) {
      const K kp = key_search(grp, x, n, target, mass);
      kt = kp > kt ? kp : kt;
    }
  }
  ArgMax<A> best{neg_inf<A>(), n};
  for (int64_t q = threadIdx.x; q < (n + 3) / 4; q += kThreads) {
    A g[4];
    gumbel_rows::gumbel_quad(dr.seed, static_cast<int64_t>(row), q, g);
#pragma unroll
    for (int j = 0; j < 4; ++j) {
      const int64_t c = 4 * q + j;
      if (c < n && order_key(x[c]) >= kt && x[c] + g[j] > best.v) best = {x[c] + g[j], c};
    }
  }
  best = grp.reduce(best, ArgMaxOp());
  return best.i < n ? best.i : 0;
}

// The Draw of a launcher's host-side parameters for rows of n columns (inv_temperature = +inf
// is greedy; top_k outside (0, n) and top_p >= 1 are off).
template <typename A>
Draw<A> make_draw(double inv_temperature, int64_t top_k, double top_p, int64_t n) {
  const bool greedy = std::isinf(inv_temperature) && inv_temperature > 0;
  int ceil_log2 = 0;  // 2^S with n * 2^S <= 2^62, as the sample kernel
  while ((int64_t{1} << ceil_log2) < n) ++ceil_log2;
  return Draw<A>{0,
                 greedy ? A(1) : to_param<A>(inv_temperature),
                 greedy,
                 (!greedy && top_k > 0 && top_k < n) ? top_k : 0,
                 static_cast<A>(top_p < 1.0 ? top_p : 1.0),
                 !greedy && top_p < 1.0,
                 static_cast<A>(std::ldexp(1.0, 62 - ceil_log2))};
}

}  // namespace genfast::cuda::draw_block
