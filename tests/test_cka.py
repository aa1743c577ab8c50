"""cka() and cka_matrix(): properties, reference values, precision, strided inputs."""
import numpy as np
import pytest
import torch

import flashcka
import reference as ref
from conftest import realistic

ESTIMATORS = [("linear", True), ("linear", False), ("rbf", True), ("rbf", False)]


def t(a, dtype=torch.float64):
    return torch.tensor(a, dtype=dtype)


@pytest.mark.parametrize("kernel,unbiased", ESTIMATORS)
def test_cka_of_a_transform_matches_reference(rng, kernel, unbiased):
    """cka(x, f(x)) for a nonlinear f against the reference (cka(x, x) = 1 alone holds for
    any normalised estimator, right or wrong), and cka(x, x) = 1 beside it."""
    x = rng.standard_normal((37, 11)) + 4
    fx = np.tanh(x @ rng.standard_normal((11, 5))) + 0.1 * rng.standard_normal((37, 5))
    got = flashcka.cka(t(x), t(fx), kernel=kernel, unbiased=unbiased).item()
    # The reference gets the column-centered data (every estimator is exactly invariant
    # to it): its raw float64 Grams of x + 4 lose ~1e-12 to cancellation (seed 1321546766:
    # 1.07e-12 off exact rational arithmetic, where flashcka was 3e-18 off).
    want = ref.cka(x - x.mean(0), fx - fx.mean(0), kernel, unbiased)
    assert abs(got - want) <= 1e-12
    assert flashcka.cka(t(x), t(x), kernel=kernel, unbiased=unbiased).item() == \
        pytest.approx(1.0, abs=1e-12)


@pytest.mark.parametrize("kernel,unbiased", ESTIMATORS)
def test_invariances(rng, kernel, unbiased):
    n, d = 41, 9
    x = rng.standard_normal((n, d))
    y = np.sin(x @ rng.standard_normal((d, 6))) + 0.5 * rng.standard_normal((n, 6))
    base = flashcka.cka(t(x), t(y), kernel=kernel, unbiased=unbiased).item()
    q, _ = np.linalg.qr(rng.standard_normal((d, d)))
    perm = rng.permutation(n)
    variants = {
        "orthogonal": (x @ q, y),
        "isotropic scaling": (3.7 * x, y / 11.0),
        "translation": (x + rng.standard_normal(d) * 10, y - 5),
        "sample permutation": (x[perm], y[perm]),
    }
    for what, (xv, yv) in variants.items():
        got = flashcka.cka(t(xv), t(yv), kernel=kernel, unbiased=unbiased).item()
        assert got == pytest.approx(base, rel=1e-9, abs=1e-12), what


def test_biased_linear_equals_feature_space_formula(rng):
    x, y = rng.standard_normal((60, 8)) + 1, rng.standard_normal((60, 13))
    y[:, :8] += x
    got = flashcka.cka(t(x), t(y), unbiased=False).item()
    assert got == pytest.approx(ref.cka_feature_biased(x, y), rel=1e-10)


@pytest.mark.parametrize("n", [4, 5, 97])
@pytest.mark.parametrize("dx,dy", [(1, 3), (3, 1000), (1000, 1000)])
@pytest.mark.parametrize("kernel,unbiased", ESTIMATORS)
def test_cka_float64_matches_reference(rng, n, dx, dy, kernel, unbiased):
    x = rng.standard_normal((n, dx)) + 2
    y = rng.standard_normal((n, dy))
    y[:, :1] += x[:, :1] * 2
    got = flashcka.cka(t(x), t(y), kernel=kernel, unbiased=unbiased)
    assert got.dtype == torch.float64
    want, spread = _ref_cka_two_ways(x, y, kernel, unbiased)
    assert abs(got.item() - want) <= 1e-9 * abs(want) + 1e-12 + 10 * spread


def _ref_cka_two_ways(x, y, kernel, unbiased):
    """The reference CKA (Song et al.'s formula) and how far the reference's own U-centered
    form is from it: at n = 4 a self-HSIC can be a 1e-7 difference of O(1) kernel values,
    and then the float64 reference itself is only good to ~1e-9 relative."""
    want = ref.cka(x, y, kernel, unbiased)
    if not unbiased:
        return want, 0.0
    k, l = ref.gram(x, kernel), ref.gram(y, kernel)
    other = ref.hsic_ucentered(k, l) / np.sqrt(ref.hsic_ucentered(k, k)
                                               * ref.hsic_ucentered(l, l))
    return want, abs(other - want)


