// The vector kernels of simd_cpu.h, written once over the vector type. Not a header to
// include anywhere else: each instruction set's file (simd_avx512.cpp, simd_avx2.cpp)
// includes it inside a namespace of its own after defining
//
//   FK_TARGET      the function attribute compiling a function for that set (a target
//                  attribute on every function, so GCC and Clang alike compile only these
//                  functions for it, and nothing shared with the rest of the module);
//   VT<T>          the vector of T (float, double): R, the column mask M, the "differs"
//                  accumulator D, L lanes, RB rows per tile block, DA × DB dot tiles, and
//                  mask/zero/load/loadu/loadz/set1/fma/add/sub/mul/abs/max/store/storeu/
//                  stores/dzero/dor/dany/hmax/hsum/transpose (L × L);
//   VD             the vector of double (L lanes) with load2/store2: 2L values of float or
//                  double as two double vectors, the first k of them (the rest 0 / kept);
//   kIsaName       the set's name.
//
// Standard headers are included by the including file, before its target region.

template <class T>
FK_TARGET void column_sums(const T* src, int64_t ld, int64_t n, int64_t w, double* acc) {
  constexpr int B = 2 * VD::L;
  for (int64_t c = 0; c < w; ++c) acc[c] = 0.0;
  for (int64_t i = 0; i < n; ++i) {  // row order per column, as the scalar loop
    const T* row = src + i * ld;
    int64_t c = 0;
    for (; c + B <= w; c += B) {
      typename VD::R lo, hi;
      VD::load2(row + c, B, lo, hi);
      VD::storeu(acc + c, VD::add(VD::loadu(acc + c), lo));
      VD::storeu(acc + c + VD::L, VD::add(VD::loadu(acc + c + VD::L), hi));
    }
    for (; c < w; ++c) acc[c] += double(row[c]);
  }
}

template <class T, bool Stats>
FK_TARGET double pack_t(const T* src, int64_t ld, int64_t n, int64_t w, const T* mu, T s,
                        T* out, bool* varies) {
  using V = VT<T>;
  using R = typename V::R;
  constexpr int P = int(panel_rows<T>()), L = V::L, NV = P / L;
  const int64_t panels = (n + P - 1) / P;
  const R sv = V::set1(s);
  R am = V::zero();
  typename V::D diff = V::dzero();
  for (int64_t c0 = 0; c0 < w; c0 += L) {
    const typename V::M cm = V::mask(w - c0);
    const R mv = mu != nullptr ? V::loadz(cm, mu + c0) : V::zero();
    const R x0 = V::loadz(cm, src + c0);  // row 0 of the chunk
    const int64_t cols = w - c0 < L ? w - c0 : L;
    for (int64_t p = 0; p < panels; ++p) {
      T* o = out + p * w * P + c0 * P;
      for (int g = 0; g < NV; ++g) {  // L rows of the panel at a time: an L × L transpose
        R r[L];
        const int64_t base = p * P + g * L;
        for (int i = 0; i < L; ++i) {
          if (base + i >= n) {
            r[i] = V::zero();
          } else if (Stats) {
            const R b = V::loadz(cm, src + (base + i) * ld + c0);
            diff = V::dor(diff, b, x0);
            const R v = V::sub(b, mv);
            am = V::max(V::abs(v), am);  // NaN-blind: max gives am when v is NaN
            r[i] = V::mul(v, sv);
          } else {
            r[i] = V::loadz(cm, src + (base + i) * ld + c0);
          }
        }
        V::transpose(r);
        for (int64_t c = 0; c < cols; ++c) V::store(o + c * P + g * L, r[c]);
      }
    }
  }
  if (V::dany(diff)) *varies = true;
  return double(V::hmax(am));
}

template <class T>
FK_TARGET double pack(const T* src, int64_t ld, int64_t n, int64_t w, const T* mu, T s, T* out,
                      bool* varies) {
  return pack_t<T, true>(src, ld, n, w, mu, s, out, varies);
}

