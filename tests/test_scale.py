"""Scale and offset invariance against the float64 reference (issue 9, items 3 and 5).

CKA is invariant to scaling and to translation of either representation, so a float32
input scaled by anything from 1e-30 to 1e30 must give the reference's CKA of the unscaled
data (and HSIC scaled by s⁴), on every route and backend: the pair stage must neither
overflow (a 1e9 scale gave CKA = 0) nor underflow (1e-12 gave NaN "zero variance").
A float64 input with a 1e8 offset must stay at float64 accuracy on both routes.
"""
import warnings

import math

import numpy as np
import pytest
import torch

import flashcka
import reference as ref
from conftest import triton_runs
from flashcka.core import engine as _engine

SCALES = [1e-30, 1e-20, 1e-12, 1e-6, 1e9, 1e15, 1e20, 1e30]


def _backends():
    return ["torch", "auto"] + (["triton"] if triton_runs() else [])


def _pair(rng, n=14, dx=6, dy=5):
    x = rng.standard_normal((n, dx)) + rng.uniform(1, 3, dx)
    y = 0.5 * rng.standard_normal((n, dy))
    y[:, :2] += x[:, :2]
    return x, y


def _f32(a, s):
    """a·s rounded to float32, and the float64 data it holds, back at scale 1."""
    t = torch.tensor(a * s, dtype=torch.float32)
    return t, t.double().numpy() / s


def _quiet(fn):
    with warnings.catch_warnings():
        warnings.simplefilter("error", flashcka.FlashCKAWarning)   # no "zero variance"
        return fn()


@pytest.mark.parametrize("scale", SCALES)
@pytest.mark.parametrize("backend", _backends())
@pytest.mark.parametrize("route", ["gram", "feature"])
@pytest.mark.parametrize("unbiased", [True, False])
def test_float32_cka_is_scale_invariant(rng, scale, backend, route, unbiased):
    if route == "feature" and backend == "triton":
        pytest.skip("route='feature' is refused for a forced kernel backend (test_cka.py)")
    x, y = _pair(rng)
    tx, x64 = _f32(x, scale)
    ty, y64 = _f32(y, scale)
    got = _quiet(lambda: flashcka.cka_matrix([tx, tx[:, :3]], [ty], unbiased=unbiased,
                                             route=route, backend=backend))
    want = [[ref.cka(x64, y64, unbiased=unbiased)],
            [ref.cka(x64[:, :3], y64, unbiased=unbiased)]]
    np.testing.assert_allclose(got.numpy(), want, rtol=0, atol=2e-5)


@pytest.mark.parametrize("scale", [1e-30, 1e-12, 1e15, 1e30])
@pytest.mark.parametrize("route", ["gram", "feature"])
def test_float32_hsic_scales_as_fourth_power(rng, scale, route):
    """HSIC(s·x, s·y) = s⁴·HSIC(x, y): the float64 result holds every such value."""
    x, y = _pair(rng)
    tx, x64 = _f32(x, scale)
    ty, y64 = _f32(y, scale)
    for unbiased in (True, False):
        got = flashcka.cka_matrix([tx], [ty], unbiased=unbiased, route=route)  # finite
        h = flashcka.hsic(tx, ty, unbiased=unbiased).item() / scale ** 4
        want = ref.hsic(x64, y64, unbiased=unbiased)
        assert torch.isfinite(got).all()
        np.testing.assert_allclose(h, want, rtol=1e-4, atol=0)


@pytest.mark.parametrize("kernel", ["linear", "rbf"])
@pytest.mark.parametrize("scale", [1e-30, 1e-12, 1e9, 1e30])
def test_float32_minibatch_is_scale_invariant(rng, kernel, scale):
    """MinibatchCKA goes through the same pair stage (hsic_from_rows)."""
    bx, by = [], []
    acc = flashcka.MinibatchCKA(2, 1, kernel=kernel)
    for n in (13, 9):
        x, y = _pair(rng, n)
        tx, x64 = _f32(x, scale)
        ty, y64 = _f32(y, scale)
        acc.update([tx, tx[:, :2]], [ty])
        bx.append([x64, x64[:, :2]])
        by.append([y64])
    got = _quiet(acc.compute)
    want = ref.minibatch_cka(bx, by, kernel=kernel)
    np.testing.assert_allclose(got.numpy(), want, rtol=0, atol=2e-5)


