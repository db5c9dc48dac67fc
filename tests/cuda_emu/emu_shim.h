// Host stand-ins for the CUDA device intrinsics the LSTM kernels use, so their real device code
// (csrc/cuda) compiles with g++ against the CUDA headers and runs on the CPU: a test of the index
// logic, not of the GPU. Used by persist_emu.cpp and cell_emu.cpp (tests/test_lstm_cuda_emu.py).
#pragma once
#include <cuda_runtime.h>

#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>

using std::exp;
using std::log;
using std::sqrt;
using std::tanh;

inline float __int_as_float(int v) { float f; std::memcpy(&f, &v, 4); return f; }
inline unsigned __float_as_uint(float v) { unsigned u; std::memcpy(&u, &v, 4); return u; }
inline double __longlong_as_double(long long v) { double f; std::memcpy(&f, &v, 8); return f; }
inline long long __double_as_longlong(double v) { long long u; std::memcpy(&u, &v, 8); return u; }

// common.cuh's warp / block reductions need these to compile; no LSTM kernel calls them, and one
// that starts to must get a real emulation (threads that meet), not a silent wrong answer.
template <typename T>
T __shfl_xor_sync(unsigned, T, int) { std::abort(); }
inline void __syncthreads() { std::abort(); }

// The cell kernels index with these; cell_emu.cpp sets them before each emulated thread runs.
// (The persistent kernels take their ids from lstm_dev::tid / cta, which persist_emu.cpp defines.)
inline uint3 threadIdx, blockIdx;
inline dim3 gridDim, blockDim;
