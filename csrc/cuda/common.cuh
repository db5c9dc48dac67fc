// Device helpers shared by the CUDA kernels: dtype traits, quad (4-element) loads and stores,
// row-group reductions and the row loop of row-wise kernels. Include only from .cu files.
#pragma once
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cfloat>
#include <cstdint>

namespace genfast::cuda::dev {

// Math type: float for float32/float16/bfloat16 (fp32 accumulation), double for float64.
template <typename T>
struct AccOf {
  using type = float;
};
template <>
struct AccOf<double> {
  using type = double;
};
template <typename T>
using acc_t = typename AccOf<T>::type;

template <typename A>
__device__ __forceinline__ A neg_inf();
template <>
__device__ __forceinline__ float neg_inf<float>() {
  return __int_as_float(0xff800000);
}
template <>
__device__ __forceinline__ double neg_inf<double>() {
  return __longlong_as_double(static_cast<long long>(0xfff0000000000000ull));
}

template <typename A>
__device__ __forceinline__ A quiet_nan();
template <>
__device__ __forceinline__ float quiet_nan<float>() {
  return __int_as_float(0x7fc00000);
}
template <>
__device__ __forceinline__ double quiet_nan<double>() {
  return __longlong_as_double(0x7ff8000000000000ll);
}

// Accurate (not __expf-style) math, so results stay within a few ulp of the CPU backends.
__device__ __forceinline__ float dexp(float v) { return expf(v); }
__device__ __forceinline__ double dexp(double v) { return exp(v); }
__device__ __forceinline__ float dlog(float v) { return logf(v); }
__device__ __forceinline__ double dlog(double v) { return log(v); }
__device__ __forceinline__ float dsqrt(float v) { return sqrtf(v); }
__device__ __forceinline__ double dsqrt(double v) { return sqrt(v); }

// Order-preserving map of a float onto an unsigned integer (a < b  <=>  key(a) < key(b) for
// non-NaN values), so a threshold can be found by a bitwise binary search over the key space.
// -0.0 and +0.0 map to different keys: callers canonicalise zeros first.
__device__ __forceinline__ uint32_t order_key(float v) {
  const uint32_t u = __float_as_uint(v);
  return (u & 0x80000000u) ? ~u : (u | 0x80000000u);
}
__device__ __forceinline__ unsigned long long order_key(double v) {
  const auto u = static_cast<unsigned long long>(__double_as_longlong(v));
  return (u & 0x8000000000000000ull) ? ~u : (u | 0x8000000000000000ull);
}

// Per-dtype element and quad access. A quad is 4 consecutive columns; the vector path needs the
// row pointer aligned to kAlign (then every quad start is aligned too) and a full quad.
template <typename T>
struct Io;

template <>
struct Io<float> {
  static constexpr int kAlign = 16;
  __device__ static float load1(const float* p) { return *p; }
  __device__ static void load4(const float* p, float (&v)[4]) {
    const float4 t = *reinterpret_cast<const float4*>(p);
    v[0] = t.x, v[1] = t.y, v[2] = t.z, v[3] = t.w;
  }
  __device__ static void store1(float* p, float v) { *p = v; }
  __device__ static void store4(float* p, const float (&v)[4]) {
    *reinterpret_cast<float4*>(p) = make_float4(v[0], v[1], v[2], v[3]);
  }
};

template <>
struct Io<double> {
  static constexpr int kAlign = 16;  // two 16-byte accesses per quad
  __device__ static double load1(const double* p) { return *p; }
  __device__ static void load4(const double* p, double (&v)[4]) {
    const double2 a = reinterpret_cast<const double2*>(p)[0];
    const double2 b = reinterpret_cast<const double2*>(p)[1];
    v[0] = a.x, v[1] = a.y, v[2] = b.x, v[3] = b.y;
  }
  __device__ static void store1(double* p, double v) { *p = v; }
  __device__ static void store4(double* p, const double (&v)[4]) {
    reinterpret_cast<double2*>(p)[0] = make_double2(v[0], v[1]);
    reinterpret_cast<double2*>(p)[1] = make_double2(v[2], v[3]);
  }
};

// 16-bit types move as one 8-byte word per quad; conversions go through the raw bits, which
// compile on every arch (sm_75 has no native bf16 arithmetic, but these are plain conversions).
template <typename H>
struct Io16 {
  static constexpr int kAlign = 8;
  __device__ static float to_f(unsigned short b);
  __device__ static unsigned short from_f(float v);
  __device__ static float load1(const H* p) {
    return to_f(*reinterpret_cast<const unsigned short*>(p));
  }
  __device__ static void load4(const H* p, float (&v)[4]) {
    const uint2 t = *reinterpret_cast<const uint2*>(p);
    v[0] = to_f(static_cast<unsigned short>(t.x & 0xffffu));
    v[1] = to_f(static_cast<unsigned short>(t.x >> 16));
    v[2] = to_f(static_cast<unsigned short>(t.y & 0xffffu));
    v[3] = to_f(static_cast<unsigned short>(t.y >> 16));
  }
  __device__ static void store1(H* p, float v) { *reinterpret_cast<unsigned short*>(p) = from_f(v); }
  __device__ static void store4(H* p, const float (&v)[4]) {
    uint2 t;
    t.x = static_cast<unsigned>(from_f(v[0])) | (static_cast<unsigned>(from_f(v[1])) << 16);
    t.y = static_cast<unsigned>(from_f(v[2])) | (static_cast<unsigned>(from_f(v[3])) << 16);
    *reinterpret_cast<uint2*>(p) = t;
  }
};
template <>
__device__ __forceinline__ float Io16<__half>::to_f(unsigned short b) {
  return __half2float(__ushort_as_half(b));
}
template <>
__device__ __forceinline__ unsigned short Io16<__half>::from_f(float v) {
  return __half_as_ushort(__float2half_rn(v));
}
template <>
__device__ __forceinline__ float Io16<__nv_bfloat16>::to_f(unsigned short b) {
  return __bfloat162float(__ushort_as_bfloat16(b));
}
template <>
__device__ __forceinline__ unsigned short Io16<__nv_bfloat16>::from_f(float v) {
  return __bfloat16_as_ushort(__float2bfloat16_rn(v));
}
template <>
struct Io<__half> : Io16<__half> {};
template <>
struct Io<__nv_bfloat16> : Io16<__nv_bfloat16> {};

template <typename T>
__device__ __forceinline__ bool vec_ok(const T* p) {
  return (reinterpret_cast<uintptr_t>(p) & (Io<T>::kAlign - 1)) == 0;
}

// Quad q of a row of n columns; columns past n read as `fill` and are never touched in memory.
template <typename T, typename A>
__device__ __forceinline__ void load_quad(const T* row, int64_t q, int64_t n, bool vec, A fill,
                                          A (&v)[4]) {
  const int64_t c = q * 4;
  if (vec && c + 4 <= n) {
    Io<T>::load4(row + c, v);
    return;
  }
#pragma unroll
  for (int j = 0; j < 4; ++j) v[j] = c + j < n ? static_cast<A>(Io<T>::load1(row + c + j)) : fill;
}

template <typename T, typename A>
__device__ __forceinline__ void store_quad(T* row, int64_t q, int64_t n, bool vec,
                                           const A (&v)[4]) {
  const int64_t c = q * 4;
  if (vec && c + 4 <= n) {
    Io<T>::store4(row + c, v);
    return;
  }
#pragma unroll
  for (int j = 0; j < 4; ++j)
    if (c + j < n) Io<T>::store1(row + c + j, v[j]);
}

// Lane exchange for the butterfly reductions. Every lane of the warp always takes part (callers
// keep the control flow warp-uniform), so the full mask is correct even for sub-warp groups.
__device__ __forceinline__ float shfl_xor(float v, int m) {
  return __shfl_xor_sync(0xffffffffu, v, m);
}
__device__ __forceinline__ double shfl_xor(double v, int m) {
  return __shfl_xor_sync(0xffffffffu, v, m);
}
__device__ __forceinline__ long long shfl_xor(long long v, int m) {
  return __shfl_xor_sync(0xffffffffu, v, m);
}

// (value, column) with first-index tie-breaking. v is never NaN: callers only replace the -inf
// start on a strict `>`, which keeps the combine symmetric so every lane agrees on the result.
template <typename A>
struct ArgMax {
  A v;
  long long i;
};
template <typename A>
__device__ __forceinline__ ArgMax<A> shfl_xor(const ArgMax<A>& p, int m) {
  return {shfl_xor(p.v, m), shfl_xor(p.i, m)};
}

struct ArgMaxOp {
  template <typename A>
  __device__ ArgMax<A> operator()(const ArgMax<A>& a, const ArgMax<A>& b) const {
    return (b.v > a.v || (b.v == a.v && b.i < a.i)) ? b : a;
  }
};
struct SumOp {
  template <typename V>
  __device__ V operator()(V a, V b) const {
    return a + b;
  }
};
// Max that skips NaN (values that can be NaN are never the start value, see ArgMax).
struct MaxOp {
  template <typename V>
  __device__ V operator()(V a, V b) const {
    return b > a ? b : a;
  }
};
// Max that propagates NaN: one NaN logit must poison its row (the contract), and fmaxf would
// silently drop it (an all-NaN row would then look like an all -inf row, i.e. uniform).
struct NanMaxOp {
  template <typename V>
  __device__ V operator()(V a, V b) const {
    return (b > a || b != b) ? b : a;
  }
};

// kThreads consecutive threads (a power of two, aligned within the block) that cooperate on one
// row. Up to a warp: butterfly shuffles, which leave the result in every lane. A whole block:
// warp butterflies, then every thread folds the per-warp partials from shared memory in the same
// order, so every thread holds a bit-identical result and block-wide branches on it are uniform.
// The block variant calls __syncthreads(): call it from block-uniform control flow only.
template <int kThreads>
struct Group {
  static_assert(kThreads >= 2 && kThreads <= 1024 && (kThreads & (kThreads - 1)) == 0,
                "row groups are 2..1024 threads, a power of two");
  static constexpr int kScratchBytes = kThreads > 32 ? (kThreads / 32) * 16 : 16;
  int rank;                // this thread's index in the group, 0 .. kThreads-1
  unsigned char* scratch;  // kScratchBytes of 16-byte-aligned shared memory (block groups only)

