// Host emulation of the fused-attention CUDA kernels (csrc/cuda/attention*_dev.cuh, included as
// they are, and the launch plans of attention_plan.cuh that the launchers use): each CTA's
// threads are std::threads, a std::barrier stands in for __syncthreads, and the grid is capped
// at a few CTAs so every kernel's grid-stride loop runs several work items per CTA. Shared
// memory starts as NaN bytes, so a read of a tile element nobody wrote poisons the result.
// Each case runs the forward (key-split decode where the plan splits), the backward and, without
// pooling, the double backward, launched in the launchers' order, and compares every output
// (outputs prefilled with NaN: every element must be written) with a float64 loop of the
// contract's math. That loop is itself checked against central differences: the backward
// against the forward, the double backward against the backward. Prints one line per case and
// "<n> failures"; exits non-zero when n > 0. Built and run by tests/test_attention_cuda_emu.py.
#define GENFAST_ATTENTION_EMU 1
#include "emu_shim.h"

#include <algorithm>
#include <barrier>
#include <cstdio>
#include <thread>
#include <type_traits>
#include <vector>

namespace genfast::cuda::attn_dev {
// 32 threads instead of the GPU's 128: the bodies stride every loop by kThreads, and fewer OS
// threads keep the emulation fast on a small machine.
constexpr int kThreads = 32;
thread_local int t_tid;
thread_local int64_t t_cta;
inline int64_t g_ncta;
inline std::barrier<>* g_block;
inline unsigned char* g_smem;
inline int tid() { return t_tid; }
inline int64_t cta() { return t_cta; }
inline int64_t ncta() { return g_ncta; }
inline void block_sync() { g_block->arrive_and_wait(); }
inline unsigned char* smem() { return g_smem; }
}  // namespace genfast::cuda::attn_dev

#include "cuda/attention_bwd2_dev.cuh"
#include "cuda/attention_fwd_dev.cuh"
#include "cuda/attention_plan.cuh"

#include "attention_emu_ref.h"

using namespace genfast::cuda::attn_dev;

int failures = 0;

// One launch: min(grid, cap) CTAs run one after another, each as kThreads threads.
template <class F>
void launch(unsigned grid, int64_t smem_bytes, F&& body) {
  if (smem_bytes > kSmemBudget) {
    std::printf("FAIL plan asks %lld bytes of shared memory\n", static_cast<long long>(smem_bytes));
    ++failures;
    return;
  }
  const int64_t n = std::min<int64_t>(grid, 3);
  g_ncta = n;
  std::vector<unsigned char> sm(static_cast<size_t>(smem_bytes) + 16);
  for (int64_t c = 0; c < n; ++c) {
    std::fill(sm.begin(), sm.end(), 0xFF);  // NaN in every float type
    std::barrier<> bar(kThreads);
    g_block = &bar, g_smem = sm.data();
    std::vector<std::thread> th;
    for (int t = 0; t < kThreads; ++t)
      th.emplace_back([&, t, c] {
        t_tid = t, t_cta = c;
        body();
      });
    for (auto& x : th) x.join();
  }
}

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
template <typename Ty>
std::vector<Ty> cast(const std::vector<double>& x) {
  std::vector<Ty> y(x.size());
  for (size_t i = 0; i < x.size(); ++i) y[i] = from_d<Ty>(x[i]);
  return y;
}
template <typename Ty>
std::vector<double> back(const std::vector<Ty>& x) {
  std::vector<double> y(x.size());
  for (size_t i = 0; i < x.size(); ++i) y[i] = to_d(x[i]);
  return y;
}

// A strided copy of a (BH, rows, D) tensor: row stride D + 3, head stride rows_cap * (D + 3)
// (a KV-cache buffer of rows_cap >= rows rows), batch stride Hh heads + 5 elements.
struct Strided {
  int64_t sb, sh, sn;
  size_t size;
};
Strided strided(int64_t B, int64_t Hh, int64_t rows_cap, int64_t D) {
  const int64_t sn = D + 3, sh = rows_cap * sn, sb = Hh * sh + 5;
  return {sb, sh, sn, static_cast<size_t>(B * sb)};
}
template <typename Ty>
std::vector<Ty> scatter(const std::vector<Ty>& x, int64_t B, int64_t Hh, int64_t rows, int64_t D,
                        const Strided& s) {
  std::vector<Ty> y(s.size, from_d<Ty>(NAN));
  for (int64_t b = 0; b < B; ++b)
    for (int64_t h = 0; h < Hh; ++h)
      for (int64_t r = 0; r < rows; ++r)
        for (int64_t d = 0; d < D; ++d)
          y[b * s.sb + h * s.sh + r * s.sn + d] = x[((b * Hh + h) * rows + r) * D + d];
  return y;
}

