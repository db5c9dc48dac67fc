// The persistent LSTM kernels' bodies (the scheme: csrc/cuda/lstm_persist.cuh). Include only from
// lstm_persist.cuh.
#pragma once

namespace genfast::cuda::lstm_dev {

template <typename Ty>
struct FwdArgs {
  const Ty* gx;           // (T, B, 4H)
  const Ty* w_hh;         // (4H, P)
  const Ty* w_hr;         // (P, H) or null
  const Ty* h0;           // (B, P) or null
  const Ty* c0;           // (B, H) or null
  const int64_t* lengths; // (B) or null
  Ty* y;                  // (T, B, P)
  acc_t<Ty>* gates;       // (T, B, 4H) or null
  acc_t<Ty>* c_all;       // (T, B, H) or null (with gates)
  Ty* hT;                 // (B, P)
  Ty* cT;                 // (B, H)
  Ty* htw;                // (B, H) workspace: ht exchanged for the projection
  int64_t steps;
  bool reverse;
  Plan pl;
};

template <typename Ty>
struct BwdArgs {
  const Ty* w_hh;
  const Ty* w_hr;
  const Ty* c0;
  const int64_t* lengths;
  const acc_t<Ty>* gates;
  const acc_t<Ty>* c_all;
  const Ty* dy;      // (T, B, P) or null
  const Ty* dhT;     // (B, P) or null
  const Ty* dcT;     // (B, H) or null
  Ty* dgx;           // (T, B, 4H): also the dG exchanged between steps
  Ty* dh0;           // (B, P)
  Ty* dc0;           // (B, H)
  Ty* dh_all;        // (T, B, P) or null
  acc_t<Ty>* dhx;    // (B, P) workspace: dh exchanged for the projection
  int64_t steps;
  bool reverse;
  Plan pl;
};

__device__ __forceinline__ int seq_len(const int64_t* lengths, int b, int64_t steps) {
  return lengths != nullptr ? clamp_count(lengths[b], steps) : static_cast<int>(steps);
}

// GEMV of all B sequences, S at a time: stage, then W x X into out (rows x B).
template <typename Ty, typename Src, typename A, class RowOf>
__device__ __forceinline__ void gemv_all(const Plan& pl, const Ty* W, int rows, int K, int Kreal,
                                         A* X, A* out, RowOf&& row) {
  for (int b0 = 0; b0 < pl.B; b0 += pl.S) {
    const int nb = pl.B - b0 < pl.S ? pl.B - b0 : pl.S;
    stage<A, Src>(X, pl.S, nb, Kreal, K, b0, row);
    block_sync();
    gemv(W, rows, K, X, nb, out, pl.B, b0);
    block_sync();
  }
}

// ---- forward ---------------------------------------------------------------------------------
template <typename Ty, bool kProj>
__device__ void fwd_body(const FwdArgs<Ty>& a) {
  using A = acc_t<Ty>;
  const Plan& pl = a.pl;
  unsigned char* sm = smem();
  auto* W1 = reinterpret_cast<Ty*>(sm + pl.w1);
  auto* W2 = reinterpret_cast<Ty*>(sm + pl.w2);
  auto* X = reinterpret_cast<A*>(sm + pl.x);
  auto* out = reinterpret_cast<A*>(sm + pl.out);
  auto* cS = reinterpret_cast<A*>(sm + pl.st1);  // c of (unit jl, sequence b) at jl*B + b
  auto* lenS = reinterpret_cast<int*>(sm + pl.len);
  const int B = pl.B, H = pl.H, P = pl.P, U = pl.U, V = pl.V;
  const int j0 = cta() * U, Uc = clamp_count(H - j0, U);
  const int p0 = cta() * V, Vc = clamp_count(P - p0, V);
  const int64_t H4 = 4 * int64_t{H}, steps = a.steps;

  // W1 row r = g*U + jl: gate g of unit j0 + jl (rows past the last unit are zero).
  load_slice(W1, pl.rows1, pl.K1, false, [&](int r, int k) -> const Ty* {
    const int g = r / U, jl = r - g * U;
    return jl < Uc && k < P ? a.w_hh + (g * int64_t{H} + j0 + jl) * P + k : nullptr;
  });
  if constexpr (kProj)
    load_slice(W2, pl.rows2, pl.K2, false, [&](int r, int k) -> const Ty* {
      return r < Vc && k < H ? a.w_hr + (int64_t{p0} + r) * H + k : nullptr;
    });
  for (int b = tid(); b < B; b += kThreads) lenS[b] = seq_len(a.lengths, b, steps);
  for (int e = tid(); e < Uc * B; e += kThreads) {
    const int b = e / Uc, jl = e - b * Uc;
    cS[jl * B + b] = a.c0 != nullptr ? ld(a.c0 + int64_t{b} * H + j0 + jl) : A(0);
  }
  // Sequences without an active step return h0 (steps never write their hT).
  const int hown = kProj ? Vc : Uc, hbase = kProj ? p0 : j0;
  for (int e = tid(); e < hown * B; e += kThreads) {
    const int b = e / hown, p = hbase + (e - b * hown);
    if (seq_len(a.lengths, b, steps) == 0)
      st(a.hT + int64_t{b} * P + p, a.h0 != nullptr ? ld(a.h0 + int64_t{b} * P + p) : A(0));
  }
  block_sync();

  for (int64_t s = 0; s < steps; ++s) {
    const int64_t t = a.reverse ? steps - 1 - s : s, tp = fwd_prev(t, a.reverse);
    // G = h w_hh^T for this CTA's gate rows; h is y[tp] (or h0 at a sequence's first step).
    // gx does not depend on h: this thread's first (unit, sequence) reads it now, so the load's
    // latency hides behind the stage and the GEMV.
    const auto gx_of = [&](int e, A (&v)[4]) {
      const int b = e / Uc, j = j0 + (e - b * Uc);
      if (t >= lenS[b]) return;
      const Ty* g = a.gx + (t * B + b) * H4 + j;
      for (int k = 0; k < 4; ++k) v[k] = ld(g + k * int64_t{H});
    };
    A pre[4] = {A(0), A(0), A(0), A(0)};
    if (tid() < Uc * B) gx_of(tid(), pre);
    gemv_all<Ty, Ty>(pl, W1, pl.rows1, pl.K1, P, X, out, [&](int b) -> const Ty* {
      if (t >= lenS[b]) return nullptr;
      if (first_step(t, lenS[b], a.reverse))
        return a.h0 != nullptr ? a.h0 + int64_t{b} * P : nullptr;
      return a.y + (tp * B + b) * P;
    });
    for (int e = tid(); e < Uc * B; e += kThreads) {
      const int b = e / Uc, jl = e - b * Uc, j = j0 + jl;
      const int64_t row = t * B + b;
      if (t < lenS[b]) {
        A g[4] = {pre[0], pre[1], pre[2], pre[3]};
        if (e != tid()) gx_of(e, g);
        const A gi = sigmoid(g[0] + out[jl * B + b]);
        const A gf = sigmoid(g[1] + out[(U + jl) * B + b]);
        const A gg = dtanh(g[2] + out[(2 * U + jl) * B + b]);
        const A go = sigmoid(g[3] + out[(3 * U + jl) * B + b]);
        const A c = gf * cS[jl * B + b] + gi * gg;
        cS[jl * B + b] = c;
        const A ht = go * dtanh(c);
        if (a.gates != nullptr) {
          A* gr = a.gates + row * H4 + j;
          gr[0] = gi, gr[H] = gf, gr[2 * H] = gg, gr[3 * H] = go;
          a.c_all[row * H + j] = c;
        }
        if constexpr (kProj) {
          st(a.htw + int64_t{b} * H + j, ht);
        } else {
          st(a.y + row * P + j, ht);
          if (last_step(t, lenS[b], a.reverse)) st(a.hT + int64_t{b} * P + j, ht);
        }
      } else if constexpr (!kProj) {
        st(a.y + row * P + j, A(0));
      }
    }
    if constexpr (kProj) {
      grid_sync();  // every unit's ht of this step is in htw
      gemv_all<Ty, Ty>(pl, W2, pl.rows2, pl.K2, H, X, out, [&](int b) -> const Ty* {
        return t < lenS[b] ? a.htw + int64_t{b} * H : nullptr;
      });
      for (int e = tid(); e < Vc * B; e += kThreads) {
        const int b = e / Vc, v = e - b * Vc, p = p0 + v;
        const int64_t row = t * B + b;
        if (t < lenS[b]) {
          const A h = out[v * B + b];
          st(a.y + row * P + p, h);
          if (last_step(t, lenS[b], a.reverse)) st(a.hT + int64_t{b} * P + p, h);
        } else {
          st(a.y + row * P + p, A(0));
        }
      }
    }
    if (s + 1 < steps) grid_sync();  // y[t] complete before the next step reads it
  }
  for (int e = tid(); e < Uc * B; e += kThreads) {
    const int b = e / Uc, jl = e - b * Uc;
    st(a.cT + int64_t{b} * H + j0 + jl, cS[jl * B + b]);
  }
}

// ---- backward --------------------------------------------------------------------------------
// What the forward saved for unit j of sequence b at active step t: the gates, c and the c
// before the step. None of it depends on dh, so a step reads its first unit's early.
template <typename A>
struct Saved {
  A i, f, g, o, c, cp;
};

template <typename Ty>
__device__ __forceinline__ Saved<acc_t<Ty>> saved_at(const BwdArgs<Ty>& a, int b, int j,
                                                     int64_t t, int len) {
  using A = acc_t<Ty>;
  const int B = a.pl.B, H = a.pl.H;
  const int64_t row = t * B + b;
  const A* g = a.gates + row * 4 * int64_t{H} + j;
  Saved<A> s{g[0], g[H], g[2 * H], g[3 * H], a.c_all[row * H + j], A(0)};
  if (!first_step(t, len, a.reverse))
    s.cp = a.c_all[(fwd_prev(t, a.reverse) * B + b) * H + j];
  else if (a.c0 != nullptr)
    s.cp = ld(a.c0 + int64_t{b} * H + j);
  return s;
}

// The cell's backward for unit j of sequence b at active step t (the contract's formulas), given
// dht and the saved values; updates dc in place and writes dgx[t].
template <typename Ty>
__device__ __forceinline__ void cell_back(const BwdArgs<Ty>& a, const Saved<acc_t<Ty>>& s,
                                          acc_t<Ty> dht, acc_t<Ty>& dc, int b, int j,
                                          int64_t t) {
  using A = acc_t<Ty>;
  const int H = a.pl.H;
  const int64_t H4 = 4 * int64_t{H}, row = t * a.pl.B + b;
  const A i = s.i, f = s.f, gg = s.g, o = s.o, cp = s.cp;
  const A tc = dtanh(s.c);
  const A d = dc + dht * o * (A(1) - tc * tc);
  Ty* out = a.dgx + row * H4 + j;
  st(out, d * gg * i * (A(1) - i));
  st(out + H, d * cp * f * (A(1) - f));
  st(out + 2 * H, d * i * (A(1) - gg * gg));
  st(out + 3 * H, dht * tc * o * (A(1) - o));
  dc = d * f;
}

template <typename Ty>
__device__ __forceinline__ void zero_dgx(const BwdArgs<Ty>& a, int b, int j, int64_t t) {
  Ty* out = a.dgx + (t * a.pl.B + b) * 4 * int64_t{a.pl.H} + j;
  for (int g = 0; g < 4; ++g) st(out + g * int64_t{a.pl.H}, acc_t<Ty>(0));
}

template <typename Ty, bool kProj>
__device__ void bwd_body(const BwdArgs<Ty>& a) {
  using A = acc_t<Ty>;
  const Plan& pl = a.pl;
  unsigned char* sm = smem();
  auto* W1 = reinterpret_cast<Ty*>(sm + pl.w1);
  auto* W2 = reinterpret_cast<Ty*>(sm + pl.w2);
  auto* X = reinterpret_cast<A*>(sm + pl.x);
  auto* out = reinterpret_cast<A*>(sm + pl.out);
  auto* dcS = reinterpret_cast<A*>(sm + pl.st1);  // dc of (unit jl, b) at jl*B + b
  auto* dhS = reinterpret_cast<A*>(sm + pl.st2);  // dh of (own column n, b) at n*B + b
  auto* lenS = reinterpret_cast<int*>(sm + pl.len);
  const int B = pl.B, H = pl.H, P = pl.P, U = pl.U, V = pl.V;
  const int j0 = cta() * U, Uc = clamp_count(H - j0, U);
  const int p0 = cta() * V, Vc = clamp_count(P - p0, V);
  const int64_t H4 = 4 * int64_t{H}, steps = a.steps;
  // Columns of dh this CTA keeps: its units (no projection, P == H) or its P-block.
  const int Nc = kProj ? Vc : Uc, n0 = kProj ? p0 : j0;
  const Ty* Wdh = kProj ? W2 : W1;  // dh = dG w_hh for the kept columns
  const int rows_dh = kProj ? pl.rows2 : pl.rows1;

  if constexpr (kProj) {
    load_slice(W1, pl.rows1, pl.K1, true, [&](int r, int k) -> const Ty* {
      return r < Uc && k < P ? a.w_hr + int64_t{k} * H + j0 + r : nullptr;
    });
    load_slice(W2, pl.rows2, pl.K2, true, [&](int r, int k) -> const Ty* {
      return r < Vc ? a.w_hh + int64_t{k} * P + p0 + r : nullptr;
    });
  } else {
    load_slice(W1, pl.rows1, pl.K1, true, [&](int r, int k) -> const Ty* {
      return r < Uc ? a.w_hh + int64_t{k} * P + j0 + r : nullptr;
    });
  }
  for (int b = tid(); b < B; b += kThreads) lenS[b] = seq_len(a.lengths, b, steps);
  for (int e = tid(); e < Uc * B; e += kThreads) {
    const int b = e / Uc, jl = e - b * Uc;
    dcS[jl * B + b] = a.dcT != nullptr ? ld(a.dcT + int64_t{b} * H + j0 + jl) : A(0);
  }
  for (int e = tid(); e < Nc * B; e += kThreads) {
    const int b = e / Nc, n = e - b * Nc;
    dhS[n * B + b] = a.dhT != nullptr ? ld(a.dhT + int64_t{b} * P + n0 + n) : A(0);
  }
  block_sync();

  // dh = dG w_hh for the kept columns of the sequences active at step tq (dgx[tq] complete).
  const auto dh_from_dgx = [&](int64_t tq) {
    gemv_all<Ty, Ty>(pl, Wdh, rows_dh, static_cast<int>(H4), static_cast<int>(H4), X, out,
                     [&](int b) -> const Ty* {
                       return tq < lenS[b] ? a.dgx + (tq * B + b) * H4 : nullptr;
                     });
    for (int e = tid(); e < Nc * B; e += kThreads) {
      const int b = e / Nc, n = e - b * Nc;
      if (tq < lenS[b]) dhS[n * B + b] = out[n * B + b];
    }
  };
  // dh += dy[t] for the kept columns of the sequences active at t; dh_all[t] written.
  const auto add_dy = [&](int64_t t, int b, int n) -> A {
    const int64_t at = (t * B + b) * P + n0 + n;
    const A dh = dhS[n * B + b] + (a.dy != nullptr ? ld(a.dy + at) : A(0));
    dhS[n * B + b] = dh;
    if (a.dh_all != nullptr) st(a.dh_all + at, dh);
    return dh;
  };

  for (int64_t s = 0; s < steps; ++s) {
    const int64_t t = a.reverse ? s : steps - 1 - s;  // the reverse of the forward's order
    Saved<A> pre{};
    if (tid() < Uc * B) {
      const int b = tid() / Uc;
      if (t < lenS[b]) pre = saved_at(a, b, j0 + tid() - b * Uc, t, lenS[b]);
    }
    if (s > 0) dh_from_dgx(a.reverse ? t - 1 : t + 1);
    if constexpr (kProj) {
      for (int e = tid(); e < Vc * B; e += kThreads) {
        const int b = e / Vc, v = e - b * Vc;
        if (t < lenS[b]) {
          a.dhx[int64_t{b} * P + p0 + v] = add_dy(t, b, v);
        } else if (a.dh_all != nullptr) {
          st(a.dh_all + (t * B + b) * P + p0 + v, A(0));
        }
      }
      grid_sync();  // dh of every column in dhx
      gemv_all<Ty, A>(pl, W1, pl.rows1, pl.K1, P, X, out, [&](int b) -> const A* {
        return t < lenS[b] ? a.dhx + int64_t{b} * P : nullptr;
      });
    }
    for (int e = tid(); e < Uc * B; e += kThreads) {
      const int b = e / Uc, jl = e - b * Uc, j = j0 + jl;
      if (t < lenS[b]) {
        const A dht = kProj ? out[jl * B + b] : add_dy(t, b, jl);
        const Saved<A> sv = e == tid() ? pre : saved_at(a, b, j, t, lenS[b]);
        cell_back(a, sv, dht, dcS[jl * B + b], b, j, t);
      } else {
        zero_dgx(a, b, j, t);
        if (!kProj && a.dh_all != nullptr) st(a.dh_all + (t * B + b) * P + j, A(0));
      }
    }
    grid_sync();  // dgx[t] complete before any CTA forms dh from it
  }
  if (steps > 0) dh_from_dgx(a.reverse ? steps - 1 : 0);
  for (int e = tid(); e < Nc * B; e += kThreads) {
    const int b = e / Nc, n = e - b * Nc;
    st(a.dh0 + int64_t{b} * P + n0 + n, dhS[n * B + b]);
  }
  for (int e = tid(); e < Uc * B; e += kThreads) {
    const int b = e / Uc, jl = e - b * Uc;
    st(a.dc0 + int64_t{b} * H + j0 + jl, dcS[jl * B + b]);
  }
}

}  // namespace genfast::cuda::lstm_dev
