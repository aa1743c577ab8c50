// flashcka._C: the compiled module. Raw pointers (ints), shapes and strides only; no
// libtorch. Every argument is checked by python/flashcka/backends/native.py first.
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include "blas.h"
#include "gram_cpu.h"
#include "permute_cpu.h"
#include "pool.h"
#include "simd_cpu.h"
#include "tiled_cpu.h"

namespace py = pybind11;
using flashcka::GramArgs;
using flashcka::Layer;
using flashcka::LayerStats;
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
  // Looked up now, while this is the process that imported us (pool.h: fork).
  m.attr("threads") = flashcka::Gomp::get().usable() ? "GNU OpenMP (the process's libgomp)"
                                                     : "own pool";
  {
    namespace simd = flashcka::simd;
    const simd::Isa isa = simd::active();
    m.attr("simd") = isa == simd::Isa::none ? std::string("OpenBLAS SYRK")
                                            : std::string(simd::name(isa)) + " packed SYRK";
    m.attr("simd_isa") = isa == simd::Isa::avx512 ? "avx512" : isa == simd::Isa::avx2 ? "avx2" : "0";
    m.attr("simd_error") = std::string(simd::env_error());
    std::vector<std::string> sup;
    if (simd::supported(simd::Isa::avx512)) sup.push_back("avx512");
    if (simd::supported(simd::Isa::avx2)) sup.push_back("avx2");
    sup.push_back("0");
    m.attr("simd_supported") = sup;
  }

  m.def(
      "centered_gram_rows",
      [](const std::vector<int64_t>& desc, int ct, int kernel, double sigma,
         double threshold, bool unbiased, int threads, bool auto_scale, double scale,
         std::uintptr_t stats) {
        // desc: count × 10 values [x, x_dtype, n, a, b, s0, s1, s2, mu (0: none), out]
        const int64_t count = int64_t(desc.size() / 10);
        const int64_t* d = desc.data();
        std::vector<Layer> layers(static_cast<size_t>(count));
        for (int64_t i = 0; i < count; ++i, d += 10)
          layers[size_t(i)] = Layer{cptr(std::uintptr_t(d[0])), int(d[1]),
                                    Layout{d[2], d[3], d[4], d[5], d[6], d[7]},
                                    d[8] ? cptr(std::uintptr_t(d[8])) : nullptr,
                                    mptr(std::uintptr_t(d[9]))};
        GramArgs args = make_args(kernel, sigma, threshold, unbiased, threads);
        args.auto_scale = auto_scale;
        args.scale = scale;
        flashcka::centered_gram_rows(layers.data(), count, ct, args,
                                     reinterpret_cast<LayerStats*>(stats));
      },
      py::call_guard<py::gil_scoped_release>(),
      "Packed centered Gram rows of the layers described by desc (a list of 10 ints a "
      "layer: x, x_dtype, n, a, b, s0, s1, s2, mu or 0, out); stats: float64 (count, 4) receives "
      "(||x - mu||_F^2, ||x||_F^2, the row's scale, status: 1 = zero bandwidth).");
  m.def(
      "kernel_matrix",
      [](std::uintptr_t x, int x_dtype, int64_t n, int64_t a, int64_t b, int64_t s0,
         int64_t s1, int64_t s2, std::uintptr_t out, int ct, int kernel, double sigma,
         double threshold, int threads) {
        return flashcka::kernel_matrix(cptr(x), x_dtype, Layout{n, a, b, s0, s1, s2},
                                       mptr(out), ct,
                                       make_args(kernel, sigma, threshold, true, threads));
      },
      py::call_guard<py::gil_scoped_release>(),
      "Full (n, n) kernel matrix into out: linear x x^T, or RBF of the centered features. "
      "Returns status (1 = zero bandwidth).");
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
        flashcka::pair(cptr(ga), la, lda, cptr(gb), lb, ldb, mm,
                       static_cast<double*>(mptr(out)), dtype, threads);
      },
      py::call_guard<py::gil_scoped_release>(),
      "out (la, lb) float64 = ga gb^T (rows of length m, summed in their dtype).");
  m.def(
      "row_sq_norms",
      [](std::uintptr_t g, int64_t count, int64_t ld, int64_t mm, int dtype, std::uintptr_t out,
         int threads) {
        flashcka::row_sq_norms(cptr(g), count, ld, mm, dtype, reinterpret_cast<double*>(out),
                               threads);
      },
      py::call_guard<py::gil_scoped_release>(),
      "out (count, float64) = squared norms of the rows of g, accumulated in double.");
  m.def(
      "pair_permuted",
      [](std::uintptr_t ga, int64_t la, int64_t lda, std::uintptr_t bfull, int64_t lb,
         int64_t lbp, int64_t n, bool diag, std::uintptr_t perms, int64_t count,
         std::uintptr_t out, int dtype, int threads) {
        flashcka::pair_permuted(cptr(ga), la, lda, cptr(bfull), lb, lbp, n, diag,
                                static_cast<const int64_t*>(cptr(perms)), count,
                                static_cast<double*>(mptr(out)), dtype, threads);
      },
      py::call_guard<py::gil_scoped_release>(),
      "out (count, la, lb) float64: packed rows ga times side B's full (n, n, lbp) Grams "
      "with samples permuted by each row of perms (count, n) int64 (permute_cpu.h).");
  m.def(
      "kernel_tiles",
      [](const std::vector<int64_t>& desc, const std::vector<double>& par, int64_t ti,
         int64_t tj, bool diag, int ct, int kernel, bool unbiased, std::uintptr_t out,
         std::uintptr_t rsum, std::uintptr_t csum, int threads) {
        // desc: count × 7 ints [xi, xj, d, ldi, ldj, mu or 0, has_shift];
        // par: count × 4 [scale, two_s2, shift, tol]
        const int64_t count = int64_t(desc.size() / 7);
        std::vector<flashcka::TileLayer> layers(static_cast<size_t>(count));
        for (int64_t i = 0; i < count; ++i) {
          const int64_t* d = desc.data() + 7 * i;
          const double* p = par.data() + 4 * i;
          layers[size_t(i)] = flashcka::TileLayer{
              cptr(std::uintptr_t(d[0])), cptr(std::uintptr_t(d[1])), d[2], d[3], d[4],
              d[5] ? cptr(std::uintptr_t(d[5])) : nullptr, p[0], p[1], p[2], p[3], d[6] != 0};
        }
        flashcka::kernel_tiles(layers.data(), count, ti, tj, diag, ct, kernel, unbiased,
                               mptr(out), static_cast<double*>(mptr(rsum)),
                               static_cast<double*>(mptr(csum)), threads);
      },
      py::call_guard<py::gil_scoped_release>(),
      "The tiled route's tiles of one tile pair, every layer (tiled_cpu.h): out (count, ti, "
      "tj) of the compute dtype; kernel 0 linear, 1 rbf, 2 squared distances; rsum/csum "
      "(count, ti)/(count, tj) float64 or 0: the tiles' row and column sums.");
  m.def(
      "tile_histogram",
      [](std::uintptr_t tile, int64_t ti, int64_t tj, bool diag, int ct, uint64_t pre, int nb,
         std::uintptr_t hist) {
        return flashcka::tile_histogram(cptr(tile), ti, tj, diag, ct, pre, nb,
                                        static_cast<int64_t*>(mptr(hist)));
      },
      py::call_guard<py::gil_scoped_release>(),
      "The exact median's selection pass over one distance tile (tiled_cpu.h): hist "
      "(65536 int64) += counts of the next 16 bits among values matching pre; returns the "
      "largest value counted.");
  m.def("set_num_threads", [](int t) { flashcka::set_blas_threads(t); });
  m.def("get_num_threads", []() { return scipy_openblas_get_num_threads(); });
}
