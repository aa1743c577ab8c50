"""flashcka.compat.kornblith against Kornblith et al.'s notebook formulas (written out here
as the float64 reference) and the values printed in their Demo.ipynb."""
import numpy as np
import pytest

from flashcka.compat import kornblith as K


# ---- the notebook's formulas (google-research/representation_similarity/Demo.ipynb) ----
def ref_gram_rbf(x, threshold=1.0):
    dot = x @ x.T
    sq = np.diag(dot)
    d = -2 * dot + sq[:, None] + sq[None, :]
    return np.exp(-d / (2 * threshold ** 2 * np.median(d)))


def ref_center(g, unbiased=False):
    g = g.copy()
    if unbiased:
        n = g.shape[0]
        np.fill_diagonal(g, 0)
        means = np.sum(g, 0) / (n - 2)
        means -= np.sum(means) / (2 * (n - 1))
        g -= means[:, None]
        g -= means[None, :]
        np.fill_diagonal(g, 0)
    else:
        means = np.mean(g, 0)
        means -= np.mean(means) / 2
        g -= means[:, None]
        g -= means[None, :]
    return g


def ref_cka(gx, gy, debiased=False):
    gx, gy = ref_center(gx, debiased), ref_center(gy, debiased)
    return gx.ravel() @ gy.ravel() / (np.linalg.norm(gx) * np.linalg.norm(gy))


def ref_feature_cka(x, y, debiased=False):
    x = x - x.mean(0)
    y = y - y.mean(0)
    dps = np.linalg.norm(x.T @ y) ** 2
    nx, ny = np.linalg.norm(x.T @ x), np.linalg.norm(y.T @ y)
    if debiased:
        n = x.shape[0]
        rx, ry = np.sum(x * x, 1), np.sum(y * y, 1)
        sx, sy = rx.sum(), ry.sum()

        def h(xty, a, b, c, d):
            return xty - n / (n - 2.) * a @ b + c * d / ((n - 1) * (n - 2))
        dps = h(dps, rx, ry, sx, sy)
        nx = np.sqrt(h(nx ** 2, rx, rx, sx, sx))
        ny = np.sqrt(h(ny ** 2, ry, ry, sy, sy))
    return dps / (nx * ny)


def data(rng, n, d1, d2):
    x = rng.standard_normal((n, d1)) * rng.uniform(0.5, 3, d1) + rng.uniform(-2, 2, d1)
    y = np.tanh(x[:, :1] @ rng.standard_normal((1, d2))) + 0.5 * rng.standard_normal((n, d2))
    return x, y


def test_demo_values():
    """The numbers printed in Kornblith et al.'s Demo.ipynb (seed 1337)."""
    np.random.seed(1337)
    x = np.random.randn(100, 10)
    y = np.random.randn(100, 10) + x
    assert f"{K.cka(K.gram_linear(x), K.gram_linear(y)):.5f}" == "0.55761"
    assert f"{K.feature_space_linear_cka(x, y):.5f}" == "0.55761"
    assert f"{K.cka(K.gram_rbf(x, 0.5), K.gram_rbf(y, 0.5)):.5f}" == "0.65483"
    assert f"{K.cka(K.gram_linear(x), K.gram_linear(y), debiased=True):.5f}" == "0.51346"
    assert f"{K.feature_space_linear_cka(x, y, debiased=True):.5f}" == "0.51346"


@pytest.mark.parametrize("n,d1,d2", [(4, 1, 3), (5, 3, 1000), (97, 40, 7), (300, 12, 30)])
@pytest.mark.parametrize("debiased", [False, True])
def test_equal_to_notebook(rng, n, d1, d2, debiased):
    x, y = data(rng, n, d1, d2)
    gx, gy = x @ x.T, y @ y.T
    np.testing.assert_allclose(K.gram_linear(x), gx, rtol=1e-13, atol=1e-13 * np.abs(gx).max())
    np.testing.assert_allclose(K.center_gram(gx, debiased), ref_center(gx, debiased),
                               rtol=0, atol=1e-12 * np.abs(gx).max())
    for thr in (0.5, 1.0, 2.0):
        if n > 4:
            np.testing.assert_allclose(K.gram_rbf(x, thr), ref_gram_rbf(x, thr),
                                       rtol=1e-12, atol=1e-14)
    want = ref_cka(gx, gy, debiased)
    assert abs(K.cka(gx, gy, debiased) - want) < 1e-12
    assert abs(K.feature_space_linear_cka(x, y, debiased) - want) < 1e-12
    want_rbf = ref_cka(ref_gram_rbf(x), ref_gram_rbf(y), debiased)
    if n > 4:
        assert abs(K.cka(K.gram_rbf(x), K.gram_rbf(y), debiased) - want_rbf) < 1e-12


def test_types_and_dtypes(rng):
    x, y = data(rng, 20, 5, 6)
    assert isinstance(K.cka(x @ x.T, y @ y.T), np.float64)
    assert isinstance(K.feature_space_linear_cka(x, y), np.float64)
    g32 = K.gram_linear(x.astype(np.float32))
    assert g32.dtype == np.float32 and g32.shape == (20, 20)
    assert K.center_gram(g32).dtype == np.float32
    xi = (x * 10).astype(np.int64)   # integer features are promoted to float64
    np.testing.assert_allclose(K.gram_linear(xi), xi.astype(np.float64) @ xi.T.astype(np.float64))


def test_errors(rng):
    x, _ = data(rng, 10, 3, 3)
    g = x @ x.T
    g[0, 1] += 1.0
    with pytest.raises(ValueError, match="symmetric"):
        K.center_gram(g)
    with pytest.raises(ValueError, match="n >= 4"):
        K.center_gram(np.eye(3), unbiased=True)
    with pytest.raises(ValueError):
        K.gram_rbf(np.array([[1.0, 1.0]] * 5 + [[2.0, 3.0]]))  # median distance 0
    with pytest.warns(UserWarning, match="undefined"):
        assert np.isnan(K.cka(np.ones((6, 6)), x[:6] @ x[:6].T))


def test_documented_differences_measured(rng):
    """gram_rbf of identical rows: all ones (every bandwidth gives it; the notebook's formula
    is 0/0 = NaN there); (n, T, C) features are flattened (the notebook's x.dot(x.T) raises, or
    for T == C gives an (n, T, T, n) array)."""
    same = np.tile(rng.standard_normal((1, 4)), (7, 1))
    np.testing.assert_array_equal(K.gram_rbf(same), np.ones((7, 7)))
    with np.errstate(invalid="ignore", divide="ignore"):
        assert np.isnan(ref_gram_rbf(same)).all()
    with pytest.raises(ValueError, match="sigma = 0"):
        K.gram_rbf(np.vstack([same, same[:1] + 1.0]))
    x3, y = rng.standard_normal((9, 2, 3)), rng.standard_normal((9, 4))
    flat = x3.reshape(9, -1)
    np.testing.assert_array_equal(K.gram_linear(x3), K.gram_linear(flat))
    with pytest.raises(ValueError, match="not aligned"):
        x3.dot(x3.T)                                     # the notebook's gram_linear
    want = ref_cka(flat @ flat.T, y @ y.T)
    assert abs(K.feature_space_linear_cka(x3, y) - want) < 1e-12
    assert abs(K.cka(K.gram_linear(x3), K.gram_linear(y)) - want) < 1e-12