@pytest.mark.parametrize("scale", [1e-30, 1e30])
def test_float64_extreme_scales(rng, scale):
    """float64 at 1e±30: HSIC ~ 1e±120, still float64 numbers; CKA to 1e-12."""
    x, y = _pair(rng)
    for route in ("gram", "feature"):
        got = flashcka.cka_matrix([torch.tensor(x * scale)], [torch.tensor(y / scale)],
                                  route=route).item()
        np.testing.assert_allclose(got, ref.cka(x, y), rtol=0, atol=1e-12)


def _cka_rounding_bound(x, y, unbiased, u=2.0 ** -53, c=16):
    """The error model of docs/design.md §7 for the linear CKA of x and y computed in a
    dtype of unit roundoff u: |ΔHSIC|·norm <= c·u·(g_K S_K ‖Û_L‖ + g_L S_L ‖Û_K‖
    + n ‖Û_K‖ ‖Û_L‖ + n S_K S_L), g = √d + √n, S = ‖X_c‖² grown by the rounding residue of
    the column mean (a shift of every row by up to g·u·‖x‖), and CKA's error that over
    ‖Û_K‖ ‖Û_L‖ plus |CKA| times the self terms' relative errors."""
    n = x.shape[0]
    norm = n * (n - 3) if unbiased else (n - 1) ** 2
    center = ref.center_unbiased if unbiased else ref.center_biased

    def side(a):
        ac = a - a.mean(0)
        g = math.sqrt(a.shape[1]) + math.sqrt(n)
        s = (math.sqrt((ac ** 2).sum()) + g * u * math.sqrt((a ** 2).sum())) ** 2
        return np.linalg.norm(center(ac @ ac.T)), s, g

    uk, sk, gk = side(x)
    ul, sl, gl = side(y)
    e_num = c * u * (gk * sk * ul + gl * sl * uk + n * uk * ul + n * sk * sl) / norm
    e_k = c * u * (2 * gk * sk * uk + n * uk ** 2 + n * sk ** 2) / norm
    e_l = c * u * (2 * gl * sl * ul + n * ul ** 2 + n * sl ** 2) / norm
    dk, dl = uk ** 2 / norm, ul ** 2 / norm
    cka = abs(ref.cka(x - x.mean(0), y, unbiased=unbiased))
    return e_num / math.sqrt(dk * dl) + cka * (e_k / dk + e_l / dl)


@pytest.mark.parametrize("offset", [1e4, 1e8])
@pytest.mark.parametrize("route", ["gram", "feature"])
@pytest.mark.parametrize("unbiased", [True, False])
def test_float64_offset_keeps_float64_accuracy(rng, offset, route, unbiased):
    """x + 1e8 in float64: the column mean carries a rounding residue of ~1e-8; every
    estimator must be invariant to it (the feature route's debiasing terms were not:
    2.6e-9 off). Reference: the same float64 data minus the offset (exact). Tolerance: the
    rounding bound of §7 for these inputs (about 1e-12 here; a fixed 1e-13 sat at the
    edge of it and failed at seed 977173796 by 1.24e-13)."""
    x, y = _pair(rng, n=50, dx=7, dy=4)
    xo = x + offset
    x0 = xo - offset                      # exactly the data xo holds, without offset
    got = flashcka.cka_matrix([torch.tensor(xo)], [torch.tensor(y)], route=route,
                              unbiased=unbiased).item()
    tol = _cka_rounding_bound(xo, y, unbiased)
    assert tol < 1e-11                    # a bug of the kind above (2.6e-9) stays visible
    np.testing.assert_allclose(got, ref.cka(x0, y, unbiased=unbiased), rtol=0, atol=tol)
    h = flashcka.hsic(torch.tensor(xo), torch.tensor(y + offset), unbiased=unbiased).item()
    np.testing.assert_allclose(h, ref.hsic(x0, (y + offset) - offset, unbiased=unbiased),
                               rtol=1e-11, atol=0)