template <typename Ty>
void run(const Case& c, double tol) {
  using A = acc_t<Ty>;
  Data in = make_data(c);
  // The kernels see the inputs rounded to Ty; so does the reference.
  for (auto* x : {&in.q, &in.k, &in.v, &in.dO, &in.gq, &in.gk, &in.gv}) *x = back(cast<Ty>(*x));
  // Difference quotients only on float64 data: rounding to 16 bits makes equal window maxima.
  const Ref r = reference(c, in, std::is_same_v<Ty, double>);
  const int64_t B = c.B, Hh = c.Hh, N = c.N, Sk = c.Sk(), M = c.M(), Dk = c.Dk, Dv = c.Dv;
  const int64_t BH = B * Hh, ph = c.pool ? c.ph : 0, pw = c.pool ? c.pw : 0;
  const auto q = cast<Ty>(in.q), k = cast<Ty>(in.k), v = cast<Ty>(in.v), dO = cast<Ty>(in.dO);
  Errs err;

  // forward (strided views when asked: q padded rows, k / v inside a longer cache)
  std::vector<Ty> o(BH * N * Dv, from_d<Ty>(NAN));
  std::vector<A> lse(BH * N, A(NAN));
  FwdPlan fp = plan_fwd(B, Hh, N, M, Sk, Dk, Dv, ph, pw, c.causal, c.scale, sizeof(A));
  std::vector<Ty> qs = q, ks = k, vs = v;
  Args& a = fp.a;
  if (c.strided) {
    const Strided sq = strided(B, Hh, N, Dk), sk = strided(B, Hh, Sk + 7, Dk);
    const Strided sv = strided(B, Hh, Sk + 7, Dv);
    qs = scatter(q, B, Hh, N, Dk, sq), ks = scatter(k, B, Hh, Sk, Dk, sk);
    vs = scatter(v, B, Hh, Sk, Dv, sv);
    a.sq_b = sq.sb, a.sq_h = sq.sh, a.sq_n = sq.sn, a.sk_b = sk.sb, a.sk_h = sk.sh;
    a.sk_n = sk.sn, a.sv_b = sv.sb, a.sv_h = sv.sh, a.sv_n = sv.sn;
  }
  a.q = qs.data(), a.k = ks.data(), a.v = vs.data(), a.out = o.data(), a.lse = lse.data();
  std::vector<A> ws(fp.ws_rows * (2 + Dv), A(NAN));
  a.ws_m = ws.data(), a.ws_l = ws.data() + fp.ws_rows, a.ws_acc = ws.data() + 2 * fp.ws_rows;
  if (BH * N > 0) {
    launch(grid_of(fp.items), fp.t.bytes, [&] { fwd_body<Ty>(a); });
    if (fp.ws_rows > 0) launch(grid_of_elems(BH * N * Dv), 0, [&] { combine_body<Ty>(a); });
  }
  err.add("o", back(o), r.o);
  err.add("lse", std::vector<double>(lse.begin(), lse.end()), r.lse);

  // backward from the kernel's o and lse
  std::vector<Ty> dq(BH * N * Dk, from_d<Ty>(NAN)), dk(BH * Sk * Dk, from_d<Ty>(NAN));
  std::vector<Ty> dv(BH * Sk * Dv, from_d<Ty>(NAN));
  std::vector<A> wsD(BH * N, A(NAN));
  BwdPlan bp = plan_bwd(B, Hh, N, M, Sk, Dk, Dv, ph, pw, c.causal, c.scale, sizeof(A));
  Args& b = bp.a;
  b.q = q.data(), b.k = k.data(), b.v = v.data(), b.o = o.data(), b.lse = lse.data();
  b.dout = dO.data(), b.dq = dq.data(), b.dk = dk.data(), b.dv = dv.data(), b.ws_D = wsD.data();
  if (BH * N > 0) launch(grid_of_elems(BH * N), 0, [&] { rowdot_body<Ty>(b); });
  if (bp.kv_items > 0) {
    const Args bk = with_tiles(b, bp.tkv);
    launch(grid_of(bp.kv_items), bp.tkv.bytes, [&] { dkdv_body<Ty>(bk); });
  }
  if (bp.q_items > 0) {
    const Args bq = with_tiles(b, bp.tq);
    launch(grid_of(bp.q_items), bp.tq.bytes, [&] { dq_body<Ty>(bq); });
  }
  err.add("dq", back(dq), r.dq), err.add("dk", back(dk), r.dk), err.add("dv", back(dv), r.dv);

  if (!c.pool) {  // double backward
    const auto gq = cast<Ty>(in.gq), gk = cast<Ty>(in.gk), gv = cast<Ty>(in.gv);
    std::vector<Ty> Gq(BH * N * Dk, from_d<Ty>(NAN)), Gk(BH * M * Dk, from_d<Ty>(NAN));
    std::vector<Ty> Gv(BH * M * Dv, from_d<Ty>(NAN)), Gdo(BH * N * Dv, from_d<Ty>(NAN));
    std::vector<A> w3(3 * BH * N, A(NAN));
    Bwd2Plan p2 = plan_bwd2(B, Hh, N, M, Dk, Dv, c.causal, c.scale, sizeof(A));
    Args& g = p2.a;
    g.q = q.data(), g.k = k.data(), g.v = v.data(), g.o = o.data(), g.lse = lse.data();
    g.dout = dO.data(), g.gq = c.null_gq ? nullptr : gq.data();
    g.gk = c.null_gk ? nullptr : gk.data(), g.gv = c.null_gv ? nullptr : gv.data();
    g.Gq = Gq.data(), g.Gk = Gk.data(), g.Gv = Gv.data(), g.Gdo = Gdo.data();
    g.ws_D = w3.data(), g.ws_r = w3.data() + BH * N, g.ws_w = w3.data() + 2 * BH * N;
    const Args gs = with_tiles(g, p2.ts), gqa = with_tiles(g, p2.tq), gka = with_tiles(g, p2.tk);
    if (p2.s_items > 0) launch(grid_of(p2.s_items), p2.ts.bytes, [&] { stats_body<Ty>(gs); });
    if (p2.q_items > 0) launch(grid_of(p2.q_items), p2.tq.bytes, [&] { gradq_body<Ty>(gqa); });
    if (p2.k_items > 0) launch(grid_of(p2.k_items), p2.tk.bytes, [&] { gradk_body<Ty>(gka); });
    err.add("Gq", back(Gq), r.Gq), err.add("Gk", back(Gk), r.Gk);
    err.add("Gv", back(Gv), r.Gv), err.add("Gdo", back(Gdo), r.Gdo);
  }
  const bool ok = err.worst <= tol && r.fd_err <= 1e-6;
  failures += !ok;
  std::printf("%s %-34s %zu-byte split %lld tiles fwd %dx%d: worst %s %.1e (fd %.1e)\n",
              ok ? "ok  " : "FAIL", c.name, sizeof(Ty), static_cast<long long>(fp.a.nsplit),
              fp.t.bq, fp.t.bk, err.which, err.worst, r.fd_err);
}

