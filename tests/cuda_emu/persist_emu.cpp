// Host emulation of the persistent LSTM kernels (csrc/cuda/lstm_persist.cuh and
// lstm_persist_body.cuh, included as they are): every CTA thread is a std::thread and
// std::barriers stand in for __syncthreads, grid.sync and the warp shuffles, so the real device
// bodies run on the CPU. Each configuration's forward and backward is compared with a plain
// double-precision loop of the contract's equations (issue-9 design, section 1). Prints one line
// per check and "<n> failures"; exits non-zero when n > 0. Built and run by
// tests/test_lstm_cuda_emu.py.
#define GENFAST_LSTM_EMU 1  // lstm_persist.cuh then leaves the primitives below to us
#include "emu_shim.h"

#include <algorithm>
#include <barrier>
#include <cstdio>
#include <functional>
#include <memory>
#include <random>
#include <thread>
#include <type_traits>
#include <vector>

namespace genfast::cuda::lstm_dev {
// 64 threads (two warps) instead of the GPU's 256: the bodies are written for any multiple of
// 32, and fewer OS threads keep the emulation fast on a small CI machine.
constexpr int kThreads = 64;
struct Cta {
  std::unique_ptr<std::barrier<>> block;
  std::vector<std::unique_ptr<std::barrier<>>> warps;
  std::vector<double> lanes;  // two slots per thread: the shuffle's exchange
  std::vector<unsigned char> shared;
};
thread_local int t_tid, t_cta;
thread_local Cta* t_c;
thread_local std::barrier<>* t_grid;
inline int tid() { return t_tid; }
inline int cta() { return t_cta; }
inline void block_sync() { t_c->block->arrive_and_wait(); }
inline void grid_sync() { t_grid->arrive_and_wait(); }
// Lanes publish their value in one of two slot sets, alternating per call: a lane can only be
// writing a set again after the barrier of the call in between, which every reader of that set
// reached after its read. One barrier per shuffle instead of two.
thread_local int t_parity;
template <typename A>
A warp_xor(A v, int m) {
  const int w = t_tid >> 5, l = t_tid & 31;
  double* slots = t_c->lanes.data() + t_parity * kThreads + w * 32;
  t_parity ^= 1;
  slots[l] = static_cast<double>(v);  // exact for every work dtype
  t_c->warps[w]->arrive_and_wait();
  return static_cast<A>(slots[l ^ m]);
}
inline unsigned char* smem() { return t_c->shared.data(); }
}  // namespace genfast::cuda::lstm_dev

#include "cuda/lstm_persist.cuh"

using namespace genfast::cuda::lstm_dev;

void run_grid(int ncta, int64_t smem_bytes, const std::function<void()>& body) {
  std::vector<Cta> ctas(ncta);
  std::barrier<> grid(ncta * kThreads);
  for (auto& c : ctas) {
    c.block = std::make_unique<std::barrier<>>(kThreads);
    for (int w = 0; w < kThreads / 32; ++w) c.warps.push_back(std::make_unique<std::barrier<>>(32));
    c.lanes.assign(2 * kThreads, 0.0);
    c.shared.assign(smem_bytes, 0xCD);  // garbage: the kernel must not read what it did not write
  }
  std::vector<std::thread> threads;
  for (int c = 0; c < ncta; ++c)
    for (int t = 0; t < kThreads; ++t)
      threads.emplace_back([&, c, t] {
        t_tid = t, t_cta = c, t_c = &ctas[c], t_grid = &grid, t_parity = 0;
        body();
      });
  for (auto& th : threads) th.join();
}

struct Prob {
  int T, B, H, P;
  bool proj, reverse, has_len, has_h0, has_c0, save, has_dy, has_dhT, has_dcT, has_dh_all;
  std::vector<double> gx, whh, whr, h0, c0, dy, dhT, dcT;
  std::vector<int64_t> len;
  int steps(int b) const {  // active steps of sequence b (lengths clamp to [0, T])
    return has_len ? static_cast<int>(std::clamp<int64_t>(len[b], 0, T)) : T;
  }
};