template <class T>
FK_TARGET void pack_plain(const T* src, int64_t ld, int64_t n, int64_t w, T* out) {
  pack_t<T, false>(src, ld, n, w, nullptr, T(1), out, nullptr);
}

template <class T>
FK_TARGET void prefetch_rows(const T* src, int64_t ld, int64_t n, int64_t w) {
  if (n * w * int64_t(sizeof(T)) > (int64_t(256) << 10)) return;
  const char* base = reinterpret_cast<const char*>(src);
  const int64_t bytes = w * int64_t(sizeof(T)), stride = ld * int64_t(sizeof(T));
  for (int64_t i = 0; i < n; ++i)
    for (int64_t b = 0; b < bytes; b += 64) __builtin_prefetch(base + i * stride + b, 0, 2);
}

// A block of RR ≤ RB rows of a tile: C[r][c] (+)= Σ_k a[k·P + r] · b[k·P + c], c < P in
// NV vectors masked by cm (the live columns; full: all P), RR·NV accumulators in registers.
template <class T, bool Acc, int RR>
FK_TARGET inline void micro(const T* a, const T* b, int64_t w, T* C, int64_t ldc,
                            const typename VT<T>::M* cm, bool full) {
  using V = VT<T>;
  using R = typename V::R;
  constexpr int P = int(panel_rows<T>()), L = V::L, NV = P / L;
  R acc[RR][NV];
#pragma GCC unroll 16
  for (int r = 0; r < RR; ++r)
#pragma GCC unroll 4
    for (int v = 0; v < NV; ++v) acc[r][v] = V::zero();
  for (int64_t k = 0; k < w; ++k) {
    R bv[NV];
#pragma GCC unroll 4
    for (int v = 0; v < NV; ++v) bv[v] = V::load(b + k * P + v * L);
    const T* ak = a + k * P;
#pragma GCC unroll 16
    for (int r = 0; r < RR; ++r) {
      const R av = V::set1(ak[r]);
#pragma GCC unroll 4
      for (int v = 0; v < NV; ++v) acc[r][v] = V::fma(av, bv[v], acc[r][v]);
    }
  }
  if (full) {  // every column live: plain loads and stores (masked stores are slow on AMD)
#pragma GCC unroll 16
    for (int r = 0; r < RR; ++r) {
      T* cr = C + r * ldc;
#pragma GCC unroll 4
      for (int v = 0; v < NV; ++v)
        V::storeu(cr + v * L, Acc ? V::add(V::loadu(cr + v * L), acc[r][v]) : acc[r][v]);
    }
    return;
  }
  for (int r = 0; r < RR; ++r) {
    T* cr = C + r * ldc;
    for (int v = 0; v < NV; ++v)
      V::stores(cr + v * L, cm[v],
                Acc ? V::add(V::loadz(cm[v], cr + v * L), acc[r][v]) : acc[r][v]);
  }
}

// The R live rows of a tile, in blocks of RB rows (one block on AVX-512: 16 rows × 1
// vector; AVX2: 6 + 6 + 4 rows × 2 vectors, 12 accumulators of its 16 registers).
template <class T, bool Acc, int R0, int R>
FK_TARGET inline void tile_blocks(const T* a, const T* b, int64_t w, T* C, int64_t ldc,
                                  const typename VT<T>::M* cm, bool full) {
  constexpr int RB = VT<T>::RB;
  constexpr int RR = R - R0 < RB ? R - R0 : RB;
  micro<T, Acc, RR>(a + R0, b, w, C + R0 * ldc, ldc, cm, full);
  if constexpr (R0 + RB < R) tile_blocks<T, Acc, R0 + RB, R>(a, b, w, C, ldc, cm, full);
}

// Instantiated for each count of live rows (padded panel rows cost nothing).
template <class T, bool Acc, int R = int(panel_rows<T>())>
FK_TARGET inline void tile_rows(int64_t rows, const T* a, const T* b, int64_t w, T* C,
                                int64_t ldc, const typename VT<T>::M* cm, bool full) {
  if constexpr (R > 1) {
    if (rows < R) return tile_rows<T, Acc, R - 1>(rows, a, b, w, C, ldc, cm, full);
  }
  tile_blocks<T, Acc, 0, R>(a, b, w, C, ldc, cm, full);
}

