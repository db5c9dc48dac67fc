// Device helpers the causal_conv CUDA files share (conv, fused layer, generation): typed
// loads/stores in the math type, tanh / sigmoid in that type, Python's mod for ring slots.
#pragma once
#include <cstdint>

#include "cuda/common.cuh"

namespace genfast::cuda::cc {

template <typename T>
__device__ __forceinline__ dev::acc_t<T> ld(const T* p) {
  return static_cast<dev::acc_t<T>>(dev::Io<T>::load1(p));
}
template <typename T>
__device__ __forceinline__ void st(T* p, dev::acc_t<T> v) {
  dev::Io<T>::store1(p, v);
}

__device__ __forceinline__ float dtanh(float v) { return tanhf(v); }
__device__ __forceinline__ double dtanh(double v) { return tanh(v); }

template <typename A>
__device__ __forceinline__ A sigmoid(A v) {
  return A(1) / (A(1) + dev::dexp(-v));
}

// Python's a mod m (>= 0) for m > 0: the ring slot of position a (a < 0 before the start).
__device__ __forceinline__ int64_t pymod(int64_t a, int64_t m) {
  const int64_t r = a % m;
  return r < 0 ? r + m : r;
}

}  // namespace genfast::cuda::cc
