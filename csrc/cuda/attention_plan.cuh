// Host side of the attention launchers, shared with the emulation harness
// (tests/cuda_emu/attention_emu.cpp) so both size and index a call the same way: argument
// checks, the contiguous-stride Args of a call, and grid sizes.
#pragma once
#include <cuda_runtime.h>

#include <cstdint>
#include <initializer_list>

#include "cuda/attention_bwd_dev.cuh"

namespace genfast::cuda::attn_dev {

constexpr int kInvalid = static_cast<int>(cudaErrorInvalidValue);
constexpr int64_t kMaxHeadDim = 256;

inline bool product_fits(std::initializer_list<int64_t> dims) {
  int64_t n = 1;
  for (int64_t d : dims)
    if (__builtin_mul_overflow(n, d, &n)) return false;
  return true;
}

// 0 when the sizes are a valid call (csrc/cuda/attention.h), else cudaErrorInvalidValue.
inline int check_call(int64_t B, int64_t Hh, int64_t N, int64_t M, int64_t Sk, int64_t Dk,
                      int64_t Dv, int64_t pool_h, int64_t pool_w, bool causal) {
  if (B < 0 || Hh < 0 || N < 0 || M < 0 || Sk < 0) return kInvalid;
  if (Dk < 1 || Dk > kMaxHeadDim || Dv < 1 || Dv > kMaxHeadDim) return kInvalid;
  if (pool_h < 0 || pool_w < 0 || (pool_h > 0) != (pool_w > 0)) return kInvalid;
  if (pool_h > 0) {
    if (causal || Sk != pool_h * pool_w || M != (pool_h / 2) * (pool_w / 2)) return kInvalid;
  } else if (M != Sk) {
    return kInvalid;
  }
  const bool fits = product_fits({B, Hh, N, Dk}) && product_fits({B, Hh, N, Dv}) &&
                    product_fits({B, Hh, Sk, Dk}) && product_fits({B, Hh, Sk, Dv}) &&
                    product_fits({B, Hh, N, 3});
  return fits ? 0 : kInvalid;
}

// Args of a call with contiguous q / k / v; the forward overwrites the strides with the views'.
inline Args base_args(int64_t B, int64_t Hh, int64_t N, int64_t M, int64_t Sk, int64_t Dk,
                      int64_t Dv, int64_t pool_h, int64_t pool_w, bool causal, double scale) {
  Args a{};
  a.Hh = Hh, a.BH = B * Hh, a.N = N, a.M = M, a.Sk = Sk, a.Dk = Dk, a.Dv = Dv;
  a.sq_b = Hh * N * Dk, a.sq_h = N * Dk, a.sq_n = Dk;
  a.sk_b = Hh * Sk * Dk, a.sk_h = Sk * Dk, a.sk_n = Dk;
  a.sv_b = Hh * Sk * Dv, a.sv_h = Sk * Dv, a.sv_n = Dv;
  a.pool_h = pool_h, a.pool_w = pool_w, a.causal = causal;
  a.scale_f = to_param<float>(scale), a.scale_d = scale;
  a.nsplit = 1, a.chunk = M > 0 ? M : 1;
  return a;
}

inline Args with_tiles(Args a, const Tiles& t) {
  a.bq = t.bq, a.bk = t.bk;
  return a;
}

// CTAs of a launch over `work` items (each kernel loops grid-stride over its items).
inline unsigned grid_of(int64_t work) {
  return static_cast<unsigned>(work < 1 ? 1 : work < kMaxBlocks ? work : kMaxBlocks);
}
inline unsigned grid_of_elems(int64_t elems) { return grid_of((elems + kThreads - 1) / kThreads); }

// The launches of a call: tiles, Args and work items of each kernel. The launchers and the
// emulation harness both build them here, so they cannot disagree.
struct FwdPlan {
  Args a;
  Tiles t;
  int64_t items;    // fwd_body work items
  int64_t ws_rows;  // partial (m, l) rows of the key split: 0 when not split
};
inline FwdPlan plan_fwd(int64_t B, int64_t Hh, int64_t N, int64_t M, int64_t Sk, int64_t Dk,
                        int64_t Dv, int64_t pool_h, int64_t pool_w, bool causal, double scale,
                        int64_t ea) {
  FwdPlan p;
  p.t = plan_tiles(kFwd, Dk, Dv, ea, N);
  p.a = with_tiles(base_args(B, Hh, N, M, Sk, Dk, Dv, pool_h, pool_w, causal, scale), p.t);
  const Split sp = plan_split(p.a.BH, N, M, p.t.bq, p.t.bk);
  p.a.nsplit = sp.nsplit, p.a.chunk = sp.chunk;
  p.items = p.a.BH * ((N + p.t.bq - 1) / p.t.bq) * sp.nsplit;
  p.ws_rows = sp.nsplit > 1 ? p.a.BH * N * sp.nsplit : 0;
  return p;
}

struct BwdPlan {
  Args a;          // tiles unset: with_tiles(a, tkv) / with_tiles(a, tq) per kernel
  Tiles tkv, tq;   // dkdv_body, dq_body
  int64_t kv_items, q_items;
};
inline BwdPlan plan_bwd(int64_t B, int64_t Hh, int64_t N, int64_t M, int64_t Sk, int64_t Dk,
                        int64_t Dv, int64_t pool_h, int64_t pool_w, bool causal, double scale,
                        int64_t ea) {
  BwdPlan p;
  p.a = base_args(B, Hh, N, M, Sk, Dk, Dv, pool_h, pool_w, causal, scale);
  p.tkv = plan_tiles(kDkDv, Dk, Dv, ea), p.tq = plan_tiles(kDq, Dk, Dv, ea);
  p.kv_items = Sk > 0 ? p.a.BH * key_blocks(M, p.tkv.bk, pool_w > 0) : 0;
  p.q_items = p.a.BH * ((N + p.tq.bq - 1) / p.tq.bq);
  return p;
}

struct Bwd2Plan {
  Args a;
  Tiles ts, tq, tk;  // stats_body, gradq_body, gradk_body
  int64_t s_items, q_items, k_items;
};
inline Bwd2Plan plan_bwd2(int64_t B, int64_t Hh, int64_t N, int64_t M, int64_t Dk, int64_t Dv,
                          bool causal, double scale, int64_t ea) {
  Bwd2Plan p;
  p.a = base_args(B, Hh, N, M, M, Dk, Dv, 0, 0, causal, scale);
  p.ts = plan_tiles(kStats, Dk, Dv, ea), p.tq = plan_tiles(kGradQ, Dk, Dv, ea);
  p.tk = plan_tiles(kGradK, Dk, Dv, ea);
  p.s_items = p.a.BH * ((N + p.ts.bq - 1) / p.ts.bq);
  p.q_items = p.a.BH * ((N + p.tq.bq - 1) / p.tq.bq);
  p.k_items = p.a.BH * ((M + p.tk.bk - 1) / p.tk.bk);
  return p;
}

}  // namespace genfast::cuda::attn_dev
