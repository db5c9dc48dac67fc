// The float64 reference of tests/cuda_emu/attention_emu.cpp: the contract's attention (pooled
// keys, bottom-right causal mask, empty rows), its backward and the double backward of the
// design note, materialised per (batch, head) slice, plus central-difference checks that the
// backward is the forward's gradient and the double backward the backward's.
#pragma once
#include <cmath>
#include <cstdint>
#include <random>
#include <vector>

using Vec = std::vector<double>;

struct Case {
  const char* name;
  int B, Hh, N, Mk, Dk, Dv;  // Mk: keys without pooling
  bool causal = false, pool = false;
  int ph = 0, pw = 0;
  double scale = 1;
  bool strided = false, null_gq = false, null_gk = false, null_gv = false;
  bool ties = false;  // k and v on a coarse grid: pooling windows hold equal maxima
  int64_t M() const { return pool ? int64_t{ph / 2} * (pw / 2) : Mk; }
  int64_t Sk() const { return pool ? int64_t{ph} * pw : Mk; }
  static Case keys(const char* name, int B, int Hh, int N, int M, int Dk, int Dv, bool causal,
                   bool strided) {
    Case c{name, B, Hh, N, M, Dk, Dv};
    c.causal = causal, c.strided = strided, c.scale = 1 / std::sqrt(double(Dk));
    return c;
  }
  // SAGAN: the queries are the grid's ph*pw positions, the keys its 2x2-pooled grid, scale 1.
  static Case pooled(const char* name, int B, int Hh, int Dk, int Dv, int ph, int pw) {
    Case c{name, B, Hh, ph * pw, 0, Dk, Dv};
    c.pool = true, c.ph = ph, c.pw = pw;
    return c;
  }
  Case with_strided() const {
    Case c = *this;
    c.strided = true;
    return c;
  }
  Case with_ties() const {
    Case c = *this;
    c.ties = true;
    return c;
  }
  Case with_null(bool q, bool k, bool v) const {
    Case c = *this;
    c.null_gq = q, c.null_gk = k, c.null_gv = v;
    return c;
  }
};

struct Data {
  Vec q, k, v, dO, gq, gk, gv;  // (BH, rows, D); k, v unpooled (Sk rows); null g's are zeros
};

inline Data make_data(const Case& c) {
  static unsigned seed = 1;
  std::mt19937 g(seed++);
  std::uniform_real_distribution<double> u(-1, 1);
  const int64_t BH = int64_t{c.B} * c.Hh;
  const auto fill = [&](int64_t n, bool zero) {
    Vec x(n);
    for (auto& e : x) e = zero ? 0.0 : u(g);
    return x;
  };
  Data d;
  d.q = fill(BH * c.N * c.Dk, false), d.k = fill(BH * c.Sk() * c.Dk, false);
  d.v = fill(BH * c.Sk() * c.Dv, false), d.dO = fill(BH * c.N * c.Dv, false);
  d.gq = fill(BH * c.N * c.Dk, c.null_gq), d.gk = fill(BH * c.M() * c.Dk, c.null_gk);
  d.gv = fill(BH * c.M() * c.Dv, c.null_gv);
  if (c.ties)
    for (Vec* x : {&d.k, &d.v})
      for (auto& e : *x) e = std::round(e * 2) / 2;
  return d;
}

// One (batch, head) slice: pointers to its rows.
struct Slice {
  Vec q, k, v, dO, gq, gk, gv;
};

struct SliceOut {
  Vec o, lse, dq, dk, dv, Gq, Gk, Gv, Gdo;
};

// Pooled keys and, per element, which of the window's 4 rows held the (first) maximum.
inline void pool_rows(const Case& c, const Vec& raw, int64_t D, Vec& out, std::vector<int>& arg) {
  const int64_t M = c.M();
  if (!c.pool) {
    out = raw, arg.assign(M * D, 0);
    return;
  }
  out.assign(M * D, 0), arg.assign(M * D, 0);
  const int64_t wp = c.pw / 2, off[4] = {0, 1, c.pw, c.pw + 1};
  for (int64_t j = 0; j < M; ++j)
    for (int64_t d = 0; d < D; ++d) {
      const int64_t r = 2 * (j / wp) * c.pw + 2 * (j % wp);
      int best = 0;
      for (int t = 1; t < 4; ++t)
        if (raw[(r + off[t]) * D + d] > raw[(r + off[best]) * D + d]) best = t;
      out[j * D + d] = raw[(r + off[best]) * D + d], arg[j * D + d] = best;
    }
}

