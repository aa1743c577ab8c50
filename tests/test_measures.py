"""similarity_matrix's Procrustes, CCA, SVCCA, PWCCA and linear-regression R² against the
float64 references of tests/reference_measures.py (written from the papers, one pair at a
time), at awkward sizes; the invariances each measure must have; the error messages."""
import warnings

import numpy as np
import pytest
import torch
from scipy.linalg import orthogonal_procrustes
from scipy.stats import ortho_group

from flashcka import FlashCKAWarning, similarity_matrix
from flashcka.measures.procrustes import procrustes_distance
import reference_measures as ref

MEASURES = ("procrustes", "cca", "svcca", "pwcca", "linreg")
SYMMETRIC = ("procrustes", "cca", "svcca")


def layer(rng, z, d, noise=0.4):
    """tanh of a random map of the shared latent z, plus noise and a non-zero mean."""
    w = rng.standard_normal((z.shape[1], d))
    return np.tanh(z @ w) + noise * rng.standard_normal((len(z), d)) + rng.uniform(-3, 3, d)


def low_rank(rng, z, d, r):
    """d features of rank r (plus a mean): rank-deficient."""
    return z[:, :r] @ rng.standard_normal((r, d)) + rng.uniform(-3, 3, d)


def sides(rng, n):
    """xs: d = 1, 7, 13 and a rank-3 layer of 10 features; ys: d = 4, 20 (float32 too)."""
    z = rng.standard_normal((n, 6))
    xs = [layer(rng, z, 1), layer(rng, z, 7), layer(rng, z, 13), low_rank(rng, z, 10, 3)]
    ys = [layer(rng, z, 4).astype(np.float32), layer(rng, z, 20)]
    return xs, ys


def t(arrays):
    return [torch.from_numpy(np.ascontiguousarray(a)) for a in arrays]


@pytest.mark.parametrize("measure", MEASURES)
@pytest.mark.parametrize("n", [37, 97, 250])
def test_matches_reference(rng, measure, n):
    xs, ys = sides(rng, n)
    got = similarity_matrix(t(xs), t(ys), measure=measure)
    assert got.shape == (4, 2) and got.dtype == torch.float64
    np.testing.assert_allclose(got, ref.matrix(measure, xs, ys), rtol=0, atol=1e-10)
    self_ = similarity_matrix(t(xs), measure=measure)
    np.testing.assert_allclose(self_, ref.matrix(measure, xs), rtol=0, atol=1e-10)
    np.testing.assert_allclose(np.diag(self_), 1.0, rtol=0, atol=1e-12)


@pytest.mark.parametrize("measure", ["procrustes", "cca", "svcca", "linreg"])
def test_overlapping_spans(rng, measure):
    """n = 29 with r_A + r_B = 33 > n − 1: at least 5 canonical correlations are 1 by
    construction; the scores still equal the references. (PWCCA is left out: with tied
    canonical correlations its canonical variates, and so its weights, are not unique.)"""
    xs, ys = sides(rng, 29)
    got = similarity_matrix(t(xs), t(ys), measure=measure)
    np.testing.assert_allclose(got, ref.matrix(measure, xs, ys), rtol=0, atol=1e-10)
    if measure == "cca":
        rho, _ = ref.canonical(xs[2], ys[1])
        assert np.sum(rho > 1 - 1e-9) >= 5


@pytest.mark.parametrize("threshold", [0.3, 0.8, 0.95, 1.0])
def test_svcca_threshold(rng, threshold):
    xs, ys = sides(rng, 83)
    got = similarity_matrix(t(xs), t(ys), measure="svcca", svcca_threshold=threshold)
    want = ref.matrix("svcca", xs, ys, threshold=threshold)
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-10)
    if threshold == 1.0:      # every direction kept: plain CCA
        np.testing.assert_allclose(got, ref.matrix("cca", xs, ys), rtol=0, atol=1e-10)


