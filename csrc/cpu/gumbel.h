// C++ CPU Gumbel-Softmax kernels. Contract: genfast/ops/gumbel.py.
// Pointers are to 2-D (rows, n) views with unit column stride; row strides are in elements.
// All argument checks happen in Python first; these re-check only what could write out of bounds.
#pragma once
#include <cstdint>

namespace genfast::cpu {

void gumbel_softmax_fwd(const void* x, int64_t x_row_stride, void* y, int64_t y_row_stride,
                        int64_t rows, int64_t n, int dtype, uint64_t seed, double inv_tau,
                        bool hard, int num_threads);

// dx = y * (dy - sum(dy * y)) * inv_tau, with y the soft sample: read from `src` when
// recompute is false, regenerated from the logits in `src` and the seed when true (hard mode).
void gumbel_softmax_bwd(const void* dy, int64_t dy_row_stride, const void* src,
                        int64_t src_row_stride, void* dx, int64_t dx_row_stride, int64_t rows,
                        int64_t n, int dtype, uint64_t seed, double inv_tau, bool recompute,
                        int num_threads);

}  // namespace genfast::cpu