@pytest.mark.parametrize("magnitude", [1e-30, 1e-8, 1e20, 1e30])
@pytest.mark.parametrize("same", [True, False])
def test_pair_stage_normalises_rows(rng, magnitude, same):
    """Rows of any float32 magnitude (here built by hand, scale = 1): the pair stage
    normalises them by powers of two first, so HSICs are the float64 products, not
    inf/0 (1e20 rows overflowed, 1e-30 rows underflowed to 0)."""
    be = flashcka.backends.get("torch")
    m = 40
    ga = torch.tensor(rng.standard_normal((3, m)) * magnitude, dtype=torch.float32)
    gb = torch.tensor(rng.standard_normal((2, m)), dtype=torch.float32)
    one = torch.ones(3, dtype=torch.float64)
    ra = _engine.Rows(ga, one, one)
    rb = ra if same else _engine.Rows(gb, one[:2], one[:2])
    h = _engine.hsic_from_rows(be, ra, rb, same, 8, True)   # per-layer units 2^e
    cross = _engine.ldexp(h.cross, h.ea[:, None] + h.eb[None, :])
    sa = _engine.ldexp(h.self_a, 2 * h.ea)
    a64 = ga.double()
    b64 = a64 if same else gb.double()
    # float32 products: |err| <= γ_m Σ|a||b| (γ_m = m·u / (1 − m·u)) on top of rtol; an
    # atol of 1e-6·magnitude missed that the products scale as magnitude², so a cancelling
    # entry (1.6e57 beside 1e60 diagonals, seed 216593768) failed at 2.7% of this bound
    u = 2.0 ** -24
    bound = m * u / (1 - m * u) * (a64.abs() @ b64.abs().T).numpy() / 40
    want = (a64 @ b64.T).numpy() / 40
    assert (np.abs(cross.numpy() - want) <= 1e-5 * np.abs(want) + bound).all()
    np.testing.assert_allclose(sa.numpy(), (a64 * a64).sum(1).numpy() / 40, rtol=1e-6, atol=0)


def test_pair_stage_non_finite_raises_naming_the_layers():
    """A non-finite pair product raises, naming the layers (never CKA = 0 or NaN)."""
    be = flashcka.backends.get("torch")
    g = torch.ones(2, 16, dtype=torch.float32)
    g[1, 3] = float("nan")
    one = torch.ones(2, dtype=torch.float64)
    rows = _engine.Rows(g, one, one)
    with pytest.raises(ValueError, match=r"HSIC of a and b is not finite"):
        _engine.hsic_from_rows(be, rows, rows, True, 8, True, ["a", "b"], ["a", "b"])


@pytest.mark.parametrize("kernel", ["linear", "rbf"])
@pytest.mark.parametrize("route", ["gram", "feature"])
def test_infinite_column_is_reported(kernel, route):
    """A column of ±inf (e.g. fp16 activations that overflowed) is non-finite input, not
    a "zero variance" layer and not a pair-stage overflow."""
    if kernel == "rbf" and route == "feature":
        pytest.skip("the feature route is linear")
    x = torch.randn(8, 3)
    x[:, 1] = float("-inf")
    for bad in (x, torch.full((8,), float("-inf")), torch.full((8, 2), float("inf"))):
        for backend in ("auto", "torch"):
            with pytest.raises(ValueError, match=r"xs\[1\] holds non-finite values"):
                flashcka.cka_matrix([torch.randn(8, 2), bad], kernel=kernel, route=route,
                                    backend=backend)


def test_minibatch_float32_offset_is_not_zero_variance(rng):
    """H3's case through MinibatchCKA: float32 data at 1e8 ± 100 is valid data."""
    acc = flashcka.MinibatchCKA(1, 1)
    bx, by = [], []
    for n in (64, 40):
        x = torch.tensor(rng.standard_normal((n, 3)), dtype=torch.float32)
        y = torch.tensor(1e8 + 100 * rng.standard_normal((n, 3)), dtype=torch.float32)
        y[:, 0] += 100 * x[:, 0]
        acc.update([x], [y])
        bx.append([x.double().numpy()])
        by.append([y.double().numpy() - 1e8])
    got = _quiet(acc.compute)
    np.testing.assert_allclose(got.numpy(), ref.minibatch_cka(bx, by), rtol=0, atol=2e-5)


