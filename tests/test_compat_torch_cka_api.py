"""Every public name of torch-cka 0.21 in flashcka.compat.torch_cka (the ``cka`` and ``utils``
modules, ``CKA``'s public attributes, ``model1_features``/``model2_features`` computed on
demand), used as its README's resnet_compare example uses them, against the installed
original and the float64 reference; and the layers whose stored outputs the hook-based
originals (torch-cka, pytorch-cka) see overwritten by a later in-place op."""
import inspect
import warnings

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
from torch import nn  # noqa: E402

from compat_helpers import Loader, inputs, mlp, ref_minibatch  # noqa: E402
from flashcka.compat import torch_cka as adapter  # noqa: E402


def _orig():
    return pytest.importorskip("torch_cka", reason="torch-cka not installed")


def _run(mod, m1, m2, xs, layers1=None, layers2=None):
    c = mod.CKA(m1, m2, "A", "B", layers1, layers2, device="cpu")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        c.compare(Loader([(x, torch.zeros(len(x))) for x in xs]))
    return c


def test_every_public_name():
    orig = _orig()
    import torch_cka.cka
    import torch_cka.utils
    assert adapter.__version__ == orig.__version__
    assert inspect.ismodule(adapter.cka) and inspect.ismodule(adapter.utils)
    assert adapter.cka.CKA is adapter.CKA
    from flashcka.compat.torch_cka.cka import CKA  # noqa: F401
    from flashcka.compat.torch_cka.utils import add_colorbar
    assert list(inspect.signature(add_colorbar).parameters) == \
        list(inspect.signature(torch_cka.utils.add_colorbar).parameters)
    public = {n for n in dir(torch_cka.cka.CKA) if not n.startswith("_")}
    assert public <= set(dir(adapter.CKA))
    m1, m2 = mlp(1), mlp(2)
    a, o = _run(adapter, m1, m2, inputs(np.random.default_rng(0), [8])), \
        _run(orig, m1, m2, inputs(np.random.default_rng(0), [8]))
    attrs = {n for n in vars(o) if not n.startswith("_")}
    assert attrs == {"model1", "model2", "device", "model1_info", "model2_info",
                     "model1_features", "model2_features", "model1_layers", "model2_layers",
                     "hsic_matrix"}
    for n in attrs:
        assert hasattr(a, n), n
    assert a.model1_info == o.model1_info and a.model2_info == o.model2_info


def test_add_colorbar_as_original(rng):
    orig = _orig()
    import torch_cka.utils
    boxes = []
    for f in (adapter.utils.add_colorbar, torch_cka.utils.add_colorbar):
        fig, ax = plt.subplots()
        im = ax.imshow(rng.uniform(0, 1, (4, 6)))
        cb = f(im, aspect=20, pad_fraction=1.0)
        assert plt.gca() is ax                          # the current axes stay current
        fig.canvas.draw()
        boxes.append((tuple(np.round(cb.ax.get_position().bounds, 6)),
                      tuple(np.round(ax.get_position().bounds, 6))))
        plt.close(fig)
    assert boxes[0] == boxes[1] and orig


def test_features_of_the_last_batch_equal_original(rng):
    """model1_features / model2_features: {name: output of the last batch} in firing
    order, as the original's dicts (which it fills during compare)."""
    orig = _orig()
    m1, m2 = mlp(1), mlp(2, widths=(4, 8, 3))
    xs = inputs(rng, [9, 12])
    a = adapter.CKA(m1, m2, "A", "B", None, ["0", "4"], device="cpu")
    assert a.model1_features == {} and a.model2_features == {}        # before compare
    a, o = _run(adapter, m1, m2, xs, None, ["0", "4"]), _run(orig, m1, m2, xs, None, ["0", "4"])
    for fa, fo in ((a.model1_features, o.model1_features),
                   (a.model2_features, o.model2_features)):
        assert list(fa) == list(fo)
        for k in fo:
            assert fa[k].shape == fo[k].shape
            assert float((fa[k] - fo[k].detach()).abs().max()) <= 1e-6
            assert not fa[k].requires_grad
    assert a.model1_features is a.model1_features                     # computed once
    a.model1_features = {"mine": 1}
    assert a.model1_features == {"mine": 1}


class InPlaceNet(nn.Module):
    """Linear -> BatchNorm -> ReLU(inplace) -> Linear, and a residual ``+=``: the stored
    outputs of ``bn`` and ``fc2`` are overwritten by the in-place ops that follow them."""

    def __init__(self, seed):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.fc1, self.bn, self.relu, self.fc2 = (nn.Linear(6, 10), nn.BatchNorm1d(10),
                                                  nn.ReLU(inplace=True), nn.Linear(10, 10))
        with torch.no_grad():
            for p in self.parameters():
                p.copy_(torch.randn(p.shape, generator=g) * 0.7)
            self.bn.running_mean.copy_(torch.randn(10, generator=g))
            self.bn.running_var.copy_(torch.rand(10, generator=g) + 0.5)

    def forward(self, x):
        h = self.relu(self.bn(self.fc1(x)))
        out = self.fc2(h)
        out += h
        return out


