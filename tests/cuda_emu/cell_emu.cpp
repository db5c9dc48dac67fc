// Host emulation of the GEMM path's fused LSTM cells (cell_fwd_kernel / cell_bwd_kernel of
// csrc/cuda/lstm_cell.cu): every thread of the launch runs in turn (the kernels share nothing
// between threads), checked against the contract's equations in double for the active and the
// inactive rows, on the vector (aligned, H % 4 == 0) and the elementwise paths, for every dtype.
// lstm_cell.cu also holds the host launchers (<<<...>>>, which g++ cannot parse), so
// tests/test_lstm_cuda_emu.py copies its kernel namespace, as it is in the checkout, into
// lstm_cell_kernels.inc in the build directory. Prints one line per case and "<n> failures";
// exits non-zero when n > 0.
#include "emu_shim.h"

#include <cstdio>
#include <random>
#include <type_traits>
#include <vector>

#include "cuda/causal_conv.cuh"
#include "cuda/common.cuh"

// Kernels become plain functions, called once per emulated thread.
#undef __global__
#define __global__
#undef __launch_bounds__
#define __launch_bounds__(...)
#include "lstm_cell_kernels.inc"

using namespace genfast::cuda;

template <typename Ty>
double to_d(Ty v) {
  if constexpr (std::is_same_v<Ty, __half>) return __half2float(v);
  else if constexpr (std::is_same_v<Ty, __nv_bfloat16>) return __bfloat162float(v);
  else return double(v);
}
template <typename Ty>
Ty from_d(double v) {
  if constexpr (std::is_same_v<Ty, __half>) return __float2half_rn(float(v));
  else if constexpr (std::is_same_v<Ty, __nv_bfloat16>) return __float2bfloat16_rn(float(v));
  else return Ty(v);
}
double sigm(double v) { return 1 / (1 + std::exp(-v)); }

// Relative-or-absolute error; NaN counts as infinitely far.
struct Err {
  double m = 0;
  void add(double got, double want) {
    const double d = std::fabs(got - want) / (1 + std::fabs(want));
    m = d <= m ? m : (std::isnan(d) ? INFINITY : d);
  }
};

// Runs one launch of `total` threads in blocks of kThreads, as the launcher sizes it.
template <class F>
void launch(int64_t total, F&& body) {
  const int nb = int((total + kThreads - 1) / kThreads);
  gridDim.x = nb;
  for (int b = 0; b < nb; ++b) {
    blockIdx.x = b;
    for (int t = 0; t < kThreads; ++t) threadIdx.x = t, body();
  }
}

int failures = 0;

