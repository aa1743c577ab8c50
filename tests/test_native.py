"""The native CPU backend (flashcka._C) against an independent numpy float64 reference
and the torch backend: packed centered Gram rows, pair stage, kernel_matrix, center."""
import math

import numpy as np
import pytest
import torch

import flashcka
import reference
from flashcka.backends import ZeroBandwidthError, get

native = get("native")
_ok, _why = native.usable()
# Not a module-level skip: without _C every test here is reported as skipped with the reason,
# and under FLASHCKA_REQUIRE_NATIVE=1 (CI) the session fails before any test runs (conftest).
pytestmark = [pytest.mark.native,
              pytest.mark.skipif(not _ok, reason=f"native backend not usable: {_why}")]
torch_be = get("torch")


# ---------------------------------------------------------------- float64 reference
def ref_kernel(x, kernel, sigma, threshold=1.0):
    """Uncentered kernel (n, n) of the centered features, numpy float64."""
    xf = np.asarray(x.detach().to(torch.float64).reshape(x.shape[0], -1))
    xc = xf - xf.mean(0)
    k = xc @ xc.T
    if kernel == "linear":
        return k
    sq = (xc * xc).sum(1)
    d = np.maximum(sq[:, None] + sq[None, :] - 2 * k, 0)
    np.fill_diagonal(d, 0)
    s2 = sigma ** 2 if sigma is not None else threshold ** 2 * np.median(d)
    return np.exp(-d / (2 * s2))


def ref_center(k, unbiased):
    """Explicit H K H, or the U-centering formula written out element by element."""
    n = k.shape[0]
    if not unbiased:
        h = np.eye(n) - np.ones((n, n)) / n
        return h @ k @ h
    kt = k.copy()
    np.fill_diagonal(kt, 0)
    r = kt.sum(1)
    u = kt - r[:, None] / (n - 2) - r[None, :] / (n - 2) + r.sum() / ((n - 1) * (n - 2))
    np.fill_diagonal(u, 0)
    return u


def unpack(row, n, unbiased):
    """Packed row -> full symmetric (n, n) numpy matrix."""
    row = np.asarray(row.to(torch.float64))
    c = np.zeros((n, n))
    iu = np.triu_indices(n, 1)
    m = n * (n - 1) // 2
    c[iu] = row[:m] / math.sqrt(2)
    c = c + c.T
    if not unbiased:
        c[np.diag_indices(n)] = row[m:]
    return c


def native_row(x, unbiased, kernel="linear", sigma=None, ct=torch.float64):
    mu = x.mean(0, dtype=ct)
    out = torch.full((native.row_length(x.shape[0], unbiased),), float("nan"), dtype=ct)
    sq = native.centered_gram_row(x, mu, out, kernel=kernel, sigma=sigma, threshold=1.0,
                                  unbiased=unbiased)
    return out, sq


def torch_row(x, unbiased, kernel="linear", sigma=None, ct=torch.float64):
    mu = x.mean(0, dtype=ct)
    out = torch.empty(x.shape[0] ** 2, dtype=ct)
    torch_be.centered_gram_row(x, mu, out, kernel=kernel, sigma=sigma, threshold=1.0,
                               unbiased=unbiased)
    return out


def ref_cka(x, y, kernel, unbiased):
    """tests/reference.py's CKA on float64 features centered first (exact invariance)."""
    return reference.cka(x - x.mean(0), y - y.mean(0), kernel, unbiased)


def rel(a, b):
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    return float(np.abs(a - b).max() / max(np.abs(b).max(), 1e-300))


# ---------------------------------------------------------------- inputs
def make(shape, layout, gen):
    """Fresh random input of `shape` (n, ...) in an awkward memory layout."""
    if layout == "contiguous":
        return torch.randn(*shape, generator=gen, dtype=torch.float64)
    if layout == "every_other_column":
        n, d = shape[0], math.prod(shape[1:])
        return torch.randn(n, 2 * d, generator=gen, dtype=torch.float64)[:, ::2]
    if layout == "transposed":
        n, d = shape[0], math.prod(shape[1:])
        return torch.randn(d + 1, n + 2, generator=gen, dtype=torch.float64).T[1:n + 1, :d]
    if layout == "tokens":  # (n, T, C) slice of a bigger token tensor: no merge possible
        n, d = shape[0], math.prod(shape[1:])
        return torch.randn(n, 3, d + 1, generator=gen, dtype=torch.float64)[:, :2, 1:]
    raise ValueError(layout)


