"""The native backend's fast paths against the float64 reference (tests/reference.py):
the power-of-two scale contract of ``_engine.Rows``, inputs whose rows overlap in memory,
and the threaded / batched Gram paths at awkward sizes."""
import math

import numpy as np
import pytest
import torch

import flashcka
from flashcka import _engine
from flashcka.backends import get

from reference import center_biased, center_unbiased, cka, gram_linear

pytestmark = pytest.mark.native

BACKENDS = ["native", "torch"]


def rel(a, b):
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    return float(np.abs(a - b).max() / max(np.abs(b).max(), 1e-300))


def unpack(row, n, unbiased, packed):
    """A backend row -> the full centered Gram (n, n) in float64."""
    row = np.asarray(row.to(torch.float64))
    if not packed:
        return row.reshape(n, n)
    c = np.zeros((n, n))
    iu = np.triu_indices(n, 1)
    m = n * (n - 1) // 2
    c[iu] = row[:m] / math.sqrt(2)
    c = c + c.T
    if not unbiased:
        c[np.diag_indices(n)] = row[m:]
    return c


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
    lo, hi = (2.0 ** -16, 2.0 ** 16) if ct == torch.float32 else (2.0 ** -128, 2.0 ** 128)
    for ti, ai in zip(t, amax):
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
    assert rel(unpack(r.g[0], x.shape[0], unbiased, True), ref) < 1e-12
