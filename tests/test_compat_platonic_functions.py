"""platonic-rep metrics.py's module-level functions in flashcka.compat.platonic, used as
metrics.py and measure_alignment.py (prepare_features, compute_score) use them, against the
float64 formulas written out in test_compat_platonic.py (metrics.py is not a package; its
formulas are read from github.com/minyoungg/platonic-rep), and the adapter's documented
differences (stricter checks, 3-D features) measured."""
import inspect

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from flashcka.compat import platonic as P
from flashcka.compat.platonic import AlignmentMetrics as M
from test_compat_platonic import (hsic_biased, hsic_unbiased, pair, ref_cka, ref_cycle,
                                  ref_edit, ref_knn, ref_lcs, ref_mutual)

T = torch.tensor


def _bound(k, l):
    """32 eps times the size of the terms of the HSIC formulas (their float64 rounding)."""
    n = k.shape[0]
    return 32 * np.finfo(np.float64).eps * (
        np.linalg.norm(k) * np.linalg.norm(l) + abs(k).sum() * abs(l).sum() / n
        + 2 * np.linalg.norm(k.sum(0)) * np.linalg.norm(l.sum(1)))


def test_names_and_signatures():
    want = {"hsic_unbiased": "(K, L)", "hsic_biased": "(K, L)",
            "compute_knn_accuracy": "(knn)", "compute_nearest_neighbors": "(feats, topk=1)",
            "longest_ordinal_sequence": "(X, Y)", "compute_distance": "(X, Y, dist_fn)",
            "remove_outliers": "(feats, q, exact=False, max_threshold=None)"}
    for name, sig in want.items():
        assert name in P.__all__
        assert str(inspect.signature(getattr(P, name))) == sig, name


@pytest.mark.parametrize("n", [4, 7, 60])
def test_hsic_functions_symmetric_and_masked(rng, n):
    a, b = pair(rng, n, 5, 9)
    k, l = a @ a.T, b @ b.T
    mask = (rng.uniform(size=(n, n)) < 0.5).astype(float)       # CKNNA's non-symmetric use
    for kk, ll in ((k, l), (mask * k, mask * l)):
        got = P.hsic_unbiased(T(kk), T(ll))
        assert got.dim() == 0 and got.dtype == torch.float64
        assert abs(got.item() - hsic_unbiased(kk, ll)) <= _bound(kk, ll) / (n * (n - 3))
        got = P.hsic_biased(T(kk), T(ll))
        assert got.dim() == 0 and got.dtype == torch.float64
        assert abs(got.item() - hsic_biased(kk, ll)) <= _bound(kk, ll)
    got32 = P.hsic_unbiased(T(k).float(), T(l).float())
    assert got32.dtype == torch.float32
    want32 = hsic_unbiased(T(k).float().double().numpy(), T(l).float().double().numpy())
    assert abs(got32.item() - want32) <= 2 * np.finfo(np.float32).eps * abs(want32) + \
        _bound(k, l) / (n * (n - 3))


def test_hsic_functions_errors():
    with pytest.raises(ValueError, match="hsic_unbiased needs m >= 4"):
        P.hsic_unbiased(torch.eye(3), torch.eye(3))
    with pytest.raises(ValueError, match="L must be a square"):
        P.hsic_biased(torch.eye(3), torch.ones(3, 2))
    with pytest.raises(ValueError, match="differ in shape"):
        P.hsic_biased(torch.eye(5), torch.eye(4))


@pytest.mark.parametrize("n,d,topk", [(5, 3, 1), (40, 8, 5), (97, 30, 10)])
def test_nearest_neighbours_and_knn_accuracy(rng, n, d, topk):
    a, b = pair(rng, n, d, d + 2)
    knn_a, knn_b = P.compute_nearest_neighbors(T(a), topk), P.compute_nearest_neighbors(T(b), topk)
    assert knn_a.dtype == torch.int64 and knn_a.shape == (n, topk)
    np.testing.assert_array_equal(knn_a.numpy(), ref_knn(a, topk))
    acc = P.compute_knn_accuracy(knn_a[knn_b])                   # cycle_knn's (n, k, k) use
    assert acc.dim() == 0 and acc.dtype == torch.float32
    assert abs(acc.item() - ref_cycle(a, b, topk)) <= 1e-6
    assert P.compute_nearest_neighbors(T(a)).shape == (n, 1)     # default topk=1


def test_knn_accuracy_of_a_2d_table_is_row_wise():
    """Row i scores when it holds i. The original broadcasts (n, k) against (n, 1, 1) and
    scores i when i appears anywhere in the table: 2/3 here, where no row holds itself."""
    knn = torch.tensor([[1], [0], [0]])
    assert P.compute_knn_accuracy(knn).item() == 0.0
    anywhere = np.mean([np.isin(i, knn.numpy()) for i in range(3)])
    assert anywhere == pytest.approx(2 / 3)
    assert P.compute_knn_accuracy(torch.tensor([[0, 2], [0, 1], [1, 0]])).item() == \
        pytest.approx(2 / 3)
    with pytest.raises(ValueError, match="knn must be an integer tensor"):
        P.compute_knn_accuracy(torch.rand(3, 2))


