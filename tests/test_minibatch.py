"""MinibatchCKA against the float64 reference of Nguyen et al. 2021's estimator."""
import numpy as np
import pytest
import torch

import flashcka
import reference as ref


def batches(rng, sizes, dims, latent_dim=5):
    """Per batch, a list of layers (n_b, d) that share a latent."""
    out = []
    ws = [rng.standard_normal((latent_dim, d)) for d in dims]
    for n in sizes:
        z = rng.standard_normal((n, latent_dim))
        out.append([np.tanh(z @ w) + 0.5 * rng.standard_normal((n, w.shape[1])) + 1 for w in ws])
    return out


def t(layers):
    return [torch.tensor(a) for a in layers]


@pytest.mark.parametrize("kernel", ["linear", "rbf"])
def test_one_batch_equals_debiased_cka(rng, kernel):
    [xa] = batches(rng, [40], [3, 8])
    [xb] = batches(rng, [40], [5])
    m = flashcka.MinibatchCKA(2, 1, kernel=kernel)
    m.update(t(xa), t(xb))
    want = flashcka.cka_matrix(t(xa), t(xb), kernel=kernel)
    assert torch.allclose(m.compute(), want, rtol=1e-12)
    assert m.num_batches == 1 and m.num_samples == 40


@pytest.mark.parametrize("unbiased", [True, False])
@pytest.mark.parametrize("kernel", ["linear", "rbf"])
def test_unequal_batches_equal_reference(rng, unbiased, kernel):
    sizes = [4, 97, 5, 33]
    bx = batches(rng, sizes, [1, 3, 40])
    by = batches(rng, sizes, [7, 2])
    m = flashcka.MinibatchCKA(3, 2, kernel=kernel, unbiased=unbiased)
    for x, y in zip(bx, by):
        m.update(t(x), t(y))
    want = ref.minibatch_cka(bx, by, kernel, unbiased)
    np.testing.assert_allclose(m.compute().numpy(), want, rtol=1e-9)
    assert m.num_samples == sum(sizes)


def test_self_comparison_uses_one_model(rng):
    bx = batches(rng, [20, 31], [4, 9, 2])
    m = flashcka.MinibatchCKA(3)
    for x in bx:
        m.update(t(x))
    np.testing.assert_allclose(m.compute().numpy(), ref.minibatch_cka(bx, bx), rtol=1e-9)


def test_state_dict_round_trip_then_more_updates(rng, tmp_path):
    bx, by = batches(rng, [30, 30, 17, 30], [5, 6]), batches(rng, [30, 30, 17, 30], [3])
    whole = flashcka.MinibatchCKA(2, 1, names_a=["p", "q"])
    for x, y in zip(bx, by):
        whole.update(t(x), t(y))
    first = flashcka.MinibatchCKA(2, 1, names_a=["p", "q"])
    for x, y in zip(bx[:2], by[:2]):
        first.update(t(x), t(y))
    torch.save(first.state_dict(), tmp_path / "state.pt")
    resumed = flashcka.MinibatchCKA(2, 1, names_a=["p", "q"])
    resumed.load_state_dict(torch.load(tmp_path / "state.pt"))
    for x, y in zip(bx[2:], by[2:]):
        resumed.update(t(x), t(y))
    assert torch.equal(resumed.compute(), whole.compute())
    assert resumed.num_batches == 4 and resumed.names_a == ["p", "q"]


def test_load_state_dict_refuses_other_settings(rng):
    m = flashcka.MinibatchCKA(2, 1)
    with pytest.raises(ValueError, match="settings"):
        flashcka.MinibatchCKA(2, 1, kernel="rbf").load_state_dict(m.state_dict())


def test_failed_update_keeps_batches(rng):
    bx, by = batches(rng, [25, 25], [4]), batches(rng, [25, 25], [3])
    m = flashcka.MinibatchCKA(1, 1)
    m.update(t(bx[0]), t(by[0]))
    before = m.compute().clone()
    bad = t(by[1])
    bad[0][3, 1] = float("nan")
    with pytest.raises(ValueError, match="non-finite"):
        m.update(t(bx[1]), bad)
    assert m.num_batches == 1 and torch.equal(m.compute(), before)


def test_float32_accumulates_in_float64(rng):
    bx, by = batches(rng, [64] * 3, [300]), batches(rng, [64] * 3, [200])
    m = flashcka.MinibatchCKA(1, 1)
    for x, y in zip(bx, by):
        m.update([torch.tensor(x[0], dtype=torch.float32)], [torch.tensor(y[0]).float()])
    assert m.cross.dtype == torch.float64
    np.testing.assert_allclose(m.compute().numpy(), ref.minibatch_cka(bx, by), atol=1e-5)


def test_all_reduce_single_rank(rng, tmp_path):
    import torch.distributed as dist
    dist.init_process_group("gloo", init_method=f"file://{tmp_path}/pg", rank=0, world_size=1)
    try:
        bx, by = batches(rng, [20], [4]), batches(rng, [20], [3])
        m = flashcka.MinibatchCKA(1, 1)
        m.update(t(bx[0]), t(by[0]))
        before = m.compute()
        m.all_reduce()
        assert torch.equal(m.compute(), before) and m.num_batches == 1
    finally:
        dist.destroy_process_group()
