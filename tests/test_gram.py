"""gram() and center() against the float64 reference."""
import numpy as np
import pytest
import torch

import flashcka
import reference as ref

BACKENDS = ["torch", "auto"]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("n,d", [(4, 1), (5, 3), (97, 1000)])
@pytest.mark.parametrize("kernel", ["linear", "rbf"])
def test_gram_matches_reference(rng, backend, n, d, kernel):
    x = rng.standard_normal((n, d)) + 2.0
    k = flashcka.gram(torch.tensor(x), kernel, backend=backend)
    assert k.dtype == torch.float64
    np.testing.assert_allclose(k.numpy(), ref.gram(x, kernel), rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("threshold,sigma", [(0.5, None), (2.0, None), (1.0, 3.0)])
def test_rbf_bandwidth(rng, threshold, sigma):
    x = rng.standard_normal((40, 7))
    k = flashcka.gram(torch.tensor(x), "rbf", sigma=sigma, threshold=threshold)
    np.testing.assert_allclose(k.numpy(), ref.gram_rbf(x, sigma, threshold), rtol=1e-10)


def test_rbf_median_includes_diagonal_and_averages_middle(rng):
    # n = 4: 16 entries (4 zeros + 6 values twice); numpy's median averages entries 7 and 8.
    x = rng.standard_normal((4, 2))
    k = flashcka.gram(torch.tensor(x), "rbf", backend="torch")
    np.testing.assert_allclose(k.numpy(), ref.gram_rbf(x), rtol=1e-12)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("n", [4, 5, 31])
@pytest.mark.parametrize("unbiased", [True, False])
def test_center_matches_reference(rng, backend, n, unbiased):
    a = rng.standard_normal((n, 6))
    k = a @ a.T
    got = flashcka.center(torch.tensor(k), unbiased=unbiased, backend=backend).numpy()
    want = ref.center_unbiased(k) if unbiased else ref.center_biased(k)
    np.testing.assert_allclose(got, want, rtol=1e-10, atol=1e-10)


def test_gram_strided_and_token_layout(rng):
    base = torch.tensor(rng.standard_normal((13, 5, 8)))
    x = base[:, 1:, ::2]  # (13, 4, 4), non-contiguous
    assert not x.is_contiguous()
    np.testing.assert_allclose(flashcka.gram(x).numpy(), ref.gram(x.numpy()), rtol=1e-10)


def test_gram_float32_default_and_half_upcast(rng):
    x = torch.tensor(rng.standard_normal((9, 4)), dtype=torch.bfloat16)
    k = flashcka.gram(x)
    assert k.dtype == torch.float32
    np.testing.assert_allclose(k.numpy(), ref.gram(x.float().numpy()), rtol=1e-5)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("scale", [1e-30, 1e-12, 1e12, 1e30])
def test_rbf_gram_is_scale_invariant_float32(rng, backend, scale):
    """The median-heuristic RBF kernel does not depend on the scale of x: float32 inputs
    at 1e±30 give the reference's kernel (distances underflowed to 0, or overflowed)."""
    x = torch.tensor(rng.standard_normal((11, 4)) * scale, dtype=torch.float32)
    k = flashcka.gram(x, "rbf", backend=backend)
    want = ref.gram_rbf(x.double().numpy() / scale)
    np.testing.assert_allclose(k.numpy(), want, rtol=0, atol=1e-6)
    k = flashcka.gram(x, "rbf", sigma=2.0 * scale, backend=backend)
    want = ref.gram_rbf(x.double().numpy() / scale, sigma=2.0)
    np.testing.assert_allclose(k.numpy(), want, rtol=0, atol=1e-6)


def test_linear_gram_out_of_range_raises(rng):
    x = torch.tensor(rng.standard_normal((6, 3)), dtype=torch.float32)
    with pytest.raises(ValueError, match="underflows torch.float32.*dtype=torch.float64"):
        flashcka.gram(x * 1e-25)
    with pytest.raises(ValueError, match="overflows torch.float32"):
        flashcka.gram(x * 1e25)
    xs = x * 1e-25
    k = flashcka.gram(xs, dtype=torch.float64)
    np.testing.assert_allclose(k.numpy(), ref.gram(xs.double().numpy()), rtol=1e-12, atol=0)


def test_rbf_zero_bandwidth_names_x():
    x = torch.zeros(10, 2)
    x[0] = 1.0
    with pytest.raises(ValueError, match=r"^x: the median heuristic gives sigma = 0"):
        flashcka.gram(x, "rbf")


def _duplicated(seed=0):
    g = torch.Generator().manual_seed(seed)
    b = torch.randn(2, 4, generator=g)
    return b[torch.tensor([0, 1, 0, 1, 0, 1, 1])], torch.randn(7, 3, generator=g)


@pytest.mark.parametrize("backend", BACKENDS)
def test_rbf_duplicated_rows_have_zero_distance(backend):
    """Exact duplicates have distance 0, not the rounding noise of K_aa + K_bb − 2K_ab: with
    most pairs duplicated the reference median is 0 and the median heuristic must say so
    (it landed on 1e-15 noise and returned CKA = 0.477); with sigma given, the reference."""
    y, x = _duplicated()
    d = ref.gram_linear(y.double().numpy())
    sq = np.diag(d)
    assert np.median(np.maximum(sq[:, None] + sq[None, :] - 2 * d, 0) * (1 - np.eye(7))) == 0
    with pytest.raises(ValueError, match="y: the median heuristic gives sigma = 0"):
        flashcka.cka(x, y, kernel="rbf", dtype=torch.float64, backend=backend)
    k = flashcka.gram(y, "rbf", sigma=1.0, dtype=torch.float64, backend=backend).numpy()
    np.testing.assert_allclose(k, ref.gram_rbf(y.double().numpy(), sigma=1.0), rtol=0,
                               atol=1e-15)
    assert (k[np.equal.outer([0, 1, 0, 1, 0, 1, 1], [0, 1, 0, 1, 0, 1, 1])] == 1.0).all()


@pytest.mark.parametrize("backend", BACKENDS)
def test_rbf_extreme_bandwidths(backend):
    """2σ² under- or overflowing the compute dtype: K → I or 11ᵀ, never NaN."""
    g = torch.Generator().manual_seed(1)
    x = torch.randn(5, 3, generator=g)
    eye, ones = torch.eye(5), torch.ones(5, 5)
    assert torch.equal(flashcka.gram(x, "rbf", sigma=1e-200, backend=backend), eye)
    assert torch.equal(flashcka.gram(x, "rbf", sigma=1e200, backend=backend), ones)
    assert torch.equal(flashcka.gram(x * 1e30, "rbf", sigma=0.5, backend=backend), eye)
    const = torch.full((5, 2), 8.36e29)
    assert torch.equal(flashcka.gram(const, "rbf", sigma=0.5, backend=backend), ones)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("unbiased", [True, False])
def test_center_near_float32_max_is_finite(backend, unbiased):
    """Row/column sums of a finite float32 matrix near float32's max overflowed (inf/NaN
    out of the torch backend); centering is linear, so it runs on k·2^-e and scales back."""
    k = torch.tensor([[3e38, -3e38, 3e38, 1.0]] * 4)
    got = flashcka.center(k, unbiased=unbiased, backend=backend).double().numpy()
    kd = k.double().numpy()
    want = ref.center_unbiased(kd) if unbiased else ref.center_biased(kd)
    np.testing.assert_allclose(got, want, rtol=0, atol=4 * 1.2e-7 * 3e38)
