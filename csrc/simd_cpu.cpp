// Which instruction set's kernels run (simd_cpu.h): the widest this CPU supports, or the one
// FLASHCKA_SIMD names. Decided once a process, on first use.
#include "simd_cpu.h"

#include <cstdlib>
#include <cstring>
#include <string>

namespace flashcka {
namespace simd {
namespace {

struct Choice {
  Isa isa = Isa::none;
  std::string error;  // FLASHCKA_SIMD asked for what cannot run here
};

bool cpu_has(Isa isa) {
#if (defined(__x86_64__) || defined(_M_X64)) && (defined(__GNUC__) || defined(__clang__))
  __builtin_cpu_init();
  if (isa == Isa::avx512)
    return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512dq") &&
           __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512vl") &&
           __builtin_cpu_supports("fma");
  if (isa == Isa::avx2) return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
  return true;
#else
  return isa == Isa::none;  // no vector kernels off x86-64 (yet): OpenBLAS
#endif
}

Choice decide() {
  Choice c;
  const char* e = std::getenv("FLASHCKA_SIMD");
  const std::string want = e != nullptr ? e : "";
  if (want.empty() || want == "auto") {
    c.isa = cpu_has(Isa::avx512) ? Isa::avx512 : cpu_has(Isa::avx2) ? Isa::avx2 : Isa::none;
    return c;
  }
  if (want == "0" || want == "none" || want == "openblas") return c;
  if (want == "avx512" || want == "avx2") {
    const Isa isa = want == "avx512" ? Isa::avx512 : Isa::avx2;
    if (cpu_has(isa)) {
      c.isa = isa;
    } else {
      c.error = "FLASHCKA_SIMD=" + want + " but this CPU cannot run " + name(isa) +
                " (supported here: " + (cpu_has(Isa::avx2) ? "avx2, " : "") + "0)";
    }
    return c;
  }
  c.error = "FLASHCKA_SIMD=" + want + " is not one of avx512, avx2, 0 (or unset: the widest "
            "this CPU supports)";
  return c;
}

const Choice& choice() {
  static const Choice c = decide();
  return c;
}

}  // namespace

Isa active() { return choice().isa; }
bool supported(Isa isa) { return cpu_has(isa); }
const char* env_error() { return choice().error.c_str(); }

const char* name(Isa isa) {
  switch (isa) {
    case Isa::avx512:
      return "AVX-512";
    case Isa::avx2:
      return "AVX2+FMA";
    default:
      return "none";
  }
}

template <class T>
const Kernels<T>* kernels() {
#if defined(__x86_64__) || defined(_M_X64)
  static const Kernels<T>* k = active() == Isa::avx512 ? kernels_avx512<T>()
                               : active() == Isa::avx2 ? kernels_avx2<T>()
                                                       : nullptr;
  return k;
#else
  return nullptr;
#endif
}

template const Kernels<float>* kernels<float>();
template const Kernels<double>* kernels<double>();

}  // namespace simd
}  // namespace flashcka
