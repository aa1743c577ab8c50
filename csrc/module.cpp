// flashcka._C: the compiled module. Raw pointers and shapes only; no libtorch.
#include <pybind11/pybind11.h>

namespace py = pybind11;

PYBIND11_MODULE(_C, m) {
  m.doc() = "flashcka native kernels (CPU always; CUDA when built with a toolkit)";
  m.attr("has_cuda") = false;
}
