"""Models, loaders and a float64 reference shared by the tests of flashcka.compat."""
import copy

import numpy as np
import torch
from torch import nn

import reference


def mlp(seed, d_in=6, widths=(9, 5, 12)):
    """Sequential(Linear, Tanh, Linear, ReLU, Linear): children "0".."4"."""
    g = torch.Generator().manual_seed(seed)
    layers, d = [], d_in
    acts = [nn.Tanh, nn.ReLU]
    for i, w in enumerate(widths):
        lin = nn.Linear(d, w)
        with torch.no_grad():
            lin.weight.copy_(torch.randn(w, d, generator=g) / d ** 0.5)
            lin.bias.copy_(torch.randn(w, generator=g) * 0.5)
        layers.append(lin)
        if i < len(widths) - 1:
            layers.append(acts[i % 2]())
        d = w
    return nn.Sequential(*layers)


def inputs(rng, sizes, d_in=6):
    return [torch.tensor(rng.standard_normal((n, d_in)) + 1.0, dtype=torch.float32)
            for n in sizes]


def activations(model, x, names):
    """float64 outputs of the named modules of a float64 copy of ``model`` (last call), each
    copied as its module returns it (a later in-place op cannot change it)."""
    m = copy.deepcopy(model).double().eval()
    mods = dict(m.named_modules())
    out, hs = {}, []
    for name in names:
        hs.append(mods[name].register_forward_hook(
            lambda mod, i, o, name=name: out.__setitem__(name, o.detach().clone().numpy())))
    with torch.no_grad():
        m(x.double())
    for h in hs:
        h.remove()
    return [out[n].reshape(out[n].shape[0], -1) for n in names]


def ref_minibatch(model1, model2, xs1, xs2, names1, names2):
    """Float64 minibatch CKA (Nguyen et al. 2021, unbiased HSIC) of the named layers."""
    b1 = [activations(model1, x, names1) for x in xs1]
    b2 = [activations(model2, x, names2) for x in xs2]
    return reference.minibatch_cka(b1, b2)


class Loader:
    """A minimal DataLoader stand-in: iterable, len, .dataset."""

    def __init__(self, batches, name="toy"):
        self.batches, self.dataset = batches, name

    def __iter__(self):
        return iter(self.batches)

    def __len__(self):
        return len(self.batches)


def np_close(a, b, atol):
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    assert a.shape == b.shape, (a.shape, b.shape)
    err = np.nanmax(np.abs(a - b))
    assert err <= atol, f"max |diff| = {err:.3g} > {atol:.3g}"
