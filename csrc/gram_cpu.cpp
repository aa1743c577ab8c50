// Fused centered Gram on the CPU (docs/design.md §1-2).
//
//   x (n, a, b) strided  ->  K = X_c X_cᵀ, X_c = s·(x − 1μᵀ), upper triangle only: x is
//   read in column chunks, each chunk's columns are centered by their own means (or a
//   given μ) and scaled as they arrive, and a SYRK adds the chunk to K (our own packed
//   AVX-512 or AVX2 tiles, simd_cpu.h; else OpenBLAS on one thread). So x is read once, no (n, d)
//   copy is made, and μ, Σμ² and max |x − μ| come for free. Then in one pass over the
//   triangle: optional RBF (D_ab = K_aa + K_bb − 2K_ab, median by selection, exp), and
//   U-centering / HKH written straight into the packed row [√2·strict upper (n(n−1)/2,
//   row-major)] (+ [diag (n)] when biased), so that a plain dot product of two rows is ⟨C_a, C_b⟩_F.
//
// Scale: s is a power of two (exact). With auto_scale, s = 1 unless max |x − μ| leaves the
// safe range of the compute dtype ([2^-16, 2^16] float32, [2^-128, 2^128] float64); then
// the Gram is rebuilt with s bringing it into [0.5, 1) (only such inputs pay the extra pass).
//
// Threads (pool.h: the process's OpenMP team when torch is loaded): several layers run in
// parallel, one thread each, when that balances (largest first); otherwise layers run one
// after another, each split over the threads into slots fixed by the shape and the thread
// setting (chunk_pass_simd), so that every call gives the same bits. OpenBLAS itself
// always runs on one thread (its own pool degrades badly on shared cores).
#include "gram_cpu.h"

#include <algorithm>
#include <atomic>
#include <cmath>
#include <limits>
#include <numeric>
#include <type_traits>
#include <new>
#include <vector>

#include <sys/mman.h>

#include "blas.h"
#include "pool.h"
#include "simd_cpu.h"

