// C++ CPU whole-network gated PixelCNN generation: every pixel of B images in one call, no Python
// per pixel. The contract (packed layout, meta, noise rows, start) is the module docstring of
// genfast/ops/masked_conv_generate.py.
//
// The fast-pixel-cnn schedule: at the start of row i the vertical stacks of every layer for the
// whole row (they read rows < i of the token image only) and the row's link term wl V + bl + bh
// + cond; then per pixel the horizontal stacks of every layer at that pixel only, the head, the
// draw, and the embedding of the token into layer 0's caches. Caches per image and layer: a ring
// of c+1 rows of the vertical input (row q in slot q mod (c+1), columns zero padded by c on both
// sides) and one row of the horizontal input (c zero columns on the left); layer 0's horizontal
// input is its ring's current row.
//
// ~85% of the MACs are the vertical stacks: per row a GEMM of (images x W pixels) by (rows*k*C
// inputs) by 2C outputs, where a pixel's inputs are c+1 contiguous windows of a ring row (the
// Toeplitz structure of a convolution along the row). Every matrix is re-laid out once per call
// into input-major blocks of kOut outputs (W_blk[block][input][kOut]) and every product runs the
// same register tile: kMR rows (pixels or images) x kOut outputs of accumulators stay in
// registers while a chunk of kChunkQ inputs streams past; the chunk's weights (16 KB) stay in L1
// while every tile of every image of the thread uses them. Per row (pixel / image) the
// arithmetic is the same whatever tile, chunk order or thread runs it, so results do not depend
// on the thread count. Threads split the images and run all rows on their own: no barrier.
// Layer 0 reads only token embeddings, so with few levels its stacks become table lookups (Net).
#include "cpu/masked_conv_generate.h"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <stdexcept>
#include <string>
#include <vector>

#include "common/dtype.h"
#include "common/fastmath.h"
#include "common/parallel.h"
#include "cpu/sample_row.h"