@pytest.mark.parametrize("route", ["auto", "gram", "feature"])
def test_cka_matrix_matches_reference_every_pair(rng, route):
    """Every entry of cka_matrix (both orders, and xs against itself) against the float64
    reference computed pair by pair — not against flashcka's own cka()."""
    xs = [t(rng.standard_normal((30, d)) + 1) for d in (1, 3, 20)]
    ys = [t(xs[0].numpy() @ rng.standard_normal((1, 5)) + rng.standard_normal((30, 5))),
          t(rng.standard_normal((30, 2, 4)))]
    m = flashcka.cka_matrix(xs, ys, route=route)
    assert m.shape == (3, 2) and m.dtype == torch.float64
    want = np.array([[ref.cka(x.numpy(), y.numpy()) for y in ys] for x in xs])
    np.testing.assert_allclose(m.numpy(), want, rtol=0, atol=1e-12)
    within = flashcka.cka_matrix(xs, route=route).numpy()
    want = np.array([[ref.cka(a.numpy(), b.numpy()) for b in xs] for a in xs])
    np.testing.assert_allclose(within, want, rtol=0, atol=1e-12)


@pytest.mark.parametrize("unbiased", [True, False])
@pytest.mark.parametrize("kernel", ["linear", "rbf"])
@pytest.mark.parametrize("backend", ["torch", "auto"])
def test_cka_matrix_dict_matches_reference(rng, kernel, unbiased, backend):
    z = rng.standard_normal((25, 4))
    xs = {f"layer{i}": t(np.tanh(z @ rng.standard_normal((4, 6 + i)))
                         + 0.3 * rng.standard_normal((25, 6 + i))) for i in range(3)}
    got = flashcka.cka_matrix(xs, kernel=kernel, unbiased=unbiased, backend=backend,
                              route="gram").numpy()
    want = np.array([[ref.cka(a.numpy(), b.numpy(), kernel, unbiased) for b in xs.values()]
                     for a in xs.values()])
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-12)


@pytest.mark.parametrize("unbiased", [True, False])
@pytest.mark.parametrize("route", ["gram", "feature"])
def test_float32_realistic_activations_within_1e4(rng, unbiased, route):
    """Non-zero means and thousands of features: float32 stays within 1e-4 of float64."""
    n = 256
    z = rng.standard_normal((n, 16))
    xs64 = [realistic(rng, n, d, z, torch.float64) for d in (3000, 2048)]
    ys64 = [realistic(rng, n, d, z, torch.float64) for d in (4096, 1000)]
    want = ref.minibatch_cka([[x.numpy() for x in xs64]], [[y.numpy() for y in ys64]],
                             unbiased=unbiased)
    got = flashcka.cka_matrix([x.float() for x in xs64], [y.float() for y in ys64],
                              unbiased=unbiased, route=route)
    assert got.dtype == torch.float64
    np.testing.assert_allclose(got.numpy(), want, atol=1e-4)
    got64 = flashcka.cka_matrix(xs64, ys64, unbiased=unbiased, route=route)
    np.testing.assert_allclose(got64.numpy(), want, rtol=1e-9)


def test_strided_inputs(rng):
    base = t(rng.standard_normal((2 * 23, 40)) + 1)
    x = base[::2, ::3]  # row and column strides
    y = base.T.contiguous().T[1::2, 5:30]  # column-major storage, then sliced
    assert not x.is_contiguous() and not y.is_contiguous()
    for kernel, unbiased in ESTIMATORS:
        got = flashcka.cka(x, y, kernel=kernel, unbiased=unbiased).item()
        assert got == pytest.approx(ref.cka(x.numpy(), y.numpy(), kernel, unbiased), rel=1e-9)


def test_debiased_cka_is_not_clamped(rng):
    # independent noise at small n: debiased CKA fluctuates around 0, negative values kept
    vals = [flashcka.cka(t(rng.standard_normal((8, 2))), t(rng.standard_normal((8, 2)))).item()
            for _ in range(30)]
    assert min(vals) < 0


# ------------------------------------------------------------------ contract (issue 9)

def test_zero_variance_layer_warned_once_within_one_set(rng):
    """cka_matrix(xs) (ys=None) compares xs with itself: one warning per dead layer."""
    a = rng.standard_normal((12, 4))
    b = np.tanh(a[:, :2]) + 0.3 * rng.standard_normal((12, 2))
    xs = {"ok": t(a), "dead": torch.full((12, 3), 2.5, dtype=torch.float64), "ok2": t(b)}
    for route in ("gram", "feature"):
        with pytest.warns(flashcka.FlashCKAWarning) as rec:
            m = flashcka.cka_matrix(xs, route=route)
        assert [str(w.message).count("dead") for w in rec] == [1], route
        assert torch.isnan(m[1]).all() and torch.isnan(m[:, 1]).all()
        assert abs(m[0, 2].item() - ref.cka(a, b)) <= 1e-12


