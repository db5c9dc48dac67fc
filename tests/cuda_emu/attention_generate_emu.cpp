// Host emulation of the CUDA GPT sampling loop (csrc/cuda/attention_generate_dev.cuh, included
// as it is, with the `sample` family's block draw of draw_block.cuh): every CTA thread is a
// fiber, barriers that park fibers stand in for grid.sync, __syncthreads, __syncwarp and the
// warp shuffles, so the real device body runs on the CPU with any grid size, group size and pass
// chunk. Reads one case from the file argv[1] (whitespace-separated: dtype L V C Hh T B N start
// keep seed inv_temperature top_k top_p ncta chunk group global_draw, the packed weights as float64, the
// B x N tokens) and prints "tokens" and the B x N tokens, then "logits" and the B x V logits of
// the last draw. Built and run by tests/test_attention_generate_cuda_emu.py, which compares
// them with GPTNet.generate and the teacher-forced forward.
#define GENFAST_AGEN_EMU 1
#include <cuda_runtime.h>

#include <ucontext.h>

#include <deque>
#include <functional>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <memory>
#include <type_traits>
#include <vector>

// ---- the CUDA built-ins the device body and common.cuh use, per emulated thread ----------
inline float __int_as_float(int v) { float f; std::memcpy(&f, &v, 4); return f; }
inline unsigned __float_as_uint(float v) { unsigned u; std::memcpy(&u, &v, 4); return u; }
inline double __longlong_as_double(long long v) { double f; std::memcpy(&f, &v, 8); return f; }
inline long long __double_as_longlong(double v) { long long u; std::memcpy(&u, &v, 8); return u; }
template <typename T>
T __ldg(const T* p) { return *p; }
template <typename T>
T __ldcg(const T* p) { return *p; }

// The emulated threads are fibers (ucontext) run one at a time on this thread: a barrier parks
// the fiber until the last one arrives, so a step costs two context switches a thread and the
// run does not depend on the OS scheduler (hundreds of OS threads on a loaded 2-core machine
// spend their time waking each other).
uint3 threadIdx, blockIdx;
dim3 gridDim;

struct Fiber {
  ucontext_t ctx;
  std::unique_ptr<char[]> stack;
  unsigned cta, tid;
  int parity = 0;
  bool done = false;
};
struct Barrier {
  size_t count;
  std::vector<size_t> parked;
};
struct EmuCta {
  Barrier block;
  std::vector<Barrier> warps;
  std::vector<uint64_t> lanes;  // two slot sets per warp: the shuffle's exchange
  std::unique_ptr<unsigned char[]> shared;
};
std::vector<Fiber> g_fibers;
std::deque<size_t> g_ready;
std::vector<EmuCta> g_ctas;
Barrier g_grid;
ucontext_t g_main;
size_t g_cur;

void arrive_and_wait(Barrier& b) {
  if (b.parked.size() + 1 == b.count) {  // the last one: release the others, keep running
    for (size_t i : b.parked) g_ready.push_back(i);
    b.parked.clear();
    return;
  }
  b.parked.push_back(g_cur);
  swapcontext(&g_fibers[g_cur].ctx, &g_main);
}

inline void __syncthreads() { arrive_and_wait(g_ctas[blockIdx.x].block); }
inline void __syncwarp() { arrive_and_wait(g_ctas[blockIdx.x].warps[threadIdx.x >> 5]); }
// Lanes publish in one of two slot sets, alternating per call: a lane writes a set again only
// after the barrier of the call in between, which every reader of that set passed after reading.
template <typename T>
T __shfl_xor_sync(unsigned, T v, int m) {
  static_assert(sizeof(T) <= 8);
  const int w = static_cast<int>(threadIdx.x >> 5), l = static_cast<int>(threadIdx.x & 31);
  int& parity = g_fibers[g_cur].parity;
  uint64_t* slots = g_ctas[blockIdx.x].lanes.data() + (w * 2 + parity) * 32;
  parity ^= 1;
  uint64_t bits = 0;
  std::memcpy(&bits, &v, sizeof(T));
  slots[l] = bits;
  __syncwarp();
  T out;
  std::memcpy(&out, &slots[l ^ m], sizeof(T));
  return out;
}

