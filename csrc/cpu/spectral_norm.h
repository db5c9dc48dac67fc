// C++ CPU spectral-norm power iteration, for many weights in one call. Contract:
// genfast/ops/spectral_norm.py.
#pragma once
#include <cstdint>

namespace genfast::cpu {

// `meta` is a (count, 6) int64 table, one row per weight: (W pointer, u pointer, v pointer,
// h, w, ld). W is a row-major (h, w) matrix with row stride ld; u (h) and v (w) are contiguous
// and share W's dtype. Runs n_iter power iterations (u = normalize(W v), v = normalize(W^T u),
// normalize(x) = x / max(||x||, eps)), updating u and v in place, then writes
// sigma[i] = u . (W v) in float32. Accumulation is float32 (float64 for float64 weights).
void spectral_norm_power_iteration(int64_t count, const int64_t* meta, int dtype, int n_iter,
                                   double eps, float* sigma, int num_threads);

}  // namespace genfast::cpu