def test_feature_route_honours_backend(rng, monkeypatch):
    """backend= means the same on both routes: a backend that cannot run here raises
    whatever the route (it used to be ignored on the feature route)."""
    x, y = t(rng.standard_normal((20, 3))), t(rng.standard_normal((20, 2)))
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    if torch.cuda.is_available():
        pytest.skip("triton is usable on this machine")
    for route in ("auto", "gram"):
        with pytest.raises(RuntimeError, match="backend='triton' is not usable"):
            flashcka.cka_matrix([x], [y], backend="triton", route=route)
    with pytest.raises(RuntimeError, match="backend='triton' is not usable"):
        flashcka.cka(x, y, backend="triton")
    with pytest.raises(ValueError, match=r"route='feature'.*backend='native'"):
        flashcka.cka_matrix([x], [y], backend="native", route="feature")


def test_forced_native_on_foreign_device_raises(rng):
    """backend='native' runs on CPU tensors only: another device raises, on any route."""
    x = torch.zeros(20, 3, device="meta")
    with pytest.raises(ValueError, match="backend='native' does not run on meta"):
        flashcka.backends.select("native", x)      # the device check itself
    with pytest.raises(ValueError, match=r"xs\[0\] is a meta tensor"):   # refused earlier
        flashcka.cka_matrix([x], [x], backend="native")


@pytest.mark.parametrize("backend", ["torch", "native"])
def test_forced_backend_small_width_matches_reference(rng, backend):
    """A forced backend with a small width (where auto would take the feature route) runs
    that backend's Gram route and matches the reference."""
    x = rng.standard_normal((30, 3)) + 2
    y = rng.standard_normal((30, 2))
    y[:, 0] += x[:, 1]
    for unbiased in (True, False):
        got = flashcka.cka(t(x), t(y), backend=backend, unbiased=unbiased).item()
        assert got == pytest.approx(ref.cka(x, y, unbiased=unbiased), rel=0, abs=1e-12)


BAD_ARGS = [
    (dict(unbiased="no"), TypeError, "unbiased must be True or False"),
    (dict(unbiased=None), TypeError, "unbiased must be True or False"),
    (dict(unbiased=1), TypeError, "unbiased must be True or False"),
    (dict(kernel=None), ValueError, "kernel must be one of"),
    (dict(kernel="RBF"), ValueError, "kernel must be one of"),
    (dict(kernel="rbf", sigma="1"), TypeError, "sigma must be a positive finite number"),
    (dict(kernel="rbf", sigma=True), TypeError, "sigma must be a positive finite number"),
    (dict(kernel="rbf", sigma=-1.0), ValueError, "sigma must be a positive finite number"),
    (dict(kernel="rbf", sigma=float("nan")), ValueError, "sigma must be a positive finite"),
    (dict(threshold="2"), TypeError, "threshold must be a positive finite number"),
    (dict(threshold=float("inf")), ValueError, "threshold must be a positive finite"),
    (dict(dtype="float32"), ValueError, "dtype must be torch.float32 or torch.float64"),
    (dict(dtype=torch.float16), ValueError, "dtype must be torch.float32 or torch.float64"),
    (dict(backend=None), ValueError, "backend must be one of"),
    (dict(backend="TORCH"), ValueError, "backend must be one of"),
]


@pytest.mark.parametrize("kw,exc,msg", BAD_ARGS)
@pytest.mark.parametrize("fn", ["hsic", "cka", "cka_matrix", "MinibatchCKA"])
def test_bad_arguments_are_named(kw, exc, msg, fn):
    x = torch.randn(10, 3)
    with pytest.raises(exc, match=msg):
        if fn == "cka_matrix":
            flashcka.cka_matrix([x], **kw)
        elif fn == "MinibatchCKA":
            flashcka.MinibatchCKA(1, **kw).update([x])
        else:
            getattr(flashcka, fn)(x, x, **kw)


