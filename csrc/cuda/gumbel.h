// CUDA Gumbel-Softmax kernels (host launchers). Contract: genfast/ops/gumbel.py.
// Same arguments as csrc/cpu/gumbel.h, except the seed is a device pointer to one int64
// (so drawing it from a torch.Generator never syncs) and work is queued on `stream`.
// Returns a cudaError_t code (0 on success); bindings.cpp turns it into a Python exception.
#pragma once
#include <cstdint>

namespace genfast::cuda {

int gumbel_softmax_fwd(const void* x, int64_t x_row_stride, void* y, int64_t y_row_stride,
                       int64_t rows, int64_t n, int dtype, const int64_t* seed, double inv_tau,
                       bool hard, void* stream);

int gumbel_softmax_bwd(const void* dy, int64_t dy_row_stride, const void* src,
                       int64_t src_row_stride, void* dx, int64_t dx_row_stride, int64_t rows,
                       int64_t n, int dtype, const int64_t* seed, double inv_tau, bool recompute,
                       void* stream);

const char* error_string(int code);

}  // namespace genfast::cuda
