// Device code of the GPT sampling loop (csrc/cuda/attention_generate.cu launches it; the scheme
// and its limits: that file's header). Include only from attention_generate.cu, or from the host
// emulation harness (tests/cuda_emu/attention_generate_emu.cpp), which defines
// GENFAST_AGEN_EMU and supplies kThreads, grid_sync, smem and the CUDA intrinsics itself.
//
// A pass runs n consecutive cache positions of every stream through the network: items
// m = b n + i (stream b, position s0 + i, token tb + i). Each GEMV phase splits its weight rows
// over the CTAs; a CTA stages kG items' input vectors in shared memory (with their LayerNorm
// applied there: every CTA normalises the same vectors in the same order) and each warp computes
// whole rows, lanes striding the row, a butterfly summing it. The attention phase gives an
// (item, head) to a CTA, whose warps take interleaved 32-key blocks with an online softmax and
// merge in warp order. No value's order of operations depends on the grid, the group or the pass
// length, so a token does not depend on the device, the batch, or whether a refill ran batched.
#pragma once
#include <cstdint>

#include "cuda/common.cuh"
#include "cuda/draw_block.cuh"

#ifndef GENFAST_AGEN_EMU
#include <cooperative_groups.h>
namespace genfast::cuda::agen {
constexpr int kThreads = 256;
// Acquire/release across the grid (the launch is cooperative).
__device__ __forceinline__ void grid_sync() { cooperative_groups::this_grid().sync(); }
__device__ __forceinline__ unsigned char* smem() {
  extern __shared__ __align__(16) unsigned char agen_smem[];
  return agen_smem;
}
}  // namespace genfast::cuda::agen
#endif

