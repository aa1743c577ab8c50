"""flashcka.similarity_matrix against per-pair float64 references (platonic-rep's formulas,
tests/test_compat_platonic.py; scipy's Spearman/Pearson for RSA)."""
import numpy as np
import pytest
import torch

import flashcka
from flashcka import similarity_matrix
from test_compat_platonic import ref_cknna, ref_mutual


def layers(rng, n, dims, dtype=torch.float64):
    z = rng.standard_normal((n, 4))
    out = []
    for d in dims:
        x = np.tanh(z @ rng.standard_normal((4, d))) + 0.7 * rng.standard_normal((n, d)) \
            + rng.uniform(-1, 1, d)
        out.append(torch.tensor(x, dtype=dtype))
    return out


def ref_rsa(x, y, method):
    from scipy import stats
    iu = np.triu_indices(len(x), 1)
    rx, ry = (1 - np.corrcoef(np.asarray(v).reshape(len(v), -1))[iu] for v in (x, y))
    f = stats.spearmanr if method == "spearman" else stats.pearsonr
    return f(rx, ry)[0]


def grid(fn, xs, ys):
    return np.array([[fn(x.numpy(), y.numpy()) for y in ys] for x in xs])


@pytest.mark.parametrize("n", [6, 37, 90])
def test_mutual_knn_all_pairs(rng, n):
    xs, ys = layers(rng, n, [3, 20, 1]), layers(rng, n, [7, 2])
    topk = min(5, n - 1)
    got = similarity_matrix(xs, ys, measure="mutual_knn", topk=topk)
    assert got.shape == (3, 2) and got.dtype == torch.float64
    np.testing.assert_allclose(got, grid(lambda a, b: ref_mutual(a, b, topk), xs, ys),
                               rtol=0, atol=1e-12)


@pytest.mark.parametrize("n,topk", [(6, 2), (41, 7), (64, 63)])
@pytest.mark.parametrize("unbiased", [True, False])
def test_cknna_all_pairs(rng, n, topk, unbiased):
    xs, ys = layers(rng, n, [3, 20, 9]), layers(rng, n, [7, 2])
    got = similarity_matrix(xs, ys, measure="cknna", topk=topk, unbiased=unbiased)
    want = grid(lambda a, b: ref_cknna(a, b, topk, unbiased), xs, ys)
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-10)
    self_ = similarity_matrix(xs, measure="cknna", topk=topk, unbiased=unbiased)
    np.testing.assert_allclose(self_, grid(lambda a, b: ref_cknna(a, b, topk, unbiased), xs, xs),
                               rtol=0, atol=1e-10)


@pytest.mark.parametrize("method", ["spearman", "pearson"])
@pytest.mark.parametrize("n", [3, 30, 101])
def test_rsa_all_pairs(rng, method, n):
    xs = layers(rng, n, [3, 15, 40], dtype=torch.float32)  # d = 2: every r is ±1 (ties)
    got = similarity_matrix(xs, measure="rsa", rsa_method=method)
    want = grid(lambda a, b: ref_rsa(a.astype(np.float64), b.astype(np.float64), method), xs, xs)
    np.testing.assert_allclose(got, want, rtol=0, atol=2e-5)    # float32 Grams
    got64 = similarity_matrix([x.double() for x in xs], measure="rsa", rsa_method=method)
    np.testing.assert_allclose(got64, want, rtol=0, atol=1e-10)


def test_spearman_ranks_average_ties(rng):
    """Tied RDM entries (e.g. repeated samples) get their average rank, as scipy's."""
    from scipy import stats

    from flashcka.measures.similarity import _rank
    v = rng.integers(0, 7, size=301).astype(np.float64)
    np.testing.assert_array_equal(_rank(torch.tensor(v)).numpy(), stats.rankdata(v))


def test_cka_is_cka_matrix(rng):
    xs = layers(rng, 20, [3, 8])
    torch.testing.assert_close(similarity_matrix(xs, measure="cka", unbiased=False),
                               flashcka.cka_matrix(xs, unbiased=False), rtol=0, atol=0)


