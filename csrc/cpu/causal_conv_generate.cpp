// C++ CPU whole-network WaveNet generation: n autoregressive steps of B streams in one call, no
// Python per step. The contract (packed layout, meta table, rings, pos, noise rows) is the module
// docstring of genfast/ops/causal_conv_generate.py.
//
// Batch 1 streams ~1 MB of weights from L2 per sample (fp32, default config) for ~0.5 MFLOP, so
// the loop is laid out for bandwidth: every matrix is re-laid out once per call into input-major
// blocks of kOut outputs (W_blk[block][input][kOut], one contiguous stream), and each GEMV is in
// axpy form, acc[0:kOut] += W_blk[block][i][0:kOut] * v[i]: no horizontal sums, and the kOut
// accumulators (4 zmm) stay in registers over the whole input loop. Up to kGroup streams share
// every weight load (GEMM-like reuse at batch > 1). Streams are independent, so threads split
// them and run all n steps on their own: no barrier per layer or per step. A stream's arithmetic
// is the same whatever group or thread runs it, so results do not depend on the thread count.
#include "cpu/causal_conv_generate.h"

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

// Outputs per weight block: 256 bytes, i.e. 4 zmm / 8 ymm of independent accumulators per
// stream, enough FMA chains in flight to hide the FMA latency at batch 1. At kGroup streams the
// AVX-512 copy holds all 16 zmm accumulators in registers (the AVX2 copy spills some, and is
// still a little faster than one stream at a time). Measured at batch 16, one thread, AVX-512:
// groups of 4 give ~2x the samples/s of single streams.
template <typename T>
constexpr int64_t kOut = 256 / sizeof(T);
constexpr int kGroup = 4;  // streams sharing each weight load
constexpr int64_t kMetaHead = 8;  // meta = [L, A, R, G, S, E, K, input_kind, d_0 .. d_{L-1}]

struct Meta {
  int64_t L, A, R, G, S, E, K, kind, H;
  const int64_t* dil;
};

Meta parse_meta(const int64_t* meta, int64_t meta_len) {
  if (meta == nullptr || meta_len < kMetaHead)
    throw std::invalid_argument("wavenet_generate: meta must hold at least 8 entries");
  Meta m{meta[0], meta[1], meta[2], meta[3], meta[4], meta[5], meta[6], meta[7], meta[3] / 2,
         meta + kMetaHead};
  const auto fail = [](const std::string& why) {
    throw std::invalid_argument("wavenet_generate: meta " + why);
  };
  if (m.L < 0 || meta_len != kMetaHead + m.L) fail("length does not match its layer count");
  if (m.A < 2 || m.R < 1 || m.G < 2 || m.G % 2 || m.S < 1 || m.E < 1 || m.K < 1)
    fail("has a size out of range (A >= 2, R, S, E, K >= 1, G even >= 2)");
  if (m.kind != 0 && m.kind != 1) fail("input_kind must be 0 (embedding) or 1 (scalar)");
  for (int64_t l = 0; l < m.L; ++l)
    if (m.dil[l] < 1) fail("has a dilation < 1");
  return m;
}

int64_t blocks(int64_t outs, int64_t width) { return (outs + width - 1) / width; }

// One (outs, ins) matrix in input-major blocks; `at(o, i)` reads the canonical weight.
template <typename T, typename F>
void block_matrix(std::vector<T>& dst, int64_t outs, int64_t ins, F at) {
  constexpr int64_t W = kOut<T>;
  const size_t base = dst.size();
  dst.resize(base + static_cast<size_t>(blocks(outs, W) * ins * W), T(0));
  T* d = dst.data() + base;
  for (int64_t o = 0; o < outs; ++o)
    for (int64_t i = 0; i < ins; ++i) d[((o / W) * ins + i) * W + o % W] = at(o, i);
}