SIZES = [(4, 3), (5, 1), (97, 1000), (97, 3), (1025, 3)]
LAYOUTS = ["contiguous", "every_other_column", "transposed", "tokens"]


@pytest.mark.parametrize("n,d", SIZES)
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("unbiased", [True, False])
def test_linear_row_float64(n, d, layout, unbiased):
    gen = torch.Generator().manual_seed(n * 1000 + d)
    x = make((n, d), layout, gen)
    row, sq = native_row(x, unbiased)
    assert not torch.isnan(row).any(), "unwritten elements of the packed row"
    k = ref_kernel(x, "linear", None)
    assert abs(float(sq) - np.trace(k)) <= 1e-12 * np.trace(k)
    assert rel(unpack(row, n, unbiased), ref_center(k, unbiased)) < 1e-12


@pytest.mark.parametrize("n", [4, 5, 97, 1025])
@pytest.mark.parametrize("unbiased", [True, False])
@pytest.mark.parametrize("sigma", [None, 1.7])
def test_rbf_row_float64(n, unbiased, sigma):
    gen = torch.Generator().manual_seed(n + 7)
    x = make((n, 3), "every_other_column", gen)
    row, _ = native_row(x, unbiased, "rbf", sigma)
    assert not torch.isnan(row).any()
    assert rel(unpack(row, n, unbiased), ref_center(ref_kernel(x, "rbf", sigma), unbiased)) < 1e-11


@pytest.mark.parametrize("unbiased", [True, False])
def test_dot_of_rows_is_frobenius(unbiased):
    gen = torch.Generator().manual_seed(3)
    xs = [make((97, d), "contiguous", gen) for d in (1, 3, 50)]
    rows = torch.stack([native_row(x, unbiased)[0] for x in xs])
    cs = [ref_center(ref_kernel(x, "linear", None), unbiased) for x in xs]
    ref = np.array([[(a * b).sum() for b in cs] for a in cs])
    assert rel(native.pair(rows, rows), ref) < 1e-12          # same rows: SYRK path
    assert rel(native.pair(rows, rows[1:].clone()), ref[:, 1:]) < 1e-12  # GEMM path
    tr = torch.stack([torch_row(x, unbiased) for x in xs])
    assert rel(native.pair(rows, rows), torch_be.pair(tr, tr)) < 1e-12


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("unbiased", [True, False])
@pytest.mark.parametrize("kernel", ["linear", "rbf"])
def test_float32_within_torch_error(threads, unbiased, kernel):
    old = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        gen = torch.Generator().manual_seed(11)
        n, d = 257, 4100  # n²d ≥ 2²⁸: with 2 threads the Gram is split over workers
        x64 = make((n, d), "every_other_column", gen) + 3.0  # an offset: tests centering
        x32 = x64.float()
        ref = ref_center(ref_kernel(x32, kernel, None), unbiased)
        r32, sq = native_row(x32, unbiased, kernel, ct=torch.float32)
        assert not torch.isnan(r32).any()
        t32 = torch_row(x32, unbiased, kernel, ct=torch.float32).reshape(n, n)
        err_native = rel(unpack(r32, n, unbiased), ref)
        err_torch = rel(t32.numpy(), ref)
        assert err_native <= 4 * err_torch + 1e-6, (err_native, err_torch)
        # pair stage in float32 (split over threads) against float64 products
        xs = [x32, x32[:, :7] * 2 - 1, x32.square()]
        rows = torch.stack([native_row(x, unbiased, kernel, ct=torch.float32)[0] for x in xs])
        cs = [ref_center(ref_kernel(x, kernel, None), unbiased) for x in xs]
        ref_p = np.array([[(a * b).sum() for b in cs] for a in cs])
        trow = torch.stack([torch_row(x, unbiased, kernel, ct=torch.float32) for x in xs])
        err_tp = rel(torch_be.pair(trow, trow), ref_p)
        assert rel(native.pair(rows, rows), ref_p) <= 4 * err_tp + 1e-6
        assert rel(native.pair(rows, rows[:2].clone()), ref_p[:, :2]) <= 4 * err_tp + 1e-6
    finally:
        torch.set_num_threads(old)