@pytest.mark.parametrize("route", ["gram", "feature"])
@pytest.mark.parametrize("offset", [1e4, 1e8, 1e30])
def test_float32_offset_with_spread_is_not_zero_variance(rng, route, offset):
    """float32 data at a large offset with a spread of some ulps is valid data (x − μ is
    exact): CKA is the reference's, not NaN "zero variance" (H3's fuzz case: 1e8 ± 100)."""
    n = 64
    x = torch.tensor(rng.standard_normal((n, 3)), dtype=torch.float32)
    y = torch.tensor(offset + offset * 1e-6 * rng.standard_normal((n, 3)), dtype=torch.float32)
    y[:, 0] += x[:, 0] * offset * 1e-6
    assert len(torch.unique(y[:, 0])) > 10
    got = _quiet(lambda: flashcka.cka_matrix([x], [y], route=route))
    y0 = y.double().numpy() - offset          # exact data, offset removed in float64
    np.testing.assert_allclose(got.item(), ref.cka(x.double().numpy(), y0), rtol=0, atol=1e-5)


@pytest.mark.parametrize("route", ["gram", "feature"])
@pytest.mark.parametrize("value", [0.0, 123.456, 1e8, 1e-30])
def test_constant_rows_are_zero_variance(route, value):
    """All rows equal (at any magnitude): CKA undefined -> NaN with one warning."""
    g = torch.Generator().manual_seed(0)
    xs = {"ok": torch.randn(12, 3, generator=g), "const": torch.full((12, 4), value)}
    with pytest.warns(flashcka.FlashCKAWarning, match="const"):
        m = flashcka.cka_matrix(xs, route=route)
    assert torch.isnan(m[1]).all() and torch.isnan(m[:, 1]).all()
    assert abs(m[0, 0].item() - 1.0) < 1e-6


@pytest.mark.parametrize("route", ["gram", "feature"])
@pytest.mark.parametrize("c", [123.456, 0.1, 1e8 + 8])
def test_float32_one_varying_column_among_constants(rng, route, c):
    """Thousands of constant columns at an awkward value (whose float32 mean is off by an
    ulp) and one varying column: a valid representation, CKA as the reference's."""
    n, d = 37, 3000
    y = torch.full((n, d), c, dtype=torch.float32)
    y[:, 0] += torch.tensor(rng.standard_normal(n) * 1e-3 * c, dtype=torch.float32)
    x = torch.tensor(rng.standard_normal((n, 3)), dtype=torch.float32)
    x[:, 0] += (y[:, 0].double() - c).float() / (1e-3 * c)
    got = _quiet(lambda: flashcka.cka_matrix([x], [y], route=route)).item()
    want = ref.cka(x.double().numpy(), y.double().numpy() - np.float32(c).item())
    np.testing.assert_allclose(got, want, rtol=0, atol=2e-5)


@pytest.mark.parametrize("backend", _backends() + ["native"])
@pytest.mark.parametrize("kernel", ["linear", "rbf"])
def test_offset_float64_beside_float32_computed_in_float32(rng, backend, kernel):
    """dtype=torch.float32 on float64 data at a 1e8 offset with unit spread: centering
    happens in float64 and only the centered values are rounded, so the spread (below
    float32's resolution of 1e8, which is 8) survives (it gave "sigma = 0" / NaN)."""
    x = torch.tensor(rng.standard_normal((9, 3)), dtype=torch.float32)
    y0 = rng.standard_normal((9, 2))
    y0[:, 0] += x[:, 0].double().numpy()
    y = torch.tensor(1e8 + y0)
    want = ref.cka(x.double().numpy(), y.numpy() - 1e8, kernel)
    got = _quiet(lambda: flashcka.cka_matrix([x], [y], kernel=kernel, dtype=torch.float32,
                                             backend=backend, route="gram")).item()
    np.testing.assert_allclose(got, want, rtol=0, atol=2e-5)