def test_svcca_keeps_fewer_directions_than_cca(rng):
    """A layer with a few strong directions and many weak ones: the 99% rule drops the weak
    ones, so SVCCA differs from CCA (and the reference agrees on which)."""
    n = 120
    z = rng.standard_normal((n, 3))
    x = z @ rng.standard_normal((3, 30)) * 10 + 0.05 * rng.standard_normal((n, 30))
    y = z @ rng.standard_normal((3, 8)) + 0.5 * rng.standard_normal((n, 8))
    sv = float(similarity_matrix(t([x]), t([y]), measure="svcca")[0, 0])
    cc = float(similarity_matrix(t([x]), t([y]), measure="cca")[0, 0])
    assert abs(sv - cc) > 0.05
    assert sv == pytest.approx(ref.svcca(x, y), abs=1e-10)


def test_wide_layers_procrustes_and_predicted_side(rng):
    """Procrustes has no n > d requirement; linreg only needs it of the predictor."""
    n = 31
    z = rng.standard_normal((n, 5))
    x, wide = layer(rng, z, 9), layer(rng, z, 70)
    np.testing.assert_allclose(similarity_matrix(t([x, wide]), measure="procrustes"),
                               ref.matrix("procrustes", [x, wide]), rtol=0, atol=1e-10)
    got = similarity_matrix(t([x]), t([wide]), measure="linreg")
    assert float(got[0, 0]) == pytest.approx(ref.linreg(x, wide), abs=1e-10)


def test_images_and_dicts(rng):
    n = 40
    z = rng.standard_normal((n, 4))
    img = layer(rng, z, 2 * 3 * 3).reshape(n, 2, 3, 3)
    flat = layer(rng, z, 5)
    got = similarity_matrix({"conv": torch.tensor(img)}, {"fc": torch.tensor(flat)},
                            measure="pwcca")
    assert float(got[0, 0]) == pytest.approx(ref.pwcca(img, flat), abs=1e-10)


# ------------------------------------------------------------------ invariances

def orthogonal(rng, d):
    return ortho_group.rvs(d, random_state=rng) if d > 1 else np.array([[-1.0]])


def invertible(rng, d):
    """Condition number ≤ 10: far from singular, far from orthogonal."""
    u, v = orthogonal(rng, d), orthogonal(rng, d)
    return (u * np.geomspace(1, 10, d)) @ v


def similar(rng, x):
    """x under an orthogonal map, an isotropic scale and a translation."""
    return 3.7 * x @ orthogonal(rng, x.shape[1]) + rng.standard_normal(x.shape[1])


def linear(rng, x):
    return x @ invertible(rng, x.shape[1]) + rng.standard_normal(x.shape[1])


def signed_permutation(rng, x):
    d = x.shape[1]
    return 0.2 * x[:, rng.permutation(d)] * rng.choice([-1.0, 1.0], d) + 5.0


# what each measure must be invariant to, on (the row layer, the column layer)
INVARIANCES = {
    "procrustes": (similar, similar),
    "cca": (linear, linear),
    "svcca": (similar, similar),
    "pwcca": (signed_permutation, linear),
    "linreg": (linear, similar),
}


@pytest.mark.parametrize("measure", MEASURES)
def test_invariances(rng, measure):
    xs, ys = sides(rng, 71)
    xs, ys = xs[1:3], [y.astype(np.float64) for y in ys]
    base = similarity_matrix(t(xs), t(ys), measure=measure)
    fx, fy = INVARIANCES[measure]
    moved = similarity_matrix(t([fx(rng, x) for x in xs]), t([fy(rng, y) for y in ys]),
                              measure=measure)
    np.testing.assert_allclose(moved, base, rtol=0, atol=1e-9)
    assert float(base.min()) < 0.99       # not a trivially constant score