def test_large_gram_threads_split():
    """Large enough that the feature dimension is split over worker threads."""
    old = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        gen = torch.Generator().manual_seed(5)
        x = make((130, 16000), "tokens", gen)  # n²d ≥ 2²⁸, the single-thread cutoff
        row, sq = native_row(x, True)
        assert rel(unpack(row, 130, True), ref_center(ref_kernel(x, "linear", None), True)) < 1e-12
    finally:
        torch.set_num_threads(old)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_inputs_upcast(dtype):
    gen = torch.Generator().manual_seed(2)
    x = torch.randn(33, 40, generator=gen).to(dtype)
    row, _ = native_row(x, True, ct=torch.float32)
    ref = ref_center(ref_kernel(x.float(), "linear", None), True)
    assert rel(unpack(row, 33, True), ref) < 1e-5


def test_float32_input_float64_compute():
    gen = torch.Generator().manual_seed(4)
    x = torch.randn(40, 17, generator=gen)
    row, _ = native_row(x, False, ct=torch.float64)
    assert rel(unpack(row, 40, False), ref_center(ref_kernel(x, "linear", None), False)) < 1e-12


# ---------------------------------------------------------------- kernel_matrix, center
@pytest.mark.parametrize("kernel,sigma", [("linear", None), ("rbf", None), ("rbf", 0.9)])
@pytest.mark.parametrize("ct", [torch.float32, torch.float64])
def test_kernel_matrix(kernel, sigma, ct):
    gen = torch.Generator().manual_seed(8)
    x = make((97, 3, 2), "contiguous", gen)
    k = native.kernel_matrix(x, kernel=kernel, sigma=sigma, threshold=1.0, ct=ct)
    t = torch_be.kernel_matrix(x, kernel=kernel, sigma=sigma, threshold=1.0, ct=ct)
    assert torch.equal(k, k.T)
    tol = 1e-12 if ct == torch.float64 else 1e-5
    assert rel(k, t) < tol
    if kernel == "linear":  # the public gram is uncentered X Xᵀ
        xf = x.reshape(97, -1).numpy()
        assert rel(k, xf @ xf.T) < tol


@pytest.mark.parametrize("n", [4, 5, 97])
@pytest.mark.parametrize("unbiased", [True, False])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_center(n, unbiased, dtype):
    gen = torch.Generator().manual_seed(n)
    k = torch.randn(n, n, generator=gen, dtype=torch.float64)
    k = (k + k.T).to(dtype)
    got = native.center(k.T[:, :], unbiased=unbiased)  # non-contiguous view
    tol = 1e-12 if dtype == torch.float64 else 1e-5
    assert rel(got, ref_center(k.double().numpy(), unbiased)) < tol
    assert rel(got, torch_be.center(k, unbiased=unbiased)) < tol
    a = torch.randn(n, n, generator=gen, dtype=torch.float64).to(dtype)  # not symmetric
    assert rel(native.center(a, unbiased=unbiased), torch_be.center(a, unbiased=unbiased)) < tol


# ---------------------------------------------------------------- errors, public API
def test_zero_bandwidth_raises():
    x = torch.zeros(10, 4, dtype=torch.float64)
    x[0] = 1.0
    with pytest.raises(ZeroBandwidthError):
        native_row(x, True, "rbf", None)
    with pytest.raises(ValueError, match="sigma = 0"):
        flashcka.cka_matrix([x, x], kernel="rbf", backend="native")