@pytest.mark.parametrize("backend", ["torch", "native"])
@pytest.mark.parametrize("kernel", ["linear", "rbf"])
def test_float64_input_computed_in_float32_is_centered_first(rng, backend, kernel):
    """A float64 input at a 1e8 offset with unit spread, computed with dtype=float32: the
    spread is below float32's resolution at 1e8, so it must be centered in float64 before
    rounding (the native backend rounded first and called the layer zero-variance)."""
    x, y = _pair(rng, n=40)
    xo = torch.tensor(x + 1e8)
    got = flashcka.cka_matrix([xo], [torch.tensor(y)], kernel=kernel, dtype=torch.float32,
                              backend=backend, route="gram")
    want = ref.cka(x, y, kernel)
    assert abs(float(got[0, 0]) - want) < 1e-5


@pytest.mark.parametrize("backend", ["torch", "native"])
@pytest.mark.parametrize("kernel", ["linear", "rbf"])
def test_float64_far_offset_computed_in_float32(rng, backend, kernel):
    """float64 data at 1e30 with a spread of 1e20 (below float32's resolution of the
    offset), computed in float32: it is centred in float64 before anything is rounded, so
    the rounding residue of μ in float32 (~1.5e22, its square overflowing float32) neither
    overflows nor swamps the spread; CKA is the reference's (it was NaN, then 1.2% off, on
    the torch backend). Both inputs at the scale 1e20, σ = 2·1e20: the reference's kernel
    of the unscaled data with σ = 2."""
    if backend == "native" and not flashcka.backends.get("native").usable()[0]:
        pytest.fail("native backend not built")
    n = 24
    x = rng.standard_normal((n, 3))
    spread = rng.standard_normal((n, 3))
    spread[:, 0] += x[:, 0]
    xt = torch.tensor(1e20 * x, dtype=torch.float64)
    yt = torch.tensor(1e30 + 1e20 * spread, dtype=torch.float64)
    sigma = None if kernel == "linear" else 2e20
    got = _quiet(lambda: flashcka.cka(xt, yt, kernel=kernel, sigma=sigma, dtype=torch.float32,
                                      backend=backend))
    want = ref.cka(x, spread, kernel, sigma=None if kernel == "linear" else 2.0)
    np.testing.assert_allclose(float(got), want, rtol=0, atol=2e-5)


@pytest.mark.parametrize("backend", ["torch", "native"])
def test_float64_constant_far_from_zero_computed_in_float32(backend):
    """A constant float64 layer at 1e30 computed in float32 (RBF): zero variance, NaN with
    a warning naming it; not an 'overflow' error from the mean's rounding residue."""
    x = torch.randn(6, 2, generator=torch.Generator().manual_seed(0))
    y = torch.full((6, 3), 1e30, dtype=torch.float64)
    with pytest.warns(flashcka.FlashCKAWarning, match="y"):
        got = flashcka.cka(x, y, kernel="rbf", sigma=0.5, dtype=torch.float32, backend=backend)
    assert torch.isnan(got)


def test_large_layer_in_range_keeps_its_batched_row(monkeypatch):
    """A float32 layer whose ‖X_c‖² alone cannot rule out a power-of-two scale (std 2000:
    ‖X_c‖² above n·d·hi²'s bound) but whose max |x − μ| is in range: the exact rule says
    scale 1, so its batched row stands (no second Gram by ``gram_row``) and CKA matches
    the float64 reference."""
    g = torch.Generator().manual_seed(7)
    z = torch.randn(12, 3, generator=g, dtype=torch.float64)
    xs = [(z @ torch.randn(3, 100, generator=g, dtype=torch.float64)
           + torch.randn(12, 100, generator=g, dtype=torch.float64)) * 2000 + 5,
          torch.randn(12, 7, generator=g, dtype=torch.float64)]
    x32 = [x.float() for x in xs]
    sq = float((x32[0].double() - x32[0].double().mean(0)).square().sum())
    assert _engine._may_need_scale(sq, torch.float32, x32[0].numel())   # the case at hand
    calls = []
    real = _engine.gram_row
    monkeypatch.setattr(_engine, "gram_row", lambda *a, **k: calls.append(a[3]) or real(*a, **k))
    acc = flashcka.MinibatchCKA(2, 2, backend="torch")
    acc.update(x32, x32)
    assert calls == []
    want = ref.minibatch_cka([[x.double().numpy() for x in x32]], [[x.double().numpy() for x in x32]])
    assert np.abs(acc.compute().numpy() - want).max() <= 1e-5
