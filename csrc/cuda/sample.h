// CUDA Gumbel-max sampling kernel (host launcher). Contract: genfast/ops/sample.py.
// Same arguments as csrc/cpu/sample.h, except the seed is a device pointer to one int64 (so
// drawing it from a torch.Generator never syncs) and work is queued on `stream`.
// Returns a cudaError_t code (0 on success); bindings.cpp turns it into a Python exception
// (with genfast::cuda::error_string, declared in cuda/gumbel.h).
#pragma once
#include <cstdint>

namespace genfast::cuda {

int sample_categorical(const void* x, int64_t x_row_stride, int64_t* out, int64_t rows,
                       int64_t n, int dtype, const int64_t* seed, double inv_temperature,
                       int64_t top_k, double top_p, void* stream);

}  // namespace genfast::cuda
