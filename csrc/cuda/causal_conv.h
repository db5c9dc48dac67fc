// CUDA kernels of causal dilated conv1d (csrc/cuda/causal_conv.cu). Contract:
// genfast/ops/causal_conv.py. The parameters of csrc/cpu/causal_conv.h but the last, which is the
// stream; each returns a cudaError_t code (cudaErrorInvalidValue for sizes or pointers that do not
// fit). Pointers are device pointers; every tensor is contiguous (Python makes it so).
// dtype: 0 float32, 1 float64, 2 float16, 3 bfloat16; math in float32 (float64 for float64),
// one rounding at the store. x~ = [h | x] along time, P = (K-1)*dilation.
// act: 0 none, 1 silu, 2 relu, 3 tanh.
#pragma once
#include <cstdint>

namespace genfast::cuda {

// y (B, Cout, T) = act(b + sum_k sum_ci w[co, ci, k] * x~[b, g*Cg + ci, t + k*dilation]).
// h (B, Cin, P) or null (zeros); b (Cout) or null.
int causal_conv1d_fwd(const void* x, const void* h, const void* w, const void* b, void* y,
                      int64_t B, int64_t Cin, int64_t Cout, int64_t T, int64_t K,
                      int64_t dilation, int64_t groups, int act, int dtype, void* stream);

// The adjoint of fwd's x~ (act=None, no bias): dx~[b, g*Cg+ci, j] = sum_k sum_{co in group g}
// w[co, ci, k] * g[b, co, j - k*dilation] for j in [0, P+T), terms with j - k*dilation outside
// [0, T) being 0. with_state: dx is dx~, (B, Cin, P+T); else dx[..., t] = dx~[..., P+t],
// (B, Cin, T). Written, not accumulated.
int causal_conv1d_bwd_input(const void* g, const void* w, void* dx, int64_t B, int64_t Cin,
                            int64_t Cout, int64_t T, int64_t K, int64_t dilation, int64_t groups,
                            bool with_state, int dtype, void* stream);

// dw (Cout, Cin/groups, K) = sum_b sum_t g[b,co,t] * x~[b, g*Cg+ci, t + k*dilation]. Written.
// Deterministic: a fixed summation order, no atomics (the same bits on every run).
int causal_conv1d_bwd_weight(const void* g, const void* x, const void* h, void* dw, int64_t B,
                             int64_t Cin, int64_t Cout, int64_t T, int64_t K, int64_t dilation,
                             int64_t groups, int dtype, void* stream);

// L new steps x_new (B, Cin, L) against the state (B, Cin, S), S >= P; y (B, Cout, L).
// seqlens (device int64 (B,)) non-null: ring mode, position p of stream b lives in slot p mod S;
// null: shift mode, the state holds the last S inputs oldest first and is shifted left by L.
int causal_conv1d_update(const void* x_new, void* state, const void* w, const void* b,
                         const int64_t* seqlens, void* y, int64_t B, int64_t Cin, int64_t Cout,
                         int64_t L, int64_t S, int64_t K, int64_t dilation, int64_t groups,
                         int act, int dtype, void* stream);

}  // namespace genfast::cuda