struct Ref {
  std::vector<double> y, gates, c_all, hT, cT, dgx, dh0, dc0, dh_all;
};

double sigm(double v) { return 1 / (1 + std::exp(-v)); }

// The contract's forward and backward, one sequence at a time, in double.
Ref reference(const Prob& p) {
  const int T = p.T, B = p.B, H = p.H, P = p.P;
  Ref r;
  r.y.assign(size_t(T) * B * P, 0), r.gates.assign(size_t(T) * B * 4 * H, 0);
  r.c_all.assign(size_t(T) * B * H, 0), r.hT.assign(B * P, 0), r.cT.assign(B * H, 0);
  std::vector<int> order;
  for (int s = 0; s < T; ++s) order.push_back(p.reverse ? T - 1 - s : s);
  for (int b = 0; b < B; ++b) {
    std::vector<double> h(P, 0), c(H, 0), ht(H);
    if (p.has_h0) std::copy_n(&p.h0[b * P], P, h.begin());
    if (p.has_c0) std::copy_n(&p.c0[b * H], H, c.begin());
    for (int t : order) {
      if (t >= p.steps(b)) continue;
      const size_t row = size_t(t) * B + b;
      for (int j = 0; j < H; ++j) {
        double G[4];
        for (int g = 0; g < 4; ++g) {
          double s = p.gx[row * 4 * H + g * H + j];
          for (int k = 0; k < P; ++k) s += p.whh[size_t(g * H + j) * P + k] * h[k];
          G[g] = s;
        }
        const double i = sigm(G[0]), f = sigm(G[1]), gg = std::tanh(G[2]), o = sigm(G[3]);
        c[j] = f * c[j] + i * gg;
        ht[j] = o * std::tanh(c[j]);
        double* gr = &r.gates[row * 4 * H + j];
        gr[0] = i, gr[H] = f, gr[2 * H] = gg, gr[3 * H] = o;
        r.c_all[row * H + j] = c[j];
      }
      for (int k = 0; k < P; ++k) {
        double v = p.proj ? 0 : ht[k];
        if (p.proj)
          for (int j = 0; j < H; ++j) v += p.whr[size_t(k) * H + j] * ht[j];
        h[k] = r.y[row * P + k] = v;
      }
    }
    std::copy(h.begin(), h.end(), &r.hT[b * P]);
    std::copy(c.begin(), c.end(), &r.cT[b * H]);
  }
  r.dgx.assign(size_t(T) * B * 4 * H, 0), r.dh0.assign(B * P, 0), r.dc0.assign(B * H, 0);
  r.dh_all.assign(size_t(T) * B * P, 0);
  for (int b = 0; b < B; ++b) {
    std::vector<double> dh(P, 0), dc(H, 0), dht(H), dG(4 * H);
    if (p.has_dhT) std::copy_n(&p.dhT[b * P], P, dh.begin());
    if (p.has_dcT) std::copy_n(&p.dcT[b * H], H, dc.begin());
    for (int s = T - 1; s >= 0; --s) {
      const int t = order[s];
      if (t >= p.steps(b)) continue;
      const size_t row = size_t(t) * B + b;
      for (int k = 0; k < P; ++k) {
        if (p.has_dy) dh[k] += p.dy[row * P + k];
        r.dh_all[row * P + k] = dh[k];
      }
      for (int j = 0; j < H; ++j) {
        double v = p.proj ? 0 : dh[j];
        if (p.proj)
          for (int k = 0; k < P; ++k) v += dh[k] * p.whr[size_t(k) * H + j];
        dht[j] = v;
      }
      // The c before step t: c0 at the sequence's first step, else c after the previous one.
      const bool first = p.reverse ? t == p.steps(b) - 1 : t == 0;
      const size_t prev = size_t(p.reverse ? t + 1 : t - 1) * B + b;
      for (int j = 0; j < H; ++j) {
        const double* g = &r.gates[row * 4 * H + j];
        const double i = g[0], f = g[H], gg = g[2 * H], o = g[3 * H];
        const double tc = std::tanh(r.c_all[row * H + j]);
        const double cp = first ? (p.has_c0 ? p.c0[b * H + j] : 0) : r.c_all[prev * H + j];
        const double d = dc[j] + dht[j] * o * (1 - tc * tc);
        dG[j] = d * gg * i * (1 - i), dG[H + j] = d * cp * f * (1 - f);
        dG[2 * H + j] = d * i * (1 - gg * gg), dG[3 * H + j] = dht[j] * tc * o * (1 - o);
        dc[j] = d * f;
      }
      std::copy(dG.begin(), dG.end(), &r.dgx[row * 4 * H]);
      for (int k = 0; k < P; ++k) {
        double v = 0;
        for (int q = 0; q < 4 * H; ++q) v += dG[q] * p.whh[size_t(q) * P + k];
        dh[k] = v;
      }
    }
    std::copy(dh.begin(), dh.end(), &r.dh0[b * P]);
    std::copy(dc.begin(), dc.end(), &r.dc0[b * H]);
  }
  return r;
}

