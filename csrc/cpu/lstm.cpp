// C++ CPU kernels of the LSTM recurrence (contract: genfast/ops/lstm.py; signatures: lstm.h).
//
// Cost model. Per step the recurrence is a (B, P) x (P, 4H) GEMM plus pointwise math, and steps
// are sequential, so the kernel keeps one team of threads for the whole call and splits every
// step among them with a barrier between phases (lstm_team.h; fwd: one per step, two with a
// projection; bwd: two per step). Threads own fixed slices: the forward splits hidden units (in
// panels of VL units carrying all four gates, packed once per call by the thread that reads
// them, so the c state and the cell math of a unit never leave its thread), the backward's dh =
// dG w_hh and both projection GEMMs split output columns. Every value is computed by one thread
// with one fixed FMA order (lstm_tile.h), so the bits do not depend on the thread count.
// Inactive rows (t >= lengths[b]) are left out of the GEMM rows entirely.
#include "cpu/lstm.h"

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <stdexcept>
#include <string>

#include "common/dtype.h"
#include "cpu/lstm_team.h"
#include "cpu/lstm_tile.h"

namespace genfast::cpu {
namespace {

using namespace lstm_tile;
using namespace lstm_team;

template <typename T>
struct Fwd {
  const T *gx, *w_hh, *w_hr, *h0, *c0;
  const int64_t* len;
  T *y, *gates, *c_all, *hT, *cT;
  int64_t steps, B, H, P;
  bool reverse;
  int64_t npan, npv, Hp;  // unit panels, P column vectors, H padded to whole panels
  bool direct;            // gates from w_hh rows by dot products, w_hh not packed (short calls)
  T *wp, *wr;             // packed w_hh gate panels (npan, P, 4, VL), w_hr^T (npv, H, VL)
  T *hb, *cb, *htb;       // h (2, B, P) double buffer, c (B, Hp), h tilde (B, H)
  int64_t* rows;          // per thread: active and inactive rows (2, B)
  T* ap;                  // per thread: packed GEMM rows (B, max(P, H))
  Barrier* bar;
};

template <typename T>
struct Bwd {
  const T *w_hh, *w_hr, *c0;
  const int64_t* len;
  const T *gates, *c_all, *dy, *dhT, *dcT;
  T *dgx, *dh0, *dc0, *dh_all;
  int64_t steps, B, H, P;
  bool reverse;
  int64_t npan, npv, Hp;
  T *wp, *wr;  // packed w_hh (npv, 4H, VL), w_hr (npan, P, VL)
  bool direct;  // w_hh read in place (short calls with P a whole number of vectors): same bits
  T *dh, *dcb;  // running dh (B, P), dc (B, Hp)
  int64_t* rows;
  T* ap;  // per thread: packed GEMM rows (B, max(4H, P))
  Barrier* bar;
};

// Rows of step t split into active (returned count) and inactive ones.
inline int64_t split_rows(const int64_t* len, int64_t B, int64_t t, int64_t* act, int64_t* idle,
                          int64_t* nidle) {
  int64_t na = 0, ni = 0;
  for (int64_t b = 0; b < B; ++b) {
    if (len == nullptr || t < len[b])
      act[na++] = b;
    else
      idle[ni++] = b;
  }
  *nidle = ni;
  return na;
}

template <typename T>
inline void copy_or_zero(T* dst, const T* src, int64_t n) {
  if (n <= 0) return;
  if (src != nullptr)
    std::memcpy(dst, src, static_cast<size_t>(n) * sizeof(T));
  else
    std::memset(dst, 0, static_cast<size_t>(n) * sizeof(T));
}

template <typename T, int Isa>
GENFAST_INLINE void fwd_thread(const Fwd<T>& a, int tid, int team) {
  using S = Shape<T, Isa>;
  constexpr int VL = S::VL, MR = S::MR;
  const int64_t B = a.B, H = a.H, P = a.P, H4 = 4 * H, Hp = a.Hp;
  const bool proj = a.w_hr != nullptr;
  const int64_t u0 = a.npan * tid / team, u1 = a.npan * (tid + 1) / team;
  const int64_t v0 = a.npv * tid / team, v1 = a.npv * (tid + 1) / team;
  // The h columns this thread writes: its units' (no projection) or its output vectors'.
  const int64_t hc0 = std::min(P, (proj ? v0 : u0) * VL), hc1 = std::min(P, (proj ? v1 : u1) * VL);
  const int64_t jc0 = std::min(H, u0 * VL), jc1 = std::min(H, u1 * VL);
  if (!a.direct) pack_gates(a.w_hh, a.wp, H, P, VL, u0, u1);
  if (proj) pack_cols(a.w_hr, 1, H, H, P, VL, a.wr, v0, v1);
  for (int64_t b = 0; b < B; ++b) {
    copy_or_zero(a.hb + b * P + hc0, a.h0 ? a.h0 + b * P + hc0 : nullptr, hc1 - hc0);
    T* c = a.cb + b * Hp;
    std::memset(c + u0 * VL, 0, static_cast<size_t>((u1 - u0) * VL) * sizeof(T));
    copy_or_zero(c + jc0, a.c0 ? a.c0 + b * H + jc0 : nullptr, jc1 - jc0);
  }
  a.bar->wait(team);
  int64_t* act = a.rows + 2 * B * tid;
  int64_t* idle = act + B;
  T* ap = a.ap + B * std::max(P, H) * tid;
  alignas(64) T buf[MR * 4 * VL];
  alignas(64) T h[VL];
  for (int64_t s = 0; s < a.steps; ++s) {
    const int64_t t = a.reverse ? a.steps - 1 - s : s;
    int64_t ni;
    const int64_t na = split_rows(a.len, B, t, act, idle, &ni), nb = (na + MR - 1) / MR;
    const T* hp = a.hb + (s & 1) * B * P;
    T* hn = a.hb + ((s + 1) & 1) * B * P;
    T* yt = a.y + t * B * P;
    const T* gxt = a.gx + t * B * H4;
    if (u1 > u0 && !a.direct) pack_rows(hp, P, act, na, nb, P, ap);
    for (int64_t u = u0; u < u1; ++u) {
      const int64_t j = u * VL, n = std::min<int64_t>(VL, H - j);
      for (int64_t ib = 0; ib < nb; ++ib) {
        const int64_t r0 = na * ib / nb, r = na * (ib + 1) / nb - r0;
        for (int64_t m = 0; m < r; ++m) {
          const int64_t b = act[r0 + m];
          for (int64_t g = 0; g < 4; ++g)
            load_lanes<T, VL>(buf + (m * 4 + g) * VL, gxt + b * H4 + g * H + j, n);
        }
        if (a.direct) {
          const T* hrow[MR];
          for (int64_t m = 0; m < r; ++m) hrow[m] = hp + act[r0 + m] * P;
          direct_rows<T, Isa>(r, a.w_hh, H, P, hrow, j, n, buf);
        } else {
          gate_rows<T, Isa>(r, a.wp + u * P * 4 * VL, P, ap + r0 * P, buf);
        }
        for (int64_t m = 0; m < r; ++m) {
          const int64_t b = act[r0 + m];
          T* G = buf + m * 4 * VL;
          T* c = a.cb + b * Hp + j;
          cell_fwd<T, VL>(G, c, h);
          if (a.gates != nullptr) {
            T* gt = a.gates + (t * B + b) * H4 + j;
            for (int64_t g = 0; g < 4; ++g) store_lanes<T, VL>(gt + g * H, G + g * VL, n);
            store_lanes<T, VL>(a.c_all + (t * B + b) * H + j, c, n);
          }
          if (proj) {
            store_lanes<T, VL>(a.htb + b * H + j, h, n);
          } else {
            store_lanes<T, VL>(hn + b * P + j, h, n);
            store_lanes<T, VL>(yt + b * P + j, h, n);
          }
        }
      }
    }
    if (proj) {
      a.bar->wait(team);  // h tilde complete
      if (v1 > v0) pack_rows(a.htb, H, act, na, nb, H, ap);
      for (int64_t v = v0; v < v1; v += 4) {
        const int64_t nv = std::min<int64_t>(4, v1 - v), p = v * VL;
        const int64_t n = std::min(nv * VL, P - p);
        for (int64_t ib = 0; ib < nb; ++ib) {
          const int64_t r0 = na * ib / nb, r = na * (ib + 1) / nb - r0;
          col_rows<T, Isa>(r, nv, a.wr + v * H * VL, H * VL, VL, H, ap + r0 * H, buf);
          for (int64_t m = 0; m < r; ++m) {
            const int64_t b = act[r0 + m];
            store_lanes<T, 4 * VL>(hn + b * P + p, buf + m * 4 * VL, n);
            store_lanes<T, 4 * VL>(yt + b * P + p, buf + m * 4 * VL, n);
          }
        }
      }
    }
    for (int64_t i = 0; i < ni; ++i) {
      const int64_t b = idle[i];
      copy_or_zero(hn + b * P + hc0, hp + b * P + hc0, hc1 - hc0);
      copy_or_zero<T>(yt + b * P + hc0, nullptr, hc1 - hc0);
    }
    a.bar->wait(team);  // h complete
  }
  const T* hf = a.hb + (a.steps & 1) * B * P;
  for (int64_t b = 0; b < B; ++b) {
    copy_or_zero(a.hT + b * P + hc0, hf + b * P + hc0, hc1 - hc0);
    copy_or_zero(a.cT + b * H + jc0, a.cb + b * Hp + jc0, jc1 - jc0);
  }
}

template <typename T, int Isa>
GENFAST_INLINE void bwd_thread(const Bwd<T>& a, int tid, int team) {
  using S = Shape<T, Isa>;
  constexpr int VL = S::VL, MR = S::MR;
  const int64_t B = a.B, H = a.H, P = a.P, H4 = 4 * H, Hp = a.Hp, T_ = a.steps;
  const bool proj = a.w_hr != nullptr;
  const int64_t u0 = a.npan * tid / team, u1 = a.npan * (tid + 1) / team;
  const int64_t v0 = a.npv * tid / team, v1 = a.npv * (tid + 1) / team;
  const int64_t pc0 = std::min(P, v0 * VL), pc1 = std::min(P, v1 * VL);
  const int64_t jc0 = std::min(H, u0 * VL), jc1 = std::min(H, u1 * VL);
  if (!a.direct) pack_cols(a.w_hh, P, 1, H4, P, VL, a.wp, v0, v1);
  if (proj) pack_cols(a.w_hr, H, 1, P, H, VL, a.wr, u0, u1);
  const auto step_at = [&](int64_t q) { return a.reverse ? q : T_ - 1 - q; };
  // dh of the rows active at step t gains dy[t] and is recorded in dh_all (own columns).
  const auto enter = [&](int64_t t) {
    for (int64_t b = 0; b < B; ++b) {
      T* d = a.dh + b * P;
      T* da = a.dh_all != nullptr ? a.dh_all + (t * B + b) * P : nullptr;
      if (a.len != nullptr && t >= a.len[b]) {
        if (da != nullptr) copy_or_zero<T>(da + pc0, nullptr, pc1 - pc0);
        continue;
      }
      if (a.dy != nullptr) {
        const T* e = a.dy + (t * B + b) * P;
        for (int64_t p = pc0; p < pc1; ++p) d[p] += e[p];
      }
      if (da != nullptr) copy_or_zero(da + pc0, d + pc0, pc1 - pc0);
    }
  };
  for (int64_t b = 0; b < B; ++b) {
    copy_or_zero(a.dh + b * P + pc0, a.dhT ? a.dhT + b * P + pc0 : nullptr, pc1 - pc0);
    T* c = a.dcb + b * Hp;
    std::memset(c + u0 * VL, 0, static_cast<size_t>((u1 - u0) * VL) * sizeof(T));
    copy_or_zero(c + jc0, a.dcT ? a.dcT + b * H + jc0 : nullptr, jc1 - jc0);
  }
  if (T_ > 0) enter(step_at(0));
  a.bar->wait(team);
  int64_t* act = a.rows + 2 * B * tid;
  int64_t* idle = act + B;
  alignas(64) T buf[MR * 4 * VL];
  alignas(64) T gt[4 * VL], cs[VL], cp[VL], dG[4 * VL];
  T* ap = a.ap + B * std::max(H4, P) * tid;
  const int64_t ustep = proj ? 4 : 1;
  for (int64_t q = 0; q < T_; ++q) {
    const int64_t t = step_at(q), tp = a.reverse ? t + 1 : t - 1;
    int64_t ni;
    const int64_t na = split_rows(a.len, B, t, act, idle, &ni), nb = (na + MR - 1) / MR;
    // Phase A: dht and the cell's backward for this thread's units -> dgx[t].
    if (proj && u1 > u0) pack_rows<T>(a.dh, P, act, na, nb, P, ap);
    for (int64_t u = u0; u < u1; u += ustep) {
      const int64_t nv = std::min(ustep, u1 - u);
      for (int64_t ib = 0; ib < nb; ++ib) {
        const int64_t r0 = na * ib / nb, r = na * (ib + 1) / nb - r0;
        if (proj)
          col_rows<T, Isa>(r, nv, a.wr + u * P * VL, P * VL, VL, P, ap + r0 * P, buf);
        else
          for (int64_t m = 0; m < r; ++m)
            load_lanes<T, VL>(buf + m * 4 * VL, a.dh + act[r0 + m] * P + u * VL,
                              std::min<int64_t>(VL, H - u * VL));
        for (int64_t m = 0; m < r; ++m) {
          const int64_t b = act[r0 + m];
          const bool first = tp < 0 || tp >= T_ || (a.len != nullptr && tp >= a.len[b]);
          for (int64_t w = 0; w < nv; ++w) {
            const int64_t j = (u + w) * VL, n = std::min<int64_t>(VL, H - j);
            const T* gsrc = a.gates + (t * B + b) * H4 + j;
            for (int64_t g = 0; g < 4; ++g) load_lanes<T, VL>(gt + g * VL, gsrc + g * H, n);
            load_lanes<T, VL>(cs, a.c_all + (t * B + b) * H + j, n);
            if (!first)
              load_lanes<T, VL>(cp, a.c_all + (tp * B + b) * H + j, n);
            else if (a.c0 != nullptr)
              load_lanes<T, VL>(cp, a.c0 + b * H + j, n);
            else
              std::memset(cp, 0, sizeof cp);
            cell_bwd<T, VL>(gt, cs, cp, buf + (m * 4 + w) * VL, a.dcb + b * Hp + j, dG);
            T* dst = a.dgx + (t * B + b) * H4 + j;
            for (int64_t g = 0; g < 4; ++g) store_lanes<T, VL>(dst + g * H, dG + g * VL, n);
          }
        }
      }
    }
    for (int64_t i = 0; i < ni; ++i)
      for (int64_t g = 0; g < 4; ++g)
        copy_or_zero<T>(a.dgx + (t * B + idle[i]) * H4 + g * H + jc0, nullptr, jc1 - jc0);
    a.bar->wait(team);  // dgx[t] complete
    // Phase B: dh = dG w_hh for this thread's columns.
    if (v1 > v0) pack_rows(a.dgx + t * B * H4, H4, act, na, nb, H4, ap);
    for (int64_t v = v0; v < v1; v += 4) {
      const int64_t nv = std::min<int64_t>(4, v1 - v), p = v * VL;
      const int64_t n = std::min(nv * VL, P - p);
      for (int64_t ib = 0; ib < nb; ++ib) {
        const int64_t r0 = na * ib / nb, r = na * (ib + 1) / nb - r0;
        if (a.direct)
          col_rows<T, Isa>(r, nv, a.w_hh + v * VL, VL, P, H4, ap + r0 * H4, buf);
        else
          col_rows<T, Isa>(r, nv, a.wp + v * H4 * VL, H4 * VL, VL, H4, ap + r0 * H4, buf);
        for (int64_t m = 0; m < r; ++m)
          store_lanes<T, 4 * VL>(a.dh + act[r0 + m] * P + p, buf + m * 4 * VL, n);
      }
    }
    if (q + 1 < T_) enter(step_at(q + 1));
    a.bar->wait(team);  // dh complete
  }
  for (int64_t b = 0; b < B; ++b) {
    copy_or_zero(a.dh0 + b * P + pc0, a.dh + b * P + pc0, pc1 - pc0);
    copy_or_zero(a.dc0 + b * H + jc0, a.dcb + b * Hp + jc0, jc1 - jc0);
  }
}

// Below this many recurrent multiply-adds per step (B = 1 at H = 128: 3 us a step on one
// core) a second thread gains little over the barriers' cache-line round trips (measured here:
// 0.77 -> 0.6-0.7 ms for 256 steps), and a team whose cores are shared with other processes
// loses far more (one barrier per step waits on the partner's time slice).
constexpr int64_t kSplitMacs = int64_t{1} << 17;

// Calls of at most this many steps take the forward's unpacked (direct) gate path.
constexpr int64_t kDirectSteps = 2;

int team_size(int num_threads, int64_t macs_per_step, int64_t slices) {
  if (macs_per_step < kSplitMacs) return 1;
  return static_cast<int>(std::max<int64_t>(1, std::min<int64_t>(num_threads, slices)));
}

GENFAST_CONV_ISA_COPIES(fwd_f32, (const Fwd<float>* a, int tid, int team), (a, tid, team),
                        fwd_thread<float, kIsa>(*a, tid, team))
GENFAST_CONV_ISA_COPIES(fwd_f64, (const Fwd<double>* a, int tid, int team), (a, tid, team),
                        fwd_thread<double, kIsa>(*a, tid, team))
GENFAST_CONV_ISA_COPIES(bwd_f32, (const Bwd<float>* a, int tid, int team), (a, tid, team),
                        bwd_thread<float, kIsa>(*a, tid, team))
GENFAST_CONV_ISA_COPIES(bwd_f64, (const Bwd<double>* a, int tid, int team), (a, tid, team),
                        bwd_thread<double, kIsa>(*a, tid, team))

void fwd_run(int isa, const Fwd<float>* a, int tid, int team) { fwd_f32(isa, a, tid, team); }
void fwd_run(int isa, const Fwd<double>* a, int tid, int team) { fwd_f64(isa, a, tid, team); }
void bwd_run(int isa, const Bwd<float>* a, int tid, int team) { bwd_f32(isa, a, tid, team); }
void bwd_run(int isa, const Bwd<double>* a, int tid, int team) { bwd_f64(isa, a, tid, team); }

void check_sizes(const char* who, int64_t T, int64_t B, int64_t H, int64_t P, bool proj) {
  const std::string w = std::string("genfast CPU ") + who;
  if (T < 0 || B < 0 || H < 0 || P < 0) throw std::invalid_argument(w + ": negative size");
  if (!proj && P != H)
    throw std::invalid_argument(w + ": P=" + std::to_string(P) + " must equal H=" +
                                std::to_string(H) + " without w_hr");
}

template <typename T>
void fwd_typed(const void* gx, const void* w_hh, const void* w_hr, const void* h0,
               const void* c0, const int64_t* lengths, void* y, void* gates, void* c_all,
               void* hT, void* cT, int64_t T_, int64_t B, int64_t H, int64_t P, bool reverse,
               int num_threads) {
  const int isa = isa::active();
  const int64_t VL = vec_len<T>(isa);
  const bool proj = w_hr != nullptr;
  Fwd<T> a{};
  a.gx = static_cast<const T*>(gx), a.w_hh = static_cast<const T*>(w_hh);
  a.w_hr = static_cast<const T*>(w_hr), a.h0 = static_cast<const T*>(h0);
  a.c0 = static_cast<const T*>(c0), a.len = lengths;
  a.y = static_cast<T*>(y), a.gates = static_cast<T*>(gates), a.c_all = static_cast<T*>(c_all);
  a.hT = static_cast<T*>(hT), a.cT = static_cast<T*>(cT);
  a.steps = T_, a.B = B, a.H = H, a.P = P, a.reverse = reverse;
  a.npan = (H + VL - 1) / VL, a.npv = (P + VL - 1) / VL, a.Hp = a.npan * VL;
  // Packing w_hh costs about what a few steps at B = 1 cost (it is a transpose), so a call of
  // a few steps (a cell, a short chunk) reads w_hh's rows as they are. The two paths round
  // differently (dot products vs k-ordered FMA chains); each is thread-count independent.
  a.direct = T_ <= kDirectSteps;
  const int team = team_size(num_threads, B * 4 * H * P + (proj ? B * H * P : 0),
                             std::max(a.npan, a.npv));
  carve([&](Layout& l) {
    a.wp = l.take<T>(a.direct ? 0 : a.npan * P * 4 * VL);
    a.wr = l.take<T>(proj ? a.npv * H * VL : 0);
    a.hb = l.take<T>(2 * B * P), a.cb = l.take<T>(B * a.Hp), a.htb = l.take<T>(proj ? B * H : 0);
    a.rows = l.take<int64_t>(int64_t{team} * 2 * B);
    a.ap = l.take<T>(int64_t{team} * B * std::max(P, H));
  });
  Barrier bar;
  a.bar = &bar;
  run_team(team, [&](int tid, int n) { fwd_run(isa, &a, tid, n); });
}

template <typename T>
void bwd_typed(const void* w_hh, const void* w_hr, const void* c0, const int64_t* lengths,
               const void* gates, const void* c_all, const void* dy, const void* dhT,
               const void* dcT, void* dgx, void* dh0, void* dc0, void* dh_all, int64_t T_,
               int64_t B, int64_t H, int64_t P, bool reverse, int num_threads) {
  const int isa = isa::active();
  const int64_t VL = vec_len<T>(isa);
  const bool proj = w_hr != nullptr;
  Bwd<T> a{};
  a.w_hh = static_cast<const T*>(w_hh), a.w_hr = static_cast<const T*>(w_hr);
  a.c0 = static_cast<const T*>(c0), a.len = lengths;
  a.gates = static_cast<const T*>(gates), a.c_all = static_cast<const T*>(c_all);
  a.dy = static_cast<const T*>(dy), a.dhT = static_cast<const T*>(dhT);
  a.dcT = static_cast<const T*>(dcT), a.dgx = static_cast<T*>(dgx);
  a.dh0 = static_cast<T*>(dh0), a.dc0 = static_cast<T*>(dc0), a.dh_all = static_cast<T*>(dh_all);
  a.steps = T_, a.B = B, a.H = H, a.P = P, a.reverse = reverse;
  a.npan = (H + VL - 1) / VL, a.npv = (P + VL - 1) / VL, a.Hp = a.npan * VL;
  // The column tile reads w_hh's rows in place as well as packed (the same FMA chains, so the
  // same bits); in place, whole vectors must not run past a row, and long calls stream the
  // packed panels better.
  a.direct = T_ <= kDirectSteps && P % VL == 0;
  const int team = team_size(num_threads, B * 4 * H * P + (proj ? B * H * P : 0),
                             std::max(a.npan, a.npv));
  carve([&](Layout& l) {
    a.wp = l.take<T>(a.direct ? 0 : a.npv * 4 * H * VL);
    a.wr = l.take<T>(proj ? a.npan * P * VL : 0);
    a.dh = l.take<T>(B * P), a.dcb = l.take<T>(B * a.Hp);
    a.rows = l.take<int64_t>(int64_t{team} * 2 * B);
    a.ap = l.take<T>(int64_t{team} * B * std::max(4 * H, P));
  });
  Barrier bar;
  a.bar = &bar;
  run_team(team, [&](int tid, int n) { bwd_run(isa, &a, tid, n); });
}

}  // namespace

void lstm_fwd(const void* gx, const void* w_hh, const void* w_hr, const void* h0,
              const void* c0, const int64_t* lengths, void* y, void* gates, void* c_all,
              void* hT, void* cT, int64_t T, int64_t B, int64_t H, int64_t P, bool reverse,
              int dtype, int num_threads) {
  const bool f32 = cpu_is_float32(dtype, "lstm_fwd");
  check_sizes("lstm_fwd", T, B, H, P, w_hr != nullptr);
  if ((gates == nullptr) != (c_all == nullptr))
    throw std::invalid_argument("genfast CPU lstm_fwd: gates and c_all must both be given or "
                                "both be null");
  if (B == 0) return;
  (f32 ? fwd_typed<float> : fwd_typed<double>)(gx, w_hh, w_hr, h0, c0, lengths, y, gates, c_all,
                                               hT, cT, T, B, H, P, reverse, num_threads);
}

void lstm_bwd(const void* w_hh, const void* w_hr, const void* c0, const int64_t* lengths,
              const void* gates, const void* c_all, const void* dy, const void* dhT,
              const void* dcT, void* dgx, void* dh0, void* dc0, void* dh_all, int64_t T,
              int64_t B, int64_t H, int64_t P, bool reverse, int dtype, int num_threads) {
  const bool f32 = cpu_is_float32(dtype, "lstm_bwd");
  check_sizes("lstm_bwd", T, B, H, P, w_hr != nullptr);
  if (B == 0) return;
  (f32 ? bwd_typed<float> : bwd_typed<double>)(w_hh, w_hr, c0, lengths, gates, c_all, dy, dhT,
                                               dcT, dgx, dh0, dc0, dh_all, T, B, H, P, reverse,
                                               num_threads);
}

}  // namespace genfast::cpu