namespace genfast::cuda::agen {
// 64 threads (two warps) instead of the GPU's 256: every loop strides by kThreads / kWarps, and
// fewer OS threads keep the emulation fast on a small machine.
constexpr int kThreads = 64;
inline void grid_sync() { arrive_and_wait(g_grid); }
inline unsigned char* smem() { return g_ctas[blockIdx.x].shared.get(); }
}  // namespace genfast::cuda::agen

#include "cuda/attention_generate_dev.cuh"

using namespace genfast::cuda;
using agen::kThreads;

template <typename Ty>
Ty from_d(double v) {
  if constexpr (std::is_same_v<Ty, __half>) return __float2half_rn(static_cast<float>(v));
  else if constexpr (std::is_same_v<Ty, __nv_bfloat16>)
    return __float2bfloat16_rn(static_cast<float>(v));
  else return static_cast<Ty>(v);
}

struct Case {
  int dtype;
  int64_t L, V, C, Hh, T, B, N, start, keep;
  long long seed;
  double inv_temp;
  int64_t top_k;
  double top_p;
  int ncta, group, global_draw;
  int64_t chunk;
  std::vector<double> w;
  std::vector<int64_t> tokens;
};

template <typename Ty, int kG>
void run(Case& c) {
  using A = dev::acc_t<Ty>;
  const int64_t D = c.C / c.Hh, M = c.B * c.chunk;
  std::vector<Ty> w(c.w.size());
  for (size_t i = 0; i < w.size(); ++i) w[i] = from_d<Ty>(c.w[i]);
  const A nan = std::numeric_limits<A>::quiet_NaN();  // workspaces start as NaN: read = written
  std::vector<A> kc(c.L * c.B * c.Hh * c.T * D, nan), vc(kc.size(), nan);
  std::vector<A> ws(M * 7 * c.C + c.B * c.V, nan);
  agen::Args<Ty> a{};
  a.w = w.data(), a.tokens = c.tokens.data(), a.kc = kc.data(), a.vc = vc.data();
  a.X = ws.data(), a.Q = a.X + M * c.C, a.Y = a.Q + M * c.C, a.Hb = a.Y + M * c.C;
  a.lg = a.Hb + M * 4 * c.C;
  std::vector<A> dbuf(c.global_draw ? c.B * c.V : 0, nan);
  a.dbuf = c.global_draw ? dbuf.data() : nullptr;
  a.L = c.L, a.V = c.V, a.C = c.C, a.Hh = c.Hh, a.T = c.T, a.D = D, a.B = c.B, a.N = c.N;
  a.start = c.start, a.keep = c.keep, a.chunk = c.chunk;
  a.scale = static_cast<A>(1.0 / std::sqrt(static_cast<double>(D)));
  const int64_t seed = c.seed;
  a.seed = &seed;
  a.dr = draw_block::make_draw<A>(c.inv_temp, c.top_k, c.top_p, c.V);
  // Shared memory as the launcher sizes it (kVecOffset + the largest use), filled with 0xFF.
  int64_t n = kG * 4 * c.C;
  n = std::max<int64_t>(n, D + agen::kWarps * 32 + agen::kWarps * D + 2 * agen::kWarps);
  if (!c.global_draw) n = std::max<int64_t>(n, c.V);
  const int64_t bytes = agen::kVecOffset + n * static_cast<int64_t>(sizeof(A));
  g_ctas.clear();
  g_ctas.resize(c.ncta);
  g_grid = Barrier{static_cast<size_t>(c.ncta) * kThreads, {}};
  for (auto& e : g_ctas) {
    e.block = Barrier{kThreads, {}};
    e.warps.assign(kThreads / 32, Barrier{32, {}});
    e.lanes.assign(2 * kThreads, 0);
    e.shared.reset(new (std::align_val_t(16)) unsigned char[bytes]);
    std::memset(e.shared.get(), 0xFF, bytes);
  }
  static std::function<void()> body;
  body = [&] { agen::generate_body<Ty, kG>(a); };
  const size_t nf = static_cast<size_t>(c.ncta) * kThreads;
  g_fibers = std::vector<Fiber>(nf);
  constexpr size_t kStack = 256 * 1024;
  for (size_t i = 0; i < nf; ++i) {
    Fiber& f = g_fibers[i];
    f.cta = static_cast<unsigned>(i / kThreads), f.tid = static_cast<unsigned>(i % kThreads);
    f.stack.reset(new char[kStack]);
    getcontext(&f.ctx);
    f.ctx.uc_stack.ss_sp = f.stack.get();
    f.ctx.uc_stack.ss_size = kStack;
    f.ctx.uc_link = &g_main;  // a finished fiber returns to the scheduler
    makecontext(&f.ctx, +[] {
      body();
      g_fibers[g_cur].done = true;
    }, 0);
    g_ready.push_back(i);
  }
  gridDim = dim3(static_cast<unsigned>(c.ncta));
  size_t finished = 0;
  while (!g_ready.empty()) {
    g_cur = g_ready.front();
    g_ready.pop_front();
    threadIdx = uint3{g_fibers[g_cur].tid, 0, 0};
    blockIdx = uint3{g_fibers[g_cur].cta, 0, 0};
    swapcontext(&g_main, &g_fibers[g_cur].ctx);
    finished += g_fibers[g_cur].done;  // else it parked at a barrier
  }
  if (finished != nf) {
    std::printf("deadlock: %zu of %zu threads finished\n", finished, nf);
    std::exit(4);
  }
  std::printf("tokens");
  for (int64_t v : c.tokens) std::printf(" %lld", static_cast<long long>(v));
  std::printf("\nlogits");
  for (int64_t i = 0; i < c.B * c.V; ++i) std::printf(" %.17g", static_cast<double>(a.lg[i]));
  std::printf("\n");
}