def test_not_invariant_where_the_measure_is_not(rng):
    """The checks above can fail: Procrustes changes under a general linear map, PWCCA's
    weights under a rotation of the weighted layer's neurons, R² under a linear map of the
    predicted layer."""
    xs, ys = sides(rng, 71)
    x, y = xs[2], ys[1].astype(np.float64)
    for measure, moved in (("procrustes", (linear(rng, x), y)),
                           ("pwcca", (similar(rng, x), y)),
                           ("linreg", (x, linear(rng, y)))):
        a = float(similarity_matrix(t([x]), t([y]), measure=measure)[0, 0])
        b = float(similarity_matrix(t([moved[0]]), t([moved[1]]), measure=measure)[0, 0])
        assert abs(a - b) > 1e-4, measure


@pytest.mark.parametrize("measure", MEASURES)
def test_exact_relation_scores_one(rng, measure):
    """Y = X·(a map the measure forgives) + b: the score is 1."""
    n = 60
    x = layer(rng, rng.standard_normal((n, 4)), 9)
    y = (x @ orthogonal(rng, 9) if measure in ("procrustes", "svcca", "pwcca")
         else x @ invertible(rng, 9)) * 2.0 + 1.0
    assert float(similarity_matrix(t([x]), t([y]), measure=measure)[0, 0]) == \
        pytest.approx(1.0, abs=1e-12)


@pytest.mark.parametrize("measure", SYMMETRIC)
def test_symmetric(rng, measure):
    xs, ys = sides(rng, 53)
    a = similarity_matrix(t(xs), t(ys), measure=measure)
    b = similarity_matrix(t(ys), t(xs), measure=measure)
    np.testing.assert_allclose(a, b.T, rtol=0, atol=1e-12)


def test_pwcca_weights_the_row_layer(rng):
    xs, ys = sides(rng, 64)
    x, y = xs[2], ys[1]
    got = similarity_matrix(t([x]), t([y]), measure="pwcca")
    back = similarity_matrix(t([y]), t([x]), measure="pwcca")
    assert float(got[0, 0]) == pytest.approx(ref.pwcca(x, y), abs=1e-10)
    assert float(back[0, 0]) == pytest.approx(ref.pwcca(y, x), abs=1e-10)
    assert abs(float(got[0, 0]) - float(back[0, 0])) > 1e-6


# ------------------------------------------------------------------ distances, dtype

def test_procrustes_distances(rng):
    n, d = 45, 6
    z = rng.standard_normal((n, 3))
    x, y = layer(rng, z, d), layer(rng, z, d)
    s = similarity_matrix(t([x]), t([y]), measure="procrustes")
    xt, yt = ref.centred(x), ref.centred(y)
    xt, yt = xt / np.linalg.norm(xt), yt / np.linalg.norm(yt)
    q, _ = orthogonal_procrustes(yt, xt)                 # min_Q ‖ỸQ − X̃‖_F
    euclid = np.linalg.norm(xt - yt @ q)
    assert float(procrustes_distance(s, "euclidean")[0, 0]) == pytest.approx(euclid, abs=1e-10)
    assert float(procrustes_distance(s)[0, 0]) == \
        pytest.approx(np.arccos(ref.procrustes(x, y)), abs=1e-10)
    with pytest.raises(ValueError, match="kind must be one of"):
        procrustes_distance(s, "cosine")


@pytest.mark.parametrize("measure", MEASURES)
def test_float32_compute(rng, measure):
    xs, ys = sides(rng, 97)
    got = similarity_matrix(t(xs), t(ys), measure=measure, dtype=torch.float32)
    np.testing.assert_allclose(got, ref.matrix(measure, xs, ys), rtol=0, atol=2e-4)


# ------------------------------------------------------------------ errors

@pytest.mark.parametrize("measure", ["cca", "svcca", "pwcca", "linreg"])
def test_degenerate_rank_raises(rng, measure):
    n = 20
    z = rng.standard_normal((n, 3))
    wide = layer(rng, z, 25)
    ok = layer(rng, z, 4)
    kw = {"svcca_threshold": 1.0} if measure == "svcca" else {}
    with pytest.raises(ValueError, match=r"wide has rank 19 over n = 20 samples \(d = 25"):
        similarity_matrix({"wide": torch.tensor(wide)}, {"ok": torch.tensor(ok)},
                          measure=measure, **kw)


