"""The native backend's fast paths against the float64 reference (tests/reference.py):
the power-of-two scale contract of ``_engine.Rows``, inputs whose rows overlap in memory,
and the threaded / batched Gram paths at awkward sizes."""
import math
import os
import subprocess
import sys
import tempfile
import threading

import numpy as np
import pytest
import torch

import flashcka
from flashcka.core import engine as _engine
from flashcka.backends import get

from reference import center_biased, center_unbiased, cka, gram_linear
from test_native import unpack  # packed row -> full (n, n) float64

pytestmark = pytest.mark.native

BACKENDS = ["native", "torch"]


def rel(a, b):
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    return float(np.abs(a - b).max() / max(np.abs(b).max(), 1e-300))


def rows_of(be, xs, ct, kernel="linear", unbiased=True, sigma=None):
    s = _engine.Settings(kernel=kernel, unbiased=unbiased, sigma=sigma)
    return _engine.gram_rows(be, xs, [f"x{i}" for i in range(len(xs))], xs[0].shape[0], ct, s)


# ---------------------------------------------------------------- scale contract
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("ct", [torch.float32, torch.float64])
@pytest.mark.parametrize("k", [-140, -100, -40, -17, 17, 40, 100, 140])
def test_power_of_two_scaling_gives_the_same_rows(backend, ct, k):
    """Normal inputs keep scale 1; x·2^k (out of the safe range) gets the power of two
    that brings max |x_c| into [0.5, 1), and rows that differ from the unscaled ones by
    exactly (scale·2^k)² (every step is exact); sq_c and sq are in the input's units."""
    be = get(backend)
    gen = torch.Generator().manual_seed(k + 200)
    x = torch.randn(37, 5, 11, generator=gen) + 3.0
    y = torch.randn(37, 3, generator=gen)
    if abs(k) > 126:  # beyond float32: float64 inputs
        if ct == torch.float32:
            pytest.skip("2^±140 is outside float32")
        x, y = x.double(), y.double()
    base = rows_of(be, [x, y], ct)
    assert torch.equal(base.scale, torch.ones(2, dtype=torch.float64))
    f = 2.0 ** k
    big = rows_of(be, [x * f, y * f], ct)
    t = (big.scale * f).tolist()
    amax = [float((v - v.mean(0)).abs().max()) for v in (x, y)]
    for v, ti, ai in zip((x, y), t, amax):
        lo, hi = (2.0 ** -16, min(2.0 ** 16, (2.0 ** 50 / v.numel()) ** 0.5)) \
            if ct == torch.float32 else (2.0 ** -128, 2.0 ** 128)
        if lo <= ai * f <= hi:
            assert ti == f                                # scale 1
        else:
            assert math.frexp(ti)[0] == 0.5 and 0.5 <= ti * ai < 1.0
    for i in range(2):
        assert torch.equal(big.g[i], base.g[i] * t[i] ** 2)
    assert torch.allclose(big.sq_c, base.sq_c * f * f, rtol=1e-15, atol=0)
    assert torch.allclose(big.sq, base.sq * f * f, rtol=1e-15, atol=0)


@pytest.mark.parametrize("backend", BACKENDS)
def test_rbf_rows_are_scale_free(backend):
    """RBF rows hold kernel values: scale 1, and an absolute sigma scales with x."""
    be = get(backend)
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(29, 6, generator=gen)
    f = 2.0 ** 90
    for sigma in (None, 2.5):
        a = rows_of(be, [x], torch.float32, "rbf", sigma=sigma)
        b = rows_of(be, [x * f], torch.float32, "rbf", sigma=None if sigma is None else sigma * f)
        assert torch.equal(b.scale, torch.ones(1, dtype=torch.float64))
        assert torch.equal(a.g, b.g)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("scale", [1e-30, 1e-12, 1e9, 1e30])