template <typename Ty>
void run_group(Case& c) {
  switch (c.group) {
    case 1: run<Ty, 1>(c); break;
    case 2: run<Ty, 2>(c); break;
    default: run<Ty, 4>(c); break;
  }
}

int main(int argc, char** argv) {
  if (argc != 2) return 2;
  FILE* f = std::fopen(argv[1], "r");
  if (f == nullptr) return 2;
  Case c{};
  long long v[10];
  if (std::fscanf(f, "%d %lld %lld %lld %lld %lld %lld %lld %lld %lld", &c.dtype, &v[0], &v[1],
                  &v[2], &v[3], &v[4], &v[5], &v[6], &v[7], &v[8]) != 10)
    return 3;
  c.L = v[0], c.V = v[1], c.C = v[2], c.Hh = v[3], c.T = v[4], c.B = v[5], c.N = v[6];
  c.start = v[7], c.keep = v[8];
  long long top_k = 0, chunk = 0;
  if (std::fscanf(f, "%lld %lf %lld %lf %d %lld %d %d", &c.seed, &c.inv_temp, &top_k, &c.top_p,
                  &c.ncta, &chunk, &c.group, &c.global_draw) != 8)
    return 3;
  c.top_k = top_k, c.chunk = chunk;
  const int64_t nw = c.V * c.C + c.T * c.C + c.L * (12 * c.C * c.C + 13 * c.C) + 2 * c.C +
                     c.V * c.C;
  c.w.resize(nw);
  for (auto& x : c.w)
    if (std::fscanf(f, "%lf", &x) != 1) return 3;
  c.tokens.resize(c.B * c.N);
  for (auto& t : c.tokens) {
    long long x;
    if (std::fscanf(f, "%lld", &x) != 1) return 3;
    t = x;
  }
  std::fclose(f);
  switch (c.dtype) {
    case 0: run_group<float>(c); break;
    case 1: run_group<double>(c); break;
    case 2: run_group<__half>(c); break;
    default: run_group<__nv_bfloat16>(c); break;
  }
  return 0;
}