// Tile of `rows` live rows and `cols` live columns at C.
template <class T>
FK_TARGET inline void tile_any(bool acc, int64_t rows, int64_t cols, const T* a, const T* b,
                               int64_t w, T* C, int64_t ldc) {
  using V = VT<T>;
  constexpr int P = int(panel_rows<T>()), L = V::L, NV = P / L;
  typename V::M cm[NV];
  for (int v = 0; v < NV; ++v) cm[v] = V::mask(cols - int64_t(v) * L);
  const bool full = cols >= P;
  if (acc)
    tile_rows<T, true>(rows, a, b, w, C, ldc, cm, full);
  else
    tile_rows<T, false>(rows, a, b, w, C, ldc, cm, full);
}

template <class T>
FK_TARGET void gemm_panels(const T* pa, int64_t na, const T* pb, int64_t nb, int64_t w, T* C,
                           int64_t ldc, bool accumulate) {
  constexpr int64_t P = panel_rows<T>();
  for (int64_t i = 0; i * P < na; ++i) {
    const int64_t rows = na - i * P < P ? na - i * P : P;
    for (int64_t j = 0; j * P < nb; ++j)
      tile_any<T>(accumulate, rows, nb - j * P, pa + i * w * P, pb + j * w * P, w,
                  C + i * P * ldc + j * P, ldc);
  }
}

template <class T>
FK_TARGET void syrk_panels(const T* packed, int64_t n, int64_t w, int64_t t0, int64_t t1, T* C,
                           int64_t ldc, bool accumulate) {
  constexpr int64_t P = panel_rows<T>();
  const int64_t panels = (n + P - 1) / P;
  int64_t t = 0;
  for (int64_t i = 0; i < panels && t < t1; ++i) {
    if (t + (panels - i) <= t0) {  // the whole tile row is before t0
      t += panels - i;
      continue;
    }
    const T* a = packed + i * w * P;
    const int64_t rows = n - i * P < P ? n - i * P : P;
    for (int64_t j = i; j < panels && t < t1; ++j, ++t) {
      if (t < t0) continue;
      tile_any<T>(accumulate, rows, n - j * P, a, packed + j * w * P, w,
                  C + i * P * ldc + j * P, ldc);
    }
  }
}

// One step of a dot tile: DA row pieces of a against DB of b over the lanes at k (masked
// or full).
template <class T, bool Masked>
FK_TARGET inline void dot_step(const T* const* ar, const T* const* br, int64_t k,
                               typename VT<T>::M m,
                               typename VT<T>::R (&acc)[VT<T>::DA][VT<T>::DB]) {
  using V = VT<T>;
  using R = typename V::R;
  R bv[V::DB];
#pragma GCC unroll 4
  for (int c = 0; c < V::DB; ++c) bv[c] = Masked ? V::loadz(m, br[c] + k) : V::loadu(br[c] + k);
#pragma GCC unroll 4
  for (int r = 0; r < V::DA; ++r) {
    const R av = Masked ? V::loadz(m, ar[r] + k) : V::loadu(ar[r] + k);
#pragma GCC unroll 4
    for (int c = 0; c < V::DB; ++c) acc[r][c] = V::fma(av, bv[c], acc[r][c]);
  }
}