@pytest.mark.parametrize("unbiased", [True, False])
def test_cka_float32_at_extreme_scales(backend, scale, unbiased):
    """CKA is scale-invariant: float32 inputs scaled by 1e-30..1e30 give the float64
    reference's value (without the scale, 1e30 overflows the Gram and 1e-30 underflows)."""
    gen = torch.Generator().manual_seed(int(math.log10(scale)) + 50)
    x = torch.randn(41, 300, generator=gen, dtype=torch.float64)
    y = x[:, :50] + 0.7 * torch.randn(41, 50, generator=gen, dtype=torch.float64)
    x32, y32 = (x * scale).float(), (y * scale).float()
    got = flashcka.cka_matrix([x32], [y32], unbiased=unbiased, backend=backend, route="gram")
    want = cka(x32.double().numpy() / scale, y32.double().numpy() / scale, unbiased=unbiased)
    assert abs(float(got[0, 0]) - want) < 1e-4, (float(got[0, 0]), want)


# ---------------------------------------------------------------- rows overlapping in memory
def overlapping(kind, dtype):
    gen = torch.Generator().manual_seed(len(kind))
    base = torch.randn(200, generator=gen, dtype=dtype)
    if kind == "unfold":
        return base[:64].unfold(0, 16, 4)                         # (13, 16), stride (4, 1)
    if kind == "expand":
        return base[:7].expand(9, 7)                              # stride (0, 1)
    if kind == "as_strided":
        return base.as_strided((11, 30), (3, 1))                  # stride(0) < d
    if kind == "zero_inner":
        return base[:5].as_strided((5, 8), (1, 0))                # constant rows
    if kind == "tokens_overlap":
        return base.as_strided((10, 4, 6), (5, 2, 1))             # (n, T, C) overlapping
    raise ValueError(kind)


KINDS = ["unfold", "expand", "as_strided", "zero_inner", "tokens_overlap"]


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_gram_of_overlapping_rows(kind, dtype):
    x = overlapping(kind, dtype)
    ref = gram_linear(x.double().numpy())
    got = flashcka.gram(x, backend="native")
    tol = 1e-12 if dtype == torch.float64 else 1e-5
    assert rel(got, ref) < tol


@pytest.mark.parametrize("kind", ["unfold", "as_strided", "tokens_overlap"])
@pytest.mark.parametrize("unbiased", [True, False])
def test_centered_rows_of_overlapping_rows(kind, unbiased):
    x = overlapping(kind, torch.float64)
    r = rows_of(get("native"), [x], torch.float64, unbiased=unbiased)
    k = gram_linear(x.numpy())
    ref = center_unbiased(k) if unbiased else center_biased(k)
    assert rel(unpack(r.g[0], x.shape[0], unbiased), ref) < 1e-12


# ---------------------------------------------------------------- threaded and batched paths
native = get("native")


def ref_rows(xs, unbiased):
    out = []
    for x in xs:
        k = gram_linear(x.double().numpy())
        out.append(center_unbiased(k) if unbiased else center_biased(k))
    return out


def threads(t):
    class _T:
        def __enter__(self):
            self.old = torch.get_num_threads()
            torch.set_num_threads(t)

        def __exit__(self, *a):
            torch.set_num_threads(self.old)
    return _T()


def awkward_layers(gen, dtype):
    """Layers of mixed n-compatible shapes and layouts (one n), some big enough to split."""
    n = 97
    return [torch.randn(n, 1000, generator=gen, dtype=dtype) + 2.0,
            torch.randn(n, 3, generator=gen, dtype=dtype),
            torch.randn(n, 1, generator=gen, dtype=dtype),
            torch.randn(n, 3, 41, generator=gen, dtype=dtype)[:, 1:],           # tokens
            torch.randn(2100, n, generator=gen, dtype=dtype).T,                   # transposed
            torch.randn(n, 5000, generator=gen, dtype=dtype)[:, ::2]]             # strided