def test_errors(rng):
    xs = layers(rng, 10, [3, 4])
    with pytest.raises(ValueError, match="measure"):
        similarity_matrix(xs, measure="cosine")
    with pytest.raises(ValueError, match=r"topk must be an int in \[1, 9\]"):
        similarity_matrix(xs, measure="mutual_knn", topk=10)
    with pytest.raises(ValueError, match=r"topk must be an int in \[2, 9\]"):
        similarity_matrix(xs, measure="cknna", topk=1)
    with pytest.raises(ValueError, match="rsa_method"):
        similarity_matrix(xs, measure="rsa", rsa_method="kendall")
    with pytest.raises(ValueError, match="samples"):
        similarity_matrix(xs, [layers(rng, 11, [3])[0]], measure="mutual_knn")
    bad = {"good": xs[0], "flat": torch.cat([xs[1][:, :1].expand(10, 4)])}
    bad["flat"] = bad["flat"].clone()
    with pytest.raises(ValueError, match="flat: sample 0 has constant features"):
        similarity_matrix(bad, measure="rsa")
    # sample 4 all 0.1 in float64: its mean rounds to 0.1 + 1 ulp, its centred norm is
    # 3e-17, not 0; constant all the same
    tenth = {"good": xs[0].double(), "tenth": torch.tensor(rng.standard_normal((10, 3)))}
    tenth["tenth"][4] = 0.1
    with pytest.raises(ValueError, match="tenth: sample 4 has constant features"):
        similarity_matrix(tenth, measure="rsa")
    nan = {"a": xs[0], "b": xs[1].clone()}
    nan["b"][3, 2] = float("nan")
    for m in ("rsa", "mutual_knn", "cknna"):
        with pytest.raises(ValueError, match="b holds non-finite"):
            similarity_matrix(nan, measure=m, topk=3)
    with pytest.raises(TypeError, match="dtype"):
        similarity_matrix([torch.ones(10, 3, dtype=torch.int64)], measure="rsa")


def test_memory_limit_is_stated(rng):
    xs = layers(rng, 50, [3, 4])
    with pytest.raises(ValueError, match=r"cknna over n = 50 samples and 2 x 2 layers needs "
                                         r"about .* GiB.*max_bytes"):
        similarity_matrix(xs, measure="cknna", topk=5, max_bytes=1000)
    with pytest.raises(ValueError, match="mutual_knn over n = 50"):
        similarity_matrix(xs, measure="mutual_knn", topk=5, max_bytes=1000)


def test_grad_inputs_are_refused_clearly(rng):
    xs = layers(rng, 12, [3, 4])
    xs[0].requires_grad_(True)
    with pytest.raises(ValueError, match="does not carry gradients"):
        similarity_matrix(xs, measure="mutual_knn", topk=3)
    with torch.no_grad():
        assert similarity_matrix(xs, measure="rsa").shape == (2, 2)


@pytest.mark.parametrize("scale", [1e40, 1e-40, 1e170, 1e-170, 1e300, 1e-300])
def test_float64_at_extreme_scales(rng, scale):
    """Every measure is invariant to a positive scale of a layer: CKNNA failed from about
    1e±40 (self terms out of float64's range), RSA gave NaN at 1e170."""
    x, y = layers(rng, 40, [30, 20])
    xs = [x * scale]
    np.testing.assert_allclose(similarity_matrix(xs, [y], measure="cknna", topk=7),
                               [[ref_cknna(x.numpy(), y.numpy(), 7, True)]], rtol=0, atol=1e-10)
    for method in ("spearman", "pearson"):
        np.testing.assert_allclose(similarity_matrix(xs, [y], measure="rsa", rsa_method=method),
                                   [[ref_rsa(x.numpy(), y.numpy(), method)]], rtol=0, atol=1e-10)
    np.testing.assert_allclose(similarity_matrix(xs, [y], measure="mutual_knn", topk=5),
                               [[ref_mutual(x.numpy(), y.numpy(), 5)]], rtol=0, atol=1e-12)