int main() {
  // name, B, Hh, N, Dk, Dv, causal, pooled grid (ph, pw) or keys M, scale, strided, null g's
  run<double>(Case::keys("dense N33 M40 Dk24 Dv17 strided", 2, 3, 33, 40, 24, 17, false, true),
              1e-12);
  run<double>(Case::keys("causal N=M=37", 1, 2, 37, 37, 16, 16, true, false), 1e-12);
  run<double>(Case::keys("causal N20<M70 cache view", 2, 1, 20, 70, 12, 20, true, true), 1e-12);
  run<double>(Case::keys("causal N45>M30 empty rows", 1, 2, 45, 30, 8, 8, true, false), 1e-12);
  run<double>(Case::pooled("pooled 7x9 Dk8 Dv20 s=1", 2, 1, 8, 20, 7, 9), 1e-12);
  run<double>(Case::pooled("pooled 8x6 strided", 1, 2, 16, 12, 8, 6).with_strided(), 1e-12);
  run<double>(Case::pooled("pooled 5x6 tied maxima", 1, 1, 8, 8, 5, 6).with_ties(), 1e-12);
  run<double>(Case::pooled("pooled 1x5 (no keys)", 1, 1, 8, 8, 1, 5), 1e-12);
  run<double>(Case::keys("decode N1 M300 causal cache", 1, 2, 1, 300, 32, 16, true, true), 1e-12);
  run<double>(Case::keys("decode N5 M257 Dk=Dv=64", 1, 2, 5, 257, 64, 64, false, true), 1e-12);
  run<double>(Case::keys("decode N4 M300 causal", 2, 1, 4, 300, 8, 24, true, false), 1e-12);
  run<double>(Case::keys("N0 M9", 1, 2, 0, 9, 8, 8, false, false), 1e-12);
  run<double>(Case::keys("M0 N6", 1, 2, 6, 0, 8, 8, false, false), 1e-12);
  run<double>(Case::keys("Dk=Dv=256 (smallest tiles)", 1, 1, 9, 11, 256, 256, true, false), 1e-12);
  run<double>(Case::keys("null gq", 1, 2, 19, 23, 8, 12, true, false).with_null(1, 0, 0), 1e-12);
  run<double>(Case::keys("null gk gv", 1, 1, 19, 23, 8, 12, false, false).with_null(0, 1, 1),
              1e-12);
  run<float>(Case::keys("fp32 causal N33 M47", 1, 2, 33, 47, 64, 32, true, true), 2e-5);
  run<float>(Case::keys("fp32 decode N2 M600", 1, 1, 2, 600, 64, 64, true, false), 2e-5);
  run<__half>(Case::pooled("fp16 pooled 6x6 Dk8 Dv32", 1, 2, 8, 32, 6, 6), 1e-2);
  run<__half>(Case::keys("fp16 causal N17 M29", 1, 2, 17, 29, 16, 24, true, true), 1e-2);
  run<__nv_bfloat16>(Case::keys("bf16 causal N=M=40", 1, 2, 40, 40, 32, 32, true, false), 5e-2);
  run<__nv_bfloat16>(Case::keys("bf16 decode N3 M400", 1, 1, 3, 400, 16, 8, false, true), 5e-2);
  std::printf("%d failures\n", failures);
  return failures != 0;
}
