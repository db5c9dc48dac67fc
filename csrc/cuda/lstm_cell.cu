// The GEMM path's fused LSTM cells (contract: csrc/cuda/lstm.h, genfast/ops/lstm.py): per step,
// after cuBLAS formed G = gx[t] + h w_hh^T, one launch does the activations, the c update and ht
// (forward), or dG and the dc update (backward). One thread per quad of 4 consecutive units of
// one sequence: its 4 gate quads, c, ht move as 16-byte (8-byte for 16-bit types) accesses when
// every pointer is aligned and H % 4 == 0, elementwise otherwise. Math in the work dtype.
#include <cuda_runtime.h>

#include <cstdint>

#include "cuda/causal_conv.cuh"
#include "cuda/common.cuh"
#include "cuda/lstm.h"

namespace genfast::cuda {
namespace {

using cc::dtanh;
using cc::sigmoid;
using dev::acc_t;
using dev::load_quad;
using dev::store_quad;

constexpr int kThreads = 256;
constexpr int kInvalid = static_cast<int>(cudaErrorInvalidValue);

__device__ __forceinline__ bool inactive(const int64_t* lengths, int64_t b, int64_t t) {
  return lengths != nullptr && t >= lengths[b];
}

template <typename Ty>
__global__ void __launch_bounds__(kThreads)
    cell_fwd_kernel(const Ty* __restrict__ G, acc_t<Ty>* __restrict__ c_state,
                    acc_t<Ty>* __restrict__ gates_t, acc_t<Ty>* __restrict__ c_t,
                    Ty* __restrict__ ht, const int64_t* __restrict__ lengths, int64_t t,
                    int64_t H, int64_t nq, int64_t total, bool vec) {
  using A = acc_t<Ty>;
  const int64_t step = static_cast<int64_t>(gridDim.x) * kThreads;
  for (int64_t e = static_cast<int64_t>(blockIdx.x) * kThreads + threadIdx.x; e < total;
       e += step) {
    const int64_t b = e / nq, q = e - b * nq;
    Ty* hr = ht + b * H;
    if (inactive(lengths, b, t)) {
      const A z[4] = {A(0), A(0), A(0), A(0)};
      store_quad(hr, q, H, vec, z);
      continue;
    }
    const Ty* g = G + b * 4 * H;
    A gi[4], gf[4], gg[4], go[4], c[4], h[4];
    load_quad(g, q, H, vec, A(0), gi);
    load_quad(g + H, q, H, vec, A(0), gf);
    load_quad(g + 2 * H, q, H, vec, A(0), gg);
    load_quad(g + 3 * H, q, H, vec, A(0), go);
    A* cr = c_state + b * H;
    load_quad(cr, q, H, vec, A(0), c);
#pragma unroll
    for (int k = 0; k < 4; ++k) {
      gi[k] = sigmoid(gi[k]), gf[k] = sigmoid(gf[k]), gg[k] = dtanh(gg[k]);
      go[k] = sigmoid(go[k]);
      c[k] = gf[k] * c[k] + gi[k] * gg[k];
      h[k] = go[k] * dtanh(c[k]);
    }
    store_quad(cr, q, H, vec, c);
    store_quad(hr, q, H, vec, h);
    if (gates_t != nullptr) {
      A* gr = gates_t + b * 4 * H;
      store_quad(gr, q, H, vec, gi);
      store_quad(gr + H, q, H, vec, gf);
      store_quad(gr + 2 * H, q, H, vec, gg);
      store_quad(gr + 3 * H, q, H, vec, go);
    }
    if (c_t != nullptr) store_quad(c_t + b * H, q, H, vec, c);
  }
}

template <typename Ty>
__global__ void __launch_bounds__(kThreads)
    cell_bwd_kernel(const Ty* __restrict__ dht, acc_t<Ty>* __restrict__ dc_state,
                    const acc_t<Ty>* __restrict__ gates_t, const acc_t<Ty>* __restrict__ c_t,
                    const acc_t<Ty>* __restrict__ c_prev, Ty* __restrict__ dG,
                    const int64_t* __restrict__ lengths, int64_t t, int64_t H, int64_t nq,
                    int64_t total, bool vec) {
  using A = acc_t<Ty>;
  const int64_t step = static_cast<int64_t>(gridDim.x) * kThreads;
  for (int64_t e = static_cast<int64_t>(blockIdx.x) * kThreads + threadIdx.x; e < total;
       e += step) {
    const int64_t b = e / nq, q = e - b * nq;
    Ty* d = dG + b * 4 * H;
    if (inactive(lengths, b, t)) {
      const A z[4] = {A(0), A(0), A(0), A(0)};
      for (int k = 0; k < 4; ++k) store_quad(d + k * H, q, H, vec, z);
      continue;
    }
    const A* g = gates_t + b * 4 * H;
    A i[4], f[4], gg[4], o[4], c[4], cp[4], dh[4], dc[4];
    load_quad(g, q, H, vec, A(0), i);
    load_quad(g + H, q, H, vec, A(0), f);
    load_quad(g + 2 * H, q, H, vec, A(0), gg);
    load_quad(g + 3 * H, q, H, vec, A(0), o);
    load_quad(c_t + b * H, q, H, vec, A(0), c);
    if (c_prev != nullptr) {
      load_quad(c_prev + b * H, q, H, vec, A(0), cp);
    } else {
#pragma unroll
      for (int k = 0; k < 4; ++k) cp[k] = A(0);
    }
    load_quad(dht + b * H, q, H, vec, A(0), dh);
    A* dcr = dc_state + b * H;
    load_quad(dcr, q, H, vec, A(0), dc);
    A di[4], df[4], dg[4], dout[4];
#pragma unroll
    for (int k = 0; k < 4; ++k) {
      const A tc = dtanh(c[k]);
      const A x = dc[k] + dh[k] * o[k] * (A(1) - tc * tc);
      di[k] = x * gg[k] * i[k] * (A(1) - i[k]);
      df[k] = x * cp[k] * f[k] * (A(1) - f[k]);
      dg[k] = x * i[k] * (A(1) - gg[k] * gg[k]);
      dout[k] = dh[k] * tc * o[k] * (A(1) - o[k]);
      dc[k] = x * f[k];
    }
    store_quad(d, q, H, vec, di);
    store_quad(d + H, q, H, vec, df);
    store_quad(d + 2 * H, q, H, vec, dg);
    store_quad(d + 3 * H, q, H, vec, dout);
    store_quad(dcr, q, H, vec, dc);
  }
}

// Vector accesses need every row start aligned: base pointers aligned and rows of H % 4 == 0
// elements (4H-element rows then too). A null pointer is never dereferenced, so it counts as
// aligned.
template <typename T>
bool aligned(const void* p) {
  return p == nullptr || (reinterpret_cast<uintptr_t>(p) % (sizeof(T) == 2 ? 8 : 16)) == 0;
}

unsigned blocks_for(int64_t total) {
  const int64_t n = (total + kThreads - 1) / kThreads;
  return static_cast<unsigned>(n < 1 ? 1 : n < kMaxBlocks ? n : kMaxBlocks);
}

}  // namespace

int lstm_cell_fwd(const void* G, void* c_state, void* gates_t, void* c_t, void* ht,
                  const int64_t* lengths, int64_t t, int64_t B, int64_t H, int dtype,
                  void* stream) {
  if (B < 0 || H < 0 || t < 0) return kInvalid;
  if (B == 0 || H == 0) return static_cast<int>(cudaSuccess);
  if (G == nullptr || c_state == nullptr || ht == nullptr) return kInvalid;
  const auto st = static_cast<cudaStream_t>(stream);
  return with_dtype(dtype, [&](auto tag) {
    using Ty = typename decltype(tag)::type;
    using A = acc_t<Ty>;
    const int64_t nq = (H + 3) / 4, total = B * nq;
    const bool vec = H % 4 == 0 && aligned<Ty>(G) && aligned<Ty>(ht) && aligned<A>(c_state) &&
                     aligned<A>(gates_t) && aligned<A>(c_t);
    cell_fwd_kernel<Ty><<<blocks_for(total), kThreads, 0, st>>>(
        static_cast<const Ty*>(G), static_cast<A*>(c_state), static_cast<A*>(gates_t),
        static_cast<A*>(c_t), static_cast<Ty*>(ht), lengths, t, H, nq, total, vec);
    return static_cast<int>(cudaGetLastError());
  });
}

int lstm_cell_bwd(const void* dht, void* dc_state, const void* gates_t, const void* c_t,
                  const void* c_prev, void* dG, const int64_t* lengths, int64_t t, int64_t B,
                  int64_t H, int dtype, void* stream) {
  if (B < 0 || H < 0 || t < 0) return kInvalid;
  if (B == 0 || H == 0) return static_cast<int>(cudaSuccess);
  if (dht == nullptr || dc_state == nullptr || gates_t == nullptr || c_t == nullptr ||
      dG == nullptr)
    return kInvalid;
  const auto st = static_cast<cudaStream_t>(stream);
  return with_dtype(dtype, [&](auto tag) {
    using Ty = typename decltype(tag)::type;
    using A = acc_t<Ty>;
    const int64_t nq = (H + 3) / 4, total = B * nq;
    const bool vec = H % 4 == 0 && aligned<Ty>(dht) && aligned<Ty>(dG) &&
                     aligned<A>(dc_state) && aligned<A>(gates_t) && aligned<A>(c_t) &&
                     aligned<A>(c_prev);
    cell_bwd_kernel<Ty><<<blocks_for(total), kThreads, 0, st>>>(
        static_cast<const Ty*>(dht), static_cast<A*>(dc_state), static_cast<const A*>(gates_t),
        static_cast<const A*>(c_t), static_cast<const A*>(c_prev), static_cast<Ty*>(dG),
        lengths, t, H, nq, total, vec);
    return static_cast<int>(cudaGetLastError());
  });
}

}  // namespace genfast::cuda
