"""compare_many: minibatch CKA over every pair of hooked layers of several models equals the
float64 reference (and compare() on each pair of models), one forward per model per batch;
resume and torch.distributed as compare has them."""
import textwrap

import numpy as np
import pytest
import torch

import reference as ref
from ranks import run_two_ranks, write_module
from flashcka import CKAResult, compare
from flashcka.models.many import compare_many

NETS = textwrap.dedent("""
    import torch
    from torch import nn

    def nets():
        out = {}
        for i, (d, h) in enumerate(((6, 9), (6, 5), (6, 13))):
            torch.manual_seed(i)
            out[f"m{i}"] = nn.Sequential(nn.Linear(d, h), nn.GELU(), nn.Linear(h, 7),
                                         nn.Tanh(), nn.Linear(7, 3)).double()
        return out

    def loader(sizes=(12, 17, 9, 20, 14), d=6):
        g = torch.Generator().manual_seed(3)
        return [(torch.randn(n, d, generator=g, dtype=torch.float64) + 1.5, torch.zeros(n))
                for n in sizes]
""")


@pytest.fixture
def nets(tmp_path):
    return write_module(tmp_path, "many_nets", NETS)


def _acts(models, batches, layers):
    """Each batch's activations of each model's layers, in float64, by plain forward hooks."""
    out = []
    for x, _ in batches:
        acts = []
        for name, m in models.items():
            got = {}
            hs = [dict(m.named_modules())[lay].register_forward_hook(
                lambda mod, i, o, lay=lay: got.__setitem__(lay, o.detach().numpy()))
                for lay in layers]
            with torch.no_grad():
                m(x)
            for h in hs:
                h.remove()
            acts += [got[lay] for lay in layers]
        out.append(acts)
    return out


@pytest.mark.parametrize("kernel,unbiased", [("linear", True), ("linear", False),
                                             ("rbf", True)])
def test_every_pair_of_every_model_equals_the_reference(nets, kernel, unbiased):
    models, batches = nets.nets(), nets.loader()
    calls = {n: 0 for n in models}
    for n, m in models.items():
        m.register_forward_pre_hook(lambda mod, a, n=n: calls.__setitem__(n, calls[n] + 1))
    layers = ["0", "2", "4"]
    r = compare_many(models, batches, layers=layers, kernel=kernel, unbiased=unbiased,
                     sigma=1.3 if kernel == "rbf" else None, progress=False)
    assert calls == {n: len(batches) for n in models}       # one forward a batch
    names = [f"{n}/{lay}" for n in models for lay in layers]
    assert r.names_a == names and r.names_b == names
    acts = _acts(models, batches, layers)
    want = ref.minibatch_cka(acts, acts, kernel, unbiased, 1.3 if kernel == "rbf" else None)
    np.testing.assert_allclose(r.matrix.numpy(), want, rtol=1e-10, atol=1e-12)
    assert r.num_batches == 5 and r.num_samples == 72 and r.stderr is not None
    # the block of two models is compare()'s result, stderr included
    two = compare(models["m0"], models["m2"], batches, layers_a=layers, layers_b=layers,
                  kernel=kernel, unbiased=unbiased, sigma=1.3 if kernel == "rbf" else None,
                  progress=False)
    np.testing.assert_allclose(r.matrix[:3, 6:].numpy(), two.matrix.numpy(), rtol=1e-12,
                               atol=1e-13)
    np.testing.assert_allclose(r.stderr[:3, 6:].numpy(), two.stderr.numpy(), rtol=1e-9,
                               atol=1e-13)


def test_per_model_layers_tokens_and_inputs(nets):
    models, batches = nets.nets(), nets.loader()
    dict_batches = [{"x": x} for x, _ in batches]
    r = compare_many(models, dict_batches, layers={"m0": ["0"], "m1": ["2", "4"], "m2": "4"},
                     inputs={"m0": lambda b: b["x"], "m1": lambda b: b["x"],
                             "m2": lambda b: b["x"]}, progress=False)
    assert r.names_a == ["m0/0", "m1/2", "m1/4", "m2/4"]
    with pytest.raises(ValueError, match=r"layers names models \['zz'\] that are not in models"):
        compare_many(models, batches, layers={"zz": "0"}, progress=False)
    with pytest.raises(ValueError, match="model names must be non-empty strings without '/'"):
        compare_many({"a/b": models["m0"]}, batches, progress=False)
    with pytest.raises(TypeError, match=r"models\['m1'\] must be a torch.nn.Module"):
        compare_many({"m0": models["m0"], "m1": 3}, batches, progress=False)


def test_resume_gives_the_numbers_of_an_uninterrupted_run(nets, tmp_path):
    models, batches = nets.nets(), nets.loader()
    want = compare_many(models, batches, progress=False)

    class Stops:
        def __init__(self):
            self.armed = True

        def __len__(self):
            return len(batches)

        def __iter__(self):
            for b, batch in enumerate(batches):
                if self.armed and b == 3:
                    self.armed = False
                    raise KeyboardInterrupt
                yield batch
    stops = Stops()
    ck = tmp_path / "many.ckpt"
    with pytest.raises(KeyboardInterrupt, match="resume from batch 2"):
        compare_many(models, stops, checkpoint=ck, checkpoint_every=2, progress=False)
    ran = []
    models["m1"].register_forward_pre_hook(lambda m, a: ran.append(a[0].shape[0]))
    got = compare_many(models, stops, checkpoint=ck, checkpoint_every=2, progress=False)
    assert ran == [9, 20, 14]                                # batches 2, 3, 4 only
    assert got.names_a == want.names_a
    np.testing.assert_array_equal(got.matrix.numpy(), want.matrix.numpy())
    with pytest.raises(ValueError, match="other arguments"):
        compare_many(models, batches, checkpoint=ck, kernel="rbf", progress=False)


WORKER = """
    from many_nets import nets, loader
    from flashcka.models.many import compare_many
    compare_many(nets(), loader(), shard=True, progress=False).save(out)
"""


def test_two_ranks_equal_one_process(nets, tmp_path):
    want = compare_many(nets.nets(), nets.loader(), progress=False)
    for path in run_two_ranks(tmp_path, WORKER):
        got = CKAResult.load(path)
        assert got.names_a == want.names_a and got.num_batches == 5
        np.testing.assert_allclose(got.matrix.numpy(), want.matrix.numpy(), rtol=0, atol=1e-12)