  template <typename V, typename Op>
  __device__ __forceinline__ V reduce(V v, Op op) const {
    static_assert(sizeof(V) <= 16, "scratch holds 16 bytes per warp");
    constexpr int kLanes = kThreads < 32 ? kThreads : 32;
#pragma unroll
    for (int off = kLanes / 2; off > 0; off >>= 1) v = op(v, shfl_xor(v, off));
    if constexpr (kThreads > 32) {
      V* part = reinterpret_cast<V*>(scratch);
      if ((threadIdx.x & 31) == 0) part[threadIdx.x >> 5] = v;
      __syncthreads();
      v = part[0];
#pragma unroll
      for (int w = 1; w < kThreads / 32; ++w) v = op(v, part[w]);
      __syncthreads();  // scratch is reused by the next reduction
    }
    return v;
  }
};

// ---- row kernels: one row per group of C::kThreads threads --------------------------------

// Launch shape of a row kernel. Groups up to a warp share 128-thread blocks (short rows keep
// lanes busy); larger groups are a whole block. Each thread owns quads rank, rank + kThreads, ...
template <int kThreads_, int kItems_>
struct Cfg {
  static constexpr int kThreads = kThreads_;  // threads per row (power of two)
  static constexpr int kItems = kItems_;      // quads cached per thread; 0 = row not cached
  static constexpr int kBlock = kThreads_ > 128 ? kThreads_ : 128;
  static constexpr int kRowsPerBlock = kBlock / kThreads_;
  static constexpr int kSlots = kItems_ > 0 ? kItems_ : 1;  // register array size
  // Longest row a cached config holds: every quad must have a register slot.
  static constexpr int64_t kMaxN = kItems_ > 0 ? 4LL * kThreads_ * kItems_ : INT64_MAX;
};

// Every kernel walks rows in a block-uniform loop. Sub-warp groups past the last row keep running
// on a clamped row (reads stay in bounds) with live = false, so all lanes of a warp execute the
// same shuffles; such groups never write.
template <class C, class F>
__device__ __forceinline__ void for_each_row(int64_t rows, F&& f) {
  const int64_t sub = threadIdx.x / C::kThreads;
  for (int64_t r0 = static_cast<int64_t>(blockIdx.x) * C::kRowsPerBlock; r0 < rows;
       r0 += static_cast<int64_t>(gridDim.x) * C::kRowsPerBlock) {
    const int64_t r = r0 + sub;
    f(r < rows ? r : rows - 1, r < rows);
  }
}

// Calls f(slot, q) for each quad this thread owns. slot indexes the register cache; the unrolled
// loop makes it a compile-time constant, so the cache stays in registers.
template <class C>
struct Quads {
  int rank;
  int64_t nq;  // quads in the row, ceil(n / 4)
  template <class F>
  __device__ __forceinline__ void operator()(F&& f) const {
    if constexpr (C::kItems > 0) {
#pragma unroll
      for (int i = 0; i < C::kItems; ++i) {
        const int64_t q = rank + static_cast<int64_t>(i) * C::kThreads;
        if (q < nq) f(i, q);
      }
    } else {
      for (int64_t q = rank; q < nq; q += C::kThreads) f(0, q);
    }
  }
};

}  // namespace genfast::cuda::dev