@pytest.mark.parametrize("nthreads", [1, 2, 3])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("unbiased", [True, False])
def test_batched_rows_match_reference(nthreads, dtype, unbiased):
    """gram_rows hands all layers to one native call (in parallel when that balances, else
    one after another with chunks shared out): each row equals the float64 reference."""
    gen = torch.Generator().manual_seed(nthreads * 10 + unbiased)
    xs = awkward_layers(gen, dtype)
    with threads(nthreads):
        r = rows_of(native, xs, dtype, unbiased=unbiased)
        single = [rows_of(native, [x], dtype, unbiased=unbiased) for x in xs]
    tol = 1e-12 if dtype == torch.float64 else 2e-5
    for i, (x, ref) in enumerate(zip(xs, ref_rows(xs, unbiased))):
        assert rel(unpack(r.g[i], 97, unbiased), ref) < tol, i
        assert rel(unpack(single[i].g[0], 97, unbiased), ref) < tol, i
        xd = x.double().reshape(97, -1)
        want_sq_c = float(((xd - xd.mean(0)) ** 2).sum())
        assert abs(float(r.sq_c[i]) - want_sq_c) <= 1e-5 * want_sq_c
        assert abs(float(r.sq[i]) - float((xd ** 2).sum())) <= 1e-5 * float((xd ** 2).sum())