// A vector padded to whole blocks (bias rows of padded outputs are 0, never read back).
template <typename T>
void block_vector(std::vector<T>& dst, const T* src, int64_t len, int64_t padded) {
  const size_t base = dst.size();
  dst.resize(base + static_cast<size_t>(padded), T(0));
  std::copy(src, src + len, dst.data() + base);
}

// The network of one call: meta, the blocked weights and the ring offsets.
template <typename T>
struct Net {
  Meta m;
  const T* emb;  // canonical (A, R) rows, or w_in then b_in for the scalar input
  std::vector<T> w;  // blocked: per layer [dil (K*R -> G), b_dil, res|skip (H -> R+S), b_res|b_skip],
                     // then [w1 (S -> E), b1, w2 (E -> A), b2]
  std::vector<size_t> off;  // per layer 4 offsets into w, then the head's 4
  std::vector<int64_t> ring_off;  // per layer, in elements of a stream's ring row
  int64_t Gp, RSp, Ep, Ap;  // padded output counts
};

template <typename T>
Net<T> build_net(const T* src, const Meta& m) {
  constexpr int64_t W = kOut<T>;
  Net<T> n{m, src, {}, {}, {}, blocks(m.G, W) * W, blocks(m.R + m.S, W) * W, blocks(m.E, W) * W,
           blocks(m.A, W) * W};
  const int64_t R = m.R, G = m.G, H = m.H, S = m.S, K = m.K;
  const T* p = src + (m.kind == 0 ? m.A * R : 2 * R);
  int64_t ring = 0;
  for (int64_t l = 0; l < m.L; ++l) {
    const T *wd = p, *bd = wd + G * R * K, *wr = bd + G, *br = wr + R * H, *ws = br + R,
            *bs = ws + S * H;
    p = bs + S;
    n.off.push_back(n.w.size());
    // input i = k*R + r: tap k of channel r (tap K-1 is the current input)
    block_matrix(n.w, G, K * R, [&](int64_t o, int64_t i) { return wd[(o * R + i % R) * K + i / R]; });
    n.off.push_back(n.w.size());
    block_vector(n.w, bd, G, n.Gp);
    n.off.push_back(n.w.size());
    block_matrix(n.w, R + S, H, [&](int64_t o, int64_t i) {
      return o < R ? wr[o * H + i] : ws[(o - R) * H + i];
    });
    n.off.push_back(n.w.size());
    std::vector<T> b(static_cast<size_t>(R + S));
    std::copy(br, br + R, b.begin());
    std::copy(bs, bs + S, b.begin() + R);
    block_vector(n.w, b.data(), R + S, n.RSp);
    n.ring_off.push_back(ring);
    ring += (K - 1) * m.dil[l] * R;
  }
  const T *w1 = p, *b1 = w1 + m.E * S, *w2 = b1 + m.E, *b2 = w2 + m.A * m.E;
  n.off.push_back(n.w.size());
  block_matrix(n.w, m.E, S, [&](int64_t o, int64_t i) { return w1[o * S + i]; });
  n.off.push_back(n.w.size());
  block_vector(n.w, b1, m.E, n.Ep);
  n.off.push_back(n.w.size());
  block_matrix(n.w, m.A, m.E, [&](int64_t o, int64_t i) { return w2[o * m.E + i]; });
  n.off.push_back(n.w.size());
  block_vector(n.w, b2, m.A, n.Ap);
  return n;
}

// y_s[0:outs_padded] += W x_s for NS streams; x_s = x + s*xs, y_s = y + s*ys.
template <typename T, int NS>
GENFAST_INLINE void gemv(const T* w, int64_t nblocks, int64_t ins, const T* x, int64_t xs, T* y,
                         int64_t ys) {
  constexpr int64_t W = kOut<T>;
  for (int64_t b = 0; b < nblocks; ++b, w += ins * W) {
    T acc[NS][W];
    for (int s = 0; s < NS; ++s)
      for (int64_t o = 0; o < W; ++o) acc[s][o] = y[s * ys + b * W + o];
    for (int64_t i = 0; i < ins; ++i) {
      const T* wi = w + i * W;
      for (int s = 0; s < NS; ++s) {
        const T v = x[s * xs + i];
        for (int64_t o = 0; o < W; ++o) acc[s][o] += wi[o] * v;
      }
    }
    for (int s = 0; s < NS; ++s)
      for (int64_t o = 0; o < W; ++o) y[s * ys + b * W + o] = acc[s][o];
  }
}

