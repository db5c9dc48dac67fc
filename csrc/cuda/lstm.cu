// CUDA persistent LSTM recurrence: lstm_fwd, lstm_bwd, lstm_persistent_fits (contract:
// csrc/cuda/lstm.h, genfast/ops/lstm.py). The device scheme is csrc/cuda/lstm_persist.cuh; this
// file sizes the grid and launches it cooperatively. The GEMM path's cells: lstm_cell.cu.
//
// Grid: n = min(H, SMs) CTAs of U = ceil(H / n) units (one CTA per SM: more would only split the
// same shared memory), V = ceil(P / n) projection columns each. Shared memory holds the weight
// slices, S staged sequences (S = B rounded up to 4 when it fits, halved until it does) and the
// per-sequence state; a shape whose layout passes the device's per-block opt-in limit, or whose
// occupancy query says the grid cannot be co-resident, is refused before anything is launched or
// allocated, so the caller can take the GEMM path.
#include <cuda_runtime.h>

#include <cstdint>
#include <mutex>
#include <vector>

#include "cuda/lstm.h"
#include "cuda/lstm_persist.cuh"

namespace genfast::cuda {
namespace {

using lstm_dev::BwdArgs;
using lstm_dev::FwdArgs;
using lstm_dev::kNB;
using lstm_dev::kThreads;
using lstm_dev::Plan;

template <typename Ty, bool kProj>
__global__ void __launch_bounds__(kThreads, 1) persist_fwd_kernel(const FwdArgs<Ty> a) {
  lstm_dev::fwd_body<Ty, kProj>(a);
}

template <typename Ty, bool kProj>
__global__ void __launch_bounds__(kThreads, 1) persist_bwd_kernel(const BwdArgs<Ty> a) {
  lstm_dev::bwd_body<Ty, kProj>(a);
}

constexpr int kInvalid = static_cast<int>(cudaErrorInvalidValue);
constexpr int kTooLarge = static_cast<int>(cudaErrorCooperativeLaunchTooLarge);
constexpr int kOk = static_cast<int>(cudaSuccess);

struct Device {
  int sms = 0, smem_optin = 0, coop = 0;
};

int query_device(int device, Device* d) {
  cudaError_t e = cudaDeviceGetAttribute(&d->sms, cudaDevAttrMultiProcessorCount, device);
  if (e == cudaSuccess)
    e = cudaDeviceGetAttribute(&d->smem_optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, device);
  if (e == cudaSuccess) e = cudaDeviceGetAttribute(&d->coop, cudaDevAttrCooperativeLaunch, device);
  return static_cast<int>(e);
}

template <typename Ty>
const void* kernel_of(bool bwd, bool proj) {
  if (bwd)
    return proj ? reinterpret_cast<const void*>(persist_bwd_kernel<Ty, true>)
                : reinterpret_cast<const void*>(persist_bwd_kernel<Ty, false>);
  return proj ? reinterpret_cast<const void*>(persist_fwd_kernel<Ty, true>)
              : reinterpret_cast<const void*>(persist_fwd_kernel<Ty, false>);
}

// The plan of (B, H, P) for one kernel on device d, checked against the kernel's occupancy
// (which also opts the kernel in to that much dynamic shared memory). *ncta: the grid size.
template <typename Ty>
int plan_for(int64_t B, int64_t H, int64_t P, bool bwd, bool proj, const Device& d, Plan* p,
             int* ncta) {
  if (!d.coop) return static_cast<int>(cudaErrorNotSupported);
  if (d.sms < 1) return kTooLarge;
  // Larger sizes overflow no index (everything is int64 until the limit check) but can never
  // fit: refusing them here keeps the int fields of Plan exact.
  constexpr int64_t kMaxDim = int64_t{1} << 24;
  if (B < 1 || H < 1 || P < 1 || B > kMaxDim || H > kMaxDim || P > kMaxDim) return kTooLarge;
  const int64_t n = H < d.sms ? H : d.sms, U = (H + n - 1) / n, grid = (H + U - 1) / U;
  *p = Plan{};
  p->B = static_cast<int>(B), p->H = static_cast<int>(H), p->P = static_cast<int>(P);
  p->U = static_cast<int>(U), p->V = static_cast<int>((P + grid - 1) / grid);
  constexpr int ea = sizeof(dev::acc_t<Ty>);
  for (int64_t S = lstm_dev::round_up(B, kNB);; S = lstm_dev::round_up(S / 2, kNB)) {
    p->S = static_cast<int>(S);
    lstm_dev::plan_layout(*p, proj, bwd, static_cast<int>(sizeof(Ty)), ea);
    if (p->total <= d.smem_optin) break;
    if (S == kNB) return kTooLarge;
  }
  const void* k = kernel_of<Ty>(bwd, proj);
  const cudaError_t e = cudaFuncSetAttribute(k, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                             static_cast<int>(p->total));
  if (e != cudaSuccess) return static_cast<int>(e);
  int occ = 0;
  const cudaError_t o = cudaOccupancyMaxActiveBlocksPerMultiprocessor(
      &occ, k, kThreads, static_cast<size_t>(p->total));
  if (o != cudaSuccess) return static_cast<int>(o);
  if (occ < 1 || grid > int64_t{occ} * d.sms) return kTooLarge;
  *ncta = static_cast<int>(grid);
  return kOk;
}

// Plans (and refusals) by shape, per device: Python asks before every call, and the queries
// behind an answer (attributes, occupancy) cost more than a short sequence's kernel.
struct PlanKey {
  int device, dtype;
  int64_t B, H, P;
  bool bwd, proj;
  bool operator==(const PlanKey& o) const {
    return device == o.device && dtype == o.dtype && B == o.B && H == o.H && P == o.P &&
           bwd == o.bwd && proj == o.proj;
  }
};
struct PlanEntry {
  PlanKey key;
  int rc, ncta;
  Plan plan;
};
constexpr size_t kCacheMax = 256;

std::mutex& cache_mutex() {
  static std::mutex m;
  return m;
}
std::vector<PlanEntry>& cache() {
  static std::vector<PlanEntry> c;
  return c;
}

// The plan of one kernel for (B, H, P) on `device`, or the reason there is none (with the CUDA
// error state cleared: a refused shape must not surface as a later kernel's launch error). Only
// device-independent failures (a failed query) go uncached.
template <typename Ty>
int cached_plan(int device, int dtype, int64_t B, int64_t H, int64_t P, bool bwd, bool proj,
                Plan* p, int* ncta) {
  const PlanKey key{device, dtype, B, H, P, bwd, proj};
  {
    std::lock_guard<std::mutex> lock(cache_mutex());
    for (const PlanEntry& e : cache())
      if (e.key == key) {
        *p = e.plan, *ncta = e.ncta;
        return e.rc;
      }
  }
  Device d;
  int rc = query_device(device, &d);
  if (rc != kOk) {
    cudaGetLastError();
    return rc;
  }
  rc = plan_for<Ty>(B, H, P, bwd, proj, d, p, ncta);
  if (rc != kOk) cudaGetLastError();
  if (rc == kOk || rc == kTooLarge || rc == static_cast<int>(cudaErrorNotSupported)) {
    std::lock_guard<std::mutex> lock(cache_mutex());
    if (cache().size() >= kCacheMax) cache().clear();
    cache().push_back(PlanEntry{key, rc, *ncta, *p});
  }
  return rc;
}

template <typename Ty>
int current_plan(int dtype, int64_t B, int64_t H, int64_t P, bool bwd, bool proj, Plan* p,
                 int* ncta) {
  int device = 0;
  const int rc = static_cast<int>(cudaGetDevice(&device));
  if (rc != kOk) {
    cudaGetLastError();
    return rc;
  }
  return cached_plan<Ty>(device, dtype, B, H, P, bwd, proj, p, ncta);
}

// Launches kernel(args) cooperatively; a projection's exchange workspace (bytes, or 0) is taken
// from the stream-ordered pool for the launch and handed back after it.
template <class Args, class SetWs>
int launch(const void* kernel, Args args, const Plan& p, int ncta, int64_t ws_bytes,
           SetWs&& set_ws, cudaStream_t st) {
  void* ws = nullptr;
  if (ws_bytes > 0) {
    const cudaError_t e = cudaMallocAsync(&ws, static_cast<size_t>(ws_bytes), st);
    if (e != cudaSuccess) return static_cast<int>(e);
    set_ws(args, ws);
  }
  void* params[] = {&args};
  const cudaError_t e = cudaLaunchCooperativeKernel(kernel, dim3(static_cast<unsigned>(ncta)),
                                                    dim3(kThreads), params,
                                                    static_cast<size_t>(p.total), st);
  if (ws != nullptr) {
    const cudaError_t f = cudaFreeAsync(ws, st);
    if (e == cudaSuccess) return static_cast<int>(f);
  }
  return static_cast<int>(e);
}

// dst = src, or zeros when src is null (T == 0 leaves the state as given).
int copy_or_zero(void* dst, const void* src, int64_t bytes, cudaStream_t st) {
  if (bytes == 0) return kOk;
  return static_cast<int>(src != nullptr
                              ? cudaMemcpyAsync(dst, src, static_cast<size_t>(bytes),
                                                cudaMemcpyDeviceToDevice, st)
                              : cudaMemsetAsync(dst, 0, static_cast<size_t>(bytes), st));
}

int elem_size(int dtype) { return dtype == 1 ? 8 : dtype == 0 ? 4 : 2; }

}  // namespace

int lstm_fwd(const void* gx, const void* w_hh, const void* w_hr, const void* h0, const void* c0,
             const int64_t* lengths, void* y, void* gates, void* c_all, void* hT, void* cT,
             int64_t T, int64_t B, int64_t H, int64_t P, bool reverse, int dtype,
             void* stream) {
  if (T < 0 || B < 0 || H < 0 || P < 0 || dtype < 0 || dtype > 3) return kInvalid;
  if (B == 0) return kOk;
  if (H < 1 || P < 1 || (w_hr == nullptr && P != H)) return kInvalid;
  if (hT == nullptr || cT == nullptr || (gates == nullptr) != (c_all == nullptr)) return kInvalid;
  const auto st = static_cast<cudaStream_t>(stream);
  if (T == 0) {
    const int es = elem_size(dtype);
    const int rc = copy_or_zero(hT, h0, B * P * es, st);
    return rc != kOk ? rc : copy_or_zero(cT, c0, B * H * es, st);
  }
  if (gx == nullptr || w_hh == nullptr || y == nullptr) return kInvalid;
  const bool proj = w_hr != nullptr;
  return with_dtype(dtype, [&](auto tag) {
    using Ty = typename decltype(tag)::type;
    using A = dev::acc_t<Ty>;
    Plan p;
    int ncta = 0;
    const int rc = current_plan<Ty>(dtype, B, H, P, false, proj, &p, &ncta);
    if (rc != kOk) return rc;
    const FwdArgs<Ty> a{static_cast<const Ty*>(gx), static_cast<const Ty*>(w_hh),
                        static_cast<const Ty*>(w_hr), static_cast<const Ty*>(h0),
                        static_cast<const Ty*>(c0), lengths, static_cast<Ty*>(y),
                        static_cast<A*>(gates), static_cast<A*>(c_all), static_cast<Ty*>(hT),
                        static_cast<Ty*>(cT), nullptr, T, reverse, p};
    const auto set_ws = [](FwdArgs<Ty>& x, void* ws) { x.htw = static_cast<Ty*>(ws); };
    return launch(kernel_of<Ty>(false, proj), a, p, ncta,
                  proj ? B * H * static_cast<int64_t>(sizeof(Ty)) : 0, set_ws, st);
  });
}

int lstm_bwd(const void* w_hh, const void* w_hr, const void* c0, const int64_t* lengths,
             const void* gates, const void* c_all, const void* dy, const void* dhT,
             const void* dcT, void* dgx, void* dh0, void* dc0, void* dh_all, int64_t T,
             int64_t B, int64_t H, int64_t P, bool reverse, int dtype, void* stream) {
  if (T < 0 || B < 0 || H < 0 || P < 0 || dtype < 0 || dtype > 3) return kInvalid;
  if (B == 0) return kOk;
  if (H < 1 || P < 1 || (w_hr == nullptr && P != H)) return kInvalid;
  if (dh0 == nullptr || dc0 == nullptr) return kInvalid;
  const auto st = static_cast<cudaStream_t>(stream);
  if (T == 0) {
    const int es = elem_size(dtype);
    const int rc = copy_or_zero(dh0, dhT, B * P * es, st);
    return rc != kOk ? rc : copy_or_zero(dc0, dcT, B * H * es, st);
  }
  if (w_hh == nullptr || gates == nullptr || c_all == nullptr || dgx == nullptr) return kInvalid;
  const bool proj = w_hr != nullptr;
  return with_dtype(dtype, [&](auto tag) {
    using Ty = typename decltype(tag)::type;
    using A = dev::acc_t<Ty>;
    Plan p;
    int ncta = 0;
    const int rc = current_plan<Ty>(dtype, B, H, P, true, proj, &p, &ncta);
    if (rc != kOk) return rc;
    const BwdArgs<Ty> a{static_cast<const Ty*>(w_hh), static_cast<const Ty*>(w_hr),
                        static_cast<const Ty*>(c0), lengths, static_cast<const A*>(gates),
                        static_cast<const A*>(c_all), static_cast<const Ty*>(dy),
                        static_cast<const Ty*>(dhT), static_cast<const Ty*>(dcT),
                        static_cast<Ty*>(dgx), static_cast<Ty*>(dh0), static_cast<Ty*>(dc0),
                        static_cast<Ty*>(dh_all), nullptr, T, reverse, p};
    const auto set_ws = [](BwdArgs<Ty>& x, void* ws) { x.dhx = static_cast<A*>(ws); };
    return launch(kernel_of<Ty>(true, proj), a, p, ncta,
                  proj ? B * P * static_cast<int64_t>(sizeof(A)) : 0, set_ws, st);
  });
}

int lstm_persistent_fits(int64_t B, int64_t H, int64_t P, int dtype, int device,
                         bool projection) {
  if (B < 1 || H < 1 || P < 1 || device < 0 || dtype < 0 || dtype > 3) return 0;
  if (!projection && P != H) return 0;
  int prev = 0;
  if (cudaGetDevice(&prev) != cudaSuccess) {
    cudaGetLastError();
    return 0;
  }
  if (prev != device && cudaSetDevice(device) != cudaSuccess) {
    cudaGetLastError();
    return 0;
  }
  const int rc = with_dtype(dtype, [&](auto tag) {
    using Ty = typename decltype(tag)::type;
    Plan p;
    int ncta = 0;
    for (int bwd = 0; bwd < 2; ++bwd)
      for (int proj = projection ? 1 : 0; proj >= 0; --proj) {
        // Without w_hr P == H, so the no-projection kernels need checking only then.
        if (!proj && P != H) continue;
        const int r = cached_plan<Ty>(device, dtype, B, H, P, bwd != 0, proj != 0, &p, &ncta);
        if (r != kOk) return r;
      }
    return kOk;
  });
  if (prev != device) cudaSetDevice(prev);
  cudaGetLastError();
  return rc == kOk ? 1 : 0;
}

}  // namespace genfast::cuda