template <typename Ty>
Ty from_d(double v) {
  if constexpr (std::is_same_v<Ty, __half>) return __float2half_rn(float(v));
  else if constexpr (std::is_same_v<Ty, __nv_bfloat16>) return __float2bfloat16_rn(float(v));
  else return Ty(v);
}
template <typename Ty>
double to_d(Ty v) {
  if constexpr (std::is_same_v<Ty, __half>) return __half2float(v);
  else if constexpr (std::is_same_v<Ty, __nv_bfloat16>) return __bfloat162float(v);
  else return double(v);
}
template <typename Ty>
std::vector<Ty> cvt(const std::vector<double>& v) {
  std::vector<Ty> o;
  for (double x : v) o.push_back(from_d<Ty>(x));
  return o;
}
// max |a - b| over the elements where keep(i); NaN counts as infinitely far.
template <typename Ty>
double maxdiff(const std::vector<Ty>& a, const std::vector<double>& b,
               const std::function<bool(size_t)>& keep = nullptr) {
  double m = 0;
  for (size_t i = 0; i < b.size(); ++i) {
    if (keep && !keep(i)) continue;
    const double d = std::fabs(to_d(a[i]) - b[i]);
    m = d <= m ? m : (std::isnan(d) ? INFINITY : d);
  }
  return m;
}

int failures = 0;

void report(bool ok, const char* what, const Prob& p, const Plan& pl, int grid,
            const std::vector<std::pair<const char*, double>>& errs) {
  failures += !ok;
  std::printf("%s %s T%d B%d H%d P%d proj%d rev%d len%d grid%d U%d V%d S%d:", ok ? "ok  " : "FAIL",
              what, p.T, p.B, p.H, p.P, p.proj, p.reverse, p.has_len, grid, pl.U, pl.V, pl.S);
  for (const auto& [name, e] : errs) std::printf(" %s %.2e", name, e);
  std::printf("\n");
}

