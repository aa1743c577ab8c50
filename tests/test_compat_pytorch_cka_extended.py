"""pytorch-cka 1.1.3's own test_cka_extended.py, its public-behaviour cases (private members
such as ``_extract_input``, ``_hook_handles``, ``_shared_features`` are out of scope),
run against flashcka.compat.pytorch_cka with the import changed; values are checked against
the float64 reference where the original's tests check only shapes."""
from unittest.mock import MagicMock, patch

import numpy as np
import pytest
import torch
import torch.nn as nn
from torch.utils.data import DataLoader, TensorDataset

from compat_helpers import ref_minibatch
from flashcka.compat.pytorch_cka import compute_cka
from flashcka.compat.pytorch_cka.cka import CKA


class SimpleModel(nn.Module):
    def __init__(self):
        super().__init__()
        self.layer1, self.layer2, self.layer3 = nn.Linear(10, 20), nn.Linear(20, 20), \
            nn.Linear(20, 5)

    def forward(self, x):
        return self.layer3(torch.relu(self.layer2(torch.relu(self.layer1(x)))))


class LargeModel(nn.Module):
    def __init__(self, n_layers):
        super().__init__()
        self.layers = nn.ModuleList([nn.Linear(10, 10) for _ in range(n_layers)])

    def forward(self, x):
        for layer in self.layers:
            x = layer(x)
        return x


class _Out:
    def __init__(self, t):
        self.last_hidden_state = t


class Wrap(nn.Module):
    """layer1 returns a tuple or a transformers-like output object."""

    def __init__(self, kind):
        super().__init__()
        self.kind = kind
        self.layer1 = nn.Linear(10, 20)

    def forward(self, x):
        return self.layer1(x)


class Conv3DModel(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv, self.fc = nn.Conv2d(3, 16, 3, padding=1), nn.Linear(16 * 8 * 8, 10)

    def forward(self, x):
        return self.fc(self.conv(x).view(x.size(0), -1))


@pytest.fixture
def dataloader():
    torch.manual_seed(0)
    return DataLoader(TensorDataset(torch.randn(32, 10)), batch_size=8)


@pytest.fixture
def model1():
    torch.manual_seed(1)
    return SimpleModel()


@pytest.fixture
def model2():
    torch.manual_seed(2)
    return SimpleModel()


def _xs(loader):
    return [b[0] for b in loader]


def test_resolve_layers(model1, model2):
    c = CKA(model1, model2)
    assert list(c.model1_layer_to_module) == ["layer1", "layer2", "layer3"]
    with pytest.warns(UserWarning, match="has 152 layers"):
        CKA(LargeModel(151), model2)
    c = CKA(model1, model2, layers=["layer1", "layer1", "layer2"])
    assert list(c.model1_layer_to_module) == ["layer1", "layer2"]


def test_init_unwrapping_and_device(model1, model2):
    assert CKA(nn.DataParallel(model1), model1).model1 is model1
    ddp = MagicMock(spec=nn.parallel.DistributedDataParallel)
    ddp.module = model1
    assert CKA(ddp, model1).model1 is model1
    with patch("torch.cuda.is_available", return_value=False):
        assert CKA(model1, model2).device.type in ("cpu", "mps")
    with patch("torch.cuda.is_available", return_value=True), \
            patch.object(nn.Module, "to", lambda self, *a, **k: self):
        assert CKA(model1, model2).device == torch.device("cuda")
    assert CKA(model1, model2, device="cpu").device == torch.device("cpu")


def test_outputs_of_every_kind(model2, dataloader):
    """Tuple outputs, transformers-like objects (last_hidden_state) and (n, C, H, W)
    outputs, flattened."""
    m = Wrap("tuple")
    m.layer1.register_forward_hook(lambda mod, i, o: (o, o))
    r = compute_cka(m, model2, dataloader, layers=["layer1"], device="cpu", progress=False)[0]
    assert r.shape == (1, 1)
    conv = Conv3DModel()
    img = DataLoader(TensorDataset(torch.randn(32, 3, 8, 8)), batch_size=8)
    r = compute_cka(conv, conv, img, layers=["conv"], model2_layers=["conv"], device="cpu",
                    progress=False)[0]
    assert r.shape == (1, 1) and abs(float(r[0, 0]) - 1) <= 1e-6


def test_transformer_like_output_object(model2, dataloader):
    m = Wrap("object")
    m.layer1.register_forward_hook(lambda mod, i, o: _Out(o))
    m.forward = lambda x: m.layer1(x).last_hidden_state
    r = compute_cka(m, model2, dataloader, layers=["layer1"], device="cpu", progress=False)[0]
    assert r.shape == (1, 1)


def test_compare_errors_progress_verbose(model1, model2, dataloader, capsys):
    small = DataLoader(TensorDataset(torch.randn(12, 10)), batch_size=3)
    with pytest.raises(ValueError, match="HSIC requires batch size > 3"):
        compute_cka(model1, model2, small, device="cpu")
    for progress in (False, True):
        r = compute_cka(model1, model2, dataloader, device="cpu", progress=progress)[0]
        assert r.shape == (3, 3)
    capsys.readouterr()
    compute_cka(model1, model2, dataloader, verbose=True, progress=False, device="cpu")
    out = capsys.readouterr().out
    assert "Batch 1/4" in out and "Batch 4/4" in out and "Mean CKA:" in out
    loader2 = DataLoader(TensorDataset(torch.randn(32, 10)), batch_size=8)
    rs = compute_cka(model1, model2, dataloader, loader2, device="cpu", progress=False)
    names = ["layer1", "layer2", "layer3"]
    for r, loader in zip(rs, (dataloader, loader2)):
        want = ref_minibatch(model1, model2, _xs(loader), _xs(loader), names, names)
        assert np.abs(r.numpy() - want).max() <= 1e-5


def test_context_manager_restores_training_mode(model1, model2):
    model1.train()
    model2.eval()
    c = CKA(model1, model2)
    with pytest.raises(ValueError, match="Test exception"):
        with c:
            assert not model1.training and not model2.training
            raise ValueError("Test exception")
    assert model1.training is True and model2.training is False
    assert not any(m._forward_hooks for m in model1.modules())


def test_same_model(model1, dataloader):
    r = compute_cka(model1, model1, dataloader, layers=["layer1", "layer2"],
                    model2_layers=["layer1", "layer2"], device="cpu", progress=False)[0]
    assert float((torch.diagonal(r) - 1).abs().max()) <= 1e-6
    r = compute_cka(model1, model1, dataloader, layers=["layer1", "layer2"],
                    model2_layers=["layer2", "layer3"], device="cpu", progress=False)[0]
    want = ref_minibatch(model1, model1, _xs(dataloader), _xs(dataloader),
                         ["layer1", "layer2"], ["layer2", "layer3"])
    assert r.shape == (2, 2) and np.abs(r.numpy() - want).max() <= 1e-5
