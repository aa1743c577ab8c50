"""MinibatchCKA.all_reduce over two real ranks (gloo, file:// rendezvous, CPU processes):
each rank accumulates half of the batches; after all_reduce every rank's compute() equals
one process over all of them, and the float64 reference."""
import numpy as np
import pytest
import torch

import flashcka
import reference as ref
from ranks import run_two_ranks

WORKER = """
    import numpy as np
    import flashcka
    z = np.load(args[0], allow_pickle=True)
    bx, by = z["bx"], z["by"]
    m = flashcka.MinibatchCKA(len(bx[0]), len(by[0]), kernel=str(z["kernel"]),
                              unbiased=bool(z["unbiased"]))
    for b in range(rank, len(bx), world):    # this rank's share of the batches
        m.update([torch.tensor(a) for a in bx[b]], [torch.tensor(a) for a in by[b]])
    m.all_reduce()
    np.savez(out, cka=m.compute().numpy(), num_batches=m.num_batches,
             num_samples=m.num_samples)
"""


def _batches(rng, sizes, dims):
    ws = [rng.standard_normal((5, d)) for d in dims]
    out = []
    for n in sizes:
        z = rng.standard_normal((n, 5))
        out.append([np.tanh(z @ w) + 0.5 * rng.standard_normal((n, w.shape[1])) + 2
                    for w in ws])
    return out


@pytest.mark.parametrize("kernel,unbiased,scaled", [("linear", True, False),
                                                    ("rbf", False, False),
                                                    ("linear", False, True)])
def test_two_ranks_equal_one_process(rng, tmp_path, kernel, unbiased, scaled):
    """``scaled``: layer 0 at 1e120 on rank 0's batches and 1e-90 on rank 1's, layer 1 at
    1e-150: the ranks' per-layer units differ, all_reduce agrees on them first."""
    sizes = [16, 23, 9, 40, 31]                     # odd count: unequal shares per rank
    bx, by = _batches(rng, sizes, [3, 50, 7]), _batches(rng, sizes, [6, 2])
    if scaled:
        for b, layers in enumerate(bx):
            layers[0] = layers[0] * (1e120 if b % 2 == 0 else 1e-90)
            layers[1] = layers[1] * 1e-150
    data = tmp_path / "data.npz"

    def obj(bs):  # ragged (batches x layers) of arrays, as an object array
        a = np.empty((len(bs), len(bs[0])), dtype=object)
        for i, b in enumerate(bs):
            for j, layer in enumerate(b):
                a[i, j] = layer
        return a
    np.savez(data, bx=obj(bx), by=obj(by), kernel=kernel, unbiased=unbiased)
    outs = run_two_ranks(tmp_path, WORKER, str(data), suffix=".npz", timeout=180)
    one = flashcka.MinibatchCKA(3, 2, kernel=kernel, unbiased=unbiased)
    for x, y in zip(bx, by):
        one.update([torch.tensor(a) for a in x], [torch.tensor(a) for a in y])
    want = one.compute().numpy()
    for r in range(2):
        got = np.load(outs[r])
        assert int(got["num_batches"]) == len(sizes)
        assert int(got["num_samples"]) == sum(sizes)
        np.testing.assert_allclose(got["cka"], want, rtol=0, atol=1e-12)
    if scaled:      # (the one-process number at these scales: tests/test_minibatch.py)
        return
    # and the one-process number is the estimator's (not merely self-consistent)
    np.testing.assert_allclose(want, ref.minibatch_cka(bx, by, kernel, unbiased), rtol=1e-9,
                               atol=0)