// sms: the emulated GPU's multiprocessors (sets the grid and ownership as csrc/cuda/lstm.cu's
// plan_for does); S: sequences staged per GEMV chunk (S < B walks the chunk loop).
template <typename Ty>
void run(const Prob& p, int sms, int S, double tol) {
  using A = acc_t<Ty>;
  const Ref r = reference(p);
  const int T = p.T, B = p.B, H = p.H, P = p.P;
  const auto gx = cvt<Ty>(p.gx), whh = cvt<Ty>(p.whh), whr = cvt<Ty>(p.whr), h0 = cvt<Ty>(p.h0),
             c0 = cvt<Ty>(p.c0), dy = cvt<Ty>(p.dy), dhT = cvt<Ty>(p.dhT), dcT = cvt<Ty>(p.dcT);
  const Ty junk = from_d<Ty>(777);  // outputs start as junk: every one must be written
  auto active = [&](size_t i, size_t row_size) {
    const size_t row = i / row_size;
    return int(row / B) < p.steps(int(row % B));
  };
  for (int bwd = 0; bwd < 2; ++bwd) {
    Plan pl{};
    const int n = std::min(H, sms);
    pl.B = B, pl.H = H, pl.P = P, pl.U = (H + n - 1) / n, pl.S = S;
    const int grid = (H + pl.U - 1) / pl.U;
    pl.V = (P + grid - 1) / grid;
    plan_layout(pl, p.proj, bwd, sizeof(Ty), sizeof(A));
    if (!bwd) {
      std::vector<Ty> y(size_t(T) * B * P, junk), hT(B * P, junk), cT(B * H, junk), htw(B * H);
      std::vector<A> gates(size_t(T) * B * 4 * H, A(777)), c_all(size_t(T) * B * H, A(777));
      FwdArgs<Ty> a{gx.data(), whh.data(), p.proj ? whr.data() : nullptr,
                    p.has_h0 ? h0.data() : nullptr, p.has_c0 ? c0.data() : nullptr,
                    p.has_len ? p.len.data() : nullptr, y.data(),
                    p.save ? gates.data() : nullptr, p.save ? c_all.data() : nullptr, hT.data(),
                    cT.data(), htw.data(), T, p.reverse, pl};
      run_grid(grid, pl.total, [&] {
        if (p.proj) fwd_body<Ty, true>(a);
        else fwd_body<Ty, false>(a);
      });
      // gates / c_all at inactive steps are unspecified; inference saves nothing.
      const double eg = p.save ? maxdiff(gates, r.gates, [&](size_t i) { return active(i, 4 * H); }) : 0;
      const double ec = p.save ? maxdiff(c_all, r.c_all, [&](size_t i) { return active(i, H); }) : 0;
      const double e[5] = {maxdiff(y, r.y), eg, ec, maxdiff(hT, r.hT), maxdiff(cT, r.cT)};
      report(std::all_of(e, e + 5, [&](double v) { return v <= tol; }), p.save ? "fwd" : "inf", p,
             pl, grid, {{"y", e[0]}, {"gates", e[1]}, {"c_all", e[2]}, {"hT", e[3]}, {"cT", e[4]}});
    } else {
      // From the reference's gates / c_all, so that this check isolates the backward.
      const auto rg = cvt<A>(r.gates), rc = cvt<A>(r.c_all);
      std::vector<Ty> dgx(size_t(T) * B * 4 * H, junk), dh0(B * P, junk), dc0(B * H, junk),
          dh_all(size_t(T) * B * P, junk);
      std::vector<A> dhx(B * P);
      BwdArgs<Ty> a{whh.data(), p.proj ? whr.data() : nullptr, p.has_c0 ? c0.data() : nullptr,
                    p.has_len ? p.len.data() : nullptr, rg.data(), rc.data(),
                    p.has_dy ? dy.data() : nullptr, p.has_dhT ? dhT.data() : nullptr,
                    p.has_dcT ? dcT.data() : nullptr, dgx.data(), dh0.data(), dc0.data(),
                    p.has_dh_all ? dh_all.data() : nullptr, dhx.data(), T, p.reverse, pl};
      run_grid(grid, pl.total, [&] {
        if (p.proj) bwd_body<Ty, true>(a);
        else bwd_body<Ty, false>(a);
      });
      // dh_all is specified at active steps only (the op zero-fills it beforehand).
      const double eh =
          p.has_dh_all ? maxdiff(dh_all, r.dh_all, [&](size_t i) { return active(i, P); }) : 0;
      const double e[4] = {maxdiff(dgx, r.dgx), maxdiff(dh0, r.dh0), maxdiff(dc0, r.dc0), eh};
      report(std::all_of(e, e + 4, [&](double v) { return v <= tol; }), "bwd", p, pl, grid,
             {{"dgx", e[0]}, {"dh0", e[1]}, {"dc0", e[2]}, {"dh_all", e[3]}});
    }
  }
}