inline SliceOut slice_ref(const Case& c, const Slice& s, bool second) {
  const int64_t N = c.N, M = c.M(), Dk = c.Dk, Dv = c.Dv;
  Vec kp, vp;
  std::vector<int> ak, av;
  pool_rows(c, s.k, Dk, kp, ak), pool_rows(c, s.v, Dv, vp, av);
  const auto vis = [&](int64_t i, int64_t j) { return !c.causal || j <= i + (M - N); };
  SliceOut r;
  Vec P(N * M, 0), dP(N * M, 0), D(N, 0);
  r.o.assign(N * Dv, 0), r.lse.assign(N, -INFINITY);
  for (int64_t i = 0; i < N; ++i) {
    double mx = -INFINITY;
    Vec S(M, -INFINITY);
    for (int64_t j = 0; j < M; ++j) {
      if (!vis(i, j)) continue;
      double t = 0;
      for (int64_t d = 0; d < Dk; ++d) t += s.q[i * Dk + d] * kp[j * Dk + d];
      S[j] = c.scale * t, mx = std::max(mx, S[j]);
    }
    if (mx == -INFINITY) continue;
    double l = 0;
    for (int64_t j = 0; j < M; ++j) l += std::exp(S[j] - mx);
    r.lse[i] = mx + std::log(l);
    for (int64_t j = 0; j < M; ++j) P[i * M + j] = std::exp(S[j] - r.lse[i]);
    for (int64_t j = 0; j < M; ++j)
      for (int64_t d = 0; d < Dv; ++d) r.o[i * Dv + d] += P[i * M + j] * vp[j * Dv + d];
    for (int64_t d = 0; d < Dv; ++d) D[i] += s.dO[i * Dv + d] * r.o[i * Dv + d];
    for (int64_t j = 0; j < M; ++j)
      for (int64_t d = 0; d < Dv; ++d) dP[i * M + j] += s.dO[i * Dv + d] * vp[j * Dv + d];
  }
  Vec dS(N * M), dkp(M * Dk, 0), dvp(M * Dv, 0);
  r.dq.assign(N * Dk, 0);
  for (int64_t i = 0; i < N; ++i)
    for (int64_t j = 0; j < M; ++j) {
      const double p = P[i * M + j], ds = p * (dP[i * M + j] - D[i]);
      dS[i * M + j] = ds;
      for (int64_t d = 0; d < Dk; ++d) {
        r.dq[i * Dk + d] += c.scale * ds * kp[j * Dk + d];
        dkp[j * Dk + d] += c.scale * ds * s.q[i * Dk + d];
      }
      for (int64_t d = 0; d < Dv; ++d) dvp[j * Dv + d] += p * s.dO[i * Dv + d];
    }
  // Route to the unpooled rows (first maximum; every other row 0).
  r.dk.assign(c.Sk() * Dk, 0), r.dv.assign(c.Sk() * Dv, 0);
  const int64_t wp = c.pool ? c.pw / 2 : 1, off[4] = {0, 1, c.pw, c.pw + 1};
  for (int64_t j = 0; j < M; ++j) {
    const int64_t row = c.pool ? 2 * (j / wp) * c.pw + 2 * (j % wp) : j;
    for (int64_t d = 0; d < Dk; ++d) r.dk[(row + off[ak[j * Dk + d]]) * Dk + d] = dkp[j * Dk + d];
    for (int64_t d = 0; d < Dv; ++d) r.dv[(row + off[av[j * Dv + d]]) * Dv + d] = dvp[j * Dv + d];
  }
  if (!second) return r;
  // The double backward (design note, section 1).
  r.Gq.assign(N * Dk, 0), r.Gk.assign(M * Dk, 0), r.Gv.assign(M * Dv, 0);
  r.Gdo.assign(N * Dv, 0);
  Vec X(N * M, 0), Y(N * M, 0), rr(N, 0), w(N, 0);
  for (int64_t i = 0; i < N; ++i) {
    double a = 0, cc = 0;
    for (int64_t j = 0; j < M; ++j) {
      double x = 0, y = 0;
      for (int64_t d = 0; d < Dk; ++d)
        x += s.gq[i * Dk + d] * kp[j * Dk + d] + s.q[i * Dk + d] * s.gk[j * Dk + d];
      for (int64_t d = 0; d < Dv; ++d) y += s.dO[i * Dv + d] * s.gv[j * Dv + d];
      X[i * M + j] = c.scale * x, Y[i * M + j] = y;
      const double p = P[i * M + j];
      rr[i] += p * X[i * M + j], a += p * y, cc += p * X[i * M + j] * dP[i * M + j];
    }
    w[i] = a + cc - 2 * rr[i] * D[i];
  }
  for (int64_t i = 0; i < N; ++i)
    for (int64_t j = 0; j < M; ++j) {
      const double p = P[i * M + j], dp = dP[i * M + j], x = X[i * M + j];
      const double W = Y[i * M + j] + x * (dp - D[i]) - rr[i] * dp;
      const double U = p * (W - w[i]), Z = p * (x - rr[i]), ds = dS[i * M + j];
      for (int64_t d = 0; d < Dk; ++d) {
        r.Gq[i * Dk + d] += c.scale * (ds * s.gk[j * Dk + d] + U * kp[j * Dk + d]);
        r.Gk[j * Dk + d] += c.scale * (ds * s.gq[i * Dk + d] + U * s.q[i * Dk + d]);
      }
      for (int64_t d = 0; d < Dv; ++d) {
        r.Gv[j * Dv + d] += Z * s.dO[i * Dv + d];
        r.Gdo[i * Dv + d] += p * s.gv[j * Dv + d] + Z * vp[j * Dv + d];
      }
    }
  return r;
}

