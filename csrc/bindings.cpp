// pybind11 transport for genfast._C (CPU kernels) and, built with GENFAST_WITH_CUDA, genfast._cuda.
// Transport only: Python checks every argument first (genfast/ops/); here we re-check just what
// could write out of bounds, and release the GIL around the kernels.
//
// How an op family binds its kernels: one m.def per kernel serves both extensions.
//  1. Declare the kernel in csrc/cpu/<op>.h (namespace genfast::cpu) and csrc/cuda/<op>.h
//     (genfast::cuda) with one name and one parameter list, but for the last parameter:
//     `int num_threads` on the CPU, `void* stream` on CUDA (which returns a cudaError_t code).
//  2. Include both headers at the [include:cpu] / [include:cuda] marks below.
//  3. Add one m.def: a lambda taking pointers as Ptr, a seed as GENFAST_SEED_T, ending in
//     GENFAST_TAIL; it re-checks what could write out of bounds (check_dtype(dtype, GENFAST_HALF),
//     check_view), releases the GIL and runs GENFAST_CALL(K::kernel(..., GENFAST_TAIL_ARG)). Its
//     py::arg list ends in GENFAST_TAIL_NAME.
//  A parameter only CUDA needs goes in GENFAST_CUDA_ONLY(...); a check only the CPU can make
//  (reading a host-side table that on CUDA lives on the device) sits under #ifndef
//  GENFAST_WITH_CUDA. Python calls the kernel through genfast.ops._boundary.native().
#include <pybind11/pybind11.h>

#include <cstdint>
#include <stdexcept>
#include <string>

#include "common/dtype.h"
#ifdef GENFAST_WITH_CUDA
#include "cuda/gumbel.h"
#include "cuda/sample.h"
#include "cuda/gradient_penalty.h"
#include "cuda/spectral_norm.h"
#include "cuda/causal_conv.h"
#include "cuda/causal_conv_layer.h"
#include "cuda/causal_conv_generate.h"
#include "cuda/masked_conv.h"
#include "cuda/masked_conv_layer.h"
#include "cuda/masked_conv_generate.h"
#include "cuda/lstm_generate.h"
#include "cuda/lstm.h"
#include "cuda/attention.h"
#include "cuda/attention_generate.h"
// [include:cuda]
#define GENFAST_MODULE _cuda
#else
#include "cpu/gumbel.h"
#include "cpu/sample.h"
#include "cpu/gradient_penalty.h"
#include "cpu/spectral_norm.h"
#include "cpu/causal_conv.h"
#include "cpu/causal_conv_layer.h"
#include "cpu/causal_conv_generate.h"
#include "cpu/masked_conv.h"
#include "cpu/masked_conv_generate.h"
#include "cpu/masked_conv_layer.h"
#include "cpu/lstm.h"
#include "cpu/lstm_generate.h"
#include "cpu/attention.h"
#include "cpu/attention_generate.h"
// [include:cpu]
#include "common/fastmath.h"  // the ISA switch and the Philox path of the CPU kernels
#include "common/openmp.h"
#define GENFAST_MODULE _C
#endif

namespace py = pybind11;

namespace {

using Ptr = std::uintptr_t;

void check_dtype(int dtype, bool allow_half) {
  const bool ok = dtype == 0 || dtype == 1 || (allow_half && (dtype == 2 || dtype == 3));
  if (!ok) throw std::invalid_argument("dtype code " + std::to_string(dtype) + " not supported");
}

// A (rows, n) view with unit column stride and row stride `rs` stays inside its buffer only if
// rows, n >= 0, the pointer is set when there is data, and rows do not overlap when written.
void check_view(const char* name, Ptr p, int64_t rows, int64_t n, int64_t rs, bool written) {
  if (rows < 0 || n < 0) throw std::invalid_argument(std::string(name) + ": negative size");
  if (rows == 0 || n == 0) return;
  if (p == 0) throw std::invalid_argument(std::string(name) + ": null data pointer");
  if (rows > 1 && (written ? rs < n : rs < 0))
    throw std::invalid_argument(std::string(name) + ": row stride " + std::to_string(rs) +
                                " is invalid for rows of " + std::to_string(n));
}

py::dict build_info() {
  py::dict d;
  d["compiler"] = GENFAST_BUILD_CXX;
  d["platform"] = GENFAST_BUILD_PLATFORM;
  d["cuda"] = GENFAST_BUILD_CUDA;
#ifdef GENFAST_BUILD_ARCHS
  d["archs"] = GENFAST_BUILD_ARCHS;
#endif
  d["rng"] = "philox4x32-10 v1";
  return d;
}

#ifdef GENFAST_WITH_CUDA
void check_cuda(int code) {
  if (code != 0) throw std::runtime_error(std::string("CUDA error: ") + genfast::cuda::error_string(code));
}
#define GENFAST_SEED_T Ptr
#define GENFAST_SEED_ARG(s) reinterpret_cast<const int64_t*>(s)
#define GENFAST_TAIL Ptr stream
#define GENFAST_TAIL_ARG reinterpret_cast<void*>(stream)
#define GENFAST_TAIL_NAME py::arg("stream")
#define GENFAST_CALL(expr) check_cuda(expr)
#define GENFAST_HALF true
#define GENFAST_CUDA_ONLY(...) __VA_ARGS__
namespace K = genfast::cuda;
#else
#define GENFAST_SEED_T uint64_t
#define GENFAST_SEED_ARG(s) (s)
#define GENFAST_TAIL int num_threads
#define GENFAST_TAIL_ARG (num_threads < 1 ? 1 : num_threads)
#define GENFAST_TAIL_NAME py::arg("num_threads")
#define GENFAST_CALL(expr) (expr)
#define GENFAST_HALF false
#define GENFAST_CUDA_ONLY(...)
namespace K = genfast::cpu;
#endif

}  // namespace