namespace genfast::cpu {
namespace {

using namespace sample_rows;  // sample_row, FilterScratch, to_scale

// 256 bytes of outputs per weight block: kMR x 4 zmm accumulators (16 of AVX-512's 32).
template <typename T>
constexpr int64_t kOut = 256 / sizeof(T);
constexpr int kMR = 4;
constexpr int64_t kChunkQ = 64;  // inputs per chunk: 64 x 256 B = 16 KB of weights in L1

struct Meta {
  int64_t L, A, C, E, k, c;
};

Meta parse_meta(const int64_t* meta, int64_t meta_len) {
  if (meta == nullptr || meta_len != 5)
    throw std::invalid_argument("pixelcnn_generate: meta must hold 5 entries [L, A, C, E, k]");
  const Meta m{meta[0], meta[1], meta[2], meta[3], meta[4], meta[4] / 2};
  if (m.L < 1 || m.A < 2 || m.C < 1 || m.E < 1 || m.k < 1 || m.k % 2 == 0)
    throw std::invalid_argument(
        "pixelcnn_generate: meta has a size out of range (L, C, E >= 1, A >= 2, k odd >= 1)");
  return m;
}

int64_t padded(int64_t n, int64_t width) { return (n + width - 1) / width * width; }

// One (outs, ins) matrix in input-major blocks; `at(o, i)` reads the canonical weight.
template <typename T, typename F>
size_t block_matrix(std::vector<T>& dst, int64_t outs, int64_t ins, F at) {
  constexpr int64_t W = kOut<T>;
  const size_t base = dst.size();
  dst.resize(base + static_cast<size_t>(padded(outs, W) * ins), T(0));
  T* d = dst.data() + base;
  for (int64_t o = 0; o < outs; ++o)
    for (int64_t i = 0; i < ins; ++i) d[((o / W) * ins + i) * W + o % W] = at(o, i);
  return base;
}

// A bias padded to whole blocks (padded outputs are 0 and never read back); a + b when b is set.
template <typename T>
size_t block_vector(std::vector<T>& dst, const T* a, const T* b, int64_t len) {
  const size_t base = dst.size();
  dst.resize(base + static_cast<size_t>(padded(len, kOut<T>)), T(0));
  for (int64_t i = 0; i < len; ++i) dst[base + size_t(i)] = b ? a[i] + b[i] : a[i];
  return base;
}

struct LayerOff {
  size_t wv, bv, wh, bhl, wl, wr, br;
  int64_t rows, taps;  // vertical rows read (c for mask A, c+1 for B); horizontal taps
};

template <typename T>
struct Net {
  Meta m;
  const T* emb;
  std::vector<T> w;
  std::vector<LayerOff> lay;
  size_t w1, b1, w2, b2;
  int64_t C2p, Cp, Ep, Ap;  // padded output counts
  // Layer 0 reads only token embeddings, so its stacks can be table lookups: tv[a][r*k+s] =
  // wv[:, :, r, s] @ emb[a] and th[a][s] = wh[:, :, 0, s] @ emb[a] (C2p each), built per call
  // when that costs less than a quarter of the products they replace (few levels, many pixels)
  // and the tables stay under 4M entries.
  bool lookup = false;
  std::vector<T> tv, th;
};

template <typename T>
Net<T> build_net(const T* src, const Meta& m) {
  constexpr int64_t W = kOut<T>;
  const int64_t C = m.C, C2 = 2 * C, c = m.c, k = m.k;
  Net<T> n{m, src, {}, {}, 0, 0, 0, 0, padded(C2, W), padded(C, W), padded(m.E, W),
           padded(m.A, W)};
  const T* p = src + m.A * C;
  for (int64_t l = 0; l < m.L; ++l) {
    const T *wv = p, *bv = wv + C2 * C * (c + 1) * k, *wh = bv + C2, *bh = wh + C2 * C * (c + 1),
            *wl = bh + C2, *bl = wl + C2 * C2, *wr = bl + C2, *br = wr + C * C;
    p = br + C;
    LayerOff o{};
    o.rows = l == 0 ? c : c + 1;
    o.taps = l == 0 ? c : c + 1;
    // input q = (r * k + s) * C + ci: row r, column s of the window, channel ci
    o.wv = block_matrix(n.w, C2, o.rows * k * C, [&](int64_t out, int64_t q) {
      const int64_t ci = q % C, s = (q / C) % k, r = q / (C * k);
      return wv[((out * C + ci) * (c + 1) + r) * k + s];
    });
    o.bv = block_vector<T>(n.w, bv, nullptr, C2);
    o.wh = block_matrix(n.w, C2, o.taps * C, [&](int64_t out, int64_t q) {
      return wh[(out * C + q % C) * (c + 1) + q / C];
    });
    o.bhl = block_vector<T>(n.w, bl, bh, C2);
    o.wl = block_matrix(n.w, C2, C2, [&](int64_t out, int64_t q) { return wl[out * C2 + q]; });
    o.wr = block_matrix(n.w, C, C, [&](int64_t out, int64_t q) { return wr[out * C + q]; });
    o.br = block_vector<T>(n.w, br, nullptr, C);
    n.lay.push_back(o);
  }
  const T *w1 = p, *b1 = w1 + m.E * C, *w2 = b1 + m.E, *b2 = w2 + m.A * m.E;
  n.w1 = block_matrix(n.w, m.E, C, [&](int64_t o, int64_t q) { return w1[o * C + q]; });
  n.b1 = block_vector<T>(n.w, b1, nullptr, m.E);
  n.w2 = block_matrix(n.w, m.A, m.E, [&](int64_t o, int64_t q) { return w2[o * m.E + q]; });
  n.b2 = block_vector<T>(n.w, b2, nullptr, m.A);
  return n;
}

// y_m[0:kOut] += sum_{q < nq} w[q][0:kOut] * x_m[q] for MR rows, x_m = x + m*xs, y_m = y + m*ys.
template <typename T, int MR>
GENFAST_INLINE void tile(const T* w, int64_t nq, const T* x, int64_t xs, T* y, int64_t ys) {
  constexpr int64_t W = kOut<T>;
  T acc[MR][W];
  for (int m = 0; m < MR; ++m)
    for (int64_t o = 0; o < W; ++o) acc[m][o] = y[m * ys + o];
  for (int64_t q = 0; q < nq; ++q) {
    const T* wq = w + q * W;
    for (int m = 0; m < MR; ++m) {
      const T v = x[m * xs + q];
      for (int64_t o = 0; o < W; ++o) acc[m][o] += wq[o] * v;
    }
  }
  for (int m = 0; m < MR; ++m)
    for (int64_t o = 0; o < W; ++o) y[m * ys + o] = acc[m][o];
}

// Strided operands of one product: G groups (images) of M rows; row (g, m) of x starts at
// x + g*xg + m*xs (input q0 of the matrix), of y at y + g*yg + m*ys.
template <typename T>
struct Rows {
  const T* x;
  int64_t xs, xg;
  T* y;
  int64_t ys, yg, M, G;
};

// y += W[:, q0 : q0+nq] x over every row, for a blocked matrix `w` of K inputs and `nb` blocks.
template <typename T>
GENFAST_INLINE void gemm(const T* w, int64_t K, int64_t q0, int64_t nq, int64_t nb,
                         const Rows<T>& r) {
  constexpr int64_t W = kOut<T>;
  for (int64_t b = 0; b < nb; ++b)
    for (int64_t c0 = 0; c0 < nq; c0 += kChunkQ) {
      const int64_t len = std::min(kChunkQ, nq - c0);
      const T* wc = w + (b * K + q0 + c0) * W;
      for (int64_t g = 0; g < r.G; ++g) {
        const T* x = r.x + g * r.xg + c0;
        T* y = r.y + g * r.yg + b * W;
        // Every row gets the same arithmetic in a tile of any height, so the split of the rows
        // (images per thread) does not change a bit.
        int64_t m = 0;
        for (; m + kMR <= r.M; m += kMR)
          tile<T, kMR>(wc, len, x + m * r.xs, r.xs, y + m * r.ys, r.ys);
        for (; m + 2 <= r.M; m += 2) tile<T, 2>(wc, len, x + m * r.xs, r.xs, y + m * r.ys, r.ys);
        if (m < r.M) tile<T, 1>(wc, len, x + m * r.xs, r.xs, y + m * r.ys, r.ys);
      }
    }
}

// z = tanh(u[0:C]) * sigmoid(u[C:2C]), as in causal_conv_generate.cpp: float32 from one fast exp
// each (tanh(f) = 2 sigmoid(2f) - 1, absolute error < 2e-7), float64 from libm so the fp64
// exactness test compares like for like with torch.
GENFAST_INLINE void gate(const float* u, int64_t C, float* z) {
  for (int64_t h = 0; h < C; ++h) {
    const float ef = fastmath::exp(std::min(-2.0f * u[h], 88.0f));
    const float eq = fastmath::exp(std::min(-u[C + h], 88.0f));
    z[h] = (2.0f / (1.0f + ef) - 1.0f) * (1.0f / (1.0f + eq));
  }
}
GENFAST_INLINE void gate(const double* u, int64_t C, double* z) {
  for (int64_t h = 0; h < C; ++h) z[h] = std::tanh(u[h]) * (1.0 / (1.0 + std::exp(-u[C + h])));
}

struct Call {
  const void* cond;
  int64_t* tokens;
  int64_t B, H, W, start;
  uint64_t seed;
  double inv_temp;
  int64_t top_k;
  double top_p;
};

// The caches and scratch of the images [b0, b0 + n) of one thread (zero padding included).
template <typename T>
struct State {
  int64_t n, C, Wp, RS, HS;  // images, channels, padded row width, per-image ring/row strides
  std::vector<T> ring;    // [L][n][c+1][W+2c][C]
  std::vector<T> hrow;    // [L][n][c+W][C] (layer 0's entry unused: its ring row serves)
  std::vector<T> link;    // [L][n][W][C2p]
  std::vector<T> V, u;    // [n][W][C2p], [C2p]
  std::vector<T> hp, z, out, e, logits;  // per image: C2p, Cp, Cp, Ep, Ap
  FilterScratch<T> filter;
  State(const Net<T>& net, const Call& c, int64_t n_)
      : n(n_), C(net.m.C), Wp(c.W + 2 * net.m.c), RS((net.m.c + 1) * Wp * net.m.C),
        HS((net.m.c + c.W) * net.m.C),
        ring(size_t(net.m.L * n * RS), T(0)), hrow(size_t(net.m.L * n * HS), T(0)),
        link(size_t(net.m.L * n * c.W * net.C2p)), V(size_t(n * c.W * net.C2p)),
        u(size_t(net.C2p)), hp(size_t(n * net.C2p)), z(size_t(n * net.Cp)),
        out(size_t(n * net.Cp)), e(size_t(n * net.Ep)), logits(size_t(n * net.Ap)) {}
  T* ring_row(int64_t l, int64_t s, int64_t row, int64_t c) {
    return ring.data() + (l * n + s) * RS + (row % (c + 1)) * Wp * C;
  }
};

// Layer 0's vertical stack of row i from the table: the taps over rows i-c .. i-1 in the order
// (r, s), positions outside the image skipped (their input is 0).
template <typename T>
GENFAST_INLINE void lookup_vertical(const Net<T>& net, const Call& c, State<T>& st, int64_t b0,
                                    int64_t i) {
  const int64_t cc = net.m.c, k = net.m.k, C2p = net.C2p, W = c.W;
  for (int64_t s = 0; s < st.n; ++s) {
    const int64_t* tok = c.tokens + (b0 + s) * c.H * W;
    for (int64_t j = 0; j < W; ++j) {
      T* v = st.V.data() + (s * W + j) * C2p;
      for (int64_t r = std::max<int64_t>(0, cc - i); r < cc; ++r)
        for (int64_t t = std::max<int64_t>(0, cc - j); t < std::min(k, W - j + cc); ++t) {
          const T* e = net.tv.data() + (tok[(i - cc + r) * W + j - cc + t] * cc * k + r * k + t) *
                                           C2p;
          for (int64_t q = 0; q < C2p; ++q) v[q] += e[q];
        }
    }
  }
}

// Row i's vertical stacks of every layer, the gated outputs into the next layer's ring, and
// (when the row has pixels to run) the link terms.
template <typename T>
GENFAST_INLINE void row_phase(const Net<T>& net, const Call& c, State<T>& st, int64_t b0,
                              int64_t i, bool need_link) {
  const Meta& m = net.m;
  const int64_t C = m.C, C2p = net.C2p, W = c.W, k = m.k, n = st.n, cc = m.c;
  const T* w = net.w.data();
  const T* cond = static_cast<const T*>(c.cond);
  // The last layer's vertical stack feeds only its link: rows of given tokens skip it.
  for (int64_t l = 0; l < (need_link ? m.L : m.L - 1); ++l) {
    const LayerOff& o = net.lay[size_t(l)];
    const int64_t K = o.rows * k * C;
    for (int64_t s = 0; s < n; ++s)
      for (int64_t j = 0; j < W; ++j)
        std::copy(w + o.bv, w + o.bv + C2p, st.V.data() + (s * W + j) * C2p);
    if (l == 0 && net.lookup) {
      lookup_vertical(net, c, st, b0, i);
    } else {
      for (int64_t r = 0; r < o.rows; ++r) {
        const int64_t row = i - cc + r;
        if (row < 0) continue;  // above the image: zeros
        const Rows<T> rows{st.ring_row(l, 0, row, cc), C, st.RS, st.V.data(), C2p, W * C2p, W,
                           n};
        gemm(w + o.wv, K, r * k * C, k * C, C2p / kOut<T>, rows);
      }
    }
    for (int64_t s = 0; s < n; ++s) {
      const T* cd = cond ? cond + ((b0 + s) * m.L + l) * 2 * C : nullptr;
      if (l + 1 < m.L) {
        T* dst = st.ring_row(l + 1, s, i, cc) + cc * C;
        for (int64_t j = 0; j < W; ++j) {
          const T* v = st.V.data() + (s * W + j) * C2p;
          T* u = st.u.data();
          for (int64_t q = 0; q < 2 * C; ++q) u[q] = cd ? v[q] + cd[q] : v[q];
          gate(u, C, dst + j * C);
        }
      }
      if (need_link) {
        T* lk = st.link.data() + ((l * n + s) * W) * C2p;
        for (int64_t j = 0; j < W; ++j) {
          std::copy(w + o.bhl, w + o.bhl + C2p, lk + j * C2p);
          if (cd)
            for (int64_t q = 0; q < 2 * C; ++q) lk[j * C2p + q] += cd[q];
        }
      }
    }
    if (need_link) {
      const Rows<T> rows{st.V.data(), C2p, W * C2p, st.link.data() + l * n * W * C2p, C2p,
                         W * C2p, W, n};
      gemm(w + o.wl, 2 * C, 0, 2 * C, C2p / kOut<T>, rows);
    }
  }
}

// Pixel (i, j): the horizontal stacks of every layer, then (p >= start) the head and the draw,
// then the token's embedding into layer 0's ring row.
template <typename T>
GENFAST_INLINE void pixel(const Net<T>& net, const Call& c, State<T>& st, int64_t b0, int64_t i,
                          int64_t j) {
  const Meta& m = net.m;
  const int64_t C = m.C, C2p = net.C2p, Cp = net.Cp, W = c.W, n = st.n, cc = m.c;
  const int64_t p = i * W + j;
  const T* w = net.w.data();
  for (int64_t l = 0; l < m.L; ++l) {
    const LayerOff& o = net.lay[size_t(l)];
    for (int64_t s = 0; s < n; ++s) {
      const T* lk = st.link.data() + ((l * n + s) * W + j) * C2p;
      std::copy(lk, lk + C2p, st.hp.data() + s * C2p);
    }
    // the window of columns j-c .. j (j-1 for mask A) starts at padded column j
    const T* hin = l == 0 ? st.ring_row(0, 0, i, cc) : st.hrow.data() + l * n * st.HS;
    const int64_t hs = l == 0 ? st.RS : st.HS;
    if (l == 0 && net.lookup) {
      for (int64_t s = 0; s < n; ++s) {
        const int64_t* tok = c.tokens + (b0 + s) * c.H * W + i * W;
        T* hp = st.hp.data() + s * C2p;
        for (int64_t t = std::max<int64_t>(0, cc - j); t < cc; ++t) {
          const T* e = net.th.data() + (tok[j - cc + t] * cc + t) * C2p;
          for (int64_t q = 0; q < C2p; ++q) hp[q] += e[q];
        }
      }
    } else if (o.taps > 0) {
      const Rows<T> rows{hin + j * C, hs, 0, st.hp.data(), C2p, 0, n, 1};
      gemm(w + o.wh, o.taps * C, 0, o.taps * C, C2p / kOut<T>, rows);
    }
    for (int64_t s = 0; s < n; ++s) {
      gate(st.hp.data() + s * C2p, C, st.z.data() + s * Cp);
      T* out = st.out.data() + s * Cp;
      std::copy(w + o.br, w + o.br + Cp, out);
      if (l > 0) {
        const T* h = hin + s * hs + (cc + j) * C;
        for (int64_t q = 0; q < C; ++q) out[q] += h[q];
      }
    }
    const Rows<T> rows{st.z.data(), Cp, 0, st.out.data(), Cp, 0, n, 1};
    gemm(w + o.wr, C, 0, C, Cp / kOut<T>, rows);
    if (l + 1 < m.L)
      for (int64_t s = 0; s < n; ++s)
        std::copy(st.out.data() + s * Cp, st.out.data() + s * Cp + C,
                  st.hrow.data() + (l + 1) * n * st.HS + s * st.HS + (cc + j) * C);
  }
  if (p >= c.start) {
    for (int64_t s = 0; s < n; ++s) {
      std::copy(w + net.b1, w + net.b1 + net.Ep, st.e.data() + s * net.Ep);
      std::copy(w + net.b2, w + net.b2 + net.Ap, st.logits.data() + s * net.Ap);
    }
    gemm(w + net.w1, C, 0, C, net.Ep / kOut<T>,
         Rows<T>{st.out.data(), Cp, 0, st.e.data(), net.Ep, 0, n, 1});
    for (auto& v : st.e) v = std::max(v, T(0));
    gemm(w + net.w2, m.E, 0, m.E, net.Ap / kOut<T>,
         Rows<T>{st.e.data(), net.Ep, 0, st.logits.data(), net.Ap, 0, n, 1});
    for (int64_t s = 0; s < n; ++s) {
      const int64_t b = b0 + s;
      const auto row = static_cast<uint64_t>(p) * static_cast<uint64_t>(c.B) + uint64_t(b);
      c.tokens[b * c.H * W + p] = sample_row(st.logits.data() + s * net.Ap, m.A, c.seed, row,
                                             to_scale<T>(c.inv_temp), c.top_k, c.top_p,
                                             st.filter);
    }
  }
  for (int64_t s = 0; s < n; ++s) {
    const int64_t tok = c.tokens[(b0 + s) * c.H * W + p];
    std::copy(net.emb + tok * C, net.emb + (tok + 1) * C, st.ring_row(0, s, i, cc) + (cc + j) * C);
  }
}

template <typename T>
GENFAST_INLINE void run_images(const Net<T>& net, const Call& c, int64_t b0, int64_t b1) {
  State<T> st(net, c, b1 - b0);
  const int64_t C = net.m.C, cc = net.m.c;
  for (int64_t i = 0; i < c.H; ++i) {
    const bool pixels = (i + 1) * c.W > c.start;  // a row of given tokens needs no pixel phase
    row_phase(net, c, st, b0, i, pixels);
    if (pixels) {
      for (int64_t j = 0; j < c.W; ++j) pixel(net, c, st, b0, i, j);
    } else {
      for (int64_t s = 0; s < st.n; ++s)
        for (int64_t j = 0; j < c.W; ++j) {
          const int64_t tok = c.tokens[(b0 + s) * c.H * c.W + i * c.W + j];
          std::copy(net.emb + tok * C, net.emb + (tok + 1) * C,
                    st.ring_row(0, s, i, cc) + (cc + j) * C);
        }
    }
  }
}

// The layer-0 tables through the same tile: for each tap, the rows emb[0..A) times its block.
template <typename T>
GENFAST_INLINE void build_tables(Net<T>& net) {
  const Meta& m = net.m;
  const int64_t C = m.C, C2p = net.C2p, ck = m.c * m.k, nb = C2p / kOut<T>;
  const LayerOff& o = net.lay[0];
  net.tv.assign(size_t(m.A * ck * C2p), T(0));
  net.th.assign(size_t(m.A * m.c * C2p), T(0));
  for (int64_t t = 0; t < ck; ++t)
    gemm(net.w.data() + o.wv, ck * C, t * C, C, nb,
         Rows<T>{net.emb, C, 0, net.tv.data() + t * C2p, ck * C2p, 0, m.A, 1});
  for (int64_t t = 0; t < m.c; ++t)
    gemm(net.w.data() + o.wh, m.c * C, t * C, C, nb,
         Rows<T>{net.emb, C, 0, net.th.data() + t * C2p, m.c * C2p, 0, m.A, 1});
}

GENFAST_MULTIVERSIONED(tables_f32, (Net<float>& net), (net), build_tables<float>(net))
GENFAST_MULTIVERSIONED(tables_f64, (Net<double>& net), (net), build_tables<double>(net))

GENFAST_MULTIVERSIONED(run_f32, (const Net<float>& net, const Call& c, int64_t b0, int64_t b1),
                       (net, c, b0, b1), run_images<float>(net, c, b0, b1))
GENFAST_MULTIVERSIONED(run_f64, (const Net<double>& net, const Call& c, int64_t b0, int64_t b1),
                       (net, c, b0, b1), run_images<double>(net, c, b0, b1))

template <typename T>
void generate(const void* weights, const Meta& m, const Call& c, int num_threads) {
  Net<T> net = build_net(static_cast<const T*>(weights), m);
  const int64_t C = m.C, C2 = 2 * C;
  net.lookup = m.c > 0 && 4 * m.A <= c.B * c.H * c.W && m.A * m.c * m.k * net.C2p <= (1 << 22);
  if (net.lookup) {
    if constexpr (sizeof(T) == 4)
      tables_f32(net);
    else
      tables_f64(net);
  }
  // MACs per image, the unit of parallel_for's single-thread cut-off.
  const int64_t work = c.H * c.W *
                       (m.L * (C2 * C * ((m.c + 1) * m.k + m.c + 1) + C2 * C2 + C * C) +
                        m.E * C + m.A * m.E);
  parallel_for(c.B, work, num_threads, [&](int64_t b0, int64_t b1) {
    if constexpr (sizeof(T) == 4)
      run_f32(net, c, b0, b1);
    else
      run_f64(net, c, b0, b1);
  });
}

}  // namespace

void pixelcnn_generate(const void* weights, const int64_t* meta, int64_t meta_len,
                       const void* cond, int64_t* tokens, int64_t B, int64_t H, int64_t W,
                       int64_t start, uint64_t seed, double inv_temperature, int64_t top_k,
                       double top_p, int dtype, int num_threads) {
  const bool f32 = cpu_is_float32(dtype, "pixelcnn_generate kernel");
  const Meta m = parse_meta(meta, meta_len);
  if (B < 0 || H < 0 || W < 0)
    throw std::invalid_argument("pixelcnn_generate: negative B, H or W");
  if (start < 0 || start > H * W)
    throw std::invalid_argument("pixelcnn_generate: start must be in [0, H*W]");
  if (B == 0 || start == H * W) return;
  if (weights == nullptr || tokens == nullptr)
    throw std::invalid_argument("pixelcnn_generate: null weights or tokens pointer");
  // A given token out of range would index past the embedding.
  for (int64_t b = 0; b < B; ++b)
    for (int64_t p = 0; p < start; ++p)
      if (tokens[b * H * W + p] < 0 || tokens[b * H * W + p] >= m.A)
        throw std::invalid_argument("pixelcnn_generate: tokens[" + std::to_string(b) +
                                    "] must be in [0, A) at the pixels p < start");
  const Call c{cond, tokens, B, H, W, start, seed, inv_temperature, top_k, top_p};
  f32 ? generate<float>(weights, m, c, num_threads) : generate<double>(weights, m, c, num_threads);
}

}  // namespace genfast::cpu
