"""compare(checkpoint=...): a run killed mid-way and started again with the same arguments
skips the batches already counted (no forward pass on them) and ends with exactly the
numbers of an uninterrupted run; the checkpoint is atomic and refuses other arguments."""
import os

import numpy as np
import pytest
import torch
from torch import nn

import reference as ref
from flashcka import compare


class Net(nn.Module):
    def __init__(self, seed, d=7):
        super().__init__()
        torch.manual_seed(seed)
        self.blocks = nn.Sequential(nn.Linear(d, 9), nn.Tanh(), nn.Linear(9, 5)).double()
        self.calls = 0

    def forward(self, x):
        self.calls += 1
        return self.blocks(x)


def _loader(sizes=(10, 13, 3, 11, 9, 12, 8), d=7, seed=5):
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(n, d, generator=g, dtype=torch.float64), torch.zeros(n))
            for n in sizes]


class Killed(RuntimeError):
    pass


def _dying(loader, at):
    for b, batch in enumerate(loader):
        if b == at:
            raise Killed(f"simulated kill at batch {b}")
        yield batch


KW = dict(layers_a=["blocks.0", "blocks.2"], layers_b=["blocks.1", "blocks.2"], progress=False)


@pytest.mark.parametrize("kill_at, every", [(5, 2), (1, 1), (6, 4)])
def test_killed_and_resumed_equals_uninterrupted(tmp_path, kill_at, every):
    loader = _loader()
    want = compare(Net(0), Net(1), loader, **KW)
    ck = tmp_path / "run.ckpt"
    a, b = Net(0), Net(1)
    with pytest.raises(Killed):
        compare(a, b, _dying(loader, kill_at), checkpoint=ck, checkpoint_every=every, **KW)
    assert ck.exists() or kill_at < every
    saved = torch.load(ck, weights_only=True) if ck.exists() else None
    a2, b2 = Net(0), Net(1)
    got = compare(a2, b2, loader, checkpoint=ck, checkpoint_every=every, **KW)
    # exactly the numbers of an uninterrupted run, error bars included
    assert torch.equal(got.matrix, want.matrix)
    assert torch.equal(got.stderr, want.stderr)
    assert got.num_batches == want.num_batches == 6 and got.num_samples == want.num_samples
    # the resumed run ran the models only on the batches not already counted
    done = 0 if saved is None else saved["next_batch"]
    assert a2.calls == sum(1 for i, (x, _) in enumerate(loader) if i >= done and len(x) >= 4)
    # and the numbers are right: the float64 reference over the usable batches
    use = [x for x, _ in loader if len(x) >= 4]
    with torch.no_grad():
        ra = [[Net(0).blocks[0](x), Net(0).blocks(x)] for x in use]
        rb = [[Net(1).blocks[1](Net(1).blocks[0](x)), Net(1).blocks(x)] for x in use]
    np.testing.assert_allclose(got.matrix.numpy(), ref.minibatch_cka(ra, rb), rtol=1e-10,
                               atol=1e-13)


def test_finished_checkpoint_gives_the_result_without_running_the_models(tmp_path):
    loader = _loader()
    ck = tmp_path / "done.ckpt"
    first = compare(Net(0), None, loader, checkpoint=ck, **KW)
    again = Net(0)
    second = compare(again, None, loader, checkpoint=ck, **KW)
    assert again.calls == 0 and second == first


def test_checkpoint_refuses_other_arguments_and_bad_files(tmp_path):
    loader = _loader()
    ck = tmp_path / "x.ckpt"
    compare(Net(0), Net(1), loader[:3], checkpoint=ck, **KW)
    with pytest.raises(ValueError, match="other arguments.*kernel"):
        compare(Net(0), Net(1), loader, checkpoint=ck, kernel="rbf", **KW)
    with pytest.raises(ValueError, match="layers_b"):
        compare(Net(0), Net(1), loader, checkpoint=ck, **{**KW, "layers_b": ["blocks.0"]})
    ck.write_bytes(b"garbage")
    with pytest.raises(ValueError, match="cannot be read"):
        compare(Net(0), Net(1), loader, checkpoint=ck, **KW)
    with pytest.raises(ValueError, match="checkpoint_every"):
        compare(Net(0), Net(1), loader, checkpoint=ck, checkpoint_every=0, **KW)