namespace flashcka {
namespace {

constexpr double kSqrt2 = 1.4142135623730951;

template <class T>
struct Safe;
template <>
struct Safe<float> {
  static constexpr double lo = 0x1p-16, hi = 0x1p16, pair = 0x1p50;
};
template <>
struct Safe<double> {
  static constexpr double lo = 0x1p-128, hi = 0x1p128, pair = 0x1p400;
};

// Largest max|x − μ| used unscaled: also max²·n·d ≤ `pair`, so that the pair stage's sums
// (up to (n·d·max²)² ≈ 2^100 in float32) cannot overflow at any n and d.
template <class T>
double safe_hi(const Layout& L) {
  return std::min(Safe<T>::hi, std::sqrt(Safe<T>::pair / (double(L.n) * double(L.a * L.b))));
}

// The power of two bringing amax into [0.5, 1); 1 when amax is in [lo, hi], 0, NaN or Inf.
// At most 2^(max_exponent − 2) of T (a subnormal amax is brought near 1, not past T's range).
template <class T>
double pow2_scale(double amax, double lo, double hi) {
  if (!(amax > 0) || !std::isfinite(amax) || (amax >= lo && amax <= hi)) return 1.0;
  int e = 0;
  std::frexp(amax, &e);
  return std::ldexp(1.0, std::min(-e, std::numeric_limits<T>::max_exponent - 2));
}

// ‖X_c‖² or ‖X‖² in x's own units from v, its value for s·x: v / s². They only say whether
// a layer varies (> 0) and whether its input was finite, so a finite v whose value in x's
// units leaves float64 (|x| ~ 1e160, or ~ 1e-300) is held within [2^-1000, 2^1000]: no
// false overflow and no false zero variance.
double in_units(double v, double s) {
  const double u = v / s / s;
  if (!std::isfinite(v) || !(v > 0)) return u;
  return std::min(std::max(u, 0x1p-1000), 0x1p1000);
}

// dst (n, c1 − c0) row-major = columns [c0, c1) of x, converted to T; with acc (c1 − c0
// doubles, zeroed here), the columns' sums in the same pass.
template <class I, class T>
void load_chunk(const I* x, const Layout& L, int64_t c0, int64_t c1, T* dst, double* acc) {
  const int64_t w = c1 - c0;
  if (acc != nullptr) std::fill(acc, acc + w, 0.0);
  for (int64_t i = 0; i < L.n; ++i) {
    const I* xi = x + i * L.s0;
    T* di = dst + i * w;
    int64_t j = c0 / L.b, k = c0 % L.b, c = c0;
    while (c < c1) {
      const int64_t seg = std::min(L.b - k, c1 - c);
      const I* xp = xi + j * L.s1 + k * L.s2;
      T* dp = di + (c - c0);
      if (acc != nullptr) {
        double* ap = acc + (c - c0);
        if (L.s2 == 1) {
          for (int64_t t = 0; t < seg; ++t) ap[t] += double(dp[t] = T(xp[t]));
        } else {
          for (int64_t t = 0; t < seg; ++t) ap[t] += double(dp[t] = T(xp[t * L.s2]));
        }
      } else if (L.s2 == 1) {
        for (int64_t t = 0; t < seg; ++t) dp[t] = T(xp[t]);
      } else {
        for (int64_t t = 0; t < seg; ++t) dp[t] = T(xp[t * L.s2]);
      }
      c += seg;
      k = 0;
      ++j;
    }
  }
}

// A grow-only buffer mapped straight from the OS, never from the malloc heap: kept between
// calls, it would otherwise pin the heap above torch's freed activations (measured by the
// hooks' owner: +479 MB RSS over 960 hooked layers, +40 MB with mmap'd buffers).
template <class T>
class Buffer {
 public:
  Buffer() = default;
  Buffer(const Buffer&) = delete;
  Buffer(Buffer&& o) noexcept : p_(o.p_), cap_(o.cap_) {
    o.p_ = nullptr;
    o.cap_ = 0;
  }
  Buffer& operator=(const Buffer&) = delete;
  ~Buffer() { release(); }
  // Release the mapping when it is larger than `keep` bytes (kept otherwise).
  void trim(size_t keep) {
    if (cap_ * sizeof(T) > keep) release();
  }
  T* get(size_t count) {
    if (count > cap_) {
      release();
      const size_t bytes = (std::max<size_t>(count, 1) * sizeof(T) + 4095) & ~size_t(4095);
      void* p = mmap(nullptr, bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
      if (p == MAP_FAILED) throw std::bad_alloc();
      p_ = static_cast<T*>(p);
      cap_ = bytes / sizeof(T);
    }
    return p_;
  }

 private:
  void release() {
    if (p_ != nullptr) munmap(p_, cap_ * sizeof(T));
    p_ = nullptr;
    cap_ = 0;
  }
  T* p_ = nullptr;
  size_t cap_ = 0;
};

// Per-thread buffers, kept between calls (the pool's threads live on) up to kKeepBytes
// each, so that a call on large n (an n × n float triangle is 1 GB at n = 16,000) leaves
// nothing of that size behind: every job trims the working buffers of its thread at its
// end (trim_work), and the thread that owns a layer's triangles (K, and the slots' partial
// triangles, which it allocates before its job runs) trims them once the layer is done.
constexpr size_t kKeepBytes = size_t(64) << 20;

template <class T>
struct Scratch {
  // K: the layer's own; part[q]: slot q's partial triangle or product (deterministic
  // splits, below); pan, pan2: packed panels (simd_cpu.h); r, m: the epilogue's sums
  Buffer<T> K, buf, mu, amax, first, pan, pan2;
  Buffer<double> acc, r, m;
  std::vector<Buffer<T>> part;
  static Scratch& mine() {
    thread_local Scratch s;
    return s;
  }
  T* slot(size_t q, size_t count) {
    while (part.size() <= q) part.emplace_back();
    return part[q].get(count);
  }
  void trim_work() {
    for (Buffer<T>* b : {&buf, &mu, &amax, &first, &pan, &pan2}) b->trim(kKeepBytes);
    for (Buffer<double>* b : {&acc, &r, &m}) b->trim(kKeepBytes);
  }
  void trim() {
    trim_work();
    K.trim(kKeepBytes);
    for (Buffer<T>& b : part) b.trim(kKeepBytes);
  }
};

// Each of `slots` slots' triangle: K for slot 0 (and for every slot when not `own`), the
// calling thread's part buffers for the others, allocated here before any job runs (so the
// thread that owns the layer owns them, and trims them when the layer is done).
template <class T>
std::vector<T*> slot_triangles(T* K, int64_t n, int64_t slots, bool own) {
  std::vector<T*> t(size_t(slots), K);
  if (own)
    for (int64_t q = 1; q < slots; ++q) t[size_t(q)] = Scratch<T>::mine().slot(size_t(q), size_t(n * n));
  return t;
}

// sweep(q) for every q in [0, slots), threads pulling slots in turn (which thread runs a
// slot changes nothing); each job trims its thread's working buffers at its end.
template <class T, class F>
void run_slots(int64_t slots, F&& sweep) {
  std::atomic<int64_t> next{0};
  Pool::get().run(int(slots), [&](int) {
    for (int64_t q; (q = next++) < slots;) sweep(q);
    Scratch<T>::mine().trim_work();
  });
}

// The chunk's column means: mu as given, or its columns' sums (sc.acc, taken as the chunk
// was read) over n, in T. Adds Σ_c (s·μ_c)² to mu_sq (in the units of the scaled x, so
// that a |μ| near float64's limit does not overflow); a non-finite μ_c sets varies (an
// all-±inf column is not "constant").
template <class T>
const T* chunk_mean(const T* mu, int64_t n, int64_t w, double s, Scratch<T>& sc,
                    double& mu_sq, bool& varies) {
  if (mu == nullptr) {
    T* m = sc.mu.get(size_t(w));
    const double* acc = sc.acc.get(size_t(w));
    for (int64_t c = 0; c < w; ++c) m[c] = T(acc[c] / double(n));
    mu = m;
  }
  for (int64_t c = 0; c < w; ++c) {
    mu_sq += (double(mu[c]) * s) * (double(mu[c]) * s);
    if (!std::isfinite(mu[c])) varies = true;
  }
  return mu;
}

// buf (n, w) -> s·(buf − 1μᵀ) in place, μ given (mu) or the columns' own means (from
// their sums in sc.acc, taken by load_chunk). Adds Σ_c μ_c² to mu_sq; returns
// max |buf − μ| (NaN-blind: non-finite inputs show up in the Gram's trace instead).
template <class T>
double center_chunk(T* buf, int64_t n, int64_t w, const T* mu, T s, Scratch<T>& sc,
                    double& mu_sq, bool& varies) {
  T* am = sc.amax.get(size_t(w));
  T* x0 = sc.first.get(size_t(w));  // row 0: a column equal to it everywhere is constant
  std::fill(am, am + w, T(0));
  std::copy(buf, buf + w, x0);
  mu = chunk_mean(mu, n, w, double(s), sc, mu_sq, varies);
  T d0 = T(0);
  for (int64_t i = 0; i < n; ++i) {
    T* b = buf + i * w;
    for (int64_t c = 0; c < w; ++c) {
      const T e = std::abs(b[c] - x0[c]);
      d0 = e > d0 ? e : d0;
      const T v = b[c] - mu[c];
      const T a = std::abs(v);
      am[c] = a > am[c] ? a : am[c];
      b[c] = v * s;
    }
  }
  if (d0 != T(0)) varies = true;
  double m = 0.0;
  for (int64_t c = 0; c < w; ++c) m = std::max(m, double(am[c]));
  return m;
}

// Chunk boundaries (c0 of each chunk, then d) of the OpenBLAS pass: nt slots of equal
// column count (slot q: columns [d·q/nt, d·(q+1)/nt)), each cut into buffers of about
// 2 MiB; slot q's chunks are [first[q], first[q+1]). A fixed split, so the sums do not
// depend on thread timing.
std::vector<int64_t> chunk_starts(int64_t n, int64_t d, int64_t nt, size_t item,
                                  std::vector<int64_t>& first) {
  const int64_t wmax = std::min(d, std::max<int64_t>(256, (int64_t(2) << 20) / (int64_t(item) * n)));
  std::vector<int64_t> starts;
  first.clear();
  for (int64_t q = 0; q < nt; ++q) {
    first.push_back(int64_t(starts.size()));
    const int64_t c1 = d * (q + 1) / nt;
    for (int64_t c = d * q / nt; c < c1; c += std::min(wmax, c1 - c)) starts.push_back(c);
  }
  first.push_back(int64_t(starts.size()));
  starts.push_back(d);
  return starts;
}

struct Pass {
  double amax = 0.0, mu_sq = 0.0;
  bool aborted = false;
  bool varies = false;  // some column is not constant (else X_c = 0 exactly: K is zeroed)
};

// K's upper triangle after a chunk pass split into slots: slot 0's own (Kt[0] = K; 0 when
// it got no chunk) plus the other slots' triangles Kt[q], added in slot order; exactly 0
// when x is constant (X_c = 0, not rounding noise) or has no columns.
template <class T>
void finish_triangle(T* K, int64_t n, bool zero, const std::vector<T*>& Kt) {
  if (zero || Kt[0] == nullptr)
    for (int64_t i = 0; i < n; ++i) std::fill(K + i * n + i, K + (i + 1) * n, T(0));
  if (zero) return;
  for (size_t t = 1; t < Kt.size(); ++t) {
    const T* P = Kt[t];
    if (P == nullptr) continue;
    for (int64_t i = 0; i < n; ++i)
      for (int64_t j = i; j < n; ++j) K[i * n + j] += P[i * n + j];
  }
}

// The statistics of a split pass, combined in slot order (sums in a fixed order).
inline Pass combine(const std::vector<Pass>& part) {
  Pass r;
  for (const Pass& p : part) {
    r.amax = std::max(r.amax, p.amax);
    r.mu_sq += p.mu_sq;
    r.aborted = r.aborted || p.aborted;
    r.varies = r.varies || p.varies;
  }
  return r;
}

// chunk_pass on the vector kernels (simd_cpu.h): chunks of kChunk columns are centred and
// packed into panels (straight from x when its rows are plain runs of T, else through
// load_chunk's buffer) and multiplied by the packed SYRK. The work is cut into nt slots
// that do not depend on which thread runs them, or on how many do (a busy pool, a small
// OpenMP team), so the sums, and the result, are the same bit for bit on every call with
// the same thread setting: with at least 4 chunks a slot, slot q takes the consecutive
// chunks [chunks·q/nt, chunks·(q+1)/nt) into a triangle of its own (slot 0: K), added in
// slot order at the end; otherwise K's tiles are cut into bands of equal count, and the
// slot of a band packs every chunk for it (a small layer uses every thread too, and each
// tile is one sum in chunk order).
template <class I, class T>
Pass chunk_pass_simd(const simd::Kernels<T>& kk, const I* x, const Layout& L, const T* mu,
                     bool center, T s, T* K, bool syrk, double abort_above, int nt) {
  constexpr int64_t P = simd::panel_rows<T>(), W = simd::kChunk;
  const int64_t n = L.n, d = L.a * L.b, chunks = (d + W - 1) / W, panels = (n + P - 1) / P;
  const bool direct = std::is_same<I, T>::value && L.a == 1 && L.s2 == 1;
  nt = std::max(1, nt);
  const bool by_chunk = nt > 1 && chunks >= 4 * int64_t(nt);
  const int64_t tiles = panels * (panels + 1) / 2;
  const int64_t bands = by_chunk || !syrk ? 1 : std::min<int64_t>(nt, tiles);
  const int64_t slots = by_chunk ? nt : bands;
  std::atomic<bool> stop{false};
  std::vector<Pass> part(static_cast<size_t>(slots));
  std::vector<T*> Kt(size_t(slots), nullptr);  // the triangles written (finish_triangle)
  const std::vector<T*> mine = slot_triangles(K, n, slots, by_chunk && syrk);
  auto sweep = [&](int64_t q) {
    Scratch<T>& sc = Scratch<T>::mine();
    Pass& p = part[size_t(q)];
    T* pan = sc.pan.get(size_t(panels * P * W));
    const int64_t c_begin = by_chunk ? chunks * q / slots : 0;
    const int64_t c_end = by_chunk ? chunks * (q + 1) / slots : chunks;
    const int64_t b = by_chunk ? 0 : q, nb = by_chunk ? 1 : bands;
    T* Kmine = by_chunk ? nullptr : K;
    bool first = true;
    for (int64_t ch = c_begin; ch < c_end; ++ch) {
      if (by_chunk && stop.load(std::memory_order_relaxed)) break;
      const int64_t c0 = ch * W, cw = std::min(W, d - c0);
      const bool means = center && mu == nullptr;
      double* acc = means ? sc.acc.get(size_t(W)) : nullptr;
      const T* src;
      int64_t ld;
      if (direct) {
        src = reinterpret_cast<const T*>(x) + c0;
        ld = L.s0;
        if (means) kk.column_sums(src, ld, n, cw, acc);
      } else {
        T* buf = sc.buf.get(size_t(n * W));
        load_chunk<I, T>(x, L, c0, c0 + cw, buf, acc);
        src = buf;
        ld = cw;
      }
      const T* m =
          center ? chunk_mean(mu != nullptr ? mu + c0 : nullptr, n, cw, double(s), sc, p.mu_sq,
                                  p.varies)
                 : nullptr;
      bool varies = false;
      const double amax = kk.pack(src, ld, n, cw, m, s, pan, &varies);
      if (center) {
        p.varies = p.varies || varies;
        p.amax = std::max(p.amax, amax);
        if (amax > abort_above && std::isfinite(amax)) {
          p.aborted = true;
          stop = true;
          break;
        }
      }
      if (!syrk) continue;
      if (by_chunk && Kmine == nullptr) Kt[size_t(q)] = Kmine = mine[size_t(q)];
      kk.syrk_panels(pan, n, cw, tiles * b / nb, tiles * (b + 1) / nb, Kmine, n, !first);
      first = false;
    }
  };
  run_slots<T>(slots, sweep);
  // bands: every band saw every chunk, so their statistics agree; slots: combined in order
  Pass r = by_chunk ? combine(part) : part[0];
  for (const Pass& p : part) r.aborted = r.aborted || p.aborted;
  if (!by_chunk) Kt[0] = K;  // bands wrote K itself
  if (syrk && !r.aborted) finish_triangle(K, n, chunks == 0 || (center && !r.varies), Kt);
  return r;
}

// Upper triangle of K (n, n) = Σ over column chunks of SYRK(chunk of X_c), X_c = s·(x − μ)
// (center) or s·x. nt threads pull chunks in turn; thread t > 0 sums into its own
// triangle, added to K at the end. syrk = false: statistics only. Stops early (aborted)
// once a chunk's finite max |x − μ| exceeds abort_above. On AVX-512: chunk_pass_simd.
template <class I, class T>
Pass chunk_pass(const I* x, const Layout& L, const T* mu, bool center, T s, T* K, bool syrk,
                double abort_above, int nt) {
  if (const simd::Kernels<T>* kk = simd::kernels<T>())
    return chunk_pass_simd<I, T>(*kk, x, L, mu, center, s, K, syrk, abort_above, nt);
  const int64_t n = L.n, d = L.a * L.b;
  const bool direct = !center && std::is_same<I, T>::value && s == T(1) && L.a == 1 &&
                      L.s2 == 1 && L.s0 >= d && L.s0 <= 0x7fffffff;
  // (direct: BLAS reads x as (n, d) with ld = s0; rows that overlap in memory, s0 < d as
  // from unfold/expand/as_strided, are loaded into the buffer instead.)
  const int64_t slots = std::max<int64_t>(1, std::min<int64_t>(nt, d / 256));
  std::vector<int64_t> first;
  const std::vector<int64_t> starts = chunk_starts(n, d, slots, sizeof(T), first);
  const int64_t chunks = int64_t(starts.size()) - 1;
  int64_t w = 0;  // the widest chunk: buffer sizes
  for (int64_t q = 0; q < chunks; ++q) w = std::max(w, starts[size_t(q + 1)] - starts[size_t(q)]);
  std::atomic<bool> stop{false};
  std::vector<Pass> part(static_cast<size_t>(slots));
  std::vector<T*> Kt(size_t(slots), nullptr);  // the triangles written (finish_triangle)
  const std::vector<T*> mine = slot_triangles(K, n, slots, syrk);
  set_blas_threads(1);
  auto sweep = [&](int64_t q) {  // slot q: its chunks in order, into its own triangle
    Scratch<T>& sc = Scratch<T>::mine();
    Pass& p = part[size_t(q)];
    T* Kmine = nullptr;
    for (int64_t ch = first[size_t(q)]; ch < first[size_t(q + 1)]; ++ch) {
      if (stop.load(std::memory_order_relaxed)) break;
      const int64_t c0 = starts[size_t(ch)], c1 = starts[size_t(ch + 1)], cw = c1 - c0;
      const T* a = nullptr;
      int lda = int(cw);
      if (direct) {
        a = reinterpret_cast<const T*>(x) + c0;
        lda = int(L.s0);
      } else {
        T* buf = sc.buf.get(size_t(n * w));
        load_chunk<I, T>(x, L, c0, c1, buf, center && !mu ? sc.acc.get(size_t(w)) : nullptr);
        if (center) {
          const double m = center_chunk<T>(buf, n, cw, mu ? mu + c0 : nullptr, s, sc, p.mu_sq,
                                           p.varies);
          p.amax = std::max(p.amax, m);
          if (m > abort_above && std::isfinite(m)) {
            p.aborted = true;
            stop = true;
            break;
          }
        } else if (s != T(1)) {
          for (int64_t k = 0; k < n * cw; ++k) buf[k] *= s;
        }
        a = buf;
      }
      if (!syrk) continue;
      const bool fresh = Kmine == nullptr;
      if (fresh) Kt[size_t(q)] = Kmine = mine[size_t(q)];
      syrk_upper(int(n), int(cw), a, lda, fresh ? T(0) : T(1), Kmine);
    }
  };
  run_slots<T>(slots, sweep);
  const Pass r = combine(part);
  if (syrk && !r.aborted) finish_triangle(K, n, center && !r.varies, Kt);
  return r;
}

// K = X_c X_cᵀ (upper) with the scale rule above. Returns the pass (μ², max) and sets s.
template <class I, class T>
Pass gram_upper(const I* x, const Layout& L, const T* mu, bool center, const GramArgs& args,
                T* K, int nt, double& s_out) {
  if (!args.auto_scale) {
    s_out = args.scale;
    return chunk_pass<I, T>(x, L, mu, center, T(args.scale), K, true,
                            std::numeric_limits<double>::infinity(), nt);
  }
  const double hi = safe_hi<T>(L);
  Pass p = chunk_pass<I, T>(x, L, mu, center, T(1), K, true, hi, nt);
  s_out = 1.0;
  if (p.aborted || (p.amax > 0 && p.amax < Safe<T>::lo)) {
    if (p.aborted)  // its max is partial: one statistics pass for the global one
      p = chunk_pass<I, T>(x, L, mu, center, T(1), K, false,
                           std::numeric_limits<double>::infinity(), nt);
    s_out = pow2_scale<T>(p.amax, Safe<T>::lo, hi);
    p = chunk_pass<I, T>(x, L, mu, center, T(s_out), K, true,
                         std::numeric_limits<double>::infinity(), nt);
  }
  return p;
}

// numpy.median of the n² squared distances: n zeros and each strict-upper value twice.
// `scr` (M = n(n−1)/2 values) is reordered by selection.
template <class T>
T median_sq_distance(T* scr, int64_t n) {
  const int64_t M = n * (n - 1) / 2, total = n * n;
  const int64_t k1 = (total - 1) / 2, k2 = total / 2;
  T v1 = T(0), v2 = T(0);
  int64_t idx1 = -1;
  if (k1 >= n) {
    idx1 = (k1 - n) / 2;
    std::nth_element(scr, scr + idx1, scr + M);
    v1 = scr[idx1];
  }
  if (k2 >= n) {
    const int64_t idx2 = (k2 - n) / 2;
    if (idx2 == idx1) {
      v2 = v1;
    } else if (idx1 >= 0 && idx2 == idx1 + 1) {
      v2 = *std::min_element(scr + idx2, scr + M);
    } else {
      std::nth_element(scr, scr + idx2, scr + M);
      v2 = scr[idx2];
    }
  }
  return (v1 + v2) / T(2);
}

// In the upper triangle of K: linear Gram -> RBF kernel; dg (n) -> the kernel's diagonal.
// `scr` holds ≥ n(n−1)/2 values (used for the median). Returns 1 on zero bandwidth.
template <class T>
int rbf_upper(T* K, T* dg, int64_t n, int64_t d, T* scr, const GramArgs& args) {
  // D_ab = K_aa + K_bb − 2K_ab; at or below 4·sqrt(d)·eps of K_aa + K_bb it is rounding
  // noise (two equal rows) and is 0, so that the median of duplicated samples is exactly
  // 0 (the torch backend's noise_tol, the same rule).
  const T noise = T(4.0 * std::sqrt(double(std::max<int64_t>(d, 1))) *
                    double(std::numeric_limits<T>::epsilon()));
  for (int64_t i = 0; i < n; ++i) {
    T* Ki = K + i * n;
    for (int64_t j = i + 1; j < n; ++j) {
      const T v = dg[i] + dg[j] - T(2) * Ki[j];
      Ki[j] = v <= noise * (dg[i] + dg[j]) ? T(0) : v;
    }
  }
  double two_s2;  // in double: 2σ² of a tiny σ (x and σ scaled by 2^-100) underflows T
  if (args.sigma > 0) {  // sigma of the unscaled x: the kernel is that of x itself
    two_s2 = 2.0 * (args.sigma * args.scale) * (args.sigma * args.scale);
  } else {
    int64_t p = 0;
    for (int64_t i = 0; i < n; ++i)
      for (int64_t j = i + 1; j < n; ++j) {
        const T v = K[i * n + j];
        scr[p++] = v == v ? v : T(INFINITY);  // NaN-safe selection
      }
    const T med = median_sq_distance(scr, n);
    if (!(med > T(0))) {
      // Constant representation (every distance 0): K = 11ᵀ, as the torch backend.
      for (int64_t q = 0; q < p; ++q)
        if (scr[q] > T(0) || scr[q] != scr[q]) return 1;
      for (int64_t i = 0; i < n; ++i) {
        for (int64_t j = i + 1; j < n; ++j) K[i * n + j] = T(1);
        dg[i] = T(1);
      }
      return 0;
    }
    two_s2 = 2.0 * args.threshold * args.threshold * double(med);
  }
  const double neg = -1.0 / two_s2;  // D = 0 gives exactly 1 even when this is -inf
  for (int64_t i = 0; i < n; ++i) {
    T* Ki = K + i * n;
    for (int64_t j = i + 1; j < n; ++j)
      Ki[j] = Ki[j] == T(0) ? T(1) : T(std::exp(double(Ki[j]) * neg));
    dg[i] = T(1);
  }
  return 0;
}

// Packed centered row from the upper triangle of a symmetric kernel K and its diagonal.
template <class T>
void center_pack(const T* K, const T* dg, int64_t n, bool unbiased, T* out) {
  if (const simd::Kernels<T>* kk = simd::kernels<T>()) {
    Scratch<T>& sc = Scratch<T>::mine();
    return kk->center_pack(K, dg, n, unbiased, out, sc.r.get(size_t(n + 16)),
                           sc.m.get(size_t(n + 16)));
  }
  std::vector<double> r(size_t(n), 0.0);
  for (int64_t i = 0; i < n; ++i) {
    const T* Ki = K + i * n;
    double ri = 0.0;
    for (int64_t j = i + 1; j < n; ++j) {
      const double v = double(Ki[j]);
      ri += v;
      r[j] += v;
    }
    r[i] += ri + (unbiased ? 0.0 : double(dg[i]));
  }
  double S = 0.0;
  for (double v : r) S += v;
  std::vector<double> m(static_cast<size_t>(n));
  const double dn = double(n);
  for (int64_t i = 0; i < n; ++i)
    m[i] = unbiased ? r[i] / (dn - 2) - S / (2 * (dn - 1) * (dn - 2))
                    : r[i] / dn - S / (2 * dn * dn);
  T* o = out;
  for (int64_t i = 0; i < n; ++i) {
    const T* Ki = K + i * n;
    const double mi = m[i];
    for (int64_t j = i + 1; j < n; ++j) *o++ = T(kSqrt2 * (double(Ki[j]) - mi - m[j]));
  }
  if (!unbiased)
    for (int64_t i = 0; i < n; ++i) *o++ = T(double(dg[i]) - 2 * m[i]);
}

// One layer's packed row into ly.out, using nt threads for its chunks.
template <class I, class T>
LayerStats gram_layer(const Layer& ly, const GramArgs& args, int nt) {
  const int64_t n = ly.lay.n;
  T* K = Scratch<T>::mine().K.get(size_t(n * n));
  double s = 1.0;
  const Pass p = gram_upper<I, T>(static_cast<const I*>(ly.x), ly.lay,
                                  static_cast<const T*>(ly.mu), true, args, K, nt, s);
  std::vector<T> dg(static_cast<size_t>(n));
  double sq = 0.0;
  for (int64_t i = 0; i < n; ++i) {
    dg[i] = K[i * n + i];
    sq += double(dg[i]);
  }
  T* out = static_cast<T*>(ly.out);
  GramArgs a = args;
  a.scale = s;
  const double row_scale = args.kernel == 1 ? 1.0 : s;
  // ‖X‖² = ‖X_c‖² + n·Σμ² (both of s·x, p.mu_sq too), in x's units
  LayerStats st{in_units(sq, s), in_units(sq + double(n) * p.mu_sq, s), row_scale, 0.0};
  if (args.kernel == 1 && rbf_upper(K, dg.data(), n, ly.lay.a * ly.lay.b, out, a) != 0)
    st.status = 1.0;
  else
    center_pack(K, dg.data(), n, args.unbiased, out);
  Scratch<T>::mine().trim();  // the triangles of this layer: done
  return st;
}

template <class T>
LayerStats gram_layer_any(const Layer& ly, const GramArgs& args, int nt) {
  if (ly.x_dtype == kF32) return gram_layer<float, T>(ly, args, nt);
  return gram_layer<double, T>(ly, args, nt);
}

// Largest first onto the least-loaded of nt threads: the busiest thread's total.
double lpt_makespan(const std::vector<double>& cost, const std::vector<int64_t>& order, int nt) {
  std::vector<double> load(static_cast<size_t>(nt), 0.0);
  for (int64_t i : order) *std::min_element(load.begin(), load.end()) += cost[size_t(i)];
  return *std::max_element(load.begin(), load.end());
}

// Layers in parallel, one thread each (largest first), when that balances to within 15%
// of the ideal; otherwise one after another, each on every thread (the pool's threads are
// the process's OpenMP team when torch is loaded, so even a small layer straight after a
// torch op gains from them: pool.h).
template <class T>
void rows_t(const Layer* layers, int64_t count, const GramArgs& args, LayerStats* stats) {
  const int nt = std::max(1, args.threads);
  std::vector<double> cost(static_cast<size_t>(count));
  for (int64_t i = 0; i < count; ++i) {
    const Layout& L = layers[i].lay;
    cost[size_t(i)] = double(L.n) * double(L.n) * double(L.a * L.b) + 8.0 * L.n * L.n;
  }
  std::vector<int64_t> order(static_cast<size_t>(count));
  std::iota(order.begin(), order.end(), int64_t(0));
  std::stable_sort(order.begin(), order.end(),
                   [&](int64_t p, int64_t q) { return cost[size_t(p)] > cost[size_t(q)]; });
  const double total = std::accumulate(cost.begin(), cost.end(), 0.0);
  const bool balanced = lpt_makespan(cost, order, nt) <= 1.15 * total / nt;
  if (nt > 1 && !balanced) {
    for (int64_t i : order) stats[i] = gram_layer_any<T>(layers[i], args, nt);
    return;
  }
  std::atomic<int64_t> next{0};
  Pool::get().run(int(std::min<int64_t>(nt, count)), [&](int) {
    for (int64_t k; (k = next++) < count;) {
      const int64_t i = order[size_t(k)];
      stats[i] = gram_layer_any<T>(layers[i], args, 1);
    }
  });
}

template <class I, class T>
int kernel_matrix_t(const I* x, const Layout& L, T* out, const GramArgs& args) {
  const int64_t n = L.n;
  GramArgs a = args;
  a.auto_scale = args.kernel == 1;  // RBF: scale-free, so robust; linear: X Xᵀ as it is
  a.scale = 1.0;
  double s = 1.0;
  gram_upper<I, T>(x, L, static_cast<const T*>(nullptr), args.kernel == 1, a, out,
                   std::max(1, args.threads), s);
  a.scale = s;
  std::vector<T> dg(static_cast<size_t>(n));
  for (int64_t i = 0; i < n; ++i) dg[i] = out[i * n + i];
  if (args.kernel == 1) {
    std::vector<T> scr(static_cast<size_t>(n * (n - 1) / 2 + 1));
    if (rbf_upper(out, dg.data(), n, L.a * L.b, scr.data(), a) != 0) return 1;
  }
  for (int64_t i = 0; i < n; ++i) {
    out[i * n + i] = dg[i];
    for (int64_t j = i + 1; j < n; ++j) out[j * n + i] = out[i * n + j];
  }
  Scratch<T>::mine().trim();
  return 0;
}

template <class T>
void center_full_t(const T* k, T* out, int64_t n, bool unbiased) {
  std::vector<double> r(size_t(n), 0.0), c(size_t(n), 0.0);
  for (int64_t i = 0; i < n; ++i)
    for (int64_t j = 0; j < n; ++j) {
      if (unbiased && i == j) continue;
      const double v = double(k[i * n + j]);
      r[i] += v;
      c[j] += v;
    }
  double S = 0.0;
  for (double v : r) S += v;
  const double dn = double(n);
  const double div = unbiased ? dn - 2 : dn;
  const double g = unbiased ? S / ((dn - 1) * (dn - 2)) : S / (dn * dn);
  for (int64_t i = 0; i < n; ++i)
    for (int64_t j = 0; j < n; ++j)
      out[i * n + j] = (unbiased && i == j)
                           ? T(0)
                           : T(double(k[i * n + j]) - r[i] / div - c[j] / div + g);
}

// The end of a split pair stage: out (double) = the slots' partial products (in T) added
// in slot order, in T as before (so that the numbers do not depend on the split more than
// they must), then widened; for one set of rows, the lower triangle mirrored.
template <class T>
void pair_reduce(double* out, int64_t la, int64_t lb, bool same,
                 std::vector<std::vector<T>>& partial, const std::vector<char>& used) {
  T* sum = partial[0].data();
  if (!used[0]) std::fill(sum, sum + la * lb, T(0));
  for (size_t t = 1; t < used.size(); ++t)
    if (used[t])
      for (int64_t i = 0; i < la * lb; ++i) sum[i] += partial[t][size_t(i)];
  for (int64_t i = 0; i < la * lb; ++i) out[i] = double(sum[i]);
  if (same)
    for (int64_t i = 0; i < la; ++i)
      for (int64_t j = i + 1; j < la; ++j) out[j * la + i] = out[i * la + j];
}

// Up to this many rows on each side, the pair stage multiplies rows as they lie (dot_rows):
// measured, 12-48 rows 1.3-2x faster than packing them (bench/results/cpu-2core/), 64 even.
constexpr int64_t kFewRows = 64;

// out = ga gbᵀ, split over the row length m into nt slots of consecutive chunks (slot q:
// chunks [chunks·q/nt, chunks·(q+1)/nt), in order, the next chunk's rows prefetched while
// one is multiplied), slot q > 0 into its own (la, lb) partial, summed in slot order
// (pair_reduce): the same sums in the same order whichever threads run the slots.
template <class T>
void pair_t(const T* ga, int64_t la, int64_t lda, const T* gb, int64_t lb, int64_t ldb,
            int64_t m, double* out, int threads) {
  const bool same = ga == gb && la == lb && lda == ldb;
  const simd::Kernels<T>* kk = simd::kernels<T>();
  constexpr int64_t P = simd::panel_rows<T>();
  // vector kernels: packed panels, or (few rows) dot_rows on the rows as they lie, where
  // packing would cost as much as the products; OpenBLAS: slices of 4096 at least
  const bool few = la <= kFewRows && lb <= kFewRows;
  const int64_t W = kk == nullptr ? 4096 : few ? simd::kDotChunk : simd::kChunk;
  const int64_t chunks = (m + W - 1) / W;
  int64_t nt = std::max<int64_t>(1, std::min<int64_t>(threads, kk == nullptr ? m / W : chunks));
  if (la * lb * m < (int64_t(1) << 20)) nt = 1;
  std::vector<std::vector<T>> partial(static_cast<size_t>(nt));
  std::vector<char> used(size_t(nt), 0);
  if (kk == nullptr) set_blas_threads(1);
  partial[0].resize(size_t(la * lb));
  auto sweep = [&](int64_t q) {
    if (q > 0) partial[size_t(q)].resize(size_t(la * lb));
    T* o = partial[size_t(q)].data();
    if (kk == nullptr) {  // OpenBLAS: the slot's columns in one call
      const int64_t m0 = m * q / nt, m1 = m * (q + 1) / nt;
      if (same)
        syrk_upper(int(la), int(m1 - m0), ga + m0, int(lda), T(0), o);
      else
        gemm_abt(int(la), int(lb), int(m1 - m0), ga + m0, int(lda), gb + m0, int(ldb), T(0), o);
      used[size_t(q)] = 1;
      return;
    }
    Scratch<T>& sc = Scratch<T>::mine();
    T* pa = few ? nullptr : sc.pan.get(size_t((la + P - 1) / P * P * W));
    T* pb = few || same ? pa : sc.pan2.get(size_t((lb + P - 1) / P * P * W));
    const int64_t c_end = chunks * (q + 1) / nt;
    for (int64_t ch = chunks * q / nt; ch < c_end; ++ch) {
      const int64_t c0 = ch * W, cw = std::min(W, m - c0);
      if (ch + 1 < c_end) {
        const int64_t nw = std::min(W, m - c0 - W);
        kk->prefetch_rows(ga + c0 + W, lda, la, nw);
        if (!same) kk->prefetch_rows(gb + c0 + W, ldb, lb, nw);
      }
      const bool acc = used[size_t(q)] != 0;
      if (few) {
        kk->dot_rows(ga + c0, lda, la, gb + c0, ldb, lb, cw, o, lb, acc, same);
      } else if (same) {
        kk->pack_plain(ga + c0, lda, la, cw, pa);
        kk->syrk_panels(pa, la, cw, 0, INT64_MAX, o, la, acc);
      } else {
        kk->pack_plain(ga + c0, lda, la, cw, pa);
        kk->pack_plain(gb + c0, ldb, lb, cw, pb);
        kk->gemm_panels(pa, la, pb, lb, cw, o, lb, acc);
      }
      used[size_t(q)] = 1;
    }
  };
  run_slots<T>(nt, sweep);
  pair_reduce(out, la, lb, same, partial, used);
}

template <class T>
void row_sq_norms_t(const T* g, int64_t count, int64_t ld, int64_t m, double* out, int threads) {
  std::atomic<int64_t> next{0};
  Pool::get().run(count > 1 && count * m >= (int64_t(1) << 20) ? threads : 1, [&](int) {
    for (int64_t r; (r = next++) < count;) {
      const T* row = g + r * ld;
      double acc[8] = {0, 0, 0, 0, 0, 0, 0, 0};  // independent sums: pipelined, and exact
      int64_t j = 0;                              // enough for float rows
      for (; j + 8 <= m; j += 8)
        for (int u = 0; u < 8; ++u) acc[u] += double(row[j + u]) * double(row[j + u]);
      for (; j < m; ++j) acc[0] += double(row[j]) * double(row[j]);
      out[r] = ((acc[0] + acc[1]) + (acc[2] + acc[3])) + ((acc[4] + acc[5]) + (acc[6] + acc[7]));
    }
  });
}

}  // namespace

void row_sq_norms(const void* g, int64_t count, int64_t ld, int64_t m, int dtype, double* out,
                  int threads) {
  if (dtype == kF32)
    row_sq_norms_t(static_cast<const float*>(g), count, ld, m, out, threads);
  else
    row_sq_norms_t(static_cast<const double*>(g), count, ld, m, out, threads);
}

void centered_gram_rows(const Layer* layers, int64_t count, int ct, const GramArgs& args,
                        LayerStats* stats) {
  if (ct == kF32)
    rows_t<float>(layers, count, args, stats);
  else
    rows_t<double>(layers, count, args, stats);
}

int kernel_matrix(const void* x, int x_dtype, const Layout& lay, void* out, int ct,
                  const GramArgs& args) {
  if (ct == kF32) {
    if (x_dtype == kF32)
      return kernel_matrix_t(static_cast<const float*>(x), lay, static_cast<float*>(out), args);
    return kernel_matrix_t(static_cast<const double*>(x), lay, static_cast<float*>(out), args);
  }
  if (x_dtype == kF32)
    return kernel_matrix_t(static_cast<const float*>(x), lay, static_cast<double*>(out), args);
  return kernel_matrix_t(static_cast<const double*>(x), lay, static_cast<double*>(out), args);
}

void center_full(const void* k, void* out, int64_t n, int dtype, bool unbiased) {
  if (dtype == kF32)
    center_full_t(static_cast<const float*>(k), static_cast<float*>(out), n, unbiased);
  else
    center_full_t(static_cast<const double*>(k), static_cast<double*>(out), n, unbiased);
}

void pair(const void* ga, int64_t la, int64_t lda, const void* gb, int64_t lb, int64_t ldb,
          int64_t m, double* out, int dtype, int threads) {
  if (dtype == kF32)
    pair_t(static_cast<const float*>(ga), la, lda, static_cast<const float*>(gb), lb, ldb, m,
           out, threads);
  else
    pair_t(static_cast<const double*>(ga), la, lda, static_cast<const double*>(gb), lb, ldb,
           m, out, threads);
}

}  // namespace flashcka