@pytest.mark.parametrize("n,d", [(4, 1), (5, 3), (97, 1000), (1025, 3), (130, 70000)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_one_layer_split_over_threads(n, d, dtype):
    """One layer at a time (the hooks' path): big layers are split by feature chunks over
    the threads; the float64 reference decides."""
    gen = torch.Generator().manual_seed(n + d)
    x = torch.randn(n, d, generator=gen, dtype=dtype) * 3 + 5
    out = torch.full((native.row_length(n, True),), float("nan"), dtype=dtype)
    sc = torch.zeros((), dtype=torch.float64)
    with threads(2):
        sq_c, sq = _engine.gram_row(native, x, "x", out, n, dtype, _engine.Settings(),
                                    scale_out=sc)
    assert not torch.isnan(out).any()
    assert float(sc) == 1.0
    ref = center_unbiased(gram_linear(x.double().numpy())) if n < 200 else None
    if ref is None:  # n = 1025: U-centering by its formula (the reference loops are O(n²))
        k = gram_linear(x.double().numpy())
        kt = k.copy()
        np.fill_diagonal(kt, 0)
        r = kt.sum(1)
        ref = kt - r[:, None] / (n - 2) - r[None, :] / (n - 2) + r.sum() / ((n - 1) * (n - 2))
        np.fill_diagonal(ref, 0)
    tol = 1e-12 if dtype == torch.float64 else 5e-5
    assert rel(unpack(out, n, True), ref) < tol


@pytest.mark.parametrize("nthreads", [1, 2])
def test_scale_found_late_and_tiny(nthreads):
    """A huge block of columns after normal ones (the scale is found mid-way: the pass is
    abandoned and redone) and an all-tiny layer (found at the end): both scaled, both
    right against float64."""
    gen = torch.Generator().manual_seed(9)
    n = 90  # n²d > 2²⁸: with 2 threads the layer is split over both
    late = torch.randn(n, 40000, generator=gen)
    late[:, 30000:] *= 1e25
    tiny = torch.randn(n, 300, generator=gen) * 1e-25
    with threads(nthreads):
        r = rows_of(native, [late, tiny], torch.float32)
    assert float(r.scale[0]) < 2.0 ** -70 and float(r.scale[1]) > 2.0 ** 70
    for i, x in enumerate((late, tiny)):
        ref = center_unbiased(gram_linear(x.double().numpy()))
        got = unpack(r.g[i], n, True) / float(r.scale[i]) ** 2
        assert rel(got, ref) < 1e-4, i


def test_zero_bandwidth_names_the_layer():
    x = torch.randn(10, 4, dtype=torch.float64)
    y = torch.zeros(10, 4, dtype=torch.float64)
    y[0] = 1.0
    with pytest.raises(ValueError, match="lay_y.*sigma = 0"):
        _engine.gram_rows(native, [x, y], ["lay_x", "lay_y"], 10, torch.float64,
                          _engine.Settings(kernel="rbf"))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("L,m", [(1, 1), (3, 7), (12, 32640), (0, 5), (2, 0)])
def test_sq_row_norms_in_double(dtype, L, m):
    gen = torch.Generator().manual_seed(L + m)
    g = (torch.randn(L, 2 * m + 1, generator=gen, dtype=torch.float64) * 1e3).to(dtype)[:, 1::2]
    want = (g.double().numpy() ** 2).sum(1)
    got = native.sq_row_norms(g).numpy()
    assert got.dtype == np.float64 and got.shape == (L,)
    assert np.all(np.abs(got - want) <= 1e-13 * np.maximum(want, 1e-300))


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_constant_layer_has_exactly_zero_centered_norm(backend, dtype):
    """Every column constant (at offsets whose mean does not round back exactly in float64
    sums): ‖X_c‖² is exactly 0, so the zero-variance test need not guess from ulps."""
    offs = torch.tensor([1e8, 3.3, -2.7, 0.1, 5e-3, 1 / 3], dtype=torch.float64).to(dtype)
    x = torch.zeros(97, 6, dtype=dtype) + offs
    y = torch.randn(97, 4, dtype=dtype)
    r = rows_of(get(backend), [x, y], dtype)
    assert float(r.sq_c[0]) == 0.0 and float(r.sq_c[1]) > 0
    assert abs(float(r.sq[0]) - 97 * float((offs.double() ** 2).sum())) <= 1e-6 * float(r.sq[0])
    if backend == "native":
        assert float(r.g[0].abs().max()) == 0.0


def test_rbf_duplicated_rows_median_is_zero():
    """Rows that are exact duplicates have distance 0, not the Gram's rounding noise:
    with more than half the distances 0 the median heuristic raises instead of picking
    σ² ≈ 1e-15 (issue 9, found by the fuzzer)."""
    g = torch.Generator().manual_seed(0)
    b = torch.randn(2, 4, generator=g)
    y = b[torch.tensor([0, 1, 0, 1, 0, 1, 1])]
    with pytest.raises(ValueError, match="sigma = 0"):
        flashcka.cka(torch.randn(7, 3, generator=g), y, kernel="rbf", dtype=torch.float64,
                     backend="native")
    k = native.kernel_matrix(y, kernel="rbf", sigma=1.0, threshold=1.0, ct=torch.float64)
    same = (y[:, None, :] == y[None, :, :]).all(-1)
    assert torch.equal(k[same], torch.ones(int(same.sum()), dtype=torch.float64))


def test_float32_near_max_mean_does_not_overflow():
    """A float32 column mean summed in float32 overflows near float32's max; the row path
    sums in float64 (native always; the others on the CPU)."""
    gen = torch.Generator().manual_seed(2)
    x = torch.randn(50, 4, generator=gen) * 1e37 + 2e38 / 3
    y = torch.randn(50, 3, generator=gen)
    want = cka(x.double().numpy(), y.double().numpy())
    for backend in BACKENDS:
        got = flashcka.cka_matrix([x], [y], backend=backend, route="gram")
        assert abs(float(got[0, 0]) - want) < 1e-4, backend


def _child_rows(q):
    with threads(2):
        x = torch.randn(130, 70000)
        r = rows_of(native, [x, x[:, :5000]], torch.float32)
    q.put(float(r.sq_c[0]) > 0)


def test_pool_after_fork():
    """The pool's threads do not exist in a forked child (DataLoader workers): the child
    gets a pool of its own instead of waiting forever on the parent's."""
    import multiprocessing as mp
    if "fork" not in mp.get_all_start_methods():
        pytest.skip("no fork on this platform")
    with threads(2):
        rows_of(native, [torch.randn(130, 70000)], torch.float32)  # parent's pool started
    ctx = mp.get_context("fork")
    q = ctx.Queue()
    p = ctx.Process(target=_child_rows, args=(q,))
    p.start()
    p.join(120)
    if p.is_alive():
        p.kill()
        pytest.fail("the forked child hung in the native pool")
    assert p.exitcode == 0 and q.get(timeout=5)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_batched_big_layer_split_then_small_in_parallel(dtype):
    """One layer far bigger than the rest (no balanced assignment): it is split over the
    threads, then the small ones run in parallel; every row against float64."""
    gen = torch.Generator().manual_seed(17)
    n = 130
    xs = [torch.randn(n, 3, 10000, generator=gen, dtype=dtype)[:, :, ::2] + 1,    # 1.1e9 flops
          torch.randn(n, 7, generator=gen, dtype=dtype),
          torch.randn(n, 300, generator=gen, dtype=dtype).T.contiguous().T,
          torch.randn(n, 1, generator=gen, dtype=dtype)]
    with threads(2):
        r = rows_of(native, xs, dtype)
    tol = 1e-12 if dtype == torch.float64 else 5e-5
    for i, ref in enumerate(ref_rows(xs, True)):
        assert rel(unpack(r.g[i], n, True), ref) < tol, i


@pytest.mark.parametrize("backend", BACKENDS)
def test_scale_keeps_the_pair_stage_finite_for_large_n_d(backend):
    """max|X_c| = 2^15 is fine for one Gram entry but n²·d²·max⁴ would overflow float32
    in the pair stage at this n·d: the scale rule also bounds max²·n·d (2^50)."""
    gen = torch.Generator().manual_seed(5)
    x = (torch.rand(64, 65536, generator=gen) * 2 - 1) * 2.0 ** 15
    r = rows_of(get(backend), [x], torch.float32)
    assert float(r.scale[0]) < 1.0
    assert float(r.scale[0]) ** 2 * float(x.abs().max()) ** 2 * x.numel() <= 2.0 ** 50
    assert torch.isfinite(get(backend).pair(r.g, r.g)).all()


def test_rbf_with_tiny_sigma_and_huge_constant_values():
    """σ and x scaled by 2^-100 (public gram's RBF scaling): 2σ² underflows float32, which
    must not turn exp(0) into NaN: a constant x gives the all-ones kernel."""
    x = torch.full((4, 2), 8.36e29)
    k = native.kernel_matrix(x, kernel="rbf", sigma=0.5 * 2.0 ** -100, threshold=1.0,
                             ct=torch.float32)
    assert torch.equal(k, torch.ones(4, 4))
    y = torch.tensor([[0.0], [1.0], [3.0], [4.0]]) * 2.0 ** -100
    k = native.kernel_matrix(y, kernel="rbf", sigma=2.0 ** -100, threshold=1.0, ct=torch.float32)
    want = np.exp(-np.subtract.outer([0, 1, 3, 4], [0, 1, 3, 4]) ** 2 / 2.0)
    assert rel(k, want) < 1e-6


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("bad", [float("inf"), float("-inf")])
def test_all_inf_column_is_not_a_constant_layer(backend, bad):
    """A column entirely ±inf (e.g. float16 activations that overflowed) must surface as
    non-finite (sq_c not finite -> the caller's clear error), not as a 'constant' layer."""
    x = torch.randn(9, 3, dtype=torch.float64)
    x[:, 1] = bad
    with pytest.raises(ValueError, match="non-finite"):
        rows_of(get(backend), [torch.full((9, 2), bad, dtype=torch.float64)], torch.float64)
    with pytest.raises(ValueError, match="non-finite"):
        rows_of(get(backend), [x], torch.float64)


# ------------------------------------------------- packed SYRK (csrc/simd_cpu.cpp) edges
# Panels hold 16 float / 8 double rows and chunks 256 columns: n and d on each side of those,
# and threads that give each split (bands of tile rows for few chunks, chunks pulled in
# turn for many: 2305 columns = 10 chunks, >= 4 a thread at 2 threads, not at 3).
@pytest.mark.parametrize("n", [15, 16, 17, 33, 130])
@pytest.mark.parametrize("d", [1, 256, 257, 2305])
@pytest.mark.parametrize("nthreads", [1, 2, 3])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_packed_gram_at_panel_and_chunk_edges(n, d, nthreads, dtype):
    gen = torch.Generator().manual_seed(1000 * n + d + nthreads)
    x = torch.randn(n, d, generator=gen, dtype=dtype) * 2 + 3
    xt = torch.randn(n, 2, d + 1, generator=gen, dtype=dtype)[:, 1, 1:]  # strided rows
    with threads(nthreads):
        r = rows_of(native, [x, xt], dtype, unbiased=n >= 4)
    tol = 1e-12 if dtype == torch.float64 else 2e-5
    for i, v in enumerate((x, xt)):
        k = gram_linear(v.double().numpy())
        ref = center_unbiased(k) if n >= 4 else center_biased(k)
        assert rel(unpack(r.g[i] * float(r.scale[i]), n, n >= 4), ref) < tol, i


def _rows_in_thread(x, out, i):
    out[i] = rows_of(native, [x], torch.float32).g[0].clone()


def test_concurrent_python_threads_each_get_the_right_rows():
    """Python threads inside the native kernels at once (each on an OpenMP team of its own,
    or, without one, on our pool or alone when it is busy): every row against float64."""
    gen = torch.Generator().manual_seed(3)
    xs = [torch.randn(65 + 16 * i, 300 + 500 * i, generator=gen) + i for i in range(4)]
    out = [None] * len(xs)
    with threads(2):
        ts = [threading.Thread(target=_rows_in_thread, args=(x, out, i)) for i, x in enumerate(xs)]
        for t in ts:
            t.start()
        for t in ts:
            t.join()
    for x, g in zip(xs, out):
        ref = center_unbiased(gram_linear(x.double().numpy()))
        assert rel(unpack(g, x.shape[0], True), ref) < 2e-5


@pytest.mark.parametrize("la,lb", [(1, 1), (5, 13), (15, 17), (16, 16), (40, 3), (64, 65)])
@pytest.mark.parametrize("m", [1, 255, 257, 70001])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_pair_at_panel_and_chunk_edges(la, lb, m, dtype):
    """pair(A, B) and pair(A, A) against float64 products, within the rounding bound of a
    length-m dot product, |err| <= γ_m Σ|a||b| (γ_m = m·u / (1 − m·u))."""
    gen = torch.Generator().manual_seed(la * lb + m)
    a = torch.randn(la, m, generator=gen, dtype=dtype)
    b = torch.randn(lb, m, generator=gen, dtype=dtype)
    u = 2.0 ** -24 if dtype == torch.float32 else 2.0 ** -53
    gamma = m * u / (1 - m * u)
    an, bn = a.double().numpy(), b.double().numpy()
    for got, p, q in ((native.pair(a, b), an, bn), (native.pair(a, a), an, an)):
        err = np.abs(got.numpy() - p @ q.T)
        assert (err <= gamma * (np.abs(p) @ np.abs(q).T) + 1e-300).all()


def test_openblas_fallback_is_reported_and_correct():
    """FLASHCKA_SIMD=0 (or a CPU without AVX-512) runs the OpenBLAS path; CI runs the native
    test files once more that way (.ci/run). Here: the switch is seen, and the rows agree
    with the float64 reference."""
    code = ("import torch, flashcka, numpy as np; from flashcka.backends.native import _load;"
            "from flashcka.backends import get; be = get('native'); print(_load().simd);"
            "x = torch.randn(37, 700, dtype=torch.float64) + 2;"
            "out = torch.empty(be.row_length(37, True), dtype=torch.float64);"
            "be.centered_gram_rows([x], out.view(1, -1), kernel='linear', sigma=None, "
            "threshold=1.0, unbiased=True); torch.save((x, out), __import__('sys').argv[1])")
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "rows.pt")
        env = dict(os.environ, FLASHCKA_SIMD="0")
        r = subprocess.run([sys.executable, "-c", code, path], env=env, capture_output=True,
                           text=True, timeout=120)
        assert r.returncode == 0, r.stderr
        assert r.stdout.strip() == "OpenBLAS SYRK"
        x, out = torch.load(path)
    ref = center_unbiased(gram_linear(x.numpy()))
    assert rel(unpack(out, 37, True), ref) < 1e-12