def test_nearest_neighbours_errors():
    with pytest.raises(ValueError, match="Expected feats to be 2D"):
        P.compute_nearest_neighbors(torch.randn(6, 2, 3), 2)
    with pytest.raises(ValueError, match=r"topk must be an int in \[1, 5\]"):
        P.compute_nearest_neighbors(torch.randn(6, 3), 6)


def test_sequences_lcs_and_distance(rng):
    a, b = pair(rng, 30, 6, 6)
    x, y = P.compute_nearest_neighbors(T(a), 6), P.compute_nearest_neighbors(T(b), 6)
    lcs = P.longest_ordinal_sequence(x, y)
    assert lcs.dtype == torch.float64 and lcs.shape == (30,)
    np.testing.assert_array_equal(lcs.numpy(), [ref_lcs(p, q) for p, q in zip(x.numpy(),
                                                                             y.numpy())])
    dist = P.compute_distance(x, y, ref_edit)
    assert dist.dtype == torch.float64
    np.testing.assert_array_equal(dist.numpy(), [ref_edit(p, q) for p, q in zip(x.numpy(),
                                                                               y.numpy())])
    assert M.edit_distance_knn(T(a), T(b), 6).item() == pytest.approx(1 - dist.mean().item() / 6,
                                                                       abs=1e-12)
    with pytest.raises(ValueError, match="differ in shape"):
        P.compute_distance(x, y[:, :3], ref_edit)


@pytest.mark.parametrize("shape,q", [((16, 3, 40), 0.95), ((10, 50), 0.5), ((7, 2, 2), 0.0)])
def test_remove_outliers(rng, shape, q):
    f = T(rng.standard_normal(shape) * rng.uniform(0.1, 10, shape[-1])).float()
    a = np.abs(f.numpy().astype(np.float64))
    t_exact = np.sort(a.ravel())[int(q * a.size)]
    np.testing.assert_array_equal(P.remove_outliers(f, q, exact=True).numpy(),
                                  np.clip(f.numpy(), -t_exact, t_exact))
    t = np.quantile(a.reshape(shape[0], -1), q, axis=1).mean()
    got = P.remove_outliers(f, q)
    assert got.dtype == torch.float32 and got.shape == f.shape
    assert np.abs(got.numpy() - np.clip(f.numpy(), -t, t)).max() <= 4e-7 * t
    assert P.remove_outliers(f, 1) is f
    assert torch.equal(P.remove_outliers(f, q, max_threshold=0.01), got)   # no effect
    tq = torch.quantile(f.abs().flatten(start_dim=1), q, dim=1).mean()
    assert torch.equal(got, f.clamp(-tq, tq)) or abs(float(got.abs().max() - tq)) <= 4e-7 * t


def test_remove_outliers_beyond_torch_quantile_limit():
    """measure_alignment.prepare_features on samples of more than 2^24 values (L·D): the
    original's torch.quantile raises; here the same quantile, from kthvalue."""
    g = torch.Generator().manual_seed(0)
    f = torch.randn(1, 2 ** 24 + 8, generator=g)
    with pytest.raises(RuntimeError, match="too large"):
        torch.quantile(f.abs(), 0.95, dim=1)
    got = P.remove_outliers(f, 0.95)
    t = np.quantile(np.abs(f.numpy().astype(np.float64)), 0.95, axis=1).mean()
    assert abs(float(got.max()) - t) <= 1e-6 * t


def test_measure_alignment_usage(rng):
    """prepare_features(feats (N, L, D)) then compute_score over layer pairs, as
    measure_alignment.py does, with the adapter's functions."""
    x = T(rng.standard_normal((48, 3, 16))).float()
    y = T(rng.standard_normal((48, 2, 16))).float() + x[:, :2]
    px, py = P.remove_outliers(x, q=0.95), P.remove_outliers(y, q=0.95)
    best = (0, None)
    for i in range(px.shape[1]):
        for j in range(py.shape[1]):
            a, b = F.normalize(px[:, i, :], p=2, dim=-1), F.normalize(py[:, j, :], p=2, dim=-1)
            score = M.measure("mutual_knn", a, b, topk=10)
            assert abs(score - ref_mutual(a.double().numpy(), b.double().numpy(), 10)) < 1e-12
            best = max(best, (score, (i, j)), key=lambda s: s[0])
    assert best[1] in ((0, 0), (1, 1))


def test_stricter_checks_and_3d_features(rng):
    """Documented differences: topk = n and cca_dim = n raise (the original returns a
    value that includes i itself / a rank-deficient CCA); (n, T, C) features are flattened."""
    a, b = pair(rng, 12, 4, 5)
    with pytest.raises(ValueError, match="topk must be an int in"):
        M.mutual_knn(T(a), T(b), 12)
    with pytest.raises(ValueError, match="cca_dim"):
        M.svcca(T(a), T(b), cca_dim=12)
    a3 = rng.standard_normal((12, 2, 3))
    flat = a3.reshape(12, -1)
    assert abs(M.cka(T(a3), T(b)) - ref_cka(flat, b)) <= 1e-12
    assert M.mutual_knn(T(a3), T(b), 3) == pytest.approx(ref_mutual(flat, b, 3), abs=1e-12)
    assert M.cycle_knn(T(a3), T(b), 3) == pytest.approx(ref_cycle(flat, b, 3), abs=1e-12)
