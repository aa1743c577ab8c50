"""Jackknife error bars of minibatch CKA against a float64 reference written from the
formula (leave each batch out, recompute minibatch CKA from scratch, Efron & Stein 1981)."""
import numpy as np
import pytest
import torch

import reference as ref
from conftest import realistic
from flashcka import MinibatchCKA
from flashcka.core.jackknife import BatchJackknife, auto_groups


def _batches(rng, sizes, la=3, lb=2):
    xs, ys = [], []
    for n in sizes:
        z = rng.standard_normal((n, 16))
        xs.append([realistic(rng, n, d, z, torch.float64) for d in (5, 40, 7)[:la]])
        ys.append([realistic(rng, n, d, z, torch.float64) for d in (30, 3)[:lb]])
    return xs, ys


def _jackknife_ref(xs, ys, unbiased=True, groups=None):
    k = len(xs)
    slots = list(range(k)) if groups is None else [b % groups for b in range(k)]
    used = sorted(set(slots))
    thetas = []
    for g in used:
        keep = [b for b in range(k) if slots[b] != g]
        thetas.append(ref.minibatch_cka([xs[b] for b in keep], [ys[b] for b in keep],
                                        unbiased=unbiased))
    t = np.stack(thetas)
    m = len(used)
    return np.sqrt((m - 1) / m * ((t - t.mean(0)) ** 2).sum(0))


@pytest.mark.parametrize("unbiased", [True, False])
def test_leave_one_batch_out_matches_reference(rng, unbiased):
    xs, ys = _batches(rng, [9, 13, 7, 11, 16])            # unequal batch sizes
    acc = MinibatchCKA(3, 2, unbiased=unbiased, jackknife=True, dtype=torch.float64)
    for x, y in zip(xs, ys):
        acc.update(x, y)
    want = _jackknife_ref(xs, ys, unbiased)
    got = acc.stderr().numpy()
    assert got.shape == (3, 2) and np.all(got > 1e-6)      # non-trivial error bars
    np.testing.assert_allclose(got, want, rtol=1e-9, atol=1e-14)


def test_groups_beyond_slot_count_are_delete_a_group(rng):
    xs, ys = _batches(rng, [8] * 7, la=2, lb=2)
    acc = MinibatchCKA(2, 2, jackknife=3, dtype=torch.float64)
    for x, y in zip(xs, ys):
        acc.update(x, y)
    np.testing.assert_allclose(acc.stderr().numpy(), _jackknife_ref(xs, ys, groups=3),
                               rtol=1e-9, atol=1e-14)


def test_same_model_diagonal_and_state_round_trip(rng):
    xs, _ = _batches(rng, [10, 12, 9])
    acc = MinibatchCKA(3, jackknife=True, dtype=torch.float64)
    for x in xs:
        acc.update(x)
    se = acc.stderr()
    np.testing.assert_allclose(se.diagonal().numpy(), 0.0, atol=1e-12)
    np.testing.assert_allclose(se.numpy(), _jackknife_ref(xs, xs), rtol=1e-9, atol=1e-14)
    other = MinibatchCKA(3, jackknife=True, dtype=torch.float64)
    other.load_state_dict(acc.state_dict())
    assert torch.equal(other.stderr(), se)
    plain = MinibatchCKA(3, dtype=torch.float64)
    with pytest.raises(ValueError, match="jackknife"):
        plain.load_state_dict(acc.state_dict())


def test_one_batch_gives_nan_and_off_gives_none(rng):
    xs, ys = _batches(rng, [10])
    acc = MinibatchCKA(3, 2, jackknife=True)
    acc.update(xs[0], ys[0])
    assert torch.isnan(acc.stderr()).all()
    off = MinibatchCKA(3, 2)
    off.update(xs[0], ys[0])
    assert off.stderr() is None and off.jackknife is None


def test_memory_budget_and_bad_arguments():
    assert auto_groups(10, 10) == 64
    assert auto_groups(1000, 1000) == 8          # 64 MiB budget: 8 slots of 8 MB
    assert auto_groups(4000, 4000) == 0          # even 2 slots exceed it: off
    assert auto_groups(3, 3, False) == 0 and auto_groups(3, 3, 5) == 5
    assert BatchJackknife(1000, 1000, 8).nbytes() <= 64 * 2 ** 20
    for bad in (1, -2, 2.5, "yes"):
        with pytest.raises(ValueError, match="jackknife"):
            MinibatchCKA(2, 2, jackknife=bad)
