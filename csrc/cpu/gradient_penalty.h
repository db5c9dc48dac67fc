// C++ CPU kernels of the gradient penalty: per-sample gradient norms and their row scaling.
// Contract: genfast/ops/gradient_penalty.py.
#pragma once
#include <cstdint>

namespace genfast::cpu {

// norms[r] = ||g[r, :]||_2, stored in g's dtype (float32 accumulation; float64 for float64 g).
void gp_row_norms(const void* g, int64_t ld, int64_t rows, int64_t d, int dtype, void* norms,
                  int num_threads);

// out[r, :] = scale[r] * g[r, :]  (scale has g's dtype; out is contiguous, row stride d).
void gp_scale_rows(const void* g, int64_t ld, const void* scale, void* out, int64_t rows,
                   int64_t d, int dtype, int num_threads);

}  // namespace genfast::cpu
