// flashcka._C: the compiled module. Raw pointers (ints), shapes and strides only; no
// libtorch. Every argument is checked by python/flashcka/backends/native.py first.
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <cstdint>
#include <string>
#include <utility>

#include "blas.h"
#include "gram_cpu.h"

namespace py = pybind11;
using flashcka::GramArgs;
using flashcka::GramResult;
using flashcka::Layout;

namespace {

const void* cptr(std::uintptr_t p) { return reinterpret_cast<const void*>(p); }
void* mptr(std::uintptr_t p) { return reinterpret_cast<void*>(p); }

GramArgs make_args(int kernel, double sigma, double threshold, bool unbiased, int threads) {
  GramArgs a;
  a.kernel = kernel;
  a.sigma = sigma;
  a.threshold = threshold;
  a.unbiased = unbiased;
  a.threads = threads;
  return a;
}

}  // namespace

PYBIND11_MODULE(_C, m) {
  m.doc() = "flashcka native kernels (CPU always; CUDA when built with a toolkit)";
  m.attr("has_cuda") = false;
  m.attr("has_cpu_kernels") = true;
  m.attr("blas") = std::string(scipy_openblas_get_config());

  m.def(
      "centered_gram_row",
      [](std::uintptr_t x, int x_dtype, int64_t n, int64_t a, int64_t b, int64_t s0,
         int64_t s1, int64_t s2, std::uintptr_t mu, std::uintptr_t out, int ct, int kernel,
         double sigma, double threshold, bool unbiased, int threads, double scale) {
        GramArgs args = make_args(kernel, sigma, threshold, unbiased, threads);
        args.scale = scale;
        GramResult r = flashcka::centered_gram_row(cptr(x), x_dtype, Layout{n, a, b, s0, s1, s2},
                                                   cptr(mu), mptr(out), ct, args);
        return std::make_pair(r.sq_norm, r.status);  // converted after the GIL is back
      },
      py::call_guard<py::gil_scoped_release>(),
      "x viewed as (n, a, b) with element strides (s0, s1, s2); mu (a*b) of dtype ct; out "
      "the packed row of dtype ct, built from scale*(x - mu). Returns "
      "(||scale*(x - mu)||_F^2, status: 1 = zero bandwidth).");
  m.def(
      "kernel_matrix",
      [](std::uintptr_t x, int x_dtype, int64_t n, int64_t a, int64_t b, int64_t s0,
         int64_t s1, int64_t s2, std::uintptr_t mu, std::uintptr_t out, int ct, int kernel,
         double sigma, double threshold, int threads) {
        GramResult r = flashcka::kernel_matrix(cptr(x), x_dtype, Layout{n, a, b, s0, s1, s2},
                                               mu ? cptr(mu) : nullptr, mptr(out), ct,
                                               make_args(kernel, sigma, threshold, true,
                                                         threads));
        return std::make_pair(r.sq_norm, r.status);  // converted after the GIL is back
      },
      py::call_guard<py::gil_scoped_release>(),
      "Full (n, n) kernel matrix of x - mu (mu = 0: no centering) into out.");
  m.def(
      "column_stats",
      [](std::uintptr_t x, int x_dtype, int64_t n, int64_t a, int64_t b, int64_t s0,
         int64_t s1, int64_t s2, std::uintptr_t mu, int ct, int threads) {
        return flashcka::column_stats(cptr(x), x_dtype, Layout{n, a, b, s0, s1, s2}, mptr(mu),
                                      ct, threads);
      },
      py::call_guard<py::gil_scoped_release>(),
      "mu (a*b, dtype ct) = column mean of x; returns max |x - mu| (NaN/Inf if x has them).");
  m.def(
      "center_full",
      [](std::uintptr_t k, std::uintptr_t out, int64_t n, int dtype, bool unbiased) {
        flashcka::center_full(cptr(k), mptr(out), n, dtype, unbiased);
      },
      py::call_guard<py::gil_scoped_release>(), "U-centering or HKH of a contiguous (n, n).");
  m.def(
      "pair",
      [](std::uintptr_t ga, int64_t la, int64_t lda, std::uintptr_t gb, int64_t lb,
         int64_t ldb, int64_t mm, std::uintptr_t out, int dtype, int threads) {
        flashcka::pair(cptr(ga), la, lda, cptr(gb), lb, ldb, mm, mptr(out), dtype, threads);
      },
      py::call_guard<py::gil_scoped_release>(), "out (la, lb) = ga gb^T (rows of length m).");
  m.def("set_num_threads", [](int t) { flashcka::set_blas_threads(t); });
  m.def("get_num_threads", []() { return scipy_openblas_get_num_threads(); });
}