LAYERS = ["fc1", "bn", "relu", "fc2"]


def test_in_place_overwritten_outputs(rng):
    """Ours equals the float64 reference of each output as its module returned it; both
    originals see ``bn`` as ReLU(bn) and ``fc2`` as fc2 + h, far from the reference on
    those layers and equal to it on the others."""
    m1, m2 = InPlaceNet(1).eval(), InPlaceNet(2).eval()
    xs = inputs(rng, [40, 40])
    want = ref_minibatch(m1, m2, xs, xs, LAYERS, LAYERS)
    ours = _run(adapter, m1, m2, xs, LAYERS, LAYERS).hsic_matrix.numpy()
    assert np.abs(ours - want).max() <= 1e-5
    from flashcka.compat import pytorch_cka
    ours2 = pytorch_cka.compute_cka(m1, m2, Loader(xs), layers=LAYERS, device="cpu",
                                    progress=False)[0].numpy()
    assert np.abs(ours2 - want).max() <= 1e-5
    clean = np.ix_([0, 2], [0, 2])                        # fc1, relu: nothing overwrites them
    hit = np.ones((4, 4), bool)
    hit[clean] = False
    origs = [_run(_orig(), m1, m2, xs, LAYERS, LAYERS).hsic_matrix.double().numpy()]
    cka = pytest.importorskip("cka")
    origs.append(cka.compute_cka(m1, m2, Loader(xs), layers=LAYERS, device="cpu",
                                 progress=False)[0].double().numpy())
    for o in origs:
        assert np.abs(o[clean] - want[clean]).max() <= 1e-3        # their float32 error
        assert np.abs(o[hit] - want[hit]).max() > 0.05             # measured 0.1-0.4 here


RESNET_CLEAN = ["conv1", "layer1.0.conv1", "layer2.0.conv1", "layer3.0.conv1",
                "layer4.0.conv1", "fc"]                       # pytorch-cka's README layers
RESNET_OVERWRITTEN = ["bn1", "layer1.0.bn1", "layer1.0.bn2", "layer3.1.bn2"]


@pytest.mark.slow
def test_resnet18_vs_34_differences_as_documented(rng, capsys):
    """torchvision ResNet-18 vs ResNet-34 (random init, seed 0, eval), 2 batches of 32
    images in [0, 1)^{3x32x32}: the README's drop-in tables quote these figures
    (``pytest -s -k resnet18_vs_34`` prints them). BatchNorm outputs are overwritten by the
    in-place ReLU (bn1, bn1 of a block) or ``out += identity`` (bn2 of a block)."""
    from hub_models import need_torchvision
    tv = need_torchvision()
    cka = pytest.importorskip("cka")
    torch.manual_seed(0)
    m1, m2 = tv.models.resnet18().eval(), tv.models.resnet34().eval()
    xs = [torch.tensor(rng.uniform(0, 1, (32, 3, 32, 32)), dtype=torch.float32)
          for _ in range(2)]
    layers = RESNET_CLEAN + RESNET_OVERWRITTEN
    want = ref_minibatch(m1, m2, xs, xs, layers, layers)
    ours = _run(adapter, m1, m2, xs, layers, layers)
    names = ours.model1_info["Layers"]                        # named_modules order
    idx = [layers.index(n) for n in names]
    want_tc = want[np.ix_(idx, idx)]
    err = {"flashcka torch_cka": np.abs(ours.hsic_matrix.numpy() - want_tc).max()}
    from flashcka.compat import pytorch_cka
    got = pytorch_cka.compute_cka(m1, m2, Loader(xs), layers=layers, device="cpu",
                                  progress=False)[0].numpy()
    err["flashcka pytorch_cka"] = np.abs(got - want).max()
    o_tc = _run(_orig(), m1, m2, xs, layers, layers).hsic_matrix.double().numpy()
    o_pc = cka.compute_cka(m1, m2, Loader(xs), layers=layers, device="cpu",
                           progress=False)[0].double().numpy()
    k = len(RESNET_CLEAN)
    clipped = np.clip(want, 0, 1)                             # pytorch-cka clamps
    clean_pc, clean_tc = np.ix_(range(k), range(k)), \
        np.ix_(*[[names.index(n) for n in RESNET_CLEAN]] * 2)
    over = np.zeros((len(layers), len(layers)), bool)
    over[k:, :] = over[:, k:] = True
    over_tc = over[np.ix_(idx, idx)]
    measured = {
        "torch-cka float32 (clean layers)": np.abs(o_tc - want_tc)[clean_tc].max(),
        "pytorch-cka float32 (clean layers)": np.abs(o_pc - clipped)[clean_pc].max(),
        "torch-cka overwritten layers": np.abs(o_tc - want_tc)[over_tc].max(),
        "pytorch-cka overwritten layers": np.abs(o_pc - clipped)[over].max(),
        "reference's most negative CKA (pytorch-cka clamps to 0)": want.min(),
        **err}
    import copy                    # the original in float64: right on the clean layers
    d1, d2 = copy.deepcopy(m1).double(), copy.deepcopy(m2).double()
    o_pc64 = cka.compute_cka(d1, d2, Loader([x.double() for x in xs]), layers=layers,
                             device="cpu", progress=False)[0].numpy()
    measured["pytorch-cka float64 (clean layers)"] = np.abs(o_pc64 - clipped)[clean_pc].max()
    measured["pytorch-cka float64 overwritten layers"] = np.abs(o_pc64 - clipped)[over].max()
    with capsys.disabled():
        for name, v in measured.items():
            what = "value" if name.startswith("reference") else \
                "max |CKA - float64 reference|"
            print(f"\n  {name}: {what} = {v:.2e}", end="")
        print()
    assert err["flashcka torch_cka"] <= 1e-4 and err["flashcka pytorch_cka"] <= 1e-4
    assert measured["torch-cka overwritten layers"] > 0.02
    assert measured["pytorch-cka overwritten layers"] > 0.02
    assert measured["pytorch-cka float64 (clean layers)"] <= 1e-6
    assert measured["pytorch-cka float64 overwritten layers"] > 0.02
    assert measured["pytorch-cka float32 (clean layers)"] > 1e-3
    assert measured["torch-cka float32 (clean layers)"] > 1e-3