def test_bad_route_and_center_gram_arguments():
    x = torch.randn(10, 3)
    for route in (None, "Feature", 1):
        with pytest.raises(ValueError, match="route must be 'auto', 'gram', 'feature' or 'tiled'"):
            flashcka.cka_matrix([x], route=route)
    with pytest.raises(ValueError, match=r"route='feature' needs kernel='linear'"):
        flashcka.cka_matrix([x], route="feature", kernel="rbf")
    with pytest.raises(TypeError, match="unbiased must be True or False"):
        flashcka.center(x @ x.T, unbiased="yes")
    with pytest.raises(ValueError, match="backend must be one of"):
        flashcka.center(x @ x.T, backend="gpu")
    with pytest.raises(TypeError, match="sigma must be a positive finite number"):
        flashcka.gram(x, "rbf", sigma="wide")
    with pytest.raises(ValueError, match="dtype must be"):
        flashcka.gram(x, dtype=torch.int32)


def test_numpy_bool_and_numbers_are_accepted(rng):
    x = rng.standard_normal((15, 4))
    y = rng.standard_normal((15, 3)) + x[:, :3]
    got = flashcka.cka(t(x), t(y), unbiased=np.bool_(False), kernel="rbf",
                       sigma=np.float32(2.0), threshold=np.int64(1)).item()
    assert got == pytest.approx(ref.cka(x, y, "rbf", False, sigma=2.0), rel=0, abs=1e-12)
    acc = flashcka.MinibatchCKA(1, unbiased=np.bool_(True))
    assert acc.state_dict()["settings"]["unbiased"] is True


def test_tiny_self_hsic_denominator_does_not_underflow():
    """Self-HSICs below 1e-154 (RBF with a narrow sigma): their product underflowed, so
    CKA came out as 1.0000013 or inf; the reference's value instead."""
    x = torch.randn(4, 56, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    y = x + 0.01 * torch.randn(4, 56, generator=torch.Generator().manual_seed(1),
                                dtype=torch.float64)
    for a, b in ((x, x), (x, y)):
        got = flashcka.cka(a, b, kernel="rbf", sigma=0.5).item()
        k, l = ref.gram_rbf(a.numpy(), sigma=0.5), ref.gram_rbf(b.numpy(), sigma=0.5)
        # the reference's HSICs, each self term under its own sqrt (ref.cka multiplies
        # them first and underflows too)
        want = ref.hsic_song(k, l) / (np.sqrt(ref.hsic_song(k, k)) * np.sqrt(ref.hsic_song(l, l)))
        assert ref.hsic_song(k, k) < 1e-154
        assert abs(got - want) <= 1e-9 * abs(want) + 1e-12, (got, want)


@pytest.mark.parametrize("scale", [1e80, 1e-80, 1e150, 1e-150, 1e-300])
@pytest.mark.parametrize("backend,route,kernel", [("torch", "gram", "linear"),
                                                  ("torch", "feature", "linear"),
                                                  ("native", "gram", "linear"),
                                                  ("native", "gram", "rbf"),
                                                  ("torch", "gram", "rbf")])
def test_float64_at_extreme_scales_every_backend_and_route(rng, scale, backend, route, kernel):
    """Issue 25 item 1: x·1e80 gave CKA 0.0, x·1e-80 NaN with a false zero-variance warning
    (self-HSIC out of float64's range); CKA is scale invariant."""
    import warnings
    x = rng.standard_normal((40, 30))
    y = x @ rng.standard_normal((30, 20)) + 3 * rng.standard_normal((40, 20))
    want = np.array([[ref.cka(x, y, kernel, u), ref.cka(x, x, kernel, u)]
                     for u in (True, False)])
    xt, yt = torch.tensor(x) * scale, torch.tensor(y)
    with warnings.catch_warnings():
        warnings.simplefilter("error")             # no "zero variance" warning
        got = np.array([flashcka.cka_matrix([xt], [yt, xt], kernel=kernel, unbiased=u,
                                            backend=backend, route=route)[0].numpy()
                        for u in (True, False)])
    np.testing.assert_allclose(got, want, rtol=1e-10, atol=0)


def test_feature_route_subnormal_input(rng):
    """max |x| below float64's normal range (1e-320): the feature route scaled it by 2^1064,
    which is no float (OverflowError); the answer is that of the input as it is."""
    x = rng.standard_normal((40, 5))
    y = x[:, :3] + rng.standard_normal((40, 3))
    xt = torch.tensor(x) * 1e-320                      # subnormal: a few bits per value
    want = ref.cka((xt * 2.0 ** 1000).numpy(), y)      # exact rescaling of those values
    got = flashcka.cka_matrix([xt], [torch.tensor(y)], backend="torch", route="feature")
    np.testing.assert_allclose(got.numpy(), [[want]], rtol=1e-10, atol=0)
