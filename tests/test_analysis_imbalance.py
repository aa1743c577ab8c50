"""information_imbalance against loops over Glielmo et al. 2022's definition (float64)."""
import numpy as np
import pytest
import torch

from flashcka.analysis import information_imbalance


def _ranks(x):
    """r[i][j]: rank of j among i's neighbours by (distance, index), i itself rank 0."""
    n = len(x)
    r = [[0] * n for _ in range(n)]
    for i in range(n):
        others = sorted((float(np.sum((x[i] - x[j]) ** 2)), j) for j in range(n) if j != i)
        for pos, (_, j) in enumerate(others):
            r[i][j] = pos + 1
    return r


def _ref_delta(xa, xb, k):
    n = len(xa)
    ra, rb = _ranks(xa), _ranks(xb)
    total = 0
    for i in range(n):
        nn = sorted((ra[i][j], j) for j in range(n) if j != i)[:k]
        total += sum(rb[i][j] for _, j in nn)
    return 2.0 / n * total / (n * k)


@pytest.mark.parametrize("n,k", [(5, 1), (23, 1), (37, 3), (41, 7)])
def test_matches_definition(rng, n, k):
    z = rng.standard_normal((n, 3))
    xs = [np.tanh(z @ rng.standard_normal((3, d))) + 0.1 * rng.standard_normal((n, d))
          for d in (1, 4, 9)]
    ys = [z[:, :1] ** 2 + rng.standard_normal((n, 1)), rng.standard_normal((n, 2, 3))]
    fwd, bwd = information_imbalance([torch.tensor(x) for x in xs],
                                     [torch.tensor(y) for y in ys], k=k, tile=4)
    assert fwd.shape == (3, 2) and bwd.shape == (3, 2) and fwd.dtype == torch.float64
    for a, x in enumerate(xs):
        for b, y in enumerate(ys):
            y2 = y.reshape(n, -1)
            assert float(fwd[a, b]) == pytest.approx(_ref_delta(x, y2, k), rel=1e-12)
            assert float(bwd[a, b]) == pytest.approx(_ref_delta(y2, x, k), rel=1e-12)


def test_self_and_default_tile(rng):
    n = 31
    xs = {"a": torch.tensor(rng.standard_normal((n, 5))),
          "b": torch.tensor(rng.standard_normal((n, 2)))}
    fwd, bwd = information_imbalance(xs, k=2)
    torch.testing.assert_close(bwd, fwd.T, rtol=0, atol=0)
    # a space predicts itself perfectly: its k nearest neighbours have ranks 1..k
    expect = 2.0 / n * (1 + 2) / 2          # 2/n times the mean rank
    assert float(fwd[0, 0]) == pytest.approx(expect, rel=1e-12)
    ref = _ref_delta(xs["a"].numpy(), xs["b"].numpy(), 2)
    assert float(fwd[0, 1]) == pytest.approx(ref, rel=1e-12)


def test_from_grams(rng):
    xs = [torch.tensor(rng.standard_normal((29, d))) for d in (2, 6)]
    ys = [torch.tensor(rng.standard_normal((29, 3)))]
    a = information_imbalance(xs, ys, k=2)
    b = information_imbalance([x @ x.T for x in xs], [y @ y.T for y in ys], k=2, grams=True)
    for u, v in zip(a, b):
        torch.testing.assert_close(u, v, rtol=0, atol=1e-15)
    with pytest.raises(ValueError, match=r"\(n, n\) = \(29, 29\)"):
        information_imbalance(xs, grams=True)


def test_ties_follow_index_order():
    # duplicates and equidistant points: order by (distance, index), self first
    x = torch.tensor([[0.0], [0.0], [1.0], [-1.0], [2.0], [0.0]], dtype=torch.float64)
    y = torch.tensor([[0.0], [3.0], [1.0], [5.0], [2.0], [7.0]], dtype=torch.float64)
    fwd, bwd = information_imbalance([x], [y])
    assert float(fwd[0, 0]) == pytest.approx(_ref_delta(x.numpy(), y.numpy(), 1), rel=1e-12)
    assert float(bwd[0, 0]) == pytest.approx(_ref_delta(y.numpy(), x.numpy(), 1), rel=1e-12)


def test_float32_matches_float64_on_separated_data(rng):
    x = torch.tensor(rng.standard_normal((60, 8)) + 100.0)   # large mean: centering matters
    y = torch.tensor(rng.standard_normal((60, 3)))
    f64 = information_imbalance([x], [y])
    f32 = information_imbalance([x.float()], [y.float()])
    torch.testing.assert_close(f32[0], f64[0], rtol=0, atol=2.0 / 60 / 60 * 2)


def test_errors(rng):
    x = torch.randn(10, 3)
    with pytest.raises(ValueError, match="k must be an int"):
        information_imbalance([x], k=0)
    with pytest.raises(ValueError, match="k = 10"):
        information_imbalance([x], k=10)
    with pytest.raises(ValueError, match="samples"):
        information_imbalance([x], [torch.randn(9, 3)])
    with pytest.raises(TypeError, match="dtype"):
        information_imbalance([torch.ones(10, 3, dtype=torch.int64)])
    with pytest.raises(ValueError, match="non-finite"):
        information_imbalance([torch.full((10, 2), float("nan"))])