// z = tanh(f) * sigmoid(q) over the gate halves a[0:H], a[H:2H]. float32: from one fast exp each
// (tanh(f) = 2 sigmoid(2f) - 1; absolute error < 2e-7 over [-20, 20], measured), with the
// argument clamped to exp's domain, where both have long saturated. float64: libm, so the fp64
// exactness test compares like for like with torch.
GENFAST_INLINE void gate(const float* a, int64_t H, float* z) {
  for (int64_t h = 0; h < H; ++h) {
    const float ef = fastmath::exp(std::min(-2.0f * a[h], 88.0f));
    const float eq = fastmath::exp(std::min(-a[H + h], 88.0f));
    z[h] = (2.0f / (1.0f + ef) - 1.0f) * (1.0f / (1.0f + eq));
  }
}
GENFAST_INLINE void gate(const double* a, int64_t H, double* z) {
  for (int64_t h = 0; h < H; ++h) z[h] = std::tanh(a[h]) * (1.0 / (1.0 + std::exp(-a[H + h])));
}

struct Call {
  const void* gcond; const void* lcond; void* rings; int64_t* pos; int64_t* tokens;
  int64_t B, n, ring_len; uint64_t seed; double inv_temp; int64_t top_k; double top_p;
};

// Per-thread scratch of a group: tap vectors, gate pre-activations, z, x|skip, head vectors.
template <typename T>
struct Scratch {
  int64_t taps_n, gp, hp, rsp, sp, ep, ap;
  std::vector<T> taps, a, z, xs, h, e, logits;
  FilterScratch<T> filter;
  Scratch(const Net<T>& net)
      : taps_n(net.m.K * net.m.R), gp(net.Gp), hp(net.m.H), rsp(net.RSp), sp(net.m.S),
        ep(net.Ep), ap(net.Ap),
        taps(size_t(kGroup * taps_n)), a(size_t(kGroup * gp)), z(size_t(kGroup * hp)),
        xs(size_t(kGroup * rsp)), h(size_t(kGroup * sp)), e(size_t(kGroup * ep)),
        logits(size_t(kGroup * ap)) {}
};

// The taps layer l reads at position p were written up to (K-1) d_l steps ago, so past a few
// streams they have left L1/L2 (each step streams ~1 MB of weights through it). Fetching them
// one layer ahead hides the miss behind that layer's GEMVs.
template <typename T>
GENFAST_INLINE void prefetch_taps(const Net<T>& net, const T* ring_row, int64_t l, int64_t p) {
  const int64_t K = net.m.K, R = net.m.R, d = net.m.dil[l], M = (K - 1) * d;
  const T* ring = ring_row + net.ring_off[static_cast<size_t>(l)];
  for (int64_t k = 0; k + 1 < K; ++k) {
    const T* tap = ring + (((p - (K - 1 - k) * d) % M + M) % M) * R;
    for (int64_t e = 0; e < R; e += 64 / int64_t(sizeof(T))) __builtin_prefetch(tap + e);
  }
}

