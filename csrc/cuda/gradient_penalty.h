// CUDA kernels of the gradient penalty; same contract as csrc/cpu/gradient_penalty.h.
// Return a cudaError_t code.
#pragma once
#include <cstdint>

namespace genfast::cuda {

int gp_row_norms(const void* g, int64_t ld, int64_t rows, int64_t d, int dtype, void* norms,
                 void* stream);
int gp_scale_rows(const void* g, int64_t ld, const void* scale, void* out, int64_t rows,
                  int64_t d, int dtype, void* stream);

}  // namespace genfast::cuda