def test_bad_arguments_raise_python_errors():
    x = torch.randn(10, 4)
    mu = x.mean(0)
    with pytest.raises(ValueError, match="out"):
        native.centered_gram_row(x, mu, torch.empty(3), kernel="linear", sigma=None,
                                 threshold=1.0, unbiased=True)
    with pytest.raises(ValueError, match="mu"):
        native.centered_gram_row(x, torch.zeros(5), torch.empty(45), kernel="linear",
                                 sigma=None, threshold=1.0, unbiased=True)
    with pytest.raises(ValueError, match="gb"):
        native.pair(torch.randn(2, 5), torch.randn(2, 6))
    with pytest.raises(ValueError, match="ga"):
        native.pair(torch.randn(5), torch.randn(2, 5))
    with pytest.raises(ValueError, match="k must be"):
        native.center(torch.randn(4, 5), unbiased=True)


@pytest.mark.parametrize("kernel", ["linear", "rbf"])
@pytest.mark.parametrize("unbiased", [True, False])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_public_cka_matrix_native_equals_torch(kernel, unbiased, dtype):
    gen = torch.Generator().manual_seed(21)
    xs = [torch.randn(64, 300, generator=gen, dtype=dtype),
          torch.randn(64, 6, 50, generator=gen, dtype=dtype)[:, ::2],
          torch.randn(300, 64, generator=gen, dtype=dtype).T]
    ys = [x[:, :40] ** 2 for x in xs[:2]]
    for args in ((xs,), (xs, ys)):
        a = flashcka.cka_matrix(*args, kernel=kernel, unbiased=unbiased, backend="native",
                                route="gram")
        b = flashcka.cka_matrix(*args, kernel=kernel, unbiased=unbiased, backend="torch",
                                route="gram")
        tol = 1e-12 if dtype == torch.float64 else 1e-4
        assert torch.allclose(a, b, rtol=0, atol=tol), (a, b)
        # and both against the float64 reference, not only each other
        xr = [np.asarray(x.double().reshape(64, -1)) for x in args[0]]
        yr = xr if len(args) == 1 else [np.asarray(y.double().reshape(64, -1)) for y in args[1]]
        want = np.array([[ref_cka(p, q, kernel, unbiased) for q in yr] for p in xr])
        np.testing.assert_allclose(a.numpy(), want, rtol=0, atol=10 * tol)


def test_public_gram_center_and_minibatch():
    gen = torch.Generator().manual_seed(22)
    x = torch.randn(50, 20, generator=gen, dtype=torch.float64)
    assert rel(flashcka.gram(x, backend="native"), flashcka.gram(x, backend="torch")) < 1e-12
    k = flashcka.gram(x, backend="torch")
    assert rel(flashcka.center(k, backend="native"), flashcka.center(k, backend="torch")) < 1e-12
    ms = {b: flashcka.MinibatchCKA(3, 2, backend=b) for b in ("native", "torch")}
    seen = []
    for _ in range(2):
        xs = [torch.randn(40, 30, generator=gen, dtype=torch.float64) for _ in range(3)]
        xs[1] = xs[1] + xs[0].square()           # related layers: CKA well away from 0
        ys = [torch.randn(40, 8, generator=gen, dtype=torch.float64) for _ in range(2)]
        ys[0] = ys[0] + xs[0][:, :8]
        seen.append((xs, ys))
        for m in ms.values():
            m.update(xs, ys)
    assert torch.allclose(ms["native"].compute(), ms["torch"].compute(), rtol=0, atol=1e-12)
    want = reference.minibatch_cka([[x.numpy() for x in b[0]] for b in seen],
                                   [[y.numpy() for y in b[1]] for b in seen])
    np.testing.assert_allclose(ms["native"].compute().numpy(), want, rtol=0, atol=1e-12)


def test_auto_picks_native_on_cpu():
    from flashcka import backends
    assert backends.select("auto", torch.randn(5, 3)).name == "native"


def test_rbf_constant_representation_is_all_ones():
    x = torch.full((9, 3), 2.5, dtype=torch.float64)
    k = native.kernel_matrix(x, kernel="rbf", sigma=None, threshold=1.0, ct=torch.float64)
    assert torch.equal(k, torch.ones(9, 9, dtype=torch.float64))
    row, _ = native_row(x, True, "rbf", None)
    assert row.abs().max() < 1e-14  # Û(11ᵀ) = 0 up to rounding