// One step of streams b0 .. b0+NS-1 (call step i).
template <typename T, int NS>
GENFAST_INLINE void step(const Net<T>& net, const Call& c, Scratch<T>& sc, int64_t b0, int64_t i) {
  const Meta& m = net.m;
  const int64_t R = m.R, G = m.G, H = m.H, K = m.K, L = m.L;
  T* rings = static_cast<T*>(c.rings);
  const T* gcond = static_cast<const T*>(c.gcond);
  const T* lcond = static_cast<const T*>(c.lcond);
  for (int s = 0; s < NS; ++s) {
    const int64_t tok = c.pos[(b0 + s) * 2 + 1];
    T* x = sc.xs.data() + s * sc.rsp;
    std::fill(x, x + sc.rsp, T(0));
    if (m.kind == 0) {
      std::copy(net.emb + tok * R, net.emb + (tok + 1) * R, x);
    } else {
      const T v = T(tok) * T(2) / T(m.A - 1) - T(1);
      for (int64_t r = 0; r < R; ++r) x[r] = net.emb[r] * v + net.emb[R + r];
    }
  }
  for (int64_t l = 0; l < L; ++l) {
    const int64_t d = m.dil[l], M = (K - 1) * d;
    for (int s = 0; s < NS; ++s) {
      const int64_t b = b0 + s, p = c.pos[b * 2];
      T* taps = sc.taps.data() + s * sc.taps_n;
      T* x = sc.xs.data() + s * sc.rsp;
      T* ring = rings + b * c.ring_len + net.ring_off[static_cast<size_t>(l)];
      for (int64_t k = 0; k + 1 < K; ++k) {
        const int64_t slot = ((p - (K - 1 - k) * d) % M + M) % M;  // positions < 0: zeros
        std::memcpy(taps + k * R, ring + slot * R, sizeof(T) * R);
      }
      prefetch_taps(net, rings + b * c.ring_len, l + 1 < L ? l + 1 : 0, l + 1 < L ? p : p + 1);
      std::memcpy(taps + (K - 1) * R, x, sizeof(T) * R);
      if (M > 0) std::memcpy(ring + (p % M) * R, x, sizeof(T) * R);  // its oldest tap is read
      T* a = sc.a.data() + s * sc.gp;
      const T* bd = net.w.data() + net.off[size_t(4 * l + 1)];
      std::copy(bd, bd + sc.gp, a);
      if (gcond)
        for (int64_t g = 0; g < G; ++g) a[g] += gcond[(b * L + l) * G + g];
      if (lcond)
        for (int64_t g = 0; g < G; ++g) a[g] += lcond[((b * c.n + i) * L + l) * G + g];
      const T* br = net.w.data() + net.off[size_t(4 * l + 3)];
      for (int64_t o = 0; o < sc.rsp; ++o) x[o] += br[o];
    }
    gemv<T, NS>(net.w.data() + net.off[size_t(4 * l)], sc.gp / kOut<T>, K * R, sc.taps.data(),
                sc.taps_n, sc.a.data(), sc.gp);
    for (int s = 0; s < NS; ++s) gate(sc.a.data() + s * sc.gp, H, sc.z.data() + s * sc.hp);
    gemv<T, NS>(net.w.data() + net.off[size_t(4 * l + 2)], sc.rsp / kOut<T>, H, sc.z.data(),
                sc.hp, sc.xs.data(), sc.rsp);
  }
  const size_t h0 = size_t(4 * L);
  for (int s = 0; s < NS; ++s) {
    const T* skip = sc.xs.data() + s * sc.rsp + R;
    T* h = sc.h.data() + s * sc.sp;
    for (int64_t j = 0; j < m.S; ++j) h[j] = std::max(skip[j], T(0));
    std::copy(net.w.data() + net.off[h0 + 1], net.w.data() + net.off[h0 + 1] + sc.ep,
              sc.e.data() + s * sc.ep);
    std::copy(net.w.data() + net.off[h0 + 3], net.w.data() + net.off[h0 + 3] + sc.ap,
              sc.logits.data() + s * sc.ap);
  }
  gemv<T, NS>(net.w.data() + net.off[h0], sc.ep / kOut<T>, m.S, sc.h.data(), sc.sp, sc.e.data(),
              sc.ep);
  for (auto& v : sc.e) v = std::max(v, T(0));
  gemv<T, NS>(net.w.data() + net.off[h0 + 2], sc.ap / kOut<T>, m.E, sc.e.data(), sc.ep,
              sc.logits.data(), sc.ap);
  for (int s = 0; s < NS; ++s) {
    const int64_t b = b0 + s, p = c.pos[b * 2];
    const auto row = static_cast<uint64_t>(p) * static_cast<uint64_t>(c.B) + uint64_t(b);
    const int64_t tok = sample_row(sc.logits.data() + s * sc.ap, m.A, c.seed, row,
                                   to_scale<T>(c.inv_temp), c.top_k, c.top_p, sc.filter);
    c.tokens[b * c.n + i] = tok;
    c.pos[b * 2] = p + 1;
    c.pos[b * 2 + 1] = tok;
  }
}

