// C++ CPU native sampling loop of an LSTM language model: N steps of B streams in one call, no
// Python per step. The contract (packed layout, meta, state, noise rows, start) is the module
// docstring of genfast/ops/lstm_generate.py.
//
// A step at batch 1 is a few GEMVs (4H x H per layer, 4H x 2H above layer 0, V x H for the head)
// that stream every weight once, so the loop is laid out for bandwidth: each matrix is re-laid
// out once per call into input-major blocks of kOut outputs (W_blk[block][input][kOut], one
// contiguous stream; axpy form, acc[0:kOut] += W_blk[block][i][0:kOut] * x[i], no horizontal
// sums, the accumulators in registers over the whole input loop). A block holds the four gates
// (i, f, g, o) of the same kOut/4 hidden units, so the cell update runs on the accumulators the
// moment the block is done: no 4H pre-activation vector is written or read back. Layer 0's input
// side is one row of the folded table (tab[token]) loaded as the block's initial accumulators.
// Up to kGroup streams share every weight load, and all of a thread's stream groups run one
// block before the next, so at batch > 1 a block is read from memory once per step and then
// from L1/L2 (GEMM-like reuse). Streams are independent, so threads split them and run all N
// steps on their own: no barrier. A stream's arithmetic is the same whatever group or thread
// runs it, so results do not depend on the thread count.
//
// A batch-1 call runs on one thread. Splitting the hidden units over threads (a barrier per layer
// and per drawn token) was tried and measured no faster on the 2-core development box, where one
// thread already streams the weights at about the cache's bandwidth: 1x128 (300 KB, L2) ~3.7 us
// and 2x512 (12.5 MB, L3) ~200 us per step, float32.
#include "cpu/lstm_generate.h"

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

// Outputs per weight block: 256 bytes, 4 zmm / 8 ymm of independent FMA chains per stream,
// enough to hide the FMA latency at batch 1; kGroup streams of them fill the AVX-512 register
// file (16 of 32 zmm), leaving room for the weight loads.
template <typename T>
constexpr int64_t kOut = 256 / sizeof(T);
template <typename T>
constexpr int64_t kUnits = kOut<T> / 4;  // hidden units per block (their 4 gates)
constexpr int kGroup = 4;

struct Meta {
  int64_t L, V, H;
};

Meta parse_meta(const int64_t* meta, int64_t meta_len) {
  if (meta == nullptr || meta_len != 3)
    throw std::invalid_argument("lstm_generate: meta must hold 3 entries [L, V, H]");
  const Meta m{meta[0], meta[1], meta[2]};
  if (m.L < 1 || m.V < 2 || m.H < 1)
    throw std::invalid_argument("lstm_generate: meta has a size out of range (L >= 1, V >= 2, "
                                "H >= 1)");
  return m;
}

int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

// The network of one call: the canonical table, and every matrix blocked.
template <typename T>
struct Net {
  Meta m;
  int64_t Hp, nb, Vp, vb;  // padded hidden size, its blocks; padded vocabulary, its blocks
  const T* tab;            // canonical (V, 4H)
  std::vector<T> w;        // [w_hh0 blocks (H inputs)], per layer l >= 1 [w_ih|w_hh blocks
                           // (2H inputs), bias (nb*kOut)], [w_out blocks (H inputs), b_out (Vp)]
  std::vector<size_t> off;  // w_hh0, then per layer (w, b), then (w_out, b_out)
};

// Slot q*U + u of gate block b holds gate q of hidden unit b*U + u (zero past H).
template <typename T, typename F>
void gate_blocks(std::vector<T>& dst, int64_t H, int64_t nb, int64_t ins, F at) {
  constexpr int64_t W = kOut<T>, U = kUnits<T>;
  const size_t base = dst.size();
  dst.resize(base + static_cast<size_t>(nb * ins * W), T(0));
  T* d = dst.data() + base;
  for (int64_t b = 0; b < nb; ++b)
    for (int64_t i = 0; i < ins; ++i)
      for (int64_t q = 0; q < 4; ++q)
        for (int64_t u = 0; u < U && b * U + u < H; ++u)
          d[(b * ins + i) * W + q * U + u] = at(q * H + b * U + u, i);
}

