// C++ CPU kernels of causal dilated conv1d. Contract: genfast/ops/causal_conv.py.
// Every tensor is contiguous (Python makes it so); x~ = [h | x] along time, P = (K-1)*dilation.
// act: 0 none, 1 silu, 2 relu, 3 tanh. dtype: 0 float32, 1 float64 (the CPU set).
#pragma once
#include <cstdint>

namespace genfast::cpu {

// y (B, Cout, T) = act(b + sum_k sum_ci w[co, ci, k] * x~[b, g*Cg + ci, t + k*dilation]).
// h (B, Cin, P) or null (zeros); b (Cout) or null.
void causal_conv1d_fwd(const void* x, const void* h, const void* w, const void* b, void* y,
                       int64_t B, int64_t Cin, int64_t Cout, int64_t T, int64_t K,
                       int64_t dilation, int64_t groups, int act, int dtype, int num_threads);

// The adjoint of fwd's x~ (act=None, no bias): dx~[b, g*Cg+ci, j] = sum_k sum_{co in group g}
// w[co, ci, k] * g[b, co, j - k*dilation] for j in [0, P+T), terms with j - k*dilation outside
// [0, T) being 0. with_state: dx is dx~, (B, Cin, P+T); else dx[..., t] = dx~[..., P+t],
// (B, Cin, T). Written, not accumulated.
void causal_conv1d_bwd_input(const void* g, const void* w, void* dx, int64_t B, int64_t Cin,
                             int64_t Cout, int64_t T, int64_t K, int64_t dilation, int64_t groups,
                             bool with_state, int dtype, int num_threads);

// dw (Cout, Cin/groups, K) = sum_b sum_t g[b,co,t] * x~[b, g*Cg+ci, t + k*dilation]. Written.
// Deterministic: the same bits for any num_threads (fixed time chunks, chosen from the shapes,
// each summed into its own partial; the partials are added in chunk order).
void causal_conv1d_bwd_weight(const void* g, const void* x, const void* h, void* dw, int64_t B,
                              int64_t Cin, int64_t Cout, int64_t T, int64_t K, int64_t dilation,
                              int64_t groups, int dtype, int num_threads);

// L new steps x_new (B, Cin, L) against the state (B, Cin, S), S >= P; y (B, Cout, L).
// seqlens (int64 (B,)) non-null: ring mode, position p of stream b lives in slot p mod S
// (Python-style mod); step i is position seqlens[b] + i and its tap k reads position
// q = p - (K-1-k)*dilation from x_new when q >= seqlens[b], else from slot q mod S. Every
// output is computed before x_new[:, :, i] is written to slot (seqlens[b] + i) mod S (only the
// last min(L, S) steps), so no output reads a slot this call overwrote. seqlens is not advanced.
// null: shift mode, the state holds the last S inputs oldest first (taps before x_new read
// state[S + q]), then is shifted left by L with x_new appended (its last S when L >= S).
// act as in fwd. The sum runs in fwd's order, so on one ISA copy a chain of updates
// reproduces fwd's bits.
void causal_conv1d_update(const void* x_new, void* state, const void* w, const void* b,
                          const int64_t* seqlens, void* y, int64_t B, int64_t Cin, int64_t Cout,
                          int64_t L, int64_t S, int64_t K, int64_t dilation, int64_t groups,
                          int act, int dtype, int num_threads);

}  // namespace genfast::cpu
