"""flashcka.integrations.torchmetrics.MinibatchCKA: states are flashcka's accumulators,
sum-reduced, so merged/synchronised metrics give the minibatch CKA of all batches."""
import numpy as np
import pytest
import torch

import flashcka
import reference


def _tm():
    try:      # the registry's torchvision needs its op schemas next to the CPU torch
        from hub_models import load_torchvision
        load_torchvision()
    except ImportError:
        pass
    pytest.importorskip("torchmetrics")
    from flashcka.integrations import torchmetrics as integ
    return integ


def batches(rng, sizes, dims_a=(3, 17), dims_b=(5,), dtype=torch.float32):
    out = []
    for n in sizes:
        z = rng.standard_normal((n, 4))
        mk = lambda d: torch.tensor(np.tanh(z @ rng.standard_normal((4, d))) +  # noqa: E731
                                    0.5 * rng.standard_normal((n, d)) + 2.0, dtype=dtype)
        out.append(([mk(d) for d in dims_a], [mk(d) for d in dims_b]))
    return out


def ref(bs):
    return reference.minibatch_cka([[x.double().numpy() for x in a] for a, _ in bs],
                                   [[y.double().numpy() for y in b] for _, b in bs])


def test_equals_flashcka_and_reference(rng):
    integ = _tm()
    bs = batches(rng, [16, 5, 33])
    m = integ.MinibatchCKA(2, 1, names_a=["p", "q"], names_b=["r"])
    plain = flashcka.MinibatchCKA(2, 1)
    for xa, xb in bs:
        m.update(xa, xb)
        plain.update(xa, xb)
    got = m.compute()
    assert got.dtype == torch.float64 and got.shape == (2, 1)
    torch.testing.assert_close(got, plain.compute(), rtol=1e-12, atol=0)
    np.testing.assert_allclose(got.numpy(), ref(bs), rtol=0, atol=2e-6)
    assert m.names_a == ["p", "q"] and int(m.num_samples) == 54 and int(m.num_batches) == 3
    assert set(m._reductions) >= {"cross", "hsic_a", "hsic_b", "sq_c_a", "sq_a", "sq_c_b",
                                  "sq_b", "num_batches", "num_samples"}
    m.reset()
    with pytest.raises(RuntimeError, match="before any update"):
        m.compute()


def test_merge_state_is_all_batches(rng):
    integ = _tm()
    bs = batches(rng, [12, 9, 20, 7])
    m1, m2 = integ.MinibatchCKA(2, 1), integ.MinibatchCKA(2, 1)
    for xa, xb in bs[:2]:
        m1.update(xa, xb)
    for xa, xb in bs[2:]:
        m2.update(xa, xb)
    m1.merge_state(m2)
    np.testing.assert_allclose(m1.compute().numpy(), ref(bs), rtol=0, atol=2e-6)


def test_forward_gives_batch_value_and_accumulates(rng):
    integ = _tm()
    bs = batches(rng, [15, 21])
    m = integ.MinibatchCKA(2, 1)
    first = m(*bs[0])
    np.testing.assert_allclose(first.numpy(), ref(bs[:1]), rtol=0, atol=2e-6)
    m(*bs[1])
    np.testing.assert_allclose(m.compute().numpy(), ref(bs), rtol=0, atol=2e-6)


def test_self_comparison_and_bad_batch_adds_nothing(rng):
    integ = _tm()
    bs = batches(rng, [10, 14])
    m = integ.MinibatchCKA(2)
    m.update(bs[0][0])
    before = m.cross.clone()
    with pytest.raises(ValueError, match="samples"):
        m.update([bs[1][0][0], bs[0][0][1]])
    torch.testing.assert_close(m.cross, before, rtol=0, atol=0)
    m.update(bs[1][0])
    want = reference.minibatch_cka([[x.double().numpy() for x in a] for a, _ in bs],
                                   [[x.double().numpy() for x in a] for a, _ in bs])
    np.testing.assert_allclose(m.compute().numpy(), want, rtol=0, atol=2e-6)
    with pytest.raises(ValueError, match="jackknife"):
        integ.MinibatchCKA(2, jackknife=4)


def test_ddp_sync_reduces_by_sum(rng):
    """torchmetrics' own sync path (what DDP runs in compute()), with a stand-in gather
    that returns this rank's state and a second rank's: the result is the CKA of both
    ranks' batches."""
    integ = _tm()
    bs = batches(rng, [11, 8, 13, 6])
    other = integ.MinibatchCKA(2, 1)
    for xa, xb in bs[2:]:
        other.update(xa, xb)
    theirs = iter([getattr(other, k) for k in other._reductions])
    calls = []

    def gather(t, group=None):
        calls.append(1)
        return [t, next(theirs)]

    m = integ.MinibatchCKA(2, 1, dist_sync_fn=gather, distributed_available_fn=lambda: True)
    for xa, xb in bs[:2]:
        m.update(xa, xb)
    got = m.compute()
    assert len(calls) == len(other._reductions)
    np.testing.assert_allclose(got.numpy(), ref(bs), rtol=0, atol=2e-6)
    assert int(m.num_batches) == 2          # states are restored after the synced compute


def test_dict_after_sequence_batches_raises_as_plain_does(rng):
    """update() must not forget the earlier batches' layer order: a dict after sequence
    batches had its keys adopted, which swapped the layers silently."""
    integ = _tm()
    bs = batches(rng, [16, 16, 16], dims_a=(3, 17), dims_b=(5,))
    m, plain = integ.MinibatchCKA(2, 1), flashcka.MinibatchCKA(2, 1)
    for xa, xb in bs[:2]:
        m.update(xa, xb)
        plain.update(xa, xb)
    before = m.compute().clone()
    xa, xb = bs[2]
    swapped = {"q": xa[1], "p": xa[0]}
    for metric in (plain, m):
        with pytest.raises(ValueError, match="earlier batches were sequences"):
            metric.update(swapped, {"r": xb[0]})
    assert int(m.num_batches) == 2 and torch.equal(m.compute(), before)


def test_dict_batches_matched_by_key_across_updates(rng):
    integ = _tm()
    bs = batches(rng, [16, 20], dims_a=(3, 17), dims_b=(5,))
    m = integ.MinibatchCKA(2, 1)
    (a0, b0), (a1, b1) = bs
    m.update({"p": a0[0], "q": a0[1]}, {"r": b0[0]})
    m.update({"q": a1[1], "p": a1[0]}, {"r": b1[0]})       # other key order
    np.testing.assert_allclose(m.compute().numpy(), ref(bs), rtol=0, atol=2e-6)
    assert m.names_a == ["p", "q"]


def test_out_of_float64_range_raises_clearly(rng):
    integ = _tm()
    (xa, xb), = batches(rng, [16], dims_a=(3,), dims_b=(5,), dtype=torch.float64)
    m = integ.MinibatchCKA(1, 1)
    with pytest.raises(ValueError, match="outside float64's range|leaves float64's range"):
        m.update([xa[0] * 1e80], [xb[0]])
    assert int(m.num_batches) == 0
