// CUDA native sampling loop of a GPT: prefill, per-token decode with the KV cache, the refill
// rule with `keep`, the final LayerNorm and head, and the draw, for every step of B streams in
// one launch. The contract is the module docstring of genfast/ops/attention_generate.py;
// csrc/cpu/attention_generate.cpp is the CPU twin. Device code: attention_generate_dev.cuh.
//
// Why one cooperative grid and not a CTA per stream: a decode step is a chain of GEMVs over the
// whole model (12 C^2 L + V C weights: 3 MB of float32 for the 4 x 128 default, 340 MB for
// GPT-2 small), and one SM reads L2 at ~100 GB/s, so a CTA per stream would pay ~30 us a token
// on the default model and milliseconds on larger ones, with B < #SMs leaving most of the GPU
// idle. Here each GEMV's rows are split over up to one CTA per SM, so a step reads each weight
// once per group of up to 8 streams (large batches reuse it), whatever B. The price is grid
// barriers: 5 per layer (after q k v, attention, projection, MLP up, MLP down) plus 2 per token
// (head, draw): ~1-2 us each, so a batch-1 token costs about (5 L + 2) barriers; a CTA per stream
// would only win for tiny models at batch >= #SMs.
// Refills (the first context and every `keep` refill) run as batched passes over up to 64
// positions of every stream (the same 5 L barriers for the whole chunk), each weight row read
// once per group of up to 8 (stream, position) items; attention is causal within the pass.
//
// Limits: needs cooperative launch (cudaErrorNotSupported otherwise). Shared memory holds a
// group's staged vectors (8 x 4C down to 1 x 4C), one head's attention partials and, when it
// fits 48 KB, the logits row of a draw (else the draw works on a global row of its own); past
// the device's opt-in maximum (4C above ~56 K float32 elements on sm_90, half that in float64,
// or D above ~6 K) the launch fails with cudaErrorInvalidConfiguration. Weights are
// read from L2 every step (not cached in shared memory as lstm_generate does). Given tokens are
// clamped to [0, V), not checked (that needs a host synchronisation: the Python side checks).
// The workspace (the pass's x, q, attention output and MLP hidden, and the logits; B x 64 x 7C +
// 2 B x V work-dtype elements at most) is stream-ordered (cudaMallocAsync) and freed after the
// launch; `scratch` is not used. Every value's order of operations is fixed by the contract's
// sizes alone (not the grid, the group, the batch or the pass length), so a stream's tokens are
// the same on any GPU, at any batch size, batched refill or not.
#include <cuda_runtime.h>

#include <cmath>
#include <cstdint>

#include "cuda/attention_generate.h"
#include "cuda/attention_generate_dev.cuh"

namespace genfast::cuda {
namespace {

using agen::Args;
using agen::kThreads;
using agen::kVecOffset;
using agen::kWarps;
using dev::acc_t;

constexpr int64_t kMetaLen = 5;  // meta = [L, V, C, Hh, T]
constexpr int64_t kDefaultSmem = 48 * 1024;
constexpr int kMaxGroup = 8;      // items per pass over a CTA's rows
constexpr int64_t kMaxChunk = 64;  // positions per batched pass
constexpr int kInvalid = static_cast<int>(cudaErrorInvalidValue);

template <typename T, int kG>
__global__ void __launch_bounds__(kThreads) generate_kernel(const Args<T> a) {
  agen::generate_body<T, kG>(a);
}

template <typename T, int kG>
int launch(Args<T> a, int64_t grid, int64_t bytes, int optin, cudaStream_t st) {
  auto* kern = generate_kernel<T, kG>;
  cudaError_t rc = cudaSuccess;
  if (bytes > optin) return static_cast<int>(cudaErrorInvalidConfiguration);
  if (bytes > kDefaultSmem) {
    rc = cudaFuncSetAttribute(kern, cudaFuncAttributeMaxDynamicSharedMemorySize,
                              static_cast<int>(bytes));
    if (rc != cudaSuccess) return static_cast<int>(rc);
  }
  int per_sm = 0;
  rc = cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, kern, kThreads,
                                                     static_cast<size_t>(bytes));
  if (rc != cudaSuccess) return static_cast<int>(rc);
  // grid <= the SM count: one resident CTA per SM is all the cooperative launch needs.
  if (per_sm < 1) return static_cast<int>(cudaErrorCooperativeLaunchTooLarge);
  void* args[] = {&a};
  rc = cudaLaunchCooperativeKernel(reinterpret_cast<const void*>(kern),
                                   dim3(static_cast<unsigned>(grid)), dim3(kThreads), args,
                                   static_cast<size_t>(bytes), st);
  return static_cast<int>(rc);
}

}  // namespace

