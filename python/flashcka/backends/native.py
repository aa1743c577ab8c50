"""The native CPU backend: C++ kernels in ``flashcka._C`` (AVX-512; OpenBLAS from
scipy-openblas32 on other CPUs).

centered_gram_row: ``x`` (n, ...) strided, ``mu`` (d,) -> one SYRK of ``X_c = x − 1μᵀ``
(upper triangle only; ``x − μ`` loaded chunk by chunk, so no (n, d) copy), then RBF (if
asked) and U-centering / HKH in one pass over the triangle, written as the packed row

    [√2 · strict upper triangle of C, row-major (n(n−1)/2)]  (+ [diag C (n)] when biased)

so ``row_a · row_b = ⟨C_a, C_b⟩_F``. pair: one SGEMM/DGEMM of packed rows (one SYRK when
both sides are the same rows) -> float64. Half the bytes and flops of full n² rows.

Every shape, dtype, stride and device is checked here; ``_C`` only sees valid pointers.
"""
from __future__ import annotations

import ctypes
import math
import os

import torch

from .base import Backend, ZeroBandwidthError, float64_shift
from .torch_backend import noise_tol

_F32, _F64 = 0, 1
_CODES = {torch.float32: _F32, torch.float64: _F64}
_INT_MAX = 2**31 - 1          # OpenBLAS (scipy-openblas32) takes 32-bit sizes
_ZERO_BW = ("the median heuristic gives sigma = 0 (at least half of the squared pairwise "
            "distances are zero, e.g. repeated samples); pass sigma=")
_lib, _lib_error = None, None


def _load():
    """Import flashcka._C after loading the wheel's OpenBLAS (rpath may be stale). On
    x86-64 CPUs with AVX-512 or AVX2 + FMA the kernels are our own (csrc/simd_*.cpp) and
    OpenBLAS is not called; elsewhere (or with FLASHCKA_SIMD=0) OpenBLAS picks its kernels
    as it always does. FLASHCKA_SIMD naming a set this CPU cannot run makes the backend
    unusable, with the reason."""
    global _lib, _lib_error
    if _lib is not None or _lib_error is not None:
        return _lib
    try:
        import scipy_openblas32 as sob
        try:  # the file's own name: libscipy_openblas.so, .dylib on macOS
            name = sob.get_library(fullname=True)
        except TypeError:  # an older scipy-openblas32 without fullname= (Linux name)
            name = f"lib{sob.get_library()}.so"
        path = os.path.join(sob.get_lib_dir(), name)
        if os.path.exists(path):
            ctypes.CDLL(path, mode=ctypes.RTLD_GLOBAL)
        from .. import _C
        if not getattr(_C, "has_cpu_kernels", False):
            raise ImportError("flashcka._C was built without the CPU kernels")
        if getattr(_C, "simd_error", ""):  # FLASHCKA_SIMD names what cannot run here
            raise RuntimeError(_C.simd_error)
        _lib = _C
    except Exception as e:  # a missing or stale build is a reason, not a crash
        _lib_error = f"{type(e).__name__}: {e}"
    return _lib


def _layout(x: torch.Tensor, ct: torch.dtype):
    """x (n, ...) as (tensor kept alive, dtype code, n, a, b, s0, s1, s2): element (i, j, k)
    of the (n, a, b) view at offset i·s0 + j·s1 + k·s2, feature index j·b + k. Trailing
    dims are merged where their strides allow (so (n, T, C) token layouts and sliced
    2-D inputs need no copy); anything else is copied to contiguous. Strides may be 0 or
    smaller than d (rows overlapping in memory): the kernels read such x element by
    element and hand BLAS only buffers of their own."""
    if x.dtype not in _CODES:
        x = x.to(ct)
    n = x.shape[0]
    if x.is_contiguous():
        d = math.prod(x.shape[1:])
        return x, _CODES[x.dtype], n, 1, d, d, 0, 1
    dims = [(s, st) for s, st in zip(x.shape[1:], x.stride()[1:]) if s != 1]
    merged: list[list[int]] = []
    for s, st in dims:
        if merged and merged[-1][1] == st * s:
            merged[-1] = [merged[-1][0] * s, st]
        else:
            merged.append([s, st])
    if not merged:
        merged = [[1, 1]]
    if len(merged) > 2:
        x = x.contiguous()
        merged = [[x[0].numel(), 1]]
    if len(merged) == 1:
        merged.insert(0, [1, 0])
    (a, s1), (b, s2) = merged
    return x, _CODES[x.dtype], n, a, b, x.stride(0), s1, s2


