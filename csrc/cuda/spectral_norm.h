// CUDA spectral-norm power iteration for many weights in one launch sequence. Same contract as
// csrc/cpu/spectral_norm.h; `meta` (count x 6 int64) and `sigma` (count float32) live on the
// device, max_h / max_w bound the table's sizes so launch shapes need no host read of it.
// Returns a cudaError_t code.
#pragma once
#include <cstdint>

namespace genfast::cuda {

int spectral_norm_power_iteration(int64_t count, const int64_t* meta, int dtype, int n_iter,
                                  double eps, float* sigma, int64_t max_h, int64_t max_w,
                                  void* stream);

}  // namespace genfast::cuda
