// C++ CPU Gumbel-max sampling kernel. Contract: genfast/ops/sample.py.
// Pointers are to 2-D (rows, n) views with unit column stride; row strides are in elements.
// All argument checks happen in Python first; these re-check only what could write out of bounds.
#pragma once
#include <cstdint>

namespace genfast::cpu {

// One index per row into `out` (int64, contiguous). inv_temperature = +inf means greedy;
// top_k = 0 and top_p >= 1 mean no filtering.
void sample_categorical(const void* x, int64_t x_row_stride, int64_t* out, int64_t rows,
                        int64_t n, int dtype, uint64_t seed, double inv_temperature,
                        int64_t top_k, double top_p, int num_threads);

}  // namespace genfast::cpu
