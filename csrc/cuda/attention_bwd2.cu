// CUDA double backward of fused attention: the row-statistics sweep, then the query-side (Gq,
// Gdout) and key-side (Gk, Gv) gradient kernels. Device code: attention_bwd2_dev.cuh; contract:
// csrc/cuda/attention.h.
#include <cuda_runtime.h>

#include <cstdint>

#include "cuda/attention.h"
#include "cuda/attention_bwd2_dev.cuh"
#include "cuda/attention_plan.cuh"

namespace genfast::cuda {
namespace {

using namespace attn_dev;

template <typename T>
__global__ void __launch_bounds__(kThreads) stats_kernel(Args a) { stats_body<T>(a); }
template <typename T>
__global__ void __launch_bounds__(kThreads) gradq_kernel(Args a) { gradq_body<T>(a); }
template <typename T>
__global__ void __launch_bounds__(kThreads) gradk_kernel(Args a) { gradk_body<T>(a); }

}  // namespace

int attention_bwd2(const void* q, const void* k, const void* v, const void* o, const void* lse,
                   const void* dout, const void* gq, const void* gk, const void* gv, void* Gq,
                   void* Gk, void* Gv, void* Gdout, int64_t B, int64_t Hh, int64_t N, int64_t M,
                   int64_t Dk, int64_t Dv, bool causal, double scale, int dtype, void* stream) {
  if (const int rc = check_call(B, Hh, N, M, M, Dk, Dv, 0, 0, causal)) return rc;
  if (B * Hh == 0 || (N == 0 && M == 0)) return 0;
  const auto st = static_cast<cudaStream_t>(stream);
  return with_dtype(dtype, [&](auto tag) -> int {
    using T = typename decltype(tag)::type;
    using A = acc_t<T>;
    Bwd2Plan p = plan_bwd2(B, Hh, N, M, Dk, Dv, causal, scale, sizeof(A));
    Args& a = p.a;
    a.q = q, a.k = k, a.v = v, a.o = o, a.dout = dout, a.gq = gq, a.gk = gk, a.gv = gv;
    a.lse = const_cast<void*>(lse);  // read only here
    a.Gq = Gq, a.Gk = Gk, a.Gv = Gv, a.Gdo = Gdout;
    const int64_t rows = a.BH * N;
    void* ws = nullptr;
    if (rows > 0) {
      const cudaError_t rc = cudaMallocAsync(&ws, 3 * rows * sizeof(A), st);
      if (rc != cudaSuccess) return static_cast<int>(rc);
      a.ws_D = ws, a.ws_r = static_cast<A*>(ws) + rows, a.ws_w = static_cast<A*>(ws) + 2 * rows;
    }
    cudaError_t launch = cudaSuccess;
    if (p.s_items > 0) {
      stats_kernel<T><<<grid_of(p.s_items), kThreads, p.ts.bytes, st>>>(with_tiles(a, p.ts));
      launch = cudaGetLastError();
    }
    if (launch == cudaSuccess && p.q_items > 0) {
      gradq_kernel<T><<<grid_of(p.q_items), kThreads, p.tq.bytes, st>>>(with_tiles(a, p.tq));
      launch = cudaGetLastError();
    }
    if (launch == cudaSuccess && p.k_items > 0) {
      gradk_kernel<T><<<grid_of(p.k_items), kThreads, p.tk.bytes, st>>>(with_tiles(a, p.tk));
      launch = cudaGetLastError();
    }
    const cudaError_t freed = ws != nullptr ? cudaFreeAsync(ws, st) : cudaSuccess;
    return static_cast<int>(launch != cudaSuccess ? launch : freed);
  });
}

}  // namespace genfast::cuda