def test_write_is_atomic(tmp_path, monkeypatch):
    """A crash while writing leaves the previous checkpoint readable and no temp file."""
    loader = _loader()
    ck = tmp_path / "a.ckpt"
    compare(Net(0), None, loader[:2], checkpoint=ck, **KW)
    before = ck.read_bytes()
    real = torch.save

    def broken(obj, f, *a, **k):
        f.write(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", broken)
    with pytest.raises(OSError, match="disk full"):
        compare(Net(0), None, loader, checkpoint=ck, checkpoint_every=1, **KW)
    monkeypatch.setattr(torch, "save", real)
    assert ck.read_bytes() == before
    leftovers = [p for p in os.listdir(tmp_path) if ".tmp" in p]
    for p in leftovers:           # a real crash could leave one; it is never read
        os.remove(tmp_path / p)


def test_numpy_scalar_settings_checkpoint_loads_with_weights_only(tmp_path):
    """A NumPy sigma/threshold is stored as a Python float: torch.load(weights_only=True)
    refused the checkpoint ("cannot be read ... delete it")."""
    loader = _loader()
    ck = tmp_path / "np.ckpt"
    kw = dict(KW, kernel="rbf", sigma=np.float64(2.5), threshold=np.float32(0.5))
    want = compare(Net(0), Net(1), loader, **kw)
    with pytest.raises(Killed):
        compare(Net(0), Net(1), _dying(loader, 4), checkpoint=ck, checkpoint_every=1, **kw)
    state = torch.load(ck, weights_only=True)
    assert type(state["acc"]["settings"]["sigma"]) is float
    got = compare(Net(0), Net(1), loader, checkpoint=ck, **kw)
    assert np.array_equal(np.asarray(got.matrix), np.asarray(want.matrix))


def _edited(tmp_path, **changes):
    """A checkpoint of 4 of the 7 batches, then edited (``acc.<key>`` edits the state)."""
    loader = _loader()
    ck = tmp_path / "e.ckpt"
    if not ck.exists():
        with pytest.raises(Killed):
            compare(Net(0), Net(1), _dying(loader, 5), checkpoint=ck, checkpoint_every=1,
                    **KW, jackknife=4)
    obj = torch.load(ck, weights_only=True)
    for k, v in changes.items():
        where, key = (obj["acc"], k[4:]) if k.startswith("acc.") else (obj, k)
        if key.startswith("jackknife."):
            where, key = where["jackknife"], key[len("jackknife."):]
        if v is KeyError:
            del where[key]
        else:
            where[key] = v(where[key]) if callable(v) else v
    bad = tmp_path / "bad.ckpt"
    torch.save(obj, bad)
    return loader, bad


@pytest.mark.parametrize("changes, field", [
    ({"next_batch": -3}, "next_batch"),
    ({"next_batch": 100}, "next_batch"),
    ({"next_batch": 2}, "next_batch"),
    ({"next_batch": KeyError}, "next_batch"),
    ({"acc": KeyError}, "acc"),
    ({"skipped": "x"}, "skipped"),
    ({"version": 7}, "version"),
    ({"acc.settings": KeyError}, "acc.settings"),
    ({"acc.compute_dtype": "torch.banana"}, "acc.compute_dtype"),
    ({"acc.num_batches": 9}, "acc"),
    ({"acc.cross": lambda t: t * float("nan")}, "acc"),
    ({"acc.jackknife.cross": lambda t: t * float("nan")}, "acc"),
    ({"acc.jackknife.hsic_a": lambda t: -t - 1}, "acc"),
    ({"acc.jackknife.count": lambda t: t + 1}, "acc"),
])
def test_edited_checkpoint_raises_naming_file_and_field(tmp_path, changes, field):
    loader, bad = _edited(tmp_path, **changes)
    calls = Net(0)
    with pytest.raises(ValueError, match=rf"checkpoint .*bad\.ckpt.*: {field}\b") as e:
        compare(calls, Net(1), loader, checkpoint=bad, **KW, jackknife=4)
    assert "delete it" in str(e.value) and calls.calls == 0


def test_a_small_last_batch_is_skipped_once(tmp_path, recwarn):
    """A batch too small for the estimator is counted as skipped once: resuming a finished
    run neither warns about it again nor counts it twice."""
    loader = _loader(sizes=(10, 13, 3))
    ck = tmp_path / "small.ckpt"
    with pytest.warns(UserWarning, match="skipping batch 2 with n = 3") as said:
        first = compare(Net(0), None, loader, checkpoint=ck, **KW)
    assert said[0].filename == __file__         # the warning points at the caller's line
    saved = torch.load(ck, weights_only=True)
    assert (saved["next_batch"], saved["skipped"]) == (3, 1)
    recwarn.clear()
    again = compare(Net(0), None, loader, checkpoint=ck, **KW)
    assert not [w for w in recwarn if "skipping batch" in str(w.message)]
    assert torch.equal(again.matrix, first.matrix)
    saved = torch.load(ck, weights_only=True)
    assert (saved["next_batch"], saved["skipped"]) == (3, 1)