template <typename T>
Net<T> build_net(const T* src, const Meta& m) {
  constexpr int64_t W = kOut<T>, U = kUnits<T>;
  const int64_t H = m.H, V = m.V, nb = ceil_div(H, U);
  Net<T> n{m, nb * U, nb, ceil_div(V, W) * W, ceil_div(V, W), src, {}, {}};
  const T* p = src + V * 4 * H;
  n.off.push_back(0);
  gate_blocks(n.w, H, nb, H, [&](int64_t r, int64_t i) { return p[r * H + i]; });
  p += 4 * H * H;
  for (int64_t l = 1; l < m.L; ++l) {
    const T *wi = p, *wh = wi + 4 * H * H, *bias = wh + 4 * H * H;
    p = bias + 4 * H;
    n.off.push_back(n.w.size());
    gate_blocks(n.w, H, nb, 2 * H, [&](int64_t r, int64_t i) {
      return i < H ? wi[r * H + i] : wh[r * H + i - H];
    });
    n.off.push_back(n.w.size());
    gate_blocks(n.w, H, nb, 1, [&](int64_t r, int64_t) { return bias[r]; });
  }
  const T *wo = p, *bo = p + V * H;
  n.off.push_back(n.w.size());
  const size_t base = n.w.size();
  n.w.resize(base + static_cast<size_t>(n.vb * H * W + n.Vp), T(0));
  T* d = n.w.data() + base;
  for (int64_t o = 0; o < V; ++o)
    for (int64_t i = 0; i < H; ++i) d[((o / W) * H + i) * W + o % W] = wo[o * H + i];
  n.off.push_back(base + static_cast<size_t>(n.vb * H * W));
  std::copy(bo, bo + V, d + n.vb * H * W);
  return n;
}

// acc[s][0:W] += sum over i < ins of w[i][0:W] * x[s][i], for NS streams.
template <typename T, int NS>
GENFAST_INLINE void block_gemv(const T* __restrict w, int64_t ins, const T* const* x,
                               T (*acc)[kOut<T>]) {
  constexpr int64_t W = kOut<T>;
  for (int64_t i = 0; i < ins; ++i) {
    const T* wi = w + i * W;
    for (int s = 0; s < NS; ++s) {
      const T v = x[s][i];
      for (int64_t o = 0; o < W; ++o) acc[s][o] += wi[o] * v;
    }
  }
}

// sigmoid and tanh. float32: from one fast exp each (tanh(x) = 2 sigmoid(2x) - 1), the argument
// clamped to exp's domain where both have long saturated. float64: libm, so the fp64 exactness
// test compares like for like with torch.
GENFAST_INLINE float sigm(float x) { return 1.0f / (1.0f + fastmath::exp(std::min(-x, 88.0f))); }
GENFAST_INLINE float tanh_(float x) {
  return 2.0f / (1.0f + fastmath::exp(std::min(-2.0f * x, 88.0f))) - 1.0f;
}
GENFAST_INLINE double sigm(double x) { return 1.0 / (1.0 + std::exp(-x)); }
GENFAST_INLINE double tanh_(double x) { return std::tanh(x); }

// The cell on a finished block's accumulators: units b*U .. b*U+U-1 of one stream.
template <typename T>
GENFAST_INLINE void cell(const T* acc, T* c, T* h) {
  constexpr int64_t U = kUnits<T>;
  for (int64_t u = 0; u < U; ++u) {
    const T i = sigm(acc[u]), f = sigm(acc[U + u]), g = tanh_(acc[2 * U + u]);
    const T o = sigm(acc[3 * U + u]);
    const T cn = f * c[u] + i * g;
    c[u] = cn;
    h[u] = o * tanh_(cn);
  }
}

struct Call {
  int64_t* tokens;
  int64_t B, N, start, offset;
  uint64_t seed;
  double inv_temp;
  int64_t top_k;
  double top_p;
};

// Streams [b0, b0 + S) of the call: per layer the state h in two buffers (step p reads buffer
// (p-1)&1, the old h, while the cells write buffer p&1) and c, each (S, Hp); the logits (S, Vp).
template <typename T>
struct State {
  int64_t S, Hp, L;
  std::vector<T> h, c, logits;
  FilterScratch<T> filter;
  State(int64_t S_, int64_t L_, int64_t Hp_, int64_t Vp)
      : S(S_), Hp(Hp_), L(L_), h(size_t(2 * L_ * S_ * Hp_), T(0)), c(size_t(L_ * S_ * Hp_), T(0)),
        logits(size_t(S_ * Vp)) {
    // The sampler's scratch at full size up front: no allocation inside the loop.
    for (auto* v : {&filter.s, &filter.top}) v->reserve(size_t(Vp));
    filter.mass.reserve(2048);
    filter.bucket.reserve(size_t(Vp));
  }
  T* hb(int64_t buf, int64_t l, int64_t s) { return h.data() + ((buf * L + l) * S + s) * Hp; }
  T* cb(int64_t l, int64_t s) { return c.data() + (l * S + s) * Hp; }
};