inline double inner(const Vec& a, const Vec& b) {
  double s = 0;
  for (size_t i = 0; i < a.size(); ++i) s += a[i] * b[i];
  return s;
}

// (Not run with ties: a difference quotient across equal maxima averages their gradients,
// where the contract routes to the first.)
// Relative error of the analytic directional derivatives of slice s against central
// differences: <dO, o> for the backward, <gq, dq> + <gk, dk> + <gv, dv> for the double one.
inline double fd_check(const Case& c, const Slice& s) {
  std::mt19937 g(99);
  std::uniform_real_distribution<double> u(-1, 1);
  Slice dir = s;
  for (Vec* x : {&dir.q, &dir.k, &dir.v, &dir.dO})
    for (auto& e : *x) e = u(g);
  const auto at = [&](double h) {
    Slice t = s;
    for (size_t i = 0; i < t.q.size(); ++i) t.q[i] += h * dir.q[i];
    for (size_t i = 0; i < t.k.size(); ++i) t.k[i] += h * dir.k[i];
    for (size_t i = 0; i < t.v.size(); ++i) t.v[i] += h * dir.v[i];
    for (size_t i = 0; i < t.dO.size(); ++i) t.dO[i] += h * dir.dO[i];
    return t;
  };
  const double h = 1e-5;
  const SliceOut r = slice_ref(c, s, !c.pool), rp = slice_ref(c, at(h), false),
                 rm = slice_ref(c, at(-h), false);
  const auto rel = [](double fd, double an) { return std::fabs(fd - an) / (1e-3 + std::fabs(an)); };
  // <dO, o> with dO held fixed: perturb q, k, v only (dO's direction enters the second check).
  const auto f1 = [&](double hh) {
    Slice t = at(hh);
    t.dO = s.dO;
    return inner(s.dO, slice_ref(c, t, false).o);
  };
  const double an1 = inner(r.dq, dir.q) + inner(r.dk, dir.k) + inner(r.dv, dir.v);
  double err = rel((f1(h) - f1(-h)) / (2 * h), an1);
  if (!c.pool) {
    const auto f2 = [&](const SliceOut& o) {
      return inner(s.gq, o.dq) + inner(s.gk, o.dk) + inner(s.gv, o.dv);
    };
    const double an2 = inner(r.Gq, dir.q) + inner(r.Gk, dir.k) + inner(r.Gv, dir.v) +
                       inner(r.Gdo, dir.dO);
    err = std::max(err, rel((f2(rp) - f2(rm)) / (2 * h), an2));
  }
  return err;
}

struct Ref {
  Vec o, lse, dq, dk, dv, Gq, Gk, Gv, Gdo;
  double fd_err = 0;
};

inline Ref reference(const Case& c, const Data& d, bool fd) {
  const int64_t BH = int64_t{c.B} * c.Hh, N = c.N, M = c.M(), Sk = c.Sk(), Dk = c.Dk, Dv = c.Dv;
  Ref r;
  const auto part = [](const Vec& x, int64_t i, int64_t n) {
    return Vec(x.begin() + i * n, x.begin() + (i + 1) * n);
  };
  const auto put = [](Vec& dst, const Vec& src) { dst.insert(dst.end(), src.begin(), src.end()); };
  for (int64_t bh = 0; bh < BH; ++bh) {
    Slice s{part(d.q, bh, N * Dk),  part(d.k, bh, Sk * Dk), part(d.v, bh, Sk * Dv),
            part(d.dO, bh, N * Dv), part(d.gq, bh, N * Dk), part(d.gk, bh, M * Dk),
            part(d.gv, bh, M * Dv)};
    const SliceOut o = slice_ref(c, s, !c.pool);
    put(r.o, o.o), put(r.lse, o.lse), put(r.dq, o.dq), put(r.dk, o.dk), put(r.dv, o.dv);
    put(r.Gq, o.Gq), put(r.Gk, o.Gk), put(r.Gv, o.Gv), put(r.Gdo, o.Gdo);
    if (fd && bh == 0 && N > 0 && M > 0 && !c.ties) r.fd_err = fd_check(c, s);
  }
  return r;
}

// Worst error over a case's outputs, each relative to the output's largest magnitude (at least
// 1e-3): an all-zero expected output must come back exactly 0. -inf must match -inf; NaN fails.
struct Errs {
  double worst = 0;
  const char* which = "-";
  void add(const char* name, const Vec& got, const Vec& want) {
    double scale = 1e-3, e = 0;
    for (double w : want)
      if (std::isfinite(w)) scale = std::max(scale, std::fabs(w));
    if (got.size() != want.size()) e = INFINITY;
    for (size_t i = 0; i < got.size() && i < want.size(); ++i) {
      if (std::isinf(want[i]) || std::isinf(got[i])) {
        if (got[i] != want[i]) e = INFINITY;
        continue;
      }
      const double d = std::fabs(got[i] - want[i]) / scale;
      e = std::isnan(d) ? INFINITY : std::max(e, d);
    }
    if (e > worst || (e == worst && worst == 0 && which[0] == '-')) worst = e, which = name;
  }
};