// aligned false offsets every buffer by one element: the launcher then picks the elementwise
// path (as it does for any H % 4 != 0). Sequence b is active at step t = 1 iff b % 3 > 1.
template <typename Ty>
void run(int B, int H, bool lens, bool aligned, bool save, bool cprev, double tol, unsigned seed) {
  using A = dev::acc_t<Ty>;
  std::mt19937 g(seed);
  std::uniform_real_distribution<double> u(-2, 2);
  const int off = aligned ? 0 : 1;
  std::vector<Ty> Gb(B * 4 * H + off), htb(B * H + off, from_d<Ty>(9)), dhtb(B * H + off),
      dGb(B * 4 * H + off, from_d<Ty>(9));
  std::vector<A> cs(B * H), gt(B * 4 * H, A(7)), ct(B * H, A(7)), dcs(B * H), cp(B * H);
  for (auto& x : Gb) x = from_d<Ty>(u(g));
  for (auto& x : dhtb) x = from_d<Ty>(u(g));
  for (auto* v : {&cs, &dcs, &cp})
    for (auto& x : *v) x = A(u(g));
  std::vector<int64_t> L(B);
  for (int b = 0; b < B; ++b) L[b] = b % 3;
  const int64_t t = 1;
  const Ty* G = Gb.data() + off;
  Ty *ht = htb.data() + off, *dht = dhtb.data() + off, *dG = dGb.data() + off;
  const bool vec = aligned && H % 4 == 0;
  const auto cs0 = cs, dcs0 = dcs;
  const int64_t nq = (H + 3) / 4, total = B * nq;
  const int64_t* len = lens ? L.data() : nullptr;
  launch(total, [&] {
    cell_fwd_kernel<Ty>(G, cs.data(), save ? gt.data() : nullptr, save ? ct.data() : nullptr, ht,
                        len, t, H, nq, total, vec);
  });
  Err ef;
  for (int b = 0; b < B; ++b)
    for (int j = 0; j < H; ++j) {
      const Ty* gr = G + b * 4 * H;
      const double i = sigm(to_d(gr[j])), f = sigm(to_d(gr[H + j]));
      const double gg = std::tanh(to_d(gr[2 * H + j])), o = sigm(to_d(gr[3 * H + j]));
      const double c = f * cs0[b * H + j] + i * gg, h = o * std::tanh(c);
      const bool act = !lens || t < L[b];
      ef.add(cs[b * H + j], act ? c : cs0[b * H + j]);  // inactive: state unchanged, ht = 0
      ef.add(to_d(ht[b * H + j]), act ? h : 0);
      if (!save) continue;
      const double want[5] = {i, f, gg, o, c};  // inactive: gates_t / c_t untouched
      for (int k = 0; k < 4; ++k) ef.add(gt[b * 4 * H + k * H + j], act ? want[k] : 7);
      ef.add(ct[b * H + j], act ? c : 7);
    }
  // The backward from the gates and c the forward saved.
  Err eb;
  if (save) {
    launch(total, [&] {
      cell_bwd_kernel<Ty>(dht, dcs.data(), gt.data(), ct.data(), cprev ? cp.data() : nullptr, dG,
                          len, t, H, nq, total, vec);
    });
    for (int b = 0; b < B; ++b)
      for (int j = 0; j < H; ++j) {
        const A* gr = gt.data() + b * 4 * H;
        const double i = gr[j], f = gr[H + j], gg = gr[2 * H + j], o = gr[3 * H + j];
        const double tc = std::tanh(double(ct[b * H + j])), dh = to_d(dht[b * H + j]);
        const double c_p = cprev ? cp[b * H + j] : 0;
        const double x = dcs0[b * H + j] + dh * o * (1 - tc * tc);
        const double want[4] = {x * gg * i * (1 - i), x * c_p * f * (1 - f),
                                x * i * (1 - gg * gg), dh * tc * o * (1 - o)};
        const bool act = !lens || t < L[b];  // inactive: dG = 0, dc unchanged
        for (int k = 0; k < 4; ++k) eb.add(to_d(dG[b * 4 * H + k * H + j]), act ? want[k] : 0);
        eb.add(dcs[b * H + j], act ? x * f : dcs0[b * H + j]);
      }
  }
  const bool ok = ef.m <= tol && eb.m <= tol;
  failures += !ok;
  std::printf("%s %zu-byte B%d H%d lens%d vec%d save%d cprev%d: fwd %.1e bwd %.1e\n",
              ok ? "ok  " : "FAIL", sizeof(Ty), B, H, lens, vec, save, cprev, ef.m, eb.m);
}

int main() {
  run<float>(5, 8, true, true, true, true, 1e-5, 1);
  run<float>(5, 7, true, true, true, false, 1e-5, 2);
  run<float>(3, 8, false, false, true, true, 1e-5, 3);
  run<double>(4, 12, true, true, true, true, 1e-12, 4);
  run<double>(4, 6, false, true, false, true, 1e-12, 5);
  run<float>(70, 16, true, true, true, true, 1e-5, 6);  // 280 quads: two blocks of threads
  // 16-bit data (work dtype float): ht and dG round once to the data dtype.
  run<__half>(6, 8, true, true, true, true, 2e-3, 7);
  run<__half>(6, 9, true, true, true, false, 2e-3, 8);
  run<__nv_bfloat16>(6, 8, true, false, true, true, 1e-2, 9);
  run<__nv_bfloat16>(6, 12, false, true, true, true, 1e-2, 10);
  std::printf("%d failures\n", failures);
  return failures != 0;
}