// Layer l's step for streams g0 .. g0+NS-1 of the thread, gate block b.
template <typename T, int NS>
GENFAST_INLINE void layer_block(const Net<T>& net, State<T>& st, const Call& c, int64_t l,
                                int64_t b, int64_t g0, int64_t b0, int64_t p) {
  constexpr int64_t W = kOut<T>, U = kUnits<T>;
  const int64_t H = net.m.H, cur = (p - 1) & 1, nxt = p & 1;
  alignas(64) T acc[NS][W];
  const T* x[NS];
  const T* x2[NS];
  if (l == 0) {
    const int64_t units = std::min(U, H - b * U);
    for (int s = 0; s < NS; ++s) {
      const T* row = net.tab + c.tokens[(b0 + g0 + s) * c.N + p - 1] * 4 * H + b * U;
      for (int64_t q = 0; q < 4; ++q) {
        for (int64_t u = 0; u < units; ++u) acc[s][q * U + u] = row[q * H + u];
        for (int64_t u = units; u < U; ++u) acc[s][q * U + u] = T(0);
      }
      x[s] = st.hb(cur, 0, g0 + s);
    }
    block_gemv<T, NS>(net.w.data() + net.off[0] + b * H * W, H, x, acc);
  } else {
    const T* bias = net.w.data() + net.off[size_t(2 * l)] + b * W;
    for (int s = 0; s < NS; ++s) {
      std::copy(bias, bias + W, acc[s]);
      x[s] = st.hb(nxt, l - 1, g0 + s);  // layer l-1's new h
      x2[s] = st.hb(cur, l, g0 + s);
    }
    const T* w = net.w.data() + net.off[size_t(2 * l - 1)] + b * 2 * H * W;
    block_gemv<T, NS>(w, H, x, acc);
    block_gemv<T, NS>(w + H * W, H, x2, acc);
  }
  for (int s = 0; s < NS; ++s)
    cell(acc[s], st.cb(l, g0 + s) + b * U, st.hb(nxt, l, g0 + s) + b * U);
}

template <typename T, int NS>
GENFAST_INLINE void head_block(const Net<T>& net, State<T>& st, int64_t b, int64_t g0,
                               int64_t p) {
  constexpr int64_t W = kOut<T>;
  const int64_t H = net.m.H, L = net.m.L;
  alignas(64) T acc[NS][W];
  const T* x[NS];
  const T* bias = net.w.data() + net.off[size_t(2 * L)] + b * W;
  for (int s = 0; s < NS; ++s) {
    std::copy(bias, bias + W, acc[s]);
    x[s] = st.hb(p & 1, L - 1, g0 + s);
  }
  block_gemv<T, NS>(net.w.data() + net.off[size_t(2 * L - 1)] + b * H * W, H, x, acc);
  for (int s = 0; s < NS; ++s)
    std::copy(acc[s], acc[s] + W, st.logits.data() + (g0 + s) * net.Vp + b * W);
}

// Every stream group of the thread through `what` (a template taking <T, NS>): a switch, not a
// lambda, so the code stays inside the caller's ISA copy (a lambda's body would be compiled for
// the baseline ISA).
#define GENFAST_LSTM_GROUPS(S, what, ...)                                      \
  for (int64_t g0 = 0; g0 < (S); g0 += kGroup) {                            \
    switch (std::min<int64_t>(kGroup, (S) - g0)) {                          \
      case 4: what<T, 4>(__VA_ARGS__); break;                               \
      case 3: what<T, 3>(__VA_ARGS__); break;                               \
      case 2: what<T, 2>(__VA_ARGS__); break;                               \
      default: what<T, 1>(__VA_ARGS__); break;                              \
    }                                                                       \
  }

// All N steps of streams [b0, b0 + st.S), their state in st.
template <typename T>
GENFAST_INLINE void run_streams(const Net<T>& net, const Call& c, State<T>& st, int64_t b0) {
  const int64_t L = net.m.L, S = st.S;
  const T inv_temp = to_scale<T>(c.inv_temp);
  for (int64_t p = 1; p < c.N; ++p) {
    for (int64_t l = 0; l < L; ++l) {
      for (int64_t b = 0; b < net.nb; ++b)
        GENFAST_LSTM_GROUPS(S, layer_block, net, st, c, l, b, g0, b0, p)
    }
    if (p < c.start) continue;  // a given token: no logits needed
    for (int64_t b = 0; b < net.vb; ++b) GENFAST_LSTM_GROUPS(S, head_block, net, st, b, g0, p)
    for (int64_t s = 0; s < S; ++s) {
      const auto row = static_cast<uint64_t>(c.offset + p) * static_cast<uint64_t>(c.B) +
                       static_cast<uint64_t>(b0 + s);
      c.tokens[(b0 + s) * c.N + p] = sample_row(st.logits.data() + s * net.Vp, net.m.V, c.seed,
                                                row, inv_temp, c.top_k, c.top_p, st.filter);
    }
  }
}

