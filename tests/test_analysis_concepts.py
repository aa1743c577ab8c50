"""fuzzy_rand_index / concept_pair_disagreement against loops over Hüllermeier et al.
2012's definition and the documented partition (float64)."""
import math

import numpy as np
import pytest
import torch

from flashcka.analysis import concept_pair_disagreement, fuzzy_rand_index


def _E(x, i, j, measure):
    if measure == "l1":
        return 1 - sum(abs(x[i][a] - x[j][a]) for a in range(len(x[i]))) / 2
    dot = sum(x[i][a] * x[j][a] for a in range(len(x[i])))
    return dot / math.sqrt(sum(t * t for t in x[i]) * sum(t * t for t in x[j]))


def _ref(u, v, measure):
    n = len(u)
    ca, cb = len(u[0]), len(v[0])
    p = [[t / sum(row) for t in row] for row in u]
    q = [[t / sum(row) for t in row] for row in v]
    total = 0.0
    dis = [[0.0] * cb for _ in range(ca)]
    weight = [[0.0] * cb for _ in range(ca)]
    for i in range(n):
        for j in range(i + 1, n):
            d = abs(_E(u, i, j, measure) - _E(v, i, j, measure))
            total += d
            for a in range(ca):
                for b in range(cb):
                    w = (p[i][a] * q[i][b] + p[j][a] * q[j][b]) / 2
                    dis[a][b] += w * d
                    weight[a][b] += w
    pairs = n * (n - 1) / 2
    return (1 - total / pairs, [[x / pairs for x in r] for r in dis],
            [[x / pairs for x in r] for r in weight])


def _fuzzy(rng, n, c, sharp=3.0):
    z = np.exp(sharp * rng.standard_normal((n, c)))
    return z / z.sum(1, keepdims=True)


@pytest.mark.parametrize("measure", ["l1", "cosine"])
@pytest.mark.parametrize("n,ca,cb,tile", [(2, 1, 2, 1), (13, 3, 5, 4), (31, 4, 2, 7), (40, 6, 3, 2048)])
def test_matches_definition(rng, measure, n, ca, cb, tile):
    u, v = _fuzzy(rng, n, ca), _fuzzy(rng, n, cb)
    if n > 3:
        v[3, :] = 0                              # a point with a hard membership
        v[3, 0] = 1
    r, dis, weight = _ref(u.tolist(), v.tolist(), measure)
    got = fuzzy_rand_index(torch.tensor(u), torch.tensor(v), measure=measure, tile=tile)
    assert got == pytest.approx(r, rel=1e-12, abs=1e-14)
    part = concept_pair_disagreement(torch.tensor(u), torch.tensor(v), measure=measure, tile=tile)
    np.testing.assert_allclose(part["disagreement"].numpy(), dis, rtol=1e-10, atol=1e-15)
    np.testing.assert_allclose(part["weight"].numpy(), weight, rtol=1e-10, atol=1e-15)
    assert float(part["disagreement"].sum()) == pytest.approx(1 - r, rel=1e-10, abs=1e-14)
    assert float(part["weight"].sum()) == pytest.approx(1.0, rel=1e-12)


def test_float32_close_to_float64(rng):
    u, v = _fuzzy(rng, 300, 7), _fuzzy(rng, 300, 9)
    r64 = fuzzy_rand_index(torch.tensor(u), torch.tensor(v), tile=64)
    r32 = fuzzy_rand_index(torch.tensor(u, dtype=torch.float32),
                           torch.tensor(v, dtype=torch.float32), tile=64)
    assert abs(r32 - r64) < 1e-6


def test_hard_partitions_give_rand_index(rng):
    # one-hot memberships: the fuzzy index is the classical Rand index (Rand 1971)
    n = 25
    a, b = rng.integers(0, 3, n), rng.integers(0, 4, n)
    u, v = np.eye(3)[a], np.eye(4)[b]
    agree = sum((a[i] == a[j]) == (b[i] == b[j]) for i in range(n) for j in range(i + 1, n))
    assert fuzzy_rand_index(torch.tensor(u), torch.tensor(v)) == pytest.approx(
        agree / (n * (n - 1) / 2), rel=1e-12)


def test_normalize_and_errors(rng):
    u = torch.tensor(rng.uniform(0.1, 1, (9, 3)))
    v = torch.tensor(_fuzzy(rng, 9, 2))
    with pytest.raises(ValueError, match="rows must sum to 1"):
        fuzzy_rand_index(u, v)
    a = fuzzy_rand_index(u, v, normalize=True)
    b = fuzzy_rand_index(u / u.sum(1, keepdim=True), v)
    assert a == pytest.approx(b, rel=1e-12)
    fuzzy_rand_index(u, v, measure="cosine")                 # no sum constraint
    with pytest.raises(ValueError, match="measure"):
        fuzzy_rand_index(v, v, measure="l2")
    with pytest.raises(ValueError, match="negative"):
        fuzzy_rand_index(-v, v)
    with pytest.raises(ValueError, match="v row 2 is all zero"):
        w = v.clone()
        w[2] = 0
        fuzzy_rand_index(v, w, measure="cosine")
    with pytest.raises(ValueError, match="samples"):
        fuzzy_rand_index(v, v[:5])
    with pytest.raises(ValueError, match=r"\(n, concepts\)"):
        fuzzy_rand_index(v[:, 0], v)
    with pytest.raises(TypeError, match="dtype"):
        fuzzy_rand_index(v.long(), v)
    with pytest.raises(ValueError, match="non-finite"):
        w = v.clone()
        w[0, 0] = float("nan")
        fuzzy_rand_index(w, v)
