"""hsic() against Song et al.'s and Gretton et al.'s formulas (float64 reference)."""
import numpy as np
import pytest
import torch

import flashcka
import reference as ref


@pytest.mark.parametrize("backend", ["torch", "auto"])
@pytest.mark.parametrize("n,dx,dy", [(4, 1, 3), (5, 3, 1), (97, 1000, 3), (97, 3, 1000)])
@pytest.mark.parametrize("unbiased", [True, False])
@pytest.mark.parametrize("kernel", ["linear", "rbf"])
def test_hsic_matches_reference_float64(rng, backend, n, dx, dy, unbiased, kernel):
    x = rng.standard_normal((n, dx)) + 1.5
    y = np.tanh(x @ rng.standard_normal((dx, dy))) + rng.standard_normal((n, dy))
    got = flashcka.hsic(torch.tensor(x), torch.tensor(y), kernel=kernel, unbiased=unbiased,
                        backend=backend)
    assert got.dtype == torch.float64
    want = ref.hsic(x, y, kernel, unbiased)
    np.testing.assert_allclose(got.item(), want, rtol=1e-9, atol=1e-12 * abs(want) + 1e-300)


def test_song_formula_equals_u_centered_inner_product(rng):
    for n in (4, 5, 23):
        a, b = rng.standard_normal((n, 3)), rng.standard_normal((n, 5))
        k, l = ref.gram_linear(a), ref.gram_rbf(b)
        np.testing.assert_allclose(ref.hsic_song(k, l), ref.hsic_ucentered(k, l), rtol=1e-10)


@pytest.mark.parametrize("route", ["gram", "feature"])
def test_hsic_routes_agree(rng, route):
    x, y = rng.standard_normal((50, 7)) + 3, rng.standard_normal((50, 4))
    for unbiased in (True, False):
        got = flashcka.cka_matrix([torch.tensor(x)], [torch.tensor(y)], unbiased=unbiased,
                                  route=route)[0, 0].item()
        np.testing.assert_allclose(got, ref.cka(x, y, unbiased=unbiased), rtol=1e-10)
