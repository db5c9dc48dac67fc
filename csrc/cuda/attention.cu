// CUDA forward (with the key-split decode path) and first backward of fused attention. Device
// code: attention_fwd_dev.cuh, attention_bwd_dev.cuh; host checks and sizing: attention_plan.cuh;
// contract: csrc/cuda/attention.h.
#include <cuda_runtime.h>

#include <cstdint>

#include "cuda/attention.h"
#include "cuda/attention_bwd_dev.cuh"
#include "cuda/attention_fwd_dev.cuh"
#include "cuda/attention_plan.cuh"

namespace genfast::cuda {
namespace {

using namespace attn_dev;

template <typename T>
__global__ void __launch_bounds__(kThreads) fwd_kernel(Args a) { fwd_body<T>(a); }
template <typename T>
__global__ void __launch_bounds__(kThreads) combine_kernel(Args a) { combine_body<T>(a); }
template <typename T>
__global__ void __launch_bounds__(kThreads) rowdot_kernel(Args a) { rowdot_body<T>(a); }
template <typename T>
__global__ void __launch_bounds__(kThreads) dkdv_kernel(Args a) { dkdv_body<T>(a); }
template <typename T>
__global__ void __launch_bounds__(kThreads) dq_kernel(Args a) { dq_body<T>(a); }

// Frees a stream-ordered workspace after the launches that use it; the first error wins.
int finish(void* ws, cudaStream_t st, cudaError_t launch) {
  const cudaError_t freed = ws != nullptr ? cudaFreeAsync(ws, st) : cudaSuccess;
  return static_cast<int>(launch != cudaSuccess ? launch : freed);
}

}  // namespace

int attention_fwd(const void* q, const void* k, const void* v, void* o, void* lse, int64_t B,
                  int64_t Hh, int64_t N, int64_t M, int64_t Sk, int64_t Dk, int64_t Dv,
                  int64_t sq_b, int64_t sq_h, int64_t sq_n, int64_t sk_b, int64_t sk_h,
                  int64_t sk_n, int64_t sv_b, int64_t sv_h, int64_t sv_n, int64_t pool_h,
                  int64_t pool_w, bool causal, double scale, int dtype, void* stream) {
  if (const int rc = check_call(B, Hh, N, M, Sk, Dk, Dv, pool_h, pool_w, causal)) return rc;
  if (B * Hh * N == 0) return 0;
  const auto st = static_cast<cudaStream_t>(stream);
  return with_dtype(dtype, [&](auto tag) -> int {
    using T = typename decltype(tag)::type;
    using A = acc_t<T>;
    FwdPlan p = plan_fwd(B, Hh, N, M, Sk, Dk, Dv, pool_h, pool_w, causal, scale, sizeof(A));
    Args& a = p.a;
    a.q = q, a.k = k, a.v = v, a.out = o, a.lse = lse;
    a.sq_b = sq_b, a.sq_h = sq_h, a.sq_n = sq_n, a.sk_b = sk_b, a.sk_h = sk_h, a.sk_n = sk_n;
    a.sv_b = sv_b, a.sv_h = sv_h, a.sv_n = sv_n;
    void* ws = nullptr;
    if (p.ws_rows > 0) {
      const cudaError_t rc = cudaMallocAsync(&ws, p.ws_rows * (2 + Dv) * sizeof(A), st);
      if (rc != cudaSuccess) return static_cast<int>(rc);
      a.ws_m = ws, a.ws_l = static_cast<A*>(ws) + p.ws_rows;
      a.ws_acc = static_cast<A*>(ws) + 2 * p.ws_rows;
    }
    fwd_kernel<T><<<grid_of(p.items), kThreads, p.t.bytes, st>>>(a);
    cudaError_t launch = cudaGetLastError();
    if (launch == cudaSuccess && p.ws_rows > 0) {
      combine_kernel<T><<<grid_of_elems(a.BH * N * Dv), kThreads, 0, st>>>(a);
      launch = cudaGetLastError();
    }
    return finish(ws, st, launch);
  });
}

int attention_bwd(const void* q, const void* k, const void* v, const void* o, const void* lse,
                  const void* dout, void* dq, void* dk, void* dv, int64_t B, int64_t Hh,
                  int64_t N, int64_t M, int64_t Sk, int64_t Dk, int64_t Dv, int64_t pool_h,
                  int64_t pool_w, bool causal, double scale, int dtype, void* stream) {
  if (const int rc = check_call(B, Hh, N, M, Sk, Dk, Dv, pool_h, pool_w, causal)) return rc;
  if (B * Hh == 0 || (N == 0 && Sk == 0)) return 0;
  const auto st = static_cast<cudaStream_t>(stream);
  return with_dtype(dtype, [&](auto tag) -> int {
    using T = typename decltype(tag)::type;
    using A = acc_t<T>;
    BwdPlan p = plan_bwd(B, Hh, N, M, Sk, Dk, Dv, pool_h, pool_w, causal, scale, sizeof(A));
    Args& a = p.a;
    a.q = q, a.k = k, a.v = v, a.o = o, a.dout = dout;
    a.lse = const_cast<void*>(lse);  // read only here
    a.dq = dq, a.dk = dk, a.dv = dv;
    void* ws = nullptr;
    if (N > 0) {
      const cudaError_t rc = cudaMallocAsync(&ws, a.BH * N * sizeof(A), st);
      if (rc != cudaSuccess) return static_cast<int>(rc);
    }
    a.ws_D = ws;
    cudaError_t launch = cudaSuccess;
    if (N > 0) {
      rowdot_kernel<T><<<grid_of_elems(a.BH * N), kThreads, 0, st>>>(a);
      launch = cudaGetLastError();
    }
    if (launch == cudaSuccess && p.kv_items > 0) {
      dkdv_kernel<T><<<grid_of(p.kv_items), kThreads, p.tkv.bytes, st>>>(with_tiles(a, p.tkv));
      launch = cudaGetLastError();
    }
    if (launch == cudaSuccess && p.q_items > 0) {
      dq_kernel<T><<<grid_of(p.q_items), kThreads, p.tq.bytes, st>>>(with_tiles(a, p.tq));
      launch = cudaGetLastError();
    }
    return finish(ws, st, launch);
  });
}

}  // namespace genfast::cuda
