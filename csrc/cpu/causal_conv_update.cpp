// C++ CPU kernel of causal_conv1d_update: L new steps against a ring or shift state. The
// contract is causal_conv.h's comment and genfast/ops/causal_conv.py; the conv arithmetic is
// causal_conv.cpp's (the same tile and depthwise row), so a chain of updates reproduces fwd.
//
// Cost model: per stream, the K taps of the L steps are gathered (K*Cin*L values, the only
// part that depends on the mode), then one small GEMM; the state write is L*Cin values (ring)
// or a memmove of the state (shift, the slower mode).
#include "cpu/causal_conv.h"

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <stdexcept>
#include <string>
#include <vector>

#include "common/dtype.h"
#include "common/parallel.h"
#include "cpu/causal_conv_tile.h"

namespace genfast::cpu {
namespace {

using namespace conv_tile;

#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wpsabi"  // vector types cross only always_inline calls

struct Update {
  const void* x_new;
  void* state;
  const void* w;  // packed as fwd's (pack_weights), raw (C, 1, K) when depthwise
  const void* bias;
  const int64_t* seqlens;
  void* y;
  int64_t Cin, Cout, L, S, K, d, groups;
  int act;
};

GENFAST_INLINE int64_t pymod(int64_t q, int64_t s) { return ((q % s) + s) % s; }

// Streams [b0, b1): each owns its state rows, so streams run in parallel. The taps of the L new
// steps are gathered into K rows of lpad columns per channel (tap k's column i is step i's
// position minus (K-1-k)*d), then fwd's tile or depthwise row runs over them: the same sums in
// the same order, so a chain of updates gives fwd's bits on the same ISA copy. Every output is
// computed before the state is written, so none reads a slot this call overwrote.
template <typename T, int Isa>
GENFAST_INLINE void update_streams(const Update& a, int64_t b0, int64_t b1) {
  using Sh = Shape<T, Isa>;
  constexpr int MR = Sh::MR, NR = Sh::NR;
  const int64_t cg = a.Cin / a.groups, og = a.Cout / a.groups, L = a.L, S = a.S, K = a.K;
  const int64_t lpad = (L + NR - 1) / NR * NR, nmb = (og + MR - 1) / MR;
  const bool depthwise = cg == 1 && og == 1;
  const T* w = static_cast<const T*>(a.w);
  const T* bias = static_cast<const T*>(a.bias);
  std::vector<T> taps(static_cast<size_t>(K * a.Cin * lpad)), pad(static_cast<size_t>(K * NR));
  std::vector<const T*> src(static_cast<size_t>(2 * K));
  std::vector<int64_t> ld(static_cast<size_t>(K), lpad);
  for (int64_t b = b0; b < b1; ++b) {
    const T* xn = static_cast<const T*>(a.x_new) + b * a.Cin * L;
    T* st = static_cast<T*>(a.state) + b * a.Cin * S;
    T* y = static_cast<T*>(a.y) + b * a.Cout * L;
    const int64_t n0 = a.seqlens != nullptr ? a.seqlens[b] : 0;
    for (int64_t k = 0; k < K; ++k) {
      const int64_t lag = (K - 1 - k) * a.d;
      // Step i reads position i - lag (relative to the call's first step): the state for
      // i < lag, x_new after. Index segments, not selects (see tap_row).
      const int64_t nh = std::min(L, lag);
      const int64_t slot0 = nh == 0 ? 0 : a.seqlens != nullptr ? pymod(n0 - lag, S) : S - lag;
      for (int64_t c = 0; c < a.Cin; ++c) {
        T* row = taps.data() + (k * a.Cin + c) * lpad;
        const T* sr = st + c * S;
        for (int64_t i = 0, s = slot0; i < nh; ++i, s = s + 1 == S ? 0 : s + 1) row[i] = sr[s];
        for (int64_t i = nh; i < L; ++i) row[i] = xn[c * L + i - lag];
        for (int64_t i = L; i < lpad; ++i) row[i] = T(0);
      }
    }
    if (depthwise) {
      for (int64_t c = 0; c < a.Cin; ++c) {
        for (int64_t k = 0; k < K; ++k) src[k] = taps.data() + (k * a.Cin + c) * lpad;
        depthwise_row<T, Isa>(src.data(), w + c * K, K, bias != nullptr ? bias[c] : T(0),
                              y + c * L, L, pad.data(), src.data() + K);
      }
    } else {
      for (int64_t g = 0; g < a.groups; ++g) {
        for (int64_t k = 0; k < K; ++k) src[k] = taps.data() + (k * a.Cin + g * cg) * lpad;
        for (int64_t mb = 0; mb < nmb; ++mb) {
          const int rows = static_cast<int>(std::min<int64_t>(MR, og - mb * MR));
          const T* wb = w + ((g * nmb + mb) * K * cg) * MR;
          const T* bb = bias != nullptr ? bias + g * og + mb * MR : nullptr;
          for (int64_t t = 0; t < L; t += NR)
            tile<T, Isa>(wb, K, cg, src.data(), ld.data(), t, bb, y + (g * og + mb * MR) * L + t,
                         L, rows, static_cast<int>(std::min<int64_t>(NR, L - t)));
        }
      }
    }
    for (int64_t co = 0; co < a.Cout; ++co) activate(y + co * L, L, a.act);
    if (S == 0) continue;
    for (int64_t c = 0; c < a.Cin; ++c) {
      T* sr = st + c * S;
      const T* xr = xn + c * L;
      if (a.seqlens != nullptr) {
        for (int64_t i = std::max<int64_t>(0, L - S); i < L; ++i) sr[pymod(n0 + i, S)] = xr[i];
      } else if (L >= S) {
        std::memcpy(sr, xr + L - S, static_cast<size_t>(S) * sizeof(T));
      } else {
        std::memmove(sr, sr + L, static_cast<size_t>(S - L) * sizeof(T));
        std::memcpy(sr + S - L, xr, static_cast<size_t>(L) * sizeof(T));
      }
    }
  }
}

GENFAST_CONV_ISA_COPIES(update_f32, (const Update& a, int64_t b0, int64_t b1), (a, b0, b1),
                        update_streams<float, kIsa>(a, b0, b1))
GENFAST_CONV_ISA_COPIES(update_f64, (const Update& a, int64_t b0, int64_t b1), (a, b0, b1),
                        update_streams<double, kIsa>(a, b0, b1))

template <typename T>
void run_update(Update a, int64_t B, int num_threads) {
  const int isa = isa::active();
  const int64_t cg = a.Cin / a.groups, og = a.Cout / a.groups;
  std::vector<T> wp;
  if (!(cg == 1 && og == 1)) {
    const int mr = tile_mr<T>(isa);
    wp.resize(static_cast<size_t>(packed_size(a.groups, og, cg, a.K, mr)));
    pack_weights(static_cast<const T*>(a.w), wp.data(), a.groups, og, cg, a.K, mr, false);
    a.w = wp.data();
  }
  parallel_for(B, a.L * a.Cout * std::max<int64_t>(1, cg * a.K), num_threads,
               [&](int64_t b0, int64_t b1) {
                 sizeof(T) == 4 ? update_f32(isa, a, b0, b1) : update_f64(isa, a, b0, b1);
               });
}

#pragma GCC diagnostic pop

}  // namespace

void causal_conv1d_update(const void* x_new, void* state, const void* w, const void* b,
                          const int64_t* seqlens, void* y, int64_t B, int64_t Cin, int64_t Cout,
                          int64_t L, int64_t S, int64_t K, int64_t dilation, int64_t groups,
                          int act, int dtype, int num_threads) {
  const bool f32 = cpu_is_float32(dtype, "causal_conv1d_update");
  check_conv("causal_conv1d_update", B, Cin, Cout, L, K, dilation, groups);
  check_act("causal_conv1d_update", act);
  if (S < (K - 1) * dilation)
    throw std::invalid_argument("causal_conv1d_update: state length S=" + std::to_string(S) +
                                " is shorter than (K-1)*dilation=" +
                                std::to_string((K - 1) * dilation));
  if (B == 0 || L == 0) return;
  const Update a{x_new, state, w, b, seqlens, y, Cin, Cout, L, S, K, dilation, groups, act};
  f32 ? run_update<float>(a, B, num_threads) : run_update<double>(a, B, num_threads);
}

}  // namespace genfast::cpu
