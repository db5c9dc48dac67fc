// CUDA kernels of the LSTM recurrence (one layer, one direction). Contract (the equations,
// active steps, what is saved): genfast/ops/lstm.py. lstm_fwd / lstm_bwd take the parameters of
// csrc/cpu/lstm.h but the last, which is the stream; every function returns a cudaError_t code.
// Pointers are device pointers to contiguous row-major buffers, but lstm_persistent_fits, which
// takes none. dtype: 0 float32, 1 float64, 2 float16, 3 bfloat16 for the x-side buffers; gates,
// c_all and the cell kernels' state are in the work dtype (float32, or float64 for float64):
// gate math and the c state run in it. Shapes as csrc/cpu/lstm.h.
//
// Two GPU paths (the Python dispatch, genfast/ops/_lstm_backends.py, picks):
//  - lstm_fwd / lstm_bwd: ONE persistent cooperative launch for the whole recurrence. Each CTA
//    owns a block of hidden units (the 4 gate rows of each) and keeps its slice of w_hh (and of
//    w_hr) in shared memory for all steps; CTAs exchange h (or dG) through global memory with one
//    grid barrier per step (two with a projection). Only shapes whose slices fit on chip with one
//    CTA per SM run: lstm_persistent_fits says which, and the launchers return
//    cudaErrorCooperativeLaunchTooLarge (nothing launched, nothing written) for the others, or
//    cudaErrorNotSupported on a GPU without cooperative launch.
//  - the GEMM path: per step a cuBLAS GEMM (torch.addmm) and ONE fused pointwise cell kernel,
//    lstm_cell_fwd / lstm_cell_bwd below, for any shape.
// Sizes must be >= 0 and H, P >= 1 where B and T are not 0 (else cudaErrorInvalidValue).
// Results do not depend on the GPU (each output value is one thread's fixed-order sum).
#pragma once
#include <cstdint>

namespace genfast::cuda {

// The forward recurrence (csrc/cpu/lstm.h's lstm_fwd). gates and c_all both given (training) or
// both null; h0 / c0 null mean zeros; w_hr null means no projection (then P == H); lengths null
// means every sequence has T steps (values are clamped to [0, T]). With w_hr a stream-ordered
// workspace of B*H elements is taken for the launch (cudaMallocAsync). h is exchanged between
// steps as the dtype's value of y (what the GEMM path does), c stays in the work dtype.
int lstm_fwd(const void* gx, const void* w_hh, const void* w_hr, const void* h0, const void* c0,
             const int64_t* lengths, void* y, void* gates, void* c_all, void* hT, void* cT,
             int64_t T, int64_t B, int64_t H, int64_t P, bool reverse, int dtype, void* stream);

// The backward recurrence (csrc/cpu/lstm.h's lstm_bwd). dy, dhT, dcT, c0 null mean zeros;
// dh_all null means not written. dG is exchanged between steps as dgx's dtype values (what the
// GEMM path does); dh and dc run in the work dtype. With w_hr a workspace of B*P work-dtype
// elements is taken for the launch.
int lstm_bwd(const void* w_hh, const void* w_hr, const void* c0, const int64_t* lengths,
             const void* gates, const void* c_all, const void* dy, const void* dhT,
             const void* dcT, void* dgx, void* dh0, void* dc0, void* dh_all, int64_t T,
             int64_t B, int64_t H, int64_t P, bool reverse, int dtype, void* stream);

// 1 when lstm_fwd AND lstm_bwd take (B, H, P, dtype) on CUDA device `device` (they would not
// return cudaErrorCooperativeLaunchTooLarge / cudaErrorNotSupported), else 0; never an error
// code (a failed device query is 0). With projection false the answer holds for calls without
// w_hr only; with true, for calls with or without it. Shared memory per CTA is about
// 4U*P + P*H/n (weights, dtype) + S*max(P, 4H) (staged rows, work dtype) + 6U*B (state) with
// n = min(H, SMs) CTAs of U = ceil(H / n) units and S <= B staged rows, so it says yes for
// H, P <= 1024 with B <= 64 in float16 / bfloat16 on sm_80 / sm_90 (1024 x 1024 float32 needs
// sm_90's 227 KB). It answers feasibility, not speed: the persistent kernel wins at small B
// (<= 32 or so), where one step's GEMM is too small to fill the GPU. Answers (and the
// launchers' plans) are cached per device, dtype and shape, so asking before every call is cheap.
int lstm_persistent_fits(int64_t B, int64_t H, int64_t P, int dtype, int device,
                         bool projection);

// The GEMM path's fused forward cell at step t (the design note's lstm_cell_fwd): G (B, 4H)
// dtype = gx[t] + h w_hh^T (pre-activations); c_state (B, H) work dtype, in/out; gates_t
// (B, 4H) and c_t (B, H) work dtype or null (inference); ht (B, H) dtype out. For a row b with
// t < lengths[b] (every row when lengths is null): i, f, g, o activated, c_state = f c + i g,
// gates_t / c_t written, ht = o tanh(c). Other rows: ht = 0, c_state, gates_t, c_t untouched.
int lstm_cell_fwd(const void* G, void* c_state, void* gates_t, void* c_t, void* ht,
                  const int64_t* lengths, int64_t t, int64_t B, int64_t H, int dtype,
                  void* stream);

// The GEMM path's fused backward cell at step t: dht (B, H) dtype (the gradient of ht, the
// projection already applied); dc_state (B, H) work dtype, in/out; gates_t (B, 4H), c_t (B, H)
// work dtype as saved; c_prev (B, H) work dtype, the c before step t (null = zeros); dG (B, 4H)
// dtype out. Active rows: tc = tanh(c_t), dc = dc_state + dht o (1 - tc^2),
// dG = [dc g i(1-i), dc c_prev f(1-f), dc i (1-g^2), dht tc o(1-o)], dc_state = dc f.
// Inactive rows: dG = 0, dc_state untouched.
int lstm_cell_bwd(const void* dht, void* dc_state, const void* gates_t, const void* c_t,
                  const void* c_prev, void* dG, const int64_t* lengths, int64_t t, int64_t B,
                  int64_t H, int dtype, void* stream);

}  // namespace genfast::cuda
