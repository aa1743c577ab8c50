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
def test_cka_of_itself_is_one(rng, kernel, unbiased):
    x = rng.standard_normal((37, 11)) + 4
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
    assert got.item() == pytest.approx(ref.cka(x, y, kernel, unbiased), rel=1e-9, abs=1e-12)


@pytest.mark.parametrize("route", ["auto", "gram", "feature"])
def test_cka_matrix_equals_loop_of_cka(rng, route):
    xs = [t(rng.standard_normal((30, d)) + 1) for d in (1, 3, 20)]
    ys = [t(xs[0].numpy() @ rng.standard_normal((1, 5)) + rng.standard_normal((30, 5))),
          t(rng.standard_normal((30, 2, 4)))]
    m = flashcka.cka_matrix(xs, ys, route=route)
    assert m.shape == (3, 2) and m.dtype == torch.float64
    for i, x in enumerate(xs):
        for j, y in enumerate(ys):
            assert m[i, j].item() == pytest.approx(flashcka.cka(x, y).item(), rel=1e-10)
    within = flashcka.cka_matrix(xs, route=route)
    assert torch.allclose(within, within.T, rtol=1e-12)
    assert torch.allclose(within.diagonal(), torch.ones(3, dtype=torch.float64), rtol=1e-12)


@pytest.mark.parametrize("kernel", ["linear", "rbf"])
def test_cka_matrix_dict_and_backends_agree(rng, kernel):
    xs = {f"layer{i}": t(rng.standard_normal((25, 6 + i))) for i in range(3)}
    torch_m = flashcka.cka_matrix(xs, kernel=kernel, backend="torch", route="gram")
    auto_m = flashcka.cka_matrix(xs, kernel=kernel, backend="auto", route="gram")
    assert torch.allclose(torch_m, auto_m, rtol=1e-10)


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