class NativeBackend(Backend):
    name = "native"

    def usable(self):
        lib = _load()
        return (True, "") if lib is not None else (False, _lib_error)

    def accepts(self, x):
        return (x.device.type == "cpu" and x.is_floating_point() and not x.is_complex()
                and x.shape[0] < 2**20)

    def preferred(self, x):
        """``auto`` takes native on every shape when the vector kernels run (AVX-512 or
        AVX2: 1.6-3x the torch backend at n 16-512, d 64-4096, one thread; bench/results);
        on the OpenBLAS path (other CPUs, FLASHCKA_SIMD=0) except for few samples of many
        features (n <= 64 and d >= 4096), where the torch backend was faster (native at
        0.73-0.89x of it, one thread; at n = 128 native was as fast or faster, also on two
        threads; AMD EPYC Zen 5, OpenBLAS forced). ``python -m flashcka info`` says which
        this machine does."""
        lib = _load()
        if lib is None or lib.simd_isa != "0":
            return True
        return not (x.shape[0] <= 64 and math.prod(x.shape[1:]) >= 4096)

    def scratch_bytes(self, n, ct, d=0):
        """Each working thread's n × n triangle (layers in parallel, or the slots of one
        layer split over the threads): threads · n² values (csrc/gram_cpu.cpp); x is
        centred as it is packed, a chunk at a time, so d adds nothing."""
        return self._threads() * n * n * ct.itemsize

    @staticmethod
    def auto_rule() -> str:
        """The shape classes ``auto`` gives this backend on this machine, in words."""
        lib = _load()
        if lib is None:
            return "no shape (it is not usable)"
        if lib.simd_isa != "0":
            return f"every shape ({lib.simd})"
        return ("n > 64 or d < 4096 (OpenBLAS SYRK); the torch backend for n <= 64 with "
                "d >= 4096")

    def row_length(self, n, unbiased):
        return n * (n - 1) // 2 + (0 if unbiased else n)

    # ------------------------------------------------------------------ Gram rows
    def centered_gram_rows(self, xs, out, *, kernel, sigma, threshold, unbiased, mus=None,
                           scale=None):
        """Packed centered rows of the representations ``xs`` into ``out`` (L, m) (or (m,)
        for one layer), in one
        call (layers in parallel where that balances, see csrc/gram_cpu.cpp).

        Without ``mus``, each column's mean is taken as its chunk of x is loaded (x read
        once), and ``scale`` is chosen per layer (a power of two, 1 for normal inputs:
        ``_engine.pow2_scale``'s rule); with ``mus`` (L tensors of x.shape[1:]) and
        ``scale`` (a float), those are used. Returns float64 (L, 4) in x's units:
        [‖x − 1μᵀ‖²_F, ‖x‖²_F (= that + n·Σμ²), the row's scale (the row is the centered
        Gram of scale·X_c; 1 for RBF rows, which hold kernel values), status]; a zero RBF
        bandwidth raises ZeroBandwidthError with ``.layer``, the first such layer."""
        ct = out.dtype
        L = len(xs)
        length = self.row_length(xs[0].shape[0], unbiased) if L else 0
        if L == 1 and out.dim() == 1:  # one row: (m,) as well as (1, m)
            out = out.view(1, -1)
        if out.shape != (L, length) or out.device.type != "cpu" or ct not in _CODES:
            raise ValueError(f"out must be a CPU float32/float64 tensor of shape ({L}, "
                             f"{length}), got {tuple(out.shape)} {out.dtype} on {out.device}")
        dst = out if out.is_contiguous() else torch.empty(L, length, dtype=ct)
        keep, desc, shifted = [], [], []
        base, step = dst.data_ptr(), dst.stride(0) * dst.element_size()
        for i, x in enumerate(xs):
            if mus is None and x.dtype is ct and x.is_contiguous():  # the common case, fast
                n = x.shape[0]
                d = x.numel() // n
                desc += (x.data_ptr(), _CODES[ct], n, 1, d, d, 0, 1, 0, base + i * step)
                continue
            shift = float64_shift(x, ct) if mus is None else None
            if shift is not None:  # centred in float64 before the kernels round x to ct
                x = x - shift
                shifted.append((i, x.shape[0] * float(shift.square().sum())))
            xk, code, n, a, b, s0, s1, s2 = _layout(x, ct)
            mu_ptr = 0
            if mus is not None:
                mu_c = self._mu(mus[i], ct, a * b, "mu")
                keep.append(mu_c)
                mu_ptr = mu_c.data_ptr()
            keep.append(xk)
            desc += (xk.data_ptr(), code, n, a, b, s0, s1, s2, mu_ptr, base + i * step)
        stats = torch.empty(L, 4, dtype=torch.float64)
        if L:
            _load().centered_gram_rows(
                desc, _CODES[ct], 1 if kernel == "rbf" else 0, self._sigma(sigma),
                float(threshold), bool(unbiased), self._threads(), mus is None,
                1.0 if scale is None else float(scale), stats.data_ptr())
        for i, n_mu_sq in shifted:  # ‖x‖² = ‖x − 1μᵀ‖² + n·Σμ², μ removed above
            stats[i, 1] += n_mu_sq
        if dst is not out:
            out.copy_(dst)
        if kernel == "rbf":  # status is only ever set for RBF
            bad = (stats[:, 3] == 1).nonzero()
            if len(bad):
                e = ZeroBandwidthError(_ZERO_BW)
                e.layer = int(bad[0])
                raise e
        return stats

    def centered_gram_row(self, x, mu, out, *, kernel, sigma, threshold, unbiased, scale=1.0):
        """The backend contract (base.py): one row from a given μ, built from scale·(x − μ);
        returns ‖x − μ‖²_F (x's units) as a 0-d tensor."""
        length = self.row_length(x.shape[0], unbiased)
        if out.dim() != 1 or out.numel() != length or out.device.type != "cpu" \
                or out.dtype not in _CODES:
            raise ValueError(f"out must be a CPU float32/float64 vector of length {length}, "
                             f"got shape {tuple(out.shape)} {out.dtype} on {out.device}")
        stats = self.centered_gram_rows([x], out.view(1, -1), kernel=kernel, sigma=sigma,
                                        threshold=threshold, unbiased=unbiased, mus=[mu],
                                        scale=scale)
        return stats[0, 0]

    def kernel_matrix(self, x, *, kernel, sigma, threshold, ct):
        xk, code, n, a, b, s0, s1, s2 = _layout(x, ct)
        out = torch.empty(n, n, dtype=ct)
        status = _load().kernel_matrix(
            xk.data_ptr(), code, n, a, b, s0, s1, s2, out.data_ptr(), _CODES[ct],
            1 if kernel == "rbf" else 0, self._sigma(sigma), float(threshold), self._threads())
        if status == 1:
            raise ZeroBandwidthError(_ZERO_BW)
        return out

    def center(self, k, *, unbiased):
        if k.dim() != 2 or k.shape[0] != k.shape[1] or k.dtype not in _CODES \
                or k.device.type != "cpu":
            raise ValueError(f"k must be a square CPU float32/float64 matrix, got shape "
                             f"{tuple(k.shape)} {k.dtype} on {k.device}")
        n = k.shape[0]
        if n < (4 if unbiased else 1):
            raise ValueError(f"k has n = {n}; U-centering needs n >= 4")
        kc = k.contiguous()
        out = torch.empty_like(kc)
        _load().center_full(kc.data_ptr(), out.data_ptr(), n, _CODES[k.dtype], bool(unbiased))
        return out

    # ------------------------------------------------------------------ pair stage
    def pair(self, ga, gb):
        for arg, g in (("ga", ga), ("gb", gb)):
            if g.dim() != 2 or g.dtype not in _CODES or g.device.type != "cpu":
                raise ValueError(f"{arg} must be a 2-D CPU float32/float64 tensor of rows, got "
                                 f"shape {tuple(g.shape)} {g.dtype} on {g.device}")
        if ga.dtype != gb.dtype or ga.shape[1] != gb.shape[1]:
            raise ValueError(f"ga {tuple(ga.shape)} {ga.dtype} and gb {tuple(gb.shape)} "
                             f"{gb.dtype} must have the same row length and dtype")
        (la, m), lb = ga.shape, gb.shape[0]
        if la == 0 or lb == 0 or m == 0:
            return torch.zeros(la, lb, dtype=torch.float64)
        ga = self._rows(ga)
        gb = ga if gb.data_ptr() == ga.data_ptr() and gb.shape == ga.shape \
            and gb.stride() == ga.stride() else self._rows(gb)
        if max(m, ga.stride(0), gb.stride(0), la, lb) > _INT_MAX:
            return (ga @ gb.T).to(torch.float64)
        out = torch.empty(la, lb, dtype=torch.float64)
        _load().pair(ga.data_ptr(), la, ga.stride(0), gb.data_ptr(), lb, gb.stride(0), m,
                     out.data_ptr(), _CODES[ga.dtype], self._threads())
        return out

    def pair_permuted(self, ga, bfull, lb, perms, diag):
        """The permutation null's pair stage (csrc/permute_cpu.h): ``ga`` (L_A, m) packed
        rows, ``bfull`` (n, n, lbp) side B's full centered Grams (√2 off the diagonal, lbp
        a multiple of 64 bytes' worth of values), ``perms`` (P, n) int64 permutations ->
        (P, L_A, lb) float64, out[p] = ga · (B with samples permuted by perms[p])ᵀ. None
        when the built module has no such kernel (an older ``_C``)."""
        lib = _load()
        if lib is None or not hasattr(lib, "pair_permuted"):
            return None
        ga = self._rows(ga)
        (la, m), (n, n2, lbp), count = ga.shape, bfull.shape, perms.shape[0]
        step = 64 // ga.element_size()
        if (ga.dtype not in _CODES or bfull.dtype != ga.dtype or n != n2 or lbp % step
                or lb > lbp or not bfull.is_contiguous() or perms.dtype != torch.int64
                or tuple(perms.shape) != (count, n) or not perms.is_contiguous()
                or m != n * (n - 1) // 2 + (n if diag else 0)
                or any(t.device.type != "cpu" for t in (ga, bfull, perms))):
            raise ValueError(f"pair_permuted: ga {tuple(ga.shape)} {ga.dtype}, bfull "
                             f"{tuple(bfull.shape)} {bfull.dtype}, perms {tuple(perms.shape)} "
                             f"{perms.dtype} do not fit together")
        out = torch.empty(count, la, lb, dtype=torch.float64)
        if count and la and lb:
            lib.pair_permuted(ga.data_ptr(), la, ga.stride(0), bfull.data_ptr(), lb, lbp, n,
                              bool(diag), perms.data_ptr(), count, out.data_ptr(),
                              _CODES[ga.dtype], self._threads())
        return out

    # ------------------------------------------------------------------ tiled route
    centres_tiles = True    # kernel_tiles takes raw rows with mus/scales (packed centred)

    def kernel_tiles(self, xi, xj, out, *, kernel, two_s2, shift, unbiased, dims,
                     sums=None, mus=None, scales=None):
        """The tiled route's tiles of every layer in one call (base.py; csrc/tiled_cpu.cpp:
        the vector micro-kernels' packed panels, layers in parallel), the numbers of
        ``torch_backend.kernel_tile``. With ``mus`` (per layer (d,) in ct, or None) and
        ``scales``, the rows are raw and the tile is made from scale·(x − μ), centred as
        the panels are packed (no centred copy of the rows)."""
        ct = out.dtype
        L, ti, tj = out.shape
        if out.device.type != "cpu" or ct not in _CODES or not out.is_contiguous():
            raise ValueError(f"out must be a contiguous CPU float32/float64 tensor, got "
                             f"{out.dtype} on {out.device}")
        keep, desc, par = [], [], []
        for i in range(L):
            a = self._tile_rows(xi[i], ct)
            b = a if xj is None else self._tile_rows(xj[i], ct)
            if a.shape[0] != ti or b.shape[0] != tj or a.shape[1] != b.shape[1]:
                raise ValueError(f"layer {i}: rows {tuple(a.shape)} and {tuple(b.shape)} do not "
                                 f"make a ({ti}, {tj}) tile")
            mu = None if mus is None else mus[i]
            if mu is not None:
                mu = self._mu(mu, ct, a.shape[1], "mu")
                keep.append(mu)
            keep += [a, b]
            desc += (a.data_ptr(), b.data_ptr(), a.shape[1], a.stride(0), b.stride(0),
                     0 if mu is None else mu.data_ptr(), shift is not None)
            par += (1.0 if scales is None else float(scales[i]),
                    float(two_s2[i]) if two_s2 is not None else 1.0,
                    float(shift[i]) if shift is not None else 0.0, noise_tol(dims[i], ct))
        rs = cs = 0
        if sums is not None:
            for t, k in zip(sums, (ti, tj)):
                if t.shape != (L, k) or t.dtype != torch.float64 or not t.is_contiguous():
                    raise ValueError(f"sums must be contiguous float64 ({L}, {ti}) and ({L}, "
                                     f"{tj}), got {tuple(t.shape)} {t.dtype}")
            rs, cs = sums[0].data_ptr(), sums[1].data_ptr()
        if L:
            _load().kernel_tiles(desc, par, ti, tj, xj is None, _CODES[ct],
                                 {"linear": 0, "rbf": 1, "dist": 2}[kernel], bool(unbiased),
                                 out.data_ptr(), rs, cs, self._threads())
        return out

    def tile_histogram(self, tile, diag, pre, nb, hist):
        """The exact median's selection pass over one distance tile (csrc/tiled_cpu.h):
        ``hist`` (65536 int64, CPU) += counts of the next 16 bits among the values whose
        top ``nb`` bits are ``pre`` (strict upper triangle of a diagonal tile); returns the
        largest value counted."""
        if tile.dim() != 2 or tile.dtype not in _CODES or not tile.is_contiguous() \
                or tile.device.type != "cpu":
            raise ValueError(f"tile must be a contiguous 2-D CPU float32/float64 tensor, got "
                             f"{tuple(tile.shape)} {tile.dtype} on {tile.device}")
        if hist.shape != (1 << 16,) or hist.dtype != torch.int64 or not hist.is_contiguous():
            raise ValueError("hist must be a contiguous int64 tensor of 65536 counts")
        width = 8 * tile.element_size()
        if not (0 <= nb <= width - 16 and 0 <= pre < (1 << max(nb, 1))):
            raise ValueError(f"bad prefix: {nb} bits {pre}")
        return _load().tile_histogram(tile.data_ptr(), tile.shape[0], tile.shape[1], bool(diag),
                                      _CODES[tile.dtype], int(pre), int(nb), hist.data_ptr())

    @staticmethod
    def _tile_rows(x, ct):
        """Rows (t, d) in ct with unit column stride (a view when they already are)."""
        x = x.to(ct)
        if x.dim() != 2 or x.stride(1) != 1 or x.stride(0) < x.shape[1]:
            x = x.reshape(x.shape[0], -1).contiguous()
        return x

    def sq_row_norms(self, g):
        """‖g_i‖² (L,) float64 of rows g (L, m), accumulated in double (float32 sums of
        long rows lose about 1e-5 relative)."""
        if g.dim() != 2 or g.dtype not in _CODES or g.device.type != "cpu":
            raise ValueError(f"g must be a 2-D CPU float32/float64 tensor of rows, got "
                             f"shape {tuple(g.shape)} {g.dtype} on {g.device}")
        g = self._rows(g)
        out = torch.empty(g.shape[0], dtype=torch.float64)
        if g.numel():
            _load().row_sq_norms(g.data_ptr(), g.shape[0], g.stride(0), g.shape[1],
                                 _CODES[g.dtype], out.data_ptr(), self._threads())
        else:
            out.zero_()
        return out

    # ------------------------------------------------------------------ helpers
    # Worker threads of the native kernels (our own pool, not torch's OpenMP workers):
    # None follows torch.get_num_threads(); an int fixes it.
    threads: int | None = None

    def _threads(self) -> int:
        return max(1, self.threads or torch.get_num_threads())

    @staticmethod
    def _rows(g):
        """Rows with unit inner stride and a row stride BLAS accepts."""
        if g.stride(1) != 1 or g.stride(0) < g.shape[1]:
            g = g.contiguous()
        return g

    @staticmethod
    def _mu(mu, ct, d, arg):
        if mu.numel() != d:
            raise ValueError(f"{arg} has {mu.numel()} values for {d} features")
        return mu.to(device="cpu", dtype=ct).contiguous().reshape(-1)

    @staticmethod
    def _sigma(sigma):
        if sigma is None:
            return 0.0
        s = float(sigma)
        if not s > 0:
            raise ValueError(f"sigma must be positive, got {sigma!r}")
        return s