int attention_generate(const void* weights, const int64_t* meta, int64_t meta_len,
                       int64_t* tokens, void* kcache, void* vcache, void* scratch, int64_t B,
                       int64_t N, int64_t start, int64_t keep, const int64_t* seed,
                       double inv_temperature, int64_t top_k, double top_p, int dtype,
                       void* stream) {
  (void)scratch;
  // meta is a host table (the CPU twin reads the same tensor): the sizes become launch
  // arguments, so the kernel needs no device copy and the call no synchronisation.
  if (meta == nullptr || meta_len != kMetaLen || B < 0 || N < 0) return kInvalid;
  const int64_t L = meta[0], V = meta[1], C = meta[2], Hh = meta[3], T = meta[4];
  if (L < 1 || V < 1 || C < 1 || Hh < 1 || T < 1 || C % Hh != 0) return kInvalid;
  if (start < 1 || start > (N > 1 ? N : 1) || keep < 1 || keep > T) return kInvalid;
  if (!(inv_temperature > 0)) return kInvalid;
  if (B == 0 || start >= N) return static_cast<int>(cudaSuccess);  // nothing to draw
  if (weights == nullptr || tokens == nullptr || kcache == nullptr || vcache == nullptr ||
      seed == nullptr)
    return kInvalid;
  const auto st = static_cast<cudaStream_t>(stream);
  int device = 0, sms = 0, coop = 0, optin = 0;
  cudaError_t rc = cudaGetDevice(&device);
  if (rc == cudaSuccess) rc = cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device);
  if (rc == cudaSuccess) rc = cudaDeviceGetAttribute(&coop, cudaDevAttrCooperativeLaunch, device);
  if (rc == cudaSuccess)
    rc = cudaDeviceGetAttribute(&optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, device);
  if (rc != cudaSuccess) return static_cast<int>(rc);
  if (!coop) return static_cast<int>(cudaErrorNotSupported);
  const int64_t D = C / Hh;
  // Positions per batched pass: the longest pass (the first context or a refill), at most
  // kMaxChunk, fewer when B x chunk x 7C would pass 2^24 elements (the workspace stays < 128 MB).
  const int64_t first = start < T ? start : T;
  int64_t chunk = first > keep ? first : keep;
  chunk = chunk < kMaxChunk ? chunk : kMaxChunk;
  while (chunk > 1 && B * chunk * 7 * C > (int64_t{1} << 24)) chunk /= 2;
  // CTAs: one per SM at most, no more than the widest GEMV (4C or V rows, a warp a row) or the
  // attention's (stream, head) items can use: fewer CTAs make cheaper barriers.
  const auto cdiv = [](int64_t x, int64_t y) { return (x + y - 1) / y; };
  int64_t useful = cdiv(4 * C, kWarps);
  useful = cdiv(V, kWarps) > useful ? cdiv(V, kWarps) : useful;
  useful = B * Hh > useful ? B * Hh : useful;
  const int64_t grid = useful < sms ? useful : (sms > 0 ? sms : 1);
  return with_dtype(dtype, [&](auto tag) {
    using Ty = typename decltype(tag)::type;
    using A = acc_t<Ty>;
    const int64_t attn_len = D + kWarps * 32 + kWarps * D + 2 * kWarps;
    // A logits row past the default 48 KB is drawn in a global row of its own instead.
    const bool global_draw = kVecOffset + V * static_cast<int64_t>(sizeof(A)) > kDefaultSmem;
    const auto bytes_for = [&](int64_t g) {
      int64_t n = g * 4 * C;
      n = attn_len > n ? attn_len : n;
      n = !global_draw && V > n ? V : n;
      return kVecOffset + n * static_cast<int64_t>(sizeof(A));
    };
    // Items per group: up to kMaxGroup (no more than a pass has), halved until the staged
    // vectors fit the default 48 KB (one item at least: then the launch opts in to more).
    const int64_t items = B * chunk;
    int64_t g = 1;
    while (g < kMaxGroup && g < items) g *= 2;
    while (g > 1 && bytes_for(g) > kDefaultSmem) g /= 2;
    const int64_t bytes = bytes_for(g);
    Args<Ty> a{};
    a.w = static_cast<const Ty*>(weights);
    a.tokens = tokens;
    a.kc = static_cast<A*>(kcache);
    a.vc = static_cast<A*>(vcache);
    a.L = L, a.V = V, a.C = C, a.Hh = Hh, a.T = T, a.D = D, a.B = B, a.N = N;
    a.start = start, a.keep = keep, a.chunk = chunk;
    a.scale = static_cast<A>(1.0 / std::sqrt(static_cast<double>(D)));
    a.seed = seed;
    a.dr = draw_block::make_draw<A>(inv_temperature, top_k, top_p, V);
    const size_t work = static_cast<size_t>(items * 7 * C + (global_draw ? 2 : 1) * B * V) *
                        sizeof(A);
    void* ws = nullptr;
    cudaError_t e = cudaMallocAsync(&ws, work, st);
    if (e != cudaSuccess) return static_cast<int>(e);
    a.X = static_cast<A*>(ws);
    a.Q = a.X + items * C;
    a.Y = a.Q + items * C;
    a.Hb = a.Y + items * C;
    a.lg = a.Hb + items * 4 * C;
    a.dbuf = global_draw ? a.lg + B * V : nullptr;
    int r = 0;
    switch (g) {
      case 1: r = launch<Ty, 1>(a, grid, bytes, optin, st); break;
      case 2: r = launch<Ty, 2>(a, grid, bytes, optin, st); break;
      case 4: r = launch<Ty, 4>(a, grid, bytes, optin, st); break;
      default: r = launch<Ty, kMaxGroup>(a, grid, bytes, optin, st); break;
    }
    const cudaError_t f = cudaFreeAsync(ws, st);
    return r != 0 ? r : static_cast<int>(f);
  });
}

}  // namespace genfast::cuda
