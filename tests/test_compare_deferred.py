"""compare()'s hooks on the torch and Triton backends (the GPU's): after the first batch a
layer's row is made on the device with no host read (``GramRecorder.deferred``); each batch
reads its stats once and, when a layer needs ``gram_row``'s exact path (constant, scaled,
non-finite), runs the batch's forward pass again layer by layer (issue 23: on an H200 a
read per layer per batch made compare() 8× slower than pytorch-cka on its ResNet-18 job).
On a CPU reads cost nothing and the hooks read each layer as they go (``reads`` runs both
routes there). Results against the float64 reference (tests/reference.py)."""
import numpy as np
import pytest
import torch
from torch import nn

import flashcka
import reference as ref
from flashcka.core import batched_rows


class Branch(nn.Module):
    """lin(x) · scale; scale 0: the constant 0.5 (a constant layer)."""

    def __init__(self, lin):
        super().__init__()
        self.lin, self.scale = lin, 1.0

    def forward(self, x):
        return self.lin(x) * self.scale + (0.0 if self.scale else 0.5)


class Stack(nn.Module):
    """L parallel layers of the input (``layers.i``), summed."""

    def __init__(self, L: int, d: int = 6, seed: int = 0):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.layers = nn.ModuleList(Branch(nn.Linear(d, d)) for _ in range(L))
        for br in self.layers:
            br.lin.weight.data = torch.randn(d, d, generator=g) / d ** 0.5
            br.lin.bias.data = torch.randn(d, generator=g)

    @property
    def scale(self):
        return [br.scale for br in self.layers]

    @scale.setter
    def scale(self, values):
        for br, v in zip(self.layers, values):
            br.scale = v

    def forward(self, x):
        return sum(br(x) for br in self.layers)


def _batches(seed, k=4, n=11, d=6):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(n, d, generator=g) for _ in range(k)]


def _reads(monkeypatch, L, k):
    """Host reads (by kind) of compare() over k batches of an L-layer model."""
    model = Stack(L)
    names = [f"layers.{i}" for i in range(L)]
    counts = {}
    with monkeypatch.context() as mp:
        for owner, attr in ([(torch.Tensor, a) for a in ("item", "tolist", "__bool__",
                                                          "__float__", "__int__")]
                            + [(torch, "equal")]):
            def counted(*args, _f=getattr(owner, attr), _a=attr, **kw):
                counts[_a] = counts.get(_a, 0) + 1
                return _f(*args, **kw)
            mp.setattr(owner, attr, counted)
        flashcka.compare(model, None, _batches(1, k), layers_a=names, backend="torch",
                         progress=False, jackknife=False)
    return counts


def test_host_reads_per_batch_do_not_grow_with_layers(monkeypatch):
    """A GPU's route: the first batch fixes the layers (layer by layer); each later batch
    adds the same reads for 3 layers as for 30."""
    monkeypatch.setattr(batched_rows, "FREE_READS", frozenset())
    def later(L):
        a, b = _reads(monkeypatch, L, 2), _reads(monkeypatch, L, 5)
        return {k: b.get(k, 0) - a.get(k, 0) for k in set(a) | set(b)}
    few, many = later(3), later(30)
    assert few == many, f"3 more batches: 3 layers {few}, 30 layers {many}"


def _switched(model, batches, scales):
    """The batches, with the model's layer scales set to ``scales(b)`` before batch b."""
    class Switch(list):
        def __iter__(self):
            for b, x in enumerate(list.__iter__(self)):
                model.scale = scales(b)
                yield x
    return Switch(batches)


def _reference_switched(model, batches, names, scales):
    """Float64 minibatch CKA of the hooked layers, the scales switched as in compare."""
    rows = {}
    hs = [dict(model.named_modules())[nm].register_forward_hook(
        lambda mod, i, o, nm=nm: rows.setdefault(nm, []).append(o.double().numpy()))
        for nm in names]
    with torch.no_grad():
        for b, x in enumerate(batches):
            model.scale = scales(b)
            model(x)
    for h in hs:
        h.remove()
    bx = [[rows[nm][i] for nm in names] for i in range(len(batches))]
    return ref.minibatch_cka(bx, bx)


@pytest.mark.parametrize("when", [0, 2])
def test_a_layer_turning_constant_replays_the_batch(reads, when):
    """Layer 1 is constant in batch ``when`` only (its HSICs 0 there): in a later batch, on
    a GPU's route, that batch's forward pass runs again layer by layer (one more forward
    call; none on a CPU's); the CKA is the reference's."""
    model = Stack(4)
    names = [f"layers.{i}" for i in range(4)]
    batches = _batches(2)
    scales = lambda b: [1.0, 0.0 if b == when else 1.0, 1.0, 1.0]  # noqa: E731
    calls = []
    h = model.register_forward_pre_hook(lambda m, a: calls.append(1))
    got = flashcka.compare(model, None, _switched(model, batches, scales), layers_a=names,
                           backend="torch", progress=False).matrix.numpy()
    h.remove()
    replays = 1 if when and reads == "device" else 0        # batch 0 is layer by layer
    assert len(calls) == len(batches) + replays
    want = _reference_switched(model, batches, names, scales)
    assert np.abs(got - want).max() <= 1e-6


@pytest.mark.parametrize("big", [1e16, 1e30])
def test_large_values_after_the_first_batch_are_scaled(reads, big):
    """A layer whose values leave float32's safe range from batch 1 on (×1e16: ‖X_c‖²
    finite, ×1e30: overflows): gram_row's power-of-two scale (replayed on a GPU's route);
    CKA as the reference's."""
    model = Stack(3)
    names = [f"layers.{i}" for i in range(3)]
    batches = _batches(3)
    scales = lambda b: [1.0, big if b else 1.0, 1.0]  # noqa: E731
    got = flashcka.compare(model, None, _switched(model, batches, scales), layers_a=names,
                           backend="torch", progress=False).matrix.numpy()
    want = _reference_switched(model, batches, names, scales)
    assert np.abs(got - want).max() <= 1e-5