// Optional inputs: bit 0 h0, 1 c0, 2 dy, 3 dhT, 4 dcT, 5 dh_all, 6 lengths, 7 saved gates.
Prob make(int T, int B, int H, int P, bool proj, bool reverse, unsigned opt, unsigned seed) {
  Prob p{T, B, H, P, proj, reverse, bool(opt & 64), bool(opt & 1), bool(opt & 2), bool(opt & 128),
         bool(opt & 4), bool(opt & 8), bool(opt & 16), bool(opt & 32)};
  std::mt19937 g(seed);
  std::uniform_real_distribution<double> u(-1, 1);
  auto fill = [&](std::vector<double>& v, size_t n, double s) {
    v.resize(n);
    for (auto& x : v) x = u(g) * s;
  };
  fill(p.gx, size_t(T) * B * 4 * H, 1), fill(p.whh, size_t(4) * H * P, 0.6);
  fill(p.whr, size_t(P) * H, 0.6), fill(p.h0, B * P, 1), fill(p.c0, B * H, 1);
  fill(p.dy, size_t(T) * B * P, 1), fill(p.dhT, B * P, 1), fill(p.dcT, B * H, 1);
  // Sequence 0 runs all steps, 1 none, 2 asks for more than T (clamped), the rest at random.
  p.len.resize(B);
  for (int b = 0; b < B; ++b) p.len[b] = b == 0 ? T : b == 1 ? 0 : b == 2 ? T + 5 : g() % (T + 1);
  return p;
}

int main() {
  constexpr unsigned all = 255, no_len = 255 & ~64u;
  unsigned seed = 1;
  // B = 1, no lengths; H = 5 over 3 CTAs of U = 2 units: a partial last CTA.
  run<double>(make(4, 1, 5, 5, false, false, no_len, seed++), 3, 4, 1e-12);
  // reverse, lengths, S < B (two staging chunks), no h0 / dhT.
  run<double>(make(5, 6, 7, 7, false, true, all & ~1u & ~8u, seed++), 3, 4, 1e-12);
  // inference (nothing saved), no dy / dcT / dh_all, no h0.
  run<double>(make(5, 6, 7, 7, false, false, 2 | 8 | 64, seed++), 2, 8, 1e-12);
  // projection P < H, reverse, nothing optional but lengths, dy and the saved gates.
  run<double>(make(4, 9, 6, 4, true, true, 64 | 128 | 4, seed++), 3, 4, 1e-12);
  // GEMVs over K > 32 lanes x 4 (rounds per lane and a tail): the backward's K = 4H = 144 here,
  // the projection's forward K = P = 130 next.
  run<double>(make(2, 5, 36, 36, false, true, all, seed++), 3, 4, 1e-12);
  run<double>(make(2, 5, 8, 130, true, false, all, seed++), 3, 4, 1e-12);
  // projection with P > H; then P = 2 over 5 CTAs (V = 1: three CTAs own no output column).
  run<double>(make(3, 4, 40, 67, true, true, all, seed++), 3, 4, 1e-12);
  run<double>(make(3, 5, 9, 2, true, false, no_len, seed++), 5, 8, 1e-12);
  // 16- and 32-bit data dtypes (work dtype float).
  run<float>(make(5, 6, 7, 7, false, true, all, seed++), 3, 4, 1e-5);
  run<float>(make(4, 5, 6, 3, true, false, all, seed++), 2, 4, 1e-5);
  run<__half>(make(4, 5, 9, 9, false, true, all, seed++), 3, 4, 5e-3);
  run<__nv_bfloat16>(make(4, 5, 10, 6, true, false, all, seed++), 3, 4, 3e-2);
  std::printf("%d failures\n", failures);
  return failures != 0;
}