// Streams [b0, b1): groups of kGroup (then the rest), each running all n steps.
template <typename T>
GENFAST_INLINE void run_streams(const Net<T>& net, const Call& c, int64_t b0, int64_t b1) {
  Scratch<T> sc(net);
  for (int64_t b = b0; b < b1;) {
    const int64_t ns = std::min<int64_t>(kGroup, b1 - b);
    for (int64_t i = 0; i < c.n; ++i) {
      switch (ns) {
        case 4: step<T, 4>(net, c, sc, b, i); break;
        case 3: step<T, 3>(net, c, sc, b, i); break;
        case 2: step<T, 2>(net, c, sc, b, i); break;
        default: step<T, 1>(net, c, sc, b, i); break;
      }
    }
    b += ns;
  }
}

GENFAST_MULTIVERSIONED(run_f32, (const Net<float>& net, const Call& c, int64_t b0, int64_t b1),
                       (net, c, b0, b1), run_streams<float>(net, c, b0, b1))
GENFAST_MULTIVERSIONED(run_f64, (const Net<double>& net, const Call& c, int64_t b0, int64_t b1),
                       (net, c, b0, b1), run_streams<double>(net, c, b0, b1))

template <typename T>
void generate(const void* weights, const Meta& m, const Call& c, int num_threads) {
  const Net<T> net = build_net(static_cast<const T*>(weights), m);
  // MACs per stream-step, the unit of parallel_for's single-thread cut-off.
  const int64_t work = c.n * (m.L * (m.G * m.K * m.R + (m.R + m.S) * m.H) + m.S * m.E + m.E * m.A);
  parallel_for(c.B, work, num_threads, [&](int64_t b0, int64_t b1) {
    if constexpr (sizeof(T) == 4)
      run_f32(net, c, b0, b1);
    else
      run_f64(net, c, b0, b1);
  });
}

}  // namespace

void wavenet_generate(const void* weights, const int64_t* meta, int64_t meta_len,
                      const void* gcond, const void* lcond, void* rings, int64_t* pos,
                      int64_t* tokens, int64_t B, int64_t n, uint64_t seed,
                      double inv_temperature, int64_t top_k, double top_p, int dtype,
                      int num_threads) {
  const bool f32 = cpu_is_float32(dtype, "wavenet_generate kernel");
  const Meta m = parse_meta(meta, meta_len);
  if (B <= 0 || n <= 0) return;
  // A token out of range would index past the embedding; a negative step count past the rings.
  for (int64_t b = 0; b < B; ++b)
    if (pos[2 * b] < 0 || pos[2 * b + 1] < 0 || pos[2 * b + 1] >= m.A)
      throw std::invalid_argument("wavenet_generate: pos[" + std::to_string(b) +
                                  "] must be (steps >= 0, previous token in [0, A))");
  int64_t ring_len = 0;
  for (int64_t l = 0; l < m.L; ++l) ring_len += (m.K - 1) * m.dil[l] * m.R;
  if (ring_len > 0 && rings == nullptr)
    throw std::invalid_argument("wavenet_generate: null rings pointer");
  const Call c{gcond, lcond, rings, pos, tokens, B, n, ring_len, seed, inv_temperature, top_k,
               top_p};
  f32 ? generate<float>(weights, m, c, num_threads) : generate<double>(weights, m, c, num_threads);
}

}  // namespace genfast::cpu