namespace genfast::cuda {

// Kernels outside dev call it unqualified (it has float and double overloads, no ADL for them).
using dev::dsqrt;

// Grid size cap: every kernel loops over its work grid-stride, and 65535 blocks fill any GPU
// many times over.
constexpr int64_t kMaxBlocks = 65535;

// Host-side dtype dispatch of a launcher: f(Tag<T>{}) for the dtype code (csrc/common/dtype.h);
// an unknown code is cudaErrorInvalidValue, never a launch.
template <typename T>
struct Tag {
  using type = T;
};

template <class F>
int with_dtype(int dtype, F&& f) {
  switch (dtype) {
    case 0: return f(Tag<float>{});
    case 1: return f(Tag<double>{});
    case 2: return f(Tag<__half>{});
    case 3: return f(Tag<__nv_bfloat16>{});
    default: return static_cast<int>(cudaErrorInvalidValue);
  }
}

// Scalar parameters (1/tau, eps, ...) arrive as double; fp32 math needs them as a float that did
// not overflow to inf (inf * 0 would turn a row max into NaN).
template <typename A>
A to_param(double v) {
  if constexpr (sizeof(A) == sizeof(float)) {
    return static_cast<float>(v > FLT_MAX ? FLT_MAX : v);
  } else {
    return v;
  }
}

}  // namespace genfast::cuda