def test_readme_usage_with_a_dataloader(rng):
    """torch-cka's README: CKA(model1, model2, model1_name=..., model2_name=...,
    model1_layers=..., model2_layers=..., device=...); compare(dataloader); export()."""
    from torch.utils.data import DataLoader, TensorDataset
    orig = _orig()
    m1, m2 = mlp(3), mlp(4, widths=(7, 6, 5))
    data = TensorDataset(torch.tensor(rng.standard_normal((70, 6)), dtype=torch.float32),
                         torch.zeros(70))
    loader = DataLoader(data, batch_size=16, shuffle=False, drop_last=True)
    xs = [b[0] for b in loader]
    want = ref_minibatch(m1, m2, xs, xs, ["0", "2", "4"], ["1", "3"])  # before the
    out = []                                  # original leaves its hooks on the models
    for mod in (adapter, orig):
        c = mod.CKA(m1, m2, model1_name="ResNet18", model2_name="ResNet34",
                    model1_layers=["0", "2", "4"], model2_layers=["1", "3"], device="cpu")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            c.compare(loader)
        out.append(c.export())
    a, o = out
    assert {k: v for k, v in a.items() if k != "CKA"} == \
        {k: v for k, v in o.items() if k != "CKA"}
    assert a["CKA"].dtype == torch.float64 and np.abs(a["CKA"].numpy() - want).max() <= 1e-5
    assert np.abs(o["CKA"].double().numpy() - want).max() <= 1e-3    # its float32 error


def test_plot_results_as_original(rng, tmp_path):
    """The same matrix through both plot_results: the same figure, artist by artist
    (title, labels, ticks, limits, image, colorbar axes placed by add_colorbar)."""
    from test_compat_pytorch_cka_viz import _same
    orig = _orig()
    m1, m2 = mlp(1), mlp(2)
    m = torch.tensor(rng.uniform(0, 1, (6, 6)), dtype=torch.float32)
    figs = []
    for mod in (adapter, orig):
        c = _run(mod, m1, m2, inputs(rng, [8]))
        c.hsic_matrix = m.clone()
        c.plot_results(save_path=str(tmp_path / f"{mod.__name__}.png"))
        figs.append(plt.gcf())
    figs[0].canvas.draw()
    figs[1].canvas.draw()
    _same(figs[0], figs[1])
    for a, b in zip(figs[0].axes, figs[1].axes):
        assert np.allclose(a.get_position().bounds, b.get_position().bounds, atol=1e-6)
    img = plt.imread(tmp_path / f"{adapter.__name__}.png")
    assert img.shape[:2] == (1440, 1920) and img[..., :3].std() > 0.1
    plt.close("all")
