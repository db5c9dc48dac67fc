// C++ CPU kernels of the LSTM recurrence (one layer, one direction). Contract (the equations,
// active steps, what is saved): genfast/ops/lstm.py. Shapes: gx, dgx, gates (T, B, 4H); y,
// dy, dh_all (T, B, P); c_all (T, B, H); h0, hT, dhT, dh0 (B, P); c0, cT, dcT, dc0 (B, H);
// w_hh (4H, P); w_hr (P, H) or null (then P == H); lengths (B) int64 or null (all T). Every
// buffer is contiguous host memory. dtype: 0 float32, 1 float64 for every buffer (gates and
// c_all included: the work dtype equals the data dtype on the CPU). Results do not depend on
// num_threads.
#pragma once
#include <cstdint>

namespace genfast::cpu {

// The forward recurrence: gx = x w_ih^T + b (all steps, computed by the caller) in, y, hT, cT
// out. gates (the activated i, f, g, o) and c_all are both written (training) or both null
// (inference). h0 / c0 null means zeros. Steps t = 0 .. T-1, or T-1 .. 0 with reverse; step t
// of sequence b is active iff t < lengths[b]: inactive steps keep the state and write y = 0.
void lstm_fwd(const void* gx, const void* w_hh, const void* w_hr, const void* h0,
              const void* c0, const int64_t* lengths, void* y, void* gates, void* c_all,
              void* hT, void* cT, int64_t T, int64_t B, int64_t H, int64_t P, bool reverse,
              int dtype, int num_threads);

// The backward recurrence (first order) in the reverse of the forward's step order: dgx (the
// gradient of the pre-activations, zero at inactive steps), dh0, dc0 written; dh_all (the total
// gradient of h at each step, zero at inactive steps) written unless null. dy, dhT, dcT null
// mean zeros; c0 null means zeros.
void lstm_bwd(const void* w_hh, const void* w_hr, const void* c0, const int64_t* lengths,
              const void* gates, const void* c_all, const void* dy, const void* dhT,
              const void* dcT, void* dgx, void* dh0, void* dc0, void* dh_all, int64_t T,
              int64_t B, int64_t H, int64_t P, bool reverse, int dtype, int num_threads);

}  // namespace genfast::cpu