def test_svcca_of_wide_layers_runs_when_few_directions_are_kept(rng):
    n = 20
    z = rng.standard_normal((n, 2))
    wide = z @ rng.standard_normal((2, 25)) * 10 + 0.01 * rng.standard_normal((n, 25))
    ok = layer(rng, z, 4)
    got = similarity_matrix(t([wide]), t([ok]), measure="svcca")
    assert float(got[0, 0]) == pytest.approx(ref.svcca(wide, ok), abs=1e-10)


@pytest.mark.parametrize("bad", [0, 0.0, 1.5, -0.1, True, "0.99", None])
def test_svcca_threshold_checked(rng, bad):
    x = torch.randn(30, 3, dtype=torch.float64)
    with pytest.raises(ValueError, match="svcca_threshold must be a number in"):
        similarity_matrix([x], measure="svcca", svcca_threshold=bad)


@pytest.mark.parametrize("measure", MEASURES)
@pytest.mark.parametrize("value", [2.5, 0.1, -7e30])     # 0.1: its mean is not exact
def test_constant_layer_is_nan_with_warning(rng, measure, value):
    x = torch.tensor(layer(rng, rng.standard_normal((30, 2)), 3))
    const = torch.full((30, 4), value, dtype=torch.float64)
    with pytest.warns(FlashCKAWarning, match="flat is constant over the samples"):
        got = similarity_matrix({"x": x, "flat": const}, measure=measure)
    assert torch.isnan(got[1]).all() and torch.isnan(got[:, 1]).all()
    assert float(got[0, 0]) == pytest.approx(1.0, abs=1e-12)


@pytest.mark.parametrize("measure", MEASURES)
@pytest.mark.parametrize("scale", [1e-300, 1e150, 1e300])
def test_extreme_scales(rng, measure, scale):
    """Every measure is scale-invariant; float64 layers far outside float32's range work,
    in float64 and with dtype=torch.float32 (each layer is scaled by a power of two first)."""
    xs, ys = sides(rng, 47)
    xs = [x.astype(np.float64) for x in xs]
    want = ref.matrix(measure, xs, ys)
    big = t([x * scale for x in xs])
    np.testing.assert_allclose(similarity_matrix(big, t(ys), measure=measure), want,
                               rtol=0, atol=1e-10)
    np.testing.assert_allclose(similarity_matrix(big, t(ys), measure=measure,
                                                 dtype=torch.float32), want, rtol=0, atol=2e-4)


def test_progress_bar_and_device(rng, capsys):
    xs, ys = sides(rng, 41)
    got = similarity_matrix(t(xs), t(ys), measure="linreg", progress=True)
    assert got.device == torch.device("cpu")
    np.testing.assert_allclose(got, ref.matrix("linreg", xs, ys), rtol=0, atol=1e-10)


def test_input_errors(rng):
    x = torch.randn(30, 3, dtype=torch.float64)
    with pytest.raises(ValueError, match=r"ys\[0\] has 29 samples but xs\[0\] has 30"):
        similarity_matrix([x], [torch.randn(29, 3)], measure="cca")
    bad = x.clone()
    bad[4, 1] = float("nan")
    with pytest.raises(ValueError, match=r"xs\[1\] holds non-finite values"):
        similarity_matrix([x, bad], measure="procrustes")
    with pytest.raises(ValueError, match="does not carry gradients"):
        similarity_matrix([x.requires_grad_()], measure="pwcca")
    with pytest.raises(ValueError, match="over max_bytes"):
        similarity_matrix([torch.randn(30, 3)], measure="cca", max_bytes=100)
    with pytest.raises(ValueError, match="dtype must be"):
        similarity_matrix([torch.randn(30, 3)], measure="cca", dtype=torch.float16)
    with warnings.catch_warnings():
        warnings.simplefilter("error")        # a well-posed call warns about nothing
        similarity_matrix([torch.randn(30, 3)], measure="linreg")