template <class T>
FK_TARGET void dot_rows(const T* a, int64_t lda, int64_t la, const T* b, int64_t ldb, int64_t lb,
                        int64_t w, T* C, int64_t ldc, bool accumulate, bool upper) {
  using V = VT<T>;
  using R = typename V::R;
  constexpr int L = V::L, DA = V::DA, DB = V::DB;
  for (int64_t ia = 0; ia < la; ia += DA) {
    const T* ar[DA];
    for (int r = 0; r < DA; ++r) ar[r] = a + (ia + r < la ? ia + r : la - 1) * lda;
    // upper: every column c >= row r of this block lies in a tile from ib0 on
    for (int64_t ib = upper ? ia / DB * DB : 0; ib < lb; ib += DB) {
      const T* br[DB];
      for (int c = 0; c < DB; ++c) br[c] = b + (ib + c < lb ? ib + c : lb - 1) * ldb;
      R acc[DA][DB];
#pragma GCC unroll 4
      for (int r = 0; r < DA; ++r)
#pragma GCC unroll 4
        for (int c = 0; c < DB; ++c) acc[r][c] = V::zero();
      int64_t k = 0;
      for (; k + L <= w; k += L) dot_step<T, false>(ar, br, k, V::mask(L), acc);
      if (k < w) dot_step<T, true>(ar, br, k, V::mask(w - k), acc);
      T sum[DA][DB];  // (fixed indices: the accumulators stay in registers above)
#pragma GCC unroll 4
      for (int r = 0; r < DA; ++r)
#pragma GCC unroll 4
        for (int c = 0; c < DB; ++c) sum[r][c] = V::hsum(acc[r][c]);
      for (int r = 0; r < DA && ia + r < la; ++r)
        for (int c = 0; c < DB && ib + c < lb; ++c) {
          T* o = C + (ia + r) * ldc + ib + c;
          *o = accumulate ? *o + sum[r][c] : sum[r][c];
        }
    }
  }
}

// √2·(K_ij − m_i − m_j) for 2L values of row i from column j on.
FK_TARGET inline void centred2(typename VD::R& lo, typename VD::R& hi, typename VD::R mi,
                               const double* mj) {
  const typename VD::R s2 = VD::set1(1.4142135623730951);
  lo = VD::mul(s2, VD::sub(VD::sub(lo, mi), VD::loadu(mj)));
  hi = VD::mul(s2, VD::sub(VD::sub(hi, mi), VD::loadu(mj + VD::L)));
}

template <class T>
FK_TARGET void center_pack(const T* K, const T* dg, int64_t n, bool unbiased, T* out, double* r,
                           double* m) {
  using DR = typename VD::R;
  constexpr int64_t B = 2 * VD::L;  // ≤ 16: r and m hold n + 16 doubles
  for (int64_t i = 0; i < n + 16; ++i) r[i] = m[i] = 0.0;
  for (int64_t i = 0; i < n; ++i) {  // r: row sums of the symmetric K without its diagonal
    const T* Ki = K + i * n;
    DR ri = VD::zero();
    for (int64_t j = i + 1; j < n; j += B) {
      DR lo, hi;
      VD::load2(Ki + j, n - j, lo, hi);
      ri = VD::add(ri, VD::add(lo, hi));
      VD::storeu(r + j, VD::add(VD::loadu(r + j), lo));
      VD::storeu(r + j + VD::L, VD::add(VD::loadu(r + j + VD::L), hi));
    }
    r[i] += VD::hsum(ri) + (unbiased ? 0.0 : double(dg[i]));
  }
  double S = 0.0;
  for (int64_t i = 0; i < n; ++i) S += r[i];
  const double dn = double(n);
  for (int64_t i = 0; i < n; ++i)
    m[i] = unbiased ? r[i] / (dn - 2) - S / (2 * (dn - 1) * (dn - 2)) : r[i] / dn - S / (2 * dn * dn);
  T* o = out;
  for (int64_t i = 0; i < n; ++i) {
    const T* Ki = K + i * n;
    const DR mi = VD::set1(m[i]);
    for (int64_t j = i + 1; j < n; j += B) {
      DR lo, hi;
      VD::load2(Ki + j, n - j, lo, hi);
      centred2(lo, hi, mi, m + j);
      VD::store2(o + (j - i - 1), n - j, lo, hi);
    }
    o += n - i - 1;
  }
  if (!unbiased)
    for (int64_t i = 0; i < n; ++i) *o++ = T(double(dg[i]) - 2 * m[i]);
}

template <class T>
const Kernels<T> table = {kIsaName,         column_sums<T>, pack<T>,     pack_plain<T>,
                          prefetch_rows<T>, gemm_panels<T>, syrk_panels<T>, dot_rows<T>,
                          center_pack<T>};