PYBIND11_MODULE(GENFAST_MODULE, m) {
  m.doc() = "genfast kernels (pointer-level transport; use genfast.ops, not this module)";
  m.def("build_info", &build_info);

  // [bind:gumbel]
  m.def(
      "gumbel_softmax_fwd",
      [](Ptr x, int64_t xrs, Ptr y, int64_t yrs, int64_t rows, int64_t n, int dtype,
         GENFAST_SEED_T seed, double inv_tau, bool hard, GENFAST_TAIL) {
        check_dtype(dtype, GENFAST_HALF);
        check_view("logits", x, rows, n, xrs, false);
        check_view("out", y, rows, n, yrs, true);
        py::gil_scoped_release nogil;
        GENFAST_CALL(K::gumbel_softmax_fwd(reinterpret_cast<const void*>(x), xrs,
                                           reinterpret_cast<void*>(y), yrs, rows, n, dtype,
                                           GENFAST_SEED_ARG(seed), inv_tau, hard, GENFAST_TAIL_ARG));
      },
      py::arg("x"), py::arg("x_row_stride"), py::arg("y"), py::arg("y_row_stride"),
      py::arg("rows"), py::arg("n"), py::arg("dtype"), py::arg("seed"), py::arg("inv_tau"),
      py::arg("hard"), GENFAST_TAIL_NAME);

  m.def(
      "gumbel_softmax_bwd",
      [](Ptr dy, int64_t dyrs, Ptr src, int64_t srcrs, Ptr dx, int64_t dxrs, int64_t rows,
         int64_t n, int dtype, GENFAST_SEED_T seed, double inv_tau, bool recompute, GENFAST_TAIL) {
        check_dtype(dtype, GENFAST_HALF);
        check_view("grad", dy, rows, n, dyrs, false);
        check_view("src", src, rows, n, srcrs, false);
        check_view("out", dx, rows, n, dxrs, true);
        py::gil_scoped_release nogil;
        GENFAST_CALL(K::gumbel_softmax_bwd(
            reinterpret_cast<const void*>(dy), dyrs, reinterpret_cast<const void*>(src), srcrs,
            reinterpret_cast<void*>(dx), dxrs, rows, n, dtype, GENFAST_SEED_ARG(seed), inv_tau,
            recompute, GENFAST_TAIL_ARG));
      },
      py::arg("dy"), py::arg("dy_row_stride"), py::arg("src"), py::arg("src_row_stride"),
      py::arg("dx"), py::arg("dx_row_stride"), py::arg("rows"), py::arg("n"), py::arg("dtype"),
      py::arg("seed"), py::arg("inv_tau"), py::arg("recompute"), GENFAST_TAIL_NAME);

  // [bind:sample]
  m.def(
      "sample_categorical",
      [](Ptr x, int64_t xrs, Ptr out, int64_t rows, int64_t n, int dtype, GENFAST_SEED_T seed,
         double inv_temperature, int64_t top_k, double top_p, GENFAST_TAIL) {
        check_dtype(dtype, GENFAST_HALF);
        check_view("logits", x, rows, n, xrs, false);
        check_view("out", out, rows, 1, 1, true);
        if (n < 1 && rows > 0) throw std::invalid_argument("logits: no classes to sample from");
        py::gil_scoped_release nogil;
        GENFAST_CALL(K::sample_categorical(reinterpret_cast<const void*>(x), xrs,
                                           reinterpret_cast<int64_t*>(out), rows, n, dtype,
                                           GENFAST_SEED_ARG(seed), inv_temperature, top_k, top_p,
                                           GENFAST_TAIL_ARG));
      },
      py::arg("x"), py::arg("x_row_stride"), py::arg("out"), py::arg("rows"), py::arg("n"),
      py::arg("dtype"), py::arg("seed"), py::arg("inv_temperature"), py::arg("top_k"),
      py::arg("top_p"), GENFAST_TAIL_NAME);

  // [bind:spectral_norm]
  m.def(
      "spectral_norm_power_iteration",
      [](int64_t count, Ptr meta, int dtype, int n_iter, double eps, Ptr sigma,
         GENFAST_CUDA_ONLY(int64_t max_h, int64_t max_w, ) GENFAST_TAIL) {
        check_dtype(dtype, GENFAST_HALF);
        if (count < 0) throw std::invalid_argument("count: negative");
        if (n_iter < 0) throw std::invalid_argument("n_iter: negative");
        if (!(eps > 0.0)) throw std::invalid_argument("eps: must be > 0");
        GENFAST_CUDA_ONLY(
            if (max_h < 0 || max_w < 0) throw std::invalid_argument("max_h, max_w: negative");)
        if (count == 0) return;
        if (meta == 0) throw std::invalid_argument("meta: null data pointer");
        if (sigma == 0) throw std::invalid_argument("sigma: null data pointer");
#ifndef GENFAST_WITH_CUDA
        // Rows (W, u, v, h, w, ld): a bad size or stride would walk past W or write past u/v.
        // On CUDA the table lives on the device, out of reach here; the kernel gives a row whose
        // h or w passes max_h / max_w (the sizes of its shared vectors) sigma = NaN instead.
        for (int64_t i = 0; i < count; ++i) {
          const int64_t* r = reinterpret_cast<const int64_t*>(meta) + 6 * i;
          // The row's name is built only for the message: this loop runs on every call.
          try {
            check_view("W", static_cast<Ptr>(r[0]), r[3], r[4], r[5], false);
            check_view("u", static_cast<Ptr>(r[1]), r[3] > 0 ? 1 : 0, r[3], r[3], true);
            check_view("v", static_cast<Ptr>(r[2]), r[4] > 0 ? 1 : 0, r[4], r[4], true);
          } catch (const std::invalid_argument& e) {
            throw std::invalid_argument("meta row " + std::to_string(i) + ": " + e.what());
          }
        }
#endif
        py::gil_scoped_release nogil;
        GENFAST_CALL(K::spectral_norm_power_iteration(
            count, reinterpret_cast<const int64_t*>(meta), dtype, n_iter, eps,
            reinterpret_cast<float*>(sigma), GENFAST_CUDA_ONLY(max_h, max_w, ) GENFAST_TAIL_ARG));
      },
      py::arg("count"), py::arg("meta_ptr"), py::arg("dtype"), py::arg("n_iter"), py::arg("eps"),
      py::arg("sigma_ptr"), GENFAST_CUDA_ONLY(py::arg("max_h"), py::arg("max_w"), )
      GENFAST_TAIL_NAME);

  // [bind:gradient_penalty]
  m.def(
      "gp_row_norms",
      [](Ptr g, int64_t ld, int64_t rows, int64_t d, int dtype, Ptr norms, GENFAST_TAIL) {
        check_dtype(dtype, GENFAST_HALF);
        check_view("g", g, rows, d, ld, false);
        check_view("norms", norms, rows, 1, 1, true);
        py::gil_scoped_release nogil;
        GENFAST_CALL(K::gp_row_norms(reinterpret_cast<const void*>(g), ld, rows, d, dtype,
                                     reinterpret_cast<void*>(norms), GENFAST_TAIL_ARG));
      },
      py::arg("g_ptr"), py::arg("ld"), py::arg("rows"), py::arg("d"), py::arg("dtype"),
      py::arg("norms_ptr"), GENFAST_TAIL_NAME);
  m.def(
      "gp_scale_rows",
      [](Ptr g, int64_t ld, Ptr scale, Ptr out, int64_t rows, int64_t d, int dtype, GENFAST_TAIL) {
        check_dtype(dtype, GENFAST_HALF);
        check_view("g", g, rows, d, ld, false);
        check_view("scale", scale, rows, d > 0 ? 1 : 0, 1, false);
        check_view("out", out, rows, d, d, true);
        py::gil_scoped_release nogil;
        GENFAST_CALL(K::gp_scale_rows(reinterpret_cast<const void*>(g), ld,
                                      reinterpret_cast<const void*>(scale),
                                      reinterpret_cast<void*>(out), rows, d, dtype,
                                      GENFAST_TAIL_ARG));
      },
      py::arg("g_ptr"), py::arg("ld"), py::arg("scale_ptr"), py::arg("out_ptr"), py::arg("rows"),
      py::arg("d"), py::arg("dtype"), GENFAST_TAIL_NAME);

  // [bind:causal_conv]
  {
    // Returns P = (K-1)*dilation after refusing sizes that would index out of bounds (groups
    // is checked before anything divides by it).
    const auto conv_sizes = [](int64_t B, int64_t Cin, int64_t Cout, int64_t T, int64_t K,
                               int64_t dilation, int64_t groups) {
      if (B < 0 || Cin < 0 || Cout < 0 || T < 0)
        throw std::invalid_argument("causal_conv1d: negative size");
      if (K < 1 || dilation < 1)
        throw std::invalid_argument("causal_conv1d: K and dilation must be >= 1");
      if (K - 1 > ((int64_t{1} << 31) - 1) / dilation)
        throw std::invalid_argument("causal_conv1d: (K-1)*dilation overflows");
      if (groups < 1 || Cin % groups != 0 || Cout % groups != 0)
        throw std::invalid_argument("causal_conv1d: groups must divide Cin and Cout");
      return (K - 1) * dilation;
    };
    const auto need = [](const char* name, Ptr p, int64_t n) {
      if (n > 0 && p == 0) throw std::invalid_argument(std::string(name) + ": null data pointer");
    };
    const auto v = [](Ptr p) { return reinterpret_cast<void*>(p); };
    m.def(
        "causal_conv1d_fwd",
        [=](Ptr x, Ptr h, Ptr w, Ptr b, Ptr y, int64_t B, int64_t Cin, int64_t Cout, int64_t T,
            int64_t K, int64_t dilation, int64_t groups, int act, int dtype, GENFAST_TAIL) {
          check_dtype(dtype, GENFAST_HALF);
          conv_sizes(B, Cin, Cout, T, K, dilation, groups);
          need("x", x, B * Cin * T), need("w", w, Cout * (Cin / groups) * K);
          need("y", y, B * Cout * T);
          py::gil_scoped_release nogil;
          GENFAST_CALL(K::causal_conv1d_fwd(v(x), v(h), v(w), v(b), v(y), B, Cin, Cout, T, K,
                                            dilation, groups, act, dtype, GENFAST_TAIL_ARG));
        },
        py::arg("x"), py::arg("h"), py::arg("w"), py::arg("b"), py::arg("y"), py::arg("B"),
        py::arg("Cin"), py::arg("Cout"), py::arg("T"), py::arg("K"), py::arg("dilation"),
        py::arg("groups"), py::arg("act"), py::arg("dtype"), GENFAST_TAIL_NAME);
    m.def(
        "causal_conv1d_bwd_input",
        [=](Ptr g, Ptr w, Ptr dx, int64_t B, int64_t Cin, int64_t Cout, int64_t T, int64_t K,
            int64_t dilation, int64_t groups, bool with_state, int dtype, GENFAST_TAIL) {
          check_dtype(dtype, GENFAST_HALF);
          const int64_t P = conv_sizes(B, Cin, Cout, T, K, dilation, groups);
          need("g", g, B * Cout * T), need("w", w, Cout * (Cin / groups) * K);
          need("dx", dx, B * Cin * (with_state ? P + T : T));
          py::gil_scoped_release nogil;
          GENFAST_CALL(K::causal_conv1d_bwd_input(v(g), v(w), v(dx), B, Cin, Cout, T, K,
                                                  dilation, groups, with_state, dtype,
                                                  GENFAST_TAIL_ARG));
        },
        py::arg("g"), py::arg("w"), py::arg("dx"), py::arg("B"), py::arg("Cin"), py::arg("Cout"),
        py::arg("T"), py::arg("K"), py::arg("dilation"), py::arg("groups"),
        py::arg("with_state"), py::arg("dtype"), GENFAST_TAIL_NAME);
    m.def(
        "causal_conv1d_bwd_weight",
        [=](Ptr g, Ptr x, Ptr h, Ptr dw, int64_t B, int64_t Cin, int64_t Cout, int64_t T,
            int64_t K, int64_t dilation, int64_t groups, int dtype, GENFAST_TAIL) {
          check_dtype(dtype, GENFAST_HALF);
          conv_sizes(B, Cin, Cout, T, K, dilation, groups);
          need("g", g, B * Cout * T), need("x", x, B * Cin * T);
          need("dw", dw, Cout * (Cin / groups) * K);
          py::gil_scoped_release nogil;
          GENFAST_CALL(K::causal_conv1d_bwd_weight(v(g), v(x), v(h), v(dw), B, Cin, Cout, T, K,
                                                   dilation, groups, dtype, GENFAST_TAIL_ARG));
        },
        py::arg("g"), py::arg("x"), py::arg("h"), py::arg("dw"), py::arg("B"), py::arg("Cin"),
        py::arg("Cout"), py::arg("T"), py::arg("K"), py::arg("dilation"), py::arg("groups"),
        py::arg("dtype"), GENFAST_TAIL_NAME);
    m.def(
        "causal_conv1d_update",
        [=](Ptr x_new, Ptr state, Ptr w, Ptr b, Ptr seqlens, Ptr y, int64_t B, int64_t Cin,
            int64_t Cout, int64_t L, int64_t S, int64_t K, int64_t dilation, int64_t groups,
            int act, int dtype, GENFAST_TAIL) {
          check_dtype(dtype, GENFAST_HALF);
          const int64_t P = conv_sizes(B, Cin, Cout, L, K, dilation, groups);
          if (S < P) throw std::invalid_argument("state: length S must be >= (K-1)*dilation");
          need("x_new", x_new, B * Cin * L), need("state", state, B * Cin * S);
          need("w", w, Cout * (Cin / groups) * K), need("y", y, B * Cout * L);
          py::gil_scoped_release nogil;
          GENFAST_CALL(K::causal_conv1d_update(
              v(x_new), v(state), v(w), v(b), reinterpret_cast<const int64_t*>(seqlens), v(y), B,
              Cin, Cout, L, S, K, dilation, groups, act, dtype, GENFAST_TAIL_ARG));
        },
        py::arg("x_new"), py::arg("state"), py::arg("w"), py::arg("b"), py::arg("seqlens"),
        py::arg("y"), py::arg("B"), py::arg("Cin"), py::arg("Cout"), py::arg("L"), py::arg("S"),
        py::arg("K"), py::arg("dilation"), py::arg("groups"), py::arg("act"), py::arg("dtype"),
        GENFAST_TAIL_NAME);
  }

  // [bind:causal_conv_layer]
  {
    // Sizes that index the buffers; every pointer that has data to read or write must be set.
    const auto check_layer = [](int64_t B, int64_t R, int64_t G, int64_t S, int64_t T, int64_t K,
                                int64_t dilation, int64_t cond_t, Ptr cond) {
      if (B < 0 || R < 0 || G < 0 || S < 0 || T < 0)
        throw std::invalid_argument("wavenet layer: negative size");
      if (G % 2 != 0) throw std::invalid_argument("w_dil: gate channels must be even");
      if (K < 1 || dilation < 1) throw std::invalid_argument("kernel_size, dilation: must be >= 1");
      if (K - 1 > (int64_t{1} << 40) / dilation)
        throw std::invalid_argument("kernel_size-1 times dilation overflows");
      if (cond_t != 0 && cond_t != 1 && cond_t != T)
        throw std::invalid_argument("cond: time length must be 1 or T");
      if (cond_t != 0 && cond == 0 && B * G > 0)
        throw std::invalid_argument("cond: null data pointer with cond_t != 0");
    };
    const auto need = [](const char* name, Ptr p, int64_t n) {
      if (n > 0 && p == 0) throw std::invalid_argument(std::string(name) + ": null data pointer");
    };
    m.def(
        "wavenet_layer_fwd",
        [=](Ptr x, Ptr h, Ptr cond, int64_t cond_t, Ptr skip, Ptr w_dil, Ptr b_dil, Ptr w_res,
            Ptr b_res, Ptr w_skip, Ptr b_skip, Ptr x_out, Ptr skip_out, int64_t B, int64_t R,
            int64_t G, int64_t S, int64_t T, int64_t K, int64_t dilation, int dtype,
            GENFAST_TAIL) {
          check_dtype(dtype, GENFAST_HALF);
          check_layer(B, R, G, S, T, K, dilation, cond_t, cond);
          need("x", x, B * R * T), need("x_out", x_out, B * R * T);
          need("skip_out", skip_out, B * S * T), need("w_dil", w_dil, G * R * K);
          need("w_res", w_res, R * G), need("w_skip", w_skip, S * G);
          const auto v = [](Ptr p) { return reinterpret_cast<const void*>(p); };
          py::gil_scoped_release nogil;
          GENFAST_CALL(K::wavenet_layer_fwd(
              v(x), v(h), v(cond), cond_t, v(skip), v(w_dil), v(b_dil), v(w_res), v(b_res),
              v(w_skip), v(b_skip), reinterpret_cast<void*>(x_out),
              reinterpret_cast<void*>(skip_out), B, R, G, S, T, K, dilation, dtype,
              GENFAST_TAIL_ARG));
        },
        py::arg("x"), py::arg("h"), py::arg("cond"), py::arg("cond_t"), py::arg("skip"),
        py::arg("w_dil"), py::arg("b_dil"), py::arg("w_res"), py::arg("b_res"),
        py::arg("w_skip"), py::arg("b_skip"), py::arg("x_out"), py::arg("skip_out"),
        py::arg("B"), py::arg("R"), py::arg("G"), py::arg("S"), py::arg("T"), py::arg("K"),
        py::arg("dilation"), py::arg("dtype"), GENFAST_TAIL_NAME);
    m.def(
        "wavenet_layer_bwd",
        [=](Ptr x, Ptr h, Ptr cond, int64_t cond_t, Ptr w_dil, Ptr b_dil, Ptr w_res, Ptr w_skip,
            Ptr gx, Ptr gs, Ptr da, Ptr dw_res, Ptr dw_skip, int64_t B, int64_t R, int64_t G,
            int64_t S, int64_t T, int64_t K, int64_t dilation, int dtype, GENFAST_TAIL) {
          check_dtype(dtype, GENFAST_HALF);
          check_layer(B, R, G, S, T, K, dilation, cond_t, cond);
          need("x", x, B * R * T), need("w_dil", w_dil, G * R * K);
          need("w_res", w_res, R * G), need("w_skip", w_skip, S * G);
          need("gx", gx, B * R * T), need("gs", gs, B * S * T), need("da", da, B * G * T);
          need("dw_res", dw_res, R * G), need("dw_skip", dw_skip, S * G);
          const auto v = [](Ptr p) { return reinterpret_cast<const void*>(p); };
          py::gil_scoped_release nogil;
          GENFAST_CALL(K::wavenet_layer_bwd(
              v(x), v(h), v(cond), cond_t, v(w_dil), v(b_dil), v(w_res), v(w_skip), v(gx), v(gs),
              reinterpret_cast<void*>(da), reinterpret_cast<void*>(dw_res),
              reinterpret_cast<void*>(dw_skip), B, R, G, S, T, K, dilation, dtype,
              GENFAST_TAIL_ARG));
        },
        py::arg("x"), py::arg("h"), py::arg("cond"), py::arg("cond_t"), py::arg("w_dil"),
        py::arg("b_dil"), py::arg("w_res"), py::arg("w_skip"), py::arg("gx"), py::arg("gs"),
        py::arg("da"), py::arg("dw_res"), py::arg("dw_skip"), py::arg("B"), py::arg("R"),
        py::arg("G"), py::arg("S"), py::arg("T"), py::arg("K"), py::arg("dilation"),
        py::arg("dtype"), GENFAST_TAIL_NAME);
  }

  // [bind:causal_conv_generate]
  m.def(
      "wavenet_generate",
      [](Ptr weights, Ptr meta, int64_t meta_len, Ptr gcond, Ptr lcond, Ptr rings, Ptr pos,
         Ptr tokens, int64_t B, int64_t n, GENFAST_SEED_T seed, double inv_temperature,
         int64_t top_k, double top_p, int dtype, GENFAST_TAIL) {
        check_dtype(dtype, GENFAST_HALF);
        if (B < 0 || n < 0) throw std::invalid_argument("wavenet_generate: negative B or n");
        if (meta == 0 || meta_len < 8)
          throw std::invalid_argument("wavenet_generate: meta must hold at least 8 entries");
        if (B > 0 && n > 0 && (weights == 0 || pos == 0 || tokens == 0))
          throw std::invalid_argument("wavenet_generate: null data pointer");
        py::gil_scoped_release nogil;
        GENFAST_CALL(K::wavenet_generate(
            reinterpret_cast<const void*>(weights), reinterpret_cast<const int64_t*>(meta),
            meta_len, reinterpret_cast<const void*>(gcond), reinterpret_cast<const void*>(lcond),
            reinterpret_cast<void*>(rings), reinterpret_cast<int64_t*>(pos),
            reinterpret_cast<int64_t*>(tokens), B, n, GENFAST_SEED_ARG(seed), inv_temperature,
            top_k, top_p, dtype, GENFAST_TAIL_ARG));
      },
      py::arg("weights"), py::arg("meta"), py::arg("meta_len"), py::arg("gcond"),
      py::arg("lcond"), py::arg("rings"), py::arg("pos"), py::arg("tokens"), py::arg("B"),
      py::arg("n"), py::arg("seed"), py::arg("inv_temperature"), py::arg("top_k"),
      py::arg("top_p"), py::arg("dtype"), GENFAST_TAIL_NAME);

  // [bind:masked_conv]
  {
    // Refuses a geometry that would index out of bounds (the kernels check it again).
    const auto region_sizes = [](int64_t B, int64_t Cin, int64_t Cout, int64_t H, int64_t W,
                                 int64_t Ho, int64_t Wo, int64_t kh, int64_t kw, int64_t sh,
                                 int64_t sw, int64_t pt, int64_t pl, int64_t rows, int64_t cols,
                                 int center, int64_t G) {
      if (B < 0 || Cin < 0 || Cout < 0 || H < 0 || W < 0 || Ho < 0 || Wo < 0 || kh < 0 || kw < 0)
        throw std::invalid_argument("masked_conv2d: negative size");
      if (sh < 1 || sw < 1) throw std::invalid_argument("masked_conv2d: stride must be >= 1");
      if (pt < 0 || pl < 0) throw std::invalid_argument("masked_conv2d: padding must be >= 0");
      if (rows < 0 || rows > kh || cols < 0 || cols > kw)
        throw std::invalid_argument("masked_conv2d: rows must be in [0, kh], cols in [0, kw]");
      if (center < 0 || center > 2 || G < 1)
        throw std::invalid_argument("masked_conv2d: center must be 0, 1 or 2 and groups >= 1");
    };
    const auto need = [](const char* name, Ptr p, int64_t n) {
      if (n > 0 && p == 0) throw std::invalid_argument(std::string(name) + ": null data pointer");
    };
    const auto v = [](Ptr p) { return reinterpret_cast<void*>(p); };
    m.def(
        "masked_conv2d_fwd",
        [=](Ptr x, Ptr w, Ptr b, Ptr y, int64_t B, int64_t Cin, int64_t Cout, int64_t H,
            int64_t W, int64_t Ho, int64_t Wo, int64_t kh, int64_t kw, int64_t sh, int64_t sw,
            int64_t pt, int64_t pl, int64_t rows, int64_t cols, int center, int64_t G,
            bool accumulate, int dtype, GENFAST_TAIL) {
          check_dtype(dtype, GENFAST_HALF);
          region_sizes(B, Cin, Cout, H, W, Ho, Wo, kh, kw, sh, sw, pt, pl, rows, cols, center, G);
          need("x", x, B * Cin * H * W), need("w", w, Cout * Cin * kh * kw);
          need("y", y, B * Cout * Ho * Wo);
          py::gil_scoped_release nogil;
          GENFAST_CALL(K::masked_conv2d_fwd(v(x), v(w), v(b), v(y), B, Cin, Cout, H, W, Ho, Wo,
                                            kh, kw, sh, sw, pt, pl, rows, cols, center, G,
                                            accumulate, dtype, GENFAST_TAIL_ARG));
        },
        py::arg("x"), py::arg("w"), py::arg("b"), py::arg("y"), py::arg("B"), py::arg("Cin"),
        py::arg("Cout"), py::arg("H"), py::arg("W"), py::arg("Ho"), py::arg("Wo"), py::arg("kh"),
        py::arg("kw"), py::arg("sh"), py::arg("sw"), py::arg("pt"), py::arg("pl"),
        py::arg("rows"), py::arg("cols"), py::arg("center"), py::arg("G"),
        py::arg("accumulate"), py::arg("dtype"), GENFAST_TAIL_NAME);
    m.def(
        "masked_conv2d_bwd_input",
        [=](Ptr g, Ptr w, Ptr dx, int64_t B, int64_t Cin, int64_t Cout, int64_t H, int64_t W,
            int64_t Ho, int64_t Wo, int64_t kh, int64_t kw, int64_t sh, int64_t sw, int64_t pt,
            int64_t pl, int64_t rows, int64_t cols, int center, int64_t G, int dtype,
            GENFAST_TAIL) {
          check_dtype(dtype, GENFAST_HALF);
          region_sizes(B, Cin, Cout, H, W, Ho, Wo, kh, kw, sh, sw, pt, pl, rows, cols, center, G);
          need("g", g, B * Cout * Ho * Wo), need("w", w, Cout * Cin * kh * kw);
          need("dx", dx, B * Cin * H * W);
          py::gil_scoped_release nogil;
          GENFAST_CALL(K::masked_conv2d_bwd_input(v(g), v(w), v(dx), B, Cin, Cout, H, W, Ho, Wo,
                                                  kh, kw, sh, sw, pt, pl, rows, cols, center, G,
                                                  dtype, GENFAST_TAIL_ARG));
        },
        py::arg("g"), py::arg("w"), py::arg("dx"), py::arg("B"), py::arg("Cin"), py::arg("Cout"),
        py::arg("H"), py::arg("W"), py::arg("Ho"), py::arg("Wo"), py::arg("kh"), py::arg("kw"),
        py::arg("sh"), py::arg("sw"), py::arg("pt"), py::arg("pl"), py::arg("rows"),
        py::arg("cols"), py::arg("center"), py::arg("G"), py::arg("dtype"), GENFAST_TAIL_NAME);
    m.def(
        "masked_conv2d_bwd_weight",
        [=](Ptr g, Ptr x, Ptr dw, int64_t B, int64_t Cin, int64_t Cout, int64_t H, int64_t W,
            int64_t Ho, int64_t Wo, int64_t kh, int64_t kw, int64_t sh, int64_t sw, int64_t pt,
            int64_t pl, int64_t rows, int64_t cols, int center, int64_t G, int dtype,
            GENFAST_TAIL) {
          check_dtype(dtype, GENFAST_HALF);
          region_sizes(B, Cin, Cout, H, W, Ho, Wo, kh, kw, sh, sw, pt, pl, rows, cols, center, G);
          need("g", g, B * Cout * Ho * Wo), need("x", x, B * Cin * H * W);
          need("dw", dw, Cout * Cin * kh * kw);
          py::gil_scoped_release nogil;
          GENFAST_CALL(K::masked_conv2d_bwd_weight(v(g), v(x), v(dw), B, Cin, Cout, H, W, Ho, Wo,
                                                   kh, kw, sh, sw, pt, pl, rows, cols, center, G,
                                                   dtype, GENFAST_TAIL_ARG));
        },
        py::arg("g"), py::arg("x"), py::arg("dw"), py::arg("B"), py::arg("Cin"), py::arg("Cout"),
        py::arg("H"), py::arg("W"), py::arg("Ho"), py::arg("Wo"), py::arg("kh"), py::arg("kw"),
        py::arg("sh"), py::arg("sw"), py::arg("pt"), py::arg("pl"), py::arg("rows"),
        py::arg("cols"), py::arg("center"), py::arg("G"), py::arg("dtype"), GENFAST_TAIL_NAME);
  }
  // [bind:masked_conv_layer]
  {
    const auto check_gate = [](int64_t B, int64_t C, int64_t N, Ptr u, Ptr dout_or_out) {
      if (B < 0 || C < 0 || N < 0) throw std::invalid_argument("pixelcnn gate: negative size");
      if (B * C * N > 0 && (u == 0 || dout_or_out == 0))
        throw std::invalid_argument("pixelcnn gate: null data pointer");
    };
    m.def(
        "pixelcnn_gate_fwd",
        [=](Ptr u, Ptr cond, Ptr out, int64_t B, int64_t C, int64_t N, int dtype,
            GENFAST_TAIL) {
          check_dtype(dtype, GENFAST_HALF);
          check_gate(B, C, N, u, out);
          py::gil_scoped_release nogil;
          GENFAST_CALL(K::pixelcnn_gate_fwd(reinterpret_cast<const void*>(u),
                                            reinterpret_cast<const void*>(cond),
                                            reinterpret_cast<void*>(out), B, C, N, dtype,
                                            GENFAST_TAIL_ARG));
        },
        py::arg("u"), py::arg("cond"), py::arg("out"), py::arg("B"), py::arg("C"), py::arg("N"),
        py::arg("dtype"), GENFAST_TAIL_NAME);
    m.def(
        "pixelcnn_gate_bwd",
        [=](Ptr u, Ptr cond, Ptr dout, Ptr du, Ptr dcond, int64_t B, int64_t C, int64_t N,
            bool accumulate, int dtype, GENFAST_TAIL) {
          check_dtype(dtype, GENFAST_HALF);
          check_gate(B, C, N, u, dout);
          if (B * C * N > 0 && du == 0)
            throw std::invalid_argument("pixelcnn gate: du: null data pointer");
          py::gil_scoped_release nogil;
          GENFAST_CALL(K::pixelcnn_gate_bwd(
              reinterpret_cast<const void*>(u), reinterpret_cast<const void*>(cond),
              reinterpret_cast<const void*>(dout), reinterpret_cast<void*>(du),
              reinterpret_cast<void*>(dcond), B, C, N, accumulate, dtype, GENFAST_TAIL_ARG));
        },
        py::arg("u"), py::arg("cond"), py::arg("dout"), py::arg("du"), py::arg("dcond"),
        py::arg("B"), py::arg("C"), py::arg("N"), py::arg("accumulate"), py::arg("dtype"),
        GENFAST_TAIL_NAME);
  }
  // [bind:masked_conv_generate]
  m.def(
      "pixelcnn_generate",
      [](Ptr weights, Ptr meta, int64_t meta_len, Ptr cond, Ptr tokens, int64_t B, int64_t H,
         int64_t W, int64_t start, GENFAST_SEED_T seed, double inv_temperature, int64_t top_k,
         double top_p, int dtype, GENFAST_TAIL) {
        check_dtype(dtype, GENFAST_HALF);
        if (B < 0 || H < 0 || W < 0)
          throw std::invalid_argument("pixelcnn_generate: negative B, H or W");
        if (start < 0 || start > H * W)
          throw std::invalid_argument("pixelcnn_generate: start must be in [0, H*W]");
        if (meta == 0 || meta_len != 5)
          throw std::invalid_argument("pixelcnn_generate: meta must hold 5 entries");
        if (B > 0 && start < H * W && (weights == 0 || tokens == 0))
          throw std::invalid_argument("pixelcnn_generate: null data pointer");
        py::gil_scoped_release nogil;
        GENFAST_CALL(K::pixelcnn_generate(
            reinterpret_cast<const void*>(weights), reinterpret_cast<const int64_t*>(meta),
            meta_len, reinterpret_cast<const void*>(cond), reinterpret_cast<int64_t*>(tokens), B,
            H, W, start, GENFAST_SEED_ARG(seed), inv_temperature, top_k, top_p, dtype,
            GENFAST_TAIL_ARG));
      },
      py::arg("weights"), py::arg("meta"), py::arg("meta_len"), py::arg("cond"),
      py::arg("tokens"), py::arg("B"), py::arg("H"), py::arg("W"), py::arg("start"),
      py::arg("seed"), py::arg("inv_temperature"), py::arg("top_k"), py::arg("top_p"),
      py::arg("dtype"), GENFAST_TAIL_NAME);

  // [bind:lstm]
  {
    // Element counts of the buffers the kernels touch; a product that overflows is refused.
    const auto count = [](const char* who, std::initializer_list<int64_t> dims) {
      int64_t n = 1;
      for (int64_t d : dims)
        if (__builtin_mul_overflow(n, d, &n))
          throw std::invalid_argument(std::string(who) + ": sizes overflow");
      return n;
    };
    const auto sizes = [](const char* who, int64_t T, int64_t B, int64_t H, int64_t P,
                          Ptr w_hr) {
      if (T < 0 || B < 0 || H < 0 || P < 0)
        throw std::invalid_argument(std::string(who) + ": negative size (T, B, H or P)");
      if (w_hr == 0 && P != H)
        throw std::invalid_argument(std::string(who) + ": P=" + std::to_string(P) +
                                    " must equal H=" + std::to_string(H) + " without w_hr");
    };
    const auto need = [](const char* who, const char* name, Ptr p, int64_t n) {
      if (n > 0 && p == 0)
        throw std::invalid_argument(std::string(who) + ": " + name + ": null data pointer");
    };
    const auto c = [](Ptr p) { return reinterpret_cast<const void*>(p); };
    const auto v = [](Ptr p) { return reinterpret_cast<void*>(p); };
    m.def(
        "lstm_fwd",
        [=](Ptr gx, Ptr w_hh, Ptr w_hr, Ptr h0, Ptr c0, Ptr lengths, Ptr y, Ptr gates, Ptr c_all,
            Ptr hT, Ptr cT, int64_t T, int64_t B, int64_t H, int64_t P, bool reverse, int dtype,
            GENFAST_TAIL) {
          const char* who = "lstm_fwd";
          check_dtype(dtype, GENFAST_HALF);
          sizes(who, T, B, H, P, w_hr);
          if ((gates == 0) != (c_all == 0))
            throw std::invalid_argument("lstm_fwd: gates and c_all must both be given or null");
          const int64_t steps = count(who, {T, B, 4, H}), out = count(who, {T, B, P});
          need(who, "gx", gx, steps), need(who, "w_hh", w_hh, count(who, {4, H, P}));
          need(who, "y", y, out), need(who, "hT", hT, count(who, {B, P}));
          need(who, "cT", cT, count(who, {B, H}));
          py::gil_scoped_release nogil;
          GENFAST_CALL(K::lstm_fwd(c(gx), c(w_hh), c(w_hr), c(h0), c(c0),
                                   reinterpret_cast<const int64_t*>(lengths), v(y), v(gates),
                                   v(c_all), v(hT), v(cT), T, B, H, P, reverse, dtype,
                                   GENFAST_TAIL_ARG));
        },
        py::arg("gx"), py::arg("w_hh"), py::arg("w_hr"), py::arg("h0"), py::arg("c0"),
        py::arg("lengths"), py::arg("y"), py::arg("gates"), py::arg("c_all"), py::arg("hT"),
        py::arg("cT"), py::arg("T"), py::arg("B"), py::arg("H"), py::arg("P"),
        py::arg("reverse"), py::arg("dtype"), GENFAST_TAIL_NAME);
    m.def(
        "lstm_bwd",
        [=](Ptr w_hh, Ptr w_hr, Ptr c0, Ptr lengths, Ptr gates, Ptr c_all, Ptr dy, Ptr dhT,
            Ptr dcT, Ptr dgx, Ptr dh0, Ptr dc0, Ptr dh_all, int64_t T, int64_t B, int64_t H,
            int64_t P, bool reverse, int dtype, GENFAST_TAIL) {
          const char* who = "lstm_bwd";
          check_dtype(dtype, GENFAST_HALF);
          sizes(who, T, B, H, P, w_hr);
          const int64_t steps = count(who, {T, B, 4, H});
          need(who, "w_hh", w_hh, count(who, {4, H, P})), need(who, "gates", gates, steps);
          need(who, "c_all", c_all, count(who, {T, B, H})), need(who, "dgx", dgx, steps);
          need(who, "dh0", dh0, count(who, {B, P})), need(who, "dc0", dc0, count(who, {B, H}));
          count(who, {T, B, P});
          py::gil_scoped_release nogil;
          GENFAST_CALL(K::lstm_bwd(c(w_hh), c(w_hr), c(c0),
                                   reinterpret_cast<const int64_t*>(lengths), c(gates), c(c_all),
                                   c(dy), c(dhT), c(dcT), v(dgx), v(dh0), v(dc0), v(dh_all), T, B,
                                   H, P, reverse, dtype, GENFAST_TAIL_ARG));
        },
        py::arg("w_hh"), py::arg("w_hr"), py::arg("c0"), py::arg("lengths"), py::arg("gates"),
        py::arg("c_all"), py::arg("dy"), py::arg("dhT"), py::arg("dcT"), py::arg("dgx"),
        py::arg("dh0"), py::arg("dc0"), py::arg("dh_all"), py::arg("T"), py::arg("B"),
        py::arg("H"), py::arg("P"), py::arg("reverse"), py::arg("dtype"), GENFAST_TAIL_NAME);
  }
#ifdef GENFAST_WITH_CUDA
  // The CUDA-only halves of the lstm family: the GEMM path's fused cells and the persistent
  // kernel's shape query (csrc/cuda/lstm.h).
  {
    const auto cell_sizes = [](const char* who, int64_t B, int64_t H, int64_t t) {
      if (B < 0 || H < 0 || t < 0)
        throw std::invalid_argument(std::string(who) + ": negative B, H or t");
      if (H > (INT64_MAX / 4) / (B > 0 ? B : 1))
        throw std::invalid_argument(std::string(who) + ": sizes overflow");
    };
    const auto need = [](const char* who, const char* name, Ptr p, int64_t n) {
      if (n > 0 && p == 0)
        throw std::invalid_argument(std::string(who) + ": " + name + ": null data pointer");
    };
    m.def(
        "lstm_cell_fwd",
        [=](Ptr G, Ptr c_state, Ptr gates_t, Ptr c_t, Ptr ht, Ptr lengths, int64_t t, int64_t B,
            int64_t H, int dtype, GENFAST_TAIL) {
          const char* who = "lstm_cell_fwd";
          check_dtype(dtype, GENFAST_HALF);
          cell_sizes(who, B, H, t);
          need(who, "G", G, B * H), need(who, "c_state", c_state, B * H);
          need(who, "ht", ht, B * H);
          py::gil_scoped_release nogil;
          GENFAST_CALL(K::lstm_cell_fwd(
              reinterpret_cast<const void*>(G), reinterpret_cast<void*>(c_state),
              reinterpret_cast<void*>(gates_t), reinterpret_cast<void*>(c_t),
              reinterpret_cast<void*>(ht), reinterpret_cast<const int64_t*>(lengths), t, B, H,
              dtype, GENFAST_TAIL_ARG));
        },
        py::arg("G"), py::arg("c_state"), py::arg("gates_t"), py::arg("c_t"), py::arg("ht"),
        py::arg("lengths"), py::arg("t"), py::arg("B"), py::arg("H"), py::arg("dtype"),
        GENFAST_TAIL_NAME);
    m.def(
        "lstm_cell_bwd",
        [=](Ptr dht, Ptr dc_state, Ptr gates_t, Ptr c_t, Ptr c_prev, Ptr dG, Ptr lengths,
            int64_t t, int64_t B, int64_t H, int dtype, GENFAST_TAIL) {
          const char* who = "lstm_cell_bwd";
          check_dtype(dtype, GENFAST_HALF);
          cell_sizes(who, B, H, t);
          need(who, "dht", dht, B * H), need(who, "dc_state", dc_state, B * H);
          need(who, "gates_t", gates_t, B * H), need(who, "c_t", c_t, B * H);
          need(who, "dG", dG, B * H);
          py::gil_scoped_release nogil;
          GENFAST_CALL(K::lstm_cell_bwd(
              reinterpret_cast<const void*>(dht), reinterpret_cast<void*>(dc_state),
              reinterpret_cast<const void*>(gates_t), reinterpret_cast<const void*>(c_t),
              reinterpret_cast<const void*>(c_prev), reinterpret_cast<void*>(dG),
              reinterpret_cast<const int64_t*>(lengths), t, B, H, dtype, GENFAST_TAIL_ARG));
        },
        py::arg("dht"), py::arg("dc_state"), py::arg("gates_t"), py::arg("c_t"),
        py::arg("c_prev"), py::arg("dG"), py::arg("lengths"), py::arg("t"), py::arg("B"),
        py::arg("H"), py::arg("dtype"), GENFAST_TAIL_NAME);
    m.def(
        "lstm_persistent_fits",
        [](int64_t B, int64_t H, int64_t P, int dtype, int device, bool projection) {
          py::gil_scoped_release nogil;
          return genfast::cuda::lstm_persistent_fits(B, H, P, dtype, device, projection) != 0;
        },
        py::arg("B"), py::arg("H"), py::arg("P"), py::arg("dtype"), py::arg("device"),
        py::arg("projection") = true,
        "whether lstm_fwd / lstm_bwd take this shape on this GPU (else: the GEMM path)");
  }
#endif
  // [bind:lstm_generate]
  m.def(
      "lstm_generate",
      [](Ptr weights, Ptr meta, int64_t meta_len, Ptr tokens, Ptr h, Ptr c, int64_t B, int64_t N,
         int64_t start, int64_t offset, GENFAST_SEED_T seed, double inv_temperature,
         int64_t top_k, double top_p, int dtype, GENFAST_TAIL) {
        check_dtype(dtype, GENFAST_HALF);
        if (B < 0 || N < 0) throw std::invalid_argument("lstm_generate: negative B or N");
        if (start < 1 || start > (N > 1 ? N : 1) || offset < 0)
          throw std::invalid_argument("lstm_generate: start must be in [1, N], offset >= 0");
        if (meta == 0 || meta_len != 3)
          throw std::invalid_argument("lstm_generate: meta must hold 3 entries");
        if (B > 0 && N > 1 && (weights == 0 || tokens == 0 || h == 0 || c == 0))
          throw std::invalid_argument("lstm_generate: null data pointer");
        py::gil_scoped_release nogil;
        GENFAST_CALL(K::lstm_generate(
            reinterpret_cast<const void*>(weights), reinterpret_cast<const int64_t*>(meta),
            meta_len, reinterpret_cast<int64_t*>(tokens), reinterpret_cast<void*>(h),
            reinterpret_cast<void*>(c), B, N, start, offset, GENFAST_SEED_ARG(seed),
            inv_temperature, top_k, top_p, dtype, GENFAST_TAIL_ARG));
      },
      py::arg("weights"), py::arg("meta"), py::arg("meta_len"), py::arg("tokens"), py::arg("h"),
      py::arg("c"), py::arg("B"), py::arg("N"), py::arg("start"), py::arg("offset"),
      py::arg("seed"), py::arg("inv_temperature"), py::arg("top_k"), py::arg("top_p"),
      py::arg("dtype"), GENFAST_TAIL_NAME);

  // [bind:attention_generate]
  m.def(
      "attention_generate",
      [](Ptr weights, Ptr meta, int64_t meta_len, Ptr tokens, Ptr kcache, Ptr vcache, Ptr scratch,
         int64_t B, int64_t N, int64_t start, int64_t keep, GENFAST_SEED_T seed,
         double inv_temperature, int64_t top_k, double top_p, int dtype, GENFAST_TAIL) {
        check_dtype(dtype, GENFAST_HALF);
        if (B < 0 || N < 0) throw std::invalid_argument("attention_generate: negative B or N");
        if (start < 1 || start > (N > 1 ? N : 1))
          throw std::invalid_argument("attention_generate: start must be in [1, N]");
        if (meta == 0 || meta_len != 5)
          throw std::invalid_argument("attention_generate: meta must hold 5 entries");
        if (B > 0 && (tokens == 0 || (start < N && (weights == 0 || kcache == 0 || vcache == 0))))
          throw std::invalid_argument("attention_generate: null data pointer");
        py::gil_scoped_release nogil;
        GENFAST_CALL(K::attention_generate(
            reinterpret_cast<const void*>(weights), reinterpret_cast<const int64_t*>(meta),
            meta_len, reinterpret_cast<int64_t*>(tokens), reinterpret_cast<void*>(kcache),
            reinterpret_cast<void*>(vcache), reinterpret_cast<void*>(scratch), B, N, start, keep,
            GENFAST_SEED_ARG(seed), inv_temperature, top_k, top_p, dtype, GENFAST_TAIL_ARG));
      },
      py::arg("weights"), py::arg("meta"), py::arg("meta_len"), py::arg("tokens"),
      py::arg("kcache"), py::arg("vcache"), py::arg("scratch"), py::arg("B"), py::arg("N"),
      py::arg("start"), py::arg("keep"), py::arg("seed"), py::arg("inv_temperature"),
      py::arg("top_k"), py::arg("top_p"), py::arg("dtype"), GENFAST_TAIL_NAME);

  // [bind:attention]
  {
    // Sizes and the pooled grid must agree (a wrong M would read past k / v); pointers set
    // wherever there is data. q / k / v strides are the caller's views and are not re-checked.
    const auto sizes = [](const char* who, int64_t B, int64_t Hh, int64_t N, int64_t M,
                          int64_t Sk, int64_t Dk, int64_t Dv, int64_t ph, int64_t pw,
                          bool causal) {
      if (B < 0 || Hh < 0 || N < 0 || M < 0 || Sk < 0 || Dk < 0 || Dv < 0 || ph < 0 || pw < 0)
        throw std::invalid_argument(std::string(who) + ": negative size");
      if ((ph > 0 || pw > 0) ? (Sk != ph * pw || M != (ph / 2) * (pw / 2) || causal)
                             : M != Sk)
        throw std::invalid_argument(std::string(who) + ": M=" + std::to_string(M) + ", Sk=" +
                                    std::to_string(Sk) + " do not match pool (" +
                                    std::to_string(ph) + ", " + std::to_string(pw) +
                                    ") (pooling also excludes causal)");
    };
    const auto need = [](const char* who, const char* name, Ptr p, int64_t n) {
      if (n > 0 && p == 0)
        throw std::invalid_argument(std::string(who) + ": " + name + ": null data pointer");
    };
    const auto c = [](Ptr p) { return reinterpret_cast<const void*>(p); };
    const auto w = [](Ptr p) { return reinterpret_cast<void*>(p); };
    m.def(
        "attention_fwd",
        [=](Ptr q, Ptr k, Ptr v, Ptr o, Ptr lse, int64_t B, int64_t Hh, int64_t N, int64_t M,
            int64_t Sk, int64_t Dk, int64_t Dv, int64_t sq_b, int64_t sq_h, int64_t sq_n,
            int64_t sk_b, int64_t sk_h, int64_t sk_n, int64_t sv_b, int64_t sv_h, int64_t sv_n,
            int64_t pool_h, int64_t pool_w, bool causal, double scale, int dtype, GENFAST_TAIL) {
          const char* who = "attention_fwd";
          check_dtype(dtype, GENFAST_HALF);
          sizes(who, B, Hh, N, M, Sk, Dk, Dv, pool_h, pool_w, causal);
          const int64_t BH = B * Hh;
          need(who, "q", q, BH * N * Dk), need(who, "k", k, BH * Sk * Dk);
          need(who, "v", v, BH * Sk * Dv), need(who, "o", o, BH * N * Dv);
          py::gil_scoped_release nogil;
          GENFAST_CALL(K::attention_fwd(c(q), c(k), c(v), w(o), w(lse), B, Hh, N, M, Sk, Dk, Dv,
                                        sq_b, sq_h, sq_n, sk_b, sk_h, sk_n, sv_b, sv_h, sv_n,
                                        pool_h, pool_w, causal, scale, dtype, GENFAST_TAIL_ARG));
        },
        py::arg("q"), py::arg("k"), py::arg("v"), py::arg("o"), py::arg("lse"), py::arg("B"),
        py::arg("Hh"), py::arg("N"), py::arg("M"), py::arg("Sk"), py::arg("Dk"), py::arg("Dv"),
        py::arg("sq_b"), py::arg("sq_h"), py::arg("sq_n"), py::arg("sk_b"), py::arg("sk_h"),
        py::arg("sk_n"), py::arg("sv_b"), py::arg("sv_h"), py::arg("sv_n"), py::arg("pool_h"),
        py::arg("pool_w"), py::arg("causal"), py::arg("scale"), py::arg("dtype"),
        GENFAST_TAIL_NAME);
    m.def(
        "attention_bwd",
        [=](Ptr q, Ptr k, Ptr v, Ptr o, Ptr lse, Ptr dout, Ptr dq, Ptr dk, Ptr dv, int64_t B,
            int64_t Hh, int64_t N, int64_t M, int64_t Sk, int64_t Dk, int64_t Dv, int64_t pool_h,
            int64_t pool_w, bool causal, double scale, int dtype, GENFAST_TAIL) {
          const char* who = "attention_bwd";
          check_dtype(dtype, GENFAST_HALF);
          sizes(who, B, Hh, N, M, Sk, Dk, Dv, pool_h, pool_w, causal);
          const int64_t BH = B * Hh;
          need(who, "q", q, BH * N * Dk), need(who, "k", k, BH * Sk * Dk);
          need(who, "v", v, BH * Sk * Dv), need(who, "o", o, BH * N * Dv);
          need(who, "lse", lse, BH * N), need(who, "dout", dout, BH * N * Dv);
          need(who, "dq", dq, BH * N * Dk), need(who, "dk", dk, BH * Sk * Dk);
          need(who, "dv", dv, BH * Sk * Dv);
          py::gil_scoped_release nogil;
          GENFAST_CALL(K::attention_bwd(c(q), c(k), c(v), c(o), c(lse), c(dout), w(dq), w(dk),
                                        w(dv), B, Hh, N, M, Sk, Dk, Dv, pool_h, pool_w, causal,
                                        scale, dtype, GENFAST_TAIL_ARG));
        },
        py::arg("q"), py::arg("k"), py::arg("v"), py::arg("o"), py::arg("lse"), py::arg("dout"),
        py::arg("dq"), py::arg("dk"), py::arg("dv"), py::arg("B"), py::arg("Hh"), py::arg("N"),
        py::arg("M"), py::arg("Sk"), py::arg("Dk"), py::arg("Dv"), py::arg("pool_h"),
        py::arg("pool_w"), py::arg("causal"), py::arg("scale"), py::arg("dtype"),
        GENFAST_TAIL_NAME);
  }

  // [bind:attention_bwd2]
  m.def(
      "attention_bwd2",
      [](Ptr q, Ptr k, Ptr v, Ptr o, Ptr lse, Ptr dout, Ptr gq, Ptr gk, Ptr gv, Ptr Gq, Ptr Gk,
         Ptr Gv, Ptr Gdout, int64_t B, int64_t Hh, int64_t N, int64_t M, int64_t Dk,
         int64_t Dv, bool causal, double scale, int dtype, GENFAST_TAIL) {
        check_dtype(dtype, GENFAST_HALF);
        if (B < 0 || Hh < 0 || N < 0 || M < 0 || Dk < 0 || Dv < 0)
          throw std::invalid_argument("attention_bwd2: negative size");
        const auto need = [](const char* name, Ptr p, int64_t n) {
          if (n > 0 && p == 0)
            throw std::invalid_argument(std::string("attention_bwd2: ") + name +
                                        ": null data pointer");
        };
        const int64_t BH = B * Hh;
        need("q", q, BH * N * Dk), need("k", k, BH * M * Dk), need("v", v, BH * M * Dv);
        need("o", o, BH * N * Dv), need("lse", lse, BH * N), need("dout", dout, BH * N * Dv);
        need("Gq", Gq, BH * N * Dk), need("Gk", Gk, BH * M * Dk), need("Gv", Gv, BH * M * Dv);
        need("Gdout", Gdout, BH * N * Dv);
        const auto c = [](Ptr p) { return reinterpret_cast<const void*>(p); };
        const auto w = [](Ptr p) { return reinterpret_cast<void*>(p); };
        py::gil_scoped_release nogil;
        GENFAST_CALL(K::attention_bwd2(c(q), c(k), c(v), c(o), c(lse), c(dout), c(gq), c(gk),
                                       c(gv), w(Gq), w(Gk), w(Gv), w(Gdout), B, Hh, N, M, Dk,
                                       Dv, causal, scale, dtype, GENFAST_TAIL_ARG));
      },
      py::arg("q"), py::arg("k"), py::arg("v"), py::arg("o"), py::arg("lse"), py::arg("dout"),
      py::arg("gq"), py::arg("gk"), py::arg("gv"), py::arg("Gq"), py::arg("Gk"), py::arg("Gv"),
      py::arg("Gdout"), py::arg("B"), py::arg("Hh"), py::arg("N"), py::arg("M"), py::arg("Dk"),
      py::arg("Dv"), py::arg("causal"), py::arg("scale"), py::arg("dtype"), GENFAST_TAIL_NAME);

#ifndef GENFAST_WITH_CUDA
  // [bind:cpu:isa] Which copy of the multiversioned loops runs (common/isa.h). GENFAST_ISA is
  // read here, at load: a name this CPU cannot run fails the import with the reason.
  genfast::isa::init_from_env();
  m.def("isa", [] { return std::string(genfast::isa::active_name()); },
        "the ISA the CPU kernels' multiversioned loops run with");
  m.def("supported_isas", [] {
    py::list names;
    for (int i = 0; i < genfast::isa::kCount; ++i)
      if (genfast::isa::supported(i)) names.append(genfast::isa::kNames[i]);
    return names;
  }, "the ISAs this build and CPU can run, slowest first");
  m.def("set_isa", [](const std::string& name) { genfast::isa::set(name, "isa"); },
        py::arg("name"), "switch the CPU kernels to `name` (or 'auto'), process-wide");
  // [bind:cpu:openmp] Whose threads the CPU kernels run on (common/openmp.h).
  m.def("openmp_runtime", []() -> py::object {
    const auto* rt = genfast::openmp::runtime();
    return rt ? py::object(py::str(rt->path)) : py::object(py::none());
  }, "the path of torch's OpenMP runtime the CPU kernels use, or None (std::threads)");
  m.def(
      "philox_uniform",
      [](uint64_t seed, int64_t row0, int64_t rows, int64_t n, Ptr out) {
        if (row0 < 0) throw std::invalid_argument("row0: negative");
        check_view("out", out, rows, n, n, true);
        if (rows == 0 || n == 0) return;
        py::gil_scoped_release nogil;
        genfast::fastmath::philox_uniform_rows(seed, static_cast<uint64_t>(row0), rows, n, n,
                                               reinterpret_cast<float*>(out));
      },
      py::arg("seed"), py::arg("row0"), py::arg("rows"), py::arg("n"), py::arg("out_ptr"),
      "float32 (rows, n) uniforms of the Philox stream, through the active ISA's copy");
#endif
}