GENFAST_MULTIVERSIONED(run_f32, (const Net<float>& net, const Call& c, State<float>& st,
                                 int64_t b0),
                       (net, c, st, b0), run_streams<float>(net, c, st, b0))
GENFAST_MULTIVERSIONED(run_f64, (const Net<double>& net, const Call& c, State<double>& st,
                                 int64_t b0),
                       (net, c, st, b0), run_streams<double>(net, c, st, b0))

// Streams [b0, b0 + S) of the call's state (L, B, H) into st's buffer 0, or back from the
// buffer the last step wrote.
template <typename T>
void copy_state(State<T>& st, const Call& c, T* h, T* cs, int64_t b0, int64_t H, bool in) {
  const int64_t buf = in ? 0 : (c.N - 1) & 1;
  for (int64_t l = 0; l < st.L; ++l)
    for (int64_t s = 0; s < st.S; ++s) {
      T *uh = h + (l * c.B + b0 + s) * H, *uc = cs + (l * c.B + b0 + s) * H;
      if (in) {
        std::copy(uh, uh + H, st.hb(buf, l, s));
        std::copy(uc, uc + H, st.cb(l, s));
      } else {
        std::copy(st.hb(buf, l, s), st.hb(buf, l, s) + H, uh);
        std::copy(st.cb(l, s), st.cb(l, s) + H, uc);
      }
    }
}

template <typename T>
void generate(const void* weights, const Meta& m, const Call& c, void* hv, void* cv,
              int num_threads) {
  const Net<T> net = build_net(static_cast<const T*>(weights), m);
  T *h = static_cast<T*>(hv), *cs = static_cast<T*>(cv);
  // MACs per stream over the call, the unit of parallel_for's single-thread cut-off.
  const int64_t work = c.N * (m.L * 8 * m.H * m.H + m.V * m.H);
  parallel_for(c.B, work, num_threads, [&](int64_t b0, int64_t b1) {
    State<T> st(b1 - b0, m.L, net.Hp, net.Vp);
    copy_state(st, c, h, cs, b0, m.H, true);
    if constexpr (sizeof(T) == 4)
      run_f32(net, c, st, b0);
    else
      run_f64(net, c, st, b0);
    copy_state(st, c, h, cs, b0, m.H, false);
  });
}

}  // namespace

void lstm_generate(const void* weights, const int64_t* meta, int64_t meta_len, int64_t* tokens,
                   void* h, void* c, int64_t B, int64_t N, int64_t start, int64_t offset,
                   uint64_t seed, double inv_temperature, int64_t top_k, double top_p, int dtype,
                   int num_threads) {
  const bool f32 = cpu_is_float32(dtype, "lstm_generate kernel");
  const Meta m = parse_meta(meta, meta_len);
  if (B < 0 || N < 0) throw std::invalid_argument("lstm_generate: negative B or N");
  if (start < 1 || start > std::max<int64_t>(N, 1))
    throw std::invalid_argument("lstm_generate: start must be in [1, N]");
  if (offset < 0) throw std::invalid_argument("lstm_generate: offset must be >= 0");
  if (B == 0 || N <= 1) return;
  if (weights == nullptr || tokens == nullptr || h == nullptr || c == nullptr)
    throw std::invalid_argument("lstm_generate: null data pointer");
  // A fed token out of range would index past the folded table.
  const int64_t fed = std::min(start, N - 1);
  for (int64_t b = 0; b < B; ++b)
    for (int64_t p = 0; p < fed; ++p)
      if (tokens[b * N + p] < 0 || tokens[b * N + p] >= m.V)
        throw std::invalid_argument("lstm_generate: tokens[" + std::to_string(b) + ", " +
                                    std::to_string(p) + "] must be in [0, V)");
  const Call call{tokens, B, N, start, offset, seed, inv_temperature, top_k, top_p};
  f32 ? generate<float>(weights, m, call, h, c, num_threads)
      : generate<double>(weights, m, call, h, c, num_threads);
}

}  // namespace genfast::cpu