namespace genfast::cuda::agen {

using dev::acc_t;
using dev::Group;
using draw_block::Draw;

constexpr int kWarps = kThreads / 32;
constexpr int kInFlight = 8;  // weight loads issued before their FMAs (L2 latency at batch 1)
constexpr int64_t kVecOffset = (Group<kThreads>::kScratchBytes + 15) / 16 * 16;

template <typename Ty>
struct Args {
  const Ty* w;          // packed weights (layout: genfast/ops/attention_generate.py)
  int64_t* tokens;     // (B, N)
  acc_t<Ty>* kc;        // (L, B, Hh, T, D)
  acc_t<Ty>* vc;
  acc_t<Ty>* X;         // (M, C) residual stream of the pass's items
  acc_t<Ty>* Q;         // (M, C) queries
  acc_t<Ty>* Y;         // (M, C) attention output, heads concatenated
  acc_t<Ty>* Hb;        // (M, 4C) GELU(W_fc m + b_fc)
  acc_t<Ty>* lg;        // (B, V) logits
  acc_t<Ty>* dbuf;      // (B, V) the draws' rows when V does not fit shared memory, else null
  int64_t L, V, C, Hh, T, D, B, N, start, keep;
  int64_t chunk;       // positions per pass at most (M = B chunk items fit the workspace)
  acc_t<Ty> scale;      // 1 / sqrt(D)
  const int64_t* seed; // device int64
  Draw<acc_t<Ty>> dr;
};

// Element offsets of the packed parts (meta's sizes; the contract's order).
struct Layout {
  int64_t C, wpe, layer0, per_layer, lnf;
  __device__ explicit Layout(int64_t V, int64_t C_, int64_t T, int64_t L) : C(C_) {
    wpe = V * C;
    layer0 = wpe + T * C;
    per_layer = 12 * C * C + 13 * C;
    lnf = layer0 + L * per_layer;
  }
  __device__ int64_t ln1(int64_t l) const { return layer0 + l * per_layer; }
  __device__ int64_t attn(int64_t l) const { return ln1(l) + 2 * C; }
  __device__ int64_t proj(int64_t l) const { return attn(l) + 3 * C * C + 3 * C; }
  __device__ int64_t ln2(int64_t l) const { return proj(l) + C * C + C; }
  __device__ int64_t fc(int64_t l) const { return ln2(l) + 2 * C; }
  __device__ int64_t proj2(int64_t l) const { return fc(l) + 4 * C * C + 4 * C; }
  __device__ int64_t head() const { return lnf + 2 * C; }
};

// The positions of one pass: n cache positions from s0, fed tokens tb, tb + 1, ... per stream.
struct Pass {
  int64_t tb, s0, n;
};

// Weights are never written: the read-only path, widened to the math type.
template <typename T>
__device__ __forceinline__ acc_t<T> ldw(const T* p) {
  if constexpr (sizeof(T) == 2) {
    return dev::Io16<T>::to_f(__ldg(reinterpret_cast<const unsigned short*>(p)));
  } else {
    return __ldg(p);
  }
}

// Values other CTAs wrote during the kernel: from L2, never a stale L1 line.
__device__ __forceinline__ float ldc(const float* p) { return __ldcg(p); }
__device__ __forceinline__ double ldc(const double* p) { return __ldcg(p); }
__device__ __forceinline__ int64_t ldc(const int64_t* p) {
  return static_cast<int64_t>(__ldcg(reinterpret_cast<const long long*>(p)));
}

template <typename A>
__device__ __forceinline__ A warp_sum(A v) {
#pragma unroll
  for (int off = 16; off > 0; off >>= 1) v += dev::shfl_xor(v, off);
  return v;
}
template <typename A>
__device__ __forceinline__ A warp_max(A v) {
#pragma unroll
  for (int off = 16; off > 0; off >>= 1) v = dev::NanMaxOp()(v, dev::shfl_xor(v, off));
  return v;
}

__device__ __forceinline__ float gelu(float u) {
  return 0.5f * u * (1.0f + erff(u * 0.70710678118654752f));
}
__device__ __forceinline__ double gelu(double u) {
  return 0.5 * u * (1.0 + erf(u * 0.70710678118654752440));
}

// The token of item m, clamped to [0, V) (given tokens are checked by the caller on the host;
// reading them here to check would cost a host synchronisation).
template <typename T>
__device__ __forceinline__ int64_t token_of(const Args<T>& a, const Pass& ps, int64_t m) {
  const int64_t b = m / ps.n, i = m - b * ps.n;
  const int64_t tok = ldc(a.tokens + b * a.N + ps.tb + i);
  return tok < 0 ? 0 : tok >= a.V ? a.V - 1 : tok;
}

// x of item m at column c before layer 0: wte[token] + wpe[position].
template <typename T>
__device__ __forceinline__ acc_t<T> embed(const Args<T>& a, const Pass& ps, int64_t m,
                                          int64_t tok, int64_t c) {
  const int64_t i = m % ps.n;
  return ldw(a.w + tok * a.C + c) + ldw(a.w + a.V * a.C + (ps.s0 + i) * a.C + c);
}

// acc[g] += w[0, n) . v[g stride + (0, n)] for kG staged vectors; lane sums columns lane,
// lane + 32, ... in order, whatever kG, then a butterfly.
template <int kG, typename T, typename A>
__device__ __forceinline__ void warp_dot(const T* w, int64_t n, const A* v, int64_t stride,
                                         A (&acc)[kG]) {
  const int lane = static_cast<int>(threadIdx.x & 31);
#pragma unroll 1
  for (int64_t i0 = lane; i0 < n; i0 += 32 * kInFlight) {
    A wv[kInFlight];
#pragma unroll
    for (int k = 0; k < kInFlight; ++k) wv[k] = i0 + 32 * k < n ? ldw(w + i0 + 32 * k) : A(0);
#pragma unroll
    for (int k = 0; k < kInFlight; ++k) {
      const int64_t i = i0 + 32 * k;
      if (i < n) {
#pragma unroll
        for (int g = 0; g < kG; ++g) acc[g] += wv[k] * v[g * stride + i];
      }
    }
  }
#pragma unroll
  for (int g = 0; g < kG; ++g) acc[g] = warp_sum(acc[g]);
}

// This CTA's share [r0, r0 + nr) of R rows: ceil(R / grid) each, in CTA order.
struct Rows {
  int64_t r0, nr;
  __device__ explicit Rows(int64_t R) {
    const int64_t u = (R + gridDim.x - 1) / gridDim.x;
    r0 = static_cast<int64_t>(blockIdx.x) * u;
    nr = R - r0 < u ? R - r0 : u;
  }
};

// LayerNorm (eps 1e-5, biased variance) of the nb staged rows of length C, in place, one warp a
// row: the sums are the lanes' strided partials and a butterfly, the same in every CTA.
template <typename T, typename A>
__device__ void layer_norm_rows(A* vec, int64_t nb, int64_t C, const T* wt, const T* bs) {
  const int lane = static_cast<int>(threadIdx.x & 31), warp = static_cast<int>(threadIdx.x >> 5);
  for (int64_t g = warp; g < nb; g += kWarps) {
    A* row = vec + g * C;
    A s = 0;
    for (int64_t c = lane; c < C; c += 32) s += row[c];
    const A mean = warp_sum(s) / static_cast<A>(C);
    A q = 0;
    for (int64_t c = lane; c < C; c += 32) q += (row[c] - mean) * (row[c] - mean);
    const A var = warp_sum(q) / static_cast<A>(C);
    const A rstd = A(1) / dev::dsqrt(var + static_cast<A>(1e-5));
    for (int64_t c = lane; c < C; c += 32) row[c] = (row[c] - mean) * rstd * ldw(wt + c) + ldw(bs + c);
  }
}

// One GEMV phase over the items [0, M): for each group of kG items, stage(g0, nb) fills vec
// (kG rows of K), then this CTA's rows of W (R x K) times the staged vectors go to
// store(r, m, dot). A CTA without rows skips the phase (block-uniform).
template <int kG, typename T, class Stage, class Store>
__device__ void gemv_phase(const T* W, int64_t R, int64_t K, int64_t M, acc_t<T>* vec,
                           Stage&& stage, Store&& store) {
  using A = acc_t<T>;
  const Rows rows(R);
  if (rows.nr <= 0) return;
  const int lane = static_cast<int>(threadIdx.x & 31), warp = static_cast<int>(threadIdx.x >> 5);
  for (int64_t g0 = 0; g0 < M; g0 += kG) {
    const int64_t nb = M - g0 < kG ? M - g0 : kG;
    stage(g0, nb);
    __syncthreads();
    for (int64_t lr = warp; lr < rows.nr; lr += kWarps) {
      const int64_t r = rows.r0 + lr;
      A acc[kG];
#pragma unroll
      for (int g = 0; g < kG; ++g) acc[g] = 0;
      warp_dot<kG>(W + r * K, K, vec, K, acc);
      if (lane == 0) {
#pragma unroll
        for (int g = 0; g < kG; ++g)
          if (g < nb) store(r, g0 + g, acc[g]);
      }
    }
    __syncthreads();  // vec is restaged by the next group
  }
}

// Stages rows [g0, g0 + nb) of a (M, K) buffer written earlier in the kernel (zeros past nb).
template <int kG, typename A>
__device__ void stage_copy(A* vec, const A* src, int64_t K, int64_t g0, int64_t nb) {
  for (int64_t t = threadIdx.x; t < kG * K; t += kThreads)
    vec[t] = t / K < nb ? ldc(src + g0 * K + t) : A(0);
}

// Attention of the pass's items for layer l: CTA per (item, head); warp w takes key blocks
// w, w + kWarps, ... of 32 keys (lane = key for the scores, lane = channel for the sums), with a
// running max and sum; the warps' partials merge in warp order.
template <typename T>
__device__ void attention_phase(const Args<T>& a, const Pass& ps, int64_t l, acc_t<T>* sm) {
  using A = acc_t<T>;
  const int64_t D = a.D, C = a.C, M = a.B * ps.n;
  const int tid = static_cast<int>(threadIdx.x), lane = tid & 31, warp = tid >> 5;
  A* q = sm;                          // D
  A* pw = q + D;                      // (kWarps, 32) this block's weights
  A* yw = pw + kWarps * 32;           // (kWarps, D) partial outputs
  A* mw = yw + kWarps * D;            // (kWarps) running max
  A* lw = mw + kWarps;                // (kWarps) running sum
  for (int64_t it = blockIdx.x; it < M * a.Hh; it += gridDim.x) {
    const int64_t m = it / a.Hh, h = it - m * a.Hh, b = m / ps.n;
    const int64_t nk = ps.s0 + (m - b * ps.n) + 1;  // keys 0 .. position, inclusive
    const int64_t base = (((l * a.B + b) * a.Hh + h) * a.T) * D;
    const A* kb = a.kc + base;
    const A* vb = a.vc + base;
    for (int64_t d = tid; d < D; d += kThreads) q[d] = ldc(a.Q + m * C + h * D + d);
    A* y = yw + warp * D;
    for (int64_t d = lane; d < D; d += 32) y[d] = 0;
    __syncthreads();
    A mx = dev::neg_inf<A>(), sum = 0;
    for (int64_t j0 = warp * 32; j0 < nk; j0 += kWarps * 32) {
      const int64_t j = j0 + lane;
      A s = dev::neg_inf<A>();
      if (j < nk) {
        A dot = 0;
        for (int64_t d = 0; d < D; ++d) dot += q[d] * ldc(kb + j * D + d);
        s = dot * a.scale;
      }
      const A mn = dev::NanMaxOp()(mx, warp_max(s));  // finite: key j0 exists
      const A alpha = dev::dexp(mx - mn);
      const A p = j < nk ? dev::dexp(s - mn) : A(0);
      sum = sum * alpha + warp_sum(p);
      mx = mn;
      pw[warp * 32 + lane] = p;
      __syncwarp();
      const int64_t cnt = nk - j0 < 32 ? nk - j0 : 32;
      for (int64_t d = lane; d < D; d += 32) {
        A acc = y[d] * alpha;
        for (int64_t jj = 0; jj < cnt; ++jj) acc += pw[warp * 32 + jj] * ldc(vb + (j0 + jj) * D + d);
        y[d] = acc;
      }
      __syncwarp();  // pw is rewritten by the next block
    }
    if (lane == 0) mw[warp] = mx, lw[warp] = sum;
    __syncthreads();
    for (int64_t d = tid; d < D; d += kThreads) {
      A gm = dev::neg_inf<A>();
      for (int w = 0; w < kWarps; ++w) gm = mw[w] > gm ? mw[w] : gm;
      A num = 0, den = 0;
      for (int w = 0; w < kWarps; ++w) {
        if (!(mw[w] > dev::neg_inf<A>())) continue;  // a warp without keys
        const A e = dev::dexp(mw[w] - gm);
        num += yw[w * D + d] * e;
        den += lw[w] * e;
      }
      a.Y[m * C + h * D + d] = num / den;
    }
    __syncthreads();  // q, the partials are the next item's
  }
}

// One pass through every layer: QKV (k, v into the cache), attention, projection, MLP.
template <typename T, int kG>
__device__ void run_layers(const Args<T>& a, const Pass& ps, acc_t<T>* vec) {
  using A = acc_t<T>;
  const Layout lay(a.V, a.C, a.T, a.L);
  const int64_t C = a.C, D = a.D, M = a.B * ps.n;
  for (int64_t l = 0; l < a.L; ++l) {
    const T* w = a.w;
    // x (embedding at layer 0), LayerNorm 1, q k v.
    gemv_phase<kG>(
        w + lay.attn(l), 3 * C, C, M, vec,
        [&](int64_t g0, int64_t nb) {
          for (int64_t t = threadIdx.x; t < kG * C; t += kThreads) {
            const int64_t g = t / C, c = t - g * C, m = g0 + g;
            A v = 0;
            if (g < nb) v = l == 0 ? embed(a, ps, m, token_of(a, ps, m), c) : ldc(a.X + m * C + c);
            vec[t] = v;
          }
          __syncthreads();
          layer_norm_rows(vec, nb, C, w + lay.ln1(l), w + lay.ln1(l) + C);
        },
        [&](int64_t r, int64_t m, A dot) {
          const A v = dot + ldw(w + lay.attn(l) + 3 * C * C + r);
          if (r < C) {
            a.Q[m * C + r] = v;
            return;
          }
          const int64_t rr = (r - C) % C, h = rr / D, d = rr - h * D, b = m / ps.n;
          const int64_t pos = ps.s0 + (m - b * ps.n);
          A* cache = r < 2 * C ? a.kc : a.vc;
          cache[(((l * a.B + b) * a.Hh + h) * a.T + pos) * D + d] = v;
        });
    grid_sync();
    attention_phase(a, ps, l, vec);
    grid_sync();
    gemv_phase<kG>(
        w + lay.proj(l), C, C, M, vec,
        [&](int64_t g0, int64_t nb) { stage_copy<kG>(vec, a.Y, C, g0, nb); },
        [&](int64_t r, int64_t m, A dot) {
          const A x = l == 0 ? embed(a, ps, m, token_of(a, ps, m), r) : ldc(a.X + m * C + r);
          a.X[m * C + r] = x + (dot + ldw(w + lay.proj(l) + C * C + r));
        });
    grid_sync();
    gemv_phase<kG>(
        w + lay.fc(l), 4 * C, C, M, vec,
        [&](int64_t g0, int64_t nb) {
          stage_copy<kG>(vec, a.X, C, g0, nb);
          __syncthreads();
          layer_norm_rows(vec, nb, C, w + lay.ln2(l), w + lay.ln2(l) + C);
        },
        [&](int64_t r, int64_t m, A dot) {
          a.Hb[m * 4 * C + r] = gelu(dot + ldw(w + lay.fc(l) + 4 * C * C + r));
        });
    grid_sync();
    gemv_phase<kG>(
        w + lay.proj2(l), C, 4 * C, M, vec,
        [&](int64_t g0, int64_t nb) { stage_copy<kG>(vec, a.Hb, 4 * C, g0, nb); },
        [&](int64_t r, int64_t m, A dot) {
          a.X[m * C + r] = ldc(a.X + m * C + r) + (dot + ldw(w + lay.proj2(l) + 4 * C * C + r));
        });
    grid_sync();
  }
}

// The whole loop: for p = start .. N-1, the pass the context rule asks for (genfast/ops/
// attention_generate.py), in chunks of at most a.chunk positions, then the final LayerNorm and
// the head on each stream's last item, then the draw of token p (a CTA per stream).
template <typename T, int kG>
__device__ void generate_body(const Args<T>& a) {
  using A = acc_t<T>;
  // Dynamic shared memory: the reductions' scratch, then the staging buffer (kVecOffset).
  A* vec = reinterpret_cast<A*>(smem() + kVecOffset);
  const Group<kThreads> grp{static_cast<int>(threadIdx.x), smem()};
  Draw<A> dr = a.dr;
  dr.seed = static_cast<uint64_t>(*a.seed);
  const Layout lay(a.V, a.C, a.T, a.L);
  const int64_t C = a.C, B = a.B, V = a.V;
  int64_t len = 0;  // cached positions
  for (int64_t p = a.start; p < a.N; ++p) {
    Pass full;
    if (p == a.start) {
      full.tb = p > a.T ? p - a.T : 0, full.s0 = 0;
    } else if (len == a.T) {
      full.tb = p - a.keep, full.s0 = 0;
    } else {
      full.tb = p - 1, full.s0 = len;
    }
    full.n = p - full.tb;
    len = full.s0 + full.n;
    Pass ps{};
    for (int64_t c0 = 0; c0 < full.n; c0 += a.chunk) {
      ps = Pass{full.tb + c0, full.s0 + c0, full.n - c0 < a.chunk ? full.n - c0 : a.chunk};
      run_layers<T, kG>(a, ps, vec);
    }
    // logits of each stream's last item: W_head LN_f(x).
    gemv_phase<kG>(
        a.w + lay.head(), V, C, B, vec,
        [&](int64_t g0, int64_t nb) {
          for (int64_t t = threadIdx.x; t < kG * C; t += kThreads) {
            const int64_t g = t / C;
            vec[t] = g < nb ? ldc(a.X + ((g0 + g) * ps.n + ps.n - 1) * C + t % C) : A(0);
          }
          __syncthreads();
          layer_norm_rows(vec, nb, C, a.w + lay.lnf, a.w + lay.lnf + C);
        },
        [&](int64_t r, int64_t b, A dot) { a.lg[b * V + r] = dot; });
    grid_sync();
    for (int64_t b = blockIdx.x; b < B; b += gridDim.x) {
      // The row the draw overwrites: shared memory, or stream b's own global row, which only
      // this CTA (b mod grid) ever touches, so its L1 lines are never stale.
      A* x = a.dbuf != nullptr ? a.dbuf + b * V : vec;
      for (int64_t c = threadIdx.x; c < V; c += kThreads) x[c] = ldc(a.lg + b * V + c);
      __syncthreads();
      const uint64_t row = static_cast<uint64_t>(p) * static_cast<uint64_t>(B) +
                           static_cast<uint64_t>(b);
      const int64_t tok = draw_block::draw(grp, x, V, dr, row);
      if (threadIdx.x == 0) a.tokens[b * a.N + p] = tok;
      __syncthreads();  // vec is the next stream's row
    }
    grid_sync();  // the next pass embeds token p
  }
}

}  // namespace genfast::cuda::agen
